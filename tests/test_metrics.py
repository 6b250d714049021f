from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    label_ranking_average_precision_score,
    roc_auc_score,
)

from audiotag.scoring import metrics

SEEDS = range(4)


def kaggle_apk(actual: list[int], predicted: list[int], k: int = 10) -> float:
    """ml_metrics ``apk`` (the Kaggle reference), kept as a literal loop."""
    if len(predicted) > k:
        predicted = predicted[:k]
    score = 0.0
    num_hits = 0.0
    for i, p in enumerate(predicted):
        if p in actual and p not in predicted[:i]:
            num_hits += 1.0
            score += num_hits / (i + 1.0)
    if not actual:
        return 0.0
    return score / min(len(actual), k)


def kaggle_mapk(actual: list[list[int]], predicted: list[list[int]], k: int = 10) -> float:
    return float(np.mean([kaggle_apk(a, p, k) for a, p in zip(actual, predicted, strict=True)]))


def python_top_k(row: np.ndarray, k: int) -> list[int]:
    return sorted(range(len(row)), key=lambda j: (-row[j], j))[:k]


def random_multilabel(seed: int, ties: bool, n: int = 80, c: int = 11) -> tuple[np.ndarray, np.ndarray]:
    """Multi-label truth (some clips without positives) and scores; ``ties`` rounds scores to 1 decimal."""
    rng = np.random.default_rng(seed)
    truth = (rng.random((n, c)) < 0.2).astype(np.float32)
    truth[: n // 10] = 0
    scores = rng.random((n, c))
    if ties:
        scores = np.round(scores, 1)
    return truth, scores


# --------------------------------------------------------------------------- top_k / MAP@3


def test_top_k_is_stable_argsort_with_lower_index_first() -> None:
    scores = np.array([[0.5, 0.5, 0.5, 0.1], [0.2, 0.9, 0.9, 0.9], [0.0, 0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(metrics.top_k(scores, 3), [[0, 1, 2], [1, 2, 3], [0, 1, 2]])
    rng = np.random.default_rng(0)
    tied = np.round(rng.random((50, 9)), 1)
    np.testing.assert_array_equal(metrics.top_k(tied, 4), np.argsort(-tied, axis=1, kind="stable")[:, :4])
    assert metrics.top_k(tied, 4).tolist() == [python_top_k(row, 4) for row in tied]


def test_map3_true_label_at_rank_1_to_4() -> None:
    scores = np.array([[0.9, 0.5, 0.3, 0.1, 0.0]] * 4)
    # true label at rank 1, 2, 3, 4 -> 1, 1/2, 1/3, 0 (outside the top 3); mean = (6+3+2+0)/6/4 = 11/24
    assert metrics.map_at_k(np.array([0, 1, 2, 3]), scores) == pytest.approx(11 / 24, rel=1e-15)
    for label, expected in [(0, 1.0), (1, 1 / 2), (2, 1 / 3), (3, 0.0)]:
        assert metrics.map_at_k(np.array([label]), scores[:1]) == pytest.approx(expected, rel=1e-15)


def test_map3_ties_broken_by_lower_index() -> None:
    # classes 0, 1, 2 tie: order 0, 1, 2 -> label 0 scores 1, label 2 scores 1/3, label 3 is 4th -> 0
    scores = np.array([[0.5, 0.5, 0.5, 0.5]])
    assert metrics.map_at_k(np.array([0]), scores) == 1.0
    assert metrics.map_at_k(np.array([2]), scores) == pytest.approx(1 / 3, rel=1e-15)
    assert metrics.map_at_k(np.array([3]), scores) == 0.0
    # 0.9 for 1, 2, 3: order 1, 2, 3 -> label 3 at rank 3 -> 1/3
    assert metrics.map_at_k(np.array([3]), np.array([[0.2, 0.9, 0.9, 0.9]])) == pytest.approx(
        1 / 3, rel=1e-15
    )


def test_map3_accepts_one_hot_truth() -> None:
    rng = np.random.default_rng(1)
    scores = rng.random((30, 6))
    labels = rng.integers(0, 6, 30)
    one_hot = np.eye(6, dtype=np.float32)[labels]
    assert metrics.map_at_k(one_hot, scores) == metrics.map_at_k(labels, scores)
    assert metrics.score("map3", one_hot, scores) == metrics.map_at_k(labels, scores, k=3)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ties", [False, True])
def test_map3_matches_kaggle_mapk(seed: int, ties: bool) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.random((200, 8))
    if ties:
        scores = np.round(scores, 1)
    labels = rng.integers(0, 8, 200)
    expected = kaggle_mapk([[int(y)] for y in labels], [python_top_k(row, 3) for row in scores], k=3)
    assert metrics.map_at_k(labels, scores) == pytest.approx(expected, rel=1e-12)


# --------------------------------------------------------------------------- accuracy


def test_accuracy_hand_worked_with_ties() -> None:
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.3, 0.3, 0.4]])
    # a tie goes to the lower class index: row 1 predicts 0 (right), row 2 predicts 0 (wrong)
    assert metrics.accuracy(np.array([1, 0, 1, 0]), scores) == 0.5
    one_hot = np.eye(3, dtype=np.int64)[[1, 0, 1, 0]]
    assert metrics.score("accuracy", one_hot, scores) == 0.5


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ties", [False, True])
def test_accuracy_matches_sklearn(seed: int, ties: bool) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.random((200, 8))
    if ties:
        scores = np.round(scores, 1)
    labels = rng.integers(0, 8, 200)
    predicted = [python_top_k(row, 1)[0] for row in scores]
    expected = accuracy_score(labels, predicted)
    assert metrics.accuracy(labels, scores) == pytest.approx(expected, rel=1e-15)
    assert metrics.accuracy(labels, scores) == pytest.approx(metrics.map_at_k(labels, scores, k=1), rel=1e-15)


# --------------------------------------------------------------------------- lwlrap


def test_lwlrap_hand_worked_with_ties_and_clip_without_positives() -> None:
    truth = np.array([[0, 1, 0, 1], [1, 0, 1, 0], [0, 0, 0, 0]])
    scores = np.array([[0.9, 0.5, 0.5, 0.1], [0.3, 0.3, 0.8, 0.0], [0.1, 0.2, 0.3, 0.4]])
    # clip 0: label 1 (0.5) ties with label 2 -> rank 3, positives at or above: {1} -> 1/3
    #         label 3 (0.1) -> rank 4, positives at or above: {1, 3} -> 2/4
    # clip 1: label 2 (0.8) -> rank 1 -> 1/1
    #         label 0 (0.3) ties with label 1 -> rank 3, positives at or above: {0, 2} -> 2/3
    # clip 2: no positives -> no pairs
    # lwlrap = (1/3 + 1/2 + 1 + 2/3) / 4 = (15/6) / 4 = 5/8
    assert metrics.lwlrap(truth, scores) == pytest.approx(5 / 8, rel=1e-15)
    per_class, weight = metrics.per_class_lwlrap(truth, scores)
    # one pair per class: class 0 -> 2/3, class 1 -> 1/3, class 2 -> 1, class 3 -> 1/2; weights 1/4 each
    np.testing.assert_allclose(per_class, [2 / 3, 1 / 3, 1.0, 1 / 2], rtol=1e-15)
    np.testing.assert_allclose(weight, [1 / 4] * 4, rtol=1e-15)


def test_per_class_lwlrap_class_without_positives_has_zero_weight() -> None:
    truth = np.array([[1, 0, 0], [1, 1, 0]])
    scores = np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]])
    # clip 0: label 0 at rank 3 -> 1/3; clip 1: label 0 rank 1 -> 1, label 1 rank 2 -> 2/2
    per_class, weight = metrics.per_class_lwlrap(truth, scores)
    np.testing.assert_allclose(per_class, [(1 / 3 + 1) / 2, 1.0, 0.0], rtol=1e-15)
    np.testing.assert_allclose(weight, [2 / 3, 1 / 3, 0.0], rtol=1e-15)
    assert metrics.lwlrap(truth, scores) == pytest.approx((1 / 3 + 1 + 1) / 3, rel=1e-15)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ties", [False, True])
