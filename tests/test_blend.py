"""Blending and stacking math on seeded synthetic OOF/test matrices (no files, no training)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from audiotag.scoring.blend import BlendRule, OofScorer, normalise_weights, scaled_ranks
from audiotag.scoring.fitted_blend import FittedBlend
from audiotag.scoring.stacking import Stacker, logit_features, nested_predictions
from audiotag.scoring.weight_search import hill_climb, nested_weight_cv, search_weights


@dataclass
class Synthetic:
    truth: np.ndarray  # (n, C) one-hot (or multi-hot)
    folds: np.ndarray  # (n,)
    members: list[np.ndarray]  # each (n, C) in (0, 1)


def synthetic(
    qualities: list[float], n: int = 240, n_classes: int = 6, n_folds: int = 4, seed: int = 0
) -> Synthetic:
    """Single-label truth; member m scores sigmoid(quality_m * (2 y - 1) + N(0, 1)): quality 0 is pure
    noise, larger is better."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    truth = np.eye(n_classes)[labels]
    folds = rng.permutation(np.arange(n) % n_folds)
    members = [1.0 / (1.0 + np.exp(-(q * (2 * truth - 1) + rng.normal(size=truth.shape)))) for q in qualities]
    return Synthetic(truth, folds, members)


def space_of(data: Synthetic, rule: BlendRule) -> np.ndarray:
    return np.stack([rule.forward(p, data.folds) for p in data.members])


def blend(rule: BlendRule, members: list[np.ndarray], weights: object = None) -> np.ndarray:
    """Members' score matrices blended as the ensemble blends them: a ``FittedBlend`` of their forward
    transforms, equal weights when ``weights`` is None, (M,) or per class (M, C) otherwise."""
    w = np.ones(len(members)) if weights is None else np.asarray(weights, dtype=np.float64)
    fitted = FittedBlend(rule, tuple(f"m{i}" for i in range(len(members))), w)
    return fitted.combine(np.stack([rule.forward(p) for p in members]))


# --------------------------------------------------------------------------- blend rules by hand


def test_weighted_means_by_hand() -> None:
    a, b = np.array([[0.2, 0.8]]), np.array([[0.8, 0.2]])
    np.testing.assert_allclose(blend(BlendRule("mean"), [a, b]), [[0.5, 0.5]])
    np.testing.assert_allclose(blend(BlendRule("mean"), [a, b], [3, 1]), [[0.35, 0.65]])
    np.testing.assert_allclose(blend(BlendRule("geometric"), [a, b]), [[0.4, 0.4]])
    # 0.2^(1/4) 0.8^(3/4) = (0.2 * 0.8^3)^(1/4) = 0.1024^(1/4) = sqrt(0.32)
    np.testing.assert_allclose(
        blend(BlendRule("geometric"), [a, b], [0.25, 0.75]), [[np.sqrt(0.32), np.sqrt(0.08)]]
    )
    np.testing.assert_allclose(blend(BlendRule("power", 2.0), [a, b]), [[np.sqrt(0.34), np.sqrt(0.34)]])
    np.testing.assert_allclose(blend(BlendRule("power", -1.0), [a, b]), [[0.32, 0.32]])  # harmonic
    np.testing.assert_allclose(
        blend(BlendRule("power", 1.0), [a, b], [1, 3]), blend(BlendRule("mean"), [a, b], [1, 3])
    )
    # per-class weights: class 0 from a only, class 1 from b only
    np.testing.assert_allclose(blend(BlendRule("mean"), [a, b], [[1, 0], [0, 1]]), [[0.2, 0.2]])
    assert blend(BlendRule("geometric"), [np.zeros((1, 2)), np.ones((1, 2))]).min() > 0  # log floor


def test_scaled_ranks_by_hand() -> None:
    scores = np.array([[0.1, 5.0], [0.5, 5.0], [0.3, 1.0]])
    np.testing.assert_allclose(scaled_ranks(scores), [[0.0, 0.75], [1.0, 0.75], [0.5, 0.0]])  # ties: average
    grouped = scaled_ranks(np.array([[0.1], [0.5], [0.3], [0.9], [0.2]]), np.array([0, 0, 1, 1, 2]))
    np.testing.assert_allclose(grouped, [[0.0], [1.0], [0.0], [1.0], [0.5]])  # ranked within each group


def test_rank_blend_by_hand() -> None:
    a = np.array([[0.9, 0.1], [0.5, 0.2], [0.1, 0.3]])
    b = np.array([[0.2, 0.6], [0.3, 0.5], [0.4, 0.4]])
    # ranks a: [[1, 0], [.5, .5], [0, 1]]; b: [[0, 1], [.5, .5], [1, 0]]
    np.testing.assert_allclose(
        blend(BlendRule("rank"), [a, b], [0.75, 0.25]), [[0.75, 0.25], [0.5, 0.5], [0.25, 0.75]]
    )


