"""Kaldi's log mel filterbank ("fbank") in torch, batched, as AST computes its input.

Matches ``torchaudio.compliance.kaldi.fbank(wave, htk_compat=True, use_energy=False,
window_type="hanning", dither=0.0, frame_shift=10, num_mel_bins=128)`` without depending on
torchaudio. The steps, per frame, are Kaldi's (``feature-window.cc``, ``mel-computations.cc``):

1. framing with ``snip_edges=true``: frame ``i`` covers samples ``[i * hop, i * hop + win)`` and only
   whole frames are kept, so ``frames = 1 + (samples - win) // hop``;
2. remove the frame's DC offset (its mean), if ``remove_dc``;
3. pre-emphasis ``y[n] = x[n] - k * x[n - 1]``, where the first sample uses itself as its
   predecessor (``y[0] = x[0] - k * x[0]``), as Kaldi does;
4. the window: ``hann`` is Kaldi's "hanning", the *symmetric* Hann ``0.5 - 0.5 cos(2 pi n / (win - 1))``;
   ``povey`` is that raised to 0.85; ``hamming`` is the symmetric ``0.54 - 0.46 cos(...)``;
5. zero-pad to the FFT size (``n_fft`` rounded up to a power of two, Kaldi's ``round_to_power_of_two``)
   and take the power spectrum;
6. Kaldi's mel filters: mel = 1127 ln(1 + f / 700), triangles equally spaced in mel between
   ``fmin`` and ``fmax`` (Nyquist when unset), no area normalisation, the Nyquist bin unused;
7. natural log, floored at float32 epsilon.

No dither is added (AST uses ``dither=0``). AST also subtracts each clip's mean before the fbank;
with per-frame DC removal (step 2) that subtraction has no effect, so it is not repeated here.

Clips shorter than one window would give no frame at all in Kaldi; here they are zero-padded at
the end to one window, so every clip yields at least one frame (see ``kaldi_n_frames``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from audiotag.config import FeatureConfig

FLOAT32_EPS = float(np.finfo(np.float32).eps)  # Kaldi's log floor (torch.finfo(float32).eps)


def padded_fft_size(cfg: FeatureConfig) -> int:
    """FFT length: ``n_fft`` (at least the window) rounded up to a power of two."""
    size = max(cfg.n_fft, window_length(cfg))
    return 1 << (size - 1).bit_length()


def window_length(cfg: FeatureConfig) -> int:
    return cfg.win_length or cfg.n_fft


def kaldi_n_frames(n_samples: int, cfg: FeatureConfig) -> int:
    """Frames of a clip of ``n_samples`` (snip_edges framing; a clip under one window gives 1)."""
    win = window_length(cfg)
    return 1 + (max(n_samples, win) - win) // cfg.hop_length


def kaldi_mel_scale(freq: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log1p(np.asarray(freq, dtype=np.float64) / 700.0)


def kaldi_mel_banks(cfg: FeatureConfig) -> np.ndarray:
    """Kaldi's triangular mel filters, ``(n_fft_padded // 2 + 1, n_mels)`` float32 (Nyquist row zero)."""
    n_fft = padded_fft_size(cfg)
    nyquist = cfg.sample_rate / 2
    fmax = cfg.fmax if cfg.fmax is not None else nyquist
    mel_low, mel_high = kaldi_mel_scale(cfg.fmin), kaldi_mel_scale(fmax)
    delta = (mel_high - mel_low) / (cfg.n_mels + 1)
    edges = mel_low + delta * np.arange(cfg.n_mels + 2)
    left, center, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    mel = kaldi_mel_scale(np.arange(n_fft // 2) * (cfg.sample_rate / n_fft))[None, :]
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    banks = np.maximum(0.0, np.minimum(up, down))  # (n_mels, n_fft // 2)
    banks = np.concatenate([banks, np.zeros((cfg.n_mels, 1))], axis=1)  # the Nyquist bin is unused
    return banks.T.astype(np.float32)


def kaldi_window(kind: str, length: int) -> Tensor:
    """Kaldi's symmetric windows (``hanning``, ``povey``, ``hamming``), float32."""
    n = torch.arange(length, dtype=torch.float64)
    cos = torch.cos(2 * math.pi * n / (length - 1)) if length > 1 else torch.ones(length, dtype=torch.float64)
    if kind == "hann":
        window = 0.5 - 0.5 * cos
    elif kind == "povey":
        window = (0.5 - 0.5 * cos).pow(0.85)
    elif kind == "hamming":
        window = 0.54 - 0.46 * cos
    else:
        raise ValueError(f"unknown Kaldi window {kind!r}; known: hann, povey, hamming")
    return window.float()


class KaldiFbank(nn.Module):
    """(batch, samples) float32 wave -> (batch, frames, n_mels) float32 Kaldi log mel filterbank."""

    def __init__(self, cfg: FeatureConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.win_length = window_length(cfg)
        self.n_fft = padded_fft_size(cfg)
        self.register_buffer("window", kaldi_window(cfg.window, self.win_length), persistent=False)
        self.register_buffer("banks", torch.from_numpy(kaldi_mel_banks(cfg)), persistent=False)

    def forward(self, wave: Tensor) -> Tensor:
        short = self.win_length - wave.shape[-1]
        if short > 0:
            wave = F.pad(wave, (0, short))
        frames = wave.float().unfold(-1, self.win_length, self.cfg.hop_length)  # (batch, frames, win)
        if self.cfg.remove_dc:
            frames = frames - frames.mean(dim=-1, keepdim=True)
        if self.cfg.preemphasis > 0:
            previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
            frames = frames - self.cfg.preemphasis * previous
        frames = frames * self.window
        spec = torch.fft.rfft(frames, n=self.n_fft)
        power = spec.real.square() + spec.imag.square()
        return torch.clamp(power @ self.banks, min=FLOAT32_EPS).log()
