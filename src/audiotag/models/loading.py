"""Load a converted checkpoint into a model, reporting every key, adapting only what is safe.

Backbone modules convert an official checkpoint's key layout to ours; this module compares the
result with the model: keys loaded, missing, unexpected, shape-mismatched, and adapted (e.g. RGB
stem weights summed to one channel, positional embeddings resampled). Missing keys are accepted
only in the new head; anything else that does not fit is refused with the full list.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from audiotag.core.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# (key, checkpoint tensor, the model's tensor) -> adapted tensor, or None when it cannot be adapted.
Adapter = Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor | None]


@dataclass
class Converted:
    """An official checkpoint rewritten in our key layout (``backbone.*``, ``head.*``)."""

    state: dict[str, torch.Tensor]
    ignored: list[str] = field(default_factory=list)  # keys dropped on purpose (old head, front-end buffers)
    adapters: list[Adapter] = field(default_factory=list)


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """A NumPy ``.npz`` archive's arrays (VGGish's PCA parameters); pickled objects are refused."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {k: archive[k] for k in archive.files}
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npz archive of arrays: {exc}") from None


# layout name -> converter of a raw state dict (already unwrapped from {"model": ...} and the like)
Converter = Callable[[dict[str, torch.Tensor]], Converted]


@dataclass
class LoadReport:
    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{len(self.loaded)} tensors loaded"]
        for label, items in (
            ("adapted", self.adapted),
            ("left at init (new head)", self.missing),
            ("ignored (not used by this model)", self.ignored),
            ("unexpected", self.unexpected),
            ("shape mismatch", self.mismatched),
        ):
            if items:
                shown = ", ".join(items[:6]) + (f", … ({len(items)} in all)" if len(items) > 6 else "")
                parts.append(f"{label}: {shown}")
        return f"{self.source}: " + "; ".join(parts)


def rgb_to_mono(key: str, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor | None:
    """A stem conv trained on 3 input channels, used on 1: sum over the colour axis (timm's rule)."""
    fits = src.ndim == dst.ndim == 4 and src.shape[0] == dst.shape[0] and src.shape[2:] == dst.shape[2:]
    if fits and src.shape[1] == 3 and dst.shape[1] == 1:
        return src.sum(dim=1, keepdim=True)
    return None


def load_converted(
    model: nn.Module, converted: Converted, source: str, new_prefixes: tuple[str, ...] = ("head.",)
) -> LoadReport:
    """Copy a converted checkpoint into ``model``; raise ConfigError if it does not fit.

    Keys under ``new_prefixes`` (the new classifier) may be missing or differ in shape; they keep
    their initialisation. Every other key must be present with a fitting shape, or be adapted.
    """
    state, adapters = converted.state, converted.adapters
    report = LoadReport(source=source, ignored=list(converted.ignored))
    target = model.state_dict()
    ready: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key not in target:
            report.unexpected.append(key)
            continue
        want = target[key]
        if value.shape == want.shape:
            ready[key] = value.to(want.dtype)
            report.loaded.append(key)
            continue
        fixed = None
        for adapter in adapters or []:
            fixed = adapter(key, value, want)
            if fixed is not None:
                break
        if fixed is not None and fixed.shape == want.shape:
            ready[key] = fixed.to(want.dtype)
            report.loaded.append(key)
            report.adapted.append(f"{key} {tuple(value.shape)}->{tuple(want.shape)}")
        elif key.startswith(new_prefixes):
            report.missing.append(f"{key} (checkpoint {tuple(value.shape)}, model {tuple(want.shape)})")
        else:
            report.mismatched.append(f"{key} (checkpoint {tuple(value.shape)}, model {tuple(want.shape)})")
    report.missing += [k for k in target if k not in state and k.startswith(new_prefixes)]
    absent = [k for k in target if k not in state and not k.startswith(new_prefixes)]
    if absent or report.mismatched or report.unexpected:
        problems = []
        if absent:
            problems.append(
                f"missing from the checkpoint: {', '.join(absent[:10])}" + (" …" if len(absent) > 10 else "")
            )
        if report.mismatched:
            problems.append(f"shapes that do not fit: {', '.join(report.mismatched[:10])}")
        if report.unexpected:
            problems.append(f"keys this model does not have: {', '.join(report.unexpected[:10])}")
        raise ConfigError(
            f"{source}: checkpoint does not fit the configured model ({'; '.join(problems)}). "
            "Check that model settings (channels, dim, depth, arch) match the checkpoint"
        )
    model.load_state_dict(ready, strict=False)
    log.info("%s", report.summary())
    return report