def test_lwlrap_matches_weighted_sklearn_lrap(seed: int, ties: bool) -> None:
    truth, scores = random_multilabel(seed, ties)
    keep = truth.sum(axis=1) > 0
    assert not keep.all()
    expected = label_ranking_average_precision_score(
        truth[keep], scores[keep], sample_weight=truth[keep].sum(axis=1)
    )
    assert metrics.lwlrap(truth, scores) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ties", [False, True])
def test_per_class_lwlrap_weights_sum_to_one_and_recombine(seed: int, ties: bool) -> None:
    truth, scores = random_multilabel(seed, ties)
    truth[:, 2] = 0
    per_class, weight = metrics.per_class_lwlrap(truth, scores)
    assert weight.sum() == pytest.approx(1.0, rel=1e-12)
    assert weight[2] == 0.0
    np.testing.assert_allclose(weight, truth.sum(axis=0, dtype=float) / truth.sum(dtype=float), rtol=1e-12)
    assert np.sum(per_class * weight) == metrics.lwlrap(truth, scores)


# --------------------------------------------------------------------------- AP / mAP / AUC


def test_map_hand_worked_with_class_without_positives() -> None:
    truth = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]])
    scores = np.array([[0.9, 0.4, 0.5], [0.8, 0.4, 0.2], [0.3, 0.2, 0.6], [0.1, 0.1, 0.1]])
    # class 0: ranking pos, neg, pos, neg -> AP = 1/2 * 1/1 + 1/2 * 2/3 = 5/6
    # class 1: the positive ties with one negative at 0.4 -> one threshold, P = 1/2, R = 1 -> AP = 1/2
    # class 2: no positives -> NaN, skipped
    # mAP = (5/6 + 1/2) / 2 = 2/3
    result = metrics.mean_average_precision(truth, scores)
    assert result.value == pytest.approx(2 / 3, rel=1e-15)
    assert result.n_skipped == 1
    np.testing.assert_allclose(result.per_class[:2], [5 / 6, 1 / 2], rtol=1e-15)
    assert np.isnan(result.per_class[2])
    np.testing.assert_array_equal(result.per_class, metrics.average_precision_per_class(truth, scores))
    assert metrics.score("map", truth, scores) == result.value


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ties", [False, True])
def test_average_precision_matches_sklearn(seed: int, ties: bool) -> None:
    truth, scores = random_multilabel(seed, ties)
    truth[:, 4] = 0
    per_class = metrics.average_precision_per_class(truth, scores)
    assert np.isnan(per_class[4])
    for c in range(truth.shape[1]):
        if c != 4:
            expected = average_precision_score(truth[:, c], scores[:, c])
            assert per_class[c] == pytest.approx(expected, rel=1e-12), c
    result = metrics.mean_average_precision(truth, scores)
    assert result.n_skipped == 1
    assert result.value == pytest.approx(np.nanmean(per_class), rel=1e-12)


