"""Band-limited resampling in torch, so that it runs where the log-mel runs (a GPU at ``prepare``).

``features.resampler: sinc`` selects it in place of soxr (``soxr_hq``, the default, which runs on the
CPU in the decoding threads or workers). The filter follows soxr's HQ recipe: linear phase, the
passband flat to 91.3 % of the lower rate's Nyquist frequency, the stopband from 100 % on, rejected
by 120 dB (a Kaiser-windowed sinc). Output length and time alignment are soxr's: ``round(n * new /
old)`` samples, output sample ``m`` at input time ``m * old / new``, zeros beyond the ends.

Two ways to apply the same filter:

- polyphase: the ratio reduced to ``up / down`` (44.1 -> 32 kHz is 320 / 441) gives ``up`` phases,
  each a short filter at a fixed offset in a block of ``down`` input samples; one strided ``conv1d``
  applies them all. Used when the phases' dense kernel has at most ``MAX_KERNEL`` weights;
- direct: each output sample's weights computed from its position, in chunks (any pair of rates, e.g.
  44,099 Hz whose ratio does not reduce). It also checks the polyphase path in the tests.

The result differs from soxr's by the two filters' ripple and transition shapes: measured on the
log-mel in ``tests/test_resample.py``; a cache built with it has its own key.
"""

from __future__ import annotations

import contextlib
import math
from functools import lru_cache

import torch
from torch import Tensor

PASSBAND_END = 0.913  # of the lower rate's Nyquist frequency (soxr HQ)
STOPBAND_BEGIN = 1.0
REJECTION_DB = 120.0
MAX_KERNEL = 1 << 22  # weights of the polyphase kernel (16 MiB in float32)
_DIRECT_CHUNK = 1 << 16  # output samples per chunk of the direct path


def output_length(n_samples: int, old_rate: int, new_rate: int) -> int:
    """Samples soxr returns for ``n_samples`` (``round(n * new / old)``, halves rounded up)."""
    return (2 * n_samples * new_rate + old_rate) // (2 * old_rate)


class _Design:
    """The continuous filter: cutoff (Hz), half-width (s) and Kaiser beta for a pair of rates."""

    def __init__(self, old_rate: int, new_rate: int) -> None:
        nyquist = min(old_rate, new_rate) / 2
        transition = (STOPBAND_BEGIN - PASSBAND_END) * nyquist
        self.cutoff = (STOPBAND_BEGIN + PASSBAND_END) / 2 * nyquist
        # Kaiser's formulas: length for the rejection and transition width, and the window's beta
        self.half_width = (REJECTION_DB - 7.95) / (2.285 * 4 * math.pi * transition)
        self.beta = 0.1102 * (REJECTION_DB - 8.7)
        self.old_rate = old_rate

    def weights(self, offsets: Tensor) -> Tensor:
        """Weights of input samples at ``offsets`` seconds from the output sample (float64)."""
        inside = offsets.abs() <= self.half_width
        ratio = (offsets / self.half_width).clamp(-1.0, 1.0)
        peak = torch.special.i0(torch.tensor(self.beta, dtype=torch.float64))
        window = torch.special.i0(self.beta * torch.sqrt(1.0 - ratio * ratio)) / peak
        gain = 2 * self.cutoff / self.old_rate  # unit gain at DC: the sum over input samples is ~1
        return torch.where(inside, gain * torch.sinc(2 * self.cutoff * offsets) * window, 0.0)


