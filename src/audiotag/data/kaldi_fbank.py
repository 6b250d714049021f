"""Kaldi's log mel filterbank ("fbank") in torch, batched, as AST computes its input.

Matches ``torchaudio.compliance.kaldi.fbank(wave, htk_compat=True, use_energy=False,
window_type="hanning", dither=0.0, frame_shift=10, num_mel_bins=128)`` without depending on
torchaudio. The steps, per frame, are Kaldi's (``feature-window.cc``, ``mel-computations.cc``):

0. the wave is multiplied by ``wave_scale`` (BEATs: 2**15), then (with ``remove_dc`` and ``clip_dc``)
   the clip's mean is subtracted (after the padding of short clips, below), as AST does before
   calling torchaudio; BEATs does not (``clip_dc: false``): on its 2**15-scaled wave with a DC offset
   that subtraction moved quiet bins by 1e-3 against the official front-end (tests/test_golden_beats.py);
1. framing with ``snip_edges=true``: frame ``i`` covers samples ``[i * hop, i * hop + win)`` and only
   whole frames are kept, so ``frames = 1 + (samples - win) // hop``;
2. remove the frame's DC offset (its mean), if ``remove_dc``;
3. pre-emphasis ``y[n] = x[n] - k * x[n - 1]``, where the first sample uses itself as its
   predecessor (``y[0] = x[0] - k * x[0]``), as Kaldi does;
4. the window: ``hann`` is Kaldi's "hanning", the *symmetric* Hann ``0.5 - 0.5 cos(2 pi n / (win - 1))``;
   ``povey`` is that raised to 0.85; ``hamming`` is the symmetric ``0.54 - 0.46 cos(...)``; computed
   in float32 by torch's window functions, as torchaudio does;
5. zero-pad to the FFT size (``n_fft`` rounded up to a power of two, Kaldi's ``round_to_power_of_two``)
   and take the power spectrum;
6. Kaldi's mel filters: mel = 1127 ln(1 + f / 700), triangles equally spaced in mel between
   ``fmin`` and ``fmax`` (Nyquist when unset), no area normalisation, the Nyquist bin unused;
   computed in float32 in torchaudio's order of operations (``get_mel_banks``), as Kaldi's C++
   also works in float;
7. natural log, floored at float32 epsilon.

No dither is added (AST uses ``dither=0``). With per-frame DC removal (step 2) the clip mean
(step 0) cancels in exact arithmetic; it is subtracted anyway, and the window and filters are
float32 like torchaudio's, because the lowest-energy bins (10 or more nepers below the frame's
peak) are dominated by float32 rounding and leakage: a window differing by 2e-7 (float64 rounded
to float32) moved such bins by up to 4e-3 against AST's torchaudio front-end; with torchaudio's
float32 arithmetic they agree to 2.4e-4 and the bins above -5 to 5e-6 on the same machine. Across
machines both move more: torch's CPU FFT and float32 ``log`` are MKL's, whose rounding depends on the
code path MKL picks for the CPU (SSE4.2, AVX2, AVX512), so the quietest bins differ by up to 3e-3
between CPUs, for torchaudio as for this module (figures in ``tests/test_golden_ast.py``, which
checks the same-machine bounds with MKL pinned to the fixture's path by ``MKL_CBWR=COMPATIBLE``).

Clips shorter than one window would give no frame at all in Kaldi; here they are zero-padded at
the end to one window, so every clip yields at least one frame (see ``kaldi_n_frames``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from audiotag.config.schema import FeatureConfig

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


def kaldi_mel_scale(freq: float) -> float:
    return 1127.0 * math.log(1.0 + freq / 700.0)


def kaldi_mel_banks(cfg: FeatureConfig, n_fft: int | None = None) -> np.ndarray:
    """Kaldi's triangular mel filters, ``(n_fft // 2 + 1, n_mels)`` float32 (Nyquist row zero);
    ``n_fft`` defaults to Kaldi's padded FFT size (a log-mel STFT passes its own ``n_fft``).

    The arithmetic is torchaudio's ``get_mel_banks`` (float64 band edges in mel, the rest in
    float32 tensors, in the same order), so the filters equal those of AST's front-end bit for bit on
    the same machine (torch's float32 ``log`` is MKL's, whose last bit depends on the CPU's MKL path).
    """
    n_fft = n_fft or padded_fft_size(cfg)
    nyquist = cfg.sample_rate / 2
    fmax = cfg.fmax if cfg.fmax is not None else nyquist
    mel_low, mel_high = kaldi_mel_scale(cfg.fmin), kaldi_mel_scale(fmax)
    delta = (mel_high - mel_low) / (cfg.n_mels + 1)
    band = torch.arange(cfg.n_mels).unsqueeze(1)  # int64, promoted to float32 as in torchaudio
    left = mel_low + band * delta
    center = mel_low + (band + 1.0) * delta
    right = mel_low + (band + 2.0) * delta
    freqs = (cfg.sample_rate / n_fft) * torch.arange(n_fft / 2)  # float32
    mel = (1127.0 * (1.0 + freqs / 700.0).log()).unsqueeze(0)
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    banks = torch.max(torch.zeros(1), torch.min(up, down))  # (n_mels, n_fft // 2)
    banks = F.pad(banks, (0, 1))  # the Nyquist bin is unused
    return banks.T.contiguous().numpy().astype(np.float32)


def kaldi_window(kind: str, length: int) -> Tensor:
    """Kaldi's symmetric windows (``hanning``, ``povey``, ``hamming``), float32 as torchaudio makes them."""
    if kind in ("hann", "hann_symmetric"):
        return torch.hann_window(length, periodic=False, dtype=torch.float32)
    if kind == "povey":
        return torch.hann_window(length, periodic=False, dtype=torch.float32).pow(0.85)
    if kind == "hamming":
        return torch.hamming_window(length, periodic=False, alpha=0.54, beta=0.46, dtype=torch.float32)
    raise ValueError(f"unknown Kaldi window {kind!r}; known: hann, povey, hamming")


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
        wave = wave.float()
        if self.cfg.wave_scale != 1.0:  # BEATs: ``waveform * 2 ** 15`` before torchaudio's fbank
            wave = wave * self.cfg.wave_scale
        short = self.win_length - wave.shape[-1]
        if short > 0:
            wave = F.pad(wave, (0, short))
        if self.cfg.remove_dc and self.cfg.clip_dc:  # AST's ``waveform - waveform.mean()``: cancels in
            # exact arithmetic
            wave = wave - wave.mean(dim=-1, keepdim=True)
        frames = wave.unfold(-1, self.win_length, self.cfg.hop_length)  # (batch, frames, win)
        if self.cfg.remove_dc:
            frames = frames - frames.mean(dim=-1, keepdim=True)
        if self.cfg.preemphasis > 0:
            previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
            frames = frames - self.cfg.preemphasis * previous
        frames = frames * self.window
        spec = torch.fft.rfft(frames, n=self.n_fft)
        power = spec.real.square() + spec.imag.square()
        return torch.clamp(power @ self.banks, min=FLOAT32_EPS).log()
