"""The parsers and runners of the training commands of their own: ``pretrain`` and ``tune``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from audiotag.cli.args import (
    add_set_argument,
    data_dir_overrides,
    options_of,
    parse_folds,
    plain_name,
    worker_count,
)
from audiotag.config.files import available, find_config
from audiotag.core.log import output_console


def build_pretrain_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audiotag pretrain",
        description="Self-supervised pretraining of an encoder on unlabeled audio (BYOL-A, COLA): a "
        "competition's cached clips and/or audio folders. Writes <competition>/pretrain/<name>/encoder.pt, "
        "which model: {name: byola, dim: D, pretrained: PATH} loads (the encoder's own model settings). "
        "A killed run resumes.",
    )
    parser.add_argument(
        "--method",
        choices=available("pretrain"),
        default="byola",
        help="the recipe: a file of configs/pretrain/ (default: byola)",
    )
    parser.add_argument("--competition", "-c", help="competition name or YAML path whose clips to use")
    parser.add_argument("--clips", help="the competition's clips: train, test or train,test (default: train)")
    parser.add_argument("--audio", nargs="+", type=Path, metavar="DIR", help="audio folders to use as well")
    parser.add_argument("--config", type=Path, help="pretrain YAML (default: configs/pretrain/<method>.yaml)")
    add_set_argument(
        parser,
        "override a value, e.g. --set epochs=10 --set model.dim=512 (repeatable)",
    )
    parser.add_argument(
        "--name", type=plain_name, help="output folder name (default: <method><dim>, e.g. byola2048)"
    )
    parser.add_argument("--out", type=Path, metavar="DIR", help="output folder (default: see above)")
    parser.add_argument(
        "--gpus", type=int, default=1, metavar="N", help="N data-parallel processes (torchrun)"
    )
    parser.add_argument(
        "--workers", type=worker_count, metavar="N", help="processes for the feature cache (default: all)"
    )
    parser.add_argument("--data-dir", type=Path, metavar="PATH", help="the competition's files in place")
    parser.add_argument("--verbose", "-v", action="store_true")
    return parser


def command_overrides(args: argparse.Namespace) -> list[str]:
    overrides = list(args.overrides)
    if args.clips:
        clips = [c.strip() for c in args.clips.split(",") if c.strip()]
        overrides.append(f"clips={json.dumps(clips)}")
    if args.audio:
        overrides.append(f"audio={json.dumps([str(Path(a).expanduser().resolve()) for a in args.audio])}")
    if args.name:
        overrides.append(f"name={json.dumps(args.name)}")
    return overrides + data_dir_overrides(args)


def run_pretrain(args: argparse.Namespace) -> None:
    from audiotag.runs.task import RunRequest
    from audiotag.stages.pretrain import Pretraining, load_pretrain_config
    from audiotag.train.distributed import setup, teardown
    from audiotag.train.launch import launch

    path = find_config(args.config or args.method, "pretrain")
    cfg = load_pretrain_config(path, command_overrides(args), competition=args.competition)
    launch(args.gpus, args.argv)
    ctx = setup("ddp")
    try:
        result = Pretraining().train(cfg, RunRequest(workers=args.workers, ctx=ctx, run_dir=args.out))
    finally:
        teardown()
    if ctx.is_main:
        last = result.history[-1] if result.history else {}
        model = ", ".join(f"{k}: {v}" for k, v in cfg.encoder_record().items())
        output_console().print(
            f"pretrain {cfg.name}: {len(result.history)} epochs, loss {last.get('loss', float('nan')):.4f}, "
            f"{last.get('clips_per_second', float('nan'))} clips/s in the last epoch\n"
            f"encoder: {result.encoder_path}\nuse it: model: {{{model}, pretrained: {result.encoder_path}}} "
            f"with features: {cfg.features.name} (or features: auto)",
            soft_wrap=True,
        )


def build_tune_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audiotag tune",
        description="Hyperparameter search (Optuna, TPE + pruning after every epoch) over an experiment "
        "on one or two folds. The study lives in competition/<comp>/tune/<name>/ (SQLite): the same "
        "command continues it. Writes the best trial as an experiment YAML, and plots of the search.",
    )
    parser.add_argument(
        "--competition", "-c", default="demo", help="competition name or YAML path (default: demo)"
    )
    parser.add_argument(
        "--config", help="tune config: a name under configs/tune/ or a YAML path (default: default)"
    )
    parser.add_argument(
        "--experiment",
        help="base experiment: a name under configs/experiments/ (demo/cnn_small) or a YAML path "
        "(default: the tune config's, else the competition's default)",
    )
    add_set_argument(
        parser,
        "change the base experiment, e.g. --set train.epochs=8, or the tune config with the tune. "
        "prefix, e.g. --set tune.pruner.kind=successive_halving (repeatable)",
    )
    parser.add_argument("--trials", type=int, metavar="N", help="finished trials to reach (tune.n_trials)")
    parser.add_argument("--timeout", type=float, metavar="MINUTES", help="start no trial after this long")
    parser.add_argument("--folds", help="comma-separated folds each trial trains (tune.folds; default 0)")
    parser.add_argument(
        "--name", type=plain_name, help="the study's name and folder (default: the base experiment's name)"
    )
    parser.add_argument(
        "--workers",
        type=worker_count,
        metavar="N",
        help="processes for the feature cache (default: all cores)",
    )
    parser.add_argument("--data-dir", type=Path, metavar="PATH", help="the competition's files in place")
    parser.add_argument("--verbose", "-v", action="store_true")
    return parser


def run_tune(args: argparse.Namespace) -> None:
    from audiotag.cli.configs import default_config, table_competition
    from audiotag.stages.tune import TuneOptions
    from audiotag.stages.tune import run_tune as tune

    competition = args.competition
    args.overrides = args.overrides + data_dir_overrides(args)
    args.folds = parse_folds(args.folds)
    options = options_of(TuneOptions, args)
    tune(options, lambda: default_config(competition, "experiment"), table_competition(competition))
