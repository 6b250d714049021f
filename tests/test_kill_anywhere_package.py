"""SIGKILL ``package OUT`` at random moments, over an earlier package in OUT and a file of the user's
beside it; the rerun must end where an uninterrupted run ends (the kill-anywhere suite's rule, for the
package: issue 26). Kept apart from ``test_kill_anywhere.py``, which is near pytest's per-test limit.

A clean ``package`` in one process is timed from its start; then ``KILLS`` attempts into a second OUT
(holding a finished package of the same ensemble) are SIGKILLed after a delay drawn (seeded RNG)
within that time; a last run goes to the end. Every state a kill leaves must be one the rerun proves
is its own (core/owned.py), and the user's file beside OUT is never touched."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from audiotag.core.owned import MANIFEST, OwnedFolder
from tests import demo_workspace
from tests.conftest import PYTHON

pytestmark = pytest.mark.soak  # tests/conftest.py: left out of ./run.sh test unless --soak

SEED = int(os.environ.get("AUDIOTAG_KILL_SEED", "1234"))
KILLS = 2
TIMEOUT = 300


def package(out: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [PYTHON, "-m", "audiotag", "package", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def files(out: Path) -> dict[str, bytes]:
    """What a package holds, less the two files that record when and what it wrote."""
    skip = {MANIFEST, "bundle.json", "README.md"}
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()} | {
        k: b"" for k in skip if (out / k).is_file()
    }


@pytest.mark.slow
def test_kills_anywhere_in_package_leave_a_folder_the_rerun_replaces(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(SEED)
    demo = demo_workspace.copy_to(demo_workspace.trained_base(tmp_path_factory), tmp_path / "ws", monkeypatch)
    env = dict(os.environ)
    clean, killed = demo / "clean", demo / "killed"
    started = time.monotonic()
    proc = package(clean, env)
    assert proc.wait(timeout=TIMEOUT) == 0, proc.stderr.read().decode()[-3000:]  # type: ignore[union-attr]
    work = time.monotonic() - started
    shutil.copytree(clean, killed)  # an earlier package to replace (a copy keeps what proves it ours)
    (demo / "killed.partial").mkdir()
    (demo / "killed.partial" / "notes.txt").write_text("mine")

    outcomes = []
    for _ in range(KILLS):
        delay = rng.uniform(0.0, work)
        proc = package(killed, env)
        deadline = time.monotonic() + delay
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            outcomes.append(f"killed after {delay:.2f}s")
        else:
            outcomes.append(f"finished (rc {proc.returncode}) before {delay:.2f}s")
            assert proc.returncode == 0, f"{outcomes}: {proc.stderr.read().decode()[-3000:]}"  # type: ignore[union-attr]
        assert OwnedFolder(killed, "audiotag package").foreign() == [], outcomes
    print(outcomes)
    proc = package(killed, env)
    assert proc.wait(timeout=TIMEOUT) == 0, f"{outcomes}: {proc.stderr.read().decode()[-3000:]}"  # type: ignore[union-attr]
    assert files(killed) == files(clean), outcomes
    assert (demo / "killed.partial" / "notes.txt").read_text() == "mine"
