"""Log-mel augmentation of training crops with albumentations (``train.spec_augment_lib``).

Each entry names an albumentations transform and passes its parameters through, applied in order to
every training crop's log-mel (from a log-mel cache, or computed from a wave cache) before SpecAugment
and mixup:

    spec_augment_lib:
      - {name: CoarseDropout, num_holes_range: [1, 3], hole_height_range: [4, 12],
         hole_width_range: [8, 30], p: 0.5}
      - {name: Affine, translate_px: {x: [-20, 20], y: [-2, 2]}, border_mode: 3, p: 0.5}
      - {name: RandomBrightnessContrast, brightness_limit: 0.03, contrast_limit: 0.1, p: 0.5}

The image albumentations sees: a single-channel float32 array (rows: mel bins, low to high;
columns: frames, so x is time and y frequency, as its ``TimeMasking``/``FrequencyMasking`` assume),
holding the level in dB above the front-end's floor divided by ``IMAGE_DB`` (200): every front-end's
values then lie in [0, 1], the range albumentations' pixel transforms assume for float images (they
clip to it). So ``fill: 0`` is the floor (digital silence), a brightness of 0.03 is +-6 dB (a gain),
a contrast of 0.1 scales the level above the floor by 0.9-1.1, and ``GaussNoise(std_range=[0.01,
0.02])`` adds noise of 2-4 dB. The floor is 10*log10(amin) for ``scale: db``, ln(log_offset) for
``log`` and ln(float32 eps) for ``kaldi_fbank``; ``log10_1p``, which has no dB floor, is read as
10 dB per unit above 0 (its slope well above the knee).

Entries are constructed and run once on a crop-sized image when the config is loaded: an unknown
class or parameter, a value the library refuses, or a transform that changes the image's size stops
the load naming the entry. Each crop's call is seeded from (run seed, fold, epoch, clip index)
through ``Compose.set_random_state`` (albumentations 2 draws from those generators only), so a run is
reproducible and a resumed one identical.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from audiotag.config.schema import FeatureConfig
from audiotag.core.extras import import_extra
from audiotag.data.augment_specs import (
    check_parameters,
    construct,
    entry_name,
    init_parameters,
    transform_class,
)
from audiotag.data.kaldi_fbank import FLOAT32_EPS

KEY = "train.spec_augment_lib"
IMAGE_DB = 200.0  # dB above the floor that the image's 1.0 stands for
# transforms that produce no single-channel image of the same size, or need inputs a crop has not
NOT_OFFERED = {
    "Lambda", "ToTensorV2", "ToTensor3D", "FromFloat", "ToFloat", "ToRGB", "ToGray", "ToSepia",
    "Mosaic", "OverlayElements", "TextImage", "FDA", "HistogramMatching", "PixelDistributionAdaptation",
}  # fmt: skip


def library_classes() -> dict[str, type]:
    """albumentations' 2-D transforms by class name."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no PyPI version check at import
    albumentations = import_extra("albumentations", "augment", KEY)

    return {
        name: obj
        for name, obj in vars(albumentations).items()
        if isinstance(obj, type)
        and issubclass(obj, albumentations.ImageOnlyTransform | albumentations.DualTransform)
        and not issubclass(obj, albumentations.Transform3D)
        and name not in NOT_OFFERED
        and name[0].isupper()
        and name not in ("ImageOnlyTransform", "DualTransform")
    }


def image_scale(features: FeatureConfig) -> tuple[float, float]:
    """(floor, units per image unit) of the log-mel the front-end computes: image = (x - floor) / unit."""
    if features.kind == "kaldi_fbank":
        return math.log(FLOAT32_EPS), IMAGE_DB * math.log(10) / 10
    if features.scale == "db":
        return 10 * math.log10(features.amin), IMAGE_DB
    if features.scale == "log":
        return math.log(features.log_offset), IMAGE_DB * math.log(10) / 10
    return 0.0, IMAGE_DB / 10


def build_transforms(specs: Sequence[Any]) -> list[Any]:
    classes = library_classes()
    transforms = []
    for index, spec in enumerate(specs):
        name = entry_name(KEY, index, spec)
        cls = transform_class(KEY, index, name, classes, "albumentations")
        params = {k: v for k, v in spec.items() if k != "name"}
        check_parameters(KEY, index, name, params, init_parameters(cls))
        transforms.append(construct(KEY, index, name, cls, params))
    return transforms


class ShapeChanged(ValueError):
    """A transform changed the image's size (checked when the config is loaded)."""


class SpecAugmentLib:
    """The configured chain, called per crop: ``augment(logmel, entropy)``."""

    def __init__(self, specs: Sequence[Any], features: FeatureConfig) -> None:
        import albumentations

        self.specs = list(specs)
        self.floor, self.unit = image_scale(features)
        self.chain = albumentations.Compose(build_transforms(self.specs), p=1.0)

    def __call__(self, logmel: np.ndarray, entropy: Sequence[int]) -> np.ndarray:
        """``logmel`` (frames, mels) augmented, same shape, float32; draws seeded by ``entropy``."""
        image = np.ascontiguousarray(((np.asarray(logmel, np.float32) - self.floor) / self.unit).T)
        words = np.random.SeedSequence([int(e) % 2**32 for e in entropy]).generate_state(2)
        self.chain.set_random_state(np.random.default_rng(int(words[0])), random.Random(int(words[1])))
        out = np.asarray(self.chain(image=image)["image"], dtype=np.float32)
        if out.ndim == 3 and out.shape[-1] == 1:
            out = out[..., 0]
        if out.shape != image.shape:
            raise ShapeChanged(
                f"changes the log-mel image from {image.shape} to {out.shape} (mels, frames); use "
                "transforms that keep the size (e.g. Affine, not RandomCrop or Resize)"
            )
        return out.T * self.unit + self.floor

    def batch(self, x: torch.Tensor, entropies: Sequence[Sequence[int]]) -> torch.Tensor:
        """A batch (clips, frames, mels) on any device, each clip with its own entropy."""
        clips = x.detach().float().cpu().numpy()
        out = np.stack([self(clip, entropy) for clip, entropy in zip(clips, entropies, strict=True)])
        return torch.from_numpy(out).to(device=x.device, dtype=x.dtype)


def check_spec_augment_lib(specs: Sequence[Any], features: FeatureConfig, crop_frames: int) -> None:
    """Construct the chain, then run each entry (forced on) once on a crop-sized log-mel; a ValueError
    naming the entry when the library refuses it or the image changes size."""
    build_transforms(specs)
    floor, unit = image_scale(features)
    rng = np.random.default_rng(0)
    logmel = (floor + unit * rng.uniform(0.3, 0.6, (crop_frames, features.n_mels))).astype(np.float32)
    for index, spec in enumerate(specs):
        name = spec["name"]
        try:
            out = SpecAugmentLib([{**spec, "p": 1.0}], features)(logmel, [index])
        except ShapeChanged as exc:
            raise ValueError(f"{KEY}[{index}] ({name}): {exc}") from None
        except Exception as exc:  # the library's own checks at call time
            text = " ".join(str(exc).split()) or type(exc).__name__
            raise ValueError(f"{KEY}[{index}] ({name}): on a {crop_frames}-frame crop: {text}") from None
        if not np.all(np.isfinite(out)):
            raise ValueError(f"{KEY}[{index}] ({name}): gives non-finite values")
