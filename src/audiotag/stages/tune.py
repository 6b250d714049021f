"""The tune command: a hyperparameter search over an experiment, on one or two folds, with pruning.

``audiotag tune -c COMP [--config TUNE] [--set KEY=VALUE] [--trials N]`` reads a tune config
(``configs/tune/default.yaml``; ``train/tune_config.py``), composes the base experiment (the config's
``experiment``, else the competition's default; ``--set KEY=VALUE`` changes it, ``--set
tune.KEY=VALUE`` the tune config), checks the search space against it, and runs the study
(``train/tune_study.py``) in ``competition/<comp>/tune/<name>/``:

- ``study.sqlite3``: the Optuna study (every trial, its parameters, per-epoch scores and state);
  running the same command again continues it: finished trials are kept, a trial killed mid-way is
  run again from its checkpoint, and ``n_trials`` (``--trials``) counts finished trials in all;
- ``trials/trial-NNNN/``: each trial's run folder (the layout of ``runs/<name>/``: run.json,
  config.yaml, fold folders). Trials live here, not under ``runs/``, so the leaderboard, ensembles
  and report show only real runs;
- ``tune.json``: the base experiment's settings, folds and space; a rerun with others is refused;
- ``<name>_tuned.yaml``: the base experiment file with the best trial's values written in (it loads
  like any experiment: ``./run.sh train --config`` it on every fold); ours, rewritten at each call;
  copying it into ``configs/experiments/<comp>/`` is left to the user (the command is printed);
- ``history.png``, ``epochs.png``, ``importances.png``: pictures of the search (``reports/tune_plots.py``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from audiotag.competitions import get_competition
from audiotag.config.files import configs_root, find_config, is_yaml_path
from audiotag.core.atomic import atomic_write_json
from audiotag.core.errors import ConfigError, TrainingError
from audiotag.core.locks import claim_folder
from audiotag.core.log import output_console
from audiotag.models.probe import PROBE
from audiotag.runs.fold_training import FoldTraining
from audiotag.runs.folder import RUNTIME_KEYS, result_settings
from audiotag.runs.task import RunRequest
from audiotag.runs.tune_yaml import TuneSetup, write_tuned_yaml
from audiotag.train.experiment import load_experiment
from audiotag.train.hooks import EpochHook
from audiotag.train.tune_config import check_space, load_tune_config, tune_config_path

log = logging.getLogger(__name__)

TUNE_PREFIX = "tune."  # --set tune.KEY=VALUE: the tune config; any other key: the base experiment
FIXED_KEYS = ("name", "competition", *sorted(RUNTIME_KEYS))  # never searched


@dataclass(frozen=True)
class TuneOptions:
    """What ``audiotag tune`` is asked: the study's inputs as given on its command line."""

    competition: str = "demo"
    config: str | None = None  # a name under configs/tune/ or a YAML path
    experiment: str | None = None  # the base experiment (default: the tune config's, else the default)
    # --set KEY=VALUE (and --data-dir as competition.data_dir); tune.KEY=VALUE: the tune config
    overrides: list[str] = field(default_factory=list)
    trials: int | None = None
    timeout: float | None = None  # minutes
    folds: list[int] | None = None
    name: str | None = None
    workers: int | None = None


def experiment_file(name: str) -> Path:
    """``configs/experiments/<name>.yaml``, or the path itself when it ends in .yaml/.yml."""
    if is_yaml_path(name):
        return find_config(name)
    path = configs_root() / "experiments" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"experiment {name!r}: no configs/experiments/{name}.yaml (or give a YAML path)")
    return path


def setup_tune(options: TuneOptions, default_experiment: Callable[[], Path], table: str | None) -> TuneSetup:
    experiment_overrides = [o for o in options.overrides if not o.startswith(TUNE_PREFIX)]
    tune_overrides = [o.removeprefix(TUNE_PREFIX) for o in options.overrides if o.startswith(TUNE_PREFIX)]
    if options.trials is not None:
        tune_overrides.append(f"n_trials={options.trials}")
    if options.timeout is not None:
        tune_overrides.append(f"timeout_minutes={options.timeout}")
    if options.folds is not None:
        tune_overrides.append(f"folds={options.folds}")
    tune_path = tune_config_path(options.config)
    cfg = load_tune_config(tune_path, tune_overrides)
    experiment = options.experiment or cfg.experiment
    path = experiment_file(experiment) if experiment else default_experiment()
    searched = sorted({o.split("=", 1)[0].strip() for o in experiment_overrides} & set(cfg.space))
    if searched:
        raise ConfigError(
            f"--set {searched[0]}: that setting is searched (space of {tune_path}); take it out of the "
            "space, or leave the --set out"
        )
    base = load_experiment(path, experiment_overrides, competition=table)
    if table is None and base.competition.name != options.competition:
        raise ConfigError(
            f"{path}: is for competition {base.competition.name!r}, not {options.competition!r}"
        )
    if base.model.name == PROBE:
        raise ConfigError(f"{path}: tune trains networks epoch by epoch; a {PROBE} experiment has no epochs")
    comp = get_competition(base.competition)
    bad = [f for f in cfg.folds if not 0 <= f < comp.cfg.n_folds]
    if bad:
        raise ConfigError(
            f"tune folds {bad}: out of range; competition {comp.name} has 0..{comp.cfg.n_folds - 1}"
        )
    name = options.name or cfg.name or base.name
    setup = TuneSetup(cfg, name, path, experiment_overrides, table, base, comp.dir / "tune" / name)
    check_space(cfg.space, setup.load, str(tune_path), FIXED_KEYS)
    return setup


