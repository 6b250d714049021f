"""The CV summary of per-fold scores, shared by runs, ensemble members and ensemble score lines."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def fold_mean(scores: Mapping[int, float]) -> float:
    """Mean of the per-fold scores; NaN when there is none."""
    return float(np.mean(list(scores.values()))) if scores else float("nan")


def fold_std(scores: Mapping[int, float]) -> float:
    """Population standard deviation (ddof=0) of the per-fold scores; NaN when there is none."""
    return float(np.std(list(scores.values()))) if scores else float("nan")


class FoldScores:
    """Mixin for a dataclass with a ``fold_scores: dict[int, float]`` field: its ``mean`` and ``std``.
    A plain class (the annotation is for type checkers), so it adds no dataclass field."""

    fold_scores: dict[int, float]

    @property
    def mean(self) -> float:
        return fold_mean(self.fold_scores)

    @property
    def std(self) -> float:
        return fold_std(self.fold_scores)