@lru_cache(maxsize=16)
def _polyphase(old_rate: int, new_rate: int) -> tuple[Tensor, int, int, int] | None:
    """(kernel (up, 1, width) float32, up, down, left pad) or None when the kernel is too large."""
    g = math.gcd(old_rate, new_rate)
    up, down = new_rate // g, old_rate // g
    design = _Design(old_rate, new_rate)
    reach = math.floor(design.half_width * old_rate)  # input samples each side of an output's time
    width = down + 2 * reach + 1
    if up * width > MAX_KERNEL:
        return None
    # Phase j (output m = k * up + j) sits at input position k * down + j * down / up; row j of the
    # kernel holds the weights of the input samples k * down - reach + column.
    phase = torch.arange(up, dtype=torch.float64)[:, None]
    taps = torch.arange(width, dtype=torch.float64)[None, :] - reach
    position = phase * down / up  # of the phase's output, in input samples after k * down
    offsets = (taps - position) / old_rate  # seconds from the input sample to the output's time
    kernel = design.weights(offsets)  # zero beyond the half-width: each row is one phase's taps
    return kernel.float()[:, None, :], up, down, reach


def resample(wave: Tensor, old_rate: int, new_rate: int) -> Tensor:
    """``wave`` (samples,) or (batch, samples) float32 resampled from ``old_rate`` to ``new_rate``."""
    if old_rate == new_rate:
        return wave
    squeeze = wave.dim() == 1
    x = wave[None] if squeeze else wave
    out_len = output_length(x.shape[-1], old_rate, new_rate)
    if out_len == 0:
        y = x.new_zeros(x.shape[0], 0)
        return y[0] if squeeze else y
    plan = _polyphase_on(old_rate, new_rate, str(x.device))
    y = _direct(x, old_rate, new_rate, out_len) if plan is None else _apply_polyphase(x, plan, out_len)
    return y[0] if squeeze else y


@lru_cache(maxsize=16)
def _polyphase_on(old_rate: int, new_rate: int, device: str) -> tuple[Tensor, int, int, int] | None:
    """``_polyphase``'s plan with its kernel on ``device``: copied there once, not every clip."""
    plan = _polyphase(old_rate, new_rate)
    return None if plan is None else (plan[0].to(device), *plan[1:])


def _apply_polyphase(x: Tensor, plan: tuple[Tensor, int, int, int], out_len: int) -> Tensor:
    kernel, up, down, reach = plan
    blocks = -(-out_len // up)  # blocks of `down` input samples needed for out_len outputs
    needed = (blocks - 1) * down + kernel.shape[-1]
    right = max(0, needed - reach - x.shape[-1])
    padded = torch.nn.functional.pad(x, (reach, right))[:, None, :]
    with _full_precision(x):
        y = torch.nn.functional.conv1d(padded, kernel, stride=down)  # (batch, up, blocks)
    return y.transpose(1, 2).reshape(x.shape[0], -1)[:, :out_len]


def _full_precision(x: Tensor) -> contextlib.AbstractContextManager[object]:
    """cuDNN's TF32 convolutions (on by default) keep 10 mantissa bits: too few for a resampler."""
    if not x.is_cuda:
        return contextlib.nullcontext()
    cudnn = torch.backends.cudnn
    return cudnn.flags(
        enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic, allow_tf32=False
    )


def _direct(x: Tensor, old_rate: int, new_rate: int, out_len: int) -> Tensor:
    design = _Design(old_rate, new_rate)
    reach = math.floor(design.half_width * old_rate) + 1
    taps = torch.arange(-reach, reach + 1, device=x.device)
    padded = torch.nn.functional.pad(x, (reach, reach + 1))
    out = torch.empty(x.shape[0], out_len, dtype=x.dtype, device=x.device)
    for first in range(0, out_len, _DIRECT_CHUNK):
        m = torch.arange(first, min(out_len, first + _DIRECT_CHUNK), device=x.device, dtype=torch.float64)
        position = m * old_rate / new_rate  # in input samples
        nearest = torch.floor(position).long()
        index = nearest[:, None] + taps[None, :]  # input sample indices
        offsets = (index.double() - position[:, None]) / old_rate
        weights = design.weights(offsets).to(x.dtype)
        out[:, first : first + m.numel()] = (padded[:, index + reach] * weights).sum(-1)
    return out
