"""The experiment and ensemble configs a command line names: ``--config``, or the competition's
defaults (``default_experiment``, ``default_ensemble``, ``default_extra_experiments``; generic ones
for ``kind: table``/``folders`` competitions), with the command line's settings applied."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from audiotag.cli.args import ENSEMBLE_PREFIX, data_dir_overrides, folds_overrides, split_overrides
from audiotag.config.files import configs_root, find_config, is_yaml_path, read_yaml
from audiotag.config.schema import EnsembleConfig, load_competition, load_ensemble
from audiotag.core.errors import ConfigError
from audiotag.train.experiment import ExperimentConfig, load_experiment

log = logging.getLogger(__name__)

DEFAULT_COMPETITION = "demo"  # neither -c nor --config names one

# --quick: a smoke run of every default member, through the ensemble to a submission (README: what it
# costs on the demo). Its settings apply to every experiment (extras included) before --set, so a
# --set of the same key wins; its runs and ensemble are named <name>_quick (``quick_name``), apart
# from the full ones, which it neither blocks nor changes.
QUICK_SETTINGS = ["train.epochs=1", "train.max_clips=200"]
QUICK_FOLDS = "train.folds=[0,1]"  # unless --folds names others
QUICK_SUFFIX = "_quick"


def quick_overrides(args: argparse.Namespace) -> list[str]:
    """``--quick``'s settings (none without it)."""
    if not getattr(args, "quick", False):
        return []
    return QUICK_SETTINGS + ([] if getattr(args, "folds", None) else [QUICK_FOLDS])


def quick_name(args: argparse.Namespace, name: str) -> str:
    """A run's or an ensemble's name: with ``--quick``, ``<name>_quick``."""
    quick = getattr(args, "quick", False) and not name.endswith(QUICK_SUFFIX)
    return f"{name}{QUICK_SUFFIX}" if quick else name


def is_ensemble_file(path: Path) -> bool:
    return "members" in read_yaml(path)


def competition_arg(args: argparse.Namespace) -> str:
    """``-c``, else the demo."""
    return args.competition or DEFAULT_COMPETITION


def competition_value(competition: str) -> str:
    """A ``-c`` value as a config names it: a YAML path made absolute, a name as it is."""
    return str(find_config(competition).resolve()) if is_yaml_path(competition) else competition


def competition_name(value: Any) -> str | None:
    """The name of the competition a config's ``competition:`` value (a name, a YAML path or a mapping
    with ``base:``) resolves to; None for a mapping without ``base``."""
    if isinstance(value, dict):
        value = value.get("base", None) or value.get("name")
        return None if value is None else competition_name(str(value))
    return load_competition(str(value)).name


def competition_for(args: argparse.Namespace, path: Path, given: bool) -> str | None:
    """The competition that replaces the one the experiment or ensemble file ``path`` names (None:
    the file's own). The competition's own default files (``given`` False) of a ``kind: table`` or
    ``folders`` competition are generic and get ``-c`` swapped in. A file given with ``--config``
    runs on the competition it names unless ``-c`` names another: then ``-c`` wins, and the log says
    so (never a silent switch to the other competition's data or runs)."""
    if not given:
        return table_competition(competition_arg(args))
    if args.competition is None:
        return None
    own = read_yaml(path).get("competition")
    wanted = load_competition(args.competition)
    if own is not None and competition_name(own) == wanted.name:
        return None  # the same competition: the file's settings of it stay
    level = logging.INFO if wanted.kind is not None else logging.WARNING  # table files: a placeholder
    log.log(
        level,
        "-c %s replaces the competition %r that %s names: running on %s",
        args.competition,
        competition_name(own) if own is not None else None,
        path,
        wanted.name,
    )
    return competition_value(args.competition)


TABLE_DEFAULTS = {"experiment": "table/cnn_small", "ensemble": "table"}  # kind: table/folders, no defaults
# What a table/folders competition naming no defaults also trains, for the default ensemble: the linear
# probe on aisfx's frozen blocks 2 + 4 (minutes on a CPU; on the real-audio check sets the blend gained
# +0.185 nested CV over the adaptive CNN on instruments, +0.028 on spoken words: RESULTS.md).
TABLE_EXTRA_EXPERIMENTS: list[str] = ["table/probe_aisfx"]


def table_competition(competition: str | None) -> str | None:
    """The ``-c`` value (a YAML path made absolute) when it names a ``kind: table`` competition: its
    experiment and ensemble files are generic and get this competition swapped in; else None."""
    if not competition or load_competition(competition).kind is None:  # kind: table or folders
        return None
    return competition_value(competition)


