"""Training of one fold: build the model (or resume it from ``last.pt``), run epochs until the
schedule ends or early stopping, keep the best weights by the competition metric, then write the
fold's out-of-fold and test predictions.

``train_fold`` reads like a training engine's ``run``: :func:`build_fold`, :func:`resume`, then per
epoch :func:`run_epoch` (``train/epoch.py``) and :func:`end_epoch` (evaluate, keep the best, record,
checkpoint), and :func:`finish_fold`. Progress is a :class:`FoldState`; ``last.pt`` stores it (as a
plain dict) after every epoch, and within one every ``train.checkpoint_every_steps`` steps, so a
killed run resumes exactly where it was.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from audiotag.config.schema import InputNorm
from audiotag.core.atomic import atomic_write_json, load_json_object
from audiotag.core.errors import TrainingError
from audiotag.core.log import human_duration
from audiotag.data.dataset import CropDataset, silence_value
from audiotag.data.features import scale_rule
from audiotag.data.norm_stats import dataset_norm
from audiotag.data.wave_augment import fold_wave_augment
from audiotag.models.heads import set_prior_bias
from audiotag.models.registry import build_model, load_pretrained
from audiotag.scoring import metrics
from audiotag.scoring.predictions import write_predictions
from audiotag.train.checkpoint import (
    RESTART,
    EpochProgress,
    disk_full_guard,
    file_record,
    load_checkpoint,
    save_checkpoint,
    verify_best,
)
from audiotag.train.distributed import SINGLE, DistContext
from audiotag.train.engine import (
    StepEngine,
    configure_determinism,
    out_of_memory_advice,
    uses_channels_last,
)
from audiotag.train.epoch import (
    CROP_STREAM,
    INIT_STREAM,
    EpochLoader,
    epoch_seed,
    fold_loader,
    train_one_epoch,
)
from audiotag.train.experiment import ExperimentConfig
from audiotag.train.hooks import EpochHook, EpochResult, replay_history
from audiotag.train.losses import split_weights
from audiotag.train.predict import predict_clips
from audiotag.train.schedule import make_scheduler
from audiotag.train.trackers import Trackers, open_trackers

log = logging.getLogger(__name__)


@dataclass
class FoldData:
    fold: int
    classes: list[str]
    metric: str
    train_ids: list[str]
    train_targets: np.ndarray
    train_weights: np.ndarray
    val_ids: list[str]
    val_targets: np.ndarray
    val_scored: np.ndarray  # boolean mask: which validation clips the CV score uses
    test_ids: list[str]
    train_verified: np.ndarray | None = None  # boolean mask of the training clips; None: all verified


def crop_frames(cfg: ExperimentConfig) -> int:
    """Log-mel frames of a training crop (what the model is built for)."""
    return max(1, round(cfg.train.crop_seconds * cfg.features.frames_per_second))


def crop_rows(cfg: ExperimentConfig) -> int:
    """Cached rows of a training crop: log-mel frames, or samples for a wave cache."""
    return max(1, round(cfg.train.crop_seconds * cfg.features.cache_rate))


def evaluate(
    model, cache, data: FoldData, cfg: ExperimentConfig, device, ids=None, ctx: DistContext = SINGLE
) -> np.ndarray:
    """Clip scores of ``ids`` (the validation clips by default); with DDP each rank scores a shard."""
    ids = data.val_ids if ids is None else ids
    if ctx.ddp:
        mine = list(range(ctx.rank, len(ids), ctx.world))
        part = predict_for(model, cache, [ids[i] for i in mine], cfg, device) if mine else None
        out: np.ndarray | None = None
        for positions, scores in ctx.gather((mine, part)):
            if scores is None:
                continue
            if out is None:
                out = np.zeros((len(ids), scores.shape[1]))
            out[positions] = scores
        assert out is not None
        return out
    return predict_for(model, cache, ids, cfg, device)


def predict_for(model, cache, ids: list[str], cfg: ExperimentConfig, device) -> np.ndarray:
    """Clip scores with the experiment's evaluation settings (windows, hop, aggregation, TTA)."""
    window = crop_rows(cfg)
    tc = cfg.train
    return predict_clips(
        model,
        cache,
        ids,
        window=window,
        hop=max(1, round(window * tc.eval_hop_fraction)),
        batch_size=tc.batch_size * 2,
        pad_mode=tc.pad_mode,
        fill=silence_value(cfg.features),
        aggregate=tc.eval_aggregate,
        device=device,
        tta_shifts=tc.tta_shifts,
        tta_offsets=[gain_offset(cfg.features, g) for g in tc.tta_gains_db],
    )


