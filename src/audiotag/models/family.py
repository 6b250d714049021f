"""What a model family module (``models/cnn14.py``, ``models/ast.py``, ...) declares: ``FAMILY =
Family(...)``, the fields below. ``models/registry.py`` finds every module of this package that has a
``FAMILY``, so adding a family is one module (+ its YAML): nothing else needs editing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from audiotag.config.schema import ModelBase
from audiotag.models.loading import Converted, Converter

EMBEDDING = "embedding"  # the layer name of a model's own clip embedding (``head.embedding``)

# (backbone, normalised log-mel, 1-based layers) -> {layer: (batch, frames', dim)}, and under key 0
# the backbone's own output when it was computed on the way
FrameFn = Callable[[Any, torch.Tensor, list[int]], dict[int, torch.Tensor]]
# (model config, a file's entries beside its weights, converted checkpoint) -> converted checkpoint
SettingsCheck = Callable[[Any, Mapping[str, Any], Converted], Converted]


@dataclass(frozen=True)
class Layers:
    """The numbered layers (1-based, network order) a family offers as frozen representations."""

    count: Callable[[Any], int]  # model config -> how many numbered layers
    defaults: Callable[[Any], list[str]]  # model config -> the layers ``layers: default`` fuses
    frames: FrameFn
    pool: str  # over time: "mean+max" (max + mean, CNN14-Fusion, BYOL-A) or "mean"


@dataclass(frozen=True)
class Verification:
    """How ``weights verify`` runs the family's checkpoints."""

    audioset_layouts: frozenset[str] = frozenset()  # layouts whose files carry AudioSet's 527-class head
    input_frames: int | None = None  # the fixed input length its checkpoints take (clips cut or padded)
    # model settings for an entry whose ``model`` names no configs/models/ file (timm/<arch> entries)
    settings_of: Callable[[str], dict[str, Any]] | None = None


@dataclass(frozen=True)
class Family:
    config: type[ModelBase]  # its ``name`` field's literal is the family's name
    build_backbone: Callable[[Any, int, int], nn.Module]  # (cfg, n_mels, frames) -> backbone
    converters: Mapping[str, Converter]  # checkpoint key layout -> converter
    detect_layout: Callable[[Sequence[str]], str] | None = None  # for a checkpoint given by path
    checkpoints: Sequence[Any] = field(default_factory=tuple)  # its rows of the weights table
    layers: Layers | None = None  # None: the model's own embedding only
    # backbone -> input frames it needs at least (its total time stride; 32, a CNN's usual one, if unknown)
    min_frames: Callable[[Any], int] = lambda backbone: 32
    verification: Verification = field(default_factory=Verification)
    weights_arch: Callable[[Any], str | None] | None = None  # timm arch that imagenet/timm/ names refer to
    # for files that record their own settings beside the weights (BEATs' ``cfg``, ``label_dict``):
    # refuses, naming them, settings that differ from the model config; may reorder by them
    check_settings: SettingsCheck | None = None

    def __post_init__(self) -> None:
        for ckpt in self.checkpoints:
            if ckpt.layout not in self.converters:
                raise ValueError(
                    f"family {self.name}: checkpoint {ckpt.name} has layout {ckpt.layout!r}, which its "
                    f"converters do not take ({', '.join(sorted(self.converters))})"
                )

    @property
    def name(self) -> str:
        return str(self.config.model_fields["name"].default)

    def layout_of(self, keys: Sequence[str]) -> str:
        """The key layout of a checkpoint known only by its keys (a file path, not a table name)."""
        if self.detect_layout is not None:
            return self.detect_layout(keys)
        if len(self.converters) == 1:
            return next(iter(self.converters))
        raise ValueError(f"family {self.name}: several layouts and no detect_layout")
