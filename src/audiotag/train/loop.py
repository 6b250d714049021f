"""Training of one fold: crops, SpecAugment, mixup, weighted BCE, AdamW with warm-up + cosine decay,
early stopping on the competition metric, and a checkpoint after every epoch so a killed run resumes.

Every random draw comes from generators seeded by (seed, fold, epoch), so a resumed fold continues
exactly as the uninterrupted one would have on the same device.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from audiotag import metrics
from audiotag.atomic import atomic_write_json
from audiotag.config import ExperimentConfig
from audiotag.data.augment import apply_mask, mixup, resolve_specaugment, spec_mask
from audiotag.data.dataset import CropDataset, silence_value
from audiotag.data.features import scale_rule
from audiotag.data.norm_stats import dataset_norm
from audiotag.errors import TrainingError
from audiotag.models.registry import build_model, load_pretrained
from audiotag.predictions import write_predictions
from audiotag.train.checkpoint import load_checkpoint, save_checkpoint
from audiotag.train.distributed import SINGLE, DistContext
from audiotag.train.engine import StepEngine, configure_determinism, out_of_memory_advice
from audiotag.train.losses import weighted_bce
from audiotag.train.predict import predict_clips
from audiotag.train.schedule import make_scheduler

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


# What a seed is for, so that the streams of one (seed, fold) never coincide.
EPOCH_STREAM, INIT_STREAM, CROP_STREAM, DROPOUT_STREAM, AUGMENT_STREAM = 0, 1, 2, 3, 4


def rank_progress(total: float, count: int, aug: torch.Generator, device: torch.device) -> dict:
    """What one process needs to continue an epoch exactly: its loss sums and its random states.

    Dropout draws from the global generator of the device it runs on, so a GPU's is saved too.
    """
    return {
        "total": total,
        "count": count,
        "aug_state": aug.get_state(),
        "rng_state": torch.get_rng_state(),
        "cuda_rng_state": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def restore_rank_progress(
    partial: dict, rank: int, n_procs: int, aug: torch.Generator, device: torch.device
) -> tuple[float, int]:
    """Set this process's random states from a mid-epoch checkpoint; its (loss total, count).

    Each of the ``n_procs`` DDP ranks gets its own states back; the epoch's batches are split among
    the ranks, so it must go on with as many processes as it was saved by. Checkpoints written before
    states were kept per rank hold one set, used by a single process.
    """
    ranks = partial.get("ranks") or [partial]
    if len(ranks) != n_procs:
        raise TrainingError(
            f"the mid-epoch checkpoint was written by {len(ranks)} training process(es), this run has "
            f"{n_procs}: resume with --gpus {len(ranks)}, or delete the fold's last.pt to restart the fold"
        )
    own = ranks[rank]
    aug.set_state(own["aug_state"])
    torch.set_rng_state(own["rng_state"])
    if own.get("cuda_rng_state") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(own["cuda_rng_state"], device)
    return own["total"], own["count"]


def epoch_seed(seed: int, fold: int, epoch: int, stream: int = EPOCH_STREAM) -> int:
    entropy = [seed % 2**32, fold, stream, epoch]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


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


def train_fold(
    cfg: ExperimentConfig,
    cache,
    data: FoldData,
    fold_dir: Path,
    device: torch.device,
    ctx: DistContext = SINGLE,
) -> dict:
    """Train one fold (or resume it) and write best.pt, oof.parquet, test.parquet and done.json.

    With DDP (``ctx.ddp``) every rank runs this together; only rank 0 writes files.
    """
    done_path = fold_dir / "done.json"
    if done_path.is_file():
        summary = json.loads(done_path.read_text())
        log.info("fold %d: already done (%s %.4f), skipping", data.fold, data.metric, summary["score"])
        return summary
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
    last_path, best_path = fold_dir / "last.pt", fold_dir / "best.pt"
    if not last_path.is_file():
        load_pretrained(model, cfg.model, cfg.features)
    model = model.to(device)
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    configure_determinism(tc.deterministic, device)
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(
        model.param_groups(tc.lr, tc.backbone_lr_ratio, tc.weight_decay), fused=fused or None
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
    state = {"epoch": 0, "best_score": -math.inf, "best_epoch": -1, "bad_epochs": 0, "history": []}
    if last_path.is_file():
        ckpt = load_checkpoint(last_path, device)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        engine.load_state_dict(ckpt["engine"])
        state = ckpt["state"]
        at = f", batch {state['partial']['batch'] + 1}" if state.get("partial") else ""
        log.info("fold %d: resuming from %s at epoch %d%s", data.fold, last_path, state["epoch"] + 1, at)

    dataset = CropDataset(
        cache,
        data.train_ids,
        data.train_targets,
        data.train_weights,
        crop_rows(cfg),
        tc.pad_mode,
        silence_value(cfg.features),
        seed=epoch_seed(tc.seed, data.fold, 0, CROP_STREAM),
    )
    started = time.time()
    while state["epoch"] < tc.epochs and state["bad_epochs"] < tc.patience:
        epoch = state["epoch"]
        t0 = time.time()
        model.set_backbone_trainable(epoch >= tc.freeze_backbone_epochs)
        partial = state.pop("partial", None)
        partial = partial if partial and partial["epoch"] == epoch else None

        def save_partial(progress: dict) -> None:
            if ctx.is_main:
                save_checkpoint(last_path, resume_state(model, optimizer, scheduler, engine, state, progress))

        try:
            loss = _train_one_epoch(
                engine, dataset, cfg, data.fold, epoch, device, ctx, partial, save_partial
            )
        except torch.OutOfMemoryError:
            raise TrainingError(
                f"fold {data.fold}: {out_of_memory_advice(tc.batch_size, tc.grad_accum_steps)}"
            ) from None
        score = fold_score(data, evaluate(engine.eval_model, cache, data, cfg, device, ctx=ctx))
        improved = score > state["best_score"]
        if improved:
            state.update(best_score=score, best_epoch=epoch, bad_epochs=0)
            if ctx.is_main:
                weights = engine.eval_model.state_dict()
                save_checkpoint(best_path, {"model": weights, "epoch": epoch, "score": score})
        else:
            state["bad_epochs"] += 1
        state["history"].append(
            {
                "epoch": epoch,
                "loss": loss,
                "score": score,
                "lr": optimizer.param_groups[-1]["lr"],  # the head's
                "seconds": round(time.time() - t0, 2),
            }
        )
        state["epoch"] = epoch + 1
        if ctx.is_main:
            save_checkpoint(last_path, resume_state(model, optimizer, scheduler, engine, state))
        log.info(
            "fold %d epoch %d/%d: loss %.4f, val %s %.4f%s (%.1fs)",
            data.fold,
            epoch + 1,
            tc.epochs,
            loss,
            data.metric,
            score,
            " *" if improved else "",
            time.time() - t0,
        )
    if state["bad_epochs"] >= tc.patience:
        log.info("fold %d: early stop, no improvement for %d epochs", data.fold, tc.patience)

    ctx.barrier()  # best.pt is complete before any rank reads it
    model.load_state_dict(load_checkpoint(best_path, device)["model"])
    oof = evaluate(model, cache, data, cfg, device, ctx=ctx)
    test = evaluate(model, cache, data, cfg, device, ids=data.test_ids, ctx=ctx) if data.test_ids else None
    if not ctx.is_main:
        ctx.barrier()  # wait for rank 0 to write the fold's files
        return json.loads(done_path.read_text())
    write_predictions(fold_dir / "oof.parquet", data.val_ids, data.classes, oof)
    if test is not None:
        write_predictions(fold_dir / "test.parquet", data.test_ids, data.classes, test)
    summary = {
        "fold": data.fold,
        "metric": data.metric,
        "score": fold_score(data, oof),
        "best_epoch": state["best_epoch"],
        "epochs_run": state["epoch"],
        "n_train": len(data.train_ids),
        "n_val": len(data.val_ids),
        "n_val_scored": int(data.val_scored.sum()),
        "input_norm": {"mean": model.norm_mean, "std": model.norm_std},
        "seed": tc.seed,
        "precision": engine.precision,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "seconds": round(time.time() - started, 1),
        "history": state["history"],
    }
    summary["processes"] = ctx.world if ctx.ddp else 1
    atomic_write_json(done_path, summary)
    last_path.unlink(missing_ok=True)  # the best weights are kept; the resume state is no longer needed
    ctx.barrier()
    log.info(
        "fold %d: done, best %s %.4f at epoch %d",
        data.fold,
        data.metric,
        summary["score"],
        state["best_epoch"] + 1,
    )
    return summary


def resume_state(model, optimizer, scheduler, engine, state: dict, partial: dict | None = None) -> dict:
    """Everything a killed fold needs to continue: weights, optimizer, schedule, engine, progress."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "engine": engine.state_dict(),
        "state": {**state, "partial": partial} if partial else state,
    }


