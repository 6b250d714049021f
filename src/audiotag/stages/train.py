"""The train stage: one run = one experiment config trained into ``runs/<name>/`` by the training
task (``runs/task.py``) its model chooses."""

from __future__ import annotations

from audiotag.models.probe import PROBE
from audiotag.runs.fold_training import FoldTraining
from audiotag.runs.folder import RunResult
from audiotag.runs.probe_training import ProbeTraining
from audiotag.runs.task import RunRequest, TrainingTask
from audiotag.train.distributed import SINGLE, DistContext
from audiotag.train.experiment import ExperimentConfig


def train_experiment(
    cfg: ExperimentConfig, run_name: str | None = None, workers: int | None = None, ctx: DistContext = SINGLE
) -> RunResult:
    """Train the run ``runs/<run_name or cfg.name>``. Under torchrun: DDP on every fold, or folds shared
    out among processes."""
    task: TrainingTask[ExperimentConfig, RunResult] = FoldTraining()
    if cfg.model.name == PROBE:  # linear evaluation
        task = ProbeTraining()
    return task.train(cfg, RunRequest(run_name, workers, ctx))
