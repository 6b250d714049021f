"""A blend as one object, scikit-learn style: ``Blend(...).fit(...)`` gives a ``FittedBlend``: a rule,
the members in order and their weights ((M,), or (M, C) per class), which it applies to OOF
(``combine``) and test predictions (``apply``). It is written to, and read back from, the ensemble
report (``to_json`` / ``from_json``) and the Kaggle package's ``bundle.json`` (``to_spec`` /
``from_spec``). ``weights`` holds the numbers as fitted or recorded; every use scales each column to
sum 1 (``normalise_weights``), so a blend read back blends as the one written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from audiotag.scoring.blend import BlendRule, OofScorer, normalise_weights
from audiotag.scoring.weight_search import WEIGHT_SEARCHES, search_weights


def member_weights(members: Sequence[str], weights: np.ndarray) -> dict[str, float]:
    """Each member's weight (its mean over classes when ``weights`` (already on the simplex) are per
    class), exact: the package and the plots re-blend with these numbers."""
    values = weights if weights.ndim == 1 else weights.mean(axis=1)
    return {name: float(w) for name, w in zip(members, values, strict=True)}


@dataclass(frozen=True, eq=False)
class FittedBlend:
    rule: BlendRule
    members: tuple[str, ...]
    weights: np.ndarray  # (M,) or (M, C), as fitted or recorded; scaled to sum 1 per column when used
    classes: tuple[str, ...] = ()  # the columns of per-class weights

    @property
    def normalised(self) -> np.ndarray:
        """The weights with every column on the simplex (checked: finite, non-negative, not all 0)."""
        n_classes = len(self.classes) if self.classes else None
        if n_classes is None and self.weights.ndim == 2:
            n_classes = self.weights.shape[1]
        return normalise_weights(self.weights, len(self.members), n_classes)

    def combine(self, space: np.ndarray) -> np.ndarray:
        """The blend of the members already in blend space (M, n, C)."""
        return self.rule.combine(space, self.normalised)

    def apply(self, fold_predictions: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
        """The test rule: each member's fold models' predictions averaged by the rule, then blended."""
        return self.combine(np.stack([self.rule.fold_average(folds) for folds in fold_predictions]))

    def to_json(self) -> dict[str, Any]:
        """What the ensemble report records of the blend (the report places these keys)."""
        out: dict[str, Any] = {
            "method": self.rule.method,
            "power": self.rule.power if self.rule.method == "power" else None,
            "weights": member_weights(self.members, self.normalised),
        }
        if self.weights.ndim == 2:  # per class
            out["weights_per_class"] = {
                name: dict(zip(self.classes, map(float, row), strict=True))
                for name, row in zip(self.members, self.normalised, strict=True)
            }
        return out

    @classmethod
    def from_json(
        cls, report: dict[str, Any], classes: Sequence[str], members: Sequence[str] | None = None
    ) -> FittedBlend:
        """The blend an ensemble report records, its members in the order of ``members`` (default: the
        report's); equal weights for a report from before weights were recorded."""
        names = list(report.get("members") or {}) if members is None else list(members)
        blend = report.get("blend") or {}
        rule = BlendRule(str(report.get("method", "mean")), float(report.get("power") or 2.0))
        per_class = blend.get("weights_per_class")
        if per_class:
            weights = np.array([[float(per_class[n][c]) for c in classes] for n in names], dtype=np.float64)
        else:
            recorded = blend.get("weights") or {}
            weights = np.array([float(recorded.get(n, 1.0)) for n in names], dtype=np.float64)
        return cls(rule, tuple(names), weights, tuple(classes))

    def to_spec(self) -> dict[str, Any]:
        """The blend as ``bundle.json`` records it (weights as recorded, in member order)."""
        return {"method": self.rule.method, "power": self.rule.power, "weights": self.weights.tolist()}

    @classmethod
    def from_spec(cls, spec: dict[str, Any], members: Sequence[str]) -> FittedBlend:
        rule = BlendRule(spec["method"], spec.get("power") or 2.0)
        return cls(rule, tuple(members), np.asarray(spec["weights"], dtype=np.float64))


@dataclass(frozen=True)
class Blend:
    """How to fit a blend: the rule, and its weights: ``search`` (one of ``WEIGHT_SEARCHES``, with
    ``iterations`` and ``per_class``), ``equal``, or fixed ({member: weight})."""

    rule: BlendRule
    weights: str | dict[str, float] = "search"
    search: str = "hill_climb"
    iterations: int = 100
    per_class: bool = False

    def __post_init__(self) -> None:
        if self.search not in WEIGHT_SEARCHES:
            raise ValueError(f"unknown weight search {self.search!r}; allowed: {', '.join(WEIGHT_SEARCHES)}")

    def searches(self, n_members: int) -> bool:
        return self.weights == "search" and n_members > 1

    def fit(
        self, members: Sequence[str], space: np.ndarray, scorer: OofScorer, classes: Sequence[str]
    ) -> FittedBlend:
        """The fitted blend of members whose OOF predictions, in blend space, are ``space`` (M, n, C)."""
        n_members = len(members)
        if isinstance(self.weights, dict):
            weights = np.array([self.weights[m] for m in members], dtype=np.float64)
        elif self.searches(n_members):  # as searched: FittedBlend scales the columns to sum 1
            weights = search_weights(
                space,
                self.rule,
                scorer,
                search=self.search,
                iterations=self.iterations,
                per_class=self.per_class,
                scaled=False,
            )
        else:
            weights = np.ones(n_members)
        return FittedBlend(self.rule, tuple(members), weights, tuple(classes))
