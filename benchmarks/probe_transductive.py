"""Can the unlabelled test audio close a cross-library gap? Transductive variants of the aisfx
fusion probe, each scored on the hidden test labels for every C of one grid:

- ``train scaler``: today's probe (standardised with the training clips' statistics);
- ``own scaler``: each side standardised with its own statistics (train with train's, test with test's),
  which removes a shift of the embedding's mean and scale between the libraries;
- ``self-training``: after a first fit, the test clips join the training rows with the probe's own
  scores as soft targets (weight ``--pl-weight`` each), and the probe is refitted (``--rounds`` times);
- both together.

None of them reads a test label: they use the test audio, as a Kaggle solution may (test-time
pseudo-labelling is a common step in the FSDKaggle2019 write-ups). Needs a prepared multi-label
real-audio set (``benchmarks/accuracy.py --work W`` with the probe recipe leaves one in W):

    .venv/bin/python benchmarks/probe_transductive.py --set-dir W/sets/instruments-20x8-seed2026 \\
        --comp-dir W/workspace/instruments-20x8-seed2026/realset_instruments --layers 2,4
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from audiotag.config import FeatureConfig
from audiotag.config_files import load_group, validate
from audiotag.data.cache_reader import FeatureCache
from audiotag.embedding_cache import embed_clips, plan_embeddings
from audiotag.metrics import lwlrap
from audiotag.models.probe import LinearProbeConfig
from audiotag.models.representation import EmbeddingConfig
from audiotag.train.probe import fit_path, standardise

C_GRID = [0.01, 0.1, 1.0, 10.0]
Scaler = Callable[[np.ndarray], np.ndarray]


def scalers(x_train: np.ndarray, x_test: np.ndarray, own: bool) -> tuple[Scaler, Scaler]:
    fitted = standardise(x_train)
    if not own:
        return fitted.transform, fitted.transform
    return fitted.transform, standardise(x_test).transform


def hardened(scores: np.ndarray) -> np.ndarray:
    out = (scores >= 0.5).astype(np.float64)
    out[np.arange(len(scores)), scores.argmax(axis=1)] = 1.0
    return out


def self_trained(
    x: np.ndarray,
    y: np.ndarray,
    x_test: np.ndarray,
    c: float,
    probe: LinearProbeConfig,
    rounds: int,
    weight: float,
    hard: bool,
) -> np.ndarray:
    """Test scores after ``rounds`` refits with the test clips' own scores as targets: soft (the
    scores themselves) or hard (each clip's top class and every class scored 0.5 or more)."""
    fitted = fit_path(x, y, np.ones(len(x)), [c], probe, False, 0)[0]
    scores = fitted(x_test)
    for _ in range(rounds):
        rows = np.vstack([x, x_test])
        targets = np.vstack([y, hardened(scores) if hard else scores])
        weights = np.concatenate([np.ones(len(x)), np.full(len(x_test), weight)])
        fitted = fit_path(rows, targets, weights, [c], probe, False, 0)[0]
        scores = fitted(x_test)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--set-dir", type=Path, required=True, help="the set (holds hidden/test_truth.csv)")
    parser.add_argument("--comp-dir", type=Path, required=True, help="its prepared competition folder")
    parser.add_argument("--layers", default="2,4", help="aisfx layers to fuse, comma-separated, or all")
    parser.add_argument("--rounds", type=int, default=2, help="self-training refits")
    parser.add_argument("--pl-weight", type=float, default=0.5, help="a test clip's weight in a refit")
    parser.add_argument("--hard", action="store_true", help="hard pseudo-labels instead of the soft scores")
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
    took = time.time() - started
    print(f"embeddings {x_train.shape} train, {x_test.shape} test in {took:.0f} s", flush=True)
    probe = LinearProbeConfig(embedding=cfg, c_grid=C_GRID)
    for own in (False, True):
        on_train, on_test = scalers(x_train, x_test, own)
        xs, xt = on_train(x_train), on_test(x_test)
        name = "own scaler" if own else "train scaler"
        fits = fit_path(xs, y_train, np.ones(len(xs)), C_GRID, probe, False, 0)
        plain = [lwlrap(y_test, fitted(xt)) for fitted in fits]
        print(f"{name}: " + ", ".join(f"C={c:g} {s:.4f}" for c, s in zip(C_GRID, plain, strict=True)))
        started = time.time()
        selfish = [
            lwlrap(y_test, self_trained(xs, y_train, xt, c, probe, args.rounds, args.pl_weight, args.hard))
            for c in C_GRID
        ]
        kind = "hard" if args.hard else "soft"
        print(
            f"{name} + self-training ({kind}, {args.rounds} rounds, weight {args.pl_weight:g}): "
            + ", ".join(f"C={c:g} {s:.4f}" for c, s in zip(C_GRID, selfish, strict=True))
            + f" ({time.time() - started:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
