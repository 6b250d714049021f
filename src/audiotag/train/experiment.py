"""An experiment: a competition, a front-end, a model of any registered family, training settings.

Composed from the YAML groups by ``load_experiment`` (``audiotag.config.schema`` has the machinery). It
lives in ``train/``, the lowest floor that needs it, above ``models`` because the ``model`` section is
validated against the config schema of the family it names, and the families live with their code
(``models/<family>.py``, collected by ``models/registry.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import Field, ValidationInfo, field_validator

from audiotag.config.base import PlainName
from audiotag.config.files import (
    AUTO_FEATURES,
    apply_overrides,
    load_group,
    read_yaml,
    resolve_groups,
    validate,
)
from audiotag.config.schema import CompetitionConfig, FeatureConfig, StrictModel, TrainConfig
from audiotag.core.errors import ConfigError
from audiotag.data.wave_augment import check_augmentations
from audiotag.models.encoder_file import read_encoder_info
from audiotag.models.hear_in import hear_features, hear_spec
from audiotag.models.probe import LinearProbeConfig
from audiotag.models.registry import families, weights_table

DEFAULT_FAMILY = "cnn"

# every family's schema, and the linear probe on frozen embeddings (models/probe.py)
ModelConfig = Annotated[
    Union[(*(f.config for f in families().values()), LinearProbeConfig)],  # a union built at run time
    Field(discriminator="name"),
]


class ExperimentConfig(StrictModel):
    name: PlainName
    competition: CompetitionConfig
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    model: ModelConfig = Field(default_factory=families()[DEFAULT_FAMILY].config)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @field_validator("train")
    @classmethod
    def _augmentations_fit(cls, train: TrainConfig, info: ValidationInfo) -> TrainConfig:
        features = info.data.get("features")
        if features is not None and (train.wave_augment or train.spec_augment_lib):
            check_augmentations(train.wave_augment, train.spec_augment_lib, features, train.crop_seconds)
        return train


def load_experiment(
    path: str | Path, overrides: list[str] | None = None, competition: str | None = None
) -> ExperimentConfig:
    """``competition``: a competition config (name or YAML path) replacing the file's (kind: table)."""
    path = Path(path)
    raw = read_yaml(path)
    raw.setdefault("name", path.stem)
    if competition is not None:
        raw["competition"] = competition
    # `features.KEY=VALUE` waits until `features: auto` is resolved (it needs the final model), so it
    # can change one setting of the checkpoint's own front-end (e.g. features.resampler=sinc)
    overrides = overrides or []
    of_features = [o for o in overrides if o.strip().startswith("features.")]
    rest = [o for o in overrides if o not in of_features]
    tree = apply_overrides(resolve_groups(raw), rest)
    tree = resolve_groups(tree)  # an override may name another group file
    if tree.get("features") == AUTO_FEATURES:
        tree["features"] = auto_features(tree.get("model"))
    tree = resolve_groups(apply_overrides(tree, of_features))
    return validate(ExperimentConfig, tree, str(path))


def auto_features(model: Any) -> dict[str, Any]:
    """``features: auto``: the front-end an encoder file written by ``pretrain`` records (a path in
    model.pretrained, or a linear probe's embedding.weights), a HEAR module's (``hear:<module>``),
    else the weights table's."""
    weights = model.get("pretrained") if isinstance(model, dict) else None
    if isinstance(model, dict) and isinstance(model.get("embedding"), dict):
        weights = model["embedding"].get("weights")
    spec = hear_spec(weights) if isinstance(weights, str) else None
    if spec is not None:  # a HEAR module: a wave cache at its sample rate
        return hear_features(spec).model_dump(mode="json")
    info = read_encoder_info(weights) if isinstance(weights, str) and weights else None
    if info is not None:
        return info.features.model_dump(mode="json")
    return load_group("features", checkpoint_features(model))


def checkpoint_features(model: Any) -> str:
    """For ``features: auto``: the front-end config the model's pretrained checkpoint was trained with."""
    known = weights_table()
    pretrained = model.get("pretrained") if isinstance(model, dict) else None
    if isinstance(model, dict) and isinstance(model.get("embedding"), dict):  # linear_probe
        pretrained = model["embedding"].get("weights")
    entry = known.get(str(pretrained)) if pretrained else None
    if entry is None or entry.features is None:
        raise ConfigError(
            f"features: auto takes the front-end of model.pretrained, but {pretrained!r} is not a checkpoint "
            f"with a known front-end; name a features config instead (configs/features/), or one of: "
            f"{', '.join(sorted(k for k, v in known.items() if v.features))}"
        )
    return entry.features
