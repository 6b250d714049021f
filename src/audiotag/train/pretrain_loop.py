"""Self-supervised pretraining (BYOL-A, COLA): epochs of unit batches, two inputs compared per clip.

Per step: the cache's units (one per clip, or COLA's two segments of each) become the two inputs of
the method (``train/pretrain_methods.py``: BYOL-A's two augmented views of a pre-normalised unit,
COLA's anchor and noisy positive), the method's objective is computed under the shared step engine
(``train/engine.py``: AMP, clipping, DDP, compile), Adam steps, and the method's after-step update
runs (BYOL-A's EMA target).

Resuming. ``last.pt`` is written after every epoch (and every ``checkpoint_every_steps`` steps
within one): the method's modules (BYOL-A: online and target networks; COLA: its network),
optimiser, schedule, engine, each process's own state (BYOL-A's mixup memory), the progress, and,
within an epoch, every process's random states and loss sums. Batch order, unit crops, augmentation
draws and dropout come from generators seeded by (seed, epoch) and saved mid-epoch, so a run
killed anywhere resumes to the same weights as an uninterrupted one (same device and number of
processes).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from audiotag.config.schema import InputNorm
from audiotag.core.errors import TrainingError
from audiotag.core.log import progress
from audiotag.data.units import UnitDataset, unit_frames
from audiotag.models.registry import family_of, load_pretrained
from audiotag.models.tagger import Tagger
from audiotag.train.checkpoint import EpochProgress, load_checkpoint, save_checkpoint
from audiotag.train.distributed import SINGLE, DistContext
from audiotag.train.engine import StepEngine, configure_determinism
from audiotag.train.epoch import (
    AUGMENT_STREAM,
    CROP_STREAM,
    DROPOUT_STREAM,
    INIT_STREAM,
    EpochLoader,
    LossTally,
    epoch_batches,
    epoch_seed,
    rank_progress,
    restore_rank_progress,
)
from audiotag.train.pretrain_config import PretrainConfig
from audiotag.train.pretrain_methods import ByolaMethod, ColaMethod, Method
from audiotag.train.schedule import make_scheduler

log = logging.getLogger(__name__)

RESTART = "delete it to restart the pretraining from scratch"


@dataclass
class Pretrainer:
    """Everything one pretraining run holds."""

    cfg: PretrainConfig
    out_dir: Path
    device: torch.device
    ctx: DistContext
    norm: InputNorm
    dataset: UnitDataset
    method: Method
    optimizer: torch.optim.Optimizer
    scheduler: Any
    engine: StepEngine
    state: EpochProgress = field(default_factory=EpochProgress)
    loader: EpochLoader | None = None  # made at the first epoch, closed when pretraining ends

    @property
    def last_path(self) -> Path:
        return self.out_dir / "last.pt"

    @property
    def encoder(self) -> torch.nn.Module:
        return self.method.encoder

    @property
    def parts(self) -> dict[str, Any]:
        """What ``last.pt`` keeps besides the progress and the processes' own states."""
        return {
            **self.method.parts(),
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "engine": self.engine,
        }

    def save_last(self, partial: dict[str, Any] | None = None) -> None:
        """``last.pt`` (written by rank 0; every rank must call it, as the processes' states are gathered)."""
        memory = self.method.rank_state()
        memories = self.ctx.gather(memory) if self.ctx.world > 1 else [memory]
        if not self.ctx.is_main:
            return
        save_checkpoint(
            self.last_path, {**self.state.resume_payload(self.parts, partial), "memory": memories}
        )