def loader_workers(configured: int | None, device: torch.device) -> int:
    if configured is not None:
        return configured
    return min(8, os.cpu_count() or 1) if device.type == "cuda" else 0


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, ctx: DistContext) -> list[list[int]]:
    """This rank's index batches of one epoch, in order: a seeded permutation, so a resumed epoch can
    start at any batch and still see exactly what the uninterrupted epoch would have seen."""
    if ctx.ddp:
        sampler = DistributedSampler(range(n), ctx.world, ctx.rank, shuffle=True, seed=seed, drop_last=True)
        sampler.set_epoch(epoch)
        indices, size = list(sampler), batch_size // ctx.world
    else:
        indices, size = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist(), batch_size
    batches = [indices[i : i + size] for i in range(0, len(indices), size)]
    if n >= batch_size:
        batches = [b for b in batches if len(b) == size]  # drop the last partial batch
    return batches


def _train_one_epoch(
    engine: StepEngine,
    dataset,
    cfg,
    fold,
    epoch,
    device,
    ctx: DistContext = SINGLE,
    partial: dict | None = None,
    save_partial: Callable[[dict], None] | None = None,
) -> float:
    """One epoch; ``partial`` resumes it mid-way, ``save_partial`` is called every
    ``train.checkpoint_every_steps`` optimizer steps with what a resume needs."""
    tc = cfg.train
    model = engine.model
    mask_where, mask_fill = resolve_specaugment(tc.specaugment, model.backbone)
    model.train()
    dataset.set_epoch(epoch)
    batches = epoch_batches(len(dataset), tc.batch_size, epoch_seed(tc.seed, fold, epoch), epoch, ctx)
    start = partial["batch"] if partial else 0
    workers = loader_workers(tc.num_workers, device)
    loader = DataLoader(
        dataset,
        batch_sampler=batches[start:],
        num_workers=workers,
        prefetch_factor=4 if workers else None,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(epoch_seed(tc.seed, fold, epoch)),  # not the global RNG
    )
    rank = ctx.rank if ctx.ddp else 0  # ranks see different data: give each its own masks and dropout
    aug = torch.Generator().manual_seed(epoch_seed(tc.seed + rank, fold, epoch, AUGMENT_STREAM))
    # dropout draws from the global generator: reseeding it per epoch makes a resumed epoch identical
    torch.manual_seed(epoch_seed(tc.seed + rank, fold, epoch, DROPOUT_STREAM))
    total, count = 0.0, 0
    if partial:
        total, count = restore_rank_progress(partial, rank, ctx.world if ctx.ddp else 1, aug, device)
    bar = tqdm(
        loader, desc=f"fold {fold} epoch {epoch + 1}", leave=False, disable=None, unit="batch", initial=start
    )
    for step, (x, y, w) in enumerate(bar, start=start):
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        w = w.to(device, non_blocking=True)
        with torch.no_grad():
            x = model.logmel(x)  # wave cache: the log-mel is computed here, on the training device
        keep = spec_mask(x, tc.specaugment, aug)
        if mask_where == "input":
            x = apply_mask(x, keep, mask_fill)
        if tc.mixup_alpha > 0 and torch.rand(1, generator=aug).item() < tc.mixup_prob:
            x, y, w = mixup(x, y, w, tc.mixup_alpha, aug)
        with engine.autocast():
            logits = (
                engine.forward_model(x) if mask_where == "input" else engine.forward_model(x, spec_keep=keep)
            )
        loss = weighted_bce(logits.float(), y, w)
        if not torch.isfinite(loss):
            raise TrainingError(
                f"fold {fold}: loss became {loss.item()} at epoch {epoch + 1}, step {step}; the last good "
                "checkpoint is kept. Lower train.lr, set train.grad_clip_norm, or check the features for NaN"
            )
        stepped = engine.backward(loss)
        total += loss.item() * x.shape[0]
        count += x.shape[0]
        bar.set_postfix(loss=f"{total / count:.4f}")
        every = tc.checkpoint_every_steps
        remaining = len(batches) - step - 1
        if save_partial and every and stepped and remaining and (engine.steps_taken % every == 0):
            own = rank_progress(total, count, aug, device)
            ranks = ctx.gather(own) if ctx.ddp else [own]  # all DDP ranks reach this step together
            save_partial({"epoch": epoch, "batch": step + 1, "ranks": ranks})
    engine.flush()
    return total / max(count, 1)
