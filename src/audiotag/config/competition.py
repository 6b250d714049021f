"""The competition's schema, a union by ``kind``: a competition module named by ``name`` (no kind),
``kind: table`` (your own CSV, ``competitions/table.py``) or ``kind: folders`` (one folder of audio per
class, ``competitions/folders.py``).

Every key is declared once, in :class:`CompetitionKeys`, with its :class:`Scope`: the kinds that have
it and what its value decides (the clip table, the feature cache, a run's results, or nothing the
pipeline computes). Each kind's config takes the keys of its kind; a key of another kind is refused
by name unless it holds its default (as every saved config writes them all). Dumps keep every key, in
this order, so saved configs, config hashes and table fingerprints are those of the single flat
schema this replaced. The parts (rules, submission, download, ...) are ``config/competition_parts.py``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    Discriminator,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    Tag,
    create_model,
    model_serializer,
    model_validator,
)

from audiotag.config.base import InsidePath, PlainName, StrictModel
from audiotag.config.competition_parts import (
    MULTILABEL_F1,
    SINGLE_LABEL_METRICS,
    AudioRules,
    CompetitionRules,
    DemoGeneratorConfig,
    MetricName,
    TableDownload,
    TableSubmission,
    template_fields,
)

Kind = Literal["named", "table", "folders"]  # "named": no kind, the competition module named by name
Effect = Literal["table", "cache", "run"]  # the clip table, the feature cache, a run's results


@dataclass(frozen=True)
class Scope:
    """Which kinds of competition have a key, what its value decides, and which kinds need it set."""

    kinds: frozenset[Kind]
    affects: frozenset[Effect]  # empty: nothing computed (what the pipeline runs by default)
    needed_by: frozenset[Kind] = frozenset()


_ALL: frozenset[Kind] = frozenset({"named", "table", "folders"})
_FILE_KINDS: frozenset[Kind] = frozenset({"table", "folders"})
_TABLE_AND_RUN: frozenset[Effect] = frozenset({"table", "run"})

ANY_KIND = Scope(_ALL, _TABLE_AND_RUN)
FILES = Scope(_FILE_KINDS, _TABLE_AND_RUN)
FILES_NEED = Scope(_FILE_KINDS, _TABLE_AND_RUN, needed_by=_FILE_KINDS)
TABLE = Scope(frozenset({"table"}), _TABLE_AND_RUN)
TABLE_NEEDS = Scope(frozenset({"table"}), _TABLE_AND_RUN, needed_by=frozenset({"table"}))
TABLE_RUN = Scope(frozenset({"table"}), frozenset({"run"}))  # read when a run is scored, not into the table
FOLDERS = Scope(frozenset({"folders"}), _TABLE_AND_RUN)
NAMED = Scope(frozenset({"named"}), _TABLE_AND_RUN)
WHERE = Scope(_ALL, frozenset({"table"}))  # where the files are: the same files may move under a run
RUN = Scope(_ALL, frozenset({"run"}))  # the folds file or the rules, not the clip table
CACHE = Scope(_ALL, frozenset({"cache", "run"}))  # how audio is decoded into the feature cache
PIPELINE = Scope(_ALL, frozenset())  # what the pipeline runs when no --config is given
KAGGLE = Scope(_ALL, frozenset())  # how Kaggle takes submissions: nothing the pipeline computes


class CompetitionKeys(StrictModel):
    """Every competition key, in the order configs are dumped; each kind's config is built from it."""

    name: Annotated[PlainName, ANY_KIND] = Field(
        description="competition module: demo, demo2019, fsd2018, fsd2019, fsd50k, audioset; with kind: "
        "table, any name (the workspace folder competition/<name>/)"
    )
    kind: Annotated[Literal["table", "folders"] | None, FILES] = Field(
        None,
        description="table: your own dataset, described by this YAML alone (a CSV of files and labels, "
        "competitions/table.py); folders: one sub-folder of audio per class (competitions/folders.py); "
        "null: the competition module named by name",
    )
    train_csv: Annotated[InsidePath | dict[str, InsidePath] | None, TABLE_NEEDS] = Field(
        None,
        description="table: the training CSV, relative to data_dir (subset 'train'), or a mapping "
        "{subset: CSV} (e.g. {curated: train_curated.csv, noisy: train_noisy.csv})",
    )
    audio_dir: Annotated[InsidePath | dict[str, InsidePath] | None, FILES_NEED] = Field(
        None,
        description="table: folder of the training audio, relative to data_dir; with a train_csv "
        "mapping, one folder for all or a mapping with the same subsets",
    )
    test_dir: Annotated[InsidePath | None, FILES] = Field(
        None,
        description="table: folder of the test audio, relative to data_dir: every audio file in it, or "
        "the files of sample_submission when given",
    )
    sample_submission: Annotated[InsidePath | None, FILES] = Field(
        None, description="table: sample submission CSV (column fname first), relative to data_dir"
    )
    test_labels: Annotated[str | None, TABLE_RUN] = Field(
        None,
        description="table: CSV of the test clips' labels (file_column and label_column as in train_csv), "
        "relative to data_dir or absolute; train and ensemble then report a test score; null: none",
    )
    file_column: Annotated[str, FILES] = Field(
        "fname", description="table: CSV column naming each clip's file in audio_dir"
    )
    label_column: Annotated[str, FILES] = Field("label", description="table: CSV column holding the label(s)")
    group_column: Annotated[str | None, TABLE] = Field(
        None, description="table: CSV column of groups (clips of one group never straddle folds)"
    )
    fold_column: Annotated[str | None, TABLE] = Field(
        None, description="table: CSV column of predefined folds (n_folds of them)"
    )
    verified_column: Annotated[str | None, TABLE] = Field(
        None,
        description="table: CSV column 0/1 (or true/false) marking trusted labels; where a CSV lacks it, "
        "its rows are trusted unless their subset is in noisy_subsets; null: that rule alone",
    )
    noisy_subsets: Annotated[list[str] | None, TABLE] = Field(
        None,
        description="table: subsets of train_csv whose labels are untrusted (verified false: weighted by "
        "train.unverified_weight, not scored), unless their CSV has verified_column",
    )
    file_template: Annotated[InsidePath | None, TABLE] = Field(
        None,
        description="table: each clip's path inside audio_dir from its CSV row, e.g. "
        "'fold{fold}/{slice_file_name}'; null: the file_column's value",
    )
    start_column: Annotated[str | None, TABLE] = Field(
        None, description="table: CSV column of each clip's start in its file (seconds); with end_column"
    )
    end_column: Annotated[str | None, TABLE] = Field(
        None, description="table: CSV column of each clip's end in its file (seconds); with start_column"
    )
    id_column: Annotated[str | None, TABLE] = Field(
        None,
        description="table: CSV column of unique clip ids; null: the file_column's value, or "
        "'<file>@<start>-<end>' with start_column/end_column",
    )
    multi_label: Annotated[bool, FILES] = Field(False, description="table: clips may have several labels")
    label_separator: Annotated[Literal[",", ";", " "], FILES] = Field(
        ",", description="table: separator between the labels of one clip (multi_label)"
    )
    classes: Annotated[list[str] | None, FILES] = Field(
        None,
        description="table: the class vocabulary, in score order; null: the sorted training labels, "
        "saved in competition/<name>/vocabulary.json at the first prepare and fixed from then on",
    )
    metric: Annotated[MetricName | None, FILES_NEED] = Field(
        None,
        description="table: map3 or accuracy (single-label only), lwlrap, map (mean average precision), "
        "macro_f1 (single-label: of the top class; multi-label: scores >= 0.5, becoming macro_f1@0.5) or "
        "roc_auc (macro over classes)",
    )
    submission: Annotated[TableSubmission | None, FILES_NEED] = Field(
        None, description="table: the submission format"
    )
    download: Annotated[TableDownload | None, FILES] = Field(
        None,
        description="table, folders: a zip or tar archive prepare downloads and extracts into "
        "competition/<name>/raw/ when no data_dir is given and the files are missing",
    )
    exclude: Annotated[list[InsidePath] | None, FOLDERS] = Field(
        None, description="folders: sub-folders of audio_dir that are no class (e.g. _background_noise_)"
    )
    validation_list: Annotated[InsidePath | None, FOLDERS] = Field(
        None,
        description="folders: text file (relative to data_dir) of validation clips, one path relative to "
        "audio_dir a line; recorded as their subset 'validation' and cross-validated with the rest",
    )
    testing_list: Annotated[InsidePath | None, FOLDERS] = Field(
        None,
        description="folders: text file of test clips (paths relative to audio_dir): the test split, "
        "its labels (the folders) kept to report a test score; null: no labelled test split",
    )
    group_pattern: Annotated[str | None, FOLDERS] = Field(
        None,
        description="folders: regex searched in each file name; its first group (or the match) is the "
        "clip's group, e.g. '^(.+?)_nohash_' for Speech Commands speakers (never straddling folds)",
    )
    n_folds: Annotated[int, RUN] = Field(5, ge=2, le=20)
    rare_classes: Annotated[Literal["error", "warn"] | None, ANY_KIND] = Field(
        None,
        description="a class with fewer training clips than n_folds: error (the default for kind: table "
        "and folders, your own data) or warn (the default for the known competitions, whose long tails "
        "are known); some folds then validate none of its clips",
    )
    fold_seed: Annotated[int, RUN] = 42
    subsets: Annotated[list[str] | None, ANY_KIND] = Field(
        None, description="training subsets to use (e.g. [curated] for 2019 file formats); null = all"
    )
    generator: Annotated[DemoGeneratorConfig | None, NAMED] = None
    data_dir: Annotated[str | None, WHERE] = Field(
        None,
        description="use the competition's files in place from this folder (no download, no copy), e.g. "
        "/kaggle/input/freesound-audio-tagging; for audioset: the folder holding your audio clips",
    )
    source: Annotated[Literal["kaggle", "zenodo"] | None, NAMED] = Field(
        None, description="where prepare downloads the data from; null = the competition's default"
    )
    rules: Annotated[CompetitionRules, RUN] = Field(default_factory=CompetitionRules)
    audio_rules: Annotated[AudioRules, CACHE] = Field(
        default_factory=AudioRules,
        description="limits of the problem-audio rules applied when the feature cache is built",
    )
    default_experiment: Annotated[str | None, PIPELINE] = Field(
        None, description="experiment under configs/experiments/ that prepare/train use without --config"
    )
    default_ensemble: Annotated[str | None, PIPELINE] = Field(
        None, description="ensemble under configs/ensembles/ that ensemble uses without --config"
    )
    default_extra_experiments: Annotated[list[str], PIPELINE] = Field(
        default_factory=list,
        description="experiments under configs/experiments/ that prepare/train also run without --config "
        "or --run-name, after default_experiment, as members of the default ensemble (e.g. a linear probe); "
        "--set applies to default_experiment only, --folds, --data-dir and competition.* to all",
    )
    kernels_only: Annotated[bool, KAGGLE] = Field(
        False,
        description="Kaggle takes submissions only from a notebook (a kernel) run without internet: "
        "submit refuses the CSV and points at the kernel package writes (kernel/, kaggle kernels push)",
    )


