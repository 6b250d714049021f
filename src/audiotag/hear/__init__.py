"""audiotag's models as a HEAR 2021 module: ``import audiotag.hear`` is what the HEAR evaluation kit
(heareval) and ``hear-validator`` take as a module name.

``load_model(model_file_path)``, the path naming:

- a weights-table name (``./run.sh weights list``: cnn14_16k, aisfx, ast_audioset ...), its own
  architecture and front-end;
- an encoder file written by ``pretrain`` (it records its model, front-end and normalisation);
- a fine-tuned run: ``competition/<comp>/runs/<name>/fold<k>`` (or its ``best.pt``), or the run
  folder itself (its first finished fold).

The layers are the family's defaults (those ``embed`` fuses); ``get_scene_embeddings`` and
``get_timestamp_embeddings`` are ``models/hear_out.py``'s. ``python -m audiotag.hear MODEL`` loads
MODEL and checks the HEAR rules on it (``models/hear_in.validate_hear``).

An entry point above every floor (a folder of its own, so the package root keeps only ``__init__`` and
``__main__``): it only resolves the path and loads the model; ``__main__.py`` runs :func:`main`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path

from audiotag.config.files import load_group, validate
from audiotag.config.schema import FeatureConfig
from audiotag.core.errors import AudiotagError, ConfigError
from audiotag.models.encoder_file import read_encoder_info
from audiotag.models.hear_out import HearExport, get_scene_embeddings, get_timestamp_embeddings
from audiotag.models.representation import EmbeddingConfig, Representation, model_config, resolve_layers

__all__ = ["get_scene_embeddings", "get_timestamp_embeddings", "load_model"]

log = logging.getLogger(__name__)

MODEL_ENV = "AUDIOTAG_HEAR_MODEL"  # used when load_model() is given no path (heareval without --model)
_FOLD = re.compile(r"^fold(\d+)$")


def load_model(model_file_path: str = "") -> HearExport:
    """The model ``model_file_path`` names (see the module's docstring), frozen, on the CPU."""
    spec = str(model_file_path or os.environ.get(MODEL_ENV, ""))
    if not spec:
        raise ConfigError(
            "audiotag.hear.load_model: name a model: a weights-table name (./run.sh weights list), an "
            "encoder file written by pretrain, or a run's fold folder (runs/<name>/fold0); or set "
            f"{MODEL_ENV}"
        )
    path = Path(spec).expanduser()
    if path.is_dir() or path.name == "best.pt":
        rep = _from_run(path)
    elif path.is_file():
        rep = _from_encoder_file(path)
    else:
        rep = _from_weights_name(spec)
    return HearExport(rep, resolve_layers(rep.model_cfg, "default"))


def _from_weights_name(name: str) -> Representation:
    from audiotag.models.registry import lookup

    entry = lookup(name)  # an unknown name: ConfigError listing the known ones
    if entry.features is None:
        raise ConfigError(f"audiotag.hear: weights {name!r} have no front-end of their own to expose")
    features = validate(FeatureConfig, load_group("features", entry.features), entry.features)
    cfg = EmbeddingConfig(weights=name)
    if model_config(cfg).input_norm == "dataset":
        raise ConfigError(
            f"audiotag.hear: {name} normalises its input with statistics of the training clips "
            "(input_norm: dataset); expose an encoder file written by pretrain or a fine-tuned run's fold, "
            "which record them"
        )
    return Representation(cfg, features)


def _from_encoder_file(path: Path) -> Representation:
    info = read_encoder_info(path)
    if info is None:
        raise ConfigError(
            f"audiotag.hear: {path} is not an encoder written by pretrain, so its architecture and front-end "
            "are unknown; give its weights-table name, or a run's fold folder"
        )
    # the normalisation it was pretrained with, not statistics of clips the HEAR kit never shows us
    model = {**info.model, "input_norm": info.input_norm.model_dump(mode="json")}
    return Representation(EmbeddingConfig(weights=str(path), model=model), info.features)


def _fold_dir(path: Path) -> Path:
    """The fold folder ``path`` names: itself, its ``best.pt``'s folder, or a run's first finished fold."""
    if path.name == "best.pt":
        path = path.parent
    if _FOLD.match(path.name) and (path.parent / "config.yaml").is_file():
        return path
    folds = sorted(
        (p for p in path.glob("fold*") if _FOLD.match(p.name) and (p / "done.json").is_file()),
        key=lambda p: int(p.name[4:]),
    )
    if not (path / "config.yaml").is_file() or not folds:
        raise ConfigError(
            f"audiotag.hear: {path} is not a run folder with a finished fold (config.yaml and "
            "fold<k>/done.json); name a run folder, one of its fold folders, or a weights name"
        )
    log.info("audiotag.hear: %s: fold %s", path, folds[0].name)
    return folds[0]


def _from_run(path: Path) -> Representation:
    from audiotag.train.experiment import load_experiment
    from audiotag.train.loop import load_fold_model

    fold_dir = _fold_dir(path)
    cfg = load_experiment(fold_dir.parent / "config.yaml")
    if cfg.model.name == "linear_probe":
        raise ConfigError(
            f"audiotag.hear: {fold_dir.parent} is a linear probe on frozen embeddings; expose its "
            f"representation instead (its embedding.weights: {cfg.model.pretrained!r})"
        )
    tagger = load_fold_model(cfg, fold_dir)
    model = cfg.model.model_dump(mode="json")
    return Representation(EmbeddingConfig(weights=None, model=model), cfg.features, tagger=tagger)


def main(argv: list[str] | None = None) -> int:
    """``python -m audiotag.hear MODEL``: load MODEL as the HEAR kit would and check the HEAR rules."""
    from audiotag.models.hear_in import HearSpec, validate_hear

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(
            "usage: python -m audiotag.hear MODEL  (a weights name, an encoder file or a run's fold folder)"
        )
        return 2
    try:
        report = validate_hear(HearSpec("audiotag.hear", args[0]))
    except AudiotagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    return 0
