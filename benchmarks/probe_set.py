"""The aisfx embeddings of a prepared multi-label real-audio set, for the probe studies
(``probe_aug_copies.py``, ``probe_transductive.py``): the training clips and the hidden test clips
with their label matrices, embedded as the fusion probe embeds them."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from audiotag.config.files import load_group, validate
from audiotag.config.schema import FeatureConfig
from audiotag.data.cache_reader import FeatureCache
from audiotag.models.embedding_plan import EmbeddingPlan, embed_clips, plan_embeddings
from audiotag.models.representation import EmbeddingConfig

FEATURES = "aisfx_44k_96"


@dataclass
class ProbeSet:
    train: pd.DataFrame  # the training clips' rows of meta.parquet
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray  # from hidden/test_truth.csv
    features: FeatureConfig
    embedding: EmbeddingConfig
    plan: EmbeddingPlan
    layers: list[str]


def add_set_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set-dir", type=Path, required=True, help="the set (holds hidden/test_truth.csv)")
    parser.add_argument("--comp-dir", type=Path, required=True, help="its prepared competition folder")
    parser.add_argument("--layers", default="2,4", help="aisfx layers to fuse, comma-separated, or all")


def load_probe_set(set_dir: Path, comp_dir: Path, layers: str) -> ProbeSet:
    layer_spec = "all" if layers == "all" else [int(x) for x in layers.split(",")]
    meta = pd.read_parquet(comp_dir / "meta.parquet")
    train = meta[meta["split"] == "train"].reset_index(drop=True)
    classes = sorted({c for labels in train["labels"] for c in labels})
    truth = pd.read_csv(set_dir / "hidden" / "test_truth.csv")
    test = meta[meta["split"] == "test"].set_index("clip_id").loc[truth["fname"]].reset_index()

    def one_hot(rows: list) -> np.ndarray:
        y = np.zeros((len(rows), len(classes)))
        for i, labels in enumerate(rows):
            y[i, [classes.index(c) for c in labels]] = 1
        return y

    features = validate(FeatureConfig, load_group("features", FEATURES), FEATURES)
    cache = FeatureCache(next(p for p in (comp_dir / "cache").glob(f"{FEATURES}-*") if p.is_dir()))
    embedding = EmbeddingConfig(weights="aisfx", layers=layer_spec)
    plan = plan_embeddings(embedding, features, cache, train["clip_id"].tolist())
    names = plan.layers()
    started = time.time()
    x_train = embed_clips(plan, names, cache, train["clip_id"].tolist())
    x_test = embed_clips(plan, names, cache, test["clip_id"].tolist())
    took = time.time() - started
    print(f"embeddings {x_train.shape} train, {x_test.shape} test in {took:.0f} s", flush=True)
    return ProbeSet(
        train,
        x_train,
        one_hot(list(train["labels"])),
        x_test,
        one_hot([s.split(",") for s in truth["labels"]]),
        features,
        embedding,
        plan,
        names,
    )


def by_c(grid: list[float], scores: list[float]) -> str:
    """One score per C of the grid, as the studies print them: ``C=0.01 0.5164, C=0.1 0.5299``."""
    return ", ".join(f"C={c:g} {s:.4f}" for c, s in zip(grid, scores, strict=True))
