"""A run folder: its identity (the settings that make its numbers what they are), the record of them
written before any work starts (``run.json``; ``pretrain.json`` for pretraining), the refusal of a
rerun whose settings changed, the claim of one process on the folder, and the run's results (fold
scores; once every fold is done, the run's ``oof.parquet``, ``test.parquet`` and ``metrics.json``).

One process trains a run folder at a time: ``claim_run`` holds ``runs/<name>/owner.lock``
(``core/locks.py``); a second ``train`` on it is refused naming the owner, instead of both writing the
same checkpoints.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel

import audiotag
from audiotag.config.competition import keys_not_affecting
from audiotag.config.files import dump_yaml, flatten, schema_default
from audiotag.core.atomic import atomic_write_json, atomic_write_text, load_json_object
from audiotag.core.digests import file_sha256
from audiotag.core.errors import ConfigError, DataError, TrainingError
from audiotag.core.locks import claim_folder, describe_owner
from audiotag.core.paths import checkout_root
from audiotag.runs.prepare import Prepared
from audiotag.scoring import metrics
from audiotag.scoring.fold_scores import FoldScores
from audiotag.scoring.predictions import read_predictions, write_predictions
from audiotag.train.experiment import ExperimentConfig

log = logging.getLogger(__name__)

# Settings that change how a run executes but not its results; they may differ on resume.
RUNTIME_KEYS = {
    "train.folds",
    "train.device",
    "train.num_workers",
    "train.threads",
    "train.compile",
    "train.compile_mode",
    "train.channels_last",
    "train.checkpoint_every_steps",
    "train.loggers",  # where the numbers are reported, not what they are
    *(f"competition.{key}" for key in keys_not_affecting("run")),  # where the files are, what else runs
}


def run_settings(cfg: BaseModel, runtime_keys: set[str]) -> dict[str, object]:
    """The dotted settings of ``cfg`` that decide a run's results (all but ``runtime_keys``)."""
    return {k: v for k, v in flatten(cfg.model_dump(mode="json")).items() if k not in runtime_keys}


def result_settings(cfg: ExperimentConfig) -> dict[str, object]:
    return run_settings(cfg, RUNTIME_KEYS)


def changed_settings(
    saved: dict[str, object],
    settings: dict[str, object],
    cfg: BaseModel,
    runtime_keys: set[str] = RUNTIME_KEYS,
) -> list[str]:
    """Settings that differ between a run's saved record and ``cfg``.

    A setting the saved run lacks (one added to audiotag after the run started) counts as unchanged
    while it has its default value, which reproduces what the older code did.
    """
    changed = []
    for key in sorted(set(saved) | set(settings)):
        if key in runtime_keys:  # recorded by older code before the key stopped counting
            continue
        if key not in saved and settings[key] == schema_default(cfg, key):
            continue
        if saved.get(key) != settings.get(key):
            changed.append(key)
    return changed


def record_changes(info_path: Path, cfg: BaseModel, runtime_keys: set[str] = RUNTIME_KEYS) -> str | None:
    """The settings of ``cfg`` that differ from those ``info_path`` recorded, the first few as ``key:
    old -> new`` ('' when none); None when there is no record yet."""
    if not info_path.is_file():
        return None
    lost = (
        f"the settings {info_path.parent.name!r} was started with are lost: delete {info_path.parent} to "
        "start over, or give this run another name"
    )
    saved, settings = load_json_object(info_path, lost).get("settings"), run_settings(cfg, runtime_keys)
    if not isinstance(saved, dict):
        raise DataError(f"{info_path}: damaged, no 'settings'; {lost}")
    changed = changed_settings(saved, settings, cfg, runtime_keys)
    return "; ".join(f"{k}: {saved.get(k)!r} -> {settings.get(k)!r}" for k in changed[:8])


def code_version() -> str:
    """The package version, with ``git describe`` of the checkout it runs from (an installed package:
    the version alone, never the describe of a repository the environment happens to sit in)."""
    root = checkout_root()
    if root is None:
        return audiotag.__version__
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        if out.returncode == 0 and out.stdout.strip():
            return f"{audiotag.__version__}+{out.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    return audiotag.__version__


def refuse_changes(
    info_path: Path,
    cfg: BaseModel,
    refusal: Callable[[str], str],
    runtime_keys: set[str] = RUNTIME_KEYS,
) -> bool:
    """Whether ``info_path`` (``run.json``, ``pretrain.json``) exists; ConfigError ``refusal(the changes)``
    when it recorded other settings than ``cfg``'s."""
    changes = record_changes(info_path, cfg, runtime_keys)
    if changes:
        raise ConfigError(refusal(changes))
    return changes is not None


