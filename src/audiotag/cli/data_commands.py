"""The parsers and runners of the data commands: ``weights``, ``embed`` and ``new-competition``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from audiotag.cli.args import (
    add_data_dir_argument,
    data_dir_overrides,
    options_of,
    plain_name,
    positive_int,
    positive_number,
    worker_count,
)

if TYPE_CHECKING:
    from audiotag.models.representation import LayerSpec


def build_weights_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audiotag weights",
        description="Pretrained checkpoints: list the known ones, or download and verify one into the cache "
        "(default ~/.cache/audiotag, or $AUDIOTAG_CACHE).",
    )
    parser.add_argument("--verbose", "-v", action="store_true")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list", help="the weights table: layout, size, licence, front-end, cached or not"
    )
    listing.add_argument(
        "--timm",
        metavar="PATTERN",
        help="list timm's pretrained weights whose <arch>.<tag> matches PATTERN instead (e.g. "
        "'efficientnet_b*'; quote it), each usable as model.pretrained timm/<arch>.<tag>",
    )
    fetching = actions.add_parser("fetch", help="download one or more checkpoints, with resume and checksums")
    fetching.add_argument(
        "names",
        nargs="+",
        metavar="NAME",
        help="a name from `audiotag weights list`, or timm/<arch>[.<tag>] (any timm weights)",
    )
    fetching.add_argument(
        "--force",
        action="store_true",
        help="download again; the cached copy is replaced only if the new one verifies",
    )
    verifying = actions.add_parser(
        "verify",
        help="run a checkpoint on a few clips: top AudioSet labels (CNN14, AST) and embedding statistics",
    )
    verifying.add_argument("name", metavar="NAME", help="a name from `audiotag weights list`")
    verifying.add_argument(
        "--audio",
        type=Path,
        help="folder of audio clips (default: built-in synthetic tone, noise, clicks, chirp)",
    )
    verifying.add_argument(
        "--weights", type=Path, help="use this file for NAME instead of the cached download"
    )
    verifying.add_argument("--max-clips", type=int, default=8, help="at most this many clips from --audio")
    verifying.add_argument("--top", type=int, default=5, help="labels shown per clip")
    for sub in (listing, fetching, verifying):
        sub.add_argument(
            "--weights-dir", type=Path, help="cache folder (default: $AUDIOTAG_CACHE or ~/.cache/audiotag)"
        )
        sub.add_argument("--verbose", "-v", action="store_true", default=argparse.SUPPRESS)
    return parser


def run_weights(args: argparse.Namespace) -> None:
    from audiotag.stages.weights import fetch_weights, list_timm_weights, list_weights, verify_weights

    if args.action == "list" and args.timm:
        list_timm_weights(args.timm, args.weights_dir)
    elif args.action == "list":
        list_weights(args.weights_dir)
    elif args.action == "verify":
        verify_weights(args.name, args.audio, args.weights, args.max_clips, args.top, args.weights_dir)
    else:
        fetch_weights(args.names, args.weights_dir, args.force)


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
    parser.add_argument(
        "--window-seconds", type=positive_number, default=10.0, help="longer clips go in windows (10)"
    )
    parser.add_argument("--batch-size", type=positive_int, default=16, help="windows per forward pass (16)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--workers", type=worker_count, metavar="N", help="processes for the feature cache")
    add_data_dir_argument(parser)
    parser.add_argument("--verbose", "-v", action="store_true")
    return parser


def run_embed(args: argparse.Namespace) -> None:
    from audiotag.stages.embed import EmbedOptions
    from audiotag.stages.embed import run_embed as embed

    # --data-dir: competition.data_dir, a key of the competition config embed loads on its own
    args.overrides = [o.removeprefix("competition.") for o in data_dir_overrides(args)]
    embed(options_of(EmbedOptions, args))


def build_new_competition_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audiotag new-competition",
        description="Inspect a data folder, guess its layout (a CSV of files and labels: kind: table; one "
        "sub-folder per class: kind: folders) and write a competition YAML with a comment on every guess, "
        "for you to review before `audiotag prepare -c PATH`.",
    )
    parser.add_argument(
        "name",
        type=plain_name,
        metavar="NAME",
        help="the competition's name (its workspace competition/NAME/)",
    )
    parser.add_argument(
        "--from", dest="source", type=Path, required=True, metavar="DIR", help="the data folder"
    )
    parser.add_argument(
        "--output",
        "-o",
        type=Path,
        metavar="PATH",
        help="where to write (default: configs/competitions/NAME.yaml; an installed package: ./NAME.yaml)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")
    parser.add_argument("--verbose", "-v", action="store_true")
    return parser


def run_new_competition(args: argparse.Namespace) -> None:
    from audiotag.stages.new_competition import run_new_competition as new_competition

    new_competition(args.name, args.source, args.output, args.force)
