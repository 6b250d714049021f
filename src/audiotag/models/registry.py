"""Build a model by its config name. A backbone is one module that registers a builder here."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from audiotag.config import ModelConfig
from audiotag.errors import ConfigError

Builder = Callable[[ModelConfig, int, int], nn.Module]


def _cnn(cfg: ModelConfig, n_mels: int, n_classes: int) -> nn.Module:
    from audiotag.models.cnn14 import Cnn

    return Cnn(cfg, n_mels, n_classes)


MODELS: dict[str, Builder] = {"cnn": _cnn}


def build_model(cfg: ModelConfig, n_mels: int, n_classes: int) -> nn.Module:
    if cfg.name not in MODELS:
        raise ConfigError(f"model.name: unknown model {cfg.name!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[cfg.name](cfg, n_mels, n_classes)
