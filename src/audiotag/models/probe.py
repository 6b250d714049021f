"""The ``linear_probe`` model: a linear (or small MLP) classifier on frozen clip embeddings.

Only the config schema lives here, so that ``audiotag.train.experiment`` can put it in the experiment's
``model`` union beside the trainable families; the embeddings are computed by
``audiotag.models.embedding_cache`` and the classifier is fitted fold by fold by ``audiotag.train.probe``.
``./run.sh train --config configs/experiments/<comp>/probe_*.yaml`` runs it like any experiment.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from audiotag.config.schema import StrictModel
from audiotag.models.representation import EmbeddingConfig

PROBE = "linear_probe"


class LinearProbeConfig(StrictModel):
    """Standardise the embeddings, then logistic regression (single-label) or a linear layer trained
    with BCE (multi-label); ``head: mlp`` puts one hidden ReLU layer before it. The L2 strength is
    chosen by an inner CV on each outer fold's training clips only."""

    name: Literal["linear_probe"] = PROBE
    embedding: EmbeddingConfig = Field(description="the frozen model, its weights and layers")
    head: Literal["linear", "mlp"] = Field("linear", description="linear, or mlp: one hidden ReLU layer")
    hidden: int = Field(256, ge=1, description="hidden units of the mlp head")
    c_grid: list[float] = Field(
        default_factory=lambda: [1e-3, 1e-2, 1e-1, 1.0],
        description="candidate inverse L2 strengths C (as scikit-learn's LogisticRegression: the data "
        "term is C times the summed losses); the inner CV picks one per outer fold",
    )
    inner_folds: int = Field(3, ge=2, description="folds of the inner CV that picks C")
    max_iter: int = Field(500, ge=1, description="L-BFGS iterations of a linear fit")
    mlp_epochs: int = Field(60, ge=1, description="Adam epochs of an mlp fit")
    mlp_lr: float = Field(1e-3, gt=0)
    mlp_batch_size: int = Field(128, ge=1)

    @field_validator("c_grid")
    @classmethod
    def _grid(cls, grid: list[float]) -> list[float]:
        if not grid or any(not c > 0 for c in grid):
            raise ValueError("list one or more positive values of C")
        return sorted(set(grid))

    @property
    def pretrained(self) -> str | None:
        """The embedding's weights (what the competition rules check)."""
        return self.embedding.weights
