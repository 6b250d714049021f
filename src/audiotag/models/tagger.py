"""A tagger = input normalisation + backbone + head, with the parameter groups training needs.

Every backbone takes log-mel ``(batch, frames, mels)`` and returns either a frame sequence
``(batch, frames', channels)`` (``output = "sequence"``: CNNs) or tokens ``(batch, tokens, dim)``
with ``n_prefix_tokens`` class tokens first (``output = "tokens"``: transformers).
"""

from __future__ import annotations

import torch
from torch import nn

from audiotag.config.schema import InputNorm, ModelBase
from audiotag.core.errors import ConfigError
from audiotag.models.heads import AttentionHead, LinearHead, MlpHead, TokenHead


def build_head(cfg: ModelBase, backbone: nn.Module, n_classes: int) -> nn.Module:
    out_dim: int = backbone.out_dim  # type: ignore[assignment]
    if getattr(backbone, "output", "sequence") == "tokens":
        n_prefix = int(getattr(backbone, "n_prefix_tokens", 1))
        norm = getattr(cfg, "head_norm", "layer")
        return TokenHead(out_dim, n_classes, n_prefix, cfg.head, cfg.dropout, norm)
    if cfg.head == "attention":
        return AttentionHead(out_dim, n_classes, cfg.embedding_dim, cfg.dropout)
    if cfg.head == "mlp":
        return MlpHead(out_dim, n_classes, cfg.embedding_dim, cfg.dropout)
    pool = getattr(cfg, "global_pool", "mean+max")
    return LinearHead(out_dim, n_classes, cfg.embedding_dim, cfg.dropout, pool)


class Tagger(nn.Module):
    """Log-mel in, one logit per class out."""

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        input_norm: InputNorm | None = None,
        frontend: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        # wave -> log-mel on the model's device (``features.cache: wave``); its buffers are not saved
        self.frontend = frontend
        norm = input_norm or InputNorm()
        self.norm_mean = norm.mean
        self.norm_std = norm.std

    def logmel(self, x: torch.Tensor) -> torch.Tensor:
        """Log-mel (batch, frames, mels) from a batch of waves (batch, samples, 1); log-mel passes through."""
        if self.frontend is not None and x.shape[-1] == 1:
            with torch.autocast(device_type=x.device.type, enabled=False):
                return self.frontend(x.squeeze(-1).float())
        return x

    def forward(self, x: torch.Tensor, spec_keep: torch.Tensor | None = None) -> torch.Tensor:
        """``spec_keep``: a SpecAugment mask the backbone applies after its input BatchNorm (training)."""
        x = self.logmel(x)
        if self.norm_mean != 0.0 or self.norm_std != 1.0:
            x = (x - self.norm_mean) / self.norm_std
        if spec_keep is not None:
            return self.head(self.backbone(x, spec_keep=spec_keep))
        return self.head(self.backbone(x))

    def param_groups(
        self, lr: float, backbone_lr_ratio: float, weight_decay: float, layer_decay: float = 1.0
    ) -> list[dict]:
        """AdamW groups: backbone at ``lr * ratio``, head at ``lr``; no decay on norms and biases.

        ``layer_decay`` < 1 scales the backbone's learning rate by depth (``layer_depths``).
        """
        depths = layer_depths(self.backbone) if layer_decay != 1.0 else {}
        top = max(depths.values(), default=0)
        groups: dict[tuple[int, int, bool], dict] = {}
        for part_index, part in enumerate((self.backbone, self.head)):
            part_lr = lr * backbone_lr_ratio if part_index == 0 else lr
            for name, param in part.named_parameters():
                depth = depths.get(name, top) if part_index == 0 else top
                no_decay = param.ndim <= 1 or name.endswith("_token") or "pos_embed" in name
                group = groups.setdefault(
                    (part_index, depth, no_decay),
                    {
                        "params": [],
                        "lr": part_lr * layer_decay ** (top - depth),
                        "weight_decay": 0.0 if no_decay else weight_decay,
                    },
                )
                group["params"].append(param)
        return [groups[key] for key in sorted(groups)]  # per part: shallow first, decay first

    def set_backbone_trainable(self, trainable: bool) -> None:
        """Freeze or unfreeze the backbone; a frozen backbone also keeps its BatchNorm statistics."""
        for param in self.backbone.parameters():
            param.requires_grad_(trainable)
        self.backbone_frozen = not trainable

    def train(self, mode: bool = True) -> Tagger:
        super().train(mode)
        if mode and getattr(self, "backbone_frozen", False):
            self.backbone.eval()
        return self


def layer_depths(backbone: nn.Module) -> dict[str, int]:
    """Each parameter's depth for layer-wise learning-rate decay: 0 before the blocks, block i at i
    (1-based), ``n + 1`` after the last of the ``n`` blocks (a final norm), following the order of
    ``named_parameters`` (the order the backbone registered them in)."""
    blocks = getattr(backbone, "blocks", None)
    if not isinstance(blocks, (nn.Sequential, nn.ModuleList)) or len(blocks) == 0:
        raise ConfigError(
            f"train.layer_decay: the backbone {type(backbone).__name__} has no `blocks` to count "
            "depth by; set train.layer_decay: 1 (off) for this model"
        )
    depths: dict[str, int] = {}
    seen_blocks = False
    for name, _ in backbone.named_parameters():
        parts = name.split(".")
        if parts[0] == "blocks" and len(parts) > 1 and parts[1].isdigit():
            depths[name] = int(parts[1]) + 1
            seen_blocks = True
        else:
            depths[name] = len(blocks) + 1 if seen_blocks else 0
    return depths