def test_fold_average_follows_the_blend_rule() -> None:
    f0, f1 = np.array([[0.2, 0.9], [0.4, 0.1]]), np.array([[0.8, 0.1], [0.6, 0.3]])
    np.testing.assert_allclose(BlendRule("mean").fold_average([f0, f1]), [[0.5, 0.5], [0.5, 0.2]])
    geo = BlendRule("geometric")
    np.testing.assert_allclose(
        geo.inverse(geo.fold_average([f0, f1])), [[0.4, 0.3], [np.sqrt(0.24), np.sqrt(0.03)]]
    )
    # rank: each fold model ranked over the test clips, then the ranks averaged
    r0 = np.array([[0.2, 0.9], [0.4, 0.1], [0.3, 0.5]])  # ranks [[0, 1], [1, 0], [.5, .5]]
    r1 = np.array([[0.5, 0.2], [0.6, 0.1], [0.1, 0.3]])  # ranks [[.5, .5], [1, 0], [0, 1]]
    expected = [[0.25, 0.75], [1.0, 0.0], [0.25, 0.75]]
    np.testing.assert_allclose(BlendRule("rank").fold_average([r0, r1]), expected)
    assert not np.allclose(scaled_ranks((r0 + r1) / 2), expected)  # not the rank of the fold mean


def test_bad_weights_and_rules_are_refused() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        normalise_weights(np.array([0.5, -0.1]), 2)
    with pytest.raises(ValueError, match="all be zero"):
        normalise_weights(np.zeros(2), 2)
    with pytest.raises(ValueError, match="shape"):
        normalise_weights(np.ones(3), 2)
    with pytest.raises(ValueError, match="non-zero"):
        BlendRule("power", 0.0)
    with pytest.raises(ValueError, match="unknown blend method"):
        BlendRule("median")  # type: ignore[arg-type]


def test_scorer_scores_each_fold() -> None:
    truth = np.eye(3)[[0, 1, 2, 0]]
    scores = np.array([[0.9, 0.0, 0.1], [0.0, 0.9, 0.1], [0.9, 0.5, 0.1], [0.1, 0.2, 0.9]])
    scorer = OofScorer("map3", truth, np.array([0, 0, 1, 1]))
    folds = scorer.fold_scores(scores)
    assert folds == {0: 1.0, 1: pytest.approx((1 / 3 + 1 / 3) / 2)}
    assert scorer(scores) == pytest.approx((1.0 + 1 / 3) / 2)


# --------------------------------------------------------------------------- weight search


@pytest.mark.parametrize("search", ["hill_climb", "scipy"])
@pytest.mark.parametrize("per_class", [False, True])
def test_searched_weights_lie_on_the_simplex(search: str, per_class: bool) -> None:
    data = synthetic([1.0, 0.8, 0.5], n=120, n_classes=4, n_folds=3)
    rule = BlendRule("mean")
    scorer = OofScorer("map3", data.truth, data.folds)
    weights = search_weights(
        space_of(data, rule), rule, scorer, search=search, iterations=15, per_class=per_class
    )
    assert weights.shape == ((3, 4) if per_class else (3,))
    assert (weights >= 0).all()
    np.testing.assert_allclose(weights.sum(axis=0), 1.0)


@pytest.mark.parametrize("search", ["hill_climb", "scipy"])
def test_pure_noise_member_gets_no_weight(search: str) -> None:
    data = synthetic([1.2, 1.0, 0.0], n=600, n_classes=6)
    rule = BlendRule("mean")
    scorer = OofScorer("map3", data.truth, data.folds)
    weights = search_weights(space_of(data, rule), rule, scorer, search=search, iterations=40)
    assert weights[2] < 0.05, weights
    assert weights[0] > 0.2 and weights[1] > 0.1, weights  # the two real members are both used


@pytest.mark.parametrize("search", ["hill_climb", "scipy"])
@pytest.mark.parametrize(
    ("method", "metric"), [("mean", "map3"), ("geometric", "lwlrap"), ("power", "map"), ("rank", "map3")]
)
def test_searched_blend_scores_at_least_the_best_member(search: str, method: str, metric: str) -> None:
    data = synthetic([0.9, 0.7, 0.6, 0.2], n=200, seed=3)
    rule = BlendRule(method, 3.0)  # type: ignore[arg-type]
    scorer = OofScorer(metric, data.truth, data.folds)
    space = space_of(data, rule)
    weights = search_weights(space, rule, scorer, search=search, iterations=20)
    best_member = max(scorer(rule.inverse(s)) for s in space)
    assert scorer(rule.combine(space, weights)) >= best_member - 1e-12


