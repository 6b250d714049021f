"""Command line: ``python -m audiotag prepare train ensemble``, ``audiotag weights list``, ...

One table, ``COMMANDS``, names every command with its one-line help, its parser, its runner and
whether it is a pipeline stage. Stages share one parser and chain (``audiotag prepare train``, always
run in table order); every other command has its own parser and runs alone. ``audiotag --help`` lists
the table, grouped.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import audiotag
from audiotag.cli.args import (
    CACHE_DEVICES,
    QUIET,
    QUIET_HELP,
    add_data_dir_argument,
    add_set_argument,
    is_setting,
    parse,
    plain_name,
    setting_hint,
    split_command,
    worker_count,
)
from audiotag.cli.commands import (
    build_leaderboard_parser,
    build_package_parser,
    build_report_parser,
    build_submit_parser,
    run_leaderboard,
    run_package,
    run_report,
    run_submit,
)
from audiotag.cli.data_commands import (
    build_embed_parser,
    build_new_competition_parser,
    build_weights_parser,
    run_embed,
    run_new_competition,
    run_weights,
)
from audiotag.cli.stage_commands import Pipeline, run_ensemble_stage, run_prepare, run_train
from audiotag.cli.training_commands import build_pretrain_parser, build_tune_parser, run_pretrain, run_tune
from audiotag.core.disk_full import disk_full_error
from audiotag.core.errors import AudiotagError, ConfigError
from audiotag.core.log import output_console, set_quiet, setup_logging

# `audiotag --help` (and any parser) imports no torch, pandas or pydantic schema: what a stage needs
# is imported when it runs (benchmarks/cli_help.py measures the start-up).
if TYPE_CHECKING:
    pass

log = logging.getLogger("audiotag")

EPILOG = """\
examples:
  audiotag prepare train ensemble                      the demo competition, end to end
  audiotag train --config configs/experiments/demo/cnn_small.yaml --folds 0,1
  audiotag train --set train.epochs=3 --run-name quick
  audiotag tune -c demo --trials 8                     Optuna search on fold 0; the best as a YAML
  audiotag ensemble --config configs/ensembles/demo.yaml
  audiotag prepare -c fsd2018 --data-dir /kaggle/input/freesound-audio-tagging   files used in place
  audiotag weights list                                pretrained checkpoints, and which are cached
  audiotag weights fetch cnn14                         download and verify one into the cache
  audiotag weights fetch timm/resnet34                 any timm arch's weights (pretrained: imagenet)
  audiotag weights verify cnn14 --audio clips/         top AudioSet labels + embedding stats: the real model?
  audiotag submit submissions/demo/demo.csv -m "cnn"   validate, submit to Kaggle, log it
  audiotag leaderboard --plots --html lb.html          every run and submission by CV (and pictures)
  audiotag report -c demo -o report.html               all results in one HTML page (opens from a file)
  audiotag package -c fsd2018 kaggle_bundle/           code + weights + inference.py for Kaggle

--config names an experiment (prepare, train) or an ensemble (ensemble), told apart by the file.
Without it, the competition's default experiment and ensemble are used. --set KEY=VALUE changes the
experiment; --set ensemble.KEY=VALUE changes the ensemble, whatever the stages given.
"""


# The headings of ``audiotag --help``, in order; a command's ``group`` names one (stages: "pipeline").
GROUPS = {
    "pipeline": "pipeline stages (chain them, e.g. audiotag prepare train ensemble):",
    "search": "hyperparameter search (its own --config: audiotag tune [--help]):",
    "data": "data and weights (one at a time: audiotag COMMAND [--help]):",
    "results": "results and submission (one at a time: audiotag COMMAND [--help]):",
    "other": "other commands (one at a time: audiotag COMMAND [--help]):",
}


def command_list() -> str:
    """The commands of ``COMMANDS`` with their one line each, under their group's heading."""
    width = max(map(len, COMMANDS)) + 2
    lines = []
    for group, title in GROUPS.items():
        members = [f"  {name:<{width}}{c.help}" for name, c in COMMANDS.items() if c.section == group]
        if members:
            lines += [title, *members, ""]
    return "\n".join(lines).rstrip()


