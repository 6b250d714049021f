"""Competition metrics as pure functions on numpy arrays.

Notation: ``scores`` is an (n_clips, n_classes) array of real, finite scores (higher = more likely);
``truth`` is a binary (n_clips, n_classes) matrix of the same shape, or, for the single-label metric
MAP@k and accuracy, an integer array (n_clips,) of class indices. Every function checks its inputs and raises
ValueError naming what is wrong. Each function's docstring gives its formula and source.

``METRICS`` maps the metric names used in configs to ``f(truth, scores) -> float``; ``score`` dispatches.
The config schema takes its allowed metric names from ``METRICS``, so scipy is imported only where a
function uses it: reading a config (every CLI command) does not load scipy.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

_NUMERIC_KINDS = "biuf"


# --------------------------------------------------------------------------- input checks


def _first_index(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(mask)[0])


def _check_scores(scores: np.ndarray) -> np.ndarray:
    """``scores`` as a 2-D float64 array after checking it is numeric, 2-D and has no NaN/inf."""
    scores = np.asarray(scores)
    if scores.dtype.kind not in _NUMERIC_KINDS:
        raise ValueError(f"scores must be a real numeric array, got dtype {scores.dtype}")
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D (n_clips, n_classes), got shape {scores.shape}")
    return scores.astype(np.float64, copy=False)


def _shape_mismatch(truth: np.ndarray, scores: np.ndarray) -> ValueError:
    return ValueError(
        f"truth and scores must have the same shape, got truth {truth.shape} and scores {scores.shape}"
    )


def _check_nonempty_finite(scores: np.ndarray) -> None:
    if scores.size == 0:
        raise ValueError(
            f"empty input: scores has shape {scores.shape}; need at least one clip and one class"
        )
    finite = np.isfinite(scores)
    if not finite.all():
        n_nan = int(np.isnan(scores).sum())
        n_inf = int(np.isinf(scores).sum())
        row, col = _first_index(~finite)
        raise ValueError(
            f"scores contain {n_nan} NaN and {n_inf} infinite value(s); "
            f"first at row {row}, column {col} ({scores[row, col]})"
        )


def _check_binary_truth(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(truth as bool, scores as float64) for the multi-label metrics, after all input checks."""
    scores = _check_scores(scores)
    truth = np.asarray(truth)
    if truth.shape != scores.shape:
        raise _shape_mismatch(truth, scores)
    _check_nonempty_finite(scores)
    return _as_bool(truth), scores


def _as_bool(truth: np.ndarray) -> np.ndarray:
    if truth.dtype.kind not in _NUMERIC_KINDS:
        raise ValueError(f"truth must be a binary (0/1) numeric array, got dtype {truth.dtype}")
    bad = (truth != 0) & (truth != 1)
    if bad.any():
        where = _first_index(bad)
        raise ValueError(
            f"truth must be binary (0/1); found {int(bad.sum())} other value(s), "
            f"first {truth[where].item()!r} at index {where}"
        )
    return truth.astype(bool)


