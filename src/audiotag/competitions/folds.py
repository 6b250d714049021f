"""Cross-validation folds: fixed once per (n_folds, seed), written as clip_id -> fold.

Single-label competitions use StratifiedKFold on (label, verified); multi-label ones use
MultilabelStratifiedKFold on the label matrix plus one column per subset, so every fold gets its share
of each class and of curated/noisy clips.

StratifiedKFold needs one stratum with at least ``n_folds`` clips (:func:`single_label_strata`). Two
processes preparing at once (two terminals, the ranks of a job) share one fold file
(:func:`ensure_folds`).

Groups (no leaks). When the clip table has a ``group`` column (clips recorded from one source, e.g.
FSDKaggle2018's ``freesound_id``), no group straddles two folds. Single-label: sklearn's
StratifiedGroupKFold on the same (label, verified) strata. Multi-label: each group becomes one row
holding its clips' label and subset counts, dealt to folds by :func:`weighted_iterative_stratification`;
every clip then takes its group's fold. Grouped fold files are named ``...-grouped.csv`` so that an
ungrouped file written before the groups existed is never reused. Without a ``group`` column (or with
one that is empty for every training clip) the folds are exactly the ungrouped ones above.

Classes with fewer clips than folds are refused for your own data (``kind: table`` / ``folders``), each
named with its count and the remedy; ``competition.rare_classes: warn`` (the default of the known
competitions) warns instead: some folds then validate none of the class's clips, and a fold holding a
class's only clip trains without it, but nothing is wrong with the folds or the scores (accuracy, MAP@3,
lwlrap and mAP are defined without the class), and long-tailed datasets (and the small test datasets
here) have such classes. sklearn's own warning about them is replaced by ours. Grouped folds warn
likewise about classes found in fewer groups than folds (the stronger condition), so the clip-count
warning is not repeated there.

Predefined folds. When the table has a ``fold`` column (ESC-50's 1-5, UrbanSound8K's 1-10), it is used
as given (:func:`predefined_folds`), written to ``k{n}-predefined-{subsets}.csv``.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from audiotag.competitions.base import Competition
from audiotag.core.atomic import atomic_write_text
from audiotag.core.errors import DataError
from audiotag.fetch.http import locked

log = logging.getLogger(__name__)


GROUP = "group"
FOLD = "fold"


def folds_path(comp: Competition, kind: str = "") -> Path:
    """The fold file; ``kind`` is "" (stratified), "grouped" or "predefined" (see ``fold_kind``)."""
    subsets = "all" if comp.cfg.subsets is None else "+".join(sorted(comp.cfg.subsets))
    if kind == "predefined":
        return comp.dir / "folds" / f"k{comp.cfg.n_folds}-predefined-{subsets}.csv"
    suffix = f"-{kind}" if kind else ""
    return comp.dir / "folds" / f"k{comp.cfg.n_folds}-seed{comp.cfg.fold_seed}-{subsets}{suffix}.csv"


def fold_kind(train: pd.DataFrame) -> str:
    """ "predefined" with a ``fold`` column, "grouped" with a ``group`` column set for some clip, else ""."""
    if FOLD in train.columns and train[FOLD].notna().any():
        return "predefined"
    if GROUP in train.columns and train[GROUP].notna().any():
        return "grouped"
    return ""


def assign_folds(comp: Competition, train: pd.DataFrame) -> np.ndarray:
    kind = fold_kind(train)
    if kind == "predefined":
        return predefined_folds(comp, train)
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
    if kind == "grouped":
        return grouped_folds(comp, train)
    index = np.zeros(len(train))
    folds = np.full(len(train), -1, dtype=np.int64)
    if comp.task == "single_label":
        strata = single_label_strata(train, n_folds)
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(index, strata)
    else:
        y = comp.label_matrix(train["labels"])
        subsets = pd.get_dummies(train["subset"]).to_numpy(dtype=np.float32)
        splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(index, np.concatenate([y, subsets], axis=1))
    warn_rare_classes(comp, train, n_folds)
    with warnings.catch_warnings():  # reported above in our words
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        for fold, (_, val_idx) in enumerate(splits):
            folds[val_idx] = fold
    return folds


def _column_source(comp: Competition, column: str) -> str:
    return f"{comp.name}: the clip table's {column!r} column ({comp.meta_path.name}, built from the raw CSV)"


def predefined_folds(comp: Competition, train: pd.DataFrame) -> np.ndarray:
    """The table's ``fold`` column, renumbered 0..k-1 in sorted order; k must be competition.n_folds."""
    where = _column_source(comp, FOLD)
    column = train[FOLD]
    if column.isna().any():
        missing = train.loc[column.isna(), "clip_id"].tolist()
        raise DataError(
            f"{where}: {len(missing)} training clip(s) have no fold (e.g. {missing[:3]}); give every "
            "training clip a fold, or drop the column to draw stratified folds"
        )
    numeric = pd.to_numeric(column, errors="coerce")
    bad = numeric.isna() | (numeric != numeric.round())
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        raise DataError(
            f"{where}: fold {column.iloc[row]!r} of clip {train['clip_id'].iloc[row]!r} is not an integer; "
            "folds must be integers such as 1..5"
        )
    values = numeric.astype(np.int64).to_numpy()
    given = np.unique(values)
    if len(given) != comp.cfg.n_folds:
        raise DataError(
            f"{where}: the data defines {len(given)} folds ({', '.join(map(str, given.tolist()))}) but "
            f"competition.n_folds is {comp.cfg.n_folds}; set competition.n_folds={len(given)} "
            "(--set competition.n_folds=...) to use the given folds"
        )
    folds = np.searchsorted(given, values).astype(np.int64)
    if GROUP in train.columns and train[GROUP].notna().any():
        spread = pd.Series(folds).groupby(train[GROUP].to_numpy()).nunique()
        if (spread > 1).any():
            log.warning(
                "folds: %d group(s) straddle the given folds (e.g. group %r); the given folds are used "
                "as they are",
                int((spread > 1).sum()),
                spread[spread > 1].index[0],
            )
    log.info("folds: using the %d predefined folds %s as 0..%d", len(given), given.tolist(), len(given) - 1)
    return folds


