"""Training losses with per-clip weights, and noise-robust losses for clips with noisy labels.

Every loss here gives one value per clip from logits ``z`` and targets ``y`` in [0, 1] (mixup makes
them soft), with ``p = sigmoid(z)``:

- ``bce``: binary cross-entropy averaged over the C classes.
- ``lq``: the generalised cross-entropy of Zhang & Sabuncu (NeurIPS 2018) applied per class, as a
  binary problem: ``mean_c [y (1 - p^q) + (1 - y) (1 - (1 - p)^q)] / q``. As q -> 0 it tends to BCE
  (``(1 - x^q)/q -> -log x``); q = 1 is the mean absolute error of the class probabilities, which
  bounds what one wrong label can cost. (argus-freesound's ``lq_loss``, src/losses.py, is another
  reading for single-label clips: it applies Lq to the largest ``p * y`` of a clip, not per class.)
- ``bootstrap_soft``: BCE against the bootstrapped target ``beta * y + (1 - beta) * p``, with ``p``
  held constant (no gradient through the target): Reed et al. (2015)'s soft bootstrapping as
  Fonseca et al. ("Learning sound event classifiers from web audio with noisy labels", ICASSP 2019,
  arXiv:1901.01189) call it L_soft. beta = 1 is BCE. Confirmed from the code of argus-freesound
  (github.com/lRomul/argus-freesound, src/losses.py ``l_soft``: ``torch.no_grad()`` around the target;
  its README: "Loss: BCE on curated, Lsoft with beta 0.7 on noisy data"; that README called it the
  6th place of the public leaderboard at the time, later copies the 1st place solution of Freesound
  Audio Tagging 2019). Curated clips keep BCE there, as with ``train.noisy_loss`` here.
- ``lsep``: Li et al. (CVPR 2017)'s log-sum-exp pairwise ranking loss,
  ``log(1 + sum_{v positive, u negative} exp(z_u - z_v))``, generalised to soft targets by weighting
  the pair (v, u) with ``y_v (1 - y_u)`` (pairs u = v left out); a clip with no positive or no
  negative class costs 0. It ranks, so it never reduces to BCE, and its scale differs (a sum over
  pairs, not a mean over classes). That 2019 solutions used it we could not confirm from the sources
  at hand.

:func:`training_loss` weighs clips: with weights ``w`` of shape (B,) every clip uses ``train.loss``,
``sum(w * l) / sum(w)``. With ``train.noisy_loss`` the weights have two columns (B, 2): the clip's
weight under ``train.loss`` and under ``train.noisy_loss`` (a verified clip has (w, 0), an unverified
one (0, w)); mixup mixes both columns as it mixes the targets, so a mixed pair is charged each loss in
proportion, and the result is ``sum(w0 * loss + w1 * noisy_loss) / sum(w0 + w1)``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from audiotag.config.schema import LossConfig

BCE = LossConfig()


def weighted_bce(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy averaged over classes, then weighted by clip: sum(w * l) / sum(w)."""
    per_clip = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(dim=1)
    return (per_clip * weights).sum() / weights.sum().clamp_min(1e-8)


def bce_per_clip(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(dim=1)


def lq_per_clip(logits: torch.Tensor, targets: torch.Tensor, q: float) -> torch.Tensor:
    """Per-class Lq, ``(1 - p_t^q) / q`` for both outcomes of each class, averaged over classes."""
    # p^q = exp(q log p) from log-sigmoid: no overflow or log(0) for large logits
    pos = -torch.expm1(q * F.logsigmoid(logits)) / q
    neg = -torch.expm1(q * F.logsigmoid(-logits)) / q
    return (targets * pos + (1 - targets) * neg).mean(dim=1)


def bootstrap_soft_per_clip(logits: torch.Tensor, targets: torch.Tensor, beta: float) -> torch.Tensor:
    """BCE against ``beta * y + (1 - beta) * p``; the prediction in the target carries no gradient."""
    bootstrapped = beta * targets + (1 - beta) * torch.sigmoid(logits).detach()
    return bce_per_clip(logits, bootstrapped)


def lsep_per_clip(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log(1 + sum_{v != u} y_v (1 - y_u) exp(z_u - z_v))`` per clip, as a stable log-sum-exp."""
    pair_weight = targets.unsqueeze(2) * (1 - targets).unsqueeze(1)  # [b, v, u]
    n = targets.shape[1]
    pair_weight = pair_weight * (1 - torch.eye(n, device=targets.device, dtype=targets.dtype))
    diff = logits.unsqueeze(1) - logits.unsqueeze(2)  # [b, v, u] = z_u - z_v
    log_w = torch.where(pair_weight > 0, pair_weight.clamp_min(1e-30).log(), float("-inf"))
    terms = (diff + log_w).flatten(1)
    zero = torch.zeros_like(terms[:, :1])  # the "1 +" inside the log
    return torch.logsumexp(torch.cat([zero, terms], dim=1), dim=1)


def per_clip_loss(spec: LossConfig, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The loss ``spec`` names, one value per clip (shape (B,))."""
    if spec.name == "bce":
        return bce_per_clip(logits, targets)
    if spec.name == "lq":
        return lq_per_clip(logits, targets, spec.q)
    if spec.name == "bootstrap_soft":
        return bootstrap_soft_per_clip(logits, targets, spec.beta)
    if spec.name == "lsep":
        return lsep_per_clip(logits, targets)
    raise ValueError(f"train.loss.name: unknown loss {spec.name!r}")


def training_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor,
    loss: LossConfig = BCE,
    noisy_loss: LossConfig | None = None,
) -> torch.Tensor:
    """The weighted mean loss of a batch (see the module docstring for the two weight layouts)."""
    if weights.dim() == 1:
        if loss.name == "bce":
            return weighted_bce(logits, targets, weights)  # the historical path, bit for bit
        return (per_clip_loss(loss, logits, targets) * weights).sum() / weights.sum().clamp_min(1e-8)
    if noisy_loss is None:
        raise ValueError("two weight columns (loss, noisy loss) need train.noisy_loss")
    main, noisy = weights[:, 0], weights[:, 1]
    total = (per_clip_loss(loss, logits, targets) * main).sum()
    total = total + (per_clip_loss(noisy_loss, logits, targets) * noisy).sum()
    return total / weights.sum().clamp_min(1e-8)


def split_weights(weights: np.ndarray, verified: np.ndarray) -> np.ndarray:
    """Per-clip weights as the two columns of ``training_loss``: (w, 0) verified, (0, w) unverified."""
    weights = np.asarray(weights, dtype=np.float32)
    verified = np.asarray(verified, dtype=bool)
    return np.stack([np.where(verified, weights, 0.0), np.where(verified, 0.0, weights)], axis=1)
