"""What differs between the self-supervised methods of ``pretrain``: the networks, the pair of inputs
each step compares, the objective, and what happens after an optimiser step. The loop
(``train/pretrain_loop.py``) is the same for all: units from the cache, the step engine, checkpoints
and exact resume.

- **byola** (BYOL-A): one unit per clip; two augmented views of it (``data/byola_augment.py``:
  mixup with past units, random resize crop, random linear fader); online network against an EMA
  target (``models/byol.py``). State besides the networks: the target and the mixup memory.
- **cola** (COLA): two independent segments of the same clip per step (``UnitDataset(segments=2)``),
  the other clips of the batch as negatives; bilinear similarity and softmax cross-entropy
  (``models/cola.py``). The official code adds white noise (std 0.001) to the positive's
  unit-norm wave; the cache holds log-mels, so here the positive gets that noise's expected mel
  power: a white spectrum through the front-end's filterbank, its total ``noise_snr_db`` below the
  segment's mean mel power (deterministic; a log or dB front-end).
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch
from torch import nn

from audiotag.config.schema import FeatureConfig, InputNorm
from audiotag.data.byola_augment import ByolaAugment, ByolaAugmentConfig
from audiotag.data.features import mel_filterbank
from audiotag.models.byol import (
    Branch,
    OnlineNetwork,
    byol_loss,
    ema_update,
    make_target,
    target_projections,
)
from audiotag.models.cola import ColaNetwork, ColaSettings, cola_loss
from audiotag.train.engine import StepEngine

# natural-log units per unit of each front-end scale that noise can be added in
LOG_UNITS = {"log": 1.0, "db": math.log(10) / 10}


class Method(Protocol):
    network: nn.Module  # what the optimiser trains and the step engine wraps
    segments: int  # units drawn per clip: 1 (two views of one unit) or 2 (two segments)

    @property
    def encoder(self) -> nn.Module: ...

    def parts(self) -> dict[str, Any]:
        """Modules kept in ``last.pt`` (``state_dict``/``load_state_dict``), the network included."""
        ...

    def views(
        self, units: torch.Tensor, norm: InputNorm, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's two inputs compared, each (batch, frames, mels), from the cache's units
        ((batch, mels, frames), or (batch, segments, mels, frames)) before pre-normalisation."""
        ...

    def loss(self, engine: StepEngine, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor: ...

    def after_step(self) -> None: ...

    def rank_state(self) -> dict[str, Any]:
        """This process's own state for ``last.pt`` (gathered from every process)."""
        ...

    def load_rank_state(self, state: dict[str, Any], device: torch.device) -> None: ...


def _frames_last(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(-1, -2).contiguous()


class ByolaMethod:
    segments = 1

    def __init__(
        self,
        encoder: nn.Module,
        augment: ByolaAugmentConfig,
        projection_dim: int,
        projection_hidden: int,
        ema_decay: float,
        device: torch.device,
    ) -> None:
        self.network = OnlineNetwork(encoder, projection_dim, projection_hidden).to(device)
        self.target: Branch = make_target(self.network)
        self.augment = ByolaAugment(augment)
        self.ema_decay = ema_decay

    @property
    def encoder(self) -> nn.Module:
        return self.network.encoder

    def parts(self) -> dict[str, Any]:
        return {"online": self.network, "target": self.target}

    def views(self, units, norm, generator):
        x = (units - norm.mean) / norm.std  # pre-normalisation
        first, second = self.augment.views(x, generator)
        return _frames_last(first), _frames_last(second)

    def loss(self, engine, first, second):
        self.target.train()  # as the official: BatchNorm on batch statistics, dropout on
        with engine.autocast():
            predictions = engine.forward_model(first, second)
            projections = target_projections(self.target, first, second)
        return byol_loss(predictions, projections)

    def after_step(self) -> None:
        ema_update(self.target, self.network.branch, self.ema_decay)

    def rank_state(self) -> dict[str, Any]:
        return self.augment.memory.state_dict()

    def load_rank_state(self, state, device) -> None:
        self.augment.memory.load_state_dict(state, device)


def noise_shape(features: FeatureConfig) -> torch.Tensor:
    """A white spectrum's share of power in each mel band of the front-end: (n_mels,), sums to 1."""
    weights = torch.as_tensor(mel_filterbank(features).sum(axis=1), dtype=torch.float32)
    return weights / weights.sum()


def add_noise_power(
    x: torch.Tensor, shape: torch.Tensor, snr_db: float, log_unit: float = 1.0
) -> torch.Tensor:
    """Log-mel ``x`` (batch, mels, frames) plus white noise's mel power ``shape`` (n_mels,), scaled so
    that its total is ``snr_db`` below the total over the bands of each segment's mean mel power."""
    ln = x.to(torch.promote_types(x.dtype, torch.float32)) * log_unit  # ln of the mel power
    power = torch.logsumexp(ln, dim=1).logsumexp(dim=-1) - math.log(ln.shape[-1])  # ln of mean total
    level = power - snr_db / 10 * math.log(10)  # (batch,)
    floor = level[:, None, None] + shape.to(x.device).log()[None, :, None]
    return torch.logaddexp(ln, floor) / log_unit


class ColaMethod:
    segments = 2

    def __init__(
        self, encoder: nn.Module, settings: ColaSettings, features: FeatureConfig, device: torch.device
    ) -> None:
        self.network = ColaNetwork(encoder, settings).to(device)
        self.snr_db = settings.noise_snr_db
        self.log_unit = LOG_UNITS.get(features.scale, 1.0)
        self.shape = noise_shape(features).to(device) if self.snr_db is not None else None

    @property
    def encoder(self) -> nn.Module:
        return self.network.encoder

    def parts(self) -> dict[str, Any]:
        return {"online": self.network}

    def views(self, units, norm, generator):
        anchors, positives = units[:, 0], units[:, 1]
        if self.shape is not None and self.snr_db is not None:
            positives = add_noise_power(positives, self.shape, self.snr_db, self.log_unit)
        return (
            _frames_last((anchors - norm.mean) / norm.std),
            _frames_last((positives - norm.mean) / norm.std),
        )

    def loss(self, engine, first, second):
        with engine.autocast():
            logits = engine.forward_model(first, second)
        return cola_loss(logits)

    def after_step(self) -> None:
        return None

    def rank_state(self) -> dict[str, Any]:
        return {}

    def load_rank_state(self, state, device) -> None:
        return None
