"""The ViT parts AST, PaSST, ATST-Frame and M2D share: timm's ``Block`` stacked with stochastic depth
rising linearly over the blocks, LayerNorm eps 1e-6 (timm's ViT / DeiT), the truncated-normal
initialisation of their linear layers, and AST's and PaSST's strided 16x16 patch embedding."""

from __future__ import annotations

from functools import partial
from typing import Any

from timm.models.vision_transformer import Block
from torch import Tensor, nn

PATCH = 16
VIT_NORM = partial(nn.LayerNorm, eps=1e-6)


def vit_blocks(
    dim: int, depth: int, num_heads: int, drop_path: float, qkv_bias: bool = True
) -> nn.Sequential:
    """``depth`` pre-norm transformer blocks, block i dropping its residual at
    ``drop_path * i / (depth - 1)`` (plain floats: works on the meta device too)."""
    rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
    return nn.Sequential(
        *(
            Block(dim, num_heads, mlp_ratio=4.0, qkv_bias=qkv_bias, drop_path=rate, norm_layer=VIT_NORM)
            for rate in rates
        )
    )


def init_linears(module: nn.Module) -> None:
    """Every linear layer of ``module``: weights truncated normal (std 0.02), biases zero."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.trunc_normal_(layer.weight, std=0.02)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class PatchEmbed(nn.Module):
    """Overlapping 16x16 patches of the one-channel (mels x frames) image, as tokens."""

    def __init__(self, dim: int, fstride: int, tstride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, dim, kernel_size=PATCH, stride=(fstride, tstride))

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)  # (batch, dim, rows, cols)


def prefix_token_embeddings(backbone: Any, x: Tensor, layers: list[int]) -> dict[int, Tensor]:
    """One vector per input and chosen block (1-based) of a backbone with ``input_tokens``, ``blocks``,
    the final ``norm`` and ``n_prefix_tokens`` (AST, PaSST): the block's tokens through the final norm,
    the prefix (class and distillation) tokens averaged, as their heads pool them. {block: (batch, 1,
    dim)}: one frame, nothing to pool over time; and under key 0 what ``backbone(x)`` returns when the
    last block was among them."""
    tokens = backbone.input_tokens(x)
    out: dict[int, Tensor] = {}
    for index, block in enumerate(backbone.blocks):
        if index >= max(layers):
            break
        tokens = block(tokens)
        if index + 1 in layers:
            normed = backbone.norm(tokens)
            out[index + 1] = normed[:, : backbone.n_prefix_tokens].mean(dim=1, keepdim=True)
            if index + 1 == len(backbone.blocks):
                out[0] = normed
    return out
