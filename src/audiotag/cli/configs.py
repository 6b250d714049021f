"""The experiment and ensemble configs a command line names: ``--config``, or the competition's
defaults (``default_experiment``, ``default_ensemble``, ``default_extra_experiments``; generic ones
for ``kind: table``/``folders`` competitions), with the command line's settings applied."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from audiotag.cli.args import ENSEMBLE_PREFIX, data_dir_overrides, folds_overrides, split_overrides
from audiotag.config.files import configs_root, is_yaml_path, read_yaml
from audiotag.config.schema import EnsembleConfig, load_competition, load_ensemble
from audiotag.core.errors import ConfigError
from audiotag.train.experiment import ExperimentConfig, load_experiment


def is_ensemble_file(path: Path) -> bool:
    return "members" in read_yaml(path)


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
    return str(Path(competition).expanduser().resolve()) if is_yaml_path(competition) else competition


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
    if args.config is not None or not args.competition or getattr(args, "run_name", None):
        return []
    shared = [o for o in split_overrides(args.overrides)[0] if o.startswith("competition.")]
    comp = load_competition(args.competition, [o.removeprefix("competition.") for o in shared])
    names = comp.default_extra_experiments
    given = any(o.split("=", 1)[0].strip() == "competition.default_extra_experiments" for o in shared)
    if not names and not given and comp.default_experiment is None and comp.kind is not None:
        names = TABLE_EXTRA_EXPERIMENTS  # `--set competition.default_extra_experiments=[]`: none
    shared += data_dir_overrides(args) + folds_overrides(args)
    table = table_competition(args.competition)
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
    path = args.config if args.config and not is_ensemble_file(args.config) else None
    path = path or default_config(args.competition, "experiment")
    overrides = split_overrides(args.overrides)[0] + data_dir_overrides(args) + folds_overrides(args)
    if args.weights:
        weights = Path(args.weights).expanduser()
        if not weights.is_file():
            raise ConfigError(f"--weights {args.weights}: no such file")
        overrides.append(f"model.pretrained={json.dumps(str(weights.resolve()))}")
    table = table_competition(args.competition) if args.config is None else None
    cfg = load_experiment(path, overrides, competition=table)
    if args.config is None and table is None and cfg.competition.name != args.competition:
        raise ConfigError(f"{path}: is for competition {cfg.competition.name!r}, not {args.competition!r}")
    return cfg


def ensemble_config(args: argparse.Namespace, exp: ExperimentConfig | None) -> EnsembleConfig:
    experiment_overrides, overrides = split_overrides(args.overrides)
    if exp is None and experiment_overrides:  # `ensemble` alone reads no experiment
        raise ConfigError(
            f"--set {experiment_overrides[0]}: the ensemble stage alone reads no experiment; an ensemble "
            f"setting is written --set {ENSEMBLE_PREFIX}{experiment_overrides[0]}"
        )
    table = None
    if args.config and is_ensemble_file(args.config):
        path = args.config
    else:
        table = table_competition(args.competition)
        if table is None and exp is not None and exp.competition.kind is not None:
            raise ConfigError(
                f"competition {exp.competition.name!r} (kind: {exp.competition.kind}): the ensemble stage "
                "needs -c with its YAML (name or path), or an ensemble --config"
            )
        name = args.competition if table or exp is None else exp.competition.name
        path = default_config(name, "ensemble")
    return load_ensemble(path, overrides + data_dir_overrides(args), competition=table)
