"""Blending math: pure functions on prediction matrices, no files.

Every blend rule is a weighted arithmetic mean in a *blend space*::

    blend(P_1..P_M; w) = g^-1( sum_m w_m * g(P_m) ),    w_m >= 0,  sum_m w_m = 1

with ``g`` applied element-wise (or per class column for ranks):

- ``mean``:      g(p) = p                      (weighted arithmetic mean)
- ``geometric``: g(p) = log(max(p, 1e-7))      (weighted geometric mean, prod_m p_m ** w_m)
- ``power``:     g(p) = p ** q, q != 0         (weighted power mean, (sum_m w_m p_m ** q) ** (1/q))
- ``rank``:      g(P) = per-class ranks scaled to [0, 1], g^-1 = identity  (rank averaging)

Weights are one number per member, shape (M,), or one per member and class, shape (M, C)
(``per_class``); in both cases every column of weights lies on the simplex.

Ranks are computed *within groups* of rows: for out-of-fold predictions the group is the fold, i.e.
exactly the clips that one fold model predicted and that one fold score is computed on, so a fold's
blend never depends on another fold's predictions. Test predictions of a member are averaged over its
fold models by the same rule (``BlendRule.fold_average``): the mean over folds of ``g`` of each fold
model's test predictions; for ``rank`` each fold model's test predictions are ranked over all test
clips, then the ranks are averaged over the fold models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from audiotag.scoring import metrics

METHODS: tuple[str, ...] = ("mean", "geometric", "power", "rank")  # the blend rules, as configs name them
BlendMethod = Literal[METHODS]  # type: ignore[valid-type]  # the config schema's allowed values
LOG_FLOOR = 1e-7  # probabilities are clipped to [LOG_FLOOR, 1] before a log or a negative power


# --------------------------------------------------------------------------- blend rules


def scaled_ranks(scores: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """Per-column ranks of ``scores`` (n, C) scaled to [0, 1], computed separately within each group.

    Within a group of n rows the lowest score of a column gets 0 and the highest 1:
    ``(rank - 1) / (n - 1)`` with tied scores sharing their average rank; a group of one row gets 0.5.
    ``groups`` (n,) holds a group label per row; None ranks all rows together.
    """
    from scipy.stats import rankdata  # here: the config schema reads METHODS without loading scipy

    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D (n_clips, n_classes), got shape {scores.shape}")
    if groups is None:
        groups = np.zeros(len(scores), dtype=np.int64)
    groups = np.asarray(groups)
    if groups.shape != (len(scores),):
        raise ValueError(f"groups must have one label per row ({len(scores)}), got shape {groups.shape}")
    out = np.empty_like(scores)
    for group in np.unique(groups):
        rows = np.flatnonzero(groups == group)
        if len(rows) == 1:
            out[rows] = 0.5
            continue
        out[rows] = (rankdata(scores[rows], method="average", axis=0) - 1.0) / (len(rows) - 1.0)
    return out


def normalise_weights(weights: np.ndarray, n_members: int, n_classes: int | None = None) -> np.ndarray:
    """Check ``weights`` ((M,) or (M, C)) are finite and non-negative, and scale each column to sum 1."""
    weights = np.asarray(weights, dtype=np.float64)
    expected = [(n_members,)] + ([(n_members, n_classes)] if n_classes is not None else [])
    if weights.shape not in expected:
        raise ValueError(f"weights must have shape {' or '.join(map(str, expected))}, got {weights.shape}")
    if not np.isfinite(weights).all() or (weights < 0).any():
        raise ValueError(f"weights must be finite and non-negative, got {weights.tolist()}")
    total = weights.sum(axis=0)
    if (total <= 0).any():
        raise ValueError("weights must not all be zero (for every class when they are per class)")
    return weights / total


def weighted_sum(space: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``sum_m weights[m] * space[m]`` for ``space`` (M, n, C) and weights (M,) or (M, C)."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim == 1:
        return np.tensordot(weights, space, axes=1)
    return np.einsum("mc,mnc->nc", weights, space)


@dataclass(frozen=True)
class BlendRule:
    """One of ``METHODS``; ``power`` is the exponent q of the power mean (not 0: use ``geometric``)."""

    method: str = "mean"
    power: float = 2.0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown blend method {self.method!r}; allowed: {', '.join(METHODS)}")
        if self.method == "power" and (self.power == 0 or not np.isfinite(self.power)):
            raise ValueError(
                f"power must be finite and non-zero (the limit q -> 0 is 'geometric'), got {self.power}"
            )

    def forward(self, scores: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
        """One member's scores (n, C) in blend space; ``groups`` only matter for ``rank``."""
        scores = np.asarray(scores, dtype=np.float64)
        if self.method == "mean":
            return scores
        if self.method == "geometric":
            return np.log(np.clip(scores, LOG_FLOOR, 1.0))
        if self.method == "power":
            floor = LOG_FLOOR if self.power < 0 else 0.0
            return np.clip(scores, floor, 1.0) ** self.power
        return scaled_ranks(scores, groups)

    def inverse(self, space: np.ndarray) -> np.ndarray:
        """From blend space back to scores; monotone increasing, so rankings are unchanged."""
        if self.method == "geometric":
            return np.exp(space)
        if self.method == "power":
            return np.maximum(space, 0.0) ** (1.0 / self.power)
        return space

    def fold_average(self, fold_scores: Sequence[np.ndarray]) -> np.ndarray:
        """Test predictions of one member's fold models (each (n_test, C)) averaged by this rule, in
        blend space: ``mean_k g(P_k)``. For ``rank``, each fold model's test predictions are ranked
        over all test clips before averaging."""
        if not fold_scores:
            raise ValueError("no fold predictions to average")
        if self.method == "mean":  # the same float operations as the train stage's fold mean
            return np.mean(np.stack([np.asarray(s, dtype=np.float64) for s in fold_scores]), axis=0)
        return np.mean(np.stack([self.forward(s) for s in fold_scores]), axis=0)

    def combine(self, space: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """The blend of members already in blend space (M, n, C) with weights (M,) or (M, C)."""
        return self.inverse(weighted_sum(space, weights))


# --------------------------------------------------------------------------- scoring OOF


@dataclass(frozen=True, eq=False)
class OofScorer:
    """The competition metric on the scored OOF clips: one score per fold, and their mean.

    ``truth`` (n, C) and ``folds`` (n,) describe only the clips that are scored (the verified clips of
    each fold, or all of a fold's clips when it has no verified one, as the train stage scores them).
    """

    metric: str
    truth: np.ndarray
    folds: np.ndarray

    def __post_init__(self) -> None:
        if self.truth.ndim != 2 or self.folds.shape != (len(self.truth),):
            raise ValueError(f"truth {self.truth.shape} and folds {self.folds.shape} do not match")

    @property
    def fold_ids(self) -> list[int]:
        return [int(f) for f in np.unique(self.folds)]

    def fold_scores(self, scores: np.ndarray) -> dict[int, float]:
        if scores.shape != self.truth.shape:
            raise ValueError(f"scores {scores.shape} do not match the scored clips {self.truth.shape}")
        return {
            fold: metrics.score(self.metric, self.truth[self.folds == fold], scores[self.folds == fold])
            for fold in self.fold_ids
        }

    def __call__(self, scores: np.ndarray) -> float:
        """The mean of the per-fold scores: the CV number every report shows."""
        return float(np.mean(list(self.fold_scores(scores).values())))

    def select(self, keep: np.ndarray) -> OofScorer:
        """The scorer of the rows where ``keep`` (n,) is true."""
        return OofScorer(self.metric, self.truth[keep], self.folds[keep])
