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

import numpy as np
from probe_set import add_set_arguments, by_c, load_probe_set

from audiotag.models.probe import LinearProbeConfig
from audiotag.scoring.metrics import lwlrap
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
    add_set_arguments(parser)
    parser.add_argument("--rounds", type=int, default=2, help="self-training refits")
    parser.add_argument("--pl-weight", type=float, default=0.5, help="a test clip's weight in a refit")
    parser.add_argument("--hard", action="store_true", help="hard pseudo-labels instead of the soft scores")
    args = parser.parse_args()
    data = load_probe_set(args.set_dir, args.comp_dir, args.layers)
    x_train, y_train, x_test, y_test = data.x_train, data.y_train, data.x_test, data.y_test
    probe = LinearProbeConfig(embedding=data.embedding, c_grid=C_GRID)
    for own in (False, True):
        on_train, on_test = scalers(x_train, x_test, own)
        xs, xt = on_train(x_train), on_test(x_test)
        name = "own scaler" if own else "train scaler"
        fits = fit_path(xs, y_train, np.ones(len(xs)), C_GRID, probe, False, 0)
        plain = [lwlrap(y_test, fitted(xt)) for fitted in fits]
        print(f"{name}: {by_c(C_GRID, plain)}")
        started = time.time()
        selfish = [
            lwlrap(y_test, self_trained(xs, y_train, xt, c, probe, args.rounds, args.pl_weight, args.hard))
            for c in C_GRID
        ]
        kind = "hard" if args.hard else "soft"
        print(
            f"{name} + self-training ({kind}, {args.rounds} rounds, weight {args.pl_weight:g}): "
            + by_c(C_GRID, selfish)
            + f" ({time.time() - started:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
