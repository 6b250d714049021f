"""SIGKILL ``prepare`` and ``train`` at random moments; the rerun must end where an uninterrupted run ends.

A clean workspace runs ``prepare train`` (tiny demo, 3 folds, 2 epochs, a mid-epoch checkpoint every 2
steps) in one process and times each stage's work (from prepare's first step, after the imports, to
the stage's end). A second workspace runs ``prepare`` ``KILLS["prepare"]`` times, then ``train``
``KILLS["train"]`` times, each attempt SIGKILLed after a delay drawn (seeded RNG) uniformly within
that stage's work time, counted from the attempt's first step; each attempt starts from what the
previous ones left. Every attempt must be killed or succeed: a rerun that crashes after an earlier
kill fails the test. A last ``prepare train`` runs to the end, and the outputs are compared: the clip
table, the fold file, the log-mel cache (frames byte for byte, index, manifest), per fold the OOF
predictions, score and loss history, and the run's metrics.

The line each attempt had last logged when it was killed is printed (``pytest -s``) and is part of
any failure message, so a failure names its kill points. ``AUDIOTAG_KILL_SEED=N`` draws other delays.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import PYTHON, subprocess_env, tiny_args

SEED = int(os.environ.get("AUDIOTAG_KILL_SEED", "1234"))
KILLS = {"prepare": 2, "train": 3}  # per stage; 5 in all
EXTRA = ["train.checkpoint_every_steps=2"]  # mid-epoch checkpoints: more states a kill can leave behind
STAGE_TIMEOUT = 300


@dataclass
class Attempt:
    stage: str
    delay: float
    outcome: str  # "killed" or "finished"
    last_line: str

    def __str__(self) -> str:
        return f"{self.stage} after {self.delay:.2f}s of work: {self.outcome} at {self.last_line!r}"


def command(*stages: str) -> list[str]:
    return [PYTHON, "-m", "audiotag", *tiny_args(*stages, extra=EXTRA)]


def last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][-160:] if lines else "(nothing logged yet)"


def start(stages: list[str], ws: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as err:
        return subprocess.Popen(
            command(*stages), env=subprocess_env(ws), stdout=subprocess.DEVNULL, stderr=err
        )


def wait_for(proc: subprocess.Popen[bytes], log: Path, text: str) -> float | None:
    """The time ``text`` appears in the log; None when the process exits first."""
    deadline = time.monotonic() + STAGE_TIMEOUT
    while text not in log.read_text(errors="replace"):
        if proc.poll() is not None:
            return None
        assert time.monotonic() < deadline, f"{log.name}: {text!r} never logged"
        time.sleep(0.005)
    return time.monotonic()


def clean_run(ws: Path, log: Path) -> dict[str, float]:
    """``prepare train`` in one process, uninterrupted; each stage's work time in seconds: prepare from
    its first step (imports done) to its end, train from its start to its end."""
    proc = start(["prepare", "train"], ws, log)
    marks = [wait_for(proc, log, text) for text in (*FIRST_STEP, *DONE, "stage train: done")]
    rc = proc.wait(timeout=STAGE_TIMEOUT)
    assert rc == 0 and None not in marks, f"clean run failed ({rc}):\n{log.read_text()[-4000:]}"
    p0, p1, t1 = marks  # type: ignore[misc]
    return {"prepare": p1 - p0, "train": t1 - p1}


FIRST_STEP = ("prepare: competition demo in",)  # every stage's first step: prepare, after the imports
DONE = ("stage prepare: done",)


def killed_attempt(stage: str, ws: Path, log: Path, delay: float) -> Attempt:
    proc = start([stage], ws, log)
    began = wait_for(proc, log, FIRST_STEP[0])
    while began is not None and proc.poll() is None and time.monotonic() - began < delay:
        time.sleep(0.002)
    if proc.poll() is None:
        where = last_line(log)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return Attempt(stage, delay, "killed", where)
    return Attempt(stage, delay, f"finished (rc {proc.returncode})", last_line(log))


def manifest(cache_dir: Path) -> dict:
    """The cache's manifest, less what differs between two workspaces: the build time, and the clip
    list's hash (it covers the audio files' mtimes)."""
    data = json.loads((cache_dir / "manifest.json").read_text())
    return {k: v for k, v in data.items() if k not in ("created", "clips_hash")}


def outputs(ws: Path) -> dict:
    comp = ws / "competition" / "demo"
    caches = sorted(p.parent for p in (comp / "cache").glob("*/manifest.json"))
    run = comp / "runs" / "cnn_small"
    folds = {}
    for fold_dir in sorted(run.glob("fold*")):
        done = json.loads((fold_dir / "done.json").read_text())
        folds[fold_dir.name] = {
            "oof": pd.read_parquet(fold_dir / "oof.parquet"),
            "score": done["score"],
            "epochs_run": done["epochs_run"],
            "losses": [h["loss"] for h in done["history"]],
        }
    return {
        "meta": pd.read_parquet(comp / "meta.parquet"),
        "folds": {p.name: p.read_bytes() for p in sorted((comp / "folds").glob("*.csv"))},
        "caches": [p.name for p in caches],
        "frames": [(p / "frames.f16").read_bytes() for p in caches],
        "index": [pd.read_parquet(p / "index.parquet") for p in caches],
        "manifest": [manifest(p) for p in caches],
        "fold_results": folds,
        "metrics": json.loads((run / "metrics.json").read_text()),
    }


@pytest.mark.soak
@pytest.mark.slow
def test_kills_anywhere_in_prepare_and_train_change_nothing(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    clean_ws, killed_ws = tmp_path / "clean", tmp_path / "killed"
    logs = tmp_path / "logs"
    logs.mkdir()
    work = clean_run(clean_ws, logs / "clean.log")

    attempts: list[Attempt] = []
    for stage, n_kills in KILLS.items():
        for i in range(n_kills):
            log = logs / f"killed-{stage}-{i}.log"
            attempt = killed_attempt(stage, killed_ws, log, rng.uniform(0.0, work[stage]))
            attempts.append(attempt)
            print(attempt)
            assert attempt.outcome in ("killed", "finished (rc 0)"), (
                f"rerun after {[str(a) for a in attempts[:-1]]} failed:\n{log.read_text()[-4000:]}"
            )
    final = logs / "killed-final.log"
    proc = start(["prepare", "train"], killed_ws, final)
    rc = proc.wait(timeout=STAGE_TIMEOUT)
    assert rc == 0, f"rerun after {[str(a) for a in attempts]} failed ({rc}):\n{final.read_text()[-4000:]}"

    history = "\n".join(str(a) for a in attempts)
    assert sum(a.outcome == "killed" for a in attempts) >= 3, f"too few kills landed:\n{history}"
    clean, killed = outputs(clean_ws), outputs(killed_ws)
    try:
        pd.testing.assert_frame_equal(killed["meta"], clean["meta"])
        assert killed["folds"] == clean["folds"], "fold file differs"
        assert killed["caches"] == clean["caches"], "cache folders differ"
        assert killed["manifest"] == clean["manifest"], "cache manifests differ"
        assert killed["frames"] == clean["frames"], "cache frames differ"
        for a, b in zip(killed["index"], clean["index"], strict=True):
            pd.testing.assert_frame_equal(a, b)
        assert sorted(killed["fold_results"]) == sorted(clean["fold_results"]) == ["fold0", "fold1", "fold2"]
        for name, got in killed["fold_results"].items():
            want = clean["fold_results"][name]
            pd.testing.assert_frame_equal(got["oof"], want["oof"], rtol=1e-4, obj=f"{name} oof")
            assert got["epochs_run"] == want["epochs_run"], name
            assert got["losses"] == pytest.approx(want["losses"], rel=1e-5), name
            assert got["score"] == pytest.approx(want["score"], abs=1e-9), name
        got, want = dict(killed["metrics"]), dict(clean["metrics"])
        assert got.pop("folds") == pytest.approx(want.pop("folds"), abs=1e-9), "metrics.json folds"
        assert got == pytest.approx(want, abs=1e-9), "metrics.json"
    except AssertionError as exc:
        raise AssertionError(f"kills:\n{history}\n{exc}") from None
