"""``train.auto``: training settings derived from the data, as pure arithmetic on a few facts.

What a fixed recipe gets wrong on a new dataset is mostly a matter of scale: a 2 s crop of 1 s
clips repeats each clip, and 12 epochs of 300 clips are about 100 optimiser steps. Here each value
follows from facts about the training clips (:class:`DataFacts`) and the model and machine
(:class:`ModelFacts`), with the reason it was chosen; ``runs/auto_settings.py`` gathers the facts,
keeps every setting the user gave explicitly, prints the table and saves it with the run.

The rules (constants below), for ``n`` training clips per fold, crop of ``T`` frames:

- ``crop_seconds``: the ``CROP_PERCENTILE``-th percentile of the clip durations, clamped to
  [``CROP_MIN_SECONDS``, ``CROP_MAX_SECONDS``], rounded down to the model's frame grid (the input
  frames behind one output frame, e.g. 16 for four 2x poolings) and at least one grid step: most
  clips are seen whole, few are repeated to fill the crop, long clips are cropped at random.
- ``batch_size``: the largest power of two at most ``BATCH_MAX``, at most ``n / MIN_BATCHES_PER_EPOCH``
  (a small dataset gets several steps per epoch) and within the memory bound: ``MEMORY_SHARE`` of the
  device's memory, less ``OPTIMIZER_COPIES`` copies of the parameters (weights, gradients, AdamW's two
  moments), over ``TRAINING_MEMORY_FACTOR`` times the forward activations of one crop (they are kept
  for the backward pass, which makes their gradients); a multiple of the processes under DDP.
- ``epochs``: enough to make ``TARGET_STEPS`` optimiser steps (``n // batch`` per epoch), clamped to
  [``MIN_EPOCHS``, ``MAX_EPOCHS``]; ``warmup_epochs``: ``WARMUP_SHARE`` of them; ``patience``: early
  stopping after ``PATIENCE_SHARE`` of them without improvement (at least ``MIN_PATIENCE``).
- ``specaugment``: ``TIME_MASKS`` time masks of up to ``TIME_MASK_SHARE`` of the crop each, and
  ``FREQ_MASKS`` frequency masks of up to ``n_mels / FREQ_MASK_DIVISOR`` bins.
- ``mixup_prob``: ``MIXUP_PROB`` when a crop holds most of a clip; with crops below
  ``SHORT_CROP_SECONDS`` (short words or events) mixup is left out: two mixed one-word crops hold
  two full words at once, a clip that never occurs.
- ``head_bias: prior``: the classifier's bias starts at each class's log-odds in the training fold,
  so binary cross-entropy starts at the prior's loss instead of spending its first hundreds of steps
  (AdamW moves a bias by about ``lr`` a step) pushing every logit down through the weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

CROP_PERCENTILE = 90.0
CROP_MIN_SECONDS = 0.5
CROP_MAX_SECONDS = 2.0  # a step's cost grows with the crop; evaluation covers longer clips by windows
BATCH_MAX = 32
MIN_BATCHES_PER_EPOCH = 10
MEMORY_SHARE = 0.25
OPTIMIZER_COPIES = 4
TRAINING_MEMORY_FACTOR = 2.0
TARGET_STEPS = 1000
MIN_EPOCHS = 10
MAX_EPOCHS = 300
WARMUP_SHARE = 0.05
PATIENCE_SHARE = 0.25
MIN_PATIENCE = 5
TIME_MASKS = 2
TIME_MASK_SHARE = 0.1
FREQ_MASKS = 2
FREQ_MASK_DIVISOR = 8
MIXUP_PROB = 0.5
SHORT_CROP_SECONDS = 1.5


@dataclass(frozen=True)
class DataFacts:
    """What the derivation knows of the training clips."""

    durations: tuple[float, ...]  # seconds, one per training clip (all folds)
    n_classes: int
    labels_per_clip: float  # mean number of labels of a training clip
    n_folds: int

    @property
    def train_per_fold(self) -> int:
        """Clips a fold trains on: all but its own share."""
        n = len(self.durations)
        return n - math.ceil(n / self.n_folds)


@dataclass(frozen=True)
class ModelFacts:
    """What the derivation knows of the front-end, the model and the machine."""

    frames_per_second: float
    frame_grid: int  # input frames per frame the backbone puts out (crops are multiples of it)
    n_mels: int
    activation_bytes_per_frame: float  # forward activations of one crop, per input frame
    parameter_bytes: int
    memory_bytes: int  # what the device offers (GPU memory, or RAM for the CPU)
    memory_source: str  # where memory_bytes comes from, for the table
    processes: int = 1  # DDP processes: the batch is shared out among them


@dataclass(frozen=True)
class Derived:
    key: str  # dotted setting, e.g. train.crop_seconds
    value: Any
    why: str


def power_of_two_at_most(x: float) -> int:
    """The largest power of two <= x (1 when x < 2)."""
    return 1 << max(0, math.floor(math.log2(x))) if x >= 1 else 1


def crop_frames(data: DataFacts, model: ModelFacts) -> tuple[int, str]:
    """Crop length in frames and why (see the module docstring)."""
    fps, grid = model.frames_per_second, model.frame_grid
    seconds = float(np.percentile(np.asarray(data.durations, dtype=np.float64), CROP_PERCENTILE))
    clamped = min(max(seconds, CROP_MIN_SECONDS), CROP_MAX_SECONDS)
    frames = max(grid, grid * math.floor(clamped * fps / grid + 1e-9))
    why = f"p{CROP_PERCENTILE:g} of {len(data.durations)} clip durations {seconds:.2f} s"
    if clamped != seconds:
        why += f", clamped to {clamped:g} s"
    return frames, f"{why}, down to the model's grid of {grid} frames ({frames} frames)"


def memory_batch(model: ModelFacts, frames: int) -> int:
    """Crops whose training activations fit the memory bound (0: not even one)."""
    budget = MEMORY_SHARE * model.memory_bytes - OPTIMIZER_COPIES * model.parameter_bytes
    per_crop = TRAINING_MEMORY_FACTOR * model.activation_bytes_per_frame * frames
    return max(0, math.floor(budget / per_crop)) if budget > 0 else 0


def batch_size(data: DataFacts, model: ModelFacts, frames: int) -> tuple[int, str]:
    """The batch and why: the smallest of the three limits (see the module docstring)."""
    n = data.train_per_fold
    fits = memory_batch(model, frames)
    by_data = power_of_two_at_most(n / MIN_BATCHES_PER_EPOCH)
    chosen = min(BATCH_MAX, by_data, power_of_two_at_most(fits))
    why = (
        f"largest power of two <= cap {BATCH_MAX}, {n} clips a fold / {MIN_BATCHES_PER_EPOCH} and "
        f"{fits} crops in memory ({MEMORY_SHARE:g} of {model.memory_source})"
    )
    if model.processes > 1:
        chosen = max(model.processes, chosen - chosen % model.processes)
        why += f", a multiple of the {model.processes} processes"
    return chosen, why


def derive(data: DataFacts, model: ModelFacts) -> list[Derived]:
    """Every derived setting, in the order the table shows them."""
    if len(data.durations) < data.n_folds:
        raise ValueError(f"{len(data.durations)} training clips cannot fill {data.n_folds} folds")
    frames, crop_why = crop_frames(data, model)
    crop_seconds = round(frames / model.frames_per_second, 6)
    batch, batch_why = batch_size(data, model, frames)
    n = data.train_per_fold
    steps_per_epoch = max(1, n // batch)
    wanted = math.ceil(TARGET_STEPS / steps_per_epoch)
    epochs = min(max(wanted, MIN_EPOCHS), MAX_EPOCHS)
    epochs_why = f"{TARGET_STEPS} steps at {steps_per_epoch} per epoch ({n} clips // {batch})"
    if epochs != wanted:
        epochs_why += f", clamped to [{MIN_EPOCHS}, {MAX_EPOCHS}]"
    warmup = round(WARMUP_SHARE * epochs, 2)
    patience = max(MIN_PATIENCE, math.ceil(PATIENCE_SHARE * epochs))
    time_width = max(1, round(TIME_MASK_SHARE * frames))
    freq_width = max(1, model.n_mels // FREQ_MASK_DIVISOR)
    short = crop_seconds < SHORT_CROP_SECONDS
    mixup = 0.0 if short else MIXUP_PROB
    mixup_why = (
        f"crop {crop_seconds:g} s < {SHORT_CROP_SECONDS:g} s: a mix of two short clips is no clip"
        if short
        else f"crop {crop_seconds:g} s >= {SHORT_CROP_SECONDS:g} s: mixes of sounds are plausible"
    )
    return [
        Derived("train.crop_seconds", crop_seconds, crop_why),
        Derived("train.batch_size", batch, batch_why),
        Derived("train.epochs", epochs, epochs_why),
        Derived("train.warmup_epochs", warmup, f"{WARMUP_SHARE:g} of the epochs"),
        Derived("train.patience", patience, f"{PATIENCE_SHARE:g} of the epochs, at least {MIN_PATIENCE}"),
        Derived("train.mixup_prob", mixup, mixup_why),
        Derived("train.specaugment.time_masks", TIME_MASKS, "fixed"),
        Derived(
            "train.specaugment.time_width", time_width, f"{TIME_MASK_SHARE:g} of the crop's {frames} frames"
        ),
        Derived("train.specaugment.freq_masks", FREQ_MASKS, "fixed"),
        Derived("train.specaugment.freq_width", freq_width, f"{model.n_mels} mels / {FREQ_MASK_DIVISOR}"),
        Derived("train.head_bias", "prior", "BCE starts at the class prior's loss"),
    ]
