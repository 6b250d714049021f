"""BYOL-A's augmentations of pre-normalised log-mel units, on whole batches where the batch is.

Per view (two views of every unit): mixup with a past unit from a memory (log-mixup-exp), random
resize crop (RRC), random linear fader (RLF); then the two views of a batch are normalised together
(post-normalisation). The recipe and its numbers follow nttcslab/byol-a (``byol_a/augmentations.py``
and ``v2/byol_a2/augmentations.py``; ``stages/pretrain.py`` lists what was checked where):

- **Mixup** (``MixupBYOLA``): ``alpha = ratio * U(0, 1)`` per view, a background unit ``z`` drawn
  uniformly from a FIFO memory of past units, ``log((1 - alpha) * exp(x) + alpha * exp(z) + eps)``
  (log-mixup-exp, ``eps = finfo(float32).eps``); no mixing while the memory is empty. The official
  memory holds 2048 entries and receives each unit twice (once per view), so it spans 1024 units;
  here each batch is pushed once after both of its views are made (views mix with *past batches*),
  and ``memory_units`` counts units (default 1024).
- **RRC** (``RandomResizeCrop``): the unit is centred on a zero canvas of ``virtual_crop_scale``
  times its size (mel, time); a crop of ``int(U(freq_scale) * mels)`` x ``int(U(time_scale) *
  frames)`` (clipped to ``[1, canvas]``) at a uniform position is resized back with bicubic
  interpolation, ``align_corners=True``.
- **RLF** (``RandomLinearFader``, v2): ``head, tail = gain * U(-1, 1)`` per view, a line from head
  to tail over the frames added to the log-mel (a gain ramp).
- **Post-normalisation** (``NormalizeBatch``): one mean and (unbiased) std over both views of the
  whole batch, std clamped at ``finfo(float32).eps``.

Every draw comes from one ``torch.Generator`` on the CPU, and the memory is plain tensors
(:meth:`MixupMemory.state_dict`), so a checkpoint holding both resumes the stream exactly.
Tensors here are ``(batch, mels, frames)``, the official layout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from audiotag.config.schema import StrictModel

EPS = torch.finfo(torch.float32).eps


class ByolaAugmentConfig(StrictModel):
    """BYOL-A's augmentation settings (defaults: nttcslab/byol-a v2 ``train_v2.py``)."""

    mixup_ratio: float = Field(
        0.2, ge=0, le=1, description="mixup: alpha = ratio * U(0,1) (v2 0.2; v1 0.4); 0 disables mixup"
    )
    memory_units: int = Field(
        1024, ge=1, description="mixup: past units kept to mix with (official: 2048 entries, 2 per unit)"
    )
    log_mixup_exp: bool = Field(True, description="mixup in the linear power domain (log-mixup-exp)")
    virtual_crop_scale: tuple[float, float] = Field(
        (1.0, 1.5), description="RRC: canvas size relative to the unit (mels, frames)"
    )
    freq_scale: tuple[float, float] = Field((0.6, 1.5), description="RRC: crop height range, x mels")
    time_scale: tuple[float, float] = Field((0.6, 1.5), description="RRC: crop width range, x frames")
    fader_gain: float = Field(
        1.0, ge=0, description="RLF: gain of the linear fader (v2 1.0); 0 disables it (BYOL-A v1)"
    )

    @model_validator(mode="after")
    def _ranges(self) -> ByolaAugmentConfig:
        for name in ("virtual_crop_scale", "freq_scale", "time_scale"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"{name}: expected 0 < min <= max, got ({low}, {high})")
        if min(self.virtual_crop_scale) < 1.0:
            raise ValueError("virtual_crop_scale: the canvas must hold the unit (values >= 1.0)")
        return self