def gain_offset(features, gain_db: float) -> float:
    """What a gain of ``gain_db`` adds to every cached value (exact except at the scale's floor)."""
    rule = scale_rule(features)
    if rule.per_db is None:
        raise TrainingError(f"train.tta_gains_db: not available for this front-end ({rule.description})")
    return gain_db * rule.per_db


def fold_score(data: FoldData, scores: np.ndarray) -> float:
    mask = data.val_scored
    return metrics.score(data.metric, data.val_targets[mask], scores[mask])


@dataclass
class FoldState(EpochProgress):
    """A fold's progress: epochs, history and the best epoch so far (for early stopping)."""

    best_score: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0  # epochs since the best one (early stopping)

    def running(self, epochs: int, patience: int) -> bool:
        return self.epoch < epochs and self.bad_epochs < patience


@dataclass
class FoldRun:
    """Everything one fold's training holds: its inputs, the model and its optimisation, its progress."""

    cfg: ExperimentConfig
    cache: Any
    data: FoldData
    fold_dir: Path
    device: torch.device
    ctx: DistContext
    model: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    engine: StepEngine
    dataset: CropDataset
    state: FoldState = field(default_factory=FoldState)
    loader: EpochLoader | None = None  # made at the first epoch, closed when the fold ends
    trackers: Trackers = field(default_factory=Trackers)  # train.loggers (rank 0 only)
    on_epoch: EpochHook | None = None  # told each epoch's score (train/hooks.py); may raise to stop

    @property
    def last_path(self) -> Path:
        return self.fold_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.fold_dir / "best.pt"

    @property
    def parts(self) -> dict[str, Any]:
        """What ``last.pt`` keeps besides the progress: what a killed fold needs to continue."""
        return dict(model=self.model, optimizer=self.optimizer, scheduler=self.scheduler, engine=self.engine)

    def save_last(self, partial: dict[str, Any] | None = None) -> None:
        """``last.pt`` (rank 0 only)."""
        if self.ctx.is_main:
            save_checkpoint(self.last_path, self.state.resume_payload(self.parts, partial))


def train_fold(
    cfg: ExperimentConfig,
    cache,
    data: FoldData,
    fold_dir: Path,
    device: torch.device,
    ctx: DistContext = SINGLE,
    on_epoch: EpochHook | None = None,
) -> dict:
    """Train one fold (or resume it) and write best.pt, oof.parquet, test.parquet and done.json.

    With DDP (``ctx.ddp``) every rank runs this together; only rank 0 writes files. ``on_epoch`` is
    told every epoch's score, those done before a resume first (``train/hooks.py``).
    """
    done_path = fold_dir / "done.json"
    if done_path.is_file():
        summary = load_json_object(done_path, f"delete the fold folder {fold_dir} to retrain the fold")
        verify_best(fold_dir / "best.pt", summary)  # a corrupt best.pt surfaces here, not when packaged
        log.info("fold %d: already done (%s %.4f), skipping", data.fold, data.metric, summary["score"])
        if on_epoch is not None:  # the hook needs the config; a plain rerun does not
            replay_history(on_epoch, data.fold, cfg.train.epochs, summary["history"])
        return summary
    run = build_fold(cfg, cache, data, fold_dir, device, ctx)
    resume(run)
    replay_history(on_epoch, data.fold, cfg.train.epochs, run.state.history)
    run.on_epoch = on_epoch
    run.trackers = open_trackers(cfg, fold_dir, data.fold, ctx)
    started = time.time()
    tc = cfg.train
    try:
        while run.state.running(tc.epochs, tc.patience):
            t0 = time.time()
            loss = run_epoch(run)
            end_epoch(run, loss, t0)
        if run.state.bad_epochs >= tc.patience:
            log.info("fold %d: early stop, no improvement for %d epochs", data.fold, tc.patience)
        if run.loader is not None:  # the workers' memory is free before the fold's predictions
            run.loader.close()
        return finish_fold(run, started)
    finally:
        if run.loader is not None:
            run.loader.close()
        run.trackers.close()


