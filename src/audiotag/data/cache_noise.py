"""audiomentations' ``AddBackgroundNoise`` with its sounds drawn from the competition's own wave cache.

The library's transform reads a random stretch of a random audio file on every call (decode and
resample included). Here the sounds are clips of the wave cache (``features.cache: wave``), already
decoded and resampled, read from its memory map: a random clip of ``pool`` other than the one being
augmented, a random stretch of it as long as the crop (repeated when shorter, as the library does),
mixed at a signal-to-noise ratio drawn in ``[min_snr_db, max_snr_db]`` (or at an absolute level), with
the library's own parameters, random draws (the global ``random`` module) and RMS helpers.

The pool is what ``data/wave_augment.py`` gives: the training clips of the fold being trained (never
its validation clips), or those of them with unverified labels (the noisy subset).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from audiomentations.core.transforms_interface import BaseWaveformTransform
from audiomentations.core.utils import (
    calculate_desired_noise_rms,
    calculate_rms,
    convert_decibels_to_amplitude_ratio,
)
from numpy.typing import NDArray


class NoisePool:
    """Clips of a wave cache to draw background noise from; ``draw`` never returns ``exclude``."""

    def __init__(self, cache: Any, clip_ids: Sequence[str]) -> None:
        self.cache = cache
        self.clip_ids = list(clip_ids)
        self._position = {clip_id: i for i, clip_id in enumerate(self.clip_ids)}

    def __len__(self) -> int:
        return len(self.clip_ids)

    def draw(self, exclude: str | None) -> str | None:
        """A uniformly drawn clip of the pool other than ``exclude``; None when there is none."""
        skip = self._position.get(exclude) if exclude is not None else None
        n = len(self.clip_ids) - (skip is not None)
        if n <= 0:
            return None
        k = random.randrange(n)
        if skip is not None and k >= skip:
            k += 1
        return self.clip_ids[k]

    def wave(self, clip_id: str) -> np.ndarray:
        return np.asarray(self.cache.get(clip_id), dtype=np.float32).reshape(-1)


class CacheBackgroundNoise(BaseWaveformTransform):
    """``AddBackgroundNoise`` (same parameters but ``sounds_path``) over a :class:`NoisePool`."""

    def __init__(
        self,
        pool: NoisePool,
        min_snr_db: float = 3.0,
        max_snr_db: float = 30.0,
        noise_rms: Literal["relative", "absolute"] = "relative",
        min_absolute_rms_db: float = -45.0,
        max_absolute_rms_db: float = -15.0,
        p: float = 0.5,
    ) -> None:
        super().__init__(p)
        if min_snr_db > max_snr_db:
            raise ValueError("min_snr_db must not be greater than max_snr_db")
        if min_absolute_rms_db > max_absolute_rms_db:
            raise ValueError("min_absolute_rms_db must not be greater than max_absolute_rms_db")
        if max_absolute_rms_db > 0:
            raise ValueError("max_absolute_rms_db must not be greater than 0")
        if noise_rms not in ("relative", "absolute"):
            raise ValueError(f"noise_rms must be relative or absolute, got {noise_rms!r}")
        self.pool = pool
        self.min_snr_db, self.max_snr_db = min_snr_db, max_snr_db
        self.noise_rms = noise_rms
        self.min_absolute_rms_db, self.max_absolute_rms_db = min_absolute_rms_db, max_absolute_rms_db
        self.exclude: str | None = None  # the clip being augmented: never its own noise

    def randomize_parameters(self, samples: NDArray[np.float32], sample_rate: int) -> None:
        super().randomize_parameters(samples, sample_rate)
        if self.parameters["should_apply"]:
            self.parameters["snr_db"] = random.uniform(self.min_snr_db, self.max_snr_db)
            self.parameters["rms_db"] = random.uniform(self.min_absolute_rms_db, self.max_absolute_rms_db)
            self.parameters["noise_clip_id"] = self.pool.draw(self.exclude)
            self.parameters["offset_fraction"] = random.random()

    def apply(self, samples: NDArray[np.float32], sample_rate: int) -> NDArray[np.float32]:
        clip_id = self.parameters["noise_clip_id"]
        if clip_id is None:
            return samples
        noise = self.pool.wave(clip_id)
        n = len(samples)
        if len(noise) > n:
            start = int(self.parameters["offset_fraction"] * (len(noise) - n + 1))
            noise = noise[start : start + n]
        elif len(noise) < n:
            noise = np.tile(noise, -(-n // max(len(noise), 1)))[:n]
        noise_rms = calculate_rms(noise)
        if noise_rms < 1e-9:  # a silent clip adds nothing (the library warns and does the same)
            return samples
        if self.noise_rms == "relative":
            target = calculate_desired_noise_rms(calculate_rms(samples), self.parameters["snr_db"])
        else:
            target = convert_decibels_to_amplitude_ratio(self.parameters["rms_db"])
        return (samples + noise * (target / noise_rms)).astype(np.float32)
