"""A study's setup (``TuneSetup``) and its tuned experiment file: the base experiment YAML with the
best trial's values written in.

The base file keeps its shape (group names such as ``model: cnn_small`` stay names; a tuned key under
one becomes ``model: {base: cnn_small, dropout: 0.3}``), the ``--set`` changes the search ran with
are written in too, and a header says where the values came from. After writing, the file is loaded
with the experiment loader and compared with the best trial's own config: a difference is logged.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from audiotag.config.files import GROUPS, parse_override, read_yaml
from audiotag.core.atomic import atomic_write_text
from audiotag.core.errors import ConfigError
from audiotag.runs.folder import result_settings
from audiotag.train.experiment import ExperimentConfig, load_experiment
from audiotag.train.tune_config import (
    Categorical,
    FloatRange,
    IntRange,
    TuneConfig,
    param_override,
    setting_at,
)

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

log = logging.getLogger(__name__)


@dataclass
class TuneSetup:
    """Everything a study needs: its config, the base experiment and where the study lives."""

    cfg: TuneConfig
    name: str
    experiment_path: Path
    base_overrides: list[str]  # --set for the experiment (and --data-dir)
    table: str | None  # a kind: table/folders competition swapped into the experiment
    base: ExperimentConfig
    tune_dir: Path

    def load(self, overrides: list[str]) -> ExperimentConfig:
        """The base experiment with ``overrides`` on top: how every trial's config is built."""
        return load_experiment(self.experiment_path, self.base_overrides + overrides, competition=self.table)

    def trial_config(self, params: list[str]) -> ExperimentConfig:
        return self.load([f"train.folds={json.dumps(self.cfg.folds)}", *params])

    def stride(self) -> int:
        """Epochs between the steps of two folds in the pruner's numbering: the most any trial runs."""
        epochs = [self.base.train.epochs]
        dist = self.cfg.space.get("train.epochs")
        if isinstance(dist, IntRange | FloatRange):
            epochs.append(int(dist.high))
        elif isinstance(dist, Categorical):
            epochs += [int(c) for c in dist.choices if isinstance(c, int | float)]
        return max(epochs)


def with_setting(tree: dict[str, Any], path: list[str], value: Any, source: str) -> None:
    """Write ``value`` at ``path`` of a raw experiment tree; a group named by a string there
    (``model: cnn_small``) becomes ``{base: cnn_small}`` first, as the loader reads it."""
    node = tree
    for depth, part in enumerate(path[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif isinstance(child, str) and depth == 0 and part in GROUPS:
            child = node[part] = {"base": child}
        elif not isinstance(child, dict):
            raise ConfigError(f"{source}: {'.'.join(path[: depth + 1])} is a value, not a section")
        node = child
    node[path[-1]] = value


def tuned_tree(setup: TuneSetup, params: dict[str, Any], name: str) -> dict[str, Any]:
    raw = {"name": name, **read_yaml(setup.experiment_path)}
    raw["name"] = name
    if setup.table is not None:
        raw["competition"] = setup.table
    source = str(setup.experiment_path)
    for text in setup.base_overrides:
        path, value = parse_override(text)
        with_setting(raw, path, value, source)
    for key, value in params.items():
        with_setting(raw, key.split("."), value, source)
    return raw


def header(setup: TuneSetup, best: FrozenTrial, metric: str, out: Path) -> str:
    base = setup.base.model_dump(mode="json")
    changes = []
    for key, value in best.params.items():
        _, before = setting_at(base, key)
        shown = f"{value:.6g}" if isinstance(value, float) else repr(value)
        changes.append(f"#   {key}: {before!r} -> {shown}")
    lines = [
        f"# Tuned by `audiotag tune` (study {setup.name}, {setup.tune_dir}): trial #{best.number},",
        f"# CV {metric} {best.value:.4f} on folds {setup.cfg.folds}. Base: {setup.experiment_path}",
        *(f"#   --set {o}" for o in setup.base_overrides),
        "# Searched values, base -> best:",
        *(changes or ["#   none: the best trial is the base experiment as it is (the baseline trial)"]),
        f"# Train it on every fold: ./run.sh train --config {out}",
    ]
    return "\n".join(lines) + "\n"


def write_tuned_yaml(setup: TuneSetup, best: FrozenTrial, metric: str) -> Path:
    """``<tune dir>/<name>_tuned.yaml`` (ours: rewritten at every call), checked by loading it."""
    out = setup.tune_dir / f"{setup.name}_tuned.yaml"
    tree = tuned_tree(setup, dict(best.params), out.stem)
    text = header(setup, best, metric, out) + yaml.safe_dump(tree, sort_keys=False, width=100)
    atomic_write_text(out, text)
    written = result_settings(load_experiment(out))
    trial = result_settings(setup.trial_config([param_override(k, v) for k, v in best.params.items()]))
    differ = sorted(k for k in set(written) | set(trial) if k != "name" and written.get(k) != trial.get(k))
    if differ:
        log.warning(
            "tune: %s differs from trial #%d's config at %s; check it before training",
            out,
            best.number,
            ", ".join(f"{k} ({written.get(k)!r} vs {trial.get(k)!r})" for k in differ[:6]),
        )
    return out
