"""Command-line arguments shared by the commands: worker counts, ``--data-dir``, ``--folds``,
``--quiet`` and the ``--set`` split between an experiment and an ensemble."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable, Collection
from pathlib import Path
from typing import TypeVar

from audiotag.core.errors import ConfigError
from audiotag.core.paths import name_problem

Options = TypeVar("Options")

CACHE_DEVICES = ("cuda", "cpu")
QUIET = "--quiet"
QUIET_HELP = (
    "no progress bars, for logs (INFO lines kept: one per step or epoch, with ETAs); any command, "
    "any position; also AUDIOTAG_QUIET=1. Bars are off anyway when stderr is not a terminal"
)


def worker_count(text: str) -> int:
    """``--workers N``: a whole number, 1 or more (leave the option out for all cores)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of processes, 1 or more, got {text!r} "
            "(leave --workers out to use all cores)"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"{value} is not allowed: the feature cache needs 1 or more processes "
            "(leave --workers out to use all cores)"
        )
    return value


def plain_name(text: str) -> str:
    """A name option that becomes a file or folder name (``--run-name``, ``--name``): core/paths.py's rule."""
    problem = name_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def positive_number(text: str) -> float:
    """An option that must be a finite number above 0 (``--window-seconds``)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An option that must be a whole number, 1 or more (``--batch-size``)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number, 1 or more, got {text!r}")
    return value


def add_set_argument(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help
    )


def add_data_dir_argument(parser: argparse.ArgumentParser, purpose: str = "") -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="PATH",
        help="use the competition's files in place from PATH, without download or copy "
        "(e.g. /kaggle/input/freesound-audio-tagging; for audioset: your audio folder); "
        f"same as --set competition.data_dir=PATH{purpose}",
    )


def data_dir_overrides(args: argparse.Namespace) -> list[str]:
    """``--data-dir PATH`` as a ``competition.data_dir`` override (absolute path), after checking PATH."""
    if getattr(args, "data_dir", None) is None:
        return []
    path = Path(args.data_dir).expanduser().resolve()
    if not path.is_dir():
        raise ConfigError(f"--data-dir {args.data_dir}: no such folder")
    return [f"competition.data_dir={json.dumps(str(path))}"]


ENSEMBLE_PREFIX = "ensemble."  # --set ensemble.KEY=VALUE: the ensemble config; any other key: the experiment


def split_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """``--set`` values for the experiment, and for the ensemble (``ensemble.`` prefix removed)."""
    experiment = [o for o in overrides if not o.startswith(ENSEMBLE_PREFIX)]
    ensemble = [o.removeprefix(ENSEMBLE_PREFIX) for o in overrides if o.startswith(ENSEMBLE_PREFIX)]
    return experiment, ensemble


def parse_folds(text: str | None) -> list[int] | None:
    """``--folds 0,1`` as ``[0, 1]``; None when not given."""
    if not text:
        return None
    try:
        return [int(f) for f in text.split(",") if f.strip()]
    except ValueError:
        raise ConfigError(f"--folds {text!r}: expected comma-separated integers like 0,1") from None


def folds_overrides(args: argparse.Namespace) -> list[str]:
    folds = parse_folds(args.folds)
    return [] if folds is None else [f"train.folds={folds}"]


def options_of(kind: type[Options], args: argparse.Namespace) -> Options:
    """The dataclass ``kind`` (a stage's typed options) filled from the parsed options of its names."""
    return kind(**{f.name: getattr(args, f.name) for f in dataclasses.fields(kind)})  # type: ignore[arg-type]


def is_setting(token: str) -> bool:
    """A bare ``KEY.PATH=VALUE`` word (a Hydra habit), which audiotag takes as ``--set KEY.PATH=VALUE``."""
    key, sep, _ = token.partition("=")
    return bool(sep) and all(part.isidentifier() for part in key.split("."))


def setting_hint(token: str) -> str:
    return f"{token!r} is not a stage or an argument: a setting is given as --set {token}"


def value_options(parsers: list[argparse.ArgumentParser]) -> set[str]:
    """The option strings that take a value in any of ``parsers`` (argparse lists its actions only in
    the private ``_actions``)."""
    return {o for p in parsers for a in p._actions if a.nargs != 0 for o in a.option_strings}


def split_command(
    argv: list[str], commands: Collection[str], parsers: Callable[[], list[argparse.ArgumentParser]]
) -> tuple[str | None, list[str]]:
    """The command of ``commands`` that ``argv`` names, and its arguments without it: the first word
    that is neither an option nor an option's value (as ``parsers`` define them), so that options may
    come before the command as after it (``audiotag -c demo leaderboard --no-lb``). (None, argv) when
    that word is another (a stage: the pipeline)."""
    taking: set[str] | None = None
    skip = False
    for i, token in enumerate(argv):
        if token == "--":
            break
        if skip:
            skip = False
        elif token.startswith("-"):
            taking = value_options(parsers()) if taking is None else taking
            skip = "=" not in token and token in taking
        elif token in commands:
            return token, argv[:i] + argv[i + 1 :]
        else:
            break
    return None, argv


def parse(parser: argparse.ArgumentParser, argv: list[str], pipeline: bool) -> argparse.Namespace:
    """``argv`` parsed (the pipeline: its stages and options in any order); a bare ``KEY=VALUE`` left
    over is refused with the hint to write ``--set KEY=VALUE``."""
    known, extra = (parser.parse_known_intermixed_args if pipeline else parser.parse_known_args)(argv)
    settings = [a for a in extra if is_setting(a)]
    if settings:
        parser.error(setting_hint(settings[0]))
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return known
