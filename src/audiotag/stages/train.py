"""The train stage: one run = one experiment config trained fold by fold in ``runs/<name>/``.

A run directory describes itself: the resolved config, its hash, the feature key, the fold file and
its SHA-256, and the code version are written before any fold starts. Starting a run again with a
different config is refused (the numbers in it would no longer match its config).

One process trains a run folder at a time: ``train`` claims it with an OS file lock on
``runs/<name>/owner.lock`` (released by the kernel when the process dies, so a killed run never
blocks the next one), which records the owner's pid, host and start time. A second ``train`` on the
same run folder is refused with those, instead of both writing the same checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import logging
import platform
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel
from pydantic_core import to_jsonable_python

import audiotag
from audiotag.competitions.base import warn_about_rules
from audiotag.competitions.folds import load_folds
from audiotag.config.competition import keys_not_affecting
from audiotag.config.files import dump_yaml
from audiotag.config.schema import TrainConfig
from audiotag.core.atomic import atomic_write_json, atomic_write_text
from audiotag.core.digests import file_sha256
from audiotag.core.errors import ConfigError, TrainingError
from audiotag.core.locks import claim_folder, describe_owner
from audiotag.core.paths import REPO_ROOT
from audiotag.data.cache_reader import FeatureCache
from audiotag.experiment import ExperimentConfig
from audiotag.models.probe import PROBE
from audiotag.models.registry import check_pretrained
from audiotag.scoring import metrics
from audiotag.scoring.fold_scores import FoldScores
from audiotag.scoring.predictions import read_predictions, write_predictions
from audiotag.stages.auto_settings import resolve_auto
from audiotag.stages.prepare import Prepared, prepare
from audiotag.stages.pseudo_labels import (
    check_teacher,
    model_predictor,
    with_pseudo_labels,
    write_pseudo_labels,
)
from audiotag.train.distributed import SINGLE, DistContext, device_for
from audiotag.train.hooks import EpochHook
from audiotag.train.loop import FoldData, train_fold

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


@dataclass
class RunResult(FoldScores):
    name: str
    dir: Path
    metric: str
    fold_scores: dict[int, float]
    complete: bool
    test_score: float | None = None  # fold-mean test predictions on known test labels (demo only)


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def result_settings(cfg: ExperimentConfig) -> dict[str, object]:
    return {k: v for k, v in flatten(cfg.model_dump(mode="json")).items() if k not in RUNTIME_KEYS}


_NO_DEFAULT = object()


def setting_default(cfg: BaseModel, key: str) -> object:
    """The JSON value of the default of the setting at the dotted ``key`` of ``cfg`` (or a sentinel)."""
    *parents, name = key.split(".")
    node: object = cfg
    for part in parents:
        node = getattr(node, part, None)
    if not isinstance(node, BaseModel):
        return _NO_DEFAULT
    field = type(node).model_fields.get(name)
    if field is None:  # a key the config writes at its default without having it (another competition kind's)
        return node.model_dump(mode="json").get(name, _NO_DEFAULT)
    if field.is_required():
        return _NO_DEFAULT
    return to_jsonable_python(field.get_default(call_default_factory=True))


def changed_settings(
    saved: dict[str, object], settings: dict[str, object], cfg: ExperimentConfig
) -> list[str]:
    """Settings that differ between a run's ``run.json`` and ``cfg``.

    A setting the saved run lacks (one added to audiotag after the run started) counts as unchanged
    while it has its default value, which reproduces what the older code did.
    """
    changed = []
    for key in sorted(set(saved) | set(settings)):
        if key in RUNTIME_KEYS:  # recorded by older code before the key stopped counting
            continue
        if key not in saved and settings[key] == setting_default(cfg, key):
            continue
        if saved.get(key) != settings.get(key):
            changed.append(key)
    return changed


def code_version() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"],
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


def check_or_write_run_info(run_dir: Path, cfg: ExperimentConfig, prepared: Prepared) -> None:
    info_path = run_dir / "run.json"
    settings = result_settings(cfg)
    if info_path.is_file():
        saved = json.loads(info_path.read_text())["settings"]
        changed = changed_settings(saved, settings, cfg)
        if changed:
            diff = "; ".join(f"{k}: {saved.get(k)!r} -> {settings.get(k)!r}" for k in changed[:8])
            raise ConfigError(
                f"run {run_dir.name!r} in {run_dir} was started with a different config ({diff}). "
                "Give the new config its own run with --run-name NAME, or delete the run folder to start over"
            )
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg))
    atomic_write_json(
        info_path,
        {
            "name": run_dir.name,
            "settings": settings,
            "feature_key": cfg.features.key(),
            "cache_dir": str(prepared.cache_dir),
            "folds_file": str(prepared.folds_path),
            "folds_sha256": file_sha256(prepared.folds_path),
            "code_version": code_version(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
    )


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


def fold_data(prepared: Prepared, cfg: ExperimentConfig, fold: int) -> FoldData:
    comp = prepared.competition
    clips = comp.training_clips(prepared.table)
    # the fold file is the truth: a clip table's own "fold" column (predefined folds, as given) goes
    clips = clips.drop(columns="fold", errors="ignore")
    train = clips.merge(load_folds(prepared.folds_path), on="clip_id")
    if prepared.skipped:
        dropped = train["clip_id"].isin(prepared.skipped)
        if dropped.any():
            log.warning(
                "fold %d: leaving out %d train clip(s) with unusable audio (see %s)",
                fold,
                int(dropped.sum()),
                prepared.cache_dir / "report.csv",
            )
            train = train[~dropped].reset_index(drop=True)
    targets = comp.label_matrix(train["labels"])
    weights = clip_weights(train, cfg.train)
    is_val = (train["fold"] == fold).to_numpy()
    in_training = ~is_val & (weights > 0)  # weight 0: out of training, still validated
    scored = train["verified"].to_numpy()[is_val]
    if not scored.any():
        log.warning("fold %d: no verified clip in validation, scoring on all of them", fold)
        scored = np.ones_like(scored)
    test = prepared.table[prepared.table["split"] == "test"]
    return FoldData(
        fold=fold,
        classes=comp.classes,
        metric=comp.metric,
        train_ids=train["clip_id"][in_training].tolist(),
        train_targets=targets[in_training],
        train_weights=weights[in_training],
        val_ids=train["clip_id"][is_val].tolist(),
        val_targets=targets[is_val],
        val_scored=scored.astype(bool),
        test_ids=test["clip_id"].tolist(),
        train_verified=train["verified"].to_numpy(bool)[in_training],
    )


def fold_inputs(prepared: Prepared, cfg: ExperimentConfig, fold: int, run_dir: Path) -> FoldData:
    """The fold's clips and targets, its unverified clips relabelled when ``train.pseudo_labels`` asks."""
    data = fold_data(prepared, cfg, fold)
    spec, fold_dir = cfg.train.pseudo_labels, run_dir / f"fold{fold}"
    if spec is None or (fold_dir / "done.json").is_file():  # a finished fold is not trained again
        return data
    return with_pseudo_labels(data, spec, fold_dir, prepared.competition.task != "multi_label")


