"""The clip table a competition's ``prepare`` writes (``meta.parquet``), read back.

One row per clip: ``clip_id``, ``path``, ``split``, ``subset``, ``labels`` (a list of class names),
``verified``, ``duration`` and, where the audio rules flagged it, ``audio_issue``. A competition
builds it from its raw files (``Competition.parse_clip_table``); every later stage reads it here.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from audiotag.core.errors import DataError


def read_meta(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: clip table not found; run `./run.sh prepare` first")
    table = pd.read_parquet(path)
    table["labels"] = table["labels"].map(list)
    return table
