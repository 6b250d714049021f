"""Crops and windows over cached log-mel: random crops for training, sliding windows for evaluation.

Clips are stored unpadded; a clip shorter than the crop is padded here, either by repeating it
(``wrap``) or with the front-end's silence value (``constant``) at a random offset.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from audiotag.config.schema import FeatureConfig
from audiotag.data.features import scale_rule


def silence_value(cfg: FeatureConfig) -> float:
    """The cached value that pads a clip: digital silence on this front-end's scale."""
    return scale_rule(cfg).silence


def fit_length(
    frames: np.ndarray,
    length: int,
    start: int,
    pad_mode: str,
    fill: float,
    pad_offset: int = 0,
    dtype: type = np.float32,
) -> np.ndarray:
    """Return ``length`` frames starting at ``start``; pad short clips by wrapping or with ``fill``."""
    n = frames.shape[0]
    if n >= length:
        return np.array(frames[start : start + length], dtype=dtype)  # a copy: the cache is read-only
    if pad_mode == "wrap":
        reps = -(-length // n)
        return np.tile(np.asarray(frames, dtype=dtype), (reps, 1))[:length]
    out = np.full((length, frames.shape[1]), fill, dtype=dtype)
    out[pad_offset : pad_offset + n] = frames
    return out


class CropDataset(Dataset):
    """Random fixed-length crops of training clips with their target vectors and loss weights (one
    value a clip, or a row of them, one per loss: ``train/losses.py``'s ``training_loss``).

    The random state comes from ``(seed, epoch, index)`` so an epoch is reproducible whatever the
    number of workers, and a resumed run sees the same crops as an uninterrupted one.

    Crops keep the cache's float16 (exact: the cache holds nothing finer) and the training loop
    widens them on the device, which halves what the workers, the pinned-memory copy and the
    transfer move: on an H100 the wave cache's loader was the bottleneck of CNN14 at float32. A
    wave augmentation works on float32 and hands float32 on.
    """

    def __init__(
        self,
        cache,
        clip_ids: Sequence[str],
        targets: np.ndarray,
        weights: np.ndarray,
        crop_frames: int,
        pad_mode: str,
        fill: float,
        seed: int,
        wave_augment: Callable[[np.ndarray, list[int], str], np.ndarray] | None = None,
    ) -> None:
        self.cache = cache
        self.clip_ids = list(clip_ids)
        self.targets = targets.astype(np.float32)
        self.weights = weights.astype(np.float32)
        self.crop_frames = crop_frames
        self.pad_mode = pad_mode
        self.fill = fill
        self.seed = seed
        self.epoch = 0
        self.wave_augment = wave_augment  # (wave, entropy, clip_id) -> wave: data/wave_augment.py

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.clip_ids)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Clip ``item``'s crop in the epoch set by ``set_epoch``, or ``(epoch, i)``: clip ``i`` in that
        epoch (how ``train/epoch.py``'s ``EpochLoader`` tells its long-lived workers the epoch)."""
        epoch, i = item if isinstance(item, tuple) else (self.epoch, item)
        rng = np.random.default_rng([self.seed, epoch, i])
        frames = self.cache.get(self.clip_ids[i])
        n = frames.shape[0]
        start = int(rng.integers(0, n - self.crop_frames + 1)) if n > self.crop_frames else 0
        offset = int(rng.integers(0, self.crop_frames - n + 1)) if n < self.crop_frames else 0
        dtype = np.float32 if self.wave_augment is not None else np.float16
        x = fit_length(frames, self.crop_frames, start, self.pad_mode, self.fill, offset, dtype)
        if self.wave_augment is not None:  # a wave crop (samples, 1); seeded apart from the crop's draws
            x = self.wave_augment(x[:, 0], [self.seed, epoch, i, 1], self.clip_ids[i])[:, None]
        return torch.from_numpy(x), torch.from_numpy(self.targets[i]), torch.tensor(self.weights[i])


def window_starts(n_frames: int, window: int, hop: int, shift: int = 0) -> list[int]:
    """Window starts covering the whole clip; the last window is aligned to the clip's end.

    ``shift`` moves the grid later by that many frames (test-time augmentation); the clip start
    is then still covered by a window at 0.
    """
    if n_frames <= window:
        return [0]
    first = [0] if shift else []
    starts = first + list(range(shift, n_frames - window + 1, hop))
    if starts[-1] != n_frames - window:
        starts.append(n_frames - window)
    return starts


def iter_window_batches(
    cache,
    clip_ids: Sequence[str],
    window: int,
    hop: int,
    batch_size: int,
    pad_mode: str,
    fill: float,
    shift: int = 0,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (clip index per window, windows) batches covering every clip in ``clip_ids``."""
    owners: list[int] = []
    batch: list[np.ndarray] = []
    for idx, clip_id in enumerate(clip_ids):
        frames = cache.get(clip_id)
        for start in window_starts(frames.shape[0], window, hop, shift):
            batch.append(fit_length(frames, window, start, pad_mode, fill))
            owners.append(idx)
            if len(batch) == batch_size:
                yield np.asarray(owners), np.stack(batch)
                owners, batch = [], []
    if batch:
        yield np.asarray(owners), np.stack(batch)
