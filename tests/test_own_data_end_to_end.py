"""Your own data, end to end: ``prepare train ensemble`` through ``audiotag.cli.main.main`` on four made-up
``kind: table`` layouts (tests/own_data_layouts.py): one CSV with groups, curated + noisy subsets with
a ``sample_columns`` submission, UrbanSound8K's layout (the shipped YAML, ``--data-dir``), and a table
of segments. Each checks the submission's columns and order and that no group straddles folds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import label_ranking_average_precision_score

from audiotag.cli.main import main
from audiotag.data.cache_reader import FeatureCache
from audiotag.kaggle.inference import run_inference
from tests.own_data_layouts import (
    CLASSES,
    SAMPLE_ORDER,
    SEGMENT_SECONDS,
    US8K_CLASSES,
    cli_args,
    curated_noisy,
    grouped_single_label,
    segments_table,
    urbansound8k_folder,
)

pytestmark = pytest.mark.slow


def _fold_file(comp_dir: Path, pattern: str) -> pd.DataFrame:
    (path,) = comp_dir.glob(f"folds/{pattern}")
    return pd.read_csv(path)


def _groups_kept_whole(folds: pd.DataFrame, meta: pd.DataFrame) -> pd.DataFrame:
    merged = folds.merge(meta[["clip_id", "group"]], on="clip_id")
    assert len(merged) == len(folds) == int((meta["split"] == "train").sum())
    assert (merged.groupby("group")["fold"].nunique() == 1).all()
    return merged


def _scores(sub: pd.DataFrame, key: str) -> np.ndarray:
    values = sub.drop(columns=key).to_numpy()
    assert np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1
    return values


def test_one_csv_with_groups_and_its_own_id_column(tmp_path: Path, workspace: Path) -> None:
    path = grouped_single_label(tmp_path / "data")
    assert main(cli_args(path, "prepare", "train", "ensemble")) == 0
    comp_dir = workspace / "competition" / "own_grouped"
    sub = pd.read_csv(workspace / "submissions" / "own_grouped" / "table.csv")
    assert list(sub.columns) == ["clip", "prediction"]  # the sample's header, id column first
    assert sub["clip"].tolist() == [f"t{i}.wav" for i in range(4)]
    assert set(sub["prediction"]) <= set(CLASSES)  # k=1: one class name a row
    meta = pd.read_parquet(comp_dir / "meta.parquet")
    _groups_kept_whole(_fold_file(comp_dir, "k3-seed42-all-grouped.csv"), meta)
    report = json.loads((workspace / "submissions" / "own_grouped" / "table.json").read_text())
    assert report["metric"] == "accuracy" and 0 <= report["cv"]["mean"] <= 1
    # the ensemble stage's HTML report, for a competition given by a YAML path
    page = (workspace / "submissions" / "own_grouped" / "table.report.html").read_text()
    assert "<table" in page and "own_grouped" in page
    # the Kaggle package reads and writes the same id column and reproduces the submission
    assert main(["package", "-c", str(path), str(tmp_path / "bundle")]) == 0
    assert json.loads((tmp_path / "bundle" / "bundle.json").read_text())["id_column"] == "clip"
    out = run_inference(tmp_path / "bundle", tmp_path / "data", tmp_path / "sub.csv", workers=1, device="cpu")
    assert pd.read_csv(out).equals(sub)


def test_curated_and_noisy_subsets_with_sample_columns(tmp_path: Path, workspace: Path) -> None:
    path = curated_noisy(tmp_path / "data")
    assert main(cli_args(path, "prepare", "train", "ensemble")) == 0
    comp_dir = workspace / "competition" / "own_curated_noisy"
    sub = pd.read_csv(workspace / "submissions" / "own_curated_noisy" / "table.csv")
    assert list(sub.columns) == ["fname", *SAMPLE_ORDER]  # exactly the sample's columns, in its order
    assert sub["fname"].tolist() == ["x0.wav", "x1.wav", "x2.wav"]
    _scores(sub, "fname")
    meta = pd.read_parquet(comp_dir / "meta.parquet")
    train = meta[meta["split"] == "train"]
    assert train.groupby("subset").size().to_dict() == {"curated": 12, "noisy": 9}
    assert train.groupby("subset")["verified"].agg(set).to_dict() == {"curated": {True}, "noisy": {False}}
    folds = _fold_file(comp_dir, "k3-seed42-all.csv").merge(train, on="clip_id")
    assert len(folds) == 21 and set(folds["fold"]) == {0, 1, 2}
    assert folds.groupby("subset")["fold"].nunique().to_dict() == {"curated": 3, "noisy": 3}
    # noisy clips train (weighted by train.unverified_weight) but are not scored: the pooled OOF score is
    # lwlrap over the curated clips alone (scikit-learn's LRAP weighted by positives per clip)
    run = comp_dir / "runs" / "cnn_small"
    oof = pd.read_parquet(run / "oof.parquet").merge(train[["clip_id", "labels", "subset"]], on="clip_id")
    curated = oof[oof["subset"] == "curated"]
    truth = np.array([[c in labels for c in sorted(CLASSES)] for labels in curated["labels"]])
    expected = label_ranking_average_precision_score(
        truth, curated[sorted(CLASSES)].to_numpy(), sample_weight=truth.sum(axis=1)
    )
    pooled = json.loads((run / "metrics.json").read_text())["oof_pooled"]
    assert len(oof) == 21 and pooled == pytest.approx(expected, abs=1e-6)


def test_urbansound8k_layout_with_the_shipped_config(tmp_path: Path, workspace: Path) -> None:
    data = urbansound8k_folder(tmp_path)
    assert main([*cli_args("urbansound8k", "prepare", "train", "ensemble"), "--data-dir", str(data)]) == 0
    comp_dir = workspace / "competition" / "urbansound8k"
    meta = pd.read_parquet(comp_dir / "meta.parquet")
    assert len(meta) == 60 and (meta["split"] == "train").all() and "start" not in meta.columns
    assert meta["path"].str.contains(r"/audio/fold\d+/\d+-\d-0-\d\.wav$").all()
    assert json.loads((comp_dir / "vocabulary.json").read_text()) == {"classes": sorted(US8K_CLASSES)}
    csv = pd.read_csv(data / "metadata" / "UrbanSound8K.csv")
    folds = _fold_file(comp_dir, "k10-predefined-all.csv").merge(
        csv, left_on="clip_id", right_on="slice_file_name", suffixes=("", "_given")
    )
    assert len(folds) == 60 and (folds["fold"] == folds["fold_given"] - 1).all()  # given 1..10 as 0..9
    _groups_kept_whole(folds[["clip_id", "fold"]], meta)
    # the CSV's start/end (positions in the Freesound original) are not segments: whole 0.5 s files
    cache = FeatureCache(next(comp_dir.glob("cache/*")))
    assert all(cache.get(c).shape[0] == 26 for c in meta["clip_id"])  # 0.5 s at hop 320 (16 kHz)
    report = json.loads((workspace / "submissions" / "urbansound8k" / "table.json").read_text())
    assert report["submission"] is None and set(report["cv"]["folds"]) == {str(f) for f in range(10)}


def test_segments_of_recordings(tmp_path: Path, workspace: Path) -> None:
    path = segments_table(tmp_path / "data")
    assert main(cli_args(path, "prepare", "train", "ensemble")) == 0
    comp_dir = workspace / "competition" / "own_segments"
    meta = pd.read_parquet(comp_dir / "meta.parquet")
    train = meta[meta["split"] == "train"]
    assert len(train) == 18 and train["clip_id"].iloc[1] == "rec0.wav@0.8-1.6"
    np.testing.assert_allclose(train["end"] - train["start"], SEGMENT_SECONDS)
    np.testing.assert_allclose(train["duration"], SEGMENT_SECONDS)
    assert meta.loc[meta["split"] == "test", "start"].isna().all()
    cache = FeatureCache(next(comp_dir.glob("cache/*")))
    frames = {c: cache.get(c).shape[0] for c in meta["clip_id"]}
    assert {frames[c] for c in train["clip_id"]} == {41}  # 0.8 s at hop 320, centred: 12800 / 320 + 1
    _groups_kept_whole(_fold_file(comp_dir, "k3-seed42-all-grouped.csv"), meta)
    sub = pd.read_csv(workspace / "submissions" / "own_segments" / "table.csv")
    assert list(sub.columns) == ["fname", *sorted(CLASSES)]  # scores: vocabulary order
    assert sub["fname"].tolist() == ["q0.wav", "q1.wav", "q2.wav"]
    _scores(sub, "fname")
