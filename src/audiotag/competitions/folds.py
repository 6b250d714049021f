"""Cross-validation folds: fixed once per (n_folds, seed), written as clip_id -> fold.

Single-label competitions use StratifiedKFold on (label, verified); multi-label ones use
MultilabelStratifiedKFold on the label matrix plus one column per subset, so every fold gets its
share of each class and of curated/noisy clips.

StratifiedKFold needs one stratum with at least ``n_folds`` clips: the largest (label, verified)
group must hold ``n_folds`` clips or more, else the folds are refused with that group and its count.
Two processes preparing at once (two terminals, the ranks of a job) take an OS file lock (flock,
released when its process dies) around the check and the write: the second waits and then reuses
the first's fold file.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold
from sklearn.model_selection import StratifiedKFold

from audiotag.atomic import atomic_write_text
from audiotag.competitions.base import Competition
from audiotag.errors import DataError
from audiotag.fetch.http import locked

log = logging.getLogger(__name__)


def folds_path(comp: Competition) -> Path:
    subsets = "all" if comp.cfg.subsets is None else "+".join(sorted(comp.cfg.subsets))
    return comp.dir / "folds" / f"k{comp.cfg.n_folds}-seed{comp.cfg.fold_seed}-{subsets}.csv"


def assign_folds(comp: Competition, train: pd.DataFrame) -> np.ndarray:
    n_folds, seed = comp.cfg.n_folds, comp.cfg.fold_seed
    if len(train) == 0:
        raise DataError(
            f"{comp.name}: no training clips to draw folds from; check the training CSV files"
            + (f" and competition.subsets {comp.cfg.subsets}" if comp.cfg.subsets is not None else "")
        )
    if len(train) < n_folds:
        raise DataError(
            f"{comp.name}: {len(train)} training clip(s) cannot fill {n_folds} folds; lower "
            f"competition.n_folds to {max(2, len(train))} or less, or add clips"
        )
    index = np.zeros(len(train))
    folds = np.full(len(train), -1, dtype=np.int64)
    if comp.task == "single_label":
        pairs = zip(train["labels"], train["verified"], strict=True)
        strata = [f"{labels[0]}|{verified}" for labels, verified in pairs]
        counts = pd.Series(strata).value_counts()
        if counts.max() < n_folds:
            largest = str(counts.index[0]).replace("|", ", verified=")
            fix = (
                f"lower competition.n_folds to {counts.max()}"
                if counts.max() >= 2
                else f"add clips so that one (label, verified) group has {n_folds}"
            )
            raise DataError(
                f"cannot draw {n_folds} stratified folds: the largest (label, verified) group must have "
                f"at least {n_folds} clips (competition.n_folds), and the largest, ({largest}), has "
                f"{counts.max()} ({len(train)} training clips in {len(counts)} groups); {fix}"
            )
        # A label with a rare stratum (fewer clips than folds) is stratified by label alone.
        rare = {s.split("|")[0] for s in strata if counts[s] < n_folds}
        strata = [s.split("|")[0] if s.split("|")[0] in rare else s for s in strata]
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(index, strata)
    else:
        y = comp.label_matrix(train["labels"])
        subsets = pd.get_dummies(train["subset"]).to_numpy(dtype=np.float32)
        splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(index, np.concatenate([y, subsets], axis=1))
    for fold, (_, val_idx) in enumerate(splits):
        folds[val_idx] = fold
    return folds


def ensure_folds(comp: Competition, table: pd.DataFrame) -> Path:
    """Write the fold file if it does not exist; check an existing one still covers the clips.

    The check and the write hold an exclusive lock on ``.<fold file>.lock`` beside it, so a second
    process waits for the first and then reuses its file instead of racing it."""
    path = folds_path(comp)
    train = comp.training_clips(table)
    lock = path.with_name(f".{path.name}.lock")
    with locked(lock, waiting=f"folds: another process is writing {path.name}; waiting for it"):
        return _ensure_folds(comp, train, path)


def _ensure_folds(comp: Competition, train: pd.DataFrame, path: Path) -> Path:
    if path.is_file():
        existing = load_folds(path)
        if set(existing["clip_id"]) != set(train["clip_id"]):
            raise DataError(
                f"{path}: the fold file does not match the current training clips "
                "(the data changed since it was written); delete it to draw new folds"
            )
        log.info("folds: %s up to date", path.name)
        return path
    folds = assign_folds(comp, train)
    out = pd.DataFrame({"clip_id": train["clip_id"], "fold": folds}).sort_values("clip_id")
    atomic_write_text(path, out.to_csv(index=False))
    sizes = np.bincount(folds, minlength=comp.cfg.n_folds).tolist()
    log.info("folds: wrote %s (%d clips, sizes %s)", path, len(out), sizes)
    return path


def load_folds(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: fold file not found; run `./run.sh prepare` first")
    df = pd.read_csv(path, dtype={"clip_id": str, "fold": np.int64})
    if list(df.columns) != ["clip_id", "fold"]:
        raise DataError(f"{path}: expected columns clip_id,fold; found {list(df.columns)}")
    return df


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