def test_roc_auc_hand_worked() -> None:
    truth = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]])
    scores = np.array([[0.9, 0.4, 0.5], [0.8, 0.4, 0.2], [0.3, 0.2, 0.6], [0.1, 0.1, 0.1]])
    # class 0: positives 0.9, 0.3 vs negatives 0.8, 0.1 -> wins 0.9>0.8, 0.9>0.1, 0.3>0.1 -> 3/4
    # class 1: positive 0.4 vs 0.4 (tie, 1/2), 0.2, 0.1 -> (1/2 + 1 + 1) / 3 = 5/6
    # class 2: no positives -> NaN
    auc = metrics.roc_auc_per_class(truth, scores)
    np.testing.assert_allclose(auc[:2], [3 / 4, 5 / 6], rtol=1e-15)
    assert np.isnan(auc[2])
    # a class with only positives is NaN as well
    assert np.isnan(metrics.roc_auc_per_class(np.ones((3, 1)), np.array([[0.1], [0.2], [0.3]]))[0])


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ties", [False, True])
def test_roc_auc_matches_sklearn(seed: int, ties: bool) -> None:
    truth, scores = random_multilabel(seed, ties)
    truth[:, 0] = 0
    truth[:, 1] = 1
    auc = metrics.roc_auc_per_class(truth, scores)
    assert np.isnan(auc[:2]).all()
    expected = [roc_auc_score(truth[:, c], scores[:, c]) for c in range(2, truth.shape[1])]
    np.testing.assert_allclose(auc[2:], expected, rtol=1e-12)


# --------------------------------------------------------------------------- registry


def test_metrics_registry_and_dispatch() -> None:
    names = {"map3", "lwlrap", "map", "accuracy", "macro_f1", "macro_f1@0.5", "roc_auc"}
    assert set(metrics.METRICS) == names
    truth, scores = random_multilabel(0, ties=True)
    assert metrics.score("lwlrap", truth, scores) == metrics.lwlrap(truth, scores)
    assert metrics.score("map", truth, scores) == metrics.mean_average_precision(truth, scores).value
    assert all(metrics.higher_is_better(name) for name in metrics.METRICS)


@pytest.mark.parametrize(
    "call",
    [lambda: metrics.score("f1", np.ones((1, 2)), np.ones((1, 2))), lambda: metrics.higher_is_better("f1")],
)
def test_unknown_metric_lists_allowed_names(call: Callable[[], object]) -> None:
    allowed = r"allowed: 'accuracy', 'lwlrap', 'macro_f1', 'macro_f1@0\.5', 'map', 'map3', 'roc_auc'"
    with pytest.raises(ValueError, match=rf"unknown metric 'f1'; {allowed}"):
        call()


# --------------------------------------------------------------------------- input errors

GOOD_TRUTH = np.array([[1, 0, 0], [0, 1, 0]])
GOOD_SCORES = np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]])
NAN_SCORES = np.array([[0.1, np.nan, 0.3], [0.3, 0.2, 0.1]])
INF_SCORES = np.array([[0.1, 0.2, 0.3], [0.3, -np.inf, 0.1]])
MULTI_LABEL = [
    metrics.lwlrap,
    metrics.per_class_lwlrap,
    metrics.average_precision_per_class,
    metrics.mean_average_precision,
    metrics.roc_auc_per_class,
]