def log_mixup_exp(x: torch.Tensor, z: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``log((1 - alpha) * exp(x) + alpha * exp(z) + eps)``; ``alpha`` broadcasts over ``x``."""
    return torch.log((1.0 - alpha) * x.exp() + alpha * z.exp() + EPS)


class MixupMemory:
    """A FIFO of the last ``size`` units, as one tensor and a write position."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.bank: torch.Tensor | None = None
        self.count = 0  # units held (up to size)
        self.position = 0  # where the next unit goes

    def mix(self, x: torch.Tensor, ratio: float, generator: torch.Generator, log_exp: bool) -> torch.Tensor:
        """``x`` mixed with one random remembered unit each (``x`` itself while the memory is empty)."""
        if self.bank is None or self.count == 0 or ratio == 0:
            return x
        batch = x.shape[0]
        alpha = (ratio * torch.rand(batch, generator=generator)).to(x.device, x.dtype)[:, None, None]
        picks = torch.randint(0, self.count, (batch,), generator=generator).to(self.bank.device)
        z = self.bank[picks].to(x.dtype)
        return log_mixup_exp(x, z, alpha) if log_exp else (1.0 - alpha) * x + alpha * z

    def push(self, x: torch.Tensor) -> None:
        """Remember the units of ``x`` (batch, mels, frames), dropping the oldest beyond ``size``."""
        x = x.detach().float()
        if self.bank is None:
            self.bank = torch.zeros((self.size, *x.shape[1:]), dtype=torch.float32, device=x.device)
        if x.shape[1:] != self.bank.shape[1:]:
            held = tuple(self.bank.shape[1:])
            raise ValueError(f"mixup memory holds units of {held}, got a batch of {tuple(x.shape)}")
        units = x[-self.size :]
        slots = (self.position + torch.arange(units.shape[0], device=x.device)) % self.size
        self.bank[slots] = units
        self.position = (self.position + units.shape[0]) % self.size
        self.count = min(self.size, self.count + x.shape[0])

    def state_dict(self) -> dict:
        bank = self.bank[: self.count].cpu().clone() if self.bank is not None else None
        return {"size": self.size, "count": self.count, "position": self.position, "bank": bank}

    def load_state_dict(self, state: dict, device: torch.device | str = "cpu") -> None:
        if int(state["size"]) != self.size:
            raise ValueError(f"mixup memory of {state['size']} units saved, this one holds {self.size}")
        self.count, self.position = int(state["count"]), int(state["position"])
        bank = state["bank"]
        if bank is None:
            self.bank = None
            return
        self.bank = torch.zeros((self.size, *bank.shape[1:]), dtype=torch.float32, device=device)
        self.bank[: self.count] = bank.to(device)


def _uniform(low: float, high: float, n: int, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


def random_resize_crop(
    x: torch.Tensor,
    generator: torch.Generator,
    virtual_crop_scale: tuple[float, float] = (1.0, 1.5),
    freq_scale: tuple[float, float] = (0.6, 1.5),
    time_scale: tuple[float, float] = (0.6, 1.5),
) -> torch.Tensor:
    """RRC of every unit of ``x`` (batch, mels, frames), each with its own crop."""
    batch, mels, frames = x.shape
    canvas_h, canvas_w = int(mels * virtual_crop_scale[0]), int(frames * virtual_crop_scale[1])
    canvas = x.new_zeros((batch, canvas_h, canvas_w))
    top, left = (canvas_h - mels) // 2, (canvas_w - frames) // 2
    canvas[:, top : top + mels, left : left + frames] = x
    heights = (_uniform(*freq_scale, batch, generator) * mels).long().clamp(1, canvas_h)
    widths = (_uniform(*time_scale, batch, generator) * frames).long().clamp(1, canvas_w)
    # a uniform integer in [0, canvas - size] (inclusive, as random.randint)
    rows = (torch.rand(batch, generator=generator, dtype=torch.float64) * (canvas_h - heights + 1)).long()
    cols = (torch.rand(batch, generator=generator, dtype=torch.float64) * (canvas_w - widths + 1)).long()
    out = torch.empty_like(x)
    for k in range(batch):
        i, j, h, w = int(rows[k]), int(cols[k]), int(heights[k]), int(widths[k])
        crop = canvas[k, i : i + h, j : j + w][None, None]
        out[k] = F.interpolate(crop, size=(mels, frames), mode="bicubic", align_corners=True)[0, 0]
    return out


def random_linear_fader(x: torch.Tensor, generator: torch.Generator, gain: float) -> torch.Tensor:
    """RLF: each unit of ``x`` (batch, mels, frames) plus a line from ``head`` to ``tail`` over its
    frames, both drawn from ``gain * U(-1, 1)``."""
    if gain == 0:
        return x
    batch, _, frames = x.shape
    ends = (gain * (2.0 * torch.rand((batch, 2), generator=generator) - 1.0)).to(x.device, x.dtype)
    ramp = torch.linspace(0.0, 1.0, frames, device=x.device, dtype=x.dtype)
    slope = ends[:, :1] + (ends[:, 1:] - ends[:, :1]) * ramp[None, :]
    return x + slope[:, None, :]


def normalize_batch(x: torch.Tensor) -> torch.Tensor:
    """Post-normalisation: ``(x - mean) / std`` with one mean and std over all of ``x``."""
    return (x - x.mean()) / x.std().clamp(min=EPS)


class ByolaAugment:
    """Two augmented views of a batch of pre-normalised units, with the mixup memory."""

    def __init__(self, cfg: ByolaAugmentConfig) -> None:
        self.cfg = cfg
        self.memory = MixupMemory(cfg.memory_units)

    def view(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        cfg = self.cfg
        x = self.memory.mix(x, cfg.mixup_ratio, generator, cfg.log_mixup_exp)
        x = random_resize_crop(x, generator, cfg.virtual_crop_scale, cfg.freq_scale, cfg.time_scale)
        return random_linear_fader(x, generator, cfg.fader_gain)

    def views(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Both views of ``x`` (batch, mels, frames), post-normalised together; then ``x`` is remembered."""
        first, second = self.view(x, generator), self.view(x, generator)
        self.memory.push(x)
        both = normalize_batch(torch.cat([first, second]))
        return both[: x.shape[0]], both[x.shape[0] :]
