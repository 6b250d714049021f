"""The experiment's augmentation libraries checked against its front-end when the config is loaded."""

from __future__ import annotations

from typing import Any

from audiotag.data.spec_augment_lib import check_spec_augment_lib
from audiotag.data.wave_augment import check_wave_augment


def check_augmentations(
    wave_augment: list[Any], spec_augment_lib: list[Any], features: Any, crop_seconds: float
) -> None:
    """``train.wave_augment`` and ``train.spec_augment_lib`` against the experiment's front-end: each
    entry constructed and tried once (``data/wave_augment.py``, ``data/spec_augment_lib.py``)."""
    if wave_augment:
        if features.cache != "wave":
            raise ValueError(
                "wave_augment: transforms the training crops' waves, so it needs features.cache: wave (the "
                "cache then holds waves and the log-mel is computed from the augmented crop on the "
                "training device); this experiment caches log-mel. Set features.cache: wave, or use "
                "train.spec_augment_lib on the log-mel"
            )
        check_wave_augment(wave_augment, features.sample_rate)
    if spec_augment_lib:
        crop_frames = max(1, round(crop_seconds * features.frames_per_second))
        check_spec_augment_lib(spec_augment_lib, features, crop_frames)
