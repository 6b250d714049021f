"""Does a linear probe fitted on the embeddings of augmented copies of the training clips (seven-band
EQ, gain, low/high-pass, small pitch shifts: audiomentations) generalise better to an unseen sample
library? Fits the aisfx probe (fused layers) on the training clips alone and with K augmented copies
of each, and prints the hidden test's lwlrap for each C (the same C grid for both, so that the
comparison does not hang on the inner CV's choice).

Needs a prepared multi-label real-audio set (``benchmarks/accuracy.py --work W`` leaves one in W):

    .venv/bin/python benchmarks/probe_aug_copies.py --set-dir W/sets/instruments-20x8-seed2026 \\
        --comp-dir W/workspace/instruments-20x8-seed2026/realset_instruments --copies 3 --layers 2,4
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import audiomentations as A
import numpy as np
import pandas as pd

from audiotag.config import FeatureConfig
from audiotag.config_files import load_group, validate
from audiotag.data.audio import decode
from audiotag.data.cache_reader import FeatureCache
from audiotag.data.features import compute_logmel, make_extractor
from audiotag.embedding_cache import EmbeddingPlan, embed_clips, plan_embeddings
from audiotag.metrics import lwlrap
from audiotag.models.probe import LinearProbeConfig
from audiotag.models.representation import EmbeddingConfig
from audiotag.train.probe import fit_path, standardise

C_GRID = [0.001, 0.01, 0.1, 1.0, 10.0]


def augmentation() -> A.Compose:
    return A.Compose(
        [
            A.SevenBandParametricEQ(min_gain_db=-8, max_gain_db=8, p=1.0),
            A.Gain(min_gain_db=-6, max_gain_db=6, p=1.0),
            A.LowPassFilter(min_cutoff_freq=2000, max_cutoff_freq=8000, p=0.3),
            A.HighPassFilter(min_cutoff_freq=50, max_cutoff_freq=400, p=0.3),
            A.PitchShift(min_semitones=-1, max_semitones=1, p=0.3),
        ]
    )


class MemoryCache:
    """The ``get`` of a FeatureCache over log-mels held in memory."""

    def __init__(self) -> None:
        self.frames: dict[str, np.ndarray] = {}

    def get(self, clip_id: str) -> np.ndarray:
        return self.frames[clip_id]


def augmented_copies(
    train: pd.DataFrame, copies: int, features: FeatureConfig, plan: EmbeddingPlan, layers: list[str]
) -> np.ndarray:
    np.random.seed(0)  # audiomentations draws from the global generators
    random.seed(0)
    aug, extractor, cache = augmentation(), make_extractor(features), MemoryCache()
    keys = []
    for k in range(copies):
        for clip_id, path in zip(train["clip_id"], train["path"], strict=True):
            wave = decode(path, features.sample_rate).wave.astype(np.float32)
            moved = aug(samples=wave, sample_rate=features.sample_rate)
            keys.append(f"{clip_id}#{k}")
            cache.frames[keys[-1]] = compute_logmel(moved, features, extractor).astype(np.float16)
    return embed_clips(plan, layers, cache, keys)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--set-dir", type=Path, required=True, help="the set (holds hidden/test_truth.csv)")
    parser.add_argument("--comp-dir", type=Path, required=True, help="its prepared competition folder")
    parser.add_argument("--copies", type=int, default=3)
    parser.add_argument("--layers", default="2,4", help="aisfx layers to fuse, comma-separated, or all")
    args = parser.parse_args()
    layer_spec = "all" if args.layers == "all" else [int(x) for x in args.layers.split(",")]

    meta = pd.read_parquet(args.comp_dir / "meta.parquet")
    train = meta[meta["split"] == "train"].reset_index(drop=True)
    classes = sorted({c for labels in train["labels"] for c in labels})
    truth = pd.read_csv(args.set_dir / "hidden" / "test_truth.csv")
    test = meta[meta["split"] == "test"].set_index("clip_id").loc[truth["fname"]].reset_index()

    def one_hot(rows: list) -> np.ndarray:
        y = np.zeros((len(rows), len(classes)))
        for i, labels in enumerate(rows):
            y[i, [classes.index(c) for c in labels]] = 1
        return y

    y_train, y_test = one_hot(list(train["labels"])), one_hot([s.split(",") for s in truth["labels"]])
    features = validate(FeatureConfig, load_group("features", "aisfx_44k_96"), "aisfx_44k_96")
    cache = FeatureCache(next(p for p in (args.comp_dir / "cache").glob("aisfx_44k_96-*") if p.is_dir()))
    cfg = EmbeddingConfig(weights="aisfx", layers=layer_spec)
    plan = plan_embeddings(cfg, features, cache, train["clip_id"].tolist())
    layers = plan.layers()
    started = time.time()
    x_train = embed_clips(plan, layers, cache, train["clip_id"].tolist())
    x_test = embed_clips(plan, layers, cache, test["clip_id"].tolist())
    print(
        f"embeddings {x_train.shape} train, {x_test.shape} test in {time.time() - started:.0f} s", flush=True
    )
    started = time.time()
    x_aug = augmented_copies(train, args.copies, features, plan, layers)
    print(f"augmented copies {x_aug.shape} in {time.time() - started:.0f} s", flush=True)
    probe = LinearProbeConfig(embedding=cfg, c_grid=C_GRID)
    runs = {
        "training clips": (x_train, y_train),
        f"training clips + {args.copies} augmented copies": (
            np.vstack([x_train, x_aug]),
            np.vstack([y_train, np.tile(y_train, (args.copies, 1))]),
        ),
    }
    for name, (x, y) in runs.items():
        scaler = standardise(x)
        fits = fit_path(scaler.transform(x), y, np.ones(len(x)), probe.c_grid, probe, False, 0)
        scores = [lwlrap(y_test, fitted(scaler.transform(x_test))) for fitted in fits]
        print(
            f"{name}: test lwlrap "
            + ", ".join(f"C={c:g} {s:.4f}" for c, s in zip(probe.c_grid, scores, strict=True))
        )


if __name__ == "__main__":
    main()
