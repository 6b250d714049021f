"""What a model family module declares, so that adding a family is one module (+ its YAML).

A family module (``models/cnn14.py``, ``models/ast.py``, ...) defines its config schema (a
``ModelBase`` subclass whose ``name`` literal is what ``model.name`` selects), ``build_backbone``,
its checkpoint converters (checkpoint key layout -> converter to our key names), how to recognise the
layout of a checkpoint given by path, and its rows of the weights table; then it declares
``FAMILY = Family(...)``. ``models/registry.py`` finds every module of this package that has a
``FAMILY`` and collects them: nothing else needs editing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from audiotag.config.schema import ModelBase
from audiotag.models.loading import Converter


@dataclass(frozen=True)
class Family:
    config: type[ModelBase]  # its ``name`` field's literal is the family's name
    build_backbone: Callable[[Any, int, int], nn.Module]  # (cfg, n_mels, frames) -> backbone
    converters: Mapping[str, Converter]  # checkpoint key layout -> converter
    detect_layout: Callable[[Sequence[str]], str] | None = None  # for a checkpoint given by path
    checkpoints: Sequence[Any] = field(default_factory=tuple)  # its rows of the weights table
    weights_arch: Callable[[Any], str | None] | None = None  # timm arch that imagenet/timm/ names refer to

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
