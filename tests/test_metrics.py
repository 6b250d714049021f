from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, label_ranking_average_precision_score, roc_auc_score

from audiotag import metrics


def kaggle_apk(actual: list[int], predicted: list[int], k: int = 3) -> float:
    """The ml_metrics ``apk`` used by Kaggle, written as a literal loop."""
    predicted = predicted[:k]
    score, hits = 0.0, 0.0
    for i, p in enumerate(predicted):
        if p in actual and p not in predicted[:i]:
            hits += 1.0
            score += hits / (i + 1.0)
    return score / min(len(actual), k)


def random_case(seed: int, n: int = 60, c: int = 9, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = (rng.random((n, c)) < 0.25).astype(int)
    truth[np.arange(n), rng.integers(0, c, n)] = 1  # at least one positive per clip
    scores = rng.random((n, c))
    if ties:
        scores = np.round(scores, 1)
    return truth, scores


def test_map3_hand_worked() -> None:
    scores = np.array([[0.9, 0.5, 0.3, 0.1]] * 4)
    # true label at rank 1, 2, 3, 4 -> 1, 1/2, 1/3, 0
    assert metrics.map_at_k(np.array([0, 1, 2, 3]), scores) == pytest.approx((1 + 1 / 2 + 1 / 3 + 0) / 4)
    # ties go to the lower class index: class 1 is ranked before class 2
    tied = np.array([[0.1, 0.5, 0.5, 0.0]])
    assert metrics.map_at_k(np.array([2]), tied) == pytest.approx(0.5)
    assert metrics.map_at_k(np.eye(4)[[1]], tied) == pytest.approx(1.0)  # one-hot truth accepted


@pytest.mark.parametrize("seed", range(5))
def test_map3_against_kaggle_apk(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = np.round(rng.random((80, 7)), 1)
    truth = rng.integers(0, 7, 80)
    predicted = metrics.top_k(scores, 3)
    expected = np.mean([kaggle_apk([t], list(p)) for t, p in zip(truth, predicted, strict=True)])
    assert metrics.map_at_k(truth, scores) == pytest.approx(expected)


def test_lwlrap_hand_worked_with_ties_and_empty_clip() -> None:
    truth = np.array([[1, 0, 1, 0], [0, 0, 0, 0], [0, 1, 0, 0]])
    scores = np.array([[0.9, 0.9, 0.2, 0.1], [0.5, 0.4, 0.3, 0.2], [0.8, 0.3, 0.3, 0.0]])
    # clip 0: label 0 ties with label 1 -> rank 2, 1 positive at or above -> 1/2;
    #         label 2 at rank 3 with 2 positives at or above -> 2/3.
    # clip 1: no positives, no pairs.  clip 2: label 1 ties with label 2 -> rank 3, precision 1/3.
    expected = (1 / 2 + 2 / 3 + 1 / 3) / 3
    assert metrics.lwlrap(truth, scores) == pytest.approx(expected)
    per_class, weights = metrics.per_class_lwlrap(truth, scores)
    np.testing.assert_allclose(weights, [1 / 3, 1 / 3, 1 / 3, 0])
    np.testing.assert_allclose(per_class, [1 / 2, 1 / 3, 2 / 3, 0])


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("ties", [False, True])
def test_lwlrap_equals_weighted_sklearn_lrap(seed: int, ties: bool) -> None:
    truth, scores = random_case(seed, ties=ties)
    expected = label_ranking_average_precision_score(truth, scores, sample_weight=truth.sum(1))
    assert metrics.lwlrap(truth, scores) == pytest.approx(expected)
    per_class, weights = metrics.per_class_lwlrap(truth, scores)
    assert weights.sum() == pytest.approx(1.0)
    assert np.sum(per_class * weights) == pytest.approx(expected)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("ties", [False, True])
def test_ap_and_auc_against_sklearn(seed: int, ties: bool) -> None:
    truth, scores = random_case(seed, ties=ties)
    truth[:, 3] = 0  # a class without positives is skipped
    result = metrics.mean_average_precision(truth, scores)
    expected = [average_precision_score(truth[:, c], scores[:, c]) for c in range(9) if c != 3]
    assert result.n_skipped == 1 and np.isnan(result.per_class[3])
    np.testing.assert_allclose(np.delete(result.per_class, 3), expected)
    assert result.value == pytest.approx(np.mean(expected))
    auc = metrics.roc_auc_per_class(truth, scores)
    expected_auc = [roc_auc_score(truth[:, c], scores[:, c]) for c in range(9) if c != 3]
    np.testing.assert_allclose(np.delete(auc, 3), expected_auc)


def test_map_hand_worked() -> None:
    truth = np.array([[1], [0], [1], [0]])
    scores = np.array([[0.9], [0.8], [0.7], [0.1]])
    # positives at ranks 1 and 3: AP = (1/1 + 2/3) / 2
    assert metrics.mean_average_precision(truth, scores).value == pytest.approx((1 + 2 / 3) / 2)


def test_d_prime() -> None:
    assert metrics.d_prime(0.5) == pytest.approx(0.0)
    assert metrics.d_prime(0.9) == pytest.approx(np.sqrt(2) * 1.2815515655446004)


def test_score_dispatch() -> None:
    truth, scores = random_case(0)
    assert metrics.score("lwlrap", truth, scores) == metrics.lwlrap(truth, scores)
    one_hot = np.eye(9)[np.argmax(truth, axis=1)]
    assert metrics.score("map3", one_hot, scores) == metrics.map_at_k(one_hot, scores)
    assert metrics.higher_is_better("map")
    with pytest.raises(ValueError, match="known: lwlrap, map, map3"):
        metrics.score("f1", truth, scores)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: metrics.lwlrap(np.ones((2, 3)), np.ones((2, 4))), "differs from scores shape"),
        (lambda: metrics.lwlrap(np.ones((2, 3)), np.array([[0, np.nan, 1]] * 2)), "NaN"),
        (lambda: metrics.lwlrap(np.full((2, 3), 2), np.ones((2, 3))), "binary"),
        (lambda: metrics.lwlrap(np.zeros((2, 3)), np.ones((2, 3))), "no positive"),
        (lambda: metrics.lwlrap(np.zeros((0, 3)), np.zeros((0, 3))), "empty"),
        (lambda: metrics.map_at_k(np.ones((2, 3)), np.ones((2, 3))), "exactly one positive"),
        (lambda: metrics.map_at_k(np.array([0, 5]), np.ones((2, 3))), r"\[0, 3\)"),
        (lambda: metrics.mean_average_precision(np.zeros((2, 3)), np.ones((2, 3))), "no class"),
    ],
)
def test_bad_input(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
