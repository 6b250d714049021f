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

The weight search (``search_weights``) maximises the competition metric of the blend on OOF
predictions only (``OofScorer``: the mean of the per-fold scores on the scored clips), either with
Caruana's greedy ensemble selection with replacement (``hill_climb``) or with Nelder-Mead on a softmax
parametrisation of the simplex (``scipy``). ``nested_weight_cv`` measures the search honestly: weights
fitted on the other folds, scored on the held-out fold.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.optimize import minimize
from scipy.special import softmax
from scipy.stats import rankdata

from audiotag.core.log import progress
from audiotag.scoring import metrics

__all__ = [
    "BlendRule",
    "OofScorer",
    "hill_climb",
    "nested_weight_cv",
    "normalise_weights",
    "scaled_ranks",
    "search_weights",
    "weighted_sum",
]

Method = Literal["mean", "geometric", "power", "rank"]
SearchKind = Literal["scipy", "hill_climb"]
METHODS: tuple[str, ...] = ("mean", "geometric", "power", "rank")
LOG_FLOOR = 1e-7  # probabilities are clipped to [LOG_FLOOR, 1] before a log or a negative power
_IMPROVEMENT = 1e-12  # a step must beat the best score by more than this to count as better
_SIMPLEX_STEP = 1.0  # Nelder-Mead's initial simplex: one unit in softmax-logit space per member


# --------------------------------------------------------------------------- blend rules


