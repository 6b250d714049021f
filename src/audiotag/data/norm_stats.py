"""``input_norm: dataset``: one scalar mean and std of the training fold's log-mel, measured as
BYOL-A's ``calc_norm_stats`` (nttcslab/byol-a ``evaluate.py``) measures them.

BYOL-A draws up to 10,000 training files at random, zero-pads each shorter one at both ends to
``unit_sec`` (0.95 s) or crops a longer one at random to that length, computes the log-mel of that
unit wave and takes the mean and std of all the values, padding included. Here the same is done on
the cached log-mel: a unit is ``frames_of(unit_sec * sample_rate)`` frames; a longer clip is cropped
at a random frame.

A shorter clip is laid on the unit's frame grid as the official code lays its wave: centred at sample
``(unit - n) // 2``. Frames whose analysis window lies inside the clip take the nearest cached frame,
frames whose window lies in the zeros take the front-end's silence value, and the few frames whose
window straddles a clip edge (``n_fft / hop`` of them per edge) take the nearest cached frame's mel
power times the share of the window's energy (sum of squared window samples) that falls on the clip:
the expected power of a partly zero frame of a stationary signal. Without that, every padded clip
would lose about ``n_fft / hop`` frames of edge energy to silence (BYOL-A on 0.1..0.9 s clips: mean
0.6 too low, std 0.3 too high). What the cache cannot tell, and so stays approximate: the clip's exact
length within one hop, the sub-hop shift between the two frame grids, and the spectrum of a partial
window (smeared where the signal changes fast). ``tests/test_golden_byola.py`` measures the rest
against the official code.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from audiotag.config.schema import FeatureConfig, InputNorm, NormStatsConfig
from audiotag.data.dataset import silence_value
from audiotag.data.features import frames_of, make_window

log = logging.getLogger(__name__)


class EdgeModel:
    """Window-energy shares of a centred STFT, and the mapping of cached values to power and back."""

    def __init__(self, features: FeatureConfig) -> None:
        self.cfg = features
        self.hop = features.hop_length
        self.half = features.n_fft // 2
        win = make_window(features.window, features.win_length or features.n_fft).double().numpy()
        energy = np.zeros(features.n_fft)
        first = (features.n_fft - len(win)) // 2  # torch.stft centres a shorter window in n_fft
        energy[first : first + len(win)] = win**2
        self.cum = np.concatenate([[0.0], np.cumsum(energy)])

    def share(self, centres: np.ndarray, start: int, stop: int) -> np.ndarray:
        """Share of each window's energy (window centred at ``centres``) on samples ``[start, stop)``."""
        lo = np.clip(start - (centres - self.half), 0, len(self.cum) - 1)
        hi = np.clip(stop - (centres - self.half), 0, len(self.cum) - 1)
        return (self.cum[hi] - self.cum[lo]) / self.cum[-1]

    def scale(self, values: np.ndarray, gain: np.ndarray) -> np.ndarray:
        """The value of ``gain`` times a frame's mel power (gain 0: the silence value)."""
        cfg = self.cfg
        if cfg.scale == "db":
            power = np.power(10.0, values / 10.0)
            return 10.0 * np.log10(np.maximum(power * gain, cfg.amin))
        if cfg.scale == "log":
            power = np.maximum(np.exp(values) - cfg.log_offset, 0.0)
            return np.log(power * gain + cfg.log_offset)
        power = (np.power(10.0, values) - 1.0) / cfg.log_gain
        return np.log10(1.0 + cfg.log_gain * power * gain)

    def padded(self, frames: np.ndarray, unit_frames: int, unit_samples: int) -> np.ndarray:
        """A clip shorter than the unit, centred in zeros as a wave, on the unit's frame grid."""
        n_frames = frames.shape[0]
        n = (n_frames - 1) * self.hop + self.hop // 2  # the clip's length, as well as its frames tell it
        left = (unit_samples - n) // 2
        centres = np.arange(unit_frames) * self.hop
        nearest = np.clip(np.rint((centres - left) / self.hop), 0, n_frames - 1).astype(np.int64)
        gain = self.share(centres, left, left + n)
        if self.cfg.center_pad == "constant":  # the cached edge frames already saw zeros beyond the clip
            own = self.share(np.arange(n_frames) * self.hop, 0, n)
            gain = gain / np.maximum(own[nearest], 1e-12)
        values = np.asarray(frames, dtype=np.float64)[nearest]
        return self.scale(values, np.minimum(gain, 1.0)[:, None])


def unit_of(
    frames: np.ndarray,
    unit: int,
    fill: float,
    rng: np.random.Generator,
    edges: EdgeModel | None = None,
    unit_samples: int | None = None,
) -> np.ndarray:
    """``unit`` frames: a random crop of a longer clip, a shorter one centred in padding.

    With ``edges`` (and ``unit_samples``) the padding is modelled as the official zero padding of the
    wave (see the module docstring); without, the clip's frames are centred in ``fill`` frames.
    """
    n = frames.shape[0]
    if n >= unit:
        start = int(rng.integers(0, n - unit + 1))
        return np.asarray(frames[start : start + unit], dtype=np.float64)
    if edges is not None and unit_samples is not None:
        return edges.padded(frames, unit, unit_samples)
    out = np.full((unit, frames.shape[1]), fill, dtype=np.float64)
    left = (unit - n) // 2
    out[left : left + n] = frames
    return out


def dataset_norm(cache, clip_ids: Sequence[str], features: FeatureConfig, cfg: NormStatsConfig) -> InputNorm:
    """Mean and std over ``cfg.max_clips`` random clips of ``clip_ids`` (the training fold only)."""
    ids = list(clip_ids)
    if not ids:
        raise ValueError("input_norm: dataset needs at least one training clip")
    rng = np.random.default_rng(cfg.seed)
    chosen = np.sort(rng.choice(len(ids), size=min(cfg.max_clips, len(ids)), replace=False))
    unit = unit_samples = None
    if cfg.unit_seconds is not None:
        unit_samples = int(cfg.unit_seconds * features.sample_rate)
        unit = frames_of(unit_samples, features)
    # the edge model needs a centred STFT on a scale it can map to power (not Kaldi's fbank)
    edges = EdgeModel(features) if features.kind == "logmel" and features.cache == "logmel" else None
    fill = silence_value(features)
    total, total_sq, count = 0.0, 0.0, 0
    for i in chosen:
        frames = cache.get(ids[int(i)])
        if unit is None:
            values = np.asarray(frames, np.float64)
        else:
            values = unit_of(frames, unit, fill, rng, edges, unit_samples)
        total += values.sum()
        total_sq += np.square(values).sum()
        count += values.size
    mean = total / count
    std = float(np.sqrt(max(total_sq / count - mean**2, 1e-12)))
    how = "whole clips" if unit is None else f"{unit}-frame units ({cfg.unit_seconds} s)"
    log.info(
        "input normalisation from %d of %d training clips, %s: mean %.4f, std %.4f",
        len(chosen),
        len(ids),
        how,
        mean,
        std,
    )
    return InputNorm(mean=mean, std=std)
