"""Build a tagger from its config, and initialise it from pretrained weights when asked.

Each backbone family is one module with ``build_backbone(cfg, n_mels, frames)`` and
``CONVERTERS`` (checkpoint layout name -> converter to our key layout).
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

import torch

from audiotag.config import FeatureConfig, InputNorm, ModelBase, TimmConfig, load_group, validate
from audiotag.errors import ConfigError
from audiotag.models.loading import LoadReport, load_converted
from audiotag.models.tagger import Tagger, build_head

log = logging.getLogger(__name__)

FAMILIES = {
    "cnn": "audiotag.models.cnn14",
    "timm": "audiotag.models.timm_cnn",
    "ast": "audiotag.models.ast",
    "byola": "audiotag.models.byola",
}


def family_module(name: str) -> ModuleType:
    if name not in FAMILIES:
        raise ConfigError(f"model.name: unknown model {name!r}; known: {', '.join(sorted(FAMILIES))}")
    return importlib.import_module(FAMILIES[name])


def build_model(
    cfg: ModelBase,
    n_mels: int,
    n_classes: int,
    frames: int,
    input_norm: InputNorm | None = None,
    features: FeatureConfig | None = None,
) -> Tagger:
    """A randomly initialised tagger for log-mel crops of ``frames`` x ``n_mels``.

    ``input_norm`` replaces ``cfg.input_norm`` when that is ``"dataset"`` (computed by the caller).
    """
    if cfg.input_norm == "dataset" and input_norm is None:
        raise ConfigError("model.input_norm: 'dataset' needs statistics from the training data")
    norm = input_norm if cfg.input_norm == "dataset" else cfg.input_norm
    backbone = family_module(cfg.name).build_backbone(cfg, n_mels, frames)  # type: ignore[attr-defined]
    frontend = None
    if features is not None and features.cache == "wave":
        from audiotag.data.features import make_extractor

        frontend = make_extractor(features)
    return Tagger(backbone, build_head(cfg, backbone, n_classes), norm, frontend)  # type: ignore[arg-type]


def detect_layout(family: str, keys: list[str]) -> str:
    """The key layout of a checkpoint given by path only (no entry in the weights table)."""
    if family == "cnn":
        return "aisfx" if any(k.startswith("embedding_net.") for k in keys) else "panns"
    if family == "ast":
        return "ast" if any(k.startswith("module.v.") for k in keys) else "deit"
    return family


def check_frontend(features: FeatureConfig, expected_name: str, checkpoint: str) -> None:
    """Refuse features that differ from those the checkpoint was trained with."""
    expected = validate(
        FeatureConfig, load_group("features", expected_name), f"configs/features/{expected_name}"
    )
    if expected.key() == features.key():
        return
    ours, theirs = features.model_dump(exclude={"name"}), expected.model_dump(exclude={"name"})
    diff = "; ".join(f"{k}: {ours[k]!r} (checkpoint: {theirs[k]!r})" for k in ours if ours[k] != theirs[k])
    raise ConfigError(
        f"features: {checkpoint} was trained on the front-end configs/features/{expected_name}.yaml, but "
        f"the configured features differ ({diff}). Use `features: {expected_name}` (or `features: auto`) "
        "in the experiment, so the cache is built with the checkpoint's own settings"
    )


def weights_arch(cfg: ModelBase) -> str | None:
    """The timm architecture that ``pretrained: imagenet`` and ``timm/<arch>`` names refer to."""
    return cfg.arch if isinstance(cfg, TimmConfig) else None


def check_pretrained(cfg: ModelBase, features: FeatureConfig, offline: bool | None = None) -> None:
    """Fail early (before a run folder is written) when the pretrained weights are unusable."""
    if cfg.pretrained is None:
        return
    from audiotag.models.pretrained import resolve

    _, entry = resolve(cfg.pretrained, offline=offline, arch=weights_arch(cfg))
    if entry is not None and entry.features is not None:
        check_frontend(features, entry.features, entry.name)


def load_pretrained(
    model: Tagger, cfg: ModelBase, features: FeatureConfig, offline: bool | None = None
) -> LoadReport | None:
    """Initialise ``model`` from ``cfg.pretrained``: a weights-table name, ``imagenet`` or
    ``timm/<arch>[.<tag>]`` (timm models), or a file path."""
    if cfg.pretrained is None:
        return None
    from audiotag.models.pretrained import read_state_dict, resolve

    path, entry = resolve(cfg.pretrained, offline=offline, arch=weights_arch(cfg))
    if entry is not None and entry.features is not None:
        check_frontend(features, entry.features, entry.name)
    state = read_state_dict(path, allow=entry.pickle_globals) if entry is not None else read_state_dict(path)
    layout = entry.layout if entry is not None else detect_layout(cfg.name, list(state))
    converters = family_module(cfg.name).CONVERTERS  # type: ignore[attr-defined]
    if layout not in converters:
        raise ConfigError(
            f"model.pretrained: {cfg.pretrained} holds {layout!r} weights, which a {cfg.name!r} model "
            f"cannot use (it loads: {', '.join(sorted(converters))})"
        )
    converted = converters[layout](state)
    prepare = getattr(model.backbone, "prepare_checkpoint", None)
    if prepare is not None:  # e.g. AST: the positional-embedding adapter needs the model's patch grid
        converted = prepare(converted)
    with torch.no_grad():
        return load_converted(model, converted, source=str(path))
