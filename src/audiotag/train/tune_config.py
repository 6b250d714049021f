"""The ``tune`` config: a hyperparameter search over an experiment (``configs/tune/<name>.yaml``).

A trial is the base experiment plus one ``--set``-style override per searched setting, so the
search space is a mapping of dotted experiment keys (``train.lr``, ``model.dropout``) to
distributions. :func:`check_space` validates that mapping against the experiment schema before any
trial starts: every key must be a setting of the base experiment (an unknown key is an error naming
it, with the keys allowed there), and every bound or choice must be a value the setting accepts.
It sits in the train layer beside the study logic (``train/tune_study.py``); the search library is
imported there, not here.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, model_validator

from audiotag.config.base import PlainName
from audiotag.config.files import apply_overrides, configs_root, find_config, read_yaml, validate
from audiotag.config.schema import StrictModel
from audiotag.core.errors import ConfigError
from audiotag.train.experiment import ExperimentConfig

DEFAULT_TUNE = "default"


class FloatRange(StrictModel):
    type: Literal["float"]
    low: float
    high: float
    log: bool = Field(False, description="sample the logarithm uniformly (learning rates); needs low > 0")
    step: float | None = Field(None, gt=0, description="a grid low, low + step, ...; null = continuous")

    @model_validator(mode="after")
    def _check(self) -> FloatRange:
        if self.low > self.high:
            raise ValueError(f"low {self.low} is above high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"log: true needs low > 0 (got {self.low})")
        if self.log and self.step is not None:
            raise ValueError("log: true and a step cannot go together; drop one")
        return self

    def values_to_check(self) -> list[Any]:
        return [self.low, self.high]


class IntRange(StrictModel):
    type: Literal["int"]
    low: int
    high: int
    log: bool = Field(False, description="sample the logarithm uniformly; needs low >= 1")
    step: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _check(self) -> IntRange:
        if self.low > self.high:
            raise ValueError(f"low {self.low} is above high {self.high}")
        if self.log and (self.low < 1 or self.step != 1):
            raise ValueError("log: true needs low >= 1 and step 1")
        return self

    def values_to_check(self) -> list[Any]:
        return [self.low, self.high]


Choice = bool | int | float | str | None


class Categorical(StrictModel):
    type: Literal["categorical"]
    choices: list[Choice] = Field(min_length=1, description="plain values (numbers, strings, booleans, null)")

    def values_to_check(self) -> list[Any]:
        return list(self.choices)


Distribution = Annotated[FloatRange | IntRange | Categorical, Field(discriminator="type")]


class PrunerConfig(StrictModel):
    """Stops a trial whose validation score lags (reported after every epoch)."""

    kind: Literal["median", "successive_halving", "none"] = Field(
        "median",
        description="median: stop a trial below the median of earlier trials at the same epoch; "
        "successive_halving: ASHA rungs (keep the top 1/reduction_factor at each rung); none",
    )
    startup_trials: int = Field(2, ge=0, description="median: trials that run to the end before any pruning")
    warmup_epochs: int = Field(1, ge=0, description="median: epochs of each trial never pruned")
    min_epochs: int | Literal["auto"] = Field(
        1, description="successive_halving: epochs before the first rung (min_resource)"
    )
    reduction_factor: int = Field(3, ge=2, description="successive_halving: keep 1 of this many per rung")

    @model_validator(mode="after")
    def _min_epochs(self) -> PrunerConfig:
        if isinstance(self.min_epochs, int) and self.min_epochs < 1:
            raise ValueError(f"min_epochs: 1 or more, or auto (got {self.min_epochs})")
        return self


class SamplerConfig(StrictModel):
    kind: Literal["tpe", "random"] = Field("tpe", description="tpe: Tree-structured Parzen Estimator")
    seed: int = Field(0, description="the sampler's seed (the same study draws the same trials)")
    startup_trials: int = Field(5, ge=1, description="tpe: random trials before the model is used")


class TuneConfig(StrictModel):
    name: PlainName | None = Field(
        None, description="the study's folder, competition/<comp>/tune/<name>/; null: the experiment's name"
    )
    experiment: str | None = Field(
        None,
        description="the base experiment: a name under configs/experiments/ (demo/cnn_small) or a YAML "
        "path; null: the competition's default experiment",
    )
    folds: list[int] = Field(default_factory=lambda: [0], min_length=1, description="folds each trial trains")
    n_trials: int = Field(20, ge=1, description="finished (complete or pruned) trials the study should reach")
    timeout_minutes: float | None = Field(
        None, gt=0, description="stop starting trials after this long (this call); null = no limit"
    )
    pruner: PrunerConfig = Field(default_factory=PrunerConfig)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    max_retries: int = Field(
        2, ge=0, description="times a trial killed mid-way is run again (from its last checkpoint)"
    )
    baseline_first: bool = Field(
        True,
        description="the study's first trial runs the base experiment unchanged (train.auto's values "
        "included), so the tuned experiment is never worse than the base on the tuned folds",
    )
    keep_weights: bool = Field(
        False, description="keep finished trials' .pt files (false: only their scores and predictions)"
    )
    space: dict[str, Distribution] = Field(
        min_length=1, description="dotted experiment key -> {type: float|int|categorical, ...}"
    )


def tune_config_path(name_or_path: str | Path | None) -> Path:
    """``configs/tune/<name>.yaml``, or the path itself when it ends in .yaml/.yml."""
    text = str(name_or_path or DEFAULT_TUNE)
    if text.endswith((".yaml", ".yml")):
        return find_config(text)
    path = configs_root() / "tune" / f"{text}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in (configs_root() / "tune").glob("*.yaml"))
        raise ConfigError(f"--config {text}: no configs/tune/{text}.yaml; available: {', '.join(available)}")
    return path


def load_tune_config(path: Path, overrides: list[str] | None = None) -> TuneConfig:
    """A tune YAML with ``--set tune.KEY=VALUE`` overrides (prefix removed) applied, validated."""
    tree = apply_overrides(read_yaml(path), overrides or [])
    return validate(TuneConfig, tree, str(path))


def param_override(key: str, value: Any) -> str:
    """``KEY=VALUE`` text that ``--set`` parses back to exactly ``value`` (1e-05 is written 1.0e-05,
    which YAML reads as a float, not a string)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return f"{key}={text.removesuffix('...').strip()}"


