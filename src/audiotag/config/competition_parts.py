"""The parts of a competition config: the demo's generator, the rules, the audio rules, a table's
submission format and download, the metrics a table may name and its file templates."""

from __future__ import annotations

import string
from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from audiotag.config.base import StrictModel
from audiotag.scoring.metrics import METRICS


class DemoGeneratorConfig(StrictModel):
    """How the self-made demo competition is synthesised (deterministic for a given seed)."""

    seed: int = 2026
    train_per_class: int = Field(60, ge=2)
    test_per_class: int = Field(20, ge=1)
    min_duration: float = Field(0.3, gt=0)
    max_duration: float = Field(10.0, gt=0)
    verified_fraction: float = Field(0.5, ge=0, le=1)
    label_noise: float = Field(0.3, ge=0, le=1)
    sample_rate: int = 44100

    @model_validator(mode="after")
    def _durations(self) -> DemoGeneratorConfig:
        if self.min_duration > self.max_duration:
            raise ValueError("min_duration must not exceed max_duration")
        return self


class CompetitionRules(StrictModel):
    """What the competition's rules allowed; the train stage warns when an experiment breaks them."""

    pretrained_allowed: bool = Field(True, description="pretrained weights were allowed")
    external_data_allowed: bool = Field(True, description="data outside the competition's files was allowed")


class AudioRules(StrictModel):
    """How problem audio is handled when the feature cache is built (the rules of ``data/audio.py``).

    ``competition.audio_rules`` in the config; the decoder takes this object as it is. The values
    enter the cache's clip-list hash, so changing one rebuilds the feature cache (not the clip table
    or the folds). Frozen (hashable), so caches can be keyed by it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_seconds: float = Field(
        600.0, gt=0, allow_inf_nan=False, description="keep the first max_seconds of a longer clip (flag cut)"
    )
    max_nonfinite: float = Field(
        0.01,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="share of NaN/inf samples above which a clip is unusable; up to it they are set to 0",
    )
    silence_peak: float = Field(
        1e-5,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="peak amplitude below which a clip is flagged silent",
    )
    fill_seconds: float = Field(
        1.0, gt=0, allow_inf_nan=False, description="seconds of zeros replacing an unusable test clip"
    )
    truncation_slack: int = Field(
        1024, ge=0, description="frames a decode may fall short of the header's length before it is flagged"
    )
    min_rate: int = Field(1000, gt=0, description="lowest plausible sample rate (Hz); below: undecodable")
    max_rate: int = Field(768_000, gt=0, description="highest plausible sample rate (Hz); above: undecodable")

    @model_validator(mode="after")
    def _check(self) -> AudioRules:
        if self.min_rate >= self.max_rate:
            raise ValueError(f"min_rate ({self.min_rate}) must be below max_rate ({self.max_rate})")
        if self.fill_seconds > self.max_seconds:
            raise ValueError(
                f"fill_seconds ({self.fill_seconds:g}) must not exceed max_seconds ({self.max_seconds:g}): "
                "no cached clip is longer than max_seconds"
            )
        return self


TABLE_METRICS = tuple(METRICS)  # the metric names a config may name: the scoring registry's
MULTILABEL_F1 = "macro_f1@0.5"  # what `metric: macro_f1` of multi_label data is scored as (0.5 threshold)
MetricName = Literal[TABLE_METRICS]  # type: ignore[valid-type]
SINGLE_LABEL_METRICS = ("map3", "accuracy")  # one true label per clip: refused with multi_label


def template_fields(template: str) -> list[str]:
    """The CSV columns a ``file_template`` such as ``fold{fold}/{slice_file_name}`` names, in order.

    Only plain ``{column}`` fields: no positional ``{}``, attribute, index, conversion or format spec
    (the values are the CSV's text as written)."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(
            f"file_template {template!r}: {exc} (write a literal brace as {{{{ or }}}})"
        ) from None
    fields = [name for _, name, _, _ in parts if name is not None]
    odd = [
        name
        for _, name, spec, conversion in parts
        if name is not None and (not name.strip() or any(c in name for c in ".[]") or spec or conversion)
    ]
    if odd or not fields or any(name.isdigit() for name in fields):
        raise ValueError(
            f"file_template {template!r}: name CSV columns as plain {{column}} fields (at least one; "
            "no {}, {0}, {a.b}, {a[0]}, {a!r} or {a:03d})"
        )
    return fields


class TableSubmission(StrictModel):
    """The submission format of a ``kind: table`` competition."""

    kind: Literal["top_k_labels", "scores", "sample_columns"] = Field(
        description="top_k_labels: id,label with the k best class names space-separated; "
        "scores: id plus one score column per class, in vocabulary order; sample_columns: exactly the "
        "columns of sample_submission (its id column, its class columns in its order; needs it)"
    )
    k: int = Field(3, ge=1, le=20, description="labels per row (top_k_labels)")
    id_column: str = Field(
        "fname",
        min_length=1,
        description="the id column of sample_submission and of the written submission (test file names)",
    )


class TableDownload(StrictModel):
    """Where ``prepare`` fetches a ``kind: table`` or ``kind: folders`` dataset from when no data_dir is
    given: a zip or tar archive (``.zip``, ``.tar``, ``.tar.gz``/``.tgz``, ``.tar.bz2``, ``.tar.xz``)."""

    url: str = Field(
        description="the archive's URL (http or https), its format told by the name's suffix",
        pattern=r"^https?://\S+$",
    )
    sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{64}$",
        description="the archive's SHA-256 (64 lowercase hex digits); null: not checked (the log records "
        "the SHA-256 of the first download)",
    )
    folder: str = Field(
        ".",
        description="the archive's top-level folder, used as data_dir once extracted into "
        "competition/<name>/raw/; '.' or null: the archive has no top folder, raw/ itself is data_dir",
        pattern=r"^[^/\\]+$",
    )

    @field_validator("folder", mode="before")
    @classmethod
    def _plain_folder(cls, folder: object) -> object:
        if folder is None:
            return "."
        if isinstance(folder, str) and (folder == ".." or folder != folder.strip()):
            raise ValueError(f"folder: a plain folder name (or '.' for none), got {folder!r}")
        return folder
