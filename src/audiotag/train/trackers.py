"""Experiment tracking: what a fold's training reports to TensorBoard, MLflow or Weights & Biases.

``train.loggers`` names the trackers (default ``[tensorboard]``). Each receives, per fold:

- at the start, the resolved config (as YAML text; MLflow and W&B also as flat parameters);
- after every epoch, ``train/loss``, ``val/<metric>``, ``best/<metric>``, ``lr`` and ``epoch_seconds``
  at step = epoch (counted from 1, as the logs count);
- when the fold ends, the average precision of every class on the out-of-fold clips the CV scores,
  with the best epoch's weights (``per_class_ap/<class>``, at the best epoch's step).

Where they write:

- ``tensorboard``: event files in ``runs/<run>/tensorboard/fold<k>/`` (``tensorboard --logdir
  competition/<comp>/runs`` shows every run and fold);
- ``mlflow``: the tracking URI of ``MLFLOW_TRACKING_URI``, else a local file store
  ``competition/<comp>/mlruns/``; one MLflow experiment per competition, one MLflow run per fold;
- ``wandb``: project = the competition, group = the run, one W&B run per fold, files under the run
  folder; offline (synced later with ``wandb sync``) unless you are logged in (``WANDB_API_KEY`` or
  ``wandb login``); ``WANDB_MODE`` overrides either way, and ``AUDIOTAG_OFFLINE=1`` overrides that.

MLflow and W&B are optional packages, imported only when chosen; a missing one stops the fold before
it trains, naming the install command. With DDP only rank 0 reports (:func:`open_trackers`).
"""

from __future__ import annotations

import importlib
import logging
import netrc
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Protocol

import numpy as np

from audiotag.config.files import dump_yaml, flatten
from audiotag.core.errors import ConfigError
from audiotag.fetch.network import is_offline, require_network
from audiotag.train.distributed import DistContext
from audiotag.train.experiment import ExperimentConfig

log = logging.getLogger(__name__)

INSTALL = {
    "tensorboard": "pip install 'tensorboard>=2.16' (a pinned dependency: ./run.sh reinstalls it)",
    "mlflow": "pip install 'mlflow>=2.10' (or pip install -e '.[mlflow]')",
    "wandb": "pip install 'wandb>=0.16' (or pip install -e '.[wandb]')",
}
PARAM_LIMIT = 500  # MLflow's oldest limit on a parameter value's length


class Tracker(Protocol):
    def log_epoch(self, step: int, values: Mapping[str, float]) -> None: ...

    def log_per_class(self, step: int, ap: Mapping[str, float]) -> None: ...

    def close(self) -> None: ...


