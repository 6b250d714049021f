"""The clip table a competition's ``prepare`` writes (``meta.parquet``): its schema, checked when it is
written and when it is read back.

One row per clip: ``clip_id``, ``path``, ``split`` (train or test), ``subset``, ``labels`` (a list of
class names) and ``verified``; the audio probe adds ``duration`` and ``sample_rate``, and a table may
add ``audio_issue`` (where the audio rules flagged a clip), ``group``, ``fold`` and segment ``start``/
``end``. A competition builds it from its raw files (``Competition.parse_clip_table``); every later
stage reads it here.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from audiotag.core.errors import DataError

CLIP_COLUMNS = ("clip_id", "path", "split", "subset", "labels", "verified")  # every clip table has them
SPLITS = ("train", "test")


def check_clip_table(table: pd.DataFrame, where: str) -> None:
    """Refuse a table without the columns every clip table has, or with a split other than SPLITS."""
    missing = [column for column in CLIP_COLUMNS if column not in table.columns]
    if missing:
        raise DataError(f"{where}: not a clip table: no column(s) {missing} (it has {list(table.columns)})")
    splits = sorted(set(table["split"]) - set(SPLITS))
    if splits:
        raise DataError(f"{where}: clip table split(s) {splits}; a clip is in {' or '.join(SPLITS)}")


def write_meta(table: pd.DataFrame, path: Path) -> None:
    check_clip_table(table, str(path))
    table.to_parquet(path, index=False)


def read_meta(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: clip table not found; run `./run.sh prepare` first")
    table = pd.read_parquet(path)
    check_clip_table(table, f"{path} (rebuilt by `./run.sh prepare`)")
    table["labels"] = table["labels"].map(list)
    return table
