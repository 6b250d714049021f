"""The model families, collected, and their weights table; build a tagger and load pretrained weights.

Every module of ``audiotag.models`` that declares ``FAMILY = Family(...)`` (see ``models/family.py``)
is a family. ``families()`` finds them by scanning this package, so adding a family is adding its
module (and its YAML under ``configs/models/``). ``weights_table()`` is every family's checkpoints;
:func:`resolve` turns their names (and timm's) into verified local files.
"""

from __future__ import annotations

import importlib
import logging
import os
import pkgutil
from functools import cache
from pathlib import Path

import torch

import audiotag.models
from audiotag.config.files import load_group, validate
from audiotag.config.schema import FeatureConfig, InputNorm, ModelBase
from audiotag.core.errors import ConfigError
from audiotag.fetch.weights import Checkpoint
from audiotag.models.encoder_file import check_recorded_frontend
from audiotag.models.family import Family
from audiotag.models.loading import LoadReport, load_converted
from audiotag.models.pretrained import (
    IMAGENET,
    TIMM_PREFIX,
    fetch,
    read_weights_file,
    timm_checkpoint,
    timm_name,
)
from audiotag.models.tagger import Tagger, build_head

log = logging.getLogger(__name__)


@cache
def families() -> dict[str, Family]:
    """``model.name`` -> its family, from every module of this package that declares ``FAMILY``."""
    found: dict[str, Family] = {}
    for info in sorted(pkgutil.iter_modules(audiotag.models.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"audiotag.models.{info.name}")
        family = getattr(module, "FAMILY", None)
        if isinstance(family, Family):
            if family.name in found:
                raise RuntimeError(f"model family {family.name!r} is declared twice ({module.__name__})")
            found[family.name] = family
    return found


def family_of(name: str) -> Family:
    known = families()
    if name not in known:
        raise ConfigError(f"model.name: unknown model {name!r}; known: {', '.join(sorted(known))}")
    return known[name]


@cache
def weights_table() -> dict[str, Checkpoint]:
    """The weights table (`./run.sh weights list`): every family's checkpoints, by name."""
    return {c.name: c for f in families().values() for c in f.checkpoints}


def lookup(name: str, arch: str | None = None) -> Checkpoint:
    """A table entry, or a timm entry (``timm/<arch>[.<tag>]``, or ``imagenet`` with ``arch``)."""
    known = weights_table()
    if name in known:
        return known[name]
    if name == IMAGENET or name.startswith(TIMM_PREFIX):
        return timm_checkpoint(timm_name(name, arch), curated=known.values())
    raise ConfigError(
        f"unknown weights {name!r}; known: {', '.join(sorted(known))}; any timm architecture: "
        f"{TIMM_PREFIX}<arch>[.<tag>], or {IMAGENET!r} for the default weights of a timm model's model.arch"
    )


def _is_name(spec: str) -> bool:
    """A table, timm/ or imagenet name rather than a file path (a file named timm/... is a file)."""
    return (
        spec in weights_table()
        or spec == IMAGENET
        or (spec.startswith(TIMM_PREFIX) and not Path(spec).expanduser().is_file())
    )


_ANNOUNCED: set[tuple[str, Path]] = set()


def resolve(
    spec: str,
    cache_dir: str | os.PathLike[str] | None = None,
    offline: bool | None = None,
    *,
    arch: str | None = None,
) -> tuple[Path, Checkpoint | None]:
    """A weights name -> (its verified local file, its entry); a file path -> (path, None).

    Names: the table's, ``timm/<arch>[.<tag>]``, and ``imagenet`` (timm's default weights of
    ``arch``, the ``model.arch`` of a timm model; ``arch`` is also checked against a timm/ name).
    """
    path = Path(spec).expanduser()
    if _is_name(spec):
        ckpt = lookup(spec, arch)
        if ckpt.name != spec:
            log.info("model.pretrained %s: %s", spec, ckpt.name)
        local = fetch(ckpt, cache_dir, offline)
        if (ckpt.name, local) not in _ANNOUNCED:  # checked before a run starts, then loaded per fold
            _ANNOUNCED.add((ckpt.name, local))
            log.info(
                "pretrained weights %s: %s (licence %s; %s)", ckpt.name, local, ckpt.license, ckpt.source
            )
        return local, ckpt
    if path.is_file():
        return path, None
    what = (
        "is a folder, not a checkpoint file"
        if path.exists()
        else "is neither a known name nor an existing file"
    )
    raise ConfigError(
        f"weights {spec!r} {what}; known names: {', '.join(sorted(weights_table()))}, {IMAGENET} and "
        f"{TIMM_PREFIX}<arch>[.<tag>] (timm models)"
    )


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
    backbone = family_of(cfg.name).build_backbone(cfg, n_mels, frames)
    frontend = None
    if features is not None and features.cache == "wave":
        from audiotag.data.features import make_extractor

        frontend = make_extractor(features)
    return Tagger(backbone, build_head(cfg, backbone, n_classes), norm, frontend)  # type: ignore[arg-type]


def check_frontend(features: FeatureConfig, expected_name: str, checkpoint: str) -> None:
    """Refuse features that differ from those the checkpoint was trained with."""
    expected = validate(
        FeatureConfig, load_group("features", expected_name), f"configs/features/{expected_name}"
    )
    differences = features.frontend_differences(expected)
    if not differences:
        return
    diff = "; ".join(f"{k}: {a!r} (checkpoint: {b!r})" for k, (a, b) in differences.items())
    raise ConfigError(
        f"features: {checkpoint} was trained on the front-end configs/features/{expected_name}.yaml, but "
        f"the configured features differ ({diff}). Use `features: {expected_name}` (or `features: auto`) "
        "in the experiment, so the cache is built with the checkpoint's own settings"
    )


def weights_arch(cfg: ModelBase) -> str | None:
    """The timm architecture that ``pretrained: imagenet`` and ``timm/<arch>`` names refer to."""
    family = family_of(cfg.name)
    return family.weights_arch(cfg) if family.weights_arch is not None else None


def check_pretrained(cfg: ModelBase, features: FeatureConfig, offline: bool | None = None) -> None:
    """Fail early (before a run folder is written) when the pretrained weights are unusable."""
    if cfg.pretrained is None:
        return
    path, entry = resolve(cfg.pretrained, offline=offline, arch=weights_arch(cfg))
    if entry is not None and entry.features is not None:
        check_frontend(features, entry.features, entry.name)
    if entry is None:  # a file: an encoder written by `pretrain` records its front-end
        check_recorded_frontend(path, features)


def load_pretrained(
    model: Tagger,
    cfg: ModelBase,
    features: FeatureConfig,
    offline: bool | None = None,
    weights_file: Path | None = None,
) -> LoadReport | None:
    """Initialise ``model`` from ``cfg.pretrained``: a weights-table name, ``imagenet`` or
    ``timm/<arch>[.<tag>]`` (timm models), or a file path. ``weights_file``: a copy of that file at
    hand (a package's, checked by its caller), read in place of resolving the name; the front-end
    checks were made when the run was trained and are not repeated."""
    if cfg.pretrained is None:
        return None
    if weights_file is not None:
        # a package's copy of the file: the entry of its name, without fetching or checking any file
        entry = lookup(cfg.pretrained, weights_arch(cfg)) if _is_name(cfg.pretrained) else None
        path = Path(weights_file)
    else:
        path, entry = resolve(cfg.pretrained, offline=offline, arch=weights_arch(cfg))
        if entry is not None and entry.features is not None:
            check_frontend(features, entry.features, entry.name)
        if entry is None:
            check_recorded_frontend(path, features)
    allow = {"allow": entry.pickle_globals} if entry is not None else {}
    state, beside = read_weights_file(path, **allow)
    family = family_of(cfg.name)
    layout = entry.layout if entry is not None else family.layout_of(list(state))
    converters = family.converters
    if layout not in converters:
        raise ConfigError(
            f"model.pretrained: {cfg.pretrained} holds {layout!r} weights, which a {cfg.name!r} model "
            f"cannot use (it loads: {', '.join(sorted(converters))})"
        )
    converted = converters[layout](state)
    if family.check_settings is not None:  # e.g. BEATs: the file's own cfg against the model config
        converted = family.check_settings(cfg, beside, converted)
    prepare = getattr(model.backbone, "prepare_checkpoint", None)
    if prepare is not None:  # e.g. AST: the positional-embedding adapter needs the model's patch grid
        converted = prepare(converted)
    with torch.no_grad():
        return load_converted(model, converted, source=str(path))
