"""Clip-level predictions from sliding windows over whole clips, batched across clips."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from audiotag.data.dataset import iter_window_batches


@torch.inference_mode()
def predict_clips(
    model: nn.Module,
    cache,
    clip_ids: Sequence[str],
    window: int,
    hop: int,
    batch_size: int,
    pad_mode: str,
    fill: float,
    aggregate: str,
    device: torch.device,
) -> np.ndarray:
    """Sigmoid scores (n_clips, n_classes): each window scored, then mean or max over a clip's windows."""
    model.eval()
    out: np.ndarray | None = None
    counts = np.zeros(len(clip_ids))
    for owners, windows in iter_window_batches(cache, clip_ids, window, hop, batch_size, pad_mode, fill):
        logits = model(torch.from_numpy(windows).to(device))
        probs = torch.sigmoid(logits.float()).cpu().numpy().astype(np.float64)
        if out is None:
            start = 0.0 if aggregate == "mean" else -np.inf
            out = np.full((len(clip_ids), probs.shape[1]), start)
        if aggregate == "mean":
            np.add.at(out, owners, probs)
            np.add.at(counts, owners, 1)
        else:
            np.maximum.at(out, owners, probs)
    if out is None:
        raise ValueError("no clips to predict")
    if aggregate == "mean":
        out /= counts[:, None]
    return out
