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

import audiomentations as A
import numpy as np
import pandas as pd
from probe_set import add_set_arguments, by_c, load_probe_set

from audiotag.config.schema import FeatureConfig
from audiotag.data.audio import decode
from audiotag.data.features import compute_logmel, make_extractor
from audiotag.models.embedding_plan import EmbeddingPlan, embed_clips
from audiotag.models.probe import LinearProbeConfig
from audiotag.scoring.metrics import lwlrap
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
    add_set_arguments(parser)
    parser.add_argument("--copies", type=int, default=3)
    args = parser.parse_args()
    data = load_probe_set(args.set_dir, args.comp_dir, args.layers)
    x_train, y_train, x_test, y_test = data.x_train, data.y_train, data.x_test, data.y_test
    started = time.time()
    x_aug = augmented_copies(data.train, args.copies, data.features, data.plan, data.layers)
    print(f"augmented copies {x_aug.shape} in {time.time() - started:.0f} s", flush=True)
    probe = LinearProbeConfig(embedding=data.embedding, c_grid=C_GRID)
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
        print(f"{name}: test lwlrap " + by_c(probe.c_grid, scores))


if __name__ == "__main__":
    main()
