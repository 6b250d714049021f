"""The training CSVs of a ``kind: table`` competition read into clip rows (for ``competitions/table.py``).

Each row becomes one clip of its subset (``train_csv``'s keys, ``train`` for one CSV): its file, its
segment (``start_column``/``end_column``, checked against the file's length once it is probed), its id
(unique across all subsets) and its trust, as each key's description in ``config/competition.py``
says. Every error names the CSV file and its line (header = line 1) and what to change.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from audiotag.competitions.file_formats import csv_problem
from audiotag.config.competition_parts import template_fields
from audiotag.config.schema import CompetitionConfig
from audiotag.core.errors import DataError

log = logging.getLogger(__name__)

# The remedy for a CSV that lacks a column, where the column names come from the competition YAML.
COLUMNS_REMEDY = (
    "fix the column names in the competition YAML (file_column, label_column, ...) or the CSV header"
)
# The remedy for a published dataset's CSV that lacks a column (the Freesound file formats).
PUBLISHED_REMEDY = (
    "restore the published file (re-download the data, or point --data-dir at the complete folder)"
)
TRUE_FLAGS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
SEGMENT_SLACK = 0.01  # seconds a segment may end past its file's header length (rounding in the CSV)


@dataclass(frozen=True)
class Subset:
    """One training CSV and the folder its files are in, both relative to the data folder."""

    name: str
    csv: str
    audio_dir: str


def all_subsets(cfg: CompetitionConfig) -> list[Subset]:
    """Every subset of ``train_csv``, in the YAML's order (``train`` for a single CSV)."""
    csvs = cfg.train_csv if isinstance(cfg.train_csv, dict) else {"train": str(cfg.train_csv)}
    folders = cfg.audio_dir if isinstance(cfg.audio_dir, dict) else dict.fromkeys(csvs, str(cfg.audio_dir))
    return [Subset(name, csv, folders[name]) for name, csv in csvs.items()]


def chosen_subsets(cfg: CompetitionConfig) -> list[Subset]:
    """The subsets ``competition.subsets`` selects (all when null); the config checked the names."""
    return [s for s in all_subsets(cfg) if cfg.subsets is None or s.name in cfg.subsets]