def _groups(comp: Competition, train: pd.DataFrame) -> np.ndarray:
    """Integer group codes of the training clips, after checking the column is usable."""
    where = _column_source(comp, GROUP)
    column = train[GROUP]
    if column.isna().any():
        missing = train.loc[column.isna(), "clip_id"].tolist()
        raise DataError(
            f"{where}: {len(missing)} of {len(train)} training clip(s) have no group (e.g. {missing[:3]}); "
            "give every training clip a group (its own id when it shares a source with no other clip), "
            "or drop the column"
        )
    codes, uniques = pd.factorize(column.astype(str), sort=True)
    n_folds = comp.cfg.n_folds
    if len(uniques) == 1:
        raise DataError(
            f"{where}: every training clip is in the one group {uniques[0]!r}, so no fold can be held "
            "out without it; fix the group column (it should name each clip's source) or drop it"
        )
    if len(uniques) < n_folds:
        raise DataError(
            f"{where}: the {len(train)} training clips fall into {len(uniques)} groups, fewer than "
            f"competition.n_folds={n_folds}: a fold needs at least one group; lower competition.n_folds "
            f"to {len(uniques)} or less, or split the groups"
        )
    return codes.astype(np.int64)


def _warn_thin_classes(labels: list[list[str]], groups: np.ndarray, n_folds: int) -> None:
    """Warn about classes whose clips fall into fewer groups than there are folds."""
    seen: dict[str, set[int]] = {}
    for names, group in zip(labels, groups, strict=True):
        for name in names:
            seen.setdefault(name, set()).add(int(group))
    thin = sorted((len(g), name) for name, g in seen.items() if len(g) < n_folds)
    if thin:
        log.warning(
            "folds: %d class(es) have fewer groups than the %d folds, so some folds hold none of their "
            "clips (validation on those classes is missing in those folds): %s",
            len(thin),
            n_folds,
            ", ".join(f"{name} ({count} group{'s' if count > 1 else ''})" for count, name in thin[:10])
            + (", ..." if len(thin) > 10 else ""),
        )


def warn_rare_classes(comp: Competition, train: pd.DataFrame, n_folds: int) -> list[str]:
    """Warn, naming them with their clip counts, about classes with fewer training clips than folds;
    their names (see the module docstring for why this warns and does not refuse)."""
    counts: dict[str, int] = {}
    for labels in train["labels"]:
        for name in labels:
            counts[name] = counts.get(name, 0) + 1
    rare = sorted((count, name) for name, count in counts.items() if count < n_folds)
    if rare:
        lowest = rare[0][0]
        lower = f"lower competition.n_folds to {lowest} or less, or " if lowest >= 2 else ""
        named = ", ".join(f"{name} ({count} clip{'s' if count > 1 else ''})" for count, name in rare[:10])
        named += ", ..." if len(rare) > 10 else ""
        cfg = getattr(comp, "cfg", None)
        policy = getattr(cfg, "rare_classes", None) or ("error" if getattr(cfg, "kind", None) else "warn")
        if policy == "error":
            raise DataError(
                f"{comp.name}: {len(rare)} class(es) have fewer training clips than the {n_folds} folds: "
                f"{named}; {lower}drop those classes' rows (or add clips), or set "
                "competition.rare_classes: warn to train with folds that validate none of their clips"
            )
        log.warning(
            "folds: %d class(es) have fewer training clips than the %d folds, so some folds validate none "
            "of their clips (and a fold holding a class's only clip trains without it): %s; to avoid it, "
            "%sdrop those classes' rows (or add clips)",
            len(rare),
            n_folds,
            named,
            lower,
        )
    return [name for _, name in rare]


def single_label_strata(train: pd.DataFrame, n_folds: int) -> list[str]:
    """The stratum of each training clip: "label|verified", or the label alone where the stratum has
    fewer clips than folds; refused when even the largest stratum cannot fill the folds."""
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
    return strata


