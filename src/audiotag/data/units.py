"""Unit crops of cached clips for self-supervised pretraining: BYOL-A's ``unit_sec`` segments.

BYOL-A (nttcslab/byol-a ``byol_a/dataset.py``) zero-pads a clip shorter than the unit at both ends
and crops a longer one at a random sample. On the cache the same is done as the normalisation
statistics do it (``data/norm_stats.py``): a random frame crop of a longer clip, and a shorter clip
laid on the unit's frame grid as its zero-padded wave would be (:class:`EdgeModel`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from audiotag.config.schema import FeatureConfig
from audiotag.data.dataset import silence_value
from audiotag.data.features import frames_of
from audiotag.data.norm_stats import EdgeModel, unit_of


class CacheSet:
    """Several feature caches (anything with ``get(clip_id)``; a competition's and an audio folder's)
    read as one, keys ``"k/clip_id"``."""

    def __init__(self, caches: Sequence) -> None:
        self.caches = list(caches)

    @staticmethod
    def key(k: int, clip_id: str) -> str:
        return f"{k}/{clip_id}"

    def get(self, key: str) -> np.ndarray:
        k, _, clip_id = key.partition("/")
        return self.caches[int(k)].get(clip_id)


def unit_frames(features: FeatureConfig, unit_seconds: float) -> tuple[int, int]:
    """(frames, samples) of a unit of ``unit_seconds`` (0.95 s at 16 kHz, hop 160: 96 frames)."""
    samples = int(unit_seconds * features.sample_rate)
    return frames_of(samples, features), samples


class UnitDataset(Dataset):
    """One unit ``(mels, frames)`` float32 per clip, or with ``segments`` > 1 that many independent
    crops of the clip, ``(segments, mels, frames)`` (COLA's two segments of one clip); the crops are
    drawn from ``(seed, epoch, index)``, so an epoch is the same whatever the number of workers and
    after a resume."""

    def __init__(
        self,
        cache,
        keys: Sequence[str],
        features: FeatureConfig,
        unit_seconds: float,
        seed: int,
        segments: int = 1,
    ) -> None:
        self.cache = cache
        self.keys = list(keys)
        self.unit, self.unit_samples = unit_frames(features, unit_seconds)
        self.edges = EdgeModel(features) if features.kind == "logmel" and features.cache == "logmel" else None
        self.fill = silence_value(features)
        self.seed = seed
        self.segments = segments
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, item: int | tuple[int, int]) -> torch.Tensor:
        """Clip ``item``'s unit in the epoch set by ``set_epoch``, or ``(epoch, i)`` (``EpochLoader``)."""
        epoch, i = item if isinstance(item, tuple) else (self.epoch, item)
        rng = np.random.default_rng([self.seed, epoch, i])
        frames = self.cache.get(self.keys[i])
        units = [
            unit_of(frames, self.unit, self.fill, rng, self.edges, self.unit_samples).T
            for _ in range(self.segments)
        ]
        out = units[0] if self.segments == 1 else np.stack(units)
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))