def check_or_write_record(
    info_path: Path,
    cfg: BaseModel,
    refusal: Callable[[str], str],
    fields: dict[str, object],
    runtime_keys: set[str] = RUNTIME_KEYS,
) -> bool:
    """``refuse_changes``; when there is no record yet, write it (``fields``, the settings and the
    code's versions) and ``config.yaml`` beside it."""
    if refuse_changes(info_path, cfg, refusal, runtime_keys):
        return True
    info_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(info_path.parent / "config.yaml", dump_yaml(cfg))
    atomic_write_json(
        info_path,
        {
            "name": fields.pop("name"),
            "settings": run_settings(cfg, runtime_keys),
            **fields,
            "code_version": code_version(),
            "torch": torch.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
    )
    return False


def check_or_write_run_info(run_dir: Path, cfg: ExperimentConfig, prepared: Prepared) -> None:
    def refusal(changes: str) -> str:
        return (
            f"run {run_dir.name!r} in {run_dir} was started with a different config ({changes}). Give the "
            "new config its own run with --run-name NAME, or delete the run folder to start over"
        )

    fields: dict[str, object] = {
        "name": run_dir.name,
        "feature_key": cfg.features.key(),
        "cache_dir": str(prepared.cache_dir),
        "folds_file": str(prepared.folds_path),
        "folds_sha256": file_sha256(prepared.folds_path),
        "python": platform.python_version(),
    }
    # train.folds is what one call trains, not what the run is (its fold folders say that): the saved
    # config keeps null, not the [0] of a first `--folds 0` call of a run finished later
    saved = cfg.model_copy(update={"train": cfg.train.model_copy(update={"folds": None})})
    check_or_write_record(run_dir / "run.json", saved, refusal, fields)


OWNER_LOCK = "owner.lock"


@contextlib.contextmanager
def claim_run(run_dir: Path) -> Iterator[None]:
    """Hold the run folder for this process; TrainingError naming the owner when another holds it."""

    def refusal(owner: str) -> TrainingError:
        return TrainingError(
            f"run {run_dir.name!r} in {run_dir} is being trained by {owner}; two processes on one run "
            "folder would overwrite each other's checkpoints. Wait for it to finish (or stop it), or give "
            "this one its own run with --run-name NAME"
        )

    with claim_folder(run_dir, f"train {run_dir.name}", refusal, OWNER_LOCK) as died:
        if died:
            log.info("train: run %s: its previous owner, %s, is gone", run_dir.name, describe_owner(died))
        yield


@dataclass
class RunResult(FoldScores):
    name: str
    dir: Path
    metric: str
    fold_scores: dict[int, float]
    complete: bool
    test_score: float | None = None  # fold-mean test predictions on known test labels (demo only)


def collect_run(
    run_dir: Path, classes: list[str], metric: str, n_folds: int, prepared: Prepared
) -> RunResult:
    """Gather fold results; when every fold is done, write run-level OOF, test and metrics files."""
    scores: dict[int, float] = {}
    for fold in range(n_folds):
        done = run_dir / f"fold{fold}" / "done.json"
        if done.is_file():
            again = f"delete the fold folder {done.parent} to retrain the fold"
            score = load_json_object(done, again).get("score")
            if not isinstance(score, int | float):
                raise DataError(f"{done}: damaged, no score; {again}")
            scores[fold] = float(score)
    complete = len(scores) == n_folds
    comp = prepared.competition
    result = RunResult(run_dir.name, run_dir, metric, scores, complete)
    test_files = [run_dir / f"fold{f}" / "test.parquet" for f in sorted(scores)]
    if test_files and all(p.is_file() for p in test_files):
        parts = [read_predictions(p, classes) for p in test_files]
        test_ids, fold_mean = parts[0][0], np.mean([part[1] for part in parts], axis=0)
        result.test_score = comp.score_test(test_ids, fold_mean)
    if not complete:
        log.info(
            "train: %d of %d folds done; run the remaining folds to get OOF and test files",
            len(scores),
            n_folds,
        )
        return result
    oof_ids: list[str] = []
    oof_parts, test_parts = [], []
    test_ids: list[str] | None = None
    for fold in range(n_folds):
        ids, scores_fold = read_predictions(run_dir / f"fold{fold}" / "oof.parquet", classes)
        oof_ids += ids
        oof_parts.append(scores_fold)
        test_path = run_dir / f"fold{fold}" / "test.parquet"
        if test_path.is_file():
            test_ids, test_fold = read_predictions(test_path, classes)
            test_parts.append(test_fold)
    oof = np.concatenate(oof_parts)
    write_predictions(run_dir / "oof.parquet", oof_ids, classes, oof)
    if test_parts and test_ids is not None:
        write_predictions(run_dir / "test.parquet", test_ids, classes, np.mean(test_parts, axis=0))
    table = prepared.table.set_index("clip_id").loc[oof_ids]
    truth = comp.label_matrix(table["labels"])
    verified = table["verified"].to_numpy()
    pooled = metrics.score(metric, truth[verified], oof[verified]) if verified.any() else float("nan")
    atomic_write_json(
        run_dir / "metrics.json",
        {
            "metric": metric,
            "folds": {str(k): v for k, v in scores.items()},
            "mean": result.mean,
            "std": result.std,
            "oof_pooled": pooled,
            "n_oof": len(oof_ids),
            "test_score": result.test_score,
        },
    )
    return result