@pytest.mark.parametrize("fn", MULTI_LABEL)
@pytest.mark.parametrize(
    "truth, scores, message",
    [
        (GOOD_TRUTH, np.ones((2, 4)), r"same shape, got truth \(2, 3\) and scores \(2, 4\)"),
        (GOOD_TRUTH[:1], GOOD_SCORES, r"same shape, got truth \(1, 3\) and scores \(2, 3\)"),
        (GOOD_TRUTH, NAN_SCORES, r"1 NaN and 0 infinite value\(s\); first at row 0, column 1"),
        (GOOD_TRUTH, INF_SCORES, r"0 NaN and 1 infinite value\(s\); first at row 1, column 1"),
        (
            np.array([[1, 0, 0.5], [0, 1, 0]]),
            GOOD_SCORES,
            r"binary \(0/1\); found 1 other value\(s\), first 0\.5",
        ),
        (np.array([[2, 0, 0], [0, 1, 0]]), GOOD_SCORES, r"binary \(0/1\)"),
        (np.array([[-1, 0, 0], [0, 1, 0]]), GOOD_SCORES, r"binary \(0/1\)"),
        (np.zeros((0, 3)), np.zeros((0, 3)), r"empty input: scores has shape \(0, 3\)"),
        (np.zeros((2, 0)), np.zeros((2, 0)), r"empty input: scores has shape \(2, 0\)"),
        (GOOD_TRUTH, GOOD_SCORES[0], r"scores must be 2-D"),
        (GOOD_TRUTH, np.array([["a", "b", "c"]] * 2), r"scores must be a real numeric array"),
    ],
)
def test_multilabel_input_errors(fn: Callable, truth: np.ndarray, scores: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fn(truth, scores)


@pytest.mark.parametrize("fn", [metrics.lwlrap, metrics.per_class_lwlrap])
def test_lwlrap_without_any_positive(fn: Callable) -> None:
    with pytest.raises(ValueError, match=r"at least one positive label; truth of shape \(2, 3\) has none"):
        fn(np.zeros((2, 3)), GOOD_SCORES)


def test_map_without_any_positive() -> None:
    with pytest.raises(ValueError, match=r"mAP needs .* truth of shape \(2, 3\) has none"):
        metrics.mean_average_precision(np.zeros((2, 3)), GOOD_SCORES)


@pytest.mark.parametrize(
    "truth, scores, message",
    [
        (
            np.array([[1, 1, 0], [0, 1, 0]]),
            GOOD_SCORES,
            r"exactly one positive per row; 1 row\(s\) do not, "
            r"first row 0 with 2 positives",
        ),
        (np.array([[1, 0, 0], [0, 0, 0]]), GOOD_SCORES, r"first row 1 with 0 positives"),
        (np.array([[1, 0, 0.5], [0, 1, 0]]), GOOD_SCORES, r"binary \(0/1\)"),
        (GOOD_TRUTH, np.ones((2, 4)), r"same shape, got truth \(2, 3\) and scores \(2, 4\)"),
        (np.array([0, 1, 2]), GOOD_SCORES, r"same number of clips, got truth \(3,\) and scores \(2, 3\)"),
        (np.array([0, 3]), GOOD_SCORES, r"must lie in \[0, 3\); row 1 has 3"),
        (np.array([-1, 0]), GOOD_SCORES, r"must lie in \[0, 3\); row 0 has -1"),
        (np.array([0.0, 1.0]), GOOD_SCORES, r"1-D truth must hold integer class indices, got dtype float64"),
        (np.zeros((2, 1, 3)), GOOD_SCORES, r"got shape \(2, 1, 3\)"),
        (np.array([0, 1]), NAN_SCORES, r"1 NaN"),
        (np.array([], dtype=int), np.zeros((0, 3)), r"empty input"),
    ],
)
@pytest.mark.parametrize("fn", [metrics.map_at_k, metrics.accuracy])
def test_single_label_input_errors(fn: Callable, truth: np.ndarray, scores: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fn(truth, scores)


@pytest.mark.parametrize(
    "k, message",
    [
        (0, r"between 1 and the number of classes \(3\), got 0"),
        (4, r"between 1 and the number of classes \(3\), got 4"),
        (1.5, r"k must be a positive integer, got 1\.5"),
        (True, r"k must be a positive integer, got True"),
    ],
)
def test_top_k_bad_k(k: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        metrics.top_k(GOOD_SCORES, k)  # type: ignore[arg-type]


def test_top_k_rejects_nan() -> None:
    with pytest.raises(ValueError, match="1 NaN"):
        metrics.top_k(NAN_SCORES, 1)