def grouped_folds(comp: Competition, train: pd.DataFrame) -> np.ndarray:
    """Folds that keep each group whole (see the module docstring)."""
    n_folds, seed = comp.cfg.n_folds, comp.cfg.fold_seed
    groups = _groups(comp, train)
    log.info("folds: keeping groups whole (%s)", describe_groups(train[GROUP].astype(str)))
    labels = [list(x) for x in train["labels"]]
    _warn_thin_classes(labels, groups, n_folds)
    folds = np.full(len(train), -1, dtype=np.int64)
    if comp.task == "single_label":
        strata = single_label_strata(train, n_folds)
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        with warnings.catch_warnings():  # reported above in our words
            warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
            for fold, (_, val_idx) in enumerate(splitter.split(np.zeros(len(train)), strata, groups)):
                folds[val_idx] = fold
    else:
        y = comp.label_matrix(train["labels"])
        subsets = pd.get_dummies(train["subset"]).to_numpy(dtype=np.float64)
        per_clip = np.concatenate([y, subsets], axis=1)
        n_groups = int(groups.max()) + 1
        counts = np.zeros((n_groups, per_clip.shape[1]))
        np.add.at(counts, groups, per_clip)
        sizes = np.bincount(groups, minlength=n_groups).astype(np.float64)
        folds = weighted_iterative_stratification(counts, sizes, n_folds, seed)[groups]
    empty = sorted(set(range(n_folds)) - set(folds.tolist()))
    if empty:  # StratifiedGroupKFold can leave a fold empty with very few, very unequal groups
        raise DataError(
            f"{_column_source(comp, GROUP)}: fold(s) {empty} got no clips: the groups are too few or too "
            f"unequal for {n_folds} folds; lower competition.n_folds or split the largest groups"
        )
    return folds


def weighted_iterative_stratification(
    counts: np.ndarray, sizes: np.ndarray, n_folds: int, seed: int
) -> np.ndarray:
    """Deal rows (groups) to folds so each column's total (clips per label and per subset) and the clip
    count are split evenly: iterative stratification with each row weighted by its counts.

    ``counts``: (n_rows, n_columns) clip counts per row; ``sizes``: clips per row. As in Sechidis et
    al., the rarest column still to place goes first; its rows go largest count first (ties in a seeded
    random order). A row goes to the fold whose remaining want it fills best over *all* its columns:
    the one that most reduces sum_c (want[f, c] / share_c)^2, clip count included, where share_c is a
    fold's even share of column c (so a rare column weighs as much, relatively, as a frequent one).
    Plain iterative stratification looks at the current column only, which with multi-clip groups
    carrying several labels left the frequent labels (placed last) up to 68% off an even share on the
    tables of tests/test_grouped_folds.py; this keeps every class there within 9%."""
    rng = np.random.RandomState(seed)
    n_rows = len(counts)
    rank = np.empty(n_rows, dtype=np.int64)
    rank[rng.permutation(n_rows)] = np.arange(n_rows)  # a seeded tie-break order among equal rows
    weights = np.concatenate([counts, sizes[:, None]], axis=1)
    share = weights.sum(axis=0) / n_folds
    scale = 1.0 / np.maximum(share, 1e-9) ** 2
    want = np.tile(share, (n_folds, 1))
    folds = np.full(n_rows, -1, dtype=np.int64)
    todo = np.ones(n_rows, dtype=bool)
    while todo.any():
        left = counts[todo].sum(axis=0)
        if (left > 0).any():
            lowest = np.flatnonzero(left == left[left > 0].min())
            column = int(lowest[rng.randint(len(lowest))]) if len(lowest) > 1 else int(lowest[0])
        else:  # rows without any label or subset: balance the clip count alone
            column = weights.shape[1] - 1
        rows = np.flatnonzero(todo & (weights[:, column] > 0))
        for row in sorted(rows, key=lambda r: (-weights[r, column], rank[r])):
            gain = want @ (weights[row] * scale)
            best = np.flatnonzero(np.isclose(gain, gain.max(), rtol=0, atol=1e-9))
            fold = int(best[rng.randint(len(best))]) if len(best) > 1 else int(best[0])
            folds[row] = fold
            todo[row] = False
            want[fold] -= weights[row]
    return folds


def describe_groups(groups: pd.Series) -> str:
    """ "N groups; M clips share a group with another clip; the largest, G, has K clips"."""
    sizes = groups.value_counts()
    shared = int(sizes[sizes > 1].sum())
    return (
        f"{len(sizes)} groups; {shared} clip(s) share a group with another clip; the largest, "
        f"{sizes.index[0]!r}, has {int(sizes.iloc[0])} clip(s)"
    )


def ensure_folds(comp: Competition, table: pd.DataFrame) -> Path:
    """Write the fold file if it does not exist; check an existing one still covers the clips.

    The check and the write hold an exclusive lock on ``.<fold file>.lock`` beside it, so a second
    process waits for the first and then reuses its file instead of racing it."""
    train = comp.training_clips(table)
    path = folds_path(comp, fold_kind(train))
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
