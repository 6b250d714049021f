"""Command line: stages -> functions. ``python -m audiotag prepare train ensemble``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from audiotag.config import (
    EnsembleConfig,
    ExperimentConfig,
    configs_root,
    load_competition,
    load_ensemble,
    load_experiment,
    read_yaml,
)
from audiotag.errors import AudiotagError, ConfigError
from audiotag.log import setup_logging
from audiotag.train.distributed import (
    PARALLEL_MODES,
    launched_by_torchrun,
    relaunch_with_torchrun,
    setup,
    teardown,
)

STAGES = ("prepare", "train", "ensemble")
log = logging.getLogger("audiotag")

EPILOG = """\
examples:
  audiotag prepare train ensemble                      the demo competition, end to end
  audiotag train --config configs/experiments/demo/cnn_small.yaml --folds 0,1
  audiotag train --set train.epochs=3 --run-name quick
  audiotag ensemble --config configs/ensembles/demo.yaml
  audiotag weights list                                pretrained checkpoints, and which are cached
  audiotag weights fetch cnn14                         download and verify one into the cache

--config names an experiment (prepare, train) or an ensemble (ensemble). Without it, the
competition's default experiment and ensemble are used. --set applies to the experiment config,
or to the ensemble config when ensemble is the only stage.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audiotag",
        description="Audio-tagging competition pipeline: prepare data, train folds, ensemble and submit.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("stages", nargs="+", metavar="STAGE", help=f"one or more of: {', '.join(STAGES)}")
    parser.add_argument("--competition", "-c", default="demo", help="competition name (default: demo)")
    parser.add_argument("--config", type=Path, help="experiment or ensemble YAML file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.epochs=3 (repeatable)",
    )
    parser.add_argument("--folds", help="comma-separated folds to train, e.g. 0,1")
    parser.add_argument("--run-name", help="name of the run folder (default: the experiment's name)")
    parser.add_argument(
        "--gpus",
        type=int,
        default=1,
        metavar="N",
        help="train with N processes launched by torchrun (one GPU each; CPU processes without CUDA)",
    )
    parser.add_argument(
        "--parallel",
        choices=PARALLEL_MODES,
        default="ddp",
        help="with --gpus N: ddp = every fold data-parallel over N GPUs; folds = one fold per GPU",
    )
    parser.add_argument(
        "--weights",
        metavar="PATH",
        help="initialise the model from this checkpoint file (same as --set model.pretrained=PATH)",
    )
    parser.add_argument("--workers", type=int, help="processes for the feature cache (default: all cores)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="PATH",
        help="use the competition's files in place from PATH, without download or copy "
        "(e.g. /kaggle/input/freesound-audio-tagging; for audioset: your audio folder); "
        "same as --set competition.data_dir=PATH",
    )
    parser.add_argument("--verbose", "-v", action="store_true")
    return parser


def data_dir_overrides(args: argparse.Namespace) -> list[str]:
    """``--data-dir PATH`` as a ``competition.data_dir`` override (absolute path), after checking PATH."""
    if getattr(args, "data_dir", None) is None:
        return []
    path = Path(args.data_dir).expanduser().resolve()
    if not path.is_dir():
        raise ConfigError(f"--data-dir {args.data_dir}: no such folder")
    return [f"competition.data_dir={json.dumps(str(path))}"]


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
    fetching = actions.add_parser("fetch", help="download one or more checkpoints, with resume and checksums")
    fetching.add_argument("names", nargs="+", metavar="NAME", help="a name from `audiotag weights list`")
    fetching.add_argument(
        "--force",
        action="store_true",
        help="download again; the cached copy is replaced only if the new one verifies",
    )
    for sub in (listing, fetching):
        sub.add_argument(
            "--weights-dir", type=Path, help="cache folder (default: $AUDIOTAG_CACHE or ~/.cache/audiotag)"
        )
        sub.add_argument("--verbose", "-v", action="store_true", default=argparse.SUPPRESS)
    return parser


def run_weights(args: argparse.Namespace) -> None:
    from audiotag.models import pretrained

    console = Console(stderr=False)
    if args.action == "list":
        caption = (
            f"cache: {pretrained.cache_root(args.weights_dir)}\n* timm lists these weights as apache-2.0; "
            "licences of ImageNet-trained weights vary by model (ImageNet's own terms are non-commercial)"
        )
        table = Table(title="pretrained weights", caption=caption, box=box.SIMPLE_HEAD, pad_edge=False)
        for column in ("name", "layout", "size", "licence", "front-end", "cached"):
            table.add_column(column, no_wrap=True, justify="right" if column == "size" else "left")
        for ckpt in pretrained.KNOWN.values():
            table.add_row(
                ckpt.name,
                ckpt.layout,
                pretrained.human_size(ckpt.size),
                ckpt.license,
                ckpt.front_end,
                pretrained.cache_status(ckpt, args.weights_dir),
            )
        console.print(table)
        return
    for name in args.names:
        pretrained.lookup(name)  # every name checked before the first download starts
    for name in args.names:
        path = pretrained.fetch(name, args.weights_dir, force=args.force)
        console.print(f"{name}: {path}")


def is_ensemble_file(path: Path) -> bool:
    return "members" in read_yaml(path)


