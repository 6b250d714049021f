"""Competition metrics as pure functions on arrays: MAP@k, lwlrap, mAP, ROC-AUC and d-prime.

``truth`` is a binary matrix (n_clips, n_classes) unless stated otherwise; ``scores`` has the same
shape, higher meaning more likely. Inputs are checked and a ValueError says what is wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm


def _check_scores(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D (n_clips, n_classes), got shape {scores.shape}")
    if scores.shape[0] == 0:
        raise ValueError("empty input: no clips to score")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinite values")
    return scores


def _check_pair(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = _check_scores(scores)
    truth = np.asarray(truth)
    if truth.shape != scores.shape:
        raise ValueError(f"truth shape {truth.shape} differs from scores shape {scores.shape}")
    if not np.isin(truth, (0, 1)).all():
        raise ValueError("truth must be binary (0/1)")
    return truth.astype(bool), scores


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores per row; ties go to the lower class index.

    The submission writer uses this same function, so CV is computed on what would be submitted.
    """
    scores = _check_scores(scores)
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def map_at_k(truth: np.ndarray, scores: np.ndarray, k: int = 3) -> float:
    """MAP@k as scored in Freesound General-Purpose Audio Tagging 2018.

    Each clip scores 1 / rank of its true label if that label is among the top k predictions
    (``top_k``), else 0; the result is the mean over clips. Only the first occurrence of the true
    label in the prediction list counts (the indices from ``top_k`` are unique anyway).

    ``truth``: class indices (n,) or a binary (n, C) matrix with exactly one positive per row.
    """
    scores = _check_scores(scores)
    truth = np.asarray(truth)
    if truth.ndim == 2:
        if truth.shape != scores.shape:
            raise ValueError(f"truth shape {truth.shape} differs from scores shape {scores.shape}")
        counts = (truth == 1).sum(axis=1)
        if (counts != 1).any():
            row = int(np.nonzero(counts != 1)[0][0])
            raise ValueError(
                f"single-label truth needs exactly one positive per row; row {row} has {counts[row]}"
            )
        truth = truth.argmax(axis=1)
    if truth.shape != (scores.shape[0],):
        raise ValueError(f"truth indices shape {truth.shape} does not match {scores.shape[0]} clips")
    if (truth < 0).any() or (truth >= scores.shape[1]).any():
        raise ValueError(f"truth indices must lie in [0, {scores.shape[1]})")
    hits = top_k(scores, k) == truth[:, None]
    ranks = np.argmax(hits, axis=1) + 1
    return float(np.where(hits.any(axis=1), 1.0 / ranks, 0.0).mean())


