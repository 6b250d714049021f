"""Clip-level predictions from sliding windows over whole clips, batched across clips."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from audiotag.core.log import progress
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
    tta_shifts: int = 1,
    tta_offsets: Sequence[float] = (),
) -> np.ndarray:
    """Sigmoid scores (n_clips, n_classes): each window scored, then mean or max over a clip's windows.

    Test-time augmentation: ``tta_shifts`` grids of windows, each shifted by ``hop / tta_shifts``
    frames, and the clip again with each of ``tta_offsets`` added to the log-mel (a gain); the scores
    of all variants are averaged.
    """
    variants = [(k * hop // tta_shifts, 0.0) for k in range(tta_shifts)]
    variants += [(0, offset) for offset in tta_offsets if offset != 0.0]
    out = None
    for shift, offset in variants:
        scores = _predict_once(
            model, cache, clip_ids, window, hop, batch_size, pad_mode, fill, aggregate, device, shift, offset
        )
        out = scores if out is None else out + scores
    assert out is not None
    return out / len(variants)


def _predict_once(
    model, cache, clip_ids, window, hop, batch_size, pad_mode, fill, aggregate, device, shift, offset
) -> np.ndarray:
    model.eval()
    out: np.ndarray | None = None
    counts = np.zeros(len(clip_ids))
    batches = iter_window_batches(cache, clip_ids, window, hop, batch_size, pad_mode, fill, shift=shift)
    bar = progress(total=len(clip_ids), desc="predict", unit="clip")
    for owners, windows in batches:
        bar.update(max(0, int(owners.max()) + 1 - bar.n))  # clips come in order: the highest one seen
        x = torch.from_numpy(windows).to(device)
        logits = model(x + offset if offset else x)
        probs = torch.sigmoid(logits.float()).cpu().numpy().astype(np.float64)
        if out is None:
            start = 0.0 if aggregate == "mean" else -np.inf
            out = np.full((len(clip_ids), probs.shape[1]), start)
        if aggregate == "mean":
            np.add.at(out, owners, probs)
            np.add.at(counts, owners, 1)
        else:
            np.maximum.at(out, owners, probs)
    bar.close()
    if out is None:
        raise ValueError("no clips to predict")
    if aggregate == "mean":
        out /= counts[:, None]
    return out