def read_table_csv(
    path: Path, required: list[str], setting: str, remedy: str = COLUMNS_REMEDY
) -> pd.DataFrame:
    """A CSV as text (nothing converted), refused (saying ``remedy``) when it lacks a ``required`` column."""
    if not path.is_file():
        raise DataError(f"{path}: file not found; check competition.{setting} and the data folder")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise DataError(f"{path}: cannot be parsed as CSV ({csv_problem(path, exc)})") from None
    missing = [c for c in dict.fromkeys(required) if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {list(df.columns)}; {remedy}")
    return df


def required_columns(cfg: CompetitionConfig) -> list[str]:
    """Columns every training CSV must have (verified_column is checked apart: see ``read_rows``)."""
    columns = [cfg.file_column, cfg.label_column]
    columns += [
        c for c in (cfg.group_column, cfg.fold_column, cfg.start_column, cfg.end_column, cfg.id_column) if c
    ]
    if cfg.file_template:
        columns += template_fields(cfg.file_template)
    return list(dict.fromkeys(columns))


def read_rows(
    cfg: CompetitionConfig, subsets: list[Subset], data_dir: Path, remedy: str = COLUMNS_REMEDY
) -> pd.DataFrame:
    """One row per training clip of ``subsets``: clip_id, file, subset, labels, verified, group, fold,
    start, end (NaN without segments), and the CSV and line it came from. ``remedy``: what to do about
    a missing column."""
    frames: list[pd.DataFrame] = []
    has_verified: list[bool] = []
    for subset in subsets:
        path = data_dir / subset.csv
        setting = "train_csv" if len(subsets) == 1 and subset.name == "train" else f"train_csv.{subset.name}"
        df = read_table_csv(path, required_columns(cfg), setting, remedy)
        has_verified.append(cfg.verified_column in df.columns)
        if cfg.verified_column and len(subsets) == 1 and not has_verified[-1]:
            read_table_csv(path, [cfg.verified_column], setting, remedy)  # raises, naming the column
        frames.append(_subset_rows(cfg, subset, df, path))
    if cfg.verified_column and not any(has_verified):
        names = ", ".join(str(data_dir / s.csv) for s in subsets)
        raise DataError(
            f"none of the training CSVs ({names}) has the verified_column {cfg.verified_column!r}; fix "
            "competition.verified_column or leave it out (noisy_subsets marks whole subsets untrusted)"
        )
    rows = pd.concat(frames, ignore_index=True)
    if rows.empty:
        names = ", ".join(str(data_dir / s.csv) for s in subsets)
        files = "the file has" if len(subsets) == 1 else "the files have"
        raise DataError(
            f"{names}: no training clips: {files} a header and no rows; restore the complete "
            f"file{'s' if len(subsets) > 1 else ''} (re-download the data, or point --data-dir at the "
            "complete folder)"
        )
    _refuse_repeated_ids(rows, cfg)
    return rows


def _subset_rows(cfg: CompetitionConfig, subset: Subset, df: pd.DataFrame, path: Path) -> pd.DataFrame:
    lines = list(range(2, len(df) + 2))
    files = df[cfg.file_column].tolist()
    if cfg.file_template:
        fields = template_fields(cfg.file_template)
        records = df[fields].to_dict("records")
        files = [cfg.file_template.format(**record) for record in records]
    starts, ends = _segments(cfg, df, path) if cfg.start_column else ([math.nan] * len(df),) * 2
    if cfg.id_column:
        ids = _text_column(df, cfg.id_column, path)
    elif cfg.start_column:
        ids = [f"{f}@{s!r}-{e!r}" for f, s, e in zip(df[cfg.file_column], starts, ends, strict=True)]
    else:
        ids = df[cfg.file_column].tolist()
    return pd.DataFrame(
        {
            "clip_id": ids,
            "file": files,
            "audio_dir": subset.audio_dir,
            "subset": subset.name,
            "labels": parse_labels(cfg, df[cfg.label_column], path),
            "verified": _verified(cfg, subset, df, path),
            "group": _text_column(df, cfg.group_column, path) if cfg.group_column else None,
            "fold": _text_column(df, cfg.fold_column, path) if cfg.fold_column else None,
            "start": starts,
            "end": ends,
            "csv": str(path),
            "line": lines,
        }
    )


def _text_column(df: pd.DataFrame, column: str, path: Path) -> list[str]:
    values = df[column].str.strip()
    blank = values == ""
    if blank.any():
        row = int(blank.to_numpy().nonzero()[0][0])
        raise DataError(f"{path}: line {row + 2}: empty {column}; every row needs one")
    return values.tolist()


def parse_labels(cfg: CompetitionConfig, texts: pd.Series, path: Path) -> list[list[str]]:
    """Each row's labels (``texts``, rows of ``path`` from line 2): one, or ``label_separator``-separated
    with ``multi_label``; a row without a label is refused, a label written twice in one row is kept once
    (with a warning: the real FSDKaggle2019 CSVs could not be checked for such rows offline)."""
    out = []
    repeated: list[int] = []
    for row, text in enumerate(texts):
        if cfg.multi_label:
            names = [x.strip() for x in text.split(cfg.label_separator) if x.strip()]
        else:
            names = [text.strip()]
        if not names or not all(names):
            raise DataError(f"{path}: line {row + 2}: no label in {cfg.label_column}")
        if len(set(names)) != len(names):
            repeated.append(row + 2)
            names = list(dict.fromkeys(names))
        out.append(names)
    if repeated:
        log.warning(
            "%s: %d row(s) name a label twice (first: line %d); each label is kept once",
            path,
            len(repeated),
            repeated[0],
        )
    return out


def _verified(cfg: CompetitionConfig, subset: Subset, df: pd.DataFrame, path: Path) -> list[bool]:
    column = cfg.verified_column
    if column is None or column not in df.columns:
        return [subset.name not in (cfg.noisy_subsets or [])] * len(df)
    out = []
    for row, text in enumerate(df[column]):
        flag = TRUE_FLAGS.get(text.strip().lower())
        if flag is None:
            raise DataError(f"{path}: line {row + 2}: {column} must be 0/1 or true/false, got {text!r}")
        out.append(flag)
    return out


def _segments(cfg: CompetitionConfig, df: pd.DataFrame, path: Path) -> tuple[list[float], list[float]]:
    """Each row's (start, end) in seconds, after checking 0 <= start < end."""
    assert cfg.start_column and cfg.end_column  # the config gives both or neither
    starts, ends = [], []
    for row, (a, b) in enumerate(zip(df[cfg.start_column], df[cfg.end_column], strict=True)):
        start = _seconds(a, cfg.start_column, path, row)
        end = _seconds(b, cfg.end_column, path, row)
        if start < 0 or end <= start:
            raise DataError(
                f"{path}: line {row + 2}: segment {a.strip()}-{b.strip()} s is empty or reversed "
                f"({cfg.start_column} must be >= 0 and below {cfg.end_column}); fix the row or drop it"
            )
        starts.append(start)
        ends.append(end)
    return starts, ends


def _seconds(text: str, column: str, path: Path, row: int) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DataError(f"{path}: line {row + 2}: {column} {text!r} is not a number of seconds")
    return value


def _refuse_repeated_ids(rows: pd.DataFrame, cfg: CompetitionConfig) -> None:
    dup = rows["clip_id"].duplicated(keep=False)
    if not dup.any():
        return
    clip_id = rows["clip_id"][dup].iloc[0]
    first, second = rows[rows["clip_id"] == clip_id].iloc[:2].itertuples()
    if cfg.id_column:
        what, fix = f"{cfg.id_column} {clip_id!r}", f"give each row its own {cfg.id_column}"
    elif cfg.start_column:
        what, fix = f"segment {clip_id!r}", "list each segment once"
    else:
        what = f"file {clip_id!r}"
        fix = (
            "list each file once (several segments of one file need start_column/end_column)"
            if first.csv == second.csv
            else "a clip belongs to one subset; drop one of the rows or rename the file"
        )
    raise DataError(
        f"{second.csv}: line {second.line}: {what} listed twice (also {first.csv}: line {first.line}); {fix}"
    )


def segment_overruns(rows: pd.DataFrame, durations: list[float], issues: list[str]) -> list[str]:
    """ "CSV: line N: ..." for each segment that ends past its file's end (files with an audio issue
    are left to the audio rules)."""
    out = []
    for row, duration, issue in zip(rows.itertuples(), durations, issues, strict=True):
        if issue or math.isnan(row.end) or row.end <= duration + SEGMENT_SLACK:
            continue
        out.append(
            f"{row.csv}: line {row.line}: segment {row.start!r}-{row.end!r} s runs past the end of "
            f"{row.audio_dir}/{row.file} ({duration:.3f} s long)"
        )
    return out
