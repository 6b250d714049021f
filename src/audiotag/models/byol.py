"""BYOL's online and target networks around a frame-sequence encoder (Grill et al. 2020).

As byol-pytorch at commit 2aa84ee (lucidrains/byol-pytorch ``byol_pytorch/byol_pytorch.py``), the
BYOL implementation BYOL-A trains with (nttcslab/byol-a README: that file plus
``byol_a/byol_pytorch.diff``, which only decouples the augmentations and takes two views):

- the representation is the encoder's output pooled over time by max + mean (BYOL-A's
  ``AudioNTT2020.forward``; ``hidden_layer=-1`` takes the network's own output);
- projector and predictor are both ``MLP``: Linear(in, hidden), BatchNorm1d(hidden), ReLU,
  Linear(hidden, out); projector d -> 4096 -> 256, predictor 256 -> 4096 -> 256 (BYOL-A
  ``config.yaml``: ``proj_dim: 4096``, ``proj_size: 256``);
- the target network is a copy of the online encoder and projector, made before the first step and
  then moved after every optimiser step to ``decay * target + (1 - decay) * online`` (parameters
  only; the target's BatchNorm buffers follow its own forward passes), ``ema_decay: 0.99``;
- the loss is ``2 - 2 cos(prediction, target projection)`` of view 1 against view 2 plus view 2
  against view 1, averaged over the batch. Both networks run in training mode (BatchNorm on batch
  statistics, dropout on), each view in a forward pass of its own.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from audiotag.models.heads import pool_time


def mlp(in_dim: int, out_dim: int, hidden: int) -> nn.Sequential:
    """BYOL's projector/predictor: Linear, BatchNorm1d, ReLU, Linear."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim)
    )


class Branch(nn.Module):
    """Encoder, max + mean over time, projector: what the online and target networks share."""

    def __init__(self, encoder: nn.Module, projection_dim: int, projection_hidden: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = mlp(int(encoder.out_dim), projection_dim, projection_hidden)  # type: ignore[arg-type]

    def represent(self, x: torch.Tensor) -> torch.Tensor:
        """The clip representation of log-mel ``x`` (batch, frames, mels): (batch, d)."""
        return pool_time(self.encoder(x), "mean+max")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.represent(x))


class OnlineNetwork(nn.Module):
    """The trained network: a branch and the predictor; one call takes both views."""

    def __init__(self, encoder: nn.Module, projection_dim: int = 256, projection_hidden: int = 4096) -> None:
        super().__init__()
        self.branch = Branch(encoder, projection_dim, projection_hidden)
        self.predictor = mlp(projection_dim, projection_dim, projection_hidden)

    @property
    def encoder(self) -> nn.Module:
        return self.branch.encoder

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.predictor(self.branch(first)), self.predictor(self.branch(second))


def make_target(online: OnlineNetwork) -> Branch:
    """The target network: a frozen copy of the online branch (encoder + projector)."""
    target = copy.deepcopy(online.branch)
    for param in target.parameters():
        param.requires_grad_(False)
    return target


@torch.no_grad()
def target_projections(target: Branch, first: torch.Tensor, second: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return target(first), target(second)


def regression_loss(prediction: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """``2 - 2 cos`` per row: the squared distance of the L2-normalised vectors."""
    p = F.normalize(prediction, dim=-1, p=2)
    z = F.normalize(projection, dim=-1, p=2)
    return 2 - 2 * (p * z).sum(dim=-1)


def byol_loss(
    predictions: tuple[torch.Tensor, torch.Tensor], projections: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """Symmetric BYOL loss: view 1's prediction against view 2's target projection and vice versa."""
    (p1, p2), (z1, z2) = predictions, projections
    return (regression_loss(p1.float(), z2.float()) + regression_loss(p2.float(), z1.float())).mean()


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, decay: float) -> None:
    """``target = decay * target + (1 - decay) * online``, parameter by parameter (not buffers)."""
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.mul_(decay).add_(o.detach(), alpha=1 - decay)