def check_train_inputs(cfg: ExperimentConfig, prepared: Prepared, run_dir: Path) -> None:
    """Refuse ``train.subset_weights`` naming no subset of the clips, and a pseudo-label teacher that
    cannot serve every fold to train (missing, unfinished, or trained on the fold's validation clips)."""
    weights = clip_weights(prepared.competition.training_clips(prepared.table), cfg.train)
    unweighted = int((weights == 0).sum())
    if unweighted:
        log.info("train: %d clip(s) of loss weight 0 left out of training, still validated", unweighted)
    spec = cfg.train.pseudo_labels
    if spec is not None:
        n_folds = prepared.competition.cfg.n_folds
        folds = [f for f in (cfg.train.folds or range(n_folds)) if 0 <= f < n_folds]
        check_teacher(spec, prepared, run_dir, [fold_data(prepared, cfg, fold) for fold in folds])


def clip_weights(train: pd.DataFrame, tc: TrainConfig) -> np.ndarray:
    """Each clip's loss weight: its subset's in ``train.subset_weights``, else 1 for a verified clip and
    ``train.unverified_weight`` for the others. A name that is no subset of the clips is refused."""
    known = sorted(train["subset"].unique())
    unknown = sorted(set(tc.subset_weights) - set(known))
    if unknown:
        raise ConfigError(
            f"train.subset_weights: {unknown} not among the subsets of this run's training clips {known}; "
            "name only those (competition.subsets chooses which subsets are read)"
        )
    weights = np.where(train["verified"], 1.0, tc.unverified_weight)
    for subset, weight in tc.subset_weights.items():
        weights = np.where(train["subset"] == subset, weight, weights)
    if not (weights > 0).any():
        raise ConfigError("train.subset_weights / train.unverified_weight: every training clip weighs 0")
    return weights


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
    if cfg.model.name == PROBE:  # linear evaluation on frozen embeddings
        from audiotag.stages.probe import train_probe

        tc = cfg.train
        if tc.loss.name != "bce" or tc.noisy_loss is not None or tc.pseudo_labels is not None:
            raise ConfigError(
                "model linear_probe fits a logistic regression: train.loss, train.noisy_loss and "
                "train.pseudo_labels do not apply to it; leave them out (train.subset_weights does apply)"
            )

        return train_probe(cfg, run_name, workers, ctx)
    if ctx.is_main:
        warn_about_rules(cfg.competition, cfg.model.pretrained)
    if ctx.ddp and cfg.train.batch_size % ctx.world:
        raise ConfigError(
            f"train.batch_size {cfg.train.batch_size} must be a multiple of the {ctx.world} processes "
            "(it is the global batch, shared out among them)"
        )
    if ctx.is_main:
        prepared = prepare(cfg.competition, cfg.features, workers=workers)
    ctx.barrier()
    if not ctx.is_main:  # everything is up to date now: this only reads
        prepared = prepare(cfg.competition, cfg.features, workers=workers)
    comp = prepared.competition
    run_dir = run_dir or comp.dir / "runs" / (run_name or cfg.name)
    check_pretrained(cfg.model, cfg.features)
    with claim_run(run_dir) if ctx.is_main else contextlib.nullcontext():
        return _train_run(cfg, prepared, run_dir, ctx, on_epoch)


