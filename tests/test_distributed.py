"""Multi-process training through torchrun (CPU processes with gloo here): DDP and one fold per process."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.conftest import PYTHON, subprocess_env, tiny_args


def run_cli(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [PYTHON, "-m", "audiotag", *tiny_args("prepare", "train", extra=["train.batch_size=8"]), *extra]
    return subprocess.run(args, env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=600)


def descendants(pid: int) -> list[int]:
    """Child processes of ``pid``, recursively (Linux /proc)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError):
            for children in Path(f"/proc/{current}/task").glob("*/children"):
                kids = [int(x) for x in children.read_text().split()]
                found += kids
                todo += kids
    return found


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie waiting to be reaped does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def fold_summaries(tmp_path: Path) -> list[dict]:
    run = tmp_path / "competition" / "demo" / "runs" / "cnn_small"
    return [json.loads((run / f"fold{f}" / "done.json").read_text()) for f in range(3)]


def assert_one_report_per_member(tmp_path: Path, stdout: str) -> None:
    """Only rank 0 reports; the demo's default extra member (a linear probe) is fitted by rank 0 alone."""
    runs = tmp_path / "competition" / "demo" / "runs"
    for member in ("cnn_small", "probe_aisfx"):
        assert stdout.count(f"run {member}: CV") == 1, stdout
        assert (runs / member / "metrics.json").is_file()
    assert stdout.count("mean ± std") == 2


@pytest.mark.soak
@pytest.mark.slow
def test_ddp_two_processes_train_every_fold_together(tmp_path: Path) -> None:
    proc = run_cli(tmp_path, "--gpus", "2", "--parallel", "ddp")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no CUDA GPU visible; running 2 CPU processes" in proc.stderr
    summaries = fold_summaries(tmp_path)
    assert all(s["processes"] == 2 and s["epochs_run"] == 2 for s in summaries)
    assert_one_report_per_member(tmp_path, proc.stdout)


@pytest.mark.soak
@pytest.mark.slow
def test_fold_parallel_shares_the_folds(tmp_path: Path) -> None:
    proc = run_cli(tmp_path, "--gpus", "2", "--parallel", "folds")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = fold_summaries(tmp_path)
    assert all(s["processes"] == 1 for s in summaries)
    assert_one_report_per_member(tmp_path, proc.stdout)


@pytest.mark.soak
@pytest.mark.slow
def test_ddp_run_killed_mid_epoch_resumes_exactly(tmp_path: Path) -> None:
    """SIGKILL a 2-process DDP run once a mid-epoch checkpoint exists; the rerun resumes every rank's
    random state and ends where an uninterrupted run ends."""
    extra = [
        *("train.batch_size=4", "train.folds=[0]", "train.epochs=3", "train.patience=3"),
        *("train.checkpoint_every_steps=1", "competition.generator.train_per_class=12"),
    ]
    args = [PYTHON, "-m", "audiotag", *tiny_args("prepare", "train", extra=extra), "--gpus", "2"]
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    last = killed / "competition" / "demo" / "runs" / "cnn_small" / "fold0" / "last.pt"

    proc = subprocess.Popen(
        args,
        env=subprocess_env(killed),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline, seen = time.time() + 300, 0
    while True:
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "no mid-epoch checkpoint appeared"
        mtime = last.stat().st_mtime_ns if last.exists() else 0
        if mtime != seen:
            seen = mtime
            partial = torch.load(last, weights_only=True)["state"].get("partial")
            if partial:  # the first one: the fold is far from done
                break
        time.sleep(0.02)
    ranks = descendants(proc.pid)
    assert len(ranks) >= 2
    proc.kill()  # torchrun alone: its ranks, each in a session of its own, must not train on
    proc.wait()
    while any(alive(pid) for pid in ranks):
        assert time.time() < deadline, "ranks outlived the killed torchrun"
        time.sleep(0.05)
    assert len(partial["ranks"]) == 2
    assert not torch.equal(partial["ranks"][0]["aug_state"], partial["ranks"][1]["aug_state"])

    resumed = subprocess.run(args, env=subprocess_env(killed), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr, resumed.stderr
    done = subprocess.run(args, env=subprocess_env(clean), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]

    def fold_result(ws: Path) -> tuple[list[float], pd.DataFrame]:
        fold = ws / "competition" / "demo" / "runs" / "cnn_small" / "fold0"
        history = json.loads((fold / "done.json").read_text())["history"]
        return [h["loss"] for h in history], pd.read_parquet(fold / "oof.parquet")

    (loss_a, oof_a), (loss_b, oof_b) = fold_result(killed), fold_result(clean)
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    pd.testing.assert_frame_equal(oof_a, oof_b, rtol=1e-4)


def test_batch_size_must_split_across_processes() -> None:
    from audiotag.core.errors import ConfigError
    from audiotag.stages.train import train_experiment
    from audiotag.train.distributed import DistContext
    from audiotag.train.experiment import load_experiment

    cfg = load_experiment(Path("configs/experiments/demo/cnn_small.yaml"))  # batch 32
    with pytest.raises(ConfigError, match="multiple of the 3 processes"):
        train_experiment(cfg, ctx=DistContext(rank=0, world=3, local_rank=0, mode="ddp"))


@pytest.mark.soak
@pytest.mark.slow
def test_ddp_student_takes_each_fold_s_pseudo_labels_from_rank_0(tmp_path: Path) -> None:
    """A pseudo-labelled student under ``--gpus 2``: rank 0 scores each fold's noisy clips with the
    teacher's same fold, once, and both ranks train on those labels (the same as one process writes)."""
    import numpy as np

    from audiotag.data.cache_reader import FeatureCache
    from audiotag.kaggle.inference import predict_member
    from audiotag.runs.pseudo_labels import SCORES_FILE
    from audiotag.scoring.predictions import read_predictions

    def train(run: str, *settings: str, gpus: int = 1) -> None:
        extra = ["train.epochs=1", "train.batch_size=8", *settings]
        args = [PYTHON, "-m", "audiotag", *tiny_args("train", competition="demo2019", extra=extra)]
        args += ["--folds", "0,1", "--run-name", run, "--gpus", str(gpus)]
        proc = subprocess.run(args, env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]

    student = ["train.pseudo_labels={from_run: teacher, mode: soft}", "train.subset_weights={noisy: 0.5}"]
    train("teacher", "train.subset_weights={noisy: 0}")
    train("student", *student)
    train("student_ddp", *student, gpus=2)
    runs = tmp_path / "competition" / "demo2019" / "runs"
    cache = FeatureCache(Path(json.loads((runs / "teacher" / "run.json").read_text())["cache_dir"]))
    for fold in (0, 1):
        fold_dir = runs / "student_ddp" / f"fold{fold}"
        assert json.loads((fold_dir / "done.json").read_text())["processes"] == 2
        record = json.loads((fold_dir / "pseudo_labels.json").read_text())
        assert record["teacher"] == "teacher" and record["teacher_fold"] == fold
        classes = pd.read_parquet(fold_dir / "oof.parquet").columns[1:].tolist()
        ids, scores = read_predictions(fold_dir / SCORES_FILE, classes)
        own = predict_member(runs / "teacher", [fold], cache, ids, len(classes), torch.device("cpu"))[0]
        assert np.allclose(scores, own, atol=1e-6)
        single_ids, single = read_predictions(runs / "student" / f"fold{fold}" / SCORES_FILE, classes)
        assert list(single_ids) == list(ids) and np.allclose(scores, single, atol=1e-6)
