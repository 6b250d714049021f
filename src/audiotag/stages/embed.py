"""The embed command: clip embeddings of a frozen pretrained model for every clip of a competition.

``./run.sh embed -c COMP --model NAME [--layers 3,6 | all | default]`` runs the weights-table model
``NAME`` (its own architecture and front-end; ``--features`` for weights that have none) over the
feature cache of ``COMP`` (built first if missing) and stores the embeddings in
``competition/COMP/embeddings/`` (``audiotag.models.embedding_cache``). A ``linear_probe`` experiment
computes or reuses the same cache itself (``runs/embeddings.py``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from audiotag.config.files import load_group, validate
from audiotag.config.schema import CompetitionConfig, FeatureConfig, load_competition
from audiotag.core.errors import ConfigError
from audiotag.core.log import output_console
from audiotag.models.embedding_cache import EmbeddingCache
from audiotag.models.representation import EmbeddingConfig, LayerSpec, embedding_features
from audiotag.runs.embeddings import embed_prepared
from audiotag.runs.prepare import prepare
from audiotag.train.distributed import SINGLE, device_for

log = logging.getLogger(__name__)


def embedding_front_end(cfg: EmbeddingConfig, features: str | None = None) -> FeatureConfig:
    """The front-end config: ``features`` when given, else the one the weights were trained with."""
    name = features or embedding_features(cfg)
    if name is None:
        raise ConfigError(
            f"embed: weights {cfg.weights!r} have no front-end of their own; pass --features NAME "
            "(a config under configs/features/)"
        )
    return validate(FeatureConfig, load_group("features", name), f"configs/features/{name}.yaml")


def embed_competition(
    competition: CompetitionConfig,
    cfg: EmbeddingConfig,
    features: FeatureConfig,
    workers: int | None = None,
    device: torch.device | None = None,
) -> tuple[EmbeddingCache, list[str]]:
    prepared = prepare(competition, features, workers=workers)
    return embed_prepared(prepared, cfg, features, device or device_for(SINGLE, "auto"))


# ----------------------------------------------------------------------------- CLI


def parse_layers(text: str) -> LayerSpec:
    """``3,6`` / ``embedding`` / ``2,4,embedding`` / ``all`` / ``default``."""
    text = text.strip()
    if text in ("all", "default"):
        return text  # type: ignore[return-value]
    out: list[int | str] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part == "embedding":
            out.append(part)
        elif part.isdigit():
            out.append(int(part))
        else:
            raise argparse.ArgumentTypeError(
                f"--layers {text!r}: expected 1-based layer numbers and/or 'embedding', comma-separated "
                "(e.g. 3,6), or all, or default"
            )
    if not out:
        raise argparse.ArgumentTypeError("--layers: name at least one layer")
    return out  # type: ignore[return-value]


def build_embed_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audiotag embed",
        description="Embed every clip of a competition with a frozen pretrained model (layer fusion as "
        "Niizumi et al. 2022) and cache the embeddings in competition/<name>/embeddings/.",
    )
    parser.add_argument(
        "--competition", "-c", default="demo", help="competition name or YAML (default: demo)"
    )
    parser.add_argument(
        "--model",
        "-m",
        required=True,
        metavar="NAME",
        help="weights from `./run.sh weights list` (e.g. aisfx, cnn14_16k, ast_audioset, byola2048), or a "
        "checkpoint file (then --arch names its model config)",
    )
    parser.add_argument(
        "--arch", metavar="MODEL", help="model config under configs/models/ (default: the entry's)"
    )
    parser.add_argument(
        "--layers",
        type=parse_layers,
        default="default",
        help="1-based layers to fuse and/or 'embedding' (the model's own), e.g. 3,6; all: every layer "
        "(one pass serves any later fusion); default: the paper's (CNN14 3,6; AST 5,12; else embedding)",
    )
    parser.add_argument("--features", metavar="NAME", help="front-end config (default: the weights' own)")
    parser.add_argument("--window-seconds", type=float, default=10.0, help="longer clips go in windows (10)")
    parser.add_argument("--batch-size", type=int, default=16, help="windows per forward pass (16)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--workers", type=int, metavar="N", help="processes for the feature cache")
    parser.add_argument("--verbose", "-v", action="store_true")
    return parser


def run_embed(args: argparse.Namespace) -> None:
    weights = args.model
    if Path(weights).expanduser().is_file():
        weights = str(Path(weights).expanduser().resolve())
    else:
        from audiotag.models.pretrained import lookup

        lookup(weights)  # an unknown name: ConfigError listing the known ones
    cfg = EmbeddingConfig(
        weights=weights,
        model=args.arch,
        layers=args.layers,
        window_seconds=args.window_seconds,
        batch_size=args.batch_size,
    )
    features = embedding_front_end(cfg, args.features)
    cache, layers = embed_competition(
        load_competition(args.competition), cfg, features, args.workers, device_for(SINGLE, args.device)
    )
    console = output_console()
    dims = " + ".join(f"{name}: {cache.dims[name]}" for name in layers)
    console.print(
        f"embeddings of {len(cache.clip_ids)} clips: {cache.folder}\nlayers {dims} "
        f"(= {sum(cache.dims[n] for n in layers)} values a clip; the folder holds {', '.join(cache.layers)})",
        soft_wrap=True,
    )