def _positive_precisions(truth: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """For every (clip, label) pair: precision at that label's rank (0 where the label is negative).

    A label's rank is the number of labels scored at or above it (ties counted pessimistically,
    as scikit-learn's ``label_ranking_average_precision_score`` does).
    """
    # rank[i, j] = #{l : s[i, l] >= s[i, j]}; hits[i, j] = #{l positive : s[i, l] >= s[i, j]}
    order = np.sort(scores, axis=1)
    n_classes = scores.shape[1]
    rank = n_classes - np.array([np.searchsorted(row, s, side="left") for row, s in zip(order, scores)])
    pos_sorted = np.sort(np.where(truth, scores, -np.inf), axis=1)
    hits = n_classes - np.array([np.searchsorted(row, s, side="left") for row, s in zip(pos_sorted, scores)])
    return np.where(truth, hits / rank, 0.0)


def per_class_lwlrap(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class label-weighted label-ranking average precision and each class's weight.

    lwlrap (Freesound Audio Tagging 2019): for every (clip, positive label) pair, the precision at
    that label's rank = (clip's positive labels ranked at or above it) / (its rank); the mean over
    all pairs. Per class: the mean over that class's pairs; weight = the class's share of all pairs,
    so ``sum(per_class * weight) == lwlrap``. Ties: the official Kaggle notebook used argsort (an
    arbitrary order among ties); here a tied label counts as ranked above, exactly as scikit-learn's
    LRAP does, so lwlrap equals ``label_ranking_average_precision_score(truth, scores,
    sample_weight=truth.sum(1))`` in every case. Clips without positives contribute nothing.
    """
    truth, scores = _check_pair(truth, scores)
    n_pairs = truth.sum()
    if n_pairs == 0:
        raise ValueError("truth has no positive label: lwlrap is undefined")
    precisions = _positive_precisions(truth, scores)
    per_class_pairs = truth.sum(axis=0)
    per_class = np.divide(
        precisions.sum(axis=0), per_class_pairs, out=np.zeros(truth.shape[1]), where=per_class_pairs > 0
    )
    return per_class, per_class_pairs / n_pairs


def lwlrap(truth: np.ndarray, scores: np.ndarray) -> float:
    """Label-weighted label-ranking average precision; see ``per_class_lwlrap``."""
    per_class, weights = per_class_lwlrap(truth, scores)
    return float(np.sum(per_class * weights))


def average_precision_per_class(truth: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Average precision of each class, NaN for classes without positives.

    AP = sum_n (R_n - R_{n-1}) P_n over the distinct score thresholds, highest first (clips with
    tied scores enter together), as scikit-learn's ``average_precision_score``.
    """
    truth, scores = _check_pair(truth, scores)
    out = np.full(truth.shape[1], np.nan)
    for c in range(truth.shape[1]):
        y, s = truth[:, c], scores[:, c]
        n_pos = y.sum()
        if n_pos == 0:
            continue
        order = np.argsort(-s, kind="stable")
        y, s = y[order], s[order]
        last_of_group = np.r_[s[1:] != s[:-1], True]
        tp = np.cumsum(y)[last_of_group]
        seen = np.nonzero(last_of_group)[0] + 1
        precision = tp / seen
        recall_gain = np.diff(np.r_[0, tp]) / n_pos
        out[c] = float(np.sum(recall_gain * precision))
    return out


@dataclass(frozen=True)
class MAPResult:
    value: float
    n_skipped: int
    per_class: np.ndarray


def mean_average_precision(truth: np.ndarray, scores: np.ndarray) -> MAPResult:
    """Macro mean of per-class AP over classes with at least one positive (others are skipped)."""
    per_class = average_precision_per_class(truth, scores)
    valid = ~np.isnan(per_class)
    if not valid.any():
        raise ValueError("no class has a positive clip: mAP is undefined")
    return MAPResult(float(per_class[valid].mean()), int((~valid).sum()), per_class)


def roc_auc_per_class(truth: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ROC-AUC per class in its Mann-Whitney form (ties count 1/2); NaN without both classes."""
    from scipy.stats import rankdata

    truth, scores = _check_pair(truth, scores)
    out = np.full(truth.shape[1], np.nan)
    for c in range(truth.shape[1]):
        y = truth[:, c]
        n_pos, n_neg = y.sum(), (~y).sum()
        if n_pos == 0 or n_neg == 0:
            continue
        ranks = rankdata(scores[:, c])  # average ranks give ties half credit
        out[c] = (ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return out


def d_prime(auc: float | np.ndarray) -> float | np.ndarray:
    """d' = sqrt(2) * Phi^{-1}(AUC), as reported for AudioSet."""
    return np.sqrt(2.0) * norm.ppf(auc)


def _map3(truth: np.ndarray, scores: np.ndarray) -> float:
    return map_at_k(truth, scores, k=3)


def _map(truth: np.ndarray, scores: np.ndarray) -> float:
    return mean_average_precision(truth, scores).value


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "map3": _map3,
    "lwlrap": lwlrap,
    "map": _map,
}


def score(metric: str, truth: np.ndarray, scores: np.ndarray) -> float:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(sorted(METRICS))}")
    return METRICS[metric](truth, scores)


def higher_is_better(metric: str) -> bool:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(sorted(METRICS))}")
    return True
