"""Batch augmentations that run where the batch is (CPU or GPU): mixup and SpecAugment masks."""

from __future__ import annotations

import torch
from scipy.stats import beta
from torch import nn

from audiotag.config.schema import SpecAugmentConfig
from audiotag.core.errors import ConfigError


def spec_mask(x: torch.Tensor, cfg: SpecAugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Boolean ``keep`` mask of ``x``'s shape (batch, frames, mels): False on random time/mel bands."""
    batch, n_frames, n_mels = x.shape
    keep = torch.ones_like(x, dtype=torch.bool)
    for count, width, axis, size in (
        (cfg.time_masks, cfg.time_width, 1, n_frames),
        (cfg.freq_masks, cfg.freq_width, 2, n_mels),
    ):
        if count == 0 or width == 0:
            continue
        positions = torch.arange(size, device=x.device)
        for _ in range(count):
            w = torch.randint(0, min(width, size) + 1, (batch,), generator=generator).to(x.device)
            start = (torch.rand(batch, generator=generator).to(x.device) * (size - w + 1)).long()
            band = (positions[None, :] >= start[:, None]) & (positions[None, :] < (start + w)[:, None])
            shape = (batch, size, 1) if axis == 1 else (batch, 1, size)
            keep &= ~band.view(shape)
    return keep


def apply_mask(x: torch.Tensor, keep: torch.Tensor, fill: str) -> torch.Tensor:
    """``x`` where ``keep``, else each clip's mean (``fill: mean``) or 0 (``fill: zero``)."""
    value = (
        x.mean(dim=(1, 2), keepdim=True)
        if fill == "mean"
        else torch.zeros((), dtype=x.dtype, device=x.device)
    )
    return torch.where(keep, x, value)


def spec_augment(
    x: torch.Tensor, cfg: SpecAugmentConfig, generator: torch.Generator, fill: str = "mean"
) -> torch.Tensor:
    """Mask random time and frequency bands of ``x`` (batch, frames, mels) with ``fill``."""
    return apply_mask(x, spec_mask(x, cfg, generator), fill)


def resolve_specaugment(cfg: SpecAugmentConfig, backbone: nn.Module) -> tuple[str, str]:
    """``(where, fill)`` with ``auto`` decided: after the input BatchNorm with zeros where the backbone
    has one (PANNs: ``bn0``, then SpecAugment, as the official training), else at the input with
    each clip's mean."""
    has_norm = getattr(backbone, "bn0", None) is not None
    where = cfg.where if cfg.where != "auto" else ("after_norm" if has_norm else "input")
    if where == "after_norm" and not has_norm:
        raise ConfigError(
            "train.specaugment.where: after_norm needs a backbone with an input BatchNorm (model.bn0: "
            f"true, PANNs-style CNNs); {type(backbone).__name__} has none: use input or auto"
        )
    fill = cfg.fill if cfg.fill != "auto" else ("zero" if where == "after_norm" else "mean")
    return where, fill


def mixup(
    x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, alpha: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mix each clip with a random partner: inputs, targets and weights by the same Beta(alpha) draw."""
    # torch's Beta sampler takes no generator: draw a uniform from ours and invert the Beta CDF.
    u = torch.rand(1, generator=generator).item()
    lam = float(beta.ppf(u, alpha, alpha)) if alpha > 0 else 1.0
    perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
    mixed_x = lam * x + (1 - lam) * x[perm]
    mixed_y = lam * y + (1 - lam) * y[perm]
    mixed_w = lam * w + (1 - lam) * w[perm]
    return mixed_x, mixed_y, mixed_w
