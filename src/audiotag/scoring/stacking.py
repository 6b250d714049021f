"""Stacking: a second-level model on the members' concatenated OOF predictions, measured by nested CV.

Features are the logits of every member's scores for every class, concatenated: (n, M * C).
Targets are the clips' label vectors. The stackers (``STACKERS``, by kind):

- ``logreg``: one L2 logistic regression per class (scikit-learn, on standardised features);
  a class whose training labels are all equal gets that constant.
- ``mlp``: one small MLP (scikit-learn, one hidden ReLU layer) with a sigmoid output per class.

``Stacker(kind, ...).fit(features, truth)`` gives the fitted stacker's predict function. The
stacker's CV is *nested*: the outer loop runs over the competition's folds; for fold k the stacker is
fitted on the OOF rows of the other folds only and predicts fold k (``nested_predictions``), so no
reported number has seen its own labels. The final stacker is fitted on all OOF rows and applied to
the test features. scikit-learn is imported only when a stacker is fitted: the kinds are read by the
config schema and by the Kaggle package, which need no scikit-learn without a stacker.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

FitPredict = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
"""``fit_predict(X_train, Y_train, X_predict) -> scores (len(X_predict), C)`` in [0, 1]."""
Predict = Callable[[np.ndarray], np.ndarray]

_CLIP = 1e-6


def logit_features(predictions: Sequence[np.ndarray]) -> np.ndarray:
    """Members' score matrices (each (n, C), in [0, 1]) -> logits concatenated along columns (n, M*C)."""
    parts = [np.clip(np.asarray(p, dtype=np.float64), _CLIP, 1.0 - _CLIP) for p in predictions]
    return np.concatenate([np.log(p) - np.log1p(-p) for p in parts], axis=1)


def _fit_logreg(stacker: Stacker, x_train: np.ndarray, y_train: np.ndarray) -> Predict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_train)
    x_train = scaler.transform(x_train)
    columns: list[float | Any] = []  # per class: a constant, or the fitted regression
    for k in range(y_train.shape[1]):
        y = y_train[:, k] > 0.5
        if y.all() or not y.any():
            columns.append(float(y.mean()) if len(y) else 0.0)
            continue
        model = LogisticRegression(C=stacker.c, max_iter=1000, random_state=stacker.seed)
        columns.append(model.fit(x_train, y))

    def predict(x_pred: np.ndarray) -> np.ndarray:
        x_pred = scaler.transform(x_pred)
        out = np.empty((len(x_pred), len(columns)))
        for k, column in enumerate(columns):
            out[:, k] = column if isinstance(column, float) else column.predict_proba(x_pred)[:, 1]
        return out

    return predict


def _fit_mlp(stacker: Stacker, x_train: np.ndarray, y_train: np.ndarray) -> Predict:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_train)
    model = MLPClassifier(
        hidden_layer_sizes=(stacker.hidden,),
        alpha=1e-3,
        max_iter=500,
        random_state=stacker.seed,
        learning_rate_init=3e-3,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(scaler.transform(x_train), (y_train > 0.5).astype(np.int64))
    return lambda x_pred: np.asarray(model.predict_proba(scaler.transform(x_pred)), dtype=np.float64)


STACKERS: dict[str, Callable[[Stacker, np.ndarray, np.ndarray], Predict]] = {
    "logreg": _fit_logreg,
    "mlp": _fit_mlp,
}
StackerKind = Literal[tuple(STACKERS)]  # type: ignore[valid-type]  # the config schema's allowed values


@dataclass(frozen=True)
class Stacker:
    """One of ``STACKERS``: ``logreg`` (inverse L2 strength ``c``) or ``mlp`` (``hidden`` units)."""

    kind: str
    c: float = 1.0
    hidden: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in STACKERS:
            raise ValueError(f"unknown stacker {self.kind!r}; allowed: {', '.join(STACKERS)}")

    def fit(self, features: np.ndarray, truth: np.ndarray) -> Predict:
        """The fitted stacker: a function from features to scores (n, C) in [0, 1]."""
        return STACKERS[self.kind](self, features, truth)

    def fit_predict(self, x_train: np.ndarray, y_train: np.ndarray, x_pred: np.ndarray) -> np.ndarray:
        return self.fit(x_train, y_train)(x_pred)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Stacker:
        return cls(str(data["kind"]), c=data["c"], hidden=data["hidden"], seed=data["seed"])


def nested_predictions(
    features: np.ndarray, truth: np.ndarray, folds: np.ndarray, fit_predict: FitPredict
) -> np.ndarray:
    """Out-of-fold stacker predictions: the rows of fold k come from a stacker fitted on the rows of
    every other fold (the outer loop of nested CV over the competition's folds)."""
    if not len(features) == len(truth) == len(folds):
        raise ValueError(
            f"features {features.shape}, truth {truth.shape} and folds {folds.shape} differ in rows"
        )
    out = np.empty(truth.shape, dtype=np.float64)
    for fold in np.unique(folds):
        held_out = folds == fold
        out[held_out] = fit_predict(features[~held_out], truth[~held_out], features[held_out])
    return out
