"""The competition's schema: what a competition config names (its data, metric, task, folds,
subsets, submission format, audio rules), with the fields a ``kind: table`` or ``folders`` competition
adds; ``audiotag.config.schema`` re-exports every name here."""

from __future__ import annotations

import re
import string
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from audiotag.config.base import StrictModel


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

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump()


# the names of audiotag.scoring.metrics.METRICS (a test keeps them equal)
TABLE_METRICS = ("map3", "lwlrap", "map", "accuracy", "macro_f1", "macro_f1@0.5", "roc_auc")
MULTILABEL_F1 = "macro_f1@0.5"  # what `metric: macro_f1` of multi_label data is scored as (0.5 threshold)
MetricName = Literal["map3", "lwlrap", "map", "accuracy", "macro_f1", "macro_f1@0.5", "roc_auc"]
SINGLE_LABEL_METRICS = ("map3", "accuracy")  # one true label per clip: refused with multi_label
FOLDERS_FIELDS = ("exclude", "validation_list", "testing_list", "group_pattern")  # kind: folders only
FOLDERS_REFUSED = ("train_csv", "group_column", "fold_column", "verified_column")  # table keys, not folders'
TABLE_FIELDS = (
    "train_csv",
    "audio_dir",
    "test_dir",
    "sample_submission",
    "group_column",
    "fold_column",
    "verified_column",
    "classes",
    "metric",
    "submission",
    "download",
    "noisy_subsets",
    "file_template",
    "start_column",
    "end_column",
    "id_column",
    "test_labels",
    *FOLDERS_FIELDS,
)  # only meaningful with kind: table (or folders); refused without it
TABLE_LAYOUT_FIELDS = (
    "noisy_subsets",
    "file_template",
    "start_column",
    "end_column",
    "id_column",
    "test_labels",
)


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
    given: a zip or tar archive (``.zip``, ``.tar``, ``.tar.gz``/``.tgz``, ``.tar.bz2``, ``.tar.xz``)
    whose top-level ``folder`` holds the data (as a GitHub archive does), or ``folder: "."`` (or null)
    for an archive whose files lie at its root (Speech Commands)."""

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


# Competition keys that choose what the pipeline runs when no --config is given, not what a run or the
# clip table computes (runs/folder.py RUNTIME_KEYS, runs/prepare.py TABLE_NEUTRAL).
PIPELINE_DEFAULT_KEYS = ("default_experiment", "default_ensemble", "default_extra_experiments")


class CompetitionConfig(StrictModel):
    name: str = Field(
        description="competition module: demo, demo2019, fsd2018, fsd2019, fsd50k, audioset; with kind: "
        "table, any name (the workspace folder competition/<name>/)"
    )
    kind: Literal["table", "folders"] | None = Field(
        None,
        description="table: your own dataset, described by this YAML alone (a CSV of files and labels, "
        "competitions/table.py); folders: one sub-folder of audio per class (competitions/folders.py); "
        "null: the competition module named by name",
    )
    train_csv: str | dict[str, str] | None = Field(
        None,
        description="table: the training CSV, relative to data_dir (subset 'train'), or a mapping "
        "{subset: CSV} (e.g. {curated: train_curated.csv, noisy: train_noisy.csv})",
    )
    audio_dir: str | dict[str, str] | None = Field(
        None,
        description="table: folder of the training audio, relative to data_dir; with a train_csv "
        "mapping, one folder for all or a mapping with the same subsets",
    )
    test_dir: str | None = Field(
        None,
        description="table: folder of the test audio, relative to data_dir: every audio file in it, or "
        "the files of sample_submission when given",
    )
    sample_submission: str | None = Field(
        None, description="table: sample submission CSV (column fname first), relative to data_dir"
    )
    test_labels: str | None = Field(
        None,
        description="table: CSV of the test clips' labels (file_column and label_column as in train_csv), "
        "relative to data_dir or absolute; train and ensemble then report a test score; null: none",
    )
    file_column: str = Field("fname", description="table: CSV column naming each clip's file in audio_dir")
    label_column: str = Field("label", description="table: CSV column holding the label(s)")
    group_column: str | None = Field(
        None, description="table: CSV column of groups (clips of one group never straddle folds)"
    )
    fold_column: str | None = Field(
        None, description="table: CSV column of predefined folds (n_folds of them)"
    )
    verified_column: str | None = Field(
        None,
        description="table: CSV column 0/1 (or true/false) marking trusted labels; where a CSV lacks it, "
        "its rows are trusted unless their subset is in noisy_subsets; null: that rule alone",
    )
    noisy_subsets: list[str] | None = Field(
        None,
        description="table: subsets of train_csv whose labels are untrusted (verified false: weighted by "
        "train.unverified_weight, not scored), unless their CSV has verified_column",
    )
    file_template: str | None = Field(
        None,
        description="table: each clip's path inside audio_dir from its CSV row, e.g. "
        "'fold{fold}/{slice_file_name}'; null: the file_column's value",
    )
    start_column: str | None = Field(
        None, description="table: CSV column of each clip's start in its file (seconds); with end_column"
    )
    end_column: str | None = Field(
        None, description="table: CSV column of each clip's end in its file (seconds); with start_column"
    )
    id_column: str | None = Field(
        None,
        description="table: CSV column of unique clip ids; null: the file_column's value, or "
        "'<file>@<start>-<end>' with start_column/end_column",
    )
    multi_label: bool = Field(False, description="table: clips may have several labels")
    label_separator: Literal[",", ";", " "] = Field(
        ",", description="table: separator between the labels of one clip (multi_label)"
    )
    classes: list[str] | None = Field(
        None,
        description="table: the class vocabulary, in score order; null: the sorted training labels, "
        "saved in competition/<name>/vocabulary.json at the first prepare and fixed from then on",
    )
    metric: MetricName | None = Field(
        None,
        description="table: map3 or accuracy (single-label only), lwlrap, map (mean average precision), "
        "macro_f1 (single-label: of the top class; multi-label: scores >= 0.5, becoming macro_f1@0.5) or "
        "roc_auc (macro over classes)",
    )
    submission: TableSubmission | None = Field(None, description="table: the submission format")
    download: TableDownload | None = Field(
        None,
        description="table, folders: a zip or tar archive prepare downloads and extracts into "
        "competition/<name>/raw/ when no data_dir is given and the files are missing",
    )
    exclude: list[str] | None = Field(
        None, description="folders: sub-folders of audio_dir that are no class (e.g. _background_noise_)"
    )
    validation_list: str | None = Field(
        None,
        description="folders: text file (relative to data_dir) of validation clips, one path relative to "
        "audio_dir a line; recorded as their subset 'validation' and cross-validated with the rest",
    )
    testing_list: str | None = Field(
        None,
        description="folders: text file of test clips (paths relative to audio_dir): the test split, "
        "its labels (the folders) kept to report a test score; null: no labelled test split",
    )
    group_pattern: str | None = Field(
        None,
        description="folders: regex searched in each file name; its first group (or the match) is the "
        "clip's group, e.g. '^(.+?)_nohash_' for Speech Commands speakers (never straddling folds)",
    )
    n_folds: int = Field(5, ge=2, le=20)
    rare_classes: Literal["error", "warn"] | None = Field(
        None,
        description="a class with fewer training clips than n_folds: error (the default for kind: table "
        "and folders, your own data) or warn (the default for the known competitions, whose long tails "
        "are known); some folds then validate none of its clips",
    )
    fold_seed: int = 42
    subsets: list[str] | None = Field(
        None, description="training subsets to use (e.g. [curated] for 2019 layouts); null = all"
    )
    generator: DemoGeneratorConfig | None = None
    data_dir: str | None = Field(
        None,
        description="use the competition's files in place from this folder (no download, no copy), e.g. "
        "/kaggle/input/freesound-audio-tagging; for audioset: the folder holding your audio clips",
    )
    source: Literal["kaggle", "zenodo"] | None = Field(
        None, description="where prepare downloads the data from; null = the competition's default"
    )
    rules: CompetitionRules = Field(default_factory=CompetitionRules)
    audio_rules: AudioRules = Field(
        default_factory=AudioRules,
        description="limits of the problem-audio rules applied when the feature cache is built",
    )
    default_experiment: str | None = Field(
        None, description="experiment under configs/experiments/ that prepare/train use without --config"
    )
    default_ensemble: str | None = Field(
        None, description="ensemble under configs/ensembles/ that ensemble uses without --config"
    )
    default_extra_experiments: list[str] = Field(
        default_factory=list,
        description="experiments under configs/experiments/ that prepare/train also run without --config "
        "or --run-name, after default_experiment, as members of the default ensemble (e.g. a linear probe); "
        "--set applies to default_experiment only, --folds, --data-dir and competition.* to all",
    )

    @model_validator(mode="before")
    @classmethod
    def _multilabel_f1(cls, data: Any) -> Any:
        """``metric: macro_f1`` of multi-label data is F1 at a 0.5 threshold, named macro_f1@0.5 so the
        name in every score table and run says which F1 it is."""
        if isinstance(data, dict) and data.get("metric") == "macro_f1" and data.get("multi_label") is True:
            return {**data, "metric": MULTILABEL_F1}
        return data

    @model_validator(mode="after")
    def _table(self) -> CompetitionConfig:
        folders_keys = [f for f in FOLDERS_FIELDS if getattr(self, f) is not None]
        if self.kind is None:
            given = [f for f in TABLE_FIELDS if getattr(self, f) is not None]
            if given:
                kinds = "folders" if set(given) <= set(FOLDERS_FIELDS) else "table or folders"
                raise ValueError(f"{', '.join(given)}: only meaningful with kind: {kinds}")
            return self
        if self.kind == "folders":
            self._folders()
        elif folders_keys:
            raise ValueError(f"{', '.join(folders_keys)}: only meaningful with kind: folders")
        self._table_layout()
        needed = ("train_csv",) if self.kind == "table" else ()
        missing = [f for f in (*needed, "audio_dir", "metric", "submission") if getattr(self, f) is None]
        if missing:
            raise ValueError(f"kind: {self.kind} needs {', '.join(missing)}")
        if self.metric in SINGLE_LABEL_METRICS and self.multi_label:
            raise ValueError(
                f"metric {self.metric} scores one true label per clip; multi_label data needs lwlrap or map "
                "(or macro_f1, at a 0.5 threshold, or roc_auc)"
            )
        if self.metric == MULTILABEL_F1 and not self.multi_label:
            raise ValueError(
                f"metric {MULTILABEL_F1} thresholds multi-label scores; single-label data uses macro_f1 "
                "(the F1 of each clip's top class)"
            )
        if self.classes is not None:
            if not self.classes:
                raise ValueError("classes: empty; list the class names, or leave it out")
            repeated = sorted({c for c in self.classes if self.classes.count(c) > 1})
            bad = [c for c in self.classes if not c.strip() or c != c.strip() or self.label_separator in c]
            if repeated or bad:
                raise ValueError(
                    f"classes: repeated {repeated}, blank or containing the separator "
                    f"{self.label_separator!r}: {bad}"
                )
            if self.submission and self.submission.kind == "top_k_labels" and " " in "".join(self.classes):
                raise ValueError("classes: top_k_labels separates labels by spaces; a class name has one")
            if (
                self.submission
                and self.submission.kind == "top_k_labels"
                and self.submission.k > len(self.classes)
            ):
                raise ValueError(f"submission.k {self.submission.k} exceeds the {len(self.classes)} classes")
        return self

    def _table_layout(self) -> None:
        """The checks of the table's subsets, file template, segments and sample_columns submission."""
        given = [f for f in TABLE_LAYOUT_FIELDS if getattr(self, f) is not None]
        if self.kind != "table":
            if given or isinstance(self.audio_dir, dict):
                what = ", ".join(given) or "audio_dir as a mapping"
                raise ValueError(f"{what}: only meaningful with kind: table")
            return
        csvs, folders = self.train_csv, self.audio_dir
        if isinstance(csvs, dict):
            bad = [s for s in csvs if not s.strip() or s != s.strip() or s == "test"]
            if not csvs or bad:
                raise ValueError(
                    f"train_csv: a mapping {{subset: CSV}} with at least one subset, named without blanks "
                    f"and not 'test' (the test clips' subset); got {list(csvs)}"
                )
            if isinstance(folders, dict) and set(folders) != set(csvs):
                raise ValueError(
                    f"audio_dir: its subsets {sorted(folders)} differ from train_csv's {sorted(csvs)}; give "
                    "one folder per subset of train_csv, or one folder for all"
                )
        elif isinstance(folders, dict):
            raise ValueError(
                "audio_dir: a mapping {subset: folder} needs train_csv as a mapping {subset: CSV}"
            )
        names = list(csvs) if isinstance(csvs, dict) else ["train"]
        for key, chosen in (("noisy_subsets", self.noisy_subsets), ("subsets", self.subsets)):
            unknown = sorted(set(chosen or []) - set(names))
            if unknown or chosen == []:
                raise ValueError(
                    f"{key}: {unknown or 'empty'}; the subsets of train_csv are {names}: choose among them"
                )
        if self.test_labels is not None and not self.test_dir:
            raise ValueError("test_labels: labels of test clips need the test audio folder test_dir")
        if (self.start_column is None) != (self.end_column is None):
            raise ValueError("start_column and end_column go together: give both (seconds), or neither")
        if self.file_template is not None:
            template_fields(self.file_template)
        sample_columns = self.submission is not None and self.submission.kind == "sample_columns"
        if sample_columns and not self.sample_submission:
            raise ValueError(
                "submission.kind sample_columns writes the columns of sample_submission: set "
                "sample_submission (or use kind: scores, columns in vocabulary order)"
            )

    def _folders(self) -> None:
        """The checks of ``kind: folders``: one label per clip (its folder), no CSV keys, a usable regex."""
        table_keys = [f for f in FOLDERS_REFUSED if getattr(self, f) is not None]
        if table_keys:
            raise ValueError(
                f"{', '.join(table_keys)}: kind: folders has no CSV (the class is the folder, groups come "
                "from group_pattern); use kind: table for a CSV"
            )
        if self.multi_label:
            raise ValueError("multi_label: kind: folders gives each clip one label (its folder)")
        if self.group_pattern is not None:
            try:
                groups = re.compile(self.group_pattern).groups
            except re.error as exc:
                raise ValueError(f"group_pattern {self.group_pattern!r}: not a valid regex ({exc})") from None
            if groups > 1:
                raise ValueError(
                    f"group_pattern {self.group_pattern!r}: {groups} capture groups; use one (the group) or "
                    "none (the whole match), and (?:...) for the others"
                )
        if self.validation_list and self.validation_list == self.testing_list:
            raise ValueError("validation_list and testing_list name the same file")
        if self.testing_list and (self.test_dir or self.sample_submission):
            raise ValueError(
                "testing_list and test_dir both define the test split; keep one (leave testing_list out "
                "to train on its clips and submit for test_dir)"
            )
