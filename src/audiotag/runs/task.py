"""One small interface for the ways an experiment is trained into a run folder.

The train stage picks the implementation by the experiment's config (``stages/train.py``): fold by
fold training of a network (``runs/fold_training.py``) or the linear probe on frozen embeddings
(``runs/probe_training.py``). Each claims its run folder, records it (``runs/folder.py``) and ends
with the run's results (``runs/results.py``), so what follows (ensemble, leaderboard, package)
takes any run alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from audiotag.experiment import ExperimentConfig
from audiotag.runs.results import RunResult
from audiotag.train.distributed import SINGLE, DistContext
from audiotag.train.hooks import EpochHook


@dataclass(frozen=True)
class RunRequest:
    """Where and how a run is trained: ``run_dir`` defaults to ``runs/<run_name or cfg.name>`` (a tune
    trial's is elsewhere); ``on_epoch`` is told each epoch's validation score (``train/hooks.py``)."""

    run_name: str | None = None
    workers: int | None = None  # processes for the feature cache
    ctx: DistContext = SINGLE
    run_dir: Path | None = None
    on_epoch: EpochHook | None = None


class TrainingTask(Protocol):
    def train(self, cfg: ExperimentConfig, request: RunRequest) -> RunResult:
        """Train (or resume, or find done) the run of ``cfg``."""
        ...
