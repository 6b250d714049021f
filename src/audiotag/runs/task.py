"""One small interface for the ways a config is trained into its folder: ``train(cfg, request)``.

Three implementations: a network fold by fold (``runs/fold_training.py``) and the linear probe
(``runs/probe_training.py``), which the train stage picks between, and pretraining
(``stages/pretrain.py``). Each claims its folder, records its settings and refuses a rerun with
others (``runs/folder.py``), and resumes what a killed process left.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from audiotag.train.distributed import SINGLE, DistContext
from audiotag.train.hooks import EpochHook


@dataclass(frozen=True)
class RunRequest:
    """Where and how a run is trained: ``run_dir`` defaults to ``runs/<run_name or cfg.name>`` (a tune
    trial's is elsewhere); ``on_epoch`` is told each epoch's validation score (``train/hooks.py``)."""

    run_name: str | None = None  # (fold training and the probe)
    workers: int | None = None  # processes for the feature cache
    ctx: DistContext = SINGLE
    run_dir: Path | None = None
    on_epoch: EpochHook | None = None


ConfigT = TypeVar("ConfigT", contravariant=True)
ResultT = TypeVar("ResultT", covariant=True)


class TrainingTask(Protocol[ConfigT, ResultT]):
    def train(self, cfg: ConfigT, request: RunRequest) -> ResultT:
        """Train (or resume, or find done) what ``cfg`` describes."""
        ...