def setting_at(tree: dict[str, Any], key: str) -> tuple[bool, Any]:
    """(found, value) of the dotted ``key`` in a nested dict."""
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def check_space(
    space: dict[str, Distribution],
    load: Callable[[list[str]], ExperimentConfig],
    source: str,
    fixed: Collection[str] = (),
) -> None:
    """ConfigError naming the first bad key of ``space``: a key under ``fixed`` (settings a trial may
    not change, e.g. train.folds), a key that is no setting of the experiment ``load([])`` builds, a
    section, or a bound or choice the setting refuses. ``load(overrides)`` composes the experiment
    with ``--set`` overrides, exactly as a trial's config is composed."""
    base = load([]).model_dump(mode="json")
    for key, dist in space.items():
        where = f"{source}: space key {key!r}"
        blocked = next((f for f in fixed if key == f or key.startswith(f + ".")), None)
        if blocked is not None:
            raise ConfigError(
                f"{where}: {blocked} is not searched (it is fixed by tune or the run); remove it"
            )
        found, value = setting_at(base, key)
        if not found:
            parent = key.rpartition(".")[0]
            _, section = setting_at(base, parent) if parent else (True, base)
            allowed = ", ".join(sorted(section)) if isinstance(section, dict) else "(none)"
            shown = f"{parent}." if parent else ""
            raise ConfigError(
                f"{where}: no such setting in the experiment; settings under {shown or 'the top level'}: "
                f"{allowed}"
            )
        if isinstance(value, dict):
            inner = ", ".join(f"{key}.{k}" for k in sorted(value))
            raise ConfigError(f"{where}: is a section, not a setting; search one of: {inner}")
        if isinstance(dist, FloatRange) and isinstance(value, int) and not isinstance(value, bool):
            raise ConfigError(f"{where}: a whole-number setting (now {value}); use type: int")
        for candidate in dist.values_to_check():
            try:
                load([param_override(key, candidate)])
            except ConfigError as exc:
                raise ConfigError(f"{where}: the value {candidate!r} is refused:\n{exc}") from None