def steps_per_epoch(n_units: int, batch_size: int) -> int:
    return max(1, n_units // batch_size)


def build(
    cfg: PretrainConfig,
    cache,
    keys: list[str],
    norm: InputNorm,
    out_dir: Path,
    device: torch.device,
    ctx: DistContext = SINGLE,
) -> Pretrainer:
    """The networks (initialised from ``model.pretrained`` unless ``last.pt`` will replace them),
    optimiser, schedule, step engine, unit dataset and method of a run."""
    if len(keys) < 2:
        raise TrainingError(f"pretraining needs at least 2 clips (BatchNorm on batches); got {len(keys)}")
    torch.manual_seed(epoch_seed(cfg.seed, 0, 0, INIT_STREAM))
    frames, _ = unit_frames(cfg.features, cfg.unit_seconds)
    encoder = family_of(cfg.model.name).build_backbone(cfg.model, cfg.features.n_mels, frames)
    if cfg.model.pretrained is not None and not (out_dir / "last.pt").is_file():
        load_pretrained(Tagger(encoder, torch.nn.Identity()), cfg.model, cfg.features)
    method = make_method(cfg, encoder, device)
    crop_seed = epoch_seed(cfg.seed, 0, 0, CROP_STREAM)
    dataset = UnitDataset(cache, keys, cfg.features, cfg.unit_seconds, crop_seed, method.segments)
    configure_determinism(cfg.deterministic, device)
    optimizer = torch.optim.Adam(
        method.network.parameters(),
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        fused=device.type == "cuda" or None,
    )
    per_epoch = steps_per_epoch(len(keys), cfg.batch_size)
    cosine = cfg.lr_schedule == "cosine"
    scheduler = make_scheduler(
        optimizer,
        warmup_steps=round(cfg.warmup_epochs * per_epoch) if cosine else 0,
        total_steps=cfg.epochs * per_epoch,
        min_ratio=cfg.min_lr_ratio if cosine else 1.0,  # 1.0: the constant rate of the official code
    )
    engine = StepEngine(method.network, optimizer, scheduler, cfg.engine_settings(), device, ddp=ctx.ddp)
    return Pretrainer(cfg, out_dir, device, ctx, norm, dataset, method, optimizer, scheduler, engine)


def make_method(cfg: PretrainConfig, encoder: torch.nn.Module, device: torch.device) -> Method:
    if cfg.method == "cola":
        return ColaMethod(encoder, cfg.cola, cfg.features, device)
    return ByolaMethod(encoder, cfg.augment, cfg.projection_dim, cfg.projection_hidden, cfg.ema_decay, device)


def resume(run: Pretrainer) -> None:
    """Continue from ``last.pt`` when a killed run left one."""
    if not run.last_path.is_file():
        return
    ckpt = load_checkpoint(run.last_path, run.device, remedy=RESTART)
    for name, part in run.parts.items():
        part.load_state_dict(ckpt[name])
    run.state = EpochProgress.from_checkpoint(ckpt["state"])
    memories = ckpt["memory"]
    n_procs = run.ctx.world if run.ctx.ddp else 1
    if len(memories) != n_procs and any(memories):
        log.warning(
            "pretrain: last.pt was written by %d process(es), this run has %d: the mixup memories are "
            "shared out again, so the run no longer matches an uninterrupted one exactly",
            len(memories),
            n_procs,
        )
    rank = run.ctx.rank if run.ctx.ddp else 0
    run.method.load_rank_state(memories[rank % len(memories)], run.device)
    at = f", batch {run.state.partial['batch'] + 1}" if run.state.partial else ""
    log.info("pretrain: resuming from %s at epoch %d%s", run.last_path, run.state.epoch + 1, at)


def run_epoch(run: Pretrainer) -> tuple[float, int]:
    """Train one epoch (the rest of it after a mid-epoch checkpoint): (mean loss, units seen by all
    processes in this call)."""
    cfg, ctx, device, epoch = run.cfg, run.ctx, run.device, run.state.epoch
    run.method.network.train()
    run.dataset.set_epoch(epoch)
    batches = epoch_batches(len(run.dataset), cfg.batch_size, epoch_seed(cfg.seed, 0, epoch), epoch, ctx)
    partial = run.state.take_partial()
    start = partial["batch"] if partial else 0
    if run.loader is None:  # one for every epoch: its workers start once
        run.loader = EpochLoader(run.dataset, cfg.num_workers, device, epoch_seed(cfg.seed, 0, 0))
    rank = ctx.rank if ctx.ddp else 0
    aug = torch.Generator().manual_seed(epoch_seed(cfg.seed + rank, 0, epoch, AUGMENT_STREAM))
    torch.manual_seed(epoch_seed(cfg.seed + rank, 0, epoch, DROPOUT_STREAM))  # dropout draws from it
    total, count = 0.0, 0
    if partial:
        total, count = restore_rank_progress(partial, rank, ctx.world if ctx.ddp else 1, aug, device)
    tally = LossTally("pretrain", epoch, total, count, device, hint="Lower lr, set grad_clip_norm")
    seen = 0
    bar = progress(
        run.loader.epoch(epoch, batches[start:]),
        desc=f"pretrain epoch {epoch + 1}",
        unit="batch",
        initial=start,
        total=len(batches),
    )
    for step, units in enumerate(bar, start=start):
        with torch.no_grad():
            first, second = run.method.views(units.to(device, non_blocking=True), run.norm, aug)
        loss = run.method.loss(run.engine, first, second)
        tally.add(loss, first.shape[0], step)  # read back every few steps: see LossTally
        if run.engine.backward(loss):
            run.method.after_step()
        seen += first.shape[0]
        every, remaining = cfg.checkpoint_every_steps, len(batches) - step - 1
        if every and remaining and run.engine.steps_taken % every == 0:
            total, count = tally.read()  # a non-finite loss stops before the save
            own = rank_progress(total, count, aug, device)
            ranks = ctx.gather(own) if ctx.ddp else [own]
            run.save_last({"epoch": epoch, "batch": step + 1, "ranks": ranks})
        elif tally.due:
            bar.set_postfix(loss=tally.mean_text())
    total, count = tally.read()
    run.engine.flush()
    if ctx.ddp:
        totals = ctx.gather((total, count, seen))
        total, count, seen = (sum(t[i] for t in totals) for i in range(3))
    return total / max(count, 1), int(seen)


def end_epoch(run: Pretrainer, loss: float, seen: int, seconds: float) -> None:
    state = run.state
    rate = seen / seconds if seconds > 0 else math.nan
    state.history.append(
        {
            "epoch": state.epoch,
            "loss": loss,
            "lr": run.optimizer.param_groups[0]["lr"],
            "seconds": round(seconds, 2),
            "clips_per_second": round(rate, 2),
        }
    )
    state.epoch += 1
    run.save_last()
    log.info(
        "pretrain epoch %d/%d: loss %.4f (%.1fs, %.1f clips/s)",
        state.epoch,
        run.cfg.epochs,
        loss,
        seconds,
        rate,
    )


def pretrain(run: Pretrainer) -> Pretrainer:
    """Resume if a ``last.pt`` exists, then train until ``epochs``; the caller writes the encoder."""
    resume(run)
    try:
        while run.state.epoch < run.cfg.epochs:
            started = time.time()
            try:
                loss, seen = run_epoch(run)
            except torch.OutOfMemoryError:
                half = max(2, run.cfg.batch_size // 2)
                raise TrainingError(
                    f"pretrain: the GPU ran out of memory at batch_size={run.cfg.batch_size}; try --set "
                    f"batch_size={half}, or precision=bf16"
                ) from None
            end_epoch(run, loss, seen, time.time() - started)
    finally:
        if run.loader is not None:
            run.loader.close()
    return run