SCOPES: dict[str, Scope] = {
    key: next(m for m in field.metadata if isinstance(m, Scope))
    for key, field in CompetitionKeys.model_fields.items()
}
_OFF = {key: field.default for key, field in CompetitionKeys.model_fields.items()}  # a key's default


def keys_not_affecting(effect: Effect) -> frozenset[str]:
    """The competition keys whose value does not change ``effect`` (e.g. a run's results)."""
    return frozenset(key for key, scope in SCOPES.items() if effect not in scope.affects)


def _kinds_text(kinds: set[Kind]) -> str:
    named = ["no kind (a competition named by name)"] if "named" in kinds else []
    files = [kind for kind in ("table", "folders") if kind in kinds]
    return " or ".join([*([f"kind: {' or '.join(files)}"] if files else []), *named])


class _KindChecks(StrictModel):
    """What every kind's config does: refuse another kind's keys, dump every key."""

    kind_name: ClassVar[Kind]  # the kind whose keys the config takes
    foreign_note: ClassVar[str] = ""  # appended to the refusal of another kind's keys

    @model_validator(mode="before")
    @classmethod
    def _keys_of_the_kind(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        foreign = [key for key in data if key in SCOPES and key not in cls.model_fields]
        wrong = [key for key in foreign if data[key] != _OFF[key]]
        if wrong:
            kinds = set().union(*(SCOPES[key].kinds for key in wrong)) - {cls.kind_name}
            raise ValueError(
                f"{', '.join(wrong)}: only meaningful with {_kinds_text(kinds)}{cls.foreign_note}"
            )
        return {key: value for key, value in data.items() if key not in foreign}

    @model_serializer(mode="wrap")
    def _every_key(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        data = handler(self)
        if not isinstance(data, dict) or info.exclude_defaults or info.exclude_none or info.exclude_unset:
            return data
        own, excluded = type(self).model_fields, info.exclude or ()
        return {
            key: data[key] if key in own else _OFF[key]
            for key in SCOPES
            if key in data
            or (key not in own and key not in excluded and (info.include is None or key in info.include))
        }


class _NamedChecks(_KindChecks):
    kind_name: ClassVar[Kind] = "named"

    @property
    def kind(self) -> None:
        """A competition module has no kind."""
        return None


class _FileChecks(_KindChecks):
    """The checks of ``kind: table`` and ``kind: folders``: the keys they need, metric and classes."""

    @model_validator(mode="before")
    @classmethod
    def _multilabel_f1(cls, data: Any) -> Any:
        """``metric: macro_f1`` of multi-label data is F1 at a 0.5 threshold, named macro_f1@0.5 so the
        name in every score table and run says which F1 it is."""
        if isinstance(data, dict) and data.get("metric") == "macro_f1" and data.get("multi_label") is True:
            return {**data, "metric": MULTILABEL_F1}
        return data

    @model_validator(mode="after")
    def _check(self) -> Any:
        self.check_kind()
        missing = [
            key
            for key in type(self).model_fields
            if self.kind in SCOPES[key].needed_by and getattr(self, key) is None
        ]
        if missing:
            raise ValueError(f"kind: {self.kind} needs {', '.join(missing)}")
        _check_metric(self.metric, self.multi_label)
        if self.classes is not None:
            _check_classes(self.classes, self.label_separator, self.submission)
        return self

    def check_kind(self) -> None:
        """The checks of this kind alone."""


def _check_metric(metric: str, multi_label: bool) -> None:
    if metric in SINGLE_LABEL_METRICS and multi_label:
        raise ValueError(
            f"metric {metric} scores one true label per clip; multi_label data needs lwlrap or map "
            "(or macro_f1, at a 0.5 threshold, or roc_auc)"
        )
    if metric == MULTILABEL_F1 and not multi_label:
        raise ValueError(
            f"metric {MULTILABEL_F1} thresholds multi-label scores; single-label data uses macro_f1 "
            "(the F1 of each clip's top class)"
        )


def _check_classes(classes: list[str], separator: str, submission: TableSubmission) -> None:
    if not classes:
        raise ValueError("classes: empty; list the class names, or leave it out")
    repeated = sorted({c for c in classes if classes.count(c) > 1})
    bad = [c for c in classes if not c.strip() or c != c.strip() or separator in c]
    if repeated or bad:
        raise ValueError(
            f"classes: repeated {repeated}, blank or containing the separator {separator!r}: {bad}"
        )
    if submission.kind == "top_k_labels" and " " in "".join(classes):
        raise ValueError("classes: top_k_labels separates labels by spaces; a class name has one")
    if submission.kind == "top_k_labels" and submission.k > len(classes):
        raise ValueError(f"submission.k {submission.k} exceeds the {len(classes)} classes")


class _TableChecks(_FileChecks):
    kind_name: ClassVar[Kind] = "table"

    def check_kind(self) -> None:
        """The table's subsets, test labels, segments, file template and sample_columns submission."""
        names = _check_subset_csvs(self.train_csv, self.audio_dir)
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


def _check_subset_csvs(csvs: str | dict[str, str] | None, folders: str | dict[str, str] | None) -> list[str]:
    """The subsets of ``train_csv`` (``train`` for one CSV), its mapping and audio_dir's checked."""
    if not isinstance(csvs, dict):
        if isinstance(folders, dict):
            raise ValueError(
                "audio_dir: a mapping {subset: folder} needs train_csv as a mapping {subset: CSV}"
            )
        return ["train"]
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
    return list(csvs)


class _FoldersChecks(_FileChecks):
    kind_name: ClassVar[Kind] = "folders"
    foreign_note: ClassVar[str] = (
        "; kind: folders has no CSV (the class is the folder, groups come from group_pattern): "
        "use kind: table for a CSV"
    )

    def check_kind(self) -> None:
        """One label per clip (its folder), one audio folder, a usable regex, one test split."""
        if isinstance(self.audio_dir, dict):
            raise ValueError("audio_dir as a mapping: only meaningful with kind: table")
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


def _kind_config(name: str, checks: type[_KindChecks], kind: Any) -> Any:
    """The config of one kind: the keys of ``CompetitionKeys`` its kind has, in their order."""
    described = CompetitionKeys.model_fields["kind"]
    fields: dict[str, Any] = {
        key: (field.annotation, field)
        for key, field in CompetitionKeys.model_fields.items()
        if checks.kind_name in SCOPES[key].kinds
    }
    if kind is not None:
        fields["kind"] = (kind, Field(kind.__args__[0], description=described.description))
    return create_model(name, __base__=checks, __module__=__name__, **fields)


NamedCompetitionConfig = _kind_config("NamedCompetitionConfig", _NamedChecks, None)
TableCompetitionConfig = _kind_config("TableCompetitionConfig", _TableChecks, Literal["table"])
FoldersCompetitionConfig = _kind_config("FoldersCompetitionConfig", _FoldersChecks, Literal["folders"])


def _kind_tag(value: Any) -> str | None:
    kind = value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)
    return "named" if kind is None else kind if kind in ("table", "folders") else None


CompetitionConfig = Annotated[
    Annotated[NamedCompetitionConfig, Tag("named")]
    | Annotated[TableCompetitionConfig, Tag("table")]
    | Annotated[FoldersCompetitionConfig, Tag("folders")],
    Discriminator(
        _kind_tag,
        custom_error_type="kind",
        custom_error_message="kind: Input should be 'table' or 'folders', or left out (a competition module)",
    ),
]