def import_optional(module: str, logger: str) -> ModuleType:
    """Import ``module`` for ``train.loggers: [logger]``; ConfigError with the install command if absent."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(
            f"train.loggers: {logger!r} needs the {logger} package, which is not installed ({exc}); "
            f"install it with: {INSTALL[logger]}, or remove {logger} from train.loggers"
        ) from None


def indented(text: str) -> str:
    """Markdown code block by indentation (TensorBoard's text tab renders markdown)."""
    return "\n".join(f"    {line}" for line in text.splitlines())


class TensorBoardTracker:
    def __init__(self, log_dir: Path, config_text: str) -> None:
        import_optional("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = log_dir
        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.writer.add_text("config", indented(config_text), global_step=0)
        self.writer.flush()

    def log_epoch(self, step: int, values: Mapping[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()  # a killed run keeps every finished epoch

    def log_per_class(self, step: int, ap: Mapping[str, float]) -> None:
        for name, value in ap.items():
            self.writer.add_scalar(f"per_class_ap/{name}", value, global_step=step)
        rows = "\n".join(f"| {name} | {value:.4f} |" for name, value in ap.items())
        self.writer.add_text("per_class_ap", f"| class | AP |\n|---|---|\n{rows}", global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def mlflow_uri(comp_dir: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or (comp_dir / "mlruns").resolve().as_uri()


class MlflowTracker:
    def __init__(self, comp_dir: Path, experiment: str, run_name: str, cfg_tree: dict, config_text: str):
        self.mlflow = import_optional("mlflow", "mlflow")
        uri = mlflow_uri(comp_dir)
        if uri.split(":", 1)[0] in ("http", "https", "databricks"):
            require_network(f"mlflow tracking at {uri}", "unset MLFLOW_TRACKING_URI to track in local files")
        self.mlflow.set_tracking_uri(uri)
        self.mlflow.set_experiment(experiment)
        self.run = self.mlflow.start_run(run_name=run_name)
        # text values cut to MLflow's parameter limit
        self.mlflow.log_params({k: str(v)[:PARAM_LIMIT] for k, v in flatten(cfg_tree).items()})
        self.mlflow.log_text(config_text, "config.yaml")
        log.info("mlflow: run %s in experiment %s at %s", run_name, experiment, uri)

    def log_epoch(self, step: int, values: Mapping[str, float]) -> None:
        self.mlflow.log_metrics(dict(values), step=step)

    def log_per_class(self, step: int, ap: Mapping[str, float]) -> None:
        # MLflow metric names allow letters, digits and _-./ and spaces (\w: str.isalnum() and _)
        safe = {re.sub(r"[^\w\-. /]", "_", f"per_class_ap/{k}"): v for k, v in ap.items()}
        self.mlflow.log_metrics(safe, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


def wandb_logged_in() -> bool:
    """An API key from the environment or from ``wandb login`` (stored in ~/.netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbTracker:
    def __init__(
        self, run_dir: Path, project: str, group: str, name: str, cfg_tree: dict, config_text: str
    ) -> None:
        self.wandb = import_optional("wandb", "wandb")
        mode = os.environ.get("WANDB_MODE") or ("online" if wandb_logged_in() else "offline")
        mode = "offline" if is_offline() else mode  # the network gate: AUDIOTAG_OFFLINE=1 wins
        self.run = self.wandb.init(
            project=project, group=group, name=name, config=cfg_tree, dir=str(run_dir), mode=mode
        )
        log.info("wandb: run %s of project %s (%s)", name, project, mode)

    def log_epoch(self, step: int, values: Mapping[str, float]) -> None:
        self.run.log(dict(values), step=step)

    def log_per_class(self, step: int, ap: Mapping[str, float]) -> None:
        self.run.summary.update({f"per_class_ap/{k}": v for k, v in ap.items()})

    def close(self) -> None:
        self.run.finish()


class Trackers:
    """Every chosen tracker as one; with none (another DDP rank, or ``train.loggers: []``) a no-op."""

    def __init__(self, trackers: Sequence[Tracker] = ()) -> None:
        self.trackers = list(trackers)

    def log_epoch(self, step: int, values: Mapping[str, float]) -> None:
        for tracker in self.trackers:
            tracker.log_epoch(step, values)

    def log_per_class(
        self, step: int, classes: Sequence[str], truth: np.ndarray, scores: np.ndarray
    ) -> dict[str, float]:
        """Each class's AP of ``scores`` against ``truth`` (classes without positives left out)."""
        if not self.trackers:
            return {}
        from audiotag.scoring.metrics import average_precision_per_class

        ap = average_precision_per_class(truth, scores)
        values = {name: float(v) for name, v in zip(classes, ap, strict=True) if not np.isnan(v)}
        for tracker in self.trackers:
            tracker.log_per_class(step, values)
        return values

    def close(self) -> None:
        for tracker in self.trackers:
            try:
                tracker.close()
            except Exception as exc:  # closing must not hide the fold's own outcome
                log.warning("closing the %s tracker failed: %s", type(tracker).__name__, exc)


def open_trackers(cfg: ExperimentConfig, fold_dir: Path, fold: int, ctx: DistContext) -> Trackers:
    """The trackers ``train.loggers`` names for one fold (rank 0 only)."""
    if not ctx.is_main or not cfg.train.loggers:
        return Trackers()
    run_dir = fold_dir.parent
    comp_dir = run_dir.parent.parent  # competition/<comp>/runs/<run>/fold<k>
    tree = cfg.model_dump(mode="json")
    text = dump_yaml(cfg)
    opened: list[Tracker] = []
    try:
        for name in dict.fromkeys(cfg.train.loggers):
            if name == "tensorboard":
                opened.append(TensorBoardTracker(run_dir / "tensorboard" / f"fold{fold}", text))
            elif name == "mlflow":
                opened.append(
                    MlflowTracker(comp_dir, cfg.competition.name, f"{run_dir.name}/fold{fold}", tree, text)
                )
            elif name == "wandb":
                opened.append(
                    WandbTracker(
                        run_dir, cfg.competition.name, run_dir.name, f"{run_dir.name}-fold{fold}", tree, text
                    )
                )
    except BaseException:
        Trackers(opened).close()
        raise
    return Trackers(opened)
