"""An encoder file written by ``pretrain``: the weights in the family's official key layout, plus the
front-end and the normalisation they were trained with.

``encoder.pt`` is a weights-only loadable dict::

    {"format": "audiotag-encoder/1",
     "state_dict": {...},                  # the encoder's tensors, official keys (features.0.weight...)
     "model_config": {"name": "byola", "dim": 512},  # the model config that takes them (timm: arch)
     "features": {...},                    # the FeatureConfig fields of the cache it was trained on
     "input_norm": {"mean": m, "std": s},  # BYOL-A's pre-normalisation: stats of the pretraining clips
     "pretrain": {...}}                    # method, recipe, clips, epochs, final loss, code version

``model.pretrained: PATH`` reads it like any checkpoint (``models/pretrained.read_state_dict`` takes
the ``state_dict`` entry, the family's converter maps the official keys), and
:func:`check_recorded_frontend` refuses a ``features`` config that differs from the recorded one,
as the weights table does for official checkpoints. :func:`read_encoder_info` gives the rest.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from audiotag.config.schema import FeatureConfig, InputNorm
from audiotag.core.errors import ConfigError

log = logging.getLogger(__name__)

FORMAT = "audiotag-encoder/1"
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


@dataclass(frozen=True)
class EncoderInfo:
    """What an encoder file records besides its tensors."""

    path: Path
    model: dict[str, Any]
    features: FeatureConfig
    input_norm: InputNorm
    pretrain: dict[str, Any] = field(default_factory=dict)


def checkpoint_state(encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The encoder's tensors in its family's checkpoint key layout (what its converter takes): a
    backbone that wraps another module says so with ``checkpoint_state()`` (timm's), else its own."""
    export = getattr(encoder, "checkpoint_state", None)
    return export() if callable(export) else encoder.state_dict()


def encoder_payload(
    state: dict[str, torch.Tensor],
    model: dict[str, Any],
    features: FeatureConfig,
    input_norm: InputNorm,
    pretrain: dict[str, Any],
) -> dict[str, Any]:
    """The dict ``encoder.pt`` holds (tensors on the CPU; every other value plain JSON-like data)."""
    return {
        "format": FORMAT,
        "state_dict": {k: v.detach().cpu().clone() for k, v in state.items()},
        "model_config": dict(model),  # not "model": loaders take that key for the state dict
        "features": features.model_dump(mode="json"),
        "input_norm": input_norm.model_dump(mode="json"),
        "pretrain": dict(pretrain),
    }


def read_encoder_info(path: str | os.PathLike[str]) -> EncoderInfo | None:
    """The records of an encoder file written by ``pretrain``; None for any other checkpoint (or a
    file that cannot be read: the weights loader then says what is wrong with it)."""
    path = Path(path)
    if path.suffix.lower() not in TORCH_SUFFIXES or not path.is_file():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not ours, or damaged: read_state_dict reports it
        return None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        return None
    try:
        return EncoderInfo(
            path=path,
            model=dict(obj["model_config"]),
            features=FeatureConfig.model_validate(obj["features"]),
            input_norm=InputNorm.model_validate(obj["input_norm"]),
            pretrain=dict(obj.get("pretrain") or {}),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"{path}: an {FORMAT} file with unreadable records ({exc}); pretrain it again"
        ) from None


def check_recorded_frontend(path: str | os.PathLike[str], features: FeatureConfig) -> EncoderInfo | None:
    """Refuse ``features`` that differ from the front-end an encoder file was trained on."""
    info = read_encoder_info(path)
    differences = {} if info is None else features.frontend_differences(info.features)
    if info is None or not differences:
        return info
    diff = "; ".join(f"{k}: {a!r} (encoder: {b!r})" for k, (a, b) in differences.items())
    raise ConfigError(
        f"features: {path} was pretrained on the front-end {info.features.name!r}, but the configured "
        f"features differ ({diff}). Use `features: {info.features.name}` (or `features: auto`), so the "
        "cache is built with the encoder's own settings"
    )