def default_config(competition: str, kind: str) -> Path:
    comp = load_competition(competition)
    name = comp.default_experiment if kind == "experiment" else comp.default_ensemble
    if not name:
        raise ConfigError(
            f"competition {competition!r} names no default_{kind}; pass --config configs/"
            f"{'experiments' if kind == 'experiment' else 'ensembles'}/..."
        )
    folder = "experiments" if kind == "experiment" else "ensembles"
    return configs_root() / folder / f"{name}.yaml"


def experiment_config(args: argparse.Namespace) -> ExperimentConfig:
    path = args.config if args.config and not is_ensemble_file(args.config) else None
    path = path or default_config(args.competition, "experiment")
    overrides = list(args.overrides) + data_dir_overrides(args)
    if args.folds:
        try:
            folds = [int(f) for f in args.folds.split(",") if f.strip()]
        except ValueError:
            raise ConfigError(f"--folds {args.folds!r}: expected comma-separated integers like 0,1") from None
        overrides.append(f"train.folds={folds}")
    if args.weights:
        weights = Path(args.weights).expanduser()
        if not weights.is_file():
            raise ConfigError(f"--weights {args.weights}: no such file")
        overrides.append(f"model.pretrained={json.dumps(str(weights.resolve()))}")
    cfg = load_experiment(path, overrides)
    if args.config is None and cfg.competition.name != args.competition:
        raise ConfigError(f"{path}: is for competition {cfg.competition.name!r}, not {args.competition!r}")
    return cfg


def ensemble_config(
    args: argparse.Namespace, exp: ExperimentConfig | None, only_stage: bool
) -> EnsembleConfig:
    if args.config and is_ensemble_file(args.config):
        path = args.config
    else:
        path = default_config(exp.competition.name if exp else args.competition, "ensemble")
    return load_ensemble(path, (args.overrides if only_stage else []) + data_dir_overrides(args))


def print_run(console: Console, result) -> None:
    table = Table(title=f"run {result.name}: CV {result.metric} per fold")
    table.add_column("fold", justify="right")
    table.add_column(result.metric, justify="right")
    for fold, score in sorted(result.fold_scores.items()):
        table.add_row(str(fold), f"{score:.4f}")
    table.add_row("mean ± std", f"{result.mean:.4f} ± {result.std:.4f}", style="bold")
    console.print(table)
    if result.test_score is not None:
        n = len(result.fold_scores)
        console.print(
            f"test {result.metric} of the {n}-fold mean (hidden demo labels): {result.test_score:.4f}"
        )


def print_ensemble(console: Console, result) -> None:
    table = Table(title=f"ensemble: CV {result.metric}")
    table.add_column("member")
    folds = sorted(result.fold_scores)
    for fold in folds:
        table.add_column(f"fold {fold}", justify="right")
    table.add_column("mean ± std", justify="right")
    for m in result.members:
        values = [m.fold_scores.get(f, float("nan")) for f in folds]
        mean = sum(values) / len(values)
        std = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5
        table.add_row(m.name, *[f"{v:.4f}" for v in values], f"{mean:.4f} ± {std:.4f}")
    table.add_row(
        "blend",
        *[f"{result.fold_scores[f]:.4f}" for f in folds],
        f"{result.mean:.4f} ± {result.std:.4f}",
        style="bold",
    )
    console.print(table)
    console.print(f"submission: {result.submission}")
    if result.test_score is not None:
        console.print(f"test {result.metric} (hidden demo labels): [bold]{result.test_score:.4f}[/bold]")


def run(args: argparse.Namespace) -> None:
    unknown = [s for s in args.stages if s not in STAGES]
    if "weights" in unknown:
        raise ConfigError(
            "weights is a command of its own: audiotag weights list | audiotag weights fetch NAME"
        )
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; stages are: {', '.join(STAGES)}")
    stages = [s for s in STAGES if s in args.stages]  # always in pipeline order
    console = Console(stderr=False)
    exp = experiment_config(args) if {"prepare", "train"} & set(stages) else None
    if args.gpus < 1:
        raise ConfigError(f"--gpus {args.gpus}: expected 1 or more")
    if args.gpus > 1 and not launched_by_torchrun():
        relaunch_with_torchrun(args.gpus, args.argv)
    ctx = setup(args.parallel)
    if not ctx.is_main:
        logging.getLogger().setLevel(logging.WARNING)  # one voice: rank 0 reports
    try:
        for stage in stages:
            started = time.time()
            log.info("stage %s: starting", stage)
            if stage == "prepare":
                from audiotag.prepare import prepare

                if ctx.is_main:
                    prepare(exp.competition, exp.features, workers=args.workers)
                ctx.barrier()
            elif stage == "train":
                from audiotag.train.runner import train_experiment

                result = train_experiment(exp, run_name=args.run_name, workers=args.workers, ctx=ctx)
                if ctx.is_main:
                    print_run(console, result)
            elif ctx.is_main:
                from audiotag.ensemble import run_ensemble

                only = stages == ["ensemble"]
                print_ensemble(console, run_ensemble(ensemble_config(args, exp, only_stage=only)))
            log.info("stage %s: done in %.1fs", stage, time.time() - started)
    finally:
        teardown()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["weights"]:
        args, action = build_weights_parser().parse_args(argv[1:]), run_weights
    else:
        args, action = build_parser().parse_args(argv), run
        args.argv = argv
    setup_logging(args.verbose)
    try:
        action(args)
    except AudiotagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    return 0
