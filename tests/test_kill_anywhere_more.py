"""SIGKILL ``embed``, ``new-competition`` and ``report`` at random moments; the rerun must end where an
uninterrupted run ends (the kill-anywhere rule of ``test_kill_anywhere.py``, for the commands added
since: issue 26). ``package``, ``pretrain`` and ``tune`` have theirs (``test_kill_anywhere_package.py``,
``test_pretrain.py``, ``test_tune.py``); ``test_kill_anywhere.py`` is near pytest's per-test limit.

Each test runs the command once uninterrupted and times it, then runs it in a second place
``KILLS`` times, each attempt SIGKILLed after a delay drawn (seeded RNG, ``AUDIOTAG_KILL_SEED``) within
that time, each starting from what the previous ones left; a last run goes to the end. Checked: every
attempt is killed or succeeds, the last run succeeds, its outputs equal the clean run's, no staging
folder (``*.partial``) or temporary file (``.*.tmp``) is left, and the inputs are untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from tests import demo_workspace
from tests.conftest import PYTHON, subprocess_env
from tests.test_new_competition import esc50_like
from tests.test_probe_end_to_end import FRONT_END, panns_checkpoint, tiny_competition_yaml

pytestmark = pytest.mark.soak  # tests/conftest.py: left out of ./run.sh test unless --soak

SEED = int(os.environ.get("AUDIOTAG_KILL_SEED", "1234"))
KILLS = 3
TIMEOUT = 300


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as err:
        return subprocess.Popen(
            [PYTHON, "-m", "audiotag", *args], env=env, stdout=subprocess.DEVNULL, stderr=err
        )


def started(proc: subprocess.Popen[bytes], log: Path, first: str | None) -> float | None:
    """When ``first`` appeared in the log (the command's first step, its imports done; None: now); None
    when the process ended before."""
    deadline = time.monotonic() + TIMEOUT
    while first is not None and first not in log.read_text(errors="replace"):
        if proc.poll() is not None:
            return None
        assert time.monotonic() < deadline, f"{log.name}: {first!r} never logged"
        time.sleep(0.002)
    return time.monotonic()


def finish(args: list[str], env: dict[str, str], log: Path, first: str | None = None) -> float:
    """Run to the end; the seconds from its first step (``first`` logged) to its end."""
    proc = start(args, env, log)
    began = started(proc, log, first)
    rc = proc.wait(timeout=TIMEOUT)
    assert rc == 0 and began, f"{args[0]} failed ({rc}):\n{log.read_text(errors='replace')[-3000:]}"
    return time.monotonic() - began


def killed_attempts(
    args: list[str],
    env: dict[str, str],
    logs: Path,
    work: float,
    first: str | None = None,
    check: Callable[[list[str]], None] = print,
) -> list[str]:
    """``KILLS`` attempts, each SIGKILLed after a seeded random delay below ``work`` counted from its first
    step (``first`` logged) unless it ends first (then it must succeed), ``check`` called after each with
    the outcomes so far; what happened to each, with the last line each had logged."""
    rng = random.Random(SEED)
    outcomes = []
    for i in range(KILLS):
        delay = rng.uniform(0.0, work)
        log = logs / f"killed-{i}.log"
        proc = start(args, env, log)
        began = started(proc, log, first)
        while began is not None and proc.poll() is None and time.monotonic() - began < delay:
            time.sleep(0.002)
        lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
        where = lines[-1][-120:] if lines else "(nothing logged)"
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            outcomes.append(f"killed after {delay:.2f}s at {where!r}")
        else:
            outcomes.append(f"finished (rc {proc.returncode}) before {delay:.2f}s")
            assert proc.returncode == 0, f"{outcomes}:\n{log.read_text(errors='replace')[-3000:]}"
        check(outcomes)
    print(outcomes)
    assert any(o.startswith("killed") for o in outcomes), outcomes
    return outcomes


def leftovers(root: Path) -> list[str]:
    """Staging folders and temporary files a killed writer left under ``root``."""
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.name.endswith(".partial") or (p.name.startswith(".") and p.name.endswith(".tmp"))
    )


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` by relative path: its content's hash and its mtime."""
    return {
        p.relative_to(root).as_posix(): f"{hashlib.sha256(p.read_bytes()).hexdigest()} {p.stat().st_mtime_ns}"
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --------------------------------------------------------------------------- embed


def embed_args(inputs: Path) -> list[str]:
    return [
        "embed",
        "-c",
        str(inputs / "demo.yaml"),
        "--model",
        str(inputs / "frozen.pth"),
        "--arch",
        "cnn_small",
        "--features",
        FRONT_END,
        "--layers",
        "all",
        "--workers",
        "1",
        "--device",
        "cpu",
    ]


EMBED_FIRST = "prepare: competition demo in"  # embed's first step: the clip table, after the imports


def embed_outputs(ws: Path) -> dict:
    """The clip table, folds, feature cache and embeddings of the tiny demo, less what differs between two
    workspaces: build times, and the hashes that cover the audio files' mtimes (so the folder names)."""
    demo = ws / "competition" / "demo"
    (cache,) = (p.parent for p in (demo / "cache").glob("*/manifest.json"))
    (emb,) = (p.parent for p in (demo / "embeddings").glob("*/manifest.json"))
    manifest = json.loads((emb / "manifest.json").read_text())
    for key in ("created", "base_key", "identity"):
        manifest.pop(key)
    cache_manifest = json.loads((cache / "manifest.json").read_text())
    return {
        "meta": pd.read_parquet(demo / "meta.parquet"),
        "folds": {p.name: p.read_bytes() for p in sorted((demo / "folds").glob("*.csv"))},
        "cache": (cache.name, (cache / "frames.f16").read_bytes(), (cache / "index.parquet").read_bytes()),
        "cache_manifest": {k: v for k, v in cache_manifest.items() if k not in ("created", "clips_hash")},
        "embeddings": {p.name: p.read_bytes() for p in sorted(emb.iterdir()) if p.name != "manifest.json"},
        "embedding_manifest": manifest,
        "folders": sorted(p.name for p in demo.iterdir()),
    }


@pytest.mark.slow
def test_kills_anywhere_in_embed_leave_what_the_rerun_completes(tmp_path: Path) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    tiny_competition_yaml(inputs)
    panns_checkpoint(inputs / "frozen.pth")
    before = snapshot(inputs)
    logs = tmp_path / "logs"
    logs.mkdir()
    args = embed_args(inputs)
    work = finish(args, subprocess_env(tmp_path / "clean"), logs / "clean.log", EMBED_FIRST)

    env = subprocess_env(tmp_path / "killed")
    outcomes = killed_attempts(args, env, logs, work, EMBED_FIRST)
    finish(args, env, logs / "final.log")

    assert leftovers(tmp_path / "killed") == [], outcomes
    clean, killed = embed_outputs(tmp_path / "clean"), embed_outputs(tmp_path / "killed")
    pd.testing.assert_frame_equal(killed.pop("meta"), clean.pop("meta"))
    assert killed == clean, outcomes
    assert snapshot(inputs) == before
    assert not (tmp_path / "killed" / "submissions").exists()


# --------------------------------------------------------------------------- new-competition


@pytest.mark.slow
def test_kills_anywhere_in_new_competition_leave_no_half_yaml(tmp_path: Path) -> None:
    data = esc50_like(tmp_path / "ESC-50-master")
    before = snapshot(data)
    logs = tmp_path / "logs"
    logs.mkdir()
    env = subprocess_env(tmp_path / "ws")

    def args(out: Path) -> list[str]:
        return ["new-competition", "myesc", "--from", str(data), "-o", str(out), "--force"]

    clean = tmp_path / "clean" / "myesc.yaml"
    work = finish(args(clean), env, logs / "clean.log")
    out = tmp_path / "killed" / "myesc.yaml"

    def whole_or_none(outcomes: list[str]) -> None:
        assert not out.exists() or out.read_bytes() == clean.read_bytes(), outcomes

    outcomes = killed_attempts(args(out), env, logs, work, check=whole_or_none)
    finish(args(out), env, logs / "final.log")

    assert out.read_bytes() == clean.read_bytes()
    assert [p.name for p in out.parent.iterdir()] == ["myesc.yaml"], outcomes  # no temporary file beside
    assert snapshot(data) == before
    assert not (tmp_path / "ws").exists()  # a YAML written, nothing prepared


# --------------------------------------------------------------------------- report

WRITTEN = re.compile(rb"written \d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


@pytest.mark.slow
def test_kills_anywhere_in_report_leave_the_old_page_or_the_new_one(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = demo_workspace.copy_to(demo_workspace.trained_base(tmp_path_factory), tmp_path / "ws", monkeypatch)
    env = dict(os.environ)
    logs = tmp_path / "logs"
    logs.mkdir()
    page = ws / "submissions" / "demo" / "report.html"
    work = finish(["report", "-c", "demo"], env, logs / "clean.log")
    clean = WRITTEN.sub(b"written -", page.read_bytes())
    page.write_text("an older report")  # a kill before the rename keeps the old page whole
    before = {k: v for k, v in snapshot(ws).items() if k != "submissions/demo/report.html"}

    def old_or_new(outcomes: list[str]) -> None:
        text = page.read_bytes()
        assert text == b"an older report" or WRITTEN.sub(b"written -", text) == clean, outcomes

    outcomes = killed_attempts(["report", "-c", "demo"], env, logs, work, check=old_or_new)
    finish(["report", "-c", "demo"], env, logs / "final.log")

    assert WRITTEN.sub(b"written -", page.read_bytes()) == clean, outcomes
    assert leftovers(ws) == [], outcomes
    after = {k: v for k, v in snapshot(ws).items() if k != "submissions/demo/report.html"}
    assert after == before, outcomes  # nothing but the page was written
