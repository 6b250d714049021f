"""``audiotag weights``: the weights table (list), downloads into the cache (fetch), and a check that
a checkpoint is the real one (verify: top AudioSet labels and embedding statistics on a few clips)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from rich import box
from rich.console import Console
from rich.table import Table

from audiotag.core.errors import ConfigError
from audiotag.core.log import output_console


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
    from audiotag.fetch import weights as weights_cache
    from audiotag.fetch.http import human_size
    from audiotag.models import pretrained, registry

    console = output_console()
    if args.action == "list" and args.timm:
        _list_timm_weights(console, args.timm, args.weights_dir)
        return
    if args.action == "list":
        caption = (
            f"cache: {weights_cache.cache_root(args.weights_dir)}\n* timm lists these weights as apache-2.0; "
            "licences of ImageNet-trained weights vary by model (ImageNet's own terms are non-commercial)\n"
            "Any timm CNN (model.name: timm): pretrained: imagenet takes timm's default weights of "
            "model.arch, timm/<arch>.<tag> names others; `weights list --timm 'PATTERN'` lists them, "
            "`weights fetch timm/<arch>` downloads one"
        )
        table = Table(title="pretrained weights", caption=caption, box=box.SIMPLE_HEAD, pad_edge=False)
        for column in ("name", "layout", "size", "licence", "front-end", "cached"):
            table.add_column(column, no_wrap=True, justify="right" if column == "size" else "left")
        for ckpt in registry.weights_table().values():
            table.add_row(
                ckpt.name,
                ckpt.layout,
                human_size(ckpt.size),
                ckpt.license,
                ckpt.front_end,
                weights_cache.cache_status(ckpt, args.weights_dir),
            )
        console.print(table)
        return
    if args.action == "verify":
        _verify_weights(console, args)
        return
    entries = [registry.lookup(name) for name in args.names]  # all checked before the first download
    for ckpt in entries:
        path = pretrained.fetch(ckpt, args.weights_dir, force=args.force)
        console.print(f"{ckpt.name}: {path} (licence {ckpt.license})")


def _verify_weights(console: Console, args: argparse.Namespace) -> None:
    from audiotag.models import verify

    if args.weights_dir is not None:
        os.environ["AUDIOTAG_CACHE"] = str(args.weights_dir)
    clips = None
    if args.audio is not None:
        _, features, _ = verify.model_and_features(args.name, args.weights)
        clips = verify.audio_clips(args.audio, features.sample_rate, args.max_clips)
    results, notes = verify.run_checkpoint(args.name, clips, args.weights, top_k=args.top)
    console.print(f"[bold]{args.name}[/bold]: " + "; ".join(notes))
    table = Table(title=f"{args.name} on {len(results)} clips", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("clip", no_wrap=True)
    table.add_column("seconds", justify="right")
    table.add_column(f"top {args.top} AudioSet labels" if results and results[0].top else "embedding norm")
    for r in results:
        labels = (
            ", ".join(f"{label} {p:.2f}" for label, p in r.top) or f"{float(np.linalg.norm(r.embedding)):.3f}"
        )
        table.add_row(r.name, f"{r.seconds:.1f}", labels)
    console.print(table)
    stats = verify.embedding_stats(results)
    console.print(
        "embeddings: " + ", ".join(f"{k} {v:.0f}" if k == "dim" else f"{k} {v:.4g}" for k, v in stats.items())
    )


def _list_timm_weights(console: Console, pattern: str, weights_dir: Path | None) -> None:
    from audiotag.fetch import weights as weights_cache
    from audiotag.models import pretrained, registry

    found = pretrained.timm_catalogue(pattern, curated=registry.weights_table().values())
    if not found:
        raise ConfigError(
            f"weights list --timm {pattern!r}: no timm weights match; patterns are globs over "
            "<arch>.<tag>, e.g. 'resnet34*' or '*efficientnet_b0*'"
        )
    caption = (
        f"cache: {weights_cache.cache_root(weights_dir)}\n* as timm's pretrained_cfg lists it; licences of "
        "ImageNet-trained weights vary by model (ImageNet's own terms are non-commercial). Default = what "
        "pretrained: imagenet takes for that model.arch"
    )
    table = Table(title=f"timm weights matching {pattern!r}", caption=caption, box=box.SIMPLE_HEAD)
    for column in ("name", "default", "licence", "source (HF hub repo or URL)", "cached"):
        table.add_column(column, no_wrap=not column.startswith("source"), overflow="fold")
    hub = pretrained.HF_ENDPOINT + "/"
    for ckpt, default in found:
        source = ckpt.source
        if source.startswith(hub):
            source = source.removeprefix(hub).split("/resolve/", 1)[0]
        table.add_row(
            ckpt.name,
            "yes" if default else "",
            ckpt.license,
            source,
            weights_cache.cache_status(ckpt, weights_dir),
        )
    console.print(table)
