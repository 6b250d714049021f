"""Classifier heads on top of a backbone's output.

A CNN backbone gives a frame sequence ``(batch, frames, channels)``; a transformer gives tokens
``(batch, tokens, dim)`` with its class token(s) first. Key names match the official checkpoints
where a head has a pretrained counterpart: ``fc1`` is PANNs' embedding layer.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def pool_time(x: torch.Tensor, how: str) -> torch.Tensor:
    """(batch, frames, channels) -> (batch, channels)."""
    if how == "mean+max":
        return x.amax(dim=1) + x.mean(dim=1)
    if how == "max":
        return x.amax(dim=1)
    return x.mean(dim=1)


class LinearHead(nn.Module):
    """Global pooling over time, dropout, optional ``fc1`` embedding (ReLU), then the classifier ``fc``.

    As PANNs' tagging models: the dropout acts on the pooled vector only, and the classifier takes
    the undropped ``fc1`` output (official ``fc_audioset(x)`` after ``x = relu(fc1(x))``).
    """

    def __init__(
        self, in_dim: int, n_classes: int, embedding_dim: int | None, dropout: float, pool: str
    ) -> None:
        super().__init__()
        self.pool = pool
        self.dropout = dropout
        self.fc1 = nn.Linear(in_dim, embedding_dim) if embedding_dim else None
        self.fc = nn.Linear(embedding_dim or in_dim, n_classes)
        if self.fc1 is not None:
            nn.init.xavier_uniform_(self.fc1.weight)
            nn.init.zeros_(self.fc1.bias)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        x = F.dropout(pool_time(seq, self.pool), p=self.dropout, training=self.training)
        if self.fc1 is not None:
            x = F.relu(self.fc1(x))
        return self.fc(x)

    def embedding(self, seq: torch.Tensor) -> torch.Tensor:
        """The clip embedding: ``fc1``'s output where there is one (PANNs' ``embedding``), else the pool."""
        x = pool_time(seq, self.pool)
        return F.relu(self.fc1(x)) if self.fc1 is not None else x


class MlpHead(nn.Module):
    """EfficientAT's ``mlp`` head: mean over time, ``fc1`` + Hardswish, dropout, classifier ``fc``.

    The official ``classifier`` (``AdaptiveAvgPool2d(1)``, ``Flatten``, ``Linear``, ``Hardswish``,
    ``Dropout``, ``Linear``) averages the last feature map over frequency and time; the backbone has
    averaged it over frequency already, so the mean over time is the same number. The clip embedding
    is that pooled vector, the ``features`` the official model returns beside its logits.
    """

    def __init__(self, in_dim: int, n_classes: int, hidden: int | None, dropout: float) -> None:
        super().__init__()
        self.dropout = dropout
        self.fc1 = nn.Linear(in_dim, hidden or in_dim)
        self.fc = nn.Linear(hidden or in_dim, n_classes)
        for layer in (self.fc1, self.fc):  # the official initialisation of its Linear layers
            nn.init.normal_(layer.weight, 0.0, 0.01)
            nn.init.zeros_(layer.bias)

    def embedding(self, seq: torch.Tensor) -> torch.Tensor:
        return seq.mean(dim=1)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        x = F.hardswish(self.fc1(self.embedding(seq)))
        return self.fc(F.dropout(x, p=self.dropout, training=self.training))


class AttentionHead(nn.Module):
    """PANNs' decision-level attention: per-frame class scores weighted by a softmax over time.

    Returns logits whose sigmoid is the attention-weighted mean of the per-frame probabilities, so
    the same BCE-with-logits loss and sigmoid at inference apply to every head.
    """

    def __init__(self, in_dim: int, n_classes: int, embedding_dim: int | None, dropout: float) -> None:
        super().__init__()
        self.dropout = dropout
        self.fc1 = nn.Linear(in_dim, embedding_dim) if embedding_dim else None
        width = embedding_dim or in_dim
        self.att = nn.Conv1d(width, n_classes, kernel_size=1)
        self.cla = nn.Conv1d(width, n_classes, kernel_size=1)

    def embedding(self, seq: torch.Tensor) -> torch.Tensor:
        """The frames the attention weighs (after ``fc1`` where there is one), max + mean over time."""
        x = F.relu(self.fc1(seq)) if self.fc1 is not None else seq
        return pool_time(x, "mean+max")

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        x = F.dropout(seq, p=self.dropout, training=self.training)
        if self.fc1 is not None:
            x = F.dropout(F.relu(self.fc1(x)), p=self.dropout, training=self.training)
        x = x.transpose(1, 2)  # (batch, width, frames)
        weights = torch.softmax(torch.clamp(self.att(x), -10, 10), dim=-1)
        probs = torch.sigmoid(self.cla(x))
        clip = torch.clamp((weights * probs).sum(dim=-1), 1e-7, 1 - 1e-7)
        return torch.logit(clip)


class TokenHead(nn.Module):
    """Transformer head: class token(s) or mean of patch tokens, a norm, Linear (AST's mlp_head).

    ``norm``: ``"layer"`` (AST's LayerNorm) or ``"batch"`` (a BatchNorm1d without affine parameters,
    the ``TaskHead`` of EVAR's fine-tuning that M2D's AudioSet checkpoints carry).
    """

    def __init__(
        self, dim: int, n_classes: int, n_prefix: int, how: str, dropout: float, norm: str = "layer"
    ) -> None:
        super().__init__()
        self.n_prefix = n_prefix
        self.how = how
        self.dropout = dropout
        self.norm = nn.LayerNorm(dim) if norm == "layer" else nn.BatchNorm1d(dim, affine=False)
        self.fc = nn.Linear(dim, n_classes)

    def embedding(self, tokens: torch.Tensor) -> torch.Tensor:
        """The pooled token the classifier's LayerNorm takes (official AST: ``(x[:, 0] + x[:, 1]) / 2``)."""
        if self.how == "cls":
            return tokens[:, : self.n_prefix].mean(dim=1)  # AST averages the cls and distillation tokens
        return tokens[:, self.n_prefix :].mean(dim=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = F.dropout(self.norm(self.embedding(tokens)), p=self.dropout, training=self.training)
        return self.fc(x)


def set_prior_bias(head: nn.Module, targets: np.ndarray) -> np.ndarray:
    """Start each class's logit at its log-odds in ``targets`` (n_clips, n_classes), clipped to half a
    clip from 0 and 1 (a class absent from the fold keeps a finite bias); returns the biases.

    The bias is that of the layer the logits come out of: ``cla`` of the attention head (whose clip
    logit, with zero weights, is that bias), else ``fc``."""
    n = max(1, len(targets))
    prior = np.clip(np.asarray(targets, dtype=np.float64).mean(axis=0), 0.5 / n, 1 - 0.5 / n)
    bias = np.log(prior / (1 - prior))
    layer = head.cla if isinstance(head, AttentionHead) else head.fc
    with torch.no_grad():
        layer.bias.copy_(torch.from_numpy(bias).to(layer.bias.dtype))
    return bias