def _train_run(
    cfg: ExperimentConfig,
    prepared: Prepared,
    run_dir: Path,
    ctx: DistContext,
    on_epoch: EpochHook | None = None,
) -> RunResult:
    comp = prepared.competition
    if cfg.train.auto:  # derived at the run's first start, saved in it, reused (stages/auto_settings.py)
        cfg = resolve_auto(cfg, prepared, run_dir, device_for(ctx, cfg.train.device), ctx)
    if ctx.is_main:
        check_train_inputs(cfg, prepared, run_dir)  # before run.json records settings the data refuses
        check_or_write_run_info(run_dir, cfg, prepared)
    ctx.barrier()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = device_for(ctx, cfg.train.device)
    n_folds = comp.cfg.n_folds
    folds = cfg.train.folds if cfg.train.folds is not None else list(range(n_folds))
    bad = [f for f in folds if not 0 <= f < n_folds]
    if bad:
        raise ConfigError(f"train.folds: {bad} out of range; this competition has folds 0..{n_folds - 1}")
    cache = FeatureCache(prepared.cache_dir)
    log.info("train: run %s on %s, folds %s, %s threads", run_dir, device, folds, torch.get_num_threads())
    if cfg.train.pseudo_labels is not None:  # teacher fold k scores fold k's noisy clips, once
        if ctx.is_main:
            inputs = [fold_data(prepared, cfg, fold) for fold in folds]
            predictor = model_predictor(cfg, prepared, device)
            write_pseudo_labels(cfg.train.pseudo_labels, prepared, run_dir, inputs, predictor)
        ctx.barrier()
    if ctx.world > 1 and not ctx.ddp:  # one fold per process, each process writes its own folds
        for fold in folds[ctx.rank :: ctx.world]:
            data = fold_inputs(prepared, cfg, fold, run_dir)
            train_fold(cfg, cache, data, run_dir / f"fold{fold}", device, on_epoch=on_epoch)
        ctx.barrier()
    else:
        for fold in folds:
            data = fold_inputs(prepared, cfg, fold, run_dir)
            train_fold(cfg, cache, data, run_dir / f"fold{fold}", device, ctx, on_epoch)
    if not ctx.is_main:
        return RunResult(run_dir.name, run_dir, comp.metric, {}, False)
    return collect_run(run_dir, comp.classes, comp.metric, n_folds, prepared)


def collect_run(
    run_dir: Path, classes: list[str], metric: str, n_folds: int, prepared: Prepared
) -> RunResult:
    """Gather fold results; when every fold is done, write run-level OOF, test and metrics files."""
    scores: dict[int, float] = {}
    for fold in range(n_folds):
        done = run_dir / f"fold{fold}" / "done.json"
        if done.is_file():
            scores[fold] = json.loads(done.read_text())["score"]
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
