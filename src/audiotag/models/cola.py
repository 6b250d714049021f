"""COLA's contrastive network (Saeed, Grangier, Zeghidour, ICASSP 2021) around a frame-sequence encoder.

As the official code (google-research/google-research ``cola/network.py``, ``contrastive.py``,
``main.py``'s flag defaults):

- the encoder's output is pooled globally (``pooling_type: max``), then ``Dense(512)`` (Keras:
  Glorot-uniform weights, zero bias); with the bilinear similarity the embedding goes on through
  ``LayerNormalization`` (Keras epsilon 1e-3) and ``tanh``;
- the similarity of anchor ``a`` and positive ``p`` is bilinear, ``a^T W p`` with one trainable
  ``W`` (d x d, Keras ``random_normal``: std 0.05), or (``similarity: dot``) the cosine divided by
  ``temperature`` (0.2);
- anchors and positives go through the network in one batch (BatchNorm sees both), and the loss
  is the softmax cross-entropy of each anchor's row of similarities against every positive of the
  batch, the true one being its own (``SparseCategoricalCrossentropy(from_logits=True)`` on
  ``range(batch)``), averaged over the batch.

The official encoder is EfficientNet-B0 with global max pooling over frequency and time; here any
backbone family's frame sequence is pooled over time (a timm backbone averages frequency first).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from audiotag.config.schema import StrictModel
from audiotag.models.heads import pool_time

KERAS_LAYER_NORM_EPS = 1e-3
KERAS_RANDOM_NORMAL_STD = 0.05


class ColaSettings(StrictModel):
    """The ``cola:`` section of a pretrain config (official flag defaults)."""

    embedding_dim: int = Field(512, ge=1, description="the Dense layer after the encoder (embedding_dim)")
    similarity: Literal["bilinear", "dot"] = Field(
        "bilinear", description="bilinear: a^T W p (the paper's); dot: cosine / temperature"
    )
    temperature: float = Field(0.2, gt=0, description="dot similarity only: cosine / temperature")
    pooling: Literal["max", "mean", "mean+max"] = Field("max", description="over time (pooling_type)")
    noise_snr_db: float | None = Field(
        8.0,
        description="the positive segment's added white noise, dB below its power (the official adds "
        "std 0.001 to the unit-norm wave: 8 dB for AudioSet's 10 s clips); null: none",
    )


class ColaNetwork(nn.Module):
    """Encoder, pooling, projection (+ layer norm and tanh for the bilinear similarity), similarity."""

    def __init__(self, encoder: nn.Module, settings: ColaSettings) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = settings.pooling
        self.temperature = settings.temperature
        d = settings.embedding_dim
        self.projection = nn.Linear(int(encoder.out_dim), d)  # type: ignore[arg-type]
        nn.init.xavier_uniform_(self.projection.weight)
        nn.init.zeros_(self.projection.bias)
        self.bilinear = settings.similarity == "bilinear"
        self.norm = nn.LayerNorm(d, eps=KERAS_LAYER_NORM_EPS) if self.bilinear else None
        self.weight = nn.Parameter(torch.randn(d, d) * KERAS_RANDOM_NORMAL_STD) if self.bilinear else None

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Log-mel ``x`` (batch, frames, mels) -> the embeddings compared (batch, embedding_dim)."""
        z = self.projection(pool_time(self.encoder(x), self.pooling))
        if self.norm is not None:
            z = torch.tanh(self.norm(z))
        return z

    def similarities(self, anchors: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
        """(batch, batch) logits: row i holds anchor i against every positive."""
        if self.weight is not None:
            return anchors @ (self.weight @ positives.T)
        a, p = F.normalize(anchors, dim=-1), F.normalize(positives, dim=-1)
        return a @ p.T / self.temperature

    def forward(self, anchors: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
        a, p = self.embed(torch.cat([anchors, positives])).chunk(2)
        return self.similarities(a, p)


def cola_loss(logits: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy of each anchor's similarities, its own positive being the class."""
    return F.cross_entropy(logits.float(), torch.arange(logits.shape[0], device=logits.device))