def check_or_write_tune_info(setup: TuneSetup) -> None:
    path = setup.tune_dir / "tune.json"
    now = {  # what the study's trials depend on
        "experiment": {k: v for k, v in result_settings(setup.base).items() if k != "name"},
        "folds": setup.cfg.folds,
        "space": {k: v.model_dump(mode="json") for k, v in setup.cfg.space.items()},
    }
    if path.is_file():
        saved = json.loads(path.read_text())["settings"]
        if isinstance(saved.get("experiment"), dict):  # older code recorded keys that no longer count
            saved["experiment"] = {k: v for k, v in saved["experiment"].items() if k not in RUNTIME_KEYS}
        changed = [k for k in now if saved.get(k) != now[k]]
        if "experiment" in changed:
            old, new = saved["experiment"], now["experiment"]
            keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
            changed = [f"experiment {k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:6]] + [
                c for c in changed if c != "experiment"
            ]
        if changed:
            raise ConfigError(
                f"tune {setup.name!r} in {setup.tune_dir} was started with other settings "
                f"({'; '.join(changed)}); its trials would not compare. Give this search its own "
                "--name NAME, or delete the folder to start over"
            )
        return
    setup.tune_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        path, {"name": setup.name, "experiment_file": str(setup.experiment_path), "settings": now}
    )


def run_tune(options: TuneOptions, default_experiment: Callable[[], Path], table: str | None) -> None:
    """``audiotag tune``: set up, run the study, write the tuned experiment and the plots."""
    from audiotag.reports.tune_plots import write_search_plots
    from audiotag.train.tune_study import best_trial, open_study, run_study, trial_counts

    setup = setup_tune(options, default_experiment, table)
    metric = get_competition(setup.base.competition).metric

    def train_trial(params: list[str], run_dir: Path, hook: EpochHook) -> float:
        cfg = setup.trial_config(params)
        request = RunRequest(workers=options.workers, run_dir=run_dir, on_epoch=hook)
        return FoldTraining().train(cfg, request).mean  # a probe experiment was refused: no epochs

    def refusal(owner: str) -> TrainingError:
        return TrainingError(
            f"tune {setup.name!r} in {setup.tune_dir} is being run by {owner}; wait for it (or stop it), "
            "or give this search its own --name NAME"
        )

    with claim_folder(setup.tune_dir, f"tune {setup.name}", refusal):
        check_or_write_tune_info(setup)
        study = open_study(setup.tune_dir, setup.name, setup.cfg)
        log.info(
            "tune: study %s in %s: %s on folds %s, %d trials, pruner %s",
            setup.name,
            setup.tune_dir,
            setup.experiment_path,
            setup.cfg.folds,
            setup.cfg.n_trials,
            setup.cfg.pruner.kind,
        )
        run_study(study, setup.cfg, setup.tune_dir, train_trial, setup.stride())
        best = best_trial(study)
        console = output_console()
        counts = ", ".join(f"{n} {state}" for state, n in sorted(trial_counts(study).items()))
        console.print(f"tune {setup.name}: {counts} ({setup.tune_dir / 'study.sqlite3'})", soft_wrap=True)
        for path in write_search_plots(study, setup.tune_dir, metric):
            console.print(f"plot: {path}", soft_wrap=True)
        if best is None:
            console.print("no trial completed yet: no tuned experiment written")
            return
        out = write_tuned_yaml(setup, best, metric)
        console.print(
            f"best: trial #{best.number}, CV {metric} {best.value:.4f} on folds {setup.cfg.folds}\n"
            f"tuned experiment: {out}\n"
            f"train it on every fold: ./run.sh train --config {out}\n"
            f"keep it: cp {out} {configs_root() / 'experiments' / setup.base.competition.name}/",
            soft_wrap=True,
        )
