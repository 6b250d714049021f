from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from audiotag.competitions.folds import ensure_folds, folds_path, load_folds
from audiotag.core.errors import DataError
from tests.fakes import FakeMulti, FakeSingle, make


def test_single_label_folds_are_stratified(tmp_path: Path) -> None:
    comp = make(FakeSingle, tmp_path, n_folds=5)
    table = comp.parse_clip_table()
    path = ensure_folds(comp, table)
    folds = load_folds(path).merge(table, on="clip_id")
    assert sorted(folds["fold"].unique()) == [0, 1, 2, 3, 4]
    per_class = folds.groupby([folds["labels"].str[0], "fold"]).size().unstack()
    # Strata are (label, verified): each stratum is balanced to within one clip, so a class to within two.
    assert ((per_class.max(axis=1) - per_class.min(axis=1)) <= 2).all()
    verified = folds[folds["verified"]].groupby("fold").size()
    assert verified.max() - verified.min() <= 5


def test_multilabel_folds_balance_classes_and_subsets(tmp_path: Path) -> None:
    comp = make(FakeMulti, tmp_path, n_folds=4)
    table = comp.parse_clip_table()
    folds = load_folds(ensure_folds(comp, table)).merge(table, on="clip_id")
    y = comp.label_matrix(folds["labels"])
    for fold in range(4):
        share = y[folds["fold"] == fold].sum(0) / y.sum(0)
        assert np.all(np.abs(share - 0.25) < 0.1)
    curated = folds[folds["subset"] == "curated"].groupby("fold").size()
    assert curated.max() - curated.min() <= 2


def test_fold_file_is_fixed_and_checked(tmp_path: Path) -> None:
    comp = make(FakeSingle, tmp_path, n_folds=3, fold_seed=7)
    table = comp.parse_clip_table()
    path = ensure_folds(comp, table)
    assert path == folds_path(comp) and "k3-seed7" in path.name
    before = path.read_bytes()
    assert ensure_folds(comp, table) == path and path.read_bytes() == before
    with pytest.raises(DataError, match="does not match the current training clips"):
        ensure_folds(comp, table.iloc[:-1])
    assert path.read_bytes() == before


def test_subsets_select_training_clips(tmp_path: Path) -> None:
    comp = make(FakeMulti, tmp_path, subsets=["curated"])
    table = comp.parse_clip_table()
    assert set(comp.training_clips(table)["subset"]) == {"curated"}
    bad = make(FakeMulti, tmp_path, subsets=["clean"])
    with pytest.raises(DataError, match="clean"):
        bad.training_clips(table)


def test_too_many_folds_is_refused(tmp_path: Path) -> None:
    comp = make(FakeSingle, tmp_path, n_folds=20)
    table = comp.parse_clip_table().iloc[:15]
    with pytest.raises(DataError, match="n_folds"):
        ensure_folds(comp, table)