def test_hill_climb_starts_from_the_best_member_and_adds_with_replacement() -> None:
    data = synthetic([0.3, 1.5, 1.4], n=300, seed=5)
    rule = BlendRule("mean")
    scorer = OofScorer("map3", data.truth, data.folds)
    space = space_of(data, rule)
    counts = hill_climb(space, lambda x: scorer(x), iterations=0)
    assert counts.tolist() == [0, 1, 0]
    counts = hill_climb(space, lambda x: scorer(x), iterations=12)
    assert counts.dtype.kind == "i" and counts.sum() <= 13 and counts[1] >= 1


def test_nested_cv_is_below_in_sample_when_the_search_overfits() -> None:
    # Many weak members, few clips, per-class weights: the search fits noise.
    data = synthetic([0.4] * 8, n=80, n_classes=5, n_folds=4, seed=11)
    rule = BlendRule("mean")
    scorer = OofScorer("map3", data.truth, data.folds)
    space = space_of(data, rule)

    def fit(space_part: np.ndarray, scorer_part: OofScorer) -> np.ndarray:
        assert scorer_part.fold_ids == sorted(set(scorer_part.folds.tolist()))
        return search_weights(space_part, rule, scorer_part, iterations=8, per_class=True)

    in_sample = scorer(rule.combine(space, fit(space, scorer)))
    nested, fitted = nested_weight_cv(space, scorer, fit, rule)
    assert sorted(nested) == scorer.fold_ids and sorted(fitted) == scorer.fold_ids
    assert float(np.mean(list(nested.values()))) < in_sample - 0.02


def test_nested_weight_cv_never_fits_on_the_held_out_fold() -> None:
    data = synthetic([1.0, 0.5], n=90, n_folds=3)
    rule = BlendRule("mean")
    scorer = OofScorer("map3", data.truth, data.folds)
    seen: list[set[int]] = []

    def fit(space_part: np.ndarray, scorer_part: OofScorer) -> np.ndarray:
        seen.append(set(scorer_part.folds.tolist()))
        assert space_part.shape[1] == len(scorer_part.folds)
        return np.array([0.5, 0.5])

    nested_weight_cv(space_of(data, rule), scorer, fit, rule)
    assert seen == [{1, 2}, {0, 2}, {0, 1}]


# --------------------------------------------------------------------------- stacking


def test_nested_stacking_cannot_memorise_held_out_clips() -> None:
    """A stacker that memorises every training row by its features scores perfectly in-sample; under
    the nested loop it never sees the held-out rows, so it can only guess."""
    rng = np.random.default_rng(0)
    n, n_classes = 120, 6
    truth = np.eye(n_classes)[rng.integers(0, n_classes, n)]
    folds = np.arange(n) % 3
    features = rng.normal(size=(n, 4))  # unique per clip, unrelated to the labels: a clip id
    calls: list[tuple[set[bytes], set[bytes]]] = []

    def memorise(x_train: np.ndarray, y_train: np.ndarray, x_pred: np.ndarray) -> np.ndarray:
        table = {row.tobytes(): y for row, y in zip(x_train, y_train, strict=True)}
        calls.append(({r.tobytes() for r in x_train}, {r.tobytes() for r in x_pred}))
        return np.array([table.get(row.tobytes(), np.full(n_classes, 1.0 / n_classes)) for row in x_pred])

    scorer = OofScorer("map3", truth, folds)
    assert scorer(memorise(features, truth, features)) == 1.0  # in-sample: perfect
    nested = scorer(nested_predictions(features, truth, folds, memorise))
    assert nested < 0.6  # all-tied guesses: the lowest index wins, about chance (0.41 for 6 classes)
    assert all(not (train & held_out) for train, held_out in calls[1:])


@pytest.mark.parametrize("kind", ["logreg", "mlp"])
def test_stackers_learn_from_informative_members(kind: str) -> None:
    data = synthetic([1.5, 1.0, 0.0], n=240, n_classes=4, n_folds=3, seed=2)
    scorer = OofScorer("map3", data.truth, data.folds)
    features = logit_features(data.members)
    assert features.shape == (240, 12)
    fit_predict = Stacker(kind, c=1.0, hidden=16, seed=0).fit_predict
    held_out = nested_predictions(features, data.truth, data.folds, fit_predict)
    assert held_out.min() >= 0 and held_out.max() <= 1
    assert scorer(held_out) > 0.8  # chance is about 0.52 for 4 classes


def test_logreg_stacker_handles_a_class_without_positives() -> None:
    rng = np.random.default_rng(1)
    truth = np.zeros((30, 3))
    truth[np.arange(30), rng.integers(0, 2, 30)] = 1.0  # class 2 never occurs
    out = Stacker("logreg").fit_predict(rng.normal(size=(30, 6)), truth, rng.normal(size=(5, 6)))
    assert out.shape == (5, 3) and (out[:, 2] == 0).all()
