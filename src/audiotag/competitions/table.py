"""Your own dataset, described by a competition YAML alone (``kind: table``): a CSV of files and labels.

Each key (the folder or ``download`` archive, the training CSVs and audio folders, the test audio and
``test_labels``, the CSV's columns, labels, metric and submission) is described where it is declared,
``config/competition.py``; :mod:`audiotag.competitions.table_reading` reads the training rows, with the
shared readers of :mod:`audiotag.competitions.file_formats` (names confined to their folder, headers
probed, the audio rules). Without a test set the runs and the ensemble report CV only and no
submission is written; ``submission.kind: sample_columns`` is checked against the vocabulary at prepare.

The vocabulary is ``classes`` or the training labels fixed at the first prepare
(:mod:`audiotag.competitions.vocabulary`).

The parsing is :class:`TableFormat`'s, shared with the competitions whose published files have this
shape: FSDKaggle2018, FSDKaggle2019 and their demos declare each source's file format as these same keys
(``FILE_FORMATS`` in their modules) and add only what their data needs beyond a table.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

from audiotag.competitions.archive import OwnDataset
from audiotag.competitions.file_formats import AUDIO_ISSUE, AUDIO_SUFFIXES, FileCompetition, audio_paths
from audiotag.competitions.folds import FOLD, GROUP, describe_groups
from audiotag.competitions.table_reading import (
    COLUMNS_REMEDY,
    chosen_subsets,
    parse_labels,
    read_rows,
    read_table_csv,
    segment_overruns,
)
from audiotag.competitions.vocabulary import VOCABULARY, Vocabulary, check_labels, csv_line
from audiotag.config.competition import TableCompetitionConfig
from audiotag.config.schema import CompetitionConfig
from audiotag.core.errors import ConfigError, DataError

log = logging.getLogger(__name__)


class TableFormat(FileCompetition):
    """A clip table read from training CSVs and folders of audio, plus a list of test clips; the task,
    metric, submission format and vocabulary come from the file format (the YAML, or ``FILE_FORMATS``).
    A subclass may add what its dataset knows beyond the table (:meth:`audio_issues`,
    :meth:`check_sample_header`)."""

    FILE_FORMATS: ClassVar[dict[str, dict[str, Any]]] = {}  # source -> kind: table settings of its files
    classes_described: ClassVar[str] = "the classes listed in the competition YAML"  # for messages
    columns_remedy: ClassVar[str] = COLUMNS_REMEDY  # what to do about a CSV that lacks a column

    def __init__(self, cfg: CompetitionConfig, root: Path | None = None) -> None:
        super().__init__(cfg, root)
        spec = self.file_format(self.sources[0])
        self.task = "multi_label" if spec.multi_label else "single_label"  # type: ignore[misc]
        self.metric = spec.metric or ""  # type: ignore[misc]
        assert spec.submission is not None  # CompetitionConfig checks it for kind: table
        self.submission_kind = spec.submission.kind  # type: ignore[misc]
        self.label_count = spec.submission.k
        self.id_column = spec.submission.id_column
        self.vocabulary = Vocabulary(self.dir / VOCABULARY, spec.classes, self.name, self.classes_described)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.FILE_FORMATS:  # the sources are the file formats it reads
            cls.sources = tuple(cls.FILE_FORMATS)

    def file_format(self, source: str) -> CompetitionConfig:
        """The table settings of ``source``'s files: ``FILE_FORMATS[source]``, checked as ``kind: table``."""
        return TableCompetitionConfig.model_validate(
            {"name": self.name, "kind": "table", **self.FILE_FORMATS[source]}
        )

    def _file(self, rel: str) -> Path:
        return self.raw_dir / rel

    def test_list(self, file_format: CompetitionConfig) -> str | None:
        """The CSV whose id column lists the test clips: the sample submission, else the test-label file
        (the Zenodo file formats list their test clips there); None: every audio file in test_dir."""
        return file_format.sample_submission or self.truth_file

    def expected_files(self, source: str) -> list[str]:
        file_format = self.file_format(source)
        files = [name for s in chosen_subsets(file_format) for name in (s.csv, f"{s.audio_dir}/")]
        if file_format.test_dir:
            files.append(f"{file_format.test_dir}/")
        listed = self.test_list(file_format)
        if listed:
            files.append(listed)
        return list(dict.fromkeys(files))

    # -------------------------------------------------------------- vocabulary

    @property
    def classes(self) -> list[str]:
        return self.vocabulary.classes

    # -------------------------------------------------------------- test clips and the sample

    def _test_ids(self, file_format: CompetitionConfig) -> tuple[list[str], Path | None]:
        """Test clip names (relative to test_dir) and the CSV that listed them (None: the folder's files)."""
        listed = self.test_list(file_format)
        if listed:
            path = self._file(listed)
            ids = read_table_csv(path, [self.id_column], "sample_submission", self.columns_remedy)
            return _unique(ids[self.id_column], path, self.id_column), path
        if not file_format.test_dir:
            return [], None
        folder = self._file(file_format.test_dir)
        names = sorted(
            p.relative_to(folder).as_posix()
            for p in folder.rglob("*")
            if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES
        )
        if not names:
            raise DataError(f"{folder}: test_dir holds no audio files ({', '.join(AUDIO_SUFFIXES)})")
        return names, None

    def check_sample_header(self, file_format: CompetitionConfig, vocabulary: list[str]) -> None:
        """A given sample submission's header must be what the submission format writes: for
        sample_columns its class columns are the vocabulary (any order), else the id column comes first
        and then one label column (top_k_labels) or the classes in vocabulary order (scores)."""
        if not file_format.sample_submission:
            return
        path = self._file(file_format.sample_submission)
        header = list(
            read_table_csv(path, [self.id_column], "sample_submission", self.columns_remedy).columns
        )
        others = [c for c in header if c != self.id_column]
        if self.submission_kind == "sample_columns":
            missing = [c for c in vocabulary if c not in others]
            extra = [c for c in others if c not in set(vocabulary)]
            if missing or extra:
                raise DataError(
                    f"{path}: line 1: the class columns must be the {len(vocabulary)} classes of the "
                    f"vocabulary, in any order; missing {_head(missing)}, extra {_head(extra)}; fix "
                    "competition.classes (or the training labels) or the sample's header"
                )
            return
        if header[0] != self.id_column:
            raise DataError(
                f"{path}: line 1: the id column {self.id_column!r} must come first (columns "
                f"{_head(header)}); use submission.kind sample_columns to keep the sample's order"
            )
        if self.submission_kind == "top_k_labels" and len(others) != 1:
            raise DataError(
                f"{path}: line 1: top_k_labels writes {self.id_column} and one label column, the sample "
                f"has {_head(header)}; for score columns use submission.kind scores or sample_columns"
            )
        if self.submission_kind == "scores" and others != vocabulary:
            raise DataError(
                f"{path}: line 1: submission.kind scores writes one column per class in vocabulary order "
                f"({_head(vocabulary)}), the sample has {_head(others)}; use submission.kind sample_columns "
                "to follow the sample's columns"
            )

    def test_truth(self) -> pd.DataFrame | None:
        """Labels of the test clips from :meth:`truth_path` (``truth_file``, or a table's ``test_labels``):
        the clip in the training CSVs' ``file_column`` (else the submission's id column), its labels in
        their ``label_column``, written as there; ``usage`` kept where given (e.g. Public/Private)."""
        path = self.truth_path()
        if path is None:
            return None
        file_format = self.file_format(self.source)
        df = read_table_csv(path, [file_format.label_column], "test_labels", self.columns_remedy)
        key = file_format.file_column if file_format.file_column in df.columns else self.id_column
        if key not in df.columns:
            raise DataError(
                f"{path}: no column {file_format.file_column!r} (file_column) or {self.id_column!r} "
                f"naming the test clips; found {list(df.columns)}; {self.columns_remedy}"
            )
        labels = parse_labels(file_format, df[file_format.label_column], path)
        check_labels(labels, set(self.classes), csv_line(path), self.classes_described)
        out = pd.DataFrame({"clip_id": _unique(df[key], path, key), "labels": labels})
        if "usage" in df.columns:
            out["usage"] = df["usage"].to_numpy()
        return out

    # -------------------------------------------------------------- clip table

    def table_sources(self) -> list[Path]:
        """The top-level CSVs, and the training CSVs and the test list wherever they are."""
        sources = super().table_sources()
        file_format = self.file_format(self.source_found())
        named = [self._file(s.csv) for s in chosen_subsets(file_format)]
        listed = self.test_list(file_format)
        if listed:
            named.append(self._file(listed))
        return sources + [p for p in dict.fromkeys(named) if p not in sources and p.is_file()]

    def parse_clip_table(self) -> pd.DataFrame:
        cfg = self.file_format(self.source_found())
        rows = read_rows(cfg, chosen_subsets(cfg), self.raw_dir, self.columns_remedy)
        csvs, lines = rows["csv"].tolist(), rows["line"].tolist()
        vocabulary = self.vocabulary.fix(
            rows["labels"].tolist(),
            lambda i: f"{csvs[i]}: line {lines[i]}",
            no_spaces=self.submission_kind == "top_k_labels",
        )
        if self.submission_kind == "top_k_labels" and self.label_count > len(vocabulary):
            raise DataError(
                f"competition.submission.k {self.label_count} exceeds the {len(vocabulary)} classes; lower it"
            )
        self.check_sample_header(cfg, vocabulary)
        test_ids, test_csv = self._test_clips(cfg, rows)
        train_paths = [
            self.rel(path)
            for _, part in rows.groupby("subset", sort=False)  # each subset's rows: its CSV's lines 2, 3, ...
            for path in audio_paths(
                self._file(part["audio_dir"].iloc[0]), part["file"], Path(part["csv"].iloc[0])
            )
        ]
        test_paths = (
            self.audio_paths(str(cfg.test_dir), test_ids, test_csv or self._file(str(cfg.test_dir)))
            if test_ids
            else []
        )
        durations, rates, issues = self._probe_files([*train_paths, *test_paths])
        overruns = segment_overruns(rows, durations[: len(rows)], issues[: len(rows)])
        if overruns:
            raise DataError(
                f"{len(overruns)} segment(s) end past their audio file's end: {'; '.join(overruns[:3])}"
                f"{' ...' if len(overruns) > 3 else ''}; fix {cfg.start_column}/{cfg.end_column} of those "
                "rows (or the files)"
            )
        n_test = len(test_ids)
        segments = cfg.start_column is not None
        if segments:  # a segment's duration is its own; an unusable file keeps the probe's 0
            durations[: len(rows)] = [
                0.0 if issue else end - start
                for start, end, issue in zip(rows["start"], rows["end"], issues[: len(rows)], strict=True)
            ]
        table = pd.DataFrame(
            {
                "clip_id": [*rows["clip_id"], *test_ids],
                "path": [*train_paths, *test_paths],
                "split": ["train"] * len(rows) + ["test"] * n_test,
                "subset": [*rows["subset"], *(["test"] * n_test)],
                "labels": [*rows["labels"], *([] for _ in range(n_test))],
                "verified": [*rows["verified"], *([False] * n_test)],
                "duration": durations,
                "sample_rate": rates,
            }
        )
        audio_issues = self.audio_issues(table, issues)
        if audio_issues is not None:
            table[AUDIO_ISSUE] = audio_issues
        if segments:
            table["start"] = [*rows["start"], *([math.nan] * n_test)]
            table["end"] = [*rows["end"], *([math.nan] * n_test)]
        for column, source in ((GROUP, cfg.group_column), (FOLD, cfg.fold_column)):
            if source:
                table[column] = pd.Series([*rows[column], *([None] * n_test)], dtype=object).to_numpy()
        if cfg.group_column:
            log.info(
                "%s: training clips grouped by %s: %s",
                self.name,
                cfg.group_column,
                describe_groups(rows[GROUP]),
            )
        self._log_subsets(rows)
        if not cfg.sample_submission:
            self.write_sample_submission(
                test_ids, None if self.submission_kind == "top_k_labels" else vocabulary
            )
        return table

    def _test_clips(self, cfg: CompetitionConfig, rows: pd.DataFrame) -> tuple[list[str], Path | None]:
        """The test clip ids and the CSV listing them (None: test_dir's files); none a training clip."""
        test_ids, test_csv = self._test_ids(cfg)
        if test_ids and not cfg.test_dir:
            raise ConfigError(
                "competition.test_dir: sample_submission is given, but not the test audio folder"
            )
        overlap = rows.index[rows["clip_id"].isin(set(test_ids))]
        if len(overlap):
            row = rows.loc[overlap[0]]
            raise DataError(
                f"{row['csv']}: line {row['line']}: {row['clip_id']!r} is also a test clip "
                f"({test_csv or cfg.test_dir}); a clip is either trained on or tested"
            )
        return test_ids, test_csv

    def audio_issues(self, table: pd.DataFrame, probed: list[str]) -> list[str] | None:
        """The ``audio_issue`` column from the header probe's findings (``probed``), or None for no column:
        here the probe's, only where a clip has one; a dataset may add what its documentation knows."""
        return probed if any(probed) else None

    def _probe_files(self, paths: list[str]) -> tuple[list[float], list[int], list[str]]:
        """:meth:`probe` once per file (segments share their file), as one value per path."""
        unique = list(dict.fromkeys(paths))
        found = dict(zip(unique, zip(*self.probe(unique), strict=True), strict=True))
        durations, rates, issues = (list(column) for column in zip(*(found[p] for p in paths), strict=True))
        return durations, rates, issues

    def _log_subsets(self, rows: pd.DataFrame) -> None:
        if rows["subset"].nunique() > 1 or not rows["verified"].all():
            counts = rows.groupby("subset", sort=False)["verified"].agg(["size", "sum"])
            log.info(
                "%s: training subsets %s",
                self.name,
                ", ".join(
                    f"{name}: {int(n)} clips ({int(v)} verified)" for name, (n, v) in counts.iterrows()
                ),
            )