def build_parser() -> argparse.ArgumentParser:
    """The pipeline's parser: one or more stages and their shared options (also ``audiotag --help``)."""
    parser = argparse.ArgumentParser(
        prog="audiotag",
        description="Audio-tagging competition pipeline: prepare data, train folds, ensemble and submit."
        f"\n\n{command_list()}",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    stages = ", ".join(stage_names())
    parser.add_argument("stages", nargs="+", metavar="STAGE", help=f"one or more of: {stages}")
    parser.add_argument(
        "--competition",
        "-c",
        help="competition name, or the path of a competition YAML (kind: table or folders) (default: "
        "--config's, else demo); with --config naming another competition, -c wins and the log says so",
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="experiment or ensemble YAML file: a path from the current folder, or from a checkout's root "
        "(configs/experiments/...: the installed configs tree when not found here)",
    )
    add_set_argument(
        parser,
        "override an experiment value, e.g. --set train.epochs=3, or an ensemble value with the "
        "ensemble. prefix, e.g. --set ensemble.method=geometric (repeatable)",
    )
    parser.add_argument("--folds", help="comma-separated folds to train, e.g. 0,1")
    parser.add_argument(
        "--run-name", type=plain_name, help="name of the run folder (default: the experiment's name)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: every default member on folds 0 and 1 (or --folds), 1 epoch, at most 200 "
        "training clips (train.max_clips), blended by ensemble into a submission; runs and ensemble are "
        "named <name>_quick, apart from the full ones (README: its time on 2 cores)",
    )
    parser.add_argument(
        "--gpus",
        type=int,
        default=1,
        metavar="N",
        help="train with N processes launched by torchrun (one GPU each; CPU processes without CUDA)",
    )
    parser.add_argument(
        "--parallel",
        default="ddp",
        metavar="MODE",
        help="with --gpus N: ddp = every fold data-parallel over N GPUs; folds = one fold per GPU",
    )
    add_node_arguments(parser)
    parser.add_argument(
        "--weights",
        metavar="PATH",
        help="initialise the model from this checkpoint file (same as --set model.pretrained=PATH)",
    )
    parser.add_argument(
        "--workers",
        type=worker_count,
        metavar="N",
        help="processes for the feature cache, 1 or more (default: all cores)",
    )
    parser.add_argument(
        "--cache-device",
        choices=CACHE_DEVICES,
        help="prepare (only): build the feature cache with --workers threads decoding in this process "
        "and the log-mel computed on this device (same cache), instead of worker processes; measured "
        "on an H100 machine: faster per core, slower on 16 cores (benchmarks/RESULTS.md). A decoder "
        "that crashes then stops the build (rerun to resume from where it stopped). With --set "
        "features.resampler=sinc the device resamples too, so the threads only decode (a cache of its own)",
    )
    add_data_dir_argument(parser)
    parser.add_argument("--verbose", "-v", action="store_true")
    parser.add_argument(QUIET, action="store_true", help=QUIET_HELP)
    parser.add_argument(VERSION, action="version", version=version_line(), help="print the version and exit")
    return parser


VERSION = "--version"  # global, like --quiet: any command, any position


def add_node_arguments(parser: argparse.ArgumentParser) -> None:
    """Training on several machines: torchrun's c10d rendezvous (README: "Several machines")."""
    group = parser.add_argument_group(
        "several machines (train; the same command on each, the workspace on storage they share)"
    )
    group.add_argument(
        "--nnodes", type=int, metavar="N", help="machines taking part, each running --gpus processes"
    )
    group.add_argument(
        "--node-rank",
        type=int,
        metavar="R",
        help="this machine's number, 0 to N-1; 0 runs at --rdzv-endpoint",
    )
    group.add_argument(
        "--rdzv-endpoint",
        metavar="HOST:PORT",
        help="machine 0's address and a free port, reachable from every machine (e.g. node0:29500)",
    )
    group.add_argument(
        "--rdzv-timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="how long a machine waits for the others to join (default: 600)",
    )
    group.add_argument(
        "--max-restarts",
        type=int,
        default=0,
        metavar="K",
        help="restart every process up to K times when one fails or a machine drops out and comes back; "
        "each fold resumes from its last checkpoint (default: 0)",
    )


def version_line() -> str:
    where = Path(audiotag.__file__).parent
    return f"audiotag {audiotag.__version__} ({where}, Python {sys.version.split()[0]})"


@dataclass(frozen=True)
class Command:
    """One command: a pipeline stage (``run`` takes the ``Pipeline``; the parser is the shared
    ``build_parser``) or a command of its own (``run`` takes its parsed arguments)."""

    help: str
    parser: Callable[[], argparse.ArgumentParser]
    run: Callable[[Any], None]
    stage: bool = False
    needs_experiment: bool = False  # a stage that reads the experiment config
    group: str | None = None  # a key of GROUPS; None: "pipeline" for a stage, else "other"

    @property
    def section(self) -> str:
        """The ``audiotag --help`` group this command is listed under."""
        if self.stage:
            return "pipeline"
        return self.group if self.group in GROUPS else "other"


COMMANDS: dict[str, Command] = {
    "prepare": Command(
        "download or synthesise the data; clip table, folds and the feature cache",
        build_parser,
        run_prepare,
        stage=True,
        needs_experiment=True,
    ),
    "train": Command(
        "train the experiment's folds (a killed run resumes); CV per fold",
        build_parser,
        run_train,
        stage=True,
        needs_experiment=True,
    ),
    "ensemble": Command(
        "blend runs on their out-of-fold predictions; write the submission",
        build_parser,
        run_ensemble_stage,
        stage=True,
    ),
    "tune": Command(
        "hyperparameter search (Optuna, pruned per epoch) on a fold or two; the best trial as a YAML",
        build_tune_parser,
        run_tune,
        group="search",
    ),
    "weights": Command(
        "pretrained checkpoints: list, fetch (download + verify) or verify on audio",
        build_weights_parser,
        run_weights,
        group="data",
    ),
    "embed": Command(
        "clip embeddings of a frozen pretrained model, fusing its layers (cached; linear_probe uses them)",
        build_embed_parser,
        run_embed,
        group="data",
    ),
    "pretrain": Command(
        "self-supervised pretraining of an encoder on unlabeled audio (BYOL-A; a killed run resumes)",
        build_pretrain_parser,
        run_pretrain,
        group="data",
    ),
    "new-competition": Command(
        "guess a competition YAML from a data folder (CSV of files and labels, or class folders)",
        build_new_competition_parser,
        run_new_competition,
        group="data",
    ),
    "submit": Command(
        "validate a submission CSV, submit it to Kaggle and log it",
        build_submit_parser,
        run_submit,
        group="results",
    ),
    "leaderboard": Command(
        "every run, blend and submission by CV (LB from Kaggle; --plots, --csv, --html)",
        build_leaderboard_parser,
        run_leaderboard,
        group="results",
    ),
    "report": Command(
        "one self-contained HTML page: leaderboard, curves, per-class AP, confusion, clips",
        build_report_parser,
        run_report,
        group="results",
    ),
    "package": Command(
        "a Kaggle offline inference bundle: code, weights and inference.py",
        build_package_parser,
        run_package,
        group="results",
    ),
}


def stage_names() -> list[str]:
    return [name for name, command in COMMANDS.items() if command.stage]


def run(args: argparse.Namespace) -> None:
    """The pipeline: the named stages, in table order, sharing the experiment and the process group."""
    unknown = [s for s in args.stages if s not in COMMANDS or not COMMANDS[s].stage]
    commands = [s for s in unknown if s in COMMANDS]
    if commands:
        raise ConfigError(
            f"{commands[0]} is a command of its own: run `audiotag {commands[0]} ...` alone "
            f"(audiotag {commands[0]} --help)"
        )
    settings = [s for s in unknown if is_setting(s)]
    if settings:
        raise ConfigError(setting_hint(settings[0]))
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; stages are: {', '.join(stage_names())}")
    stages = [s for s in stage_names() if s in args.stages]  # always in pipeline order
    if getattr(args, "cache_device", None) and "prepare" not in stages:
        raise ConfigError(
            f"--cache-device applies to the prepare stage, which `{' '.join(stages)}` does not run: "
            f"run `./run.sh prepare {' '.join(stages)} --cache-device {args.cache_device}`"
        )
    from audiotag.cli.configs import experiment_config, extra_experiment_configs
    from audiotag.config.files import find_config
    from audiotag.train.distributed import check_parallel_mode, setup, teardown
    from audiotag.train.launch import check_nodes, launch

    check_parallel_mode(args.parallel)
    nodes = check_nodes(args.nnodes, args.node_rank, args.rdzv_endpoint, args.max_restarts, args.rdzv_timeout)
    if args.config is not None:
        args.config = find_config(args.config)
    console = output_console()
    needs_experiment = any(COMMANDS[s].needs_experiment for s in stages)
    exp = experiment_config(args) if needs_experiment else None
    extras = extra_experiment_configs(args) if needs_experiment else []
    launch(args.gpus, args.argv, nodes)
    ctx = setup(args.parallel)
    pipe = Pipeline(args, exp, ctx, console, main_exp=exp)
    try:
        for stage in stages:
            started = time.time()
            log.info("stage %s: starting", stage)
            for current in [exp, *extras] if COMMANDS[stage].needs_experiment else [exp]:
                if extras and current is not None and COMMANDS[stage].needs_experiment:
                    log.info("stage %s: experiment %s", stage, current.name)
                pipe.exp = current
                COMMANDS[stage].run(pipe)
            pipe.exp = exp
            log.info("stage %s: done in %.1fs", stage, time.time() - started)
    finally:
        teardown()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    given = [a for a in argv if a != QUIET]  # --quiet is global: any command, any position
    if VERSION in given:
        print(version_line())
        return 0
    own = {n for n, c in COMMANDS.items() if not c.stage}
    name, rest = split_command(given, own, lambda: [build_parser(), *(COMMANDS[n].parser() for n in own)])
    if name is not None:
        command = COMMANDS[name]
        args, action = parse(command.parser(), rest, pipeline=False), command.run
    else:  # stages, with options before, between or after them: the pipeline
        args, action = parse(build_parser(), given, pipeline=True), run
    args.argv = argv
    if QUIET in argv:
        set_quiet()
    setup_logging(args.verbose)
    try:
        action(args)
    except AudiotagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:
        from pydantic import ValidationError

        from audiotag.config.files import format_validation_error

        if isinstance(exc, ValidationError):  # settings a command validated itself: one line per setting
            print(f"error: {format_validation_error(exc, None, f'{exc.title} settings')}", file=sys.stderr)
            return 2
        error = disk_full_error(exc)  # a full disk reads as one, whichever write (or cleanup) hit it
        if error is None:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
