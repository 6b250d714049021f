"""The train stage: one run = one experiment config trained into ``runs/<name>/``.

The experiment chooses how (``runs/task.py``): a network fold by fold (``runs/fold_training.py``),
or a linear probe on frozen embeddings (``runs/probe_training.py``). Either way the run folder is
claimed by one process, describes itself before any fold starts and refuses a changed config
(``runs/folder.py``).
"""

from __future__ import annotations

from pathlib import Path

from audiotag.experiment import ExperimentConfig
from audiotag.models.probe import PROBE
from audiotag.runs.fold_training import FoldTraining
from audiotag.runs.probe_training import ProbeTraining
from audiotag.runs.results import RunResult
from audiotag.runs.task import RunRequest, TrainingTask
from audiotag.train.distributed import SINGLE, DistContext
from audiotag.train.hooks import EpochHook


def training_task(cfg: ExperimentConfig) -> TrainingTask[ExperimentConfig, RunResult]:
    """The experiment's way of training: linear evaluation for ``linear_probe``, else fold training."""
    return ProbeTraining() if cfg.model.name == PROBE else FoldTraining()


def train_experiment(
    cfg: ExperimentConfig,
    run_name: str | None = None,
    workers: int | None = None,
    ctx: DistContext = SINGLE,
    run_dir: Path | None = None,
    on_epoch: EpochHook | None = None,
) -> RunResult:
    """Train the run's folds. Under torchrun: DDP on every fold, or folds shared out among processes.

    ``run_dir``: the run folder (default ``runs/<run_name or cfg.name>``; a tune trial's is elsewhere);
    ``on_epoch``: told each epoch's validation score (``train/hooks.py``; the tune pruner).
    """
    request = RunRequest(run_name, workers, ctx, run_dir, on_epoch)
    return training_task(cfg).train(cfg, request)
