"""The typed configuration schemas: competition, front-end, the settings every model shares,
training and ensembles (each model family's own schema lives with the family, ``models/*.py``).

Files are read, composed and overridden by ``audiotag.config_files``; ``load_ensemble`` and
``load_competition`` here validate such a tree against its schema.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from audiotag.config_files import apply_overrides, load_group, read_yaml, resolve_groups, validate

M = TypeVar("M", bound="BaseModel")

FEATURE_CODE_VERSION = 1  # bump when the log-mel computation changes, so old caches are not reused


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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


# the names of audiotag.metrics.METRICS (a test keeps them equal)
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
# clip table computes (stages/train.py RUNTIME_KEYS, stages/prepare.py TABLE_NEUTRAL).
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


class FeatureConfig(StrictModel):
    """Log-mel front-end. Every field except ``name`` enters the cache key."""

    name: str = "logmel"
    cache: Literal["logmel", "wave"] = Field(
        "logmel",
        description="what prepare caches: logmel, or the resampled wave (float16), the log-mel then being "
        "computed per batch on the training device (GPU) by the model's front-end",
    )
    kind: Literal["logmel", "kaldi_fbank"] = Field(
        "logmel",
        description="logmel: torch STFT + mel (PANNs, BYOL-A, aisfx); kaldi_fbank: Kaldi fbank (AST)",
    )
    sample_rate: int = Field(16000, gt=0)
    n_fft: int = Field(512, gt=0)
    win_length: int | None = Field(None, gt=0)
    hop_length: int = Field(320, gt=0)
    n_mels: int = Field(64, gt=0)
    fmin: float = Field(50.0, ge=0)
    fmax: float | None = Field(None, gt=0)
    mel_scale: Literal["slaney", "htk"] = "slaney"
    mel_norm: Literal["slaney", "l1", "none"] = Field(
        "slaney", description="filter normalisation: slaney (librosa's default), l1 (librosa norm=1), none"
    )
    window: Literal["hann", "hamming", "povey"] = "hann"
    scale: Literal["db", "log", "log10_1p"] = Field(
        "db",
        description="db: 10*log10(max(mel, amin)); log: ln(mel + log_offset); "
        "log10_1p: log10(1 + log_gain*mel)",
    )
    amin: float = Field(1e-10, gt=0, description="floor before 10*log10 (scale: db)")
    log_offset: float = Field(1e-6, gt=0, description="added before log (scale: log)")
    log_gain: float = Field(1.0, gt=0, description="gain inside log10(1 + gain * mel) (scale: log10_1p)")
    center_pad: Literal["reflect", "constant"] = Field(
        "reflect",
        description="padding of the centred STFT: reflect (torch, torchlibrosa, PANNs) or constant "
        "zeros (librosa >= 0.9's default, aisfx)",
    )
    peak_normalize: bool = Field(False, description="scale each clip to peak 1 before the STFT (aisfx)")
    preemphasis: float = Field(0.0, ge=0, lt=1, description="kaldi_fbank: pre-emphasis coefficient (0.97)")
    remove_dc: bool = Field(False, description="kaldi_fbank: subtract each frame's mean")

    @model_validator(mode="after")
    def _check(self) -> FeatureConfig:
        nyquist = self.sample_rate / 2
        if self.fmax is not None and self.fmax > nyquist:
            raise ValueError(f"fmax {self.fmax} is above the Nyquist frequency {nyquist}")
        if self.fmin >= (self.fmax or nyquist):
            raise ValueError("fmin must be below fmax")
        if self.win_length is not None and self.win_length > self.n_fft:
            raise ValueError("win_length must not exceed n_fft")
        return self

    @property
    def frames_per_second(self) -> float:
        """Log-mel frames per second (whatever the cache holds)."""
        return self.sample_rate / self.hop_length

    @property
    def cache_rate(self) -> float:
        """Cached rows per second: log-mel frames, or samples for ``cache: wave``."""
        return float(self.sample_rate) if self.cache == "wave" else self.frames_per_second

    @property
    def cache_width(self) -> int:
        """Values per cached row: n_mels, or 1 for ``cache: wave``."""
        return 1 if self.cache == "wave" else self.n_mels

    def key(self) -> str:
        """Short hash of every setting that changes the cached tensors."""
        settings = self.model_dump(exclude={"name"})
        settings["fmax"] = self.fmax or self.sample_rate / 2
        settings["win_length"] = self.win_length or self.n_fft
        settings["code_version"] = FEATURE_CODE_VERSION
        if settings["center_pad"] == "reflect":  # added later: the default keeps existing cache keys
            del settings["center_pad"]
        blob = json.dumps(settings, sort_keys=True).encode()
        return hashlib.sha1(blob).hexdigest()[:10]

    def cache_name(self) -> str:
        return f"{self.name}-{self.key()}"


class InputNorm(StrictModel):
    """``(x - mean) / std`` applied to the log-mel before the backbone (the checkpoint's own recipe)."""

    mean: float = 0.0
    std: float = Field(1.0, gt=0)


class NormStatsConfig(StrictModel):
    """How ``input_norm: dataset`` measures its mean and std (BYOL-A's ``calc_norm_stats``)."""

    unit_seconds: float | None = Field(
        0.95,
        gt=0,
        description="each clip cropped (at random) or zero-padded (centred) to this length first, "
        "padding included in the statistics, as BYOL-A does with its unit_sec; null = whole clips",
    )
    max_clips: int = Field(10000, gt=0, description="at most this many training clips, drawn at random")
    seed: int = Field(42, description="seed of the clip draw and the crops")


class ModelBase(StrictModel):
    """Settings every backbone shares: pretrained weights, head, input normalisation."""

    pretrained: str | None = Field(
        None,
        description="a name from `./run.sh weights list`, or the path of a checkpoint file; null = random. "
        "timm models also take `imagenet` (timm's default weights of model.arch) and "
        "`timm/<arch>[.<tag>]` (any weights timm knows, e.g. timm/tf_efficientnet_b0.ns_jft_in1k)",
    )
    head: Literal["linear", "attention", "cls", "mean"] = Field(
        "linear",
        description="linear: pool over time then classify; attention: PANNs decision-level attention; "
        "cls/mean: transformer class token or mean token (ast only)",
    )
    embedding_dim: int | None = Field(
        None, gt=0, description="hidden layer between pooling and classifier (PANNs fc1); null = none"
    )
    dropout: float = Field(0.2, ge=0, lt=1)
    input_norm: InputNorm | Literal["dataset"] | None = Field(
        None,
        description="(x - mean) / std before the backbone: explicit numbers (a checkpoint's recipe), "
        "'dataset' (one scalar mean and std over the training fold's log-mel, as BYOL-A does), or null",
    )
    norm_stats: NormStatsConfig = Field(
        default_factory=NormStatsConfig, description="how input_norm: dataset measures its statistics"
    )

    token_heads: ClassVar[bool] = False  # True for transformers: heads cls/mean instead of linear/attention

    @model_validator(mode="after")
    def _head_fits_the_backbone(self) -> ModelBase:
        on_tokens = self.head in ("cls", "mean")
        name = getattr(self, "name", type(self).__name__)
        if on_tokens and not self.token_heads:
            raise ValueError(f"head {self.head!r} is for transformers; {name} takes linear or attention")
        if self.token_heads and not on_tokens:
            raise ValueError(f"head {self.head!r}: {name}, a transformer, takes cls or mean")
        return self


class SpecAugmentConfig(StrictModel):
    time_masks: int = Field(2, ge=0)
    time_width: int = Field(16, ge=0, description="maximum frames per time mask")
    freq_masks: int = Field(2, ge=0)
    freq_width: int = Field(8, ge=0, description="maximum mel bins per frequency mask")
    where: Literal["auto", "input", "after_norm"] = Field(
        "auto",
        description="input: mask the log-mel; after_norm: mask after the backbone's input BatchNorm, as "
        "PANNs trains (bn0, then SpecAugment); auto: after_norm where the backbone has bn0, else input",
    )
    fill: Literal["auto", "mean", "zero"] = Field(
        "auto", description="masked values: each clip's mean, or 0; auto: zero after_norm (PANNs), else mean"
    )


class LossConfig(StrictModel):
    """A training loss (``train/losses.py`` has the formulas and where each comes from)."""

    name: Literal["bce", "lq", "bootstrap_soft", "lsep"] = Field(
        "bce",
        description="bce; lq: per-class generalised cross-entropy (1 - p_t^q)/q; bootstrap_soft: BCE "
        "against beta*y + (1-beta)*p; lsep: log-sum-exp pairwise ranking",
    )
    q: float = Field(0.7, gt=0, le=1, description="lq: q -> 0 is BCE, q = 1 is the MAE of p_t")
    beta: float = Field(0.7, ge=0, le=1, description="bootstrap_soft: weight of the given labels (1: BCE)")


class PseudoLabelConfig(StrictModel):
    """Unverified (noisy) training clips relabelled from a finished run's fold models, fold-safely."""

    from_run: str = Field(min_length=1, description="the teacher: a run name under competition/<name>/runs/")
    mode: Literal["soft", "replace", "filter"] = Field(
        "soft",
        description="soft: the teacher's scores as targets; replace: its labels (scores >= threshold, else "
        "its top class); filter: keep the given labels the teacher scores >= threshold, drop clips left bare",
    )
    threshold: float = Field(0.5, gt=0, lt=1)


class TrainConfig(StrictModel):
    auto: bool = Field(
        False,
        description="derive the crop, batch size, epochs, warm-up, patience, mixup, SpecAugment widths and "
        "head_bias from the data (train/auto_recipe.py) where this config does not set them; printed, "
        "saved in the run folder (auto_recipe.json) and reused when the run resumes",
    )
    head_bias: Literal["default", "prior"] = Field(
        "default",
        description="prior: the classifier's bias starts at each class's log-odds in the training fold "
        "(BCE then starts at the prior's loss); default: the layer's own initialisation",
    )
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    backbone_lr_ratio: float = Field(
        1.0, gt=0, description="backbone learning rate = lr * ratio (the head always gets lr)"
    )
    freeze_backbone_epochs: int = Field(0, ge=0, description="train only the head for this many epochs")
    weight_decay: float = Field(1e-2, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    min_lr_ratio: float = Field(0.01, ge=0, le=1)
    crop_seconds: float = Field(2.0, gt=0)
    pad_mode: Literal["constant", "wrap"] = "wrap"
    mixup_alpha: float = Field(0.4, ge=0, description="Beta(alpha, alpha); 0 disables mixup")
    mixup_prob: float = Field(0.5, ge=0, le=1)
    specaugment: SpecAugmentConfig = Field(default_factory=SpecAugmentConfig)
    wave_augment: list[dict[str, Any]] = Field(
        default_factory=list,
        description="audiomentations transforms on each training crop of a wave cache, in order: "
        "[{name: Gain, min_gain_db: -6, max_gain_db: 6, p: 0.5}, ...] (data/wave_augment.py); [] = none",
    )
    spec_augment_lib: list[dict[str, Any]] = Field(
        default_factory=list,
        description="albumentations transforms on each training crop's log-mel, in order: "
        "[{name: CoarseDropout, ...}, ...] (data/spec_augment_lib.py: image scale in dB); [] = none",
    )
    patience: int = Field(5, ge=1, description="epochs without improvement before stopping")
    eval_hop_fraction: float = Field(0.5, gt=0, le=1)
    eval_aggregate: Literal["mean", "max"] = "mean"
    tta_shifts: int = Field(
        1, ge=1, description="test-time augmentation: also score window grids shifted by hop/N (N grids)"
    )
    tta_gains_db: list[float] = Field(
        default_factory=list, description="test-time augmentation: also score the clip at these gains (dB)"
    )
    unverified_weight: float = Field(
        1.0, ge=0, description="loss weight of unverified/noisy clips (of subsets not in subset_weights)"
    )
    subset_weights: dict[str, float] = Field(
        default_factory=dict,
        description="loss weight of every clip of a subset, e.g. {curated: 1.0, noisy: 0.5}; replaces "
        "unverified_weight for the subsets named; 0 leaves the subset out of training (still validated)",
    )
    loss: LossConfig = Field(default_factory=LossConfig)
    noisy_loss: LossConfig | None = Field(
        None, description="the loss of unverified (noisy) clips; null: train.loss, as for the others"
    )
    pseudo_labels: PseudoLabelConfig | None = Field(
        None, description="relabel the unverified training clips from another run's fold models"
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="auto: bf16 on GPUs that have it, fp16 with loss scaling on older ones; on a CPU bf16 "
        "where it has bf16 instructions (AVX512-BF16, AMX), else fp32",
    )
    grad_accum_steps: int = Field(1, ge=1, description="micro-batches per optimizer step")
    checkpoint_every_steps: int | None = Field(
        None, ge=1, description="also save last.pt every N optimizer steps inside an epoch; null = per epoch"
    )
    grad_clip_norm: float | None = Field(None, gt=0, description="clip the global gradient norm; null = off")
    ema_decay: float | None = Field(
        None, gt=0, lt=1, description="keep an EMA of the weights (e.g. 0.999) and evaluate it; null = off"
    )
    channels_last: bool | None = Field(
        None,
        description="channels-last memory format; null = on for a GPU (CNN14 in bf16 on an H100: 1.46x "
        "the samples/s), off on the CPU",
    )
    compile: bool = Field(False, description="torch.compile the model")
    deterministic: bool = Field(False, description="deterministic kernels (slower); seeds are always set")
    folds: list[int] | None = Field(None, description="folds to train; null = all")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int | None = Field(
        None, ge=0, description="DataLoader workers; null = up to 8 on a GPU, 0 on the CPU (no core to spare)"
    )
    threads: int | None = Field(None, ge=1, description="torch CPU threads; null = all cores")
    loggers: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=lambda: ["tensorboard"],
        description="experiment trackers (train/trackers.py): tensorboard (event files in the run folder), "
        "mlflow, wandb (optional packages); [] = none",
    )

    @field_validator("subset_weights")
    @classmethod
    def _subset_weights_valid(cls, weights: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in weights.items() if not 0 <= v < float("inf")}
        if bad:
            raise ValueError(f"weights must be finite numbers >= 0; got {bad}")
        return weights


class EnsembleConfig(StrictModel):
    """Blend (and optionally stack) finished runs; weights are searched on OOF predictions only."""

    name: str
    competition: CompetitionConfig
    members: list[str] = Field(min_length=1, description="run names under competition/<name>/runs/")
    method: Literal["mean", "geometric", "power", "rank"] = Field(
        "mean",
        description="weighted arithmetic mean, geometric mean, power mean (exponent `power`) or rank "
        "average (per-class ranks in [0, 1]); test predictions are fold-averaged by the same rule",
    )
    power: float = Field(2.0, description="exponent of the power mean (method: power); not 0")
    weights: Literal["search", "equal"] | dict[str, float] = Field(
        "search", description="search (on OOF), equal, or a mapping {run name: weight >= 0}"
    )
    search: Literal["hill_climb", "scipy"] = Field(
        "hill_climb",
        description="hill_climb: Caruana greedy selection with replacement from the best member; "
        "scipy: Nelder-Mead on softmax weights",
    )
    per_class: bool = Field(False, description="search one weight per member and class (weights: search)")
    iterations: int = Field(100, ge=1, description="hill-climbing steps, or Nelder-Mead iterations")
    nested_cv: bool = Field(
        True, description="also measure the weight search by nested CV (weights fit on the other folds)"
    )
    stacking: Literal["logreg", "mlp"] | None = Field(
        None, description="fit a stacker on the members' OOF predictions and submit its test predictions"
    )
    stacking_c: float = Field(1.0, gt=0, description="inverse L2 strength of the logreg stacker")
    stacking_hidden: int = Field(32, ge=1, description="hidden units of the mlp stacker")
    min_oof_overlap: float = Field(
        0.9,
        gt=0,
        le=1,
        description="members whose OOF clips differ are blended on the clips they all share; fewer "
        "shared clips than this share of all their OOF clips is refused",
    )
    seed: int = 0

    @field_validator("members")
    @classmethod
    def _unique_members(cls, members: list[str]) -> list[str]:
        repeated = sorted({m for m in members if members.count(m) > 1})
        if repeated:
            raise ValueError(f"each run may be listed once; repeated: {repeated}")
        return members

    @field_validator("power")
    @classmethod
    def _nonzero_power(cls, power: float) -> float:
        if power == 0 or power != power or abs(power) == float("inf"):
            raise ValueError("must be finite and non-zero (the power mean's limit at 0 is method: geometric)")
        return power

    @field_validator("weights", mode="before")
    @classmethod
    def _weights_shape(cls, weights: Any, info: ValidationInfo) -> Any:
        if isinstance(weights, str) and weights not in ("search", "equal"):
            raise ValueError("expected search, equal or a mapping {run name: weight}")
        if isinstance(weights, dict):
            members = info.data.get("members") or []
            unknown = sorted(set(weights) - set(members))
            missing = sorted(set(members) - set(weights))
            if unknown or missing:
                raise ValueError(
                    f"the mapping must give a weight to every member and only to them; "
                    f"not members: {unknown}, members without a weight: {missing}"
                )
            bad = {k: v for k, v in weights.items() if not isinstance(v, int | float) or v < 0}
            if bad:
                raise ValueError(f"weights must be numbers >= 0; got {bad}")
            if not sum(weights.values()) > 0:
                raise ValueError("weights must not all be zero")
        return weights

    @field_validator("per_class")
    @classmethod
    def _per_class_needs_search(cls, per_class: bool, info: ValidationInfo) -> bool:
        if per_class and info.data.get("weights", "search") != "search":
            raise ValueError("per-class weights are searched; set weights: search, or per_class: false")
        return per_class


def load_ensemble(
    path: str | Path, overrides: list[str] | None = None, competition: str | None = None
) -> EnsembleConfig:
    """``competition``: a competition config (name or YAML path) replacing the file's (kind: table)."""
    path = Path(path)
    raw = read_yaml(path)
    raw.setdefault("name", path.stem)
    if competition is not None:
        raw["competition"] = competition
    tree = resolve_groups(apply_overrides(resolve_groups(raw), overrides or []))
    return validate(EnsembleConfig, tree, str(path))


def load_competition(name: str, overrides: list[str] | None = None) -> CompetitionConfig:
    tree = apply_overrides(load_group("competition", name), overrides or [])
    source = name if name.endswith((".yaml", ".yml")) else f"configs/competitions/{name}.yaml"
    return validate(CompetitionConfig, tree, source)