def _check_single_label_truth(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(true class index per clip, scores as float64) from index (n,) or one-hot (n, C) truth."""
    scores = _check_scores(scores)
    truth = np.asarray(truth)
    n_clips, n_classes = scores.shape
    if truth.ndim == 2:
        if truth.shape != scores.shape:
            raise _shape_mismatch(truth, scores)
        _check_nonempty_finite(scores)
        positives = _as_bool(truth).sum(axis=1)
        wrong = np.flatnonzero(positives != 1)
        if wrong.size:
            row = int(wrong[0])
            raise ValueError(
                "single-label truth must have exactly one positive per row; "
                f"{wrong.size} row(s) do not, first row {row} with {int(positives[row])} positives"
            )
        return np.argmax(truth, axis=1), scores
    if truth.ndim != 1:
        raise ValueError(
            f"truth must be class indices (n_clips,) or a one-hot matrix (n_clips, n_classes), "
            f"got shape {truth.shape}"
        )
    if truth.shape[0] != n_clips:
        raise ValueError(
            f"truth and scores must have the same number of clips, got truth {truth.shape} "
            f"and scores {scores.shape}"
        )
    if truth.dtype.kind not in "iu":
        raise ValueError(f"1-D truth must hold integer class indices, got dtype {truth.dtype}")
    _check_nonempty_finite(scores)
    out_of_range = (truth < 0) | (truth >= n_classes)
    if out_of_range.any():
        row = int(np.flatnonzero(out_of_range)[0])
        raise ValueError(f"truth class indices must lie in [0, {n_classes}); row {row} has {int(truth[row])}")
    return truth.astype(np.intp), scores


# --------------------------------------------------------------------------- ranking


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Class indices of the ``k`` highest scores of each row, best first; shape (n_clips, k).

    Ties are broken by the lower class index first, i.e. the result is
    ``np.argsort(-scores, axis=1, kind="stable")[:, :k]``. The submission writer uses this function,
    so a cross-validation score is computed on exactly the labels that would be submitted.
    """
    scores = _check_scores(scores)
    _check_nonempty_finite(scores)
    if isinstance(k, bool):
        raise ValueError(f"k must be a positive integer, got {k!r}")
    try:
        k = operator.index(k)
    except TypeError:
        raise ValueError(f"k must be a positive integer, got {k!r}") from None
    n_classes = scores.shape[1]
    if not 1 <= k <= n_classes:
        raise ValueError(f"k must be between 1 and the number of classes ({n_classes}), got {k}")
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def _precision_at_own_rank(truth: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """For every element (i, j), along rows:
    ``|{l : truth[i, l], scores[i, l] >= scores[i, j]}| / |{l : scores[i, l] >= scores[i, j]}|``.

    Everything tied with an element counts as ranked at or above it (scikit-learn's convention).
    """
    n_rows, n_cols = scores.shape
    order = np.argsort(-scores, axis=1, kind="stable")
    sorted_scores = np.take_along_axis(scores, order, axis=1)
    positives_so_far = np.cumsum(np.take_along_axis(truth, order, axis=1), axis=1, dtype=np.int32)
    # Position of the last member of each element's tie group: a suffix minimum over group ends.
    is_group_end = np.ones((n_rows, n_cols), dtype=bool)
    is_group_end[:, :-1] = sorted_scores[:, :-1] != sorted_scores[:, 1:]
    group_end = np.where(is_group_end, np.arange(n_cols), n_cols)
    group_end = np.flip(np.minimum.accumulate(np.flip(group_end, axis=1), axis=1), axis=1)
    precision_sorted = np.take_along_axis(positives_so_far, group_end, axis=1) / (group_end + 1.0)
    precision = np.empty_like(precision_sorted)
    np.put_along_axis(precision, order, precision_sorted, axis=1)
    return precision


# --------------------------------------------------------------------------- MAP@k (FSDKaggle2018)


def map_at_k(truth: np.ndarray, scores: np.ndarray, k: int = 3) -> float:
    """Mean average precision at ``k`` for single-label clips (Freesound General-Purpose Audio Tagging 2018).

    With ``p_i = top_k(scores, k)[i]`` and ``y_i`` the true class of clip i::

        MAP@k = (1/n) * sum_i  1 / (r_i + 1)   if y_i == p_i[r_i] for some r_i < k, else 0

    Only the first occurrence of the true label in ``p_i`` would count (as in Kaggle's ``apk``); with
    ``top_k`` the predicted indices of a row are distinct, so this never matters. Ties in score are
    broken by the lower class index, exactly as in the submission.

    ``truth`` is an integer array (n_clips,) of class indices or a binary (n_clips, n_classes) matrix
    with exactly one positive per row.
    """
    labels, scores = _check_single_label_truth(truth, scores)
    predicted = top_k(scores, k)
    hits = predicted == labels[:, None]
    rank = np.argmax(hits, axis=1)  # first hit; 0 when there is none, masked below
    return float(np.mean(np.where(hits.any(axis=1), 1.0 / (rank + 1.0), 0.0)))


def accuracy(truth: np.ndarray, scores: np.ndarray) -> float:
    """Top-1 accuracy for single-label clips: the share of clips whose best-scored class is the true one.

    With ``p_i = top_k(scores, 1)[i, 0]`` (ties broken by the lower class index, as in the submission)
    and ``y_i`` the true class of clip i::

        accuracy = (1/n) * sum_i [p_i == y_i]

    equal to ``map_at_k(truth, scores, k=1)`` and to ``sklearn.metrics.accuracy_score(y, p)``.
    ``truth`` is an integer array (n_clips,) of class indices or a binary (n_clips, n_classes) matrix
    with exactly one positive per row.
    """
    labels, scores = _check_single_label_truth(truth, scores)
    return float(np.mean(top_k(scores, 1)[:, 0] == labels))


# --------------------------------------------------------------------------- lwlrap (FSDKaggle2019)


def per_class_lwlrap(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class label-weighted label-ranking average precision and the weight of each class.

    For clip i and one of its positive labels c, with ``rank_i(c) = |{l : s_il >= s_ic}|``::

        prec_i(c) = |{l positive for i : s_il >= s_ic}| / rank_i(c)
        lwlrap_c  = mean of prec_i(c) over the clips i where c is positive   (0 if there are none)
        weight_c  = (number of positives of class c) / (number of positives of all classes)

    so ``np.sum(per_class * weight) == lwlrap(truth, scores)``. Ties follow scikit-learn's
    ``label_ranking_average_precision_score`` (a tied label counts as ranked at or above), not the
    arbitrary argsort order of the official Kaggle colab; see ``lwlrap``. Raises ValueError when
    ``truth`` has no positive label at all.
    """
    truth, scores = _check_binary_truth(truth, scores)
    labels_per_class = truth.sum(axis=0)
    n_positives = int(labels_per_class.sum())
    if n_positives == 0:
        raise ValueError(f"lwlrap needs at least one positive label; truth of shape {truth.shape} has none")
    precision = _precision_at_own_rank(truth, scores)
    precision_sum = np.where(truth, precision, 0.0).sum(axis=0)
    per_class = precision_sum / np.maximum(1, labels_per_class)
    weight = labels_per_class / n_positives
    return per_class, weight


def lwlrap(truth: np.ndarray, scores: np.ndarray) -> float:
    """Label-weighted label-ranking average precision (Freesound Audio Tagging 2019).

    Over all (clip i, positive label c) pairs, with ``rank_i(c) = |{l : s_il >= s_ic}|``::

        lwlrap = (1 / #pairs) * sum_{(i, c)} |{l positive for i : s_il >= s_ic}| / rank_i(c)

    Clips without a positive label have no pairs and contribute nothing; ValueError if there are no
    positives at all. Ties: the official colab ranked with argsort, which orders tied labels
    arbitrarily; here every label tied with c counts as ranked at or above it, the convention of
    ``sklearn.metrics.label_ranking_average_precision_score``. Hence, ties included,
    ``lwlrap(t, s) == label_ranking_average_precision_score(t, s, sample_weight=t.sum(1))`` on the
    clips that have a positive label. Computed as ``np.sum(per_class * weight)`` of ``per_class_lwlrap``.
    """
    per_class, weight = per_class_lwlrap(truth, scores)
    return float(np.sum(per_class * weight))


# --------------------------------------------------------------------------- AP / mAP (AudioSet)


def average_precision_per_class(truth: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Average precision of each class (column); NaN for a class without positives.

    Defined as ``sklearn.metrics.average_precision_score``: over the distinct score thresholds
    t_1 > t_2 > ... of the class, with precision P_n and recall R_n of "score >= t_n"::

        AP = sum_n (R_n - R_{n-1}) * P_n,   R_0 = 0

    Clips tied in score enter together at one threshold. Equivalently, AP is the mean over the
    positive clips j of ``|{positive i : s_i >= s_j}| / |{i : s_i >= s_j}|``.
    """
    truth, scores = _check_binary_truth(truth, scores)
    positives = truth.sum(axis=0)
    precision = _precision_at_own_rank(np.ascontiguousarray(truth.T), np.ascontiguousarray(scores.T)).T
    precision_sum = np.where(truth, precision, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(positives > 0, precision_sum / positives, np.nan)


@dataclass(frozen=True, eq=False)  # eq=False: the generated __eq__ cannot compare ndarray fields
class MAPResult:
    """Macro mean of per-class AP over the classes that have at least one positive."""

    value: float
    n_skipped: int
    per_class: np.ndarray


def mean_average_precision(truth: np.ndarray, scores: np.ndarray) -> MAPResult:
    """Macro-averaged average precision::

        mAP = mean of AP_c over the classes c with at least one positive

    Classes without positives have undefined AP (NaN in ``per_class``); they are skipped and counted
    in ``n_skipped``. ValueError if no class has a positive.
    """
    per_class = average_precision_per_class(truth, scores)
    defined = ~np.isnan(per_class)
    if not defined.any():
        raise ValueError(
            f"mAP needs at least one class with a positive label; truth of shape {np.shape(truth)} has none"
        )
    return MAPResult(
        value=float(np.mean(per_class[defined])),
        n_skipped=int((~defined).sum()),
        per_class=per_class,
    )


# --------------------------------------------------------------------------- ROC AUC


def roc_auc_per_class(truth: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Area under the ROC curve of each class (column), in Mann-Whitney form::

        AUC = (1 / (P * N)) * sum_{positive i, negative j} ( [s_i > s_j] + 1/2 [s_i == s_j] )

    computed from average ranks as ``(sum of positive ranks - P (P + 1) / 2) / (P * N)``.
    NaN for a class with no positive (P = 0) or no negative (N = 0).
    """
    from scipy.stats import rankdata

    truth, scores = _check_binary_truth(truth, scores)
    n_pos = truth.sum(axis=0)
    n_neg = truth.shape[0] - n_pos
    ranks = rankdata(scores, method="average", axis=0)
    rank_sum = np.where(truth, ranks, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def macro_roc_auc(truth: np.ndarray, scores: np.ndarray) -> float:
    """Macro ROC AUC: the mean of ``roc_auc_per_class`` over the classes it defines::

        roc_auc = mean of AUC_c over the classes c with at least one positive and one negative clip

    equal to ``sklearn.metrics.roc_auc_score(truth, scores, average="macro")`` when every class has
    both (scikit-learn refuses otherwise; here such classes are skipped, as mAP skips classes without
    positives, since a small validation fold may lack a class). For single-label data ``truth`` is the
    one-hot matrix, so this is the one-vs-rest macro AUC. ValueError when no class has both.
    """
    per_class = roc_auc_per_class(truth, scores)
    defined = ~np.isnan(per_class)
    if not defined.any():
        raise ValueError(
            f"roc_auc needs a class with both a positive and a negative clip; truth of shape "
            f"{np.shape(truth)} has none"
        )
    return float(np.mean(per_class[defined]))


# --------------------------------------------------------------------------- F1


MULTILABEL_THRESHOLD = 0.5


def f1_per_class(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """F1 of each class (column) from binary ``truth`` and binary ``predicted`` of one shape::

        F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c),   0 when the class is neither true nor predicted

    (scikit-learn's ``f1_score(..., average=None, zero_division=0)``).
    """
    truth = _as_bool(np.asarray(truth))
    predicted = _as_bool(np.asarray(predicted))
    if truth.shape != predicted.shape or truth.ndim != 2:
        raise ValueError(
            f"truth and predicted must be 2-D of one shape, got {truth.shape} and {predicted.shape}"
        )
    tp = (truth & predicted).sum(axis=0)
    wrong = (truth ^ predicted).sum(axis=0)  # FP + FN
    denominator = 2 * tp + wrong
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)


def macro_f1(truth: np.ndarray, scores: np.ndarray) -> float:
    """Macro F1 for single-label clips, the prediction of each clip being its top-scored class::

        p_i = top_k(scores, 1)[i, 0]            (ties: the lower class index, as in the submission)
        macro_f1 = (1/C) * sum_c F1_c,   F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c)   (0 if undefined)

    over all C classes (columns of ``scores``), equal to ``sklearn.metrics.f1_score(y, p,
    labels=range(C), average="macro", zero_division=0)``. ``truth`` is an integer array (n_clips,) or
    a one-hot (n_clips, n_classes) matrix; a row with several positives is refused (multi-label data
    is scored by ``macro_f1_multilabel``, which the config picks for ``metric: macro_f1`` there).
    """
    labels, scores = _check_single_label_truth(truth, scores)
    n_classes = scores.shape[1]
    predicted = np.eye(n_classes, dtype=bool)[top_k(scores, 1)[:, 0]]
    return float(np.mean(f1_per_class(np.eye(n_classes, dtype=bool)[labels], predicted)))


def macro_f1_multilabel(truth: np.ndarray, scores: np.ndarray) -> float:
    """Macro F1 for multi-label clips, every class scored at least 0.5 being predicted::

        predicted_ic = [s_ic >= 0.5]
        macro_f1 = (1/C) * sum_c F1_c,   F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c)   (0 if undefined)

    equal to ``sklearn.metrics.f1_score(truth, scores >= 0.5, average="macro", zero_division=0)``.
    The threshold assumes probabilities (the models' sigmoid outputs): scores outside [0, 1] are
    refused, as a threshold of 0.5 on them would mean nothing.
    """
    truth, scores = _check_binary_truth(truth, scores)
    outside = (scores < 0) | (scores > 1)
    if outside.any():
        row, col = _first_index(outside)
        raise ValueError(
            f"macro_f1 of multi-label data thresholds probabilities at {MULTILABEL_THRESHOLD}; scores must "
            f"lie in [0, 1], got {scores[row, col]:g} at row {row}, column {col}"
        )
    return float(np.mean(f1_per_class(truth, scores >= MULTILABEL_THRESHOLD)))


# --------------------------------------------------------------------------- registry


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "map3": partial(map_at_k, k=3),
    "lwlrap": lwlrap,
    "map": lambda truth, scores: mean_average_precision(truth, scores).value,
    "accuracy": accuracy,
    "macro_f1": macro_f1,
    "macro_f1@0.5": macro_f1_multilabel,  # what ``metric: macro_f1`` of multi-label data becomes (config)
    "roc_auc": macro_roc_auc,
}


def _check_name(metric: str) -> None:
    if metric not in METRICS:
        allowed = ", ".join(repr(name) for name in sorted(METRICS))
        raise ValueError(f"unknown metric {metric!r}; allowed: {allowed}")


def score(metric: str, truth: np.ndarray, scores: np.ndarray) -> float:
    """``METRICS[metric](truth, scores)``. For "map3", "accuracy" and "macro_f1", ``truth`` may be class
    indices (n_clips,) or a binary (n_clips, n_classes) matrix with one positive per row."""
    _check_name(metric)
    return METRICS[metric](truth, scores)


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` is better (True for every metric in ``METRICS``)."""
    _check_name(metric)
    return True
