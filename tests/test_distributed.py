"""Multi-process training through torchrun (CPU processes with gloo here): DDP and one fold per process."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PYTHON, subprocess_env, tiny_args


def run_cli(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [PYTHON, "-m", "audiotag", *tiny_args("prepare", "train", extra=["train.batch_size=8"]), *extra]
    return subprocess.run(args, env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=600)


def fold_summaries(tmp_path: Path) -> list[dict]:
    run = tmp_path / "competition" / "demo" / "runs" / "cnn_small"
    return [json.loads((run / f"fold{f}" / "done.json").read_text()) for f in range(3)]


@pytest.mark.slow
def test_ddp_two_processes_train_every_fold_together(tmp_path: Path) -> None:
    proc = run_cli(tmp_path, "--gpus", "2", "--parallel", "ddp")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no CUDA GPU visible; running 2 CPU processes" in proc.stderr
    summaries = fold_summaries(tmp_path)
    assert all(s["processes"] == 2 and s["epochs_run"] == 2 for s in summaries)
    assert proc.stdout.count("mean ± std") == 1  # only rank 0 reports
    assert (tmp_path / "competition" / "demo" / "runs" / "cnn_small" / "metrics.json").is_file()


@pytest.mark.slow
def test_fold_parallel_shares_the_folds(tmp_path: Path) -> None:
    proc = run_cli(tmp_path, "--gpus", "2", "--parallel", "folds")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = fold_summaries(tmp_path)
    assert all(s["processes"] == 1 for s in summaries)
    assert proc.stdout.count("mean ± std") == 1


def test_batch_size_must_split_across_processes() -> None:
    from audiotag.config import load_experiment
    from audiotag.errors import ConfigError
    from audiotag.train.distributed import DistContext
    from audiotag.train.runner import train_experiment

    cfg = load_experiment(Path("configs/experiments/demo/cnn_small.yaml"))  # batch 32
    with pytest.raises(ConfigError, match="multiple of the 3 processes"):
        train_experiment(cfg, ctx=DistContext(rank=0, world=3, local_rank=0, mode="ddp"))
