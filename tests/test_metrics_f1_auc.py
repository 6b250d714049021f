"""macro_f1 (single-label: the top class; multi-label: scores >= 0.5) and roc_auc (macro over classes),
checked against scikit-learn, and their place in the config and the metric registry."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from audiotag.config.competition import TableCompetitionConfig
from audiotag.config.competition_parts import TABLE_METRICS
from audiotag.core.errors import ConfigError
from audiotag.scoring import metrics

RNG_SEEDS = range(6)


def _single_label(seed: int, n: int = 60, c: int = 5, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    scores = rng.random((n, c))
    scores[np.arange(n), labels] += rng.random(n) * 0.6  # better than chance, not perfect
    if ties:
        scores = np.round(scores * 3) / 3
    return labels, scores


@pytest.mark.parametrize("seed", RNG_SEEDS)
@pytest.mark.parametrize("ties", [False, True])
def test_single_label_macro_f1_is_sklearn_on_the_argmax(seed: int, ties: bool) -> None:
    labels, scores = _single_label(seed, ties=ties)
    c = scores.shape[1]
    predicted = np.argsort(-scores, axis=1, kind="stable")[:, 0]  # ties: the lower class index
    expected = f1_score(labels, predicted, labels=range(c), average="macro", zero_division=0)
    assert metrics.macro_f1(labels, scores) == pytest.approx(expected, abs=1e-12)
    one_hot = np.eye(c)[labels]
    assert metrics.score("macro_f1", one_hot, scores) == pytest.approx(expected, abs=1e-12)


def test_single_label_macro_f1_by_hand_counts_an_absent_class_as_zero() -> None:
    # true 0,0,1,1 ; predicted 0,1,1,1 ; class 2 neither true nor predicted
    labels = np.array([0, 0, 1, 1])
    scores = np.array([[0.9, 0.1, 0], [0.2, 0.8, 0], [0.1, 0.9, 0], [0.3, 0.7, 0]])
    f1_class0 = 2 * 1 / (2 * 1 + 0 + 1)  # TP 1, FN 1
    f1_class1 = 2 * 2 / (2 * 2 + 1 + 0)  # TP 2, FP 1
    assert metrics.macro_f1(labels, scores) == pytest.approx((f1_class0 + f1_class1 + 0.0) / 3)


@pytest.mark.parametrize("seed", RNG_SEEDS)
def test_multi_label_macro_f1_is_sklearn_at_half(seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = (rng.random((50, 6)) < 0.3).astype(int)
    scores = np.clip(0.35 * truth + rng.random((50, 6)) * 0.65, 0, 1)
    scores[0, 0] = 0.5  # exactly at the threshold: predicted
    expected = f1_score(truth, scores >= 0.5, average="macro", zero_division=0)
    assert metrics.macro_f1_multilabel(truth, scores) == pytest.approx(expected, abs=1e-12)
    assert metrics.score("macro_f1@0.5", truth, scores) == pytest.approx(expected, abs=1e-12)


def test_multi_label_macro_f1_refuses_scores_that_are_no_probabilities() -> None:
    truth = np.array([[1, 0], [0, 1]])
    with pytest.raises(ValueError, match=r"scores must lie in \[0, 1\], got 1.5 at row 1, column 0"):
        metrics.macro_f1_multilabel(truth, np.array([[0.9, 0.1], [1.5, 0.2]]))


def test_single_label_macro_f1_refuses_multi_label_truth() -> None:
    with pytest.raises(ValueError, match="exactly one positive per row"):
        metrics.macro_f1(np.array([[1, 1, 0], [0, 1, 0]]), np.random.default_rng(0).random((2, 3)))


@pytest.mark.parametrize("seed", RNG_SEEDS)
@pytest.mark.parametrize("ties", [False, True])
def test_macro_roc_auc_is_sklearn(seed: int, ties: bool) -> None:
    rng = np.random.default_rng(seed)
    truth = (rng.random((40, 5)) < 0.4).astype(int)
    truth[0], truth[1] = 1, 0  # every class has a positive and a negative
    scores = 0.3 * truth + rng.random((40, 5))
    if ties:
        scores = np.round(scores * 4) / 4
    expected = roc_auc_score(truth, scores, average="macro")
    assert metrics.macro_roc_auc(truth, scores) == pytest.approx(expected, abs=1e-12)
    assert metrics.score("roc_auc", truth, scores) == pytest.approx(expected, abs=1e-12)


def test_macro_roc_auc_of_single_label_data_is_sklearn_one_vs_rest() -> None:
    labels, scores = _single_label(3, n=80, c=4)
    probabilities = scores / scores.sum(axis=1, keepdims=True)
    expected = roc_auc_score(labels, probabilities, multi_class="ovr", average="macro")
    assert metrics.macro_roc_auc(np.eye(4)[labels], probabilities) == pytest.approx(expected, abs=1e-12)


def test_macro_roc_auc_skips_classes_without_both_and_refuses_when_none_has_both() -> None:
    truth = np.array([[1, 0, 0], [0, 0, 1], [1, 0, 1], [0, 0, 0]])  # class 1: no positive
    scores = np.array([[0.9, 0.2, 0.1], [0.3, 0.1, 0.8], [0.6, 0.4, 0.7], [0.1, 0.3, 0.2]])
    expected = roc_auc_score(truth[:, [0, 2]], scores[:, [0, 2]], average="macro")
    assert metrics.macro_roc_auc(truth, scores) == pytest.approx(expected)
    with pytest.raises(ValueError, match="roc_auc needs a class with both a positive and a negative"):
        metrics.macro_roc_auc(np.ones((3, 2)), np.random.default_rng(0).random((3, 2)))


def test_new_metrics_are_higher_is_better_and_known_to_the_config() -> None:
    for name in ("macro_f1", "macro_f1@0.5", "roc_auc"):
        assert metrics.higher_is_better(name) and name in TABLE_METRICS
    assert set(TABLE_METRICS) == set(metrics.METRICS)


def _table(**changes: object) -> TableCompetitionConfig:
    base: dict = {"name": "t", "kind": "table", "train_csv": "a.csv", "audio_dir": "audio"}
    base |= {"metric": "macro_f1", "submission": {"kind": "scores"}}
    return TableCompetitionConfig(**(base | changes))


def test_config_names_the_f1_the_data_gets() -> None:
    assert _table().metric == "macro_f1"
    assert _table(multi_label=True).metric == "macro_f1@0.5"
    assert _table(multi_label=True, metric="roc_auc").metric == "roc_auc"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"metric": "macro_f1@0.5"}, "single-label data uses macro_f1"),
        ({"metric": "accuracy", "multi_label": True}, "multi_label data needs lwlrap or map"),
    ],
)
def test_config_refuses_a_metric_that_does_not_fit_the_labels(changes: dict, message: str) -> None:
    with pytest.raises((ConfigError, ValueError), match=message):
        _table(**changes)
