"""``audiotag weights``: the weights table (list), downloads into the cache (fetch), and a check that
a checkpoint is the real one (verify: top AudioSet labels and embedding statistics on a few clips)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from rich import box
from rich.table import Table

from audiotag.core.errors import ConfigError
from audiotag.core.log import output_console


def list_weights(weights_dir: Path | None = None) -> None:
    """The weights table: layout, size, licence, front-end, cached or not."""
    from audiotag.fetch import weights as weights_cache
    from audiotag.fetch.http import human_size
    from audiotag.models import registry

    caption = (
        f"cache: {weights_cache.cache_root(weights_dir)}\n* timm lists these weights as apache-2.0; "
        "licences of ImageNet-trained weights vary by model (ImageNet's own terms are non-commercial)\n"
        "Any timm CNN (model.name: timm): pretrained: imagenet takes timm's default weights of "
        "model.arch, timm/<arch>.<tag> names others; `weights list --timm 'PATTERN'` lists them, "
        "`weights fetch timm/<arch>` downloads one\n"
        "Any installed HEAR module (HEAR 2021 API) is a frozen representation for embed and the linear "
        "probe: hear:<module>[:<model_file>]; any name above, an encoder file or a run's fold is a HEAR "
        "module for the HEAR kit: audiotag.hear, model path NAME (python -m audiotag.hear NAME checks it)"
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
            weights_cache.cache_status(ckpt, weights_dir),
        )
    output_console().print(table)


def fetch_weights(names: list[str], weights_dir: Path | None = None, force: bool = False) -> None:
    """Download (with resume and checksums) the named checkpoints into the cache."""
    from audiotag.models import pretrained, registry

    console = output_console()
    entries = [registry.lookup(name) for name in names]  # all checked before the first download
    for ckpt in entries:
        path = pretrained.fetch(ckpt, weights_dir, force=force)
        console.print(f"{ckpt.name}: {path} (licence {ckpt.license})")


def verify_weights(
    name: str,
    audio: Path | None = None,
    weights: Path | None = None,
    max_clips: int = 8,
    top: int = 5,
    weights_dir: Path | None = None,
) -> None:
    """Run checkpoint ``name`` on a few clips: top AudioSet labels and embedding statistics."""
    from audiotag.models import verify

    console = output_console()
    if weights_dir is not None:
        os.environ["AUDIOTAG_CACHE"] = str(weights_dir)
    clips = None
    if audio is not None:
        _, features, _ = verify.model_and_features(name, weights)
        clips = verify.audio_clips(audio, features.sample_rate, max_clips)
    results, notes = verify.run_checkpoint(name, clips, weights, top_k=top)
    console.print(f"[bold]{name}[/bold]: " + "; ".join(notes))
    table = Table(title=f"{name} on {len(results)} clips", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("clip", no_wrap=True)
    table.add_column("seconds", justify="right")
    table.add_column(f"top {top} AudioSet labels" if results and results[0].top else "embedding norm")
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


def list_timm_weights(pattern: str, weights_dir: Path | None = None) -> None:
    """timm's pretrained weights whose ``<arch>.<tag>`` matches ``pattern``."""
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
    output_console().print(table)