def build_fold(
    cfg: ExperimentConfig, cache, data: FoldData, fold_dir: Path, device: torch.device, ctx: DistContext
) -> FoldRun:
    """The model (pretrained weights unless a ``last.pt`` will replace them), optimiser, schedule,
    step engine and crop dataset of a fold, with fresh progress."""
    if ctx.is_main:
        fold_dir.mkdir(parents=True, exist_ok=True)
    tc = cfg.train
    torch.manual_seed(epoch_seed(tc.seed, data.fold, 0, INIT_STREAM))
    if cfg.model.input_norm == "dataset" and cfg.features.cache == "wave":
        raise TrainingError("model.input_norm: 'dataset' needs a log-mel cache; set features.cache: logmel")
    norm = (
        dataset_norm(cache, data.train_ids, cfg.features, cfg.model.norm_stats)
        if cfg.model.input_norm == "dataset"
        else None
    )
    n_classes = len(data.classes)
    model = build_model(cfg.model, cfg.features.n_mels, n_classes, crop_frames(cfg), norm, cfg.features)
    if tc.head_bias == "prior":  # before pretrained weights, which keep a head they bring
        set_prior_bias(model.head, data.train_targets)
    if not (fold_dir / "last.pt").is_file():
        load_pretrained(model, cfg.model, cfg.features)
    model = model.to(device)
    if uses_channels_last(tc, device):
        model = model.to(memory_format=torch.channels_last)
    configure_determinism(tc.deterministic, device)
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(
        model.param_groups(tc.lr, tc.backbone_lr_ratio, tc.weight_decay, tc.layer_decay), fused=fused or None
    )
    drop_last = len(data.train_ids) >= tc.batch_size
    batches = len(data.train_ids) // tc.batch_size if drop_last else 1  # global batches (all ranks)
    steps_per_epoch = max(1, batches // tc.grad_accum_steps)
    scheduler = make_scheduler(
        optimizer,
        warmup_steps=round(tc.warmup_epochs * steps_per_epoch),
        total_steps=tc.epochs * steps_per_epoch,
        min_ratio=tc.min_lr_ratio,
    )
    engine = StepEngine(model, optimizer, scheduler, tc, device, ddp=ctx.ddp)
    weights = data.train_weights
    if tc.noisy_loss is not None:  # one weight column per loss: train.loss, train.noisy_loss
        verified = np.ones(len(weights), bool) if data.train_verified is None else data.train_verified
        weights = split_weights(weights, verified)
    dataset = CropDataset(
        cache,
        data.train_ids,
        data.train_targets,
        weights,
        crop_rows(cfg),
        tc.pad_mode,
        silence_value(cfg.features),
        seed=epoch_seed(tc.seed, data.fold, 0, CROP_STREAM),
        wave_augment=fold_wave_augment(
            tc.wave_augment, cfg.features.sample_rate, cache, data.train_ids, data.train_verified, data.fold
        ),
    )
    return FoldRun(cfg, cache, data, fold_dir, device, ctx, model, optimizer, scheduler, engine, dataset)


def resume(run: FoldRun) -> None:
    """Continue from ``last.pt`` when a killed run left one: weights, optimiser, schedule, progress."""
    if not run.last_path.is_file():
        return
    ckpt = load_checkpoint(run.last_path, run.device)
    for name, part in run.parts.items():
        part.load_state_dict(ckpt[name])
    run.state = FoldState.from_checkpoint(ckpt["state"])
    partial = run.state.partial
    at = f", batch {partial['batch'] + 1}" if partial else ""
    log.info("fold %d: resuming from %s at epoch %d%s", run.data.fold, run.last_path, run.state.epoch + 1, at)


def run_epoch(run: FoldRun) -> float:
    """Train one epoch (the rest of it, after a mid-epoch checkpoint); its mean training loss."""
    tc, state = run.cfg.train, run.state
    run.model.set_backbone_trainable(state.epoch >= tc.freeze_backbone_epochs)
    if run.loader is None:
        run.loader = fold_loader(run.dataset, run.cfg, run.data.fold, run.device)
    try:
        return train_one_epoch(
            run.engine,
            run.dataset,
            run.cfg,
            run.data.fold,
            state.epoch,
            run.device,
            run.ctx,
            state.take_partial(),
            run.save_last,
            run.loader,
        )
    except torch.OutOfMemoryError:
        raise TrainingError(
            f"fold {run.data.fold}: {out_of_memory_advice(tc.batch_size, tc.grad_accum_steps)}"
        ) from None


def end_epoch(run: FoldRun, loss: float, t0: float) -> None:
    """Score the epoch on the validation clips, keep the weights in ``best.pt`` when they improve the
    best score (or count a bad epoch), record it in the history and checkpoint ``last.pt``."""
    data, state, epoch = run.data, run.state, run.state.epoch
    scores = evaluate(run.engine.eval_model, run.cache, data, run.cfg, run.device, ctx=run.ctx)
    score = fold_score(data, scores)
    improved = score > state.best_score
    if improved:
        state.best_score, state.best_epoch, state.bad_epochs = score, epoch, 0
        if run.ctx.is_main:
            weights = run.engine.eval_model.state_dict()
            save_checkpoint(run.best_path, {"model": weights, "epoch": epoch, "score": score})
    else:
        state.bad_epochs += 1
    state.history.append(
        {
            "epoch": epoch,
            "loss": loss,
            "score": score,
            "lr": run.optimizer.param_groups[-1]["lr"],  # the head's
            "seconds": round(time.time() - t0, 2),
        }
    )
    state.epoch = epoch + 1
    run.trackers.log_epoch(
        epoch + 1,
        {
            "train/loss": loss,
            f"val/{data.metric}": score,
            f"best/{data.metric}": state.best_score,
            "lr": state.history[-1]["lr"],
            "epoch_seconds": state.history[-1]["seconds"],
        },
    )
    run.save_last()
    log.info(
        "fold %d epoch %d/%d: loss %.4f, val %s %.4f%s (%.1fs%s)",
        data.fold,
        epoch + 1,
        run.cfg.train.epochs,
        loss,
        data.metric,
        score,
        " *" if improved else "",
        time.time() - t0,
        fold_eta(state, run.cfg.train.epochs),
    )
    if run.on_epoch is not None:
        run.on_epoch(EpochResult(data.fold, epoch, run.cfg.train.epochs, score, state.best_score))


def fold_eta(state: FoldState, epochs: int) -> str:
    """``; fold ETA <= 1m05s``: the remaining epochs at the mean epoch time so far (early stopping
    may end the fold sooner); nothing after the last epoch."""
    remaining = epochs - state.epoch
    if remaining <= 0 or not state.history:
        return ""
    mean = float(np.mean([h["seconds"] for h in state.history]))
    return f"; fold ETA <= {human_duration(mean * remaining)}"


def finish_fold(run: FoldRun, started: float) -> dict:
    """Predict the validation (out-of-fold) and test clips with the best weights; write them and
    ``done.json``, and drop ``last.pt``. Every rank returns the fold's summary."""
    data, ctx, device, model, state = run.data, run.ctx, run.device, run.model, run.state
    done_path = run.fold_dir / "done.json"
    ctx.barrier()  # best.pt is complete before any rank reads it
    model.load_state_dict(load_checkpoint(run.best_path, device)["model"])
    oof = evaluate(model, run.cache, data, run.cfg, device, ctx=ctx)
    test = (
        evaluate(model, run.cache, data, run.cfg, device, ids=data.test_ids, ctx=ctx)
        if data.test_ids
        else None
    )
    if not ctx.is_main:
        ctx.barrier()  # wait for rank 0 to write the fold's files
        return json.loads(done_path.read_text())
    for name, ids, scores in (("oof", data.val_ids, oof), ("test", data.test_ids, test)):
        if scores is not None:
            path = run.fold_dir / f"{name}.parquet"
            with disk_full_guard(path, scores.nbytes):
                write_predictions(path, ids, data.classes, scores)
    summary = {
        "fold": data.fold,
        "metric": data.metric,
        "score": fold_score(data, oof),
        "best_epoch": state.best_epoch,
        "epochs_run": state.epoch,
        "n_train": len(data.train_ids),
        "n_val": len(data.val_ids),
        "n_val_scored": int(data.val_scored.sum()),
        "input_norm": {"mean": model.norm_mean, "std": model.norm_std},
        "seed": run.cfg.train.seed,
        "precision": run.engine.precision,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "seconds": round(time.time() - started, 1),
        "history": state.history,
    }
    summary["processes"] = ctx.world if ctx.ddp else 1
    mask = data.val_scored
    run.trackers.log_per_class(state.best_epoch + 1, data.classes, data.val_targets[mask], oof[mask])
    summary["best_pt"] = file_record(run.best_path)  # checked wherever the finished fold's weights are used
    with disk_full_guard(done_path):
        atomic_write_json(done_path, summary)
    run.last_path.unlink(missing_ok=True)  # the best weights are kept; the resume state is no longer needed
    ctx.barrier()
    log.info(
        "fold %d: done, best %s %.4f at epoch %d",
        data.fold,
        data.metric,
        summary["score"],
        state.best_epoch + 1,
    )
    return summary


def load_fold_model(
    cfg: ExperimentConfig,
    fold_dir: Path,
    n_classes: int | None = None,
    device: str | torch.device = "cpu",
    remedy: str | None = None,
) -> Any:
    """A finished fold's model, as training built it (the input normalisation its ``done.json``
    recorded) with its ``best.pt``, checked against that record first. ``n_classes``: None takes the
    number the head was trained for; ``remedy`` ends a failed check's message."""
    done = json.loads((fold_dir / "done.json").read_text())
    best = fold_dir / "best.pt"
    verify_best(best, done, remedy)
    state = load_checkpoint(best, device, remedy or RESTART)["model"]
    if n_classes is None:
        n_classes = int(next(v for k, v in state.items() if k in ("head.fc.bias", "head.cla.bias")).shape[0])
    norm = InputNorm(**done["input_norm"]) if cfg.model.input_norm == "dataset" else None
    model = build_model(cfg.model, cfg.features.n_mels, n_classes, crop_frames(cfg), norm, cfg.features)
    model.load_state_dict(state)
    return model.to(device)
