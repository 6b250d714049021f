"""Stacking: a second-level model on the members' concatenated OOF predictions, measured by nested CV.

Features are the logits of every member's scores for every class, concatenated: (n, M * C).
Targets are the clips' label vectors. Two stackers:

- ``logreg``: one L2 logistic regression per class (scikit-learn, on standardised features);
  a class whose training labels are all equal gets that constant.
- ``mlp``: one small MLP (scikit-learn, one hidden ReLU layer) with a sigmoid output per class.

The stacker's CV is *nested*: the outer loop runs over the competition's folds; for fold k the
stacker is fitted on the OOF rows of the other folds only and predicts fold k (``nested_predictions``),
so no reported number has seen its own labels. The final stacker is fitted on all OOF rows and
applied to the test features.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

__all__ = ["FitPredict", "logit_features", "make_stacker", "nested_predictions"]

StackerKind = Literal["logreg", "mlp"]
FitPredict = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
"""``fit_predict(X_train, Y_train, X_predict) -> scores (len(X_predict), C)`` in [0, 1]."""

_CLIP = 1e-6


def logit_features(predictions: Sequence[np.ndarray]) -> np.ndarray:
    """Members' score matrices (each (n, C), in [0, 1]) -> logits concatenated along columns (n, M*C)."""
    parts = [np.clip(np.asarray(p, dtype=np.float64), _CLIP, 1.0 - _CLIP) for p in predictions]
    return np.concatenate([np.log(p) - np.log1p(-p) for p in parts], axis=1)


def _logreg(c: float, seed: int) -> FitPredict:
    def fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_pred: np.ndarray) -> np.ndarray:
        scaler = StandardScaler().fit(x_train)
        x_train, x_pred = scaler.transform(x_train), scaler.transform(x_pred)
        out = np.empty((len(x_pred), y_train.shape[1]))
        for k in range(y_train.shape[1]):
            y = y_train[:, k] > 0.5
            if y.all() or not y.any():
                out[:, k] = float(y.mean()) if len(y) else 0.0
                continue
            model = LogisticRegression(C=c, max_iter=1000, random_state=seed)
            out[:, k] = model.fit(x_train, y).predict_proba(x_pred)[:, 1]
        return out

    return fit_predict


def _mlp(hidden: int, seed: int) -> FitPredict:
    def fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_pred: np.ndarray) -> np.ndarray:
        scaler = StandardScaler().fit(x_train)
        model = MLPClassifier(
            hidden_layer_sizes=(hidden,), alpha=1e-3, max_iter=500, random_state=seed, learning_rate_init=3e-3
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(scaler.transform(x_train), (y_train > 0.5).astype(np.int64))
        return np.asarray(model.predict_proba(scaler.transform(x_pred)), dtype=np.float64)

    return fit_predict


def make_stacker(kind: StackerKind, *, c: float = 1.0, hidden: int = 32, seed: int = 0) -> FitPredict:
    """The fit-and-predict function of a stacker: ``logreg`` (inverse L2 strength ``c``) or ``mlp``."""
    if kind == "logreg":
        return _logreg(c, seed)
    if kind == "mlp":
        return _mlp(hidden, seed)
    raise ValueError(f"unknown stacker {kind!r}; allowed: logreg, mlp")


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