def default_config(competition: str, kind: str) -> Path:
    comp = load_competition(competition)
    name = comp.default_experiment if kind == "experiment" else comp.default_ensemble
    if not name and comp.kind is not None:
        name = TABLE_DEFAULTS[kind]
    folder = "experiments" if kind == "experiment" else "ensembles"
    if not name:
        raise ConfigError(
            f"competition {competition!r} names no default_{kind}; pass --config configs/{folder}/..."
        )
    return configs_root() / folder / f"{name}.yaml"


def extra_experiment_configs(args: argparse.Namespace) -> list[ExperimentConfig]:
    """The competition's ``default_extra_experiments``: trained after the default experiment as
    members of the default ensemble. None with ``--config`` or ``--run-name`` (a run of one's own
    is one experiment) or ``--set competition.default_extra_experiments=[]``. Of the command line,
    ``--folds``, ``--data-dir`` and ``competition.*`` settings apply to them (the folds must match
    the default experiment's for the blend); ``--set`` of other keys and ``--weights`` do not."""
    if args.config is not None or getattr(args, "run_name", None):
        return []
    shared = [o for o in split_overrides(args.overrides)[0] if o.startswith("competition.")]
    comp = load_competition(competition_arg(args), [o.removeprefix("competition.") for o in shared])
    names = comp.default_extra_experiments
    given = any(o.split("=", 1)[0].strip() == "competition.default_extra_experiments" for o in shared)
    if not names and not given and comp.default_experiment is None and comp.kind is not None:
        names = TABLE_EXTRA_EXPERIMENTS  # `--set competition.default_extra_experiments=[]`: none
    shared = quick_overrides(args) + shared + data_dir_overrides(args) + folds_overrides(args)
    table = table_competition(competition_arg(args))
    configs = []
    for name in names:
        path = configs_root() / "experiments" / f"{name}.yaml"
        if not path.is_file():
            raise ConfigError(f"competition {comp.name!r}: default_extra_experiments: {path} not found")
        cfg = load_experiment(path, shared, competition=table)
        if table is None and cfg.competition.name != comp.name:
            raise ConfigError(f"{path}: is for competition {cfg.competition.name!r}, not {comp.name!r}")
        configs.append(cfg)
    return configs


def experiment_config(args: argparse.Namespace) -> ExperimentConfig:
    given = args.config is not None and not is_ensemble_file(args.config)
    path = args.config if given else default_config(competition_arg(args), "experiment")
    overrides = quick_overrides(args) + split_overrides(args.overrides)[0]
    overrides += data_dir_overrides(args) + folds_overrides(args)
    if args.weights:
        weights = Path(args.weights).expanduser()
        if not weights.is_file():
            raise ConfigError(f"--weights {args.weights}: no such file")
        overrides.append(f"model.pretrained={json.dumps(str(weights.resolve()))}")
    competition = competition_for(args, path, given)
    cfg = load_experiment(path, overrides, competition=competition)
    if not given and competition is None and cfg.competition.name != competition_arg(args):
        raise ConfigError(
            f"{path}: is for competition {cfg.competition.name!r}, not {competition_arg(args)!r}"
        )
    return cfg


def ensemble_config(args: argparse.Namespace, exp: ExperimentConfig | None) -> EnsembleConfig:
    experiment_overrides, overrides = split_overrides(args.overrides)
    if exp is None and experiment_overrides:  # `ensemble` alone reads no experiment
        raise ConfigError(
            f"--set {experiment_overrides[0]}: the ensemble stage alone reads no experiment; an ensemble "
            f"setting is written --set {ENSEMBLE_PREFIX}{experiment_overrides[0]}"
        )
    if args.config and is_ensemble_file(args.config):
        path = args.config
        competition = competition_for(args, path, given=True)
    else:
        competition = table_competition(args.competition)
        if competition is None and exp is not None and exp.competition.kind is not None:
            raise ConfigError(
                f"competition {exp.competition.name!r} (kind: {exp.competition.kind}): the ensemble stage "
                "needs -c with its YAML (name or path), or an ensemble --config"
            )
        name = competition_arg(args) if competition or exp is None else exp.competition.name
        path = default_config(name, "ensemble")
    cfg = load_ensemble(path, overrides + data_dir_overrides(args), competition=competition)
    if not getattr(args, "quick", False):
        return cfg
    weights = cfg.weights
    if isinstance(weights, dict):
        weights = {quick_name(args, k): v for k, v in weights.items()}
    members = [quick_name(args, m) for m in cfg.members]
    return cfg.model_copy(update={"name": quick_name(args, cfg.name), "members": members, "weights": weights})