class TableCompetition(OwnDataset, TableFormat):
    """A tagging dataset given as a CSV table and folders of audio, used in place: the YAML is its file
    format."""

    name = "table"  # the instance's name is the YAML's (set in __init__)
    kind = "table"  # serves every config of kind: table
    sources = ("table",)
    data_dir_holds = "train_csv and the audio"

    def file_format(self, source: str) -> CompetitionConfig:
        return self.cfg

    def truth_path(self) -> Path | None:
        """``test_labels``, relative to the data folder (or absolute); None when not given."""
        if self.cfg.test_labels is None:
            return None
        path = self.raw_dir / Path(self.cfg.test_labels).expanduser()  # an absolute path stays itself
        if not path.is_file():
            raise DataError(
                f"{path}: file not found; competition.test_labels names the CSV of the test clips' labels "
                "(relative to the data folder, or absolute): fix the path, or leave test_labels out"
            )
        return path


def _unique(ids: pd.Series, path: Path, column: str) -> list[str]:
    """``ids`` (rows of ``path`` from line 2) as a list, refusing one listed twice."""
    dup = ids.duplicated()
    if dup.any():
        row = int(dup.to_numpy().nonzero()[0][0])
        raise DataError(f"{path}: line {row + 2}: {column} {ids.iloc[row]!r} listed twice")
    return ids.tolist()


def _head(items: list[str], n: int = 5) -> str:
    return f"{items[:n]}{' ...' if len(items) > n else ''}"


def check_test_labels(comp: TableFormat, table: pd.DataFrame) -> None:
    """Refuse (at prepare, before any training) test labels that lack a test clip of ``table``."""
    truth = comp.test_truth()
    if truth is None:
        return
    path = comp.truth_path()
    test_ids = table.loc[table["split"] == "test", "clip_id"]
    missing = sorted(set(test_ids) - set(truth["clip_id"]))
    if missing:
        raise DataError(
            f"{path}: no labels for {len(missing)} of the {len(test_ids)} test clips, e.g. "
            f"{_head(missing, 3)}; give every test clip a row (the test_dir files, or the sample "
            "submission's ids), or leave test_labels out"
        )
    extra = len(set(truth["clip_id"]) - set(test_ids))
    log.info(
        "%s: test labels of %d clips from %s%s: train and ensemble report a test score",
        comp.name,
        len(test_ids),
        path,
        f" ({extra} row(s) naming no test clip ignored)" if extra else "",
    )


COMPETITIONS = (TableCompetition,)
