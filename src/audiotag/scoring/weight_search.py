"""Blend weight searches: weights that maximise the competition metric of a blend on OOF predictions.

``search_weights`` maximises an ``OofScorer`` (the mean of the per-fold scores on the scored clips)
with one of ``WEIGHT_SEARCHES``: Caruana's greedy ensemble selection with replacement
(``hill_climb``) or Nelder-Mead on a softmax parametrisation of the simplex (``scipy``). A search
gives one weight per member, then (``per_class``) refines them class by class. ``nested_weight_cv``
measures a search honestly: weights fitted on the other folds, scored on the held-out fold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from audiotag.core.log import progress
from audiotag.scoring.blend import BlendRule, OofScorer, normalise_weights, weighted_sum

ScoreFn = Callable[[np.ndarray], float]
_IMPROVEMENT = 1e-12  # a step must beat the best score by more than this to count as better
_SIMPLEX_STEP = 1.0  # Nelder-Mead's initial simplex: one unit in softmax-logit space per member


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


def _hill_climb_members(space: np.ndarray, score_space: ScoreFn, iterations: int) -> np.ndarray:
    counts = hill_climb(space, score_space, iterations)
    return counts / counts.sum()


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


def _nelder_mead(score_weights: ScoreFn, starts: list[np.ndarray], iterations: int) -> np.ndarray:
    """Maximise ``score_weights(w)`` over the simplex with Nelder-Mead on w = softmax(z), from each
    start (weights), then drop members whose removal does not lower the score."""
    from scipy.optimize import minimize  # here: the config schema reads WEIGHT_SEARCHES without scipy
    from scipy.special import softmax

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


def _nelder_mead_members(space: np.ndarray, score_space: ScoreFn, iterations: int) -> np.ndarray:
    """Nelder-Mead from equal weights and from the best single member."""
    n_members = space.shape[0]
    singles = [score_space(space[m]) for m in range(n_members)]
    best_single = np.eye(n_members)[int(np.argmax(singles))]
    starts = [np.full(n_members, 1.0 / n_members), best_single]
    return _nelder_mead(lambda w: score_space(weighted_sum(space, w)), starts, iterations)


@dataclass(frozen=True)
class WeightSearch:
    """``members(space, score_space, iterations)``: one weight per member, (M,), for a blend space
    (M, n, C) scored by ``score_space``; ``column(score_weights, start, iterations)``: the members'
    weights of one class, from ``start`` (the global weights), scored by ``score_weights``."""

    members: Callable[[np.ndarray, ScoreFn, int], np.ndarray]
    column: Callable[[ScoreFn, np.ndarray, int], np.ndarray]


WEIGHT_SEARCHES: dict[str, WeightSearch] = {
    "hill_climb": WeightSearch(_hill_climb_members, _hill_climb_column),
    "scipy": WeightSearch(_nelder_mead_members, lambda score, start, n: _nelder_mead(score, [start], n)),
}
WeightSearchName = Literal[tuple(WEIGHT_SEARCHES)]  # type: ignore[valid-type]  # the config's allowed values


def _per_class_weights(
    space: np.ndarray, score_space: ScoreFn, search: WeightSearch, iterations: int, start: np.ndarray
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

        found = search.column(score_column, start, iterations)
        weights[:, c] = found
        current[:, c] = np.tensordot(found, column, axes=1)
    return weights


def search_weights(
    space: np.ndarray,
    rule: BlendRule,
    scorer: OofScorer,
    *,
    search: str = "hill_climb",
    iterations: int = 100,
    per_class: bool = False,
    scaled: bool = True,
) -> np.ndarray:
    """Blend weights that maximise ``scorer`` on OOF predictions ``space`` (M, n, C, in blend space).

    Returns (M,) weights, or (M, C) when ``per_class``: the global weights, then refined class by class.
    Every column lies on the simplex (``scaled=False``: as found, before the columns are scaled to sum
    1), and the blend's score is never below the best single member's.
    """
    if space.ndim != 3 or space.shape[1:] != scorer.truth.shape:
        raise ValueError(f"space {space.shape} must be (members, {', '.join(map(str, scorer.truth.shape))})")
    if search not in WEIGHT_SEARCHES:
        raise ValueError(f"unknown weight search {search!r}; allowed: {', '.join(WEIGHT_SEARCHES)}")

    def score_space(x: np.ndarray) -> float:
        return scorer(rule.inverse(x))

    found = WEIGHT_SEARCHES[search]
    weights = np.ones(1) if space.shape[0] == 1 else found.members(space, score_space, iterations)
    if per_class:
        weights = _per_class_weights(space, score_space, found, iterations, weights)
    return normalise_weights(weights, space.shape[0], space.shape[2]) if scaled else weights


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
