"""Prediction tables: one row per clip, ``clip_id`` then one score column per class (parquet)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from audiotag.core.atomic import atomic_path
from audiotag.core.errors import DataError


def write_predictions(
    path: Path, clip_ids: Sequence[str], classes: Sequence[str], scores: np.ndarray
) -> None:
    if scores.shape != (len(clip_ids), len(classes)):
        raise ValueError(f"scores shape {scores.shape} != ({len(clip_ids)}, {len(classes)})")
    df = pd.DataFrame(scores.astype(np.float32), columns=list(classes))
    df.insert(0, "clip_id", list(clip_ids))
    with atomic_path(path, suffix=".parquet") as tmp:
        df.to_parquet(tmp, index=False)


def read_predictions(path: Path, classes: Sequence[str]) -> tuple[list[str], np.ndarray]:
    if not path.is_file():
        raise DataError(f"{path}: prediction file not found")
    df = pd.read_parquet(path)
    columns = [c for c in df.columns if c != "clip_id"]
    if columns != list(classes):
        raise DataError(
            f"{path}: class columns differ from the competition's ({len(columns)} vs {len(classes)})"
        )
    return df["clip_id"].astype(str).tolist(), df[columns].to_numpy(dtype=np.float64)
