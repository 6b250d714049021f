"""Losses with per-clip weights (e.g. lower weight for unverified or noisy labels)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def weighted_bce(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy averaged over classes, then weighted by clip: sum(w * l) / sum(w)."""
    per_clip = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(dim=1)
    return (per_clip * weights).sum() / weights.sum().clamp_min(1e-8)
