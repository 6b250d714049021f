"""Log-mel front-end: STFT power (or magnitude) -> mel filterbank -> dB (or natural log), time-major output.

Matches ``librosa.power_to_db(librosa.feature.melspectrogram(...), ref=1.0, top_db=None)`` as used
by PANNs, but runs in torch so it works batched on CPU or GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from audiotag.config.schema import FeatureConfig
from audiotag.data.kaldi_fbank import kaldi_mel_banks

# Slaney mel scale: linear below 1 kHz, logarithmic above (librosa's default, htk=False).
_SLANEY_F_SP = 200.0 / 3
_SLANEY_MIN_LOG_HZ = 1000.0
_SLANEY_MIN_LOG_MEL = _SLANEY_MIN_LOG_HZ / _SLANEY_F_SP
_SLANEY_LOGSTEP = np.log(6.4) / 27.0


def hz_to_mel(freqs: np.ndarray | float, htk: bool) -> np.ndarray:
    freqs = np.asarray(freqs, dtype=np.float64)
    if htk:
        return 2595.0 * np.log10(1.0 + freqs / 700.0)
    log_region = freqs >= _SLANEY_MIN_LOG_HZ
    safe = np.where(log_region, freqs, _SLANEY_MIN_LOG_HZ)
    log_mels = _SLANEY_MIN_LOG_MEL + np.log(safe / _SLANEY_MIN_LOG_HZ) / _SLANEY_LOGSTEP
    return np.where(log_region, log_mels, freqs / _SLANEY_F_SP)


def mel_to_hz(mels: np.ndarray | float, htk: bool) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    if htk:
        return 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    log_freqs = _SLANEY_MIN_LOG_HZ * np.exp(_SLANEY_LOGSTEP * (mels - _SLANEY_MIN_LOG_MEL))
    return np.where(mels >= _SLANEY_MIN_LOG_MEL, log_freqs, _SLANEY_F_SP * mels)


def mel_filterbank(cfg: FeatureConfig) -> np.ndarray:
    """Triangular mel filters, (n_mels, n_fft // 2 + 1) float32.

    Same as ``librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax, htk=..., norm=...)`` with norm
    ``"slaney"`` (area), ``1`` (``mel_norm: l1``) or ``None`` (``mel_norm: none``, as torchaudio);
    ``mel_scale: kaldi`` gives Kaldi's filters instead (``data/kaldi_fbank.kaldi_mel_banks``).
    """
    if cfg.mel_scale == "kaldi":
        return kaldi_mel_banks(cfg, cfg.n_fft).T.copy()
    htk = cfg.mel_scale == "htk"
    fmax = cfg.fmax if cfg.fmax is not None else cfg.sample_rate / 2
    fft_freqs = np.fft.rfftfreq(cfg.n_fft, d=1.0 / cfg.sample_rate)
    mel_edges = np.linspace(hz_to_mel(cfg.fmin, htk), hz_to_mel(fmax, htk), cfg.n_mels + 2)
    hz_edges = mel_to_hz(mel_edges, htk)
    # the triangles' slopes: linear in Hz (librosa), or in mel (mel_features.py: ratios of mel
    # differences, so HTK's 2595 log10 and mel_features' 1127 ln give the same weights)
    in_mel = cfg.mel_slopes == "mel"
    edges, freqs = (mel_edges, hz_to_mel(fft_freqs, htk)) if in_mel else (hz_edges, fft_freqs)
    widths = np.diff(edges)
    ramps = edges[:, None] - freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    if cfg.mel_norm == "slaney":
        weights *= (2.0 / (hz_edges[2:] - hz_edges[:-2]))[:, None]
    elif cfg.mel_norm == "l1":
        sums = weights.sum(axis=1, keepdims=True)
        weights = np.divide(weights, sums, out=np.zeros_like(weights), where=sums > 0)
    return weights.astype(np.float32)


def mel_groups(fb: np.ndarray, mels_per_group: int = 16) -> list[tuple[int, int, np.ndarray]]:
    """The filterbank split into runs of consecutive filters, each with the FFT bins it touches.

    A mel filter is non-zero on a narrow band of bins, so a run of ``mels_per_group`` filters
    touches a small share of the spectrum: multiplying each run by just its bins does 3-4x less
    work than the dense product (8x at 128 mels), with the same sums up to float rounding.
    Returns ``(first_bin, end_bin, weights (end_bin - first_bin, filters in the run))`` per run.
    """
    groups = []
    for start in range(0, fb.shape[0], mels_per_group):
        block = fb[start : start + mels_per_group]
        touched = np.flatnonzero(block.any(axis=0))
        first, end = (int(touched[0]), int(touched[-1]) + 1) if touched.size else (0, 1)
        groups.append((first, end, np.ascontiguousarray(block[:, first:end].T)))
    return groups


def make_window(kind: str, length: int) -> Tensor:
    """Analysis window: periodic (as librosa and torch.stft use for STFTs) but ``hann_symmetric``."""
    if kind in ("hann", "hann_symmetric"):
        return torch.hann_window(length, periodic=kind == "hann", dtype=torch.float32)
    if kind == "hamming":
        return torch.hamming_window(length, periodic=True, dtype=torch.float32)
    return torch.hann_window(length, periodic=False, dtype=torch.float64).pow(0.85).float()  # Kaldi povey


def reflect_pad(wave: Tensor, pad: int) -> Tensor:
    """``wave`` (..., samples) reflect-padded by ``pad`` at both ends, as ``torch.stft(center=True)``.

    Same values as ``F.pad(mode="reflect")``, which is 5x slower on long 1-D signals on the CPU.
    Needs ``samples > pad``.
    """
    if pad == 0:
        return wave
    return torch.cat([wave[..., 1 : pad + 1].flip(-1), wave, wave[..., -pad - 1 : -1].flip(-1)], -1)


def min_samples(cfg: FeatureConfig) -> int:
    """Shortest wave the STFT takes: the reflect padding must be shorter than the signal; without
    centring (``center_pad: none``) one window."""
    if cfg.center_pad == "none":
        return cfg.win_length or cfg.n_fft
    return cfg.n_fft // 2 + 1


def n_frames(n_samples: int, cfg: FeatureConfig) -> int:
    """Frames of a clip of ``n_samples`` samples, short clips included (zero-padded to one window
    when the STFT is not centred)."""
    n_samples = max(0, n_samples - preemphasis_shift(cfg))
    if cfg.center_pad == "none":
        return 1 + max(n_samples - min_samples(cfg), 0) // cfg.hop_length
    return 1 + n_samples // cfg.hop_length


def preemphasis_shift(cfg: FeatureConfig) -> int:
    """Samples the wave-level pre-emphasis takes off (one: it starts from the second sample)."""
    return 1 if cfg.preemphasis > 0 else 0


def preemphasize(wave: Tensor, coefficient: float) -> Tensor:
    """``y[n] = x[n + 1] - k x[n]``: the valid 2-tap filter PaSST and EfficientAT run as a conv1d."""
    return wave[..., 1:] - coefficient * wave[..., :-1]


class LogMel(nn.Module):
    """(batch, samples) float32 wave -> (batch, frames, n_mels) float32 log-mel.

    With ``preemphasis`` the wave is filtered first and is one sample shorter from then on (PaSST).
    The centred STFT pads ``n_fft // 2`` samples at both ends by reflection (``center_pad: reflect``,
    as torch and torchlibrosa) or with zeros (``constant``, librosa >= 0.9's default).
    Waves shorter than ``n_fft // 2 + 1`` samples cannot be reflect-padded, so they are first
    zero-padded at the end to that length; the output is then cut to ``n_frames(samples)`` frames,
    so the frame count depends only on the true length.
    """

    def __init__(self, cfg: FeatureConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.win_length = cfg.win_length or cfg.n_fft
        self.register_buffer("window", make_window(cfg.window, self.win_length), persistent=False)
        self.bins: list[tuple[int, int]] = []
        fb = mel_filterbank(cfg)
        for i, (first, end, weights) in enumerate(mel_groups(fb)):
            self.bins.append((first, end))
            self.register_buffer(f"fb{i}", torch.from_numpy(weights), persistent=False)

    def forward(self, wave: Tensor) -> Tensor:
        if self.cfg.preemphasis > 0 and wave.shape[-1] > 1:
            wave = preemphasize(wave, self.cfg.preemphasis)
        n_samples = wave.shape[-1]
        if self.cfg.peak_normalize:
            peak = wave.abs().amax(dim=-1, keepdim=True)
            wave = wave / torch.where(peak > 0, peak, torch.ones_like(peak))
        short = min_samples(self.cfg) - n_samples
        if short > 0:
            wave = torch.nn.functional.pad(wave, (0, short))
        half = self.cfg.n_fft // 2
        if self.cfg.center_pad == "none":  # torch.stft centres the window in n_fft: frame k from k * hop
            inset = (self.cfg.n_fft - self.win_length) // 2
            padded = torch.nn.functional.pad(wave, (inset, self.cfg.n_fft - self.win_length - inset))
        elif self.cfg.center_pad == "reflect":
            padded = reflect_pad(wave, half)
        else:
            padded = torch.nn.functional.pad(wave, (half, half))
        spec = torch.stft(
            padded,
            n_fft=self.cfg.n_fft,
            hop_length=self.cfg.hop_length,
            win_length=self.win_length,
            window=self.window,
            center=False,
            return_complex=True,
        )
        power = spec.real.square() + spec.imag.square()
        power = (power if self.cfg.power == 2 else power.sqrt()).transpose(1, 2)  # (batch, frames, freq)
        mel = torch.cat(
            [power[..., a:b] @ self.get_buffer(f"fb{i}") for i, (a, b) in enumerate(self.bins)], -1
        )
        return self._scale(mel[:, : 1 + n_samples // self.cfg.hop_length])

    def _scale(self, mel: Tensor) -> Tensor:
        if self.cfg.scale == "db":
            db = 10.0 * torch.log10(torch.clamp(mel, min=self.cfg.amin))
            if self.cfg.top_db is None:
                return db
            # torchaudio's AmplitudeToDB: the floor is relative to each clip's loudest value
            return torch.maximum(db, db.amax(dim=(-2, -1), keepdim=True) - self.cfg.top_db)
        if self.cfg.scale == "log10_1p" and self.cfg.float16:
            return log10_1p_float16(mel, self.cfg.log_gain)
        if self.cfg.scale == "log10_1p":
            return torch.log10(1.0 + self.cfg.log_gain * mel)
        return torch.log(mel + self.cfg.log_offset)


def log10_1p_float16(mel: Tensor, gain: float) -> Tensor:
    """musicnn's ``np.log10(10000 * mel.astype(np.float16) + 1)``: every step rounded to float16
    (numpy computes float16 ufuncs in float32 and rounds each result), except that a product past
    float16's largest value saturates there instead of becoming inf (musicnn's overflow, which TF
    then turns into NaN-dependent values no other framework reproduces)."""
    half = torch.float16
    top = torch.finfo(half).max
    x = torch.clamp(mel, max=top).to(half).float()
    x = torch.clamp(x * gain, max=top).to(half).float()
    x = (x + 1.0).to(half).float()
    return torch.log10(x).to(half).float()


@dataclass(frozen=True)
class ScaleRule:
    """What a front-end's output scale means for padding and for gains.

    ``silence``: the value a frame of padding takes (what the official code pads with).
    ``per_db``: what a gain of +1 dB adds to every value, or None where a gain is not a shift.
    """

    silence: float
    per_db: float | None
    description: str


def scale_rule(cfg: FeatureConfig) -> ScaleRule:
    """The one place that knows each cached scale's padding value and gain rule."""
    if cfg.cache == "wave":
        return ScaleRule(0.0, None, "a waveform: silence is 0; gains are not a shift")
    if cfg.kind == "kaldi_fbank":
        # ln(max(mel, eps)): the floor is ln(eps) = -15.94, but official AST zero-pads the fbank
        return ScaleRule(0.0, math.log(10) / 10, "Kaldi fbank, natural log; padded with 0 as official AST")
    per_power_db = cfg.power / 2  # a magnitude spectrum (power 1) moves half as far per dB
    if cfg.scale == "db":
        return ScaleRule(10.0 * math.log10(cfg.amin), per_power_db, f"dB, floor 10*log10({cfg.amin:g})")
    if cfg.scale == "log":
        per_db = math.log(10) / 10 * per_power_db
        return ScaleRule(math.log(cfg.log_offset), per_db, f"ln(mel + {cfg.log_offset:g})")
    return ScaleRule(0.0, None, "log10(1 + gain * mel): silence is 0; gains are not a shift")


def make_extractor(cfg: FeatureConfig) -> nn.Module:
    """The front-end module for ``cfg``: (batch, samples) -> (batch, frames, n_mels)."""
    if cfg.kind == "kaldi_fbank":
        from audiotag.data.kaldi_fbank import KaldiFbank

        return KaldiFbank(cfg)
    return LogMel(cfg)


def frames_of(n_samples: int, cfg: FeatureConfig) -> int:
    """Frames the front-end gives for a clip of ``n_samples`` samples."""
    if cfg.kind == "kaldi_fbank":
        from audiotag.data.kaldi_fbank import kaldi_n_frames

        return kaldi_n_frames(n_samples, cfg)
    return n_frames(n_samples, cfg)


def compute_logmel(wave: np.ndarray, cfg: FeatureConfig, extractor: nn.Module | None = None) -> np.ndarray:
    """Log-mel of one mono wave, (frames, n_mels) float32; pass ``extractor`` to reuse its filterbank."""
    extractor = extractor if extractor is not None else make_extractor(cfg)
    with torch.inference_mode():
        device = next(iter(extractor.buffers())).device
        x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))[None].to(device)
        return extractor(x)[0].cpu().numpy()