def scaled_ranks(scores: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """Per-column ranks of ``scores`` (n, C) scaled to [0, 1], computed separately within each group.

    Within a group of n rows the lowest score of a column gets 0 and the highest 1:
    ``(rank - 1) / (n - 1)`` with tied scores sharing their average rank; a group of one row gets 0.5.
    ``groups`` (n,) holds a group label per row; None ranks all rows together.
    """
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

    method: Method = "mean"
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

    def blend(
        self,
        predictions: Sequence[np.ndarray],
        weights: np.ndarray | Sequence[float] | None = None,
        groups: np.ndarray | None = None,
    ) -> np.ndarray:
        """Blend members' score matrices (each (n, C)); equal weights when ``weights`` is None."""
        space = np.stack([self.forward(p, groups) for p in predictions])
        n_members, _, n_classes = space.shape
        w = np.ones(n_members) if weights is None else np.asarray(weights, dtype=np.float64)
        return self.combine(space, normalise_weights(w, n_members, n_classes))


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


# --------------------------------------------------------------------------- weight search

ScoreFn = Callable[[np.ndarray], float]


def hill_climb(space: np.ndarray, score_space: ScoreFn, iterations: int) -> np.ndarray:
    """Caruana's greedy ensemble selection with replacement; returns member counts (M,).

    Start from the best single member; at every one of ``iterations`` steps add (again, if it is
    already in) the member whose addition gives the best score, even when that lowers the score.
    The counts of the best-scoring step are returned (so the result never scores below the best
    member); ties go to the earlier step and the lower member index. ``score_space`` scores a matrix
    in blend space.
    """
    n_members = space.shape[0]
    singles = [score_space(space[m]) for m in range(n_members)]
    counts = np.zeros(n_members, dtype=np.int64)
    counts[int(np.argmax(singles))] = 1
    running = space[int(np.argmax(singles))].copy()
    best_counts, best_score = counts.copy(), max(singles)
    for _ in range(iterations if n_members > 1 else 0):
        total = counts.sum() + 1
        candidates = [score_space((running + space[m]) / total) for m in range(n_members)]
        pick = int(np.argmax(candidates))
        counts[pick] += 1
        running += space[pick]
        if candidates[pick] > best_score + _IMPROVEMENT:
            best_counts, best_score = counts.copy(), candidates[pick]
    return best_counts


def _nelder_mead(score_weights: ScoreFn, starts: list[np.ndarray], iterations: int) -> np.ndarray:
    """Maximise ``score_weights(w)`` over the simplex with Nelder-Mead on w = softmax(z), from each
    start (weights), then drop members whose removal does not lower the score."""
    n_members = len(starts[0])
    best_w, best_score = starts[0], -np.inf
    for start in starts:
        z0 = np.log(start + 1e-3)
        simplex = z0 + _SIMPLEX_STEP * np.vstack([np.zeros(n_members), np.eye(n_members)])
        result = minimize(
            lambda z: -score_weights(softmax(z)),
            z0,
            method="Nelder-Mead",
            options={"maxiter": iterations, "initial_simplex": simplex, "xatol": 1e-3, "fatol": 1e-9},
        )
        for candidate in (softmax(result.x), start):
            score = score_weights(candidate)
            if score > best_score + _IMPROVEMENT:
                best_w, best_score = candidate, score
    return _prune(best_w, score_weights, best_score)


def _prune(weights: np.ndarray, score_weights: ScoreFn, score: float) -> np.ndarray:
    """Zero the smallest weights one at a time while that does not lower the score."""
    weights = weights.copy()
    changed = True
    while changed:
        changed = False
        for m in np.argsort(weights):
            if weights[m] == 0 or np.count_nonzero(weights) == 1:
                continue
            trial = weights.copy()
            trial[m] = 0.0
            trial /= trial.sum()
            trial_score = score_weights(trial)
            if trial_score >= score - _IMPROVEMENT:
                weights, score, changed = trial, max(score, trial_score), True
                break
    return weights


def _global_weights(
    space: np.ndarray, score_space: ScoreFn, search: SearchKind, iterations: int
) -> np.ndarray:
    n_members = space.shape[0]
    if n_members == 1:
        return np.ones(1)
    if search == "hill_climb":
        counts = hill_climb(space, score_space, iterations)
        return counts / counts.sum()
    singles = [score_space(space[m]) for m in range(n_members)]
    best_single = np.eye(n_members)[int(np.argmax(singles))]
    starts = [np.full(n_members, 1.0 / n_members), best_single]
    return _nelder_mead(lambda w: score_space(weighted_sum(space, w)), starts, iterations)


def _per_class_weights(
    space: np.ndarray, score_space: ScoreFn, search: SearchKind, iterations: int, start: np.ndarray
) -> np.ndarray:
    """Refine global weights class by class (one pass, classes in order), each class's weights
    searched with the metric of the whole blend while the other classes keep theirs."""
    n_classes = space.shape[2]
    weights = np.repeat(start[:, None], n_classes, axis=1)
    current = weighted_sum(space, weights)
    for c in progress(range(n_classes), desc="per-class weights", unit="class"):
        column = space[:, :, c]

        def score_column(w: np.ndarray, c: int = c, column: np.ndarray = column) -> float:
            trial = current.copy()
            trial[:, c] = np.tensordot(w, column, axes=1)
            return score_space(trial)

        if search == "hill_climb":
            found = _hill_climb_column(score_column, start, iterations)
        else:
            found = _nelder_mead(score_column, [start], iterations)
        weights[:, c] = found
        current[:, c] = np.tensordot(found, column, axes=1)
    return weights


def _hill_climb_column(score_weights: ScoreFn, start: np.ndarray, iterations: int) -> np.ndarray:
    """Hill climbing for one class: from the global weights (as counts over their common
    denominator, at most 1000), add one member at a time and keep the best-scoring step."""
    counts = _as_counts(start)
    best, best_score = counts / counts.sum(), score_weights(counts / counts.sum())
    for _ in range(iterations):
        candidates = []
        for m in range(len(counts)):
            trial = counts.copy()
            trial[m] += 1
            candidates.append(score_weights(trial / trial.sum()))
        pick = int(np.argmax(candidates))
        counts[pick] += 1
        if candidates[pick] > best_score + _IMPROVEMENT:
            best, best_score = counts / counts.sum(), candidates[pick]
    return best


def _as_counts(weights: np.ndarray) -> np.ndarray:
    for denominator in range(1, 1001):
        counts = np.round(weights * denominator)
        if np.allclose(counts / denominator, weights, atol=1e-9) and counts.sum() > 0:
            return counts
    return np.round(weights * 1000) + (weights > 0)


def search_weights(
    space: np.ndarray,
    rule: BlendRule,
    scorer: OofScorer,
    *,
    search: SearchKind = "hill_climb",
    iterations: int = 100,
    per_class: bool = False,
) -> np.ndarray:
    """Blend weights that maximise ``scorer`` on OOF predictions ``space`` (M, n, C, in blend space).

    Returns (M,) weights, or (M, C) when ``per_class``: the global weights, then refined class by class.
    Every column lies on the simplex, and the blend's score is never below the best single member's.
    """
    if space.ndim != 3 or space.shape[1:] != scorer.truth.shape:
        raise ValueError(f"space {space.shape} must be (members, {', '.join(map(str, scorer.truth.shape))})")

    def score_space(x: np.ndarray) -> float:
        return scorer(rule.inverse(x))

    weights = _global_weights(space, score_space, search, iterations)
    if per_class:
        weights = _per_class_weights(space, score_space, search, iterations, weights)
    return normalise_weights(weights, space.shape[0], space.shape[2])


def nested_weight_cv(
    space: np.ndarray, scorer: OofScorer, fit: Callable[[np.ndarray, OofScorer], np.ndarray], rule: BlendRule
) -> tuple[dict[int, float], dict[int, np.ndarray]]:
    """Honest CV of a weight search: for every fold k, ``fit`` weights on the other folds' OOF rows and
    score the blend on fold k. Returns the per-fold scores and the weights fitted for each fold."""
    scores: dict[int, float] = {}
    fitted: dict[int, np.ndarray] = {}
    for fold in scorer.fold_ids:
        held_out = scorer.folds == fold
        weights = fit(space[:, ~held_out], scorer.select(~held_out))
        fitted[fold] = weights
        scores[fold] = scorer.select(held_out).fold_scores(rule.combine(space[:, held_out], weights))[fold]
    return scores, fitted
