"""The embed command: clip embeddings of a frozen pretrained model for every clip of a competition.

``./run.sh embed -c COMP --model NAME [--layers 3,6 | all | default]`` runs the weights-table model
``NAME`` (its own architecture and front-end; ``--features`` for weights that have none; or
``hear:<module>[:<model_file>]``, an installed HEAR module, on a wave cache at its rate) over the
feature cache of ``COMP`` (built first if missing) and stores the embeddings in
``competition/COMP/embeddings/`` (``audiotag.models.embedding_cache``). A ``linear_probe`` experiment
computes or reuses the same cache itself (``runs/probe_training.py``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from audiotag.config.files import load_group, validate
from audiotag.config.schema import FeatureConfig, load_competition
from audiotag.core.errors import ConfigError
from audiotag.core.log import output_console
from audiotag.models.encoder_file import read_encoder_info
from audiotag.models.hear_in import hear_features, hear_spec
from audiotag.models.representation import EmbeddingConfig, LayerSpec, embedding_features
from audiotag.runs.prepare import prepare
from audiotag.runs.probe_training import embed_prepared
from audiotag.train.distributed import SINGLE, device_for

log = logging.getLogger(__name__)


def embedding_front_end(cfg: EmbeddingConfig, features: str | None = None) -> FeatureConfig:
    """The front-end config: ``features`` when given, else the one the weights were trained with (a
    HEAR module's: a wave cache at its sample rate; an encoder file's: the one it records)."""
    spec = hear_spec(cfg.weights)
    if spec is not None and features is None:
        return hear_features(spec)
    info = read_encoder_info(cfg.weights) if features is None and cfg.weights else None
    if info is not None:  # written by `pretrain`
        return info.features
    name = features or embedding_features(cfg)
    if name is None:
        raise ConfigError(
            f"embed: weights {cfg.weights!r} have no front-end of their own; pass --features NAME "
            "(a config under configs/features/)"
        )
    return validate(FeatureConfig, load_group("features", name), f"configs/features/{name}.yaml")


@dataclass(frozen=True)
class EmbedOptions:
    """What ``audiotag embed`` is asked: ``model``, a weights-table name or a checkpoint file (then
    ``arch`` names its model config), the layers to fuse, the front-end, and how to run."""

    competition: str
    model: str
    layers: LayerSpec
    arch: str | None = None
    features: str | None = None
    window_seconds: float = 10.0
    batch_size: int = 16
    device: str = "auto"
    workers: int | None = None
    overrides: list[str] = field(default_factory=list)  # of the competition config (--data-dir)


def run_embed(options: EmbedOptions) -> None:
    """``audiotag embed``: embed every clip of the competition and say where the embeddings are."""
    weights = options.model
    if Path(weights).expanduser().is_file():
        weights = str(Path(weights).expanduser().resolve())
    elif hear_spec(weights) is None:
        from audiotag.models.registry import lookup

        lookup(weights)  # an unknown name: ConfigError listing the known ones
    cfg = EmbeddingConfig(
        weights=weights,
        model=options.arch,
        layers=options.layers,
        window_seconds=options.window_seconds,
        batch_size=options.batch_size,
    )
    front_end = embedding_front_end(cfg, options.features)
    device = device_for(SINGLE, options.device, "--device")  # before the cache is built
    competition = load_competition(options.competition, options.overrides)
    prepared = prepare(competition, front_end, workers=options.workers)
    cache, names = embed_prepared(prepared, cfg, front_end, device)
    console = output_console()
    dims = " + ".join(f"{name}: {cache.dims[name]}" for name in names)
    console.print(
        f"embeddings of {len(cache.clip_ids)} clips: {cache.folder}\nlayers {dims} "
        f"(= {sum(cache.dims[n] for n in names)} values a clip; the folder holds {', '.join(cache.layers)})",
        soft_wrap=True,
    )
