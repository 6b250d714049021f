"""Fold training: an experiment's network trained fold by fold in its run folder (``runs/<name>/``).
Under torchrun: DDP on every fold, or folds shared out among the processes."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch

from audiotag.competitions import get_competition
from audiotag.competitions.base import warn_about_rules
from audiotag.core.errors import ConfigError
from audiotag.data.cache_reader import FeatureCache
from audiotag.models.registry import check_pretrained
from audiotag.runs.auto_settings import resolve_auto
from audiotag.runs.folder import RunResult, check_or_write_run_info, claim_run, collect_run
from audiotag.runs.prepare import Prepared, clip_weights, fold_data, prepare, run_folds
from audiotag.runs.pseudo_labels import (
    check_teacher,
    model_predictor,
    with_pseudo_labels,
    write_pseudo_labels,
)
from audiotag.runs.task import RunRequest
from audiotag.train.distributed import DistContext, check_shared, device_for
from audiotag.train.experiment import ExperimentConfig
from audiotag.train.hooks import EpochHook
from audiotag.train.loop import FoldData, train_fold

log = logging.getLogger(__name__)


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


class FoldTraining:
    """The ``TrainingTask`` of every network experiment."""

    def train(self, cfg: ExperimentConfig, request: RunRequest) -> RunResult:
        ctx, workers = request.ctx, request.workers
        if ctx.is_main:
            warn_about_rules(cfg.competition, cfg.model.pretrained)
        if ctx.ddp and cfg.train.batch_size % ctx.world:
            raise ConfigError(
                f"train.batch_size {cfg.train.batch_size} must be a multiple of the {ctx.world} processes "
                "(it is the global batch, shared out among them)"
            )
        prepared = ctx.from_main(lambda: prepare(cfg.competition, cfg.features, workers=workers))
        comp = prepared.competition
        check_shared(ctx, get_competition(cfg.competition).dir)  # this machine's view of it
        run_dir = request.run_dir or comp.dir / "runs" / (request.run_name or cfg.name)
        check_pretrained(cfg.model, cfg.features)
        with claim_run(run_dir) if ctx.is_main else contextlib.nullcontext():
            return _train_run(cfg, prepared, run_dir, ctx, request.on_epoch)


def _train_run(
    cfg: ExperimentConfig,
    prepared: Prepared,
    run_dir: Path,
    ctx: DistContext,
    on_epoch: EpochHook | None = None,
) -> RunResult:
    comp = prepared.competition
    if cfg.train.auto:  # derived at the run's first start, saved in it, reused (runs/auto_settings.py)
        cfg = resolve_auto(cfg, prepared, run_dir, device_for(ctx, cfg.train.device), ctx)
    if ctx.is_main:
        check_train_inputs(cfg, prepared, run_dir)  # before run.json records settings the data refuses
        check_or_write_run_info(run_dir, cfg, prepared)
    ctx.barrier()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = device_for(ctx, cfg.train.device)
    n_folds = comp.cfg.n_folds
    folds = run_folds(cfg, n_folds)
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
