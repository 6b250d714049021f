"""One training epoch: seeded batches, SpecAugment, mixup, the weighted loss, and mid-epoch checkpoints.

Every random draw comes from generators seeded by (seed, fold, epoch), so a resumed epoch continues
exactly as the uninterrupted one would have on the same device; ``rank_progress`` is what a
mid-epoch checkpoint keeps of each process so that it can.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from audiotag.core.errors import TrainingError
from audiotag.core.log import progress
from audiotag.data.augment import apply_mask, mixup, resolve_specaugment, spec_mask
from audiotag.data.dataset import CropDataset
from audiotag.data.spec_augment_lib import SpecAugmentLib
from audiotag.train.distributed import SINGLE, DistContext
from audiotag.train.engine import StepEngine
from audiotag.train.experiment import ExperimentConfig
from audiotag.train.losses import training_loss

READ_EVERY = 20  # steps between reading the loss back from the device (LossTally)
TRAIN_HINT = "Lower train.lr, set train.grad_clip_norm"

# What a seed is for, so that the streams of one (seed, fold) never coincide.
EPOCH_STREAM, INIT_STREAM, CROP_STREAM, DROPOUT_STREAM, AUGMENT_STREAM = 0, 1, 2, 3, 4
SPEC_LIB_STREAM = 5  # train.spec_augment_lib's per-clip draws


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
            f"{n_procs}: resume with --gpus {len(ranks)} (on several machines: --gpus times --nnodes "
            f"{len(ranks)}), or delete the fold's last.pt to restart the fold"
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


class EpochLoader:
    """One DataLoader for all the epochs of a fold: its worker processes start once, not each epoch.

    Starting 8 workers took about 0.2 s on the CPU machine (more in a process holding a GPU's
    state), a large share of an epoch of a small set on a GPU (ESC-50's 1,600 clips are 50 steps).
    The workers' copies of the dataset do not see ``set_epoch``, so every index travels with its
    epoch as ``(epoch, i)``. ``close`` stops the workers.
    """

    def __init__(self, dataset: Dataset, num_workers: int | None, device: torch.device, seed: int) -> None:
        """``num_workers``: a ``train.num_workers`` setting (None: ``loader_workers``'s default)."""
        workers = loader_workers(num_workers, device)
        self._batches: list[list[tuple[int, int]]] = []
        self.loader: DataLoader | None = DataLoader(
            dataset,
            batch_sampler=_Batches(self),
            num_workers=workers,
            prefetch_factor=4 if workers else None,
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0,
            generator=torch.Generator().manual_seed(seed),  # not the global RNG
        )

    def epoch(self, epoch: int, batches: list[list[int]]) -> DataLoader:
        """The loader, set to yield ``batches`` (indices of the dataset) as epoch ``epoch``'s."""
        if self.loader is None:
            raise RuntimeError("EpochLoader used after close()")
        self._batches = [[(epoch, i) for i in batch] for batch in batches]
        return self.loader

    def close(self) -> None:
        iterator = getattr(self.loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        self.loader = None


def fold_loader(dataset: Dataset, cfg: ExperimentConfig, fold: int, device: torch.device) -> EpochLoader:
    """The ``EpochLoader`` of a fold's training crops, with ``train.num_workers`` workers."""
    return EpochLoader(dataset, cfg.train.num_workers, device, epoch_seed(cfg.train.seed, fold, 0))


class _Batches(Sampler):
    """The batch sampler of an ``EpochLoader``: whatever epoch it was last set to."""

    def __init__(self, owner: EpochLoader) -> None:
        self.owner = owner

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(self.owner._batches)

    def __len__(self) -> int:
        return len(self.owner._batches)


def train_one_epoch(
    engine: StepEngine,
    dataset: CropDataset,
    cfg: ExperimentConfig,
    fold: int,
    epoch: int,
    device: torch.device,
    ctx: DistContext = SINGLE,
    partial: dict | None = None,
    save_partial: Callable[[dict], None] | None = None,
    loader: EpochLoader | None = None,
) -> float:
    """One epoch; ``partial`` resumes it mid-way, ``save_partial`` is called every
    ``train.checkpoint_every_steps`` optimizer steps with what a resume needs. ``loader``: the
    fold's ``EpochLoader`` (one for this epoch alone when None)."""
    if loader is None:  # one for this epoch alone, stopped however the epoch ends
        loader = fold_loader(dataset, cfg, fold, device)
        try:
            return train_one_epoch(
                engine, dataset, cfg, fold, epoch, device, ctx, partial, save_partial, loader
            )
        finally:
            loader.close()
    tc = cfg.train
    model = engine.model
    mask_where, mask_fill = resolve_specaugment(tc.specaugment, model.backbone)
    spec_lib = SpecAugmentLib(tc.spec_augment_lib, cfg.features) if tc.spec_augment_lib else None
    model.train()
    dataset.set_epoch(epoch)
    batches = epoch_batches(len(dataset), tc.batch_size, epoch_seed(tc.seed, fold, epoch), epoch, ctx)
    start = partial["batch"] if partial else 0
    rank = ctx.rank if ctx.ddp else 0  # ranks see different data: give each its own masks and dropout
    aug = torch.Generator().manual_seed(epoch_seed(tc.seed + rank, fold, epoch, AUGMENT_STREAM))
    # dropout draws from the global generator: reseeding it per epoch makes a resumed epoch identical
    torch.manual_seed(epoch_seed(tc.seed + rank, fold, epoch, DROPOUT_STREAM))
    total, count = 0.0, 0
    if partial:
        total, count = restore_rank_progress(partial, rank, ctx.world if ctx.ddp else 1, aug, device)
    tally = LossTally(f"fold {fold}", epoch, total, count, device)
    bar = progress(
        loader.epoch(epoch, batches[start:]),
        desc=f"fold {fold} epoch {epoch + 1}",
        unit="batch",
        initial=start,
        total=len(batches),
    )
    for step, (x, y, w) in enumerate(bar, start=start):
        x = x.to(device, non_blocking=True).float()  # crops travel as float16 (data/dataset.py)
        y = y.to(device, non_blocking=True)
        w = w.to(device, non_blocking=True)
        with torch.no_grad():
            x = model.logmel(x)  # wave cache: the log-mel is computed here, on the training device
        if spec_lib is not None:  # per clip, seeded by (seed, fold, epoch, clip index): resumes exactly
            x = spec_lib.batch(x, [[tc.seed, fold, SPEC_LIB_STREAM, epoch, i] for i in batches[step]])
        keep = spec_mask(x, tc.specaugment, aug)
        if mask_where == "input":
            x = apply_mask(x, keep, mask_fill)
        if tc.mixup_alpha > 0 and torch.rand(1, generator=aug).item() < tc.mixup_prob:
            x, y, w = mixup(x, y, w, tc.mixup_alpha, aug)
        with engine.autocast():
            logits = (
                engine.forward_model(x) if mask_where == "input" else engine.forward_model(x, spec_keep=keep)
            )
        loss = training_loss(logits.float(), y, w, tc.loss, tc.noisy_loss)
        tally.add(loss, x.shape[0], step)
        stepped = engine.backward(loss)
        every = tc.checkpoint_every_steps
        remaining = len(batches) - step - 1
        if save_partial and every and stepped and remaining and (engine.steps_taken % every == 0):
            total, count = tally.read()  # a non-finite loss stops before anything is saved
            own = rank_progress(total, count, aug, device)
            ranks = ctx.gather(own) if ctx.ddp else [own]  # all DDP ranks reach this step together
            save_partial({"epoch": epoch, "batch": step + 1, "ranks": ranks})
        elif tally.due:
            bar.set_postfix(loss=tally.mean_text())
    total, count = tally.read()
    engine.flush()
    return total / max(count, 1)


class LossTally:
    """One epoch's loss sum, kept on the training device and read back every ``READ_EVERY`` steps.

    Reading a GPU's loss each step (``loss.item()``) makes the CPU wait for the GPU to finish the
    step, so it cannot queue the next one meanwhile. The sum is float64, as Python's float was. A
    non-finite loss is remembered (its first step and value) and raised at the next read, which
    comes before any checkpoint is written: the weights it reached are never saved. ``who`` and
    ``epoch`` name the run and epoch in that error; ``total``/``count`` resume a partial epoch.
    """

    def __init__(
        self, who: str, epoch: int, total: float, count: int, device: torch.device, hint: str = TRAIN_HINT
    ) -> None:
        self.who, self.epoch, self.hint = who, epoch, hint
        self.total = torch.tensor(total, dtype=torch.float64, device=device)
        self.count = count
        self.added = 0  # steps added by this tally (a resumed epoch's earlier steps not counted)
        self.bad_step = torch.tensor(-1, dtype=torch.long, device=device)
        self.bad_value = torch.tensor(0.0, dtype=torch.float64, device=device)

    def add(self, loss: torch.Tensor, n: int, step: int) -> None:
        value = loss.detach().double()
        first = ~torch.isfinite(value) & (self.bad_step < 0)
        self.bad_step = torch.where(first, step, self.bad_step)
        self.bad_value = torch.where(first, value, self.bad_value)
        self.total += value * n
        self.count += n
        self.added += 1

    @property
    def due(self) -> bool:
        """Whether the step just added is one after which the loss is read back (every READ_EVERY)."""
        return self.added % READ_EVERY == 0

    def read(self) -> tuple[float, int]:
        """(loss sum, samples) so far; TrainingError when a loss was not finite."""
        bad_step = int(self.bad_step)
        if bad_step >= 0:
            raise TrainingError(
                f"{self.who}: loss became {float(self.bad_value)} at epoch {self.epoch + 1}, step "
                f"{bad_step}; the last good checkpoint is kept. {self.hint}, or check the features for NaN"
            )
        return float(self.total), self.count

    def mean_text(self) -> str:
        """The mean loss so far for the progress bar (a read: it raises like ``read``)."""
        total, count = self.read()
        return f"{total / max(count, 1):.4f}"
