"""Audio Spectrogram Transformer (AST, Gong et al. 2021): DeiT blocks over overlapping 16x16 patches.

The log mel ``(batch, frames, mels)`` is read as a one-channel image ``(mels x frames)`` and cut into
16x16 patches with stride ``(fstride, tstride)``, giving a grid of ``f_dim x t_dim`` patches. A class
token and a distillation token come first, a learned positional embedding is added, and timm ViT
blocks follow. Attribute names mirror timm / AST (``patch_embed.proj``, ``cls_token``, ``dist_token``,
``pos_embed``, ``blocks.N``, ``norm``), so checkpoints convert by renaming their prefix.

Two checkpoint layouts convert (``CONVERTERS``):

- ``"ast"``: the official AST checkpoints (``audioset_10_10_0.4593.pth``): keys ``module.v.*`` and
  ``module.mlp_head.{0,1}`` (the LayerNorm and Linear of our ``TokenHead``); the old ImageNet heads
  ``module.v.head*`` are ignored. Their patch grid has 12 rows (128 mel bins at fstride 10).
- ``"deit"``: timm's ``deit_base_distilled_patch16_384`` (ImageNet): RGB patch weights are summed to
  one channel, the square 24x24 positional grid is resampled, ``head``/``head_dist`` are ignored.

Positional embeddings are resampled as AST does, one axis at a time: an axis that gets shorter keeps
its middle part, one that gets longer is interpolated bilinearly; the two prefix tokens are kept.
The resampler must know both grids. The converter knows the checkpoint's grid; the model's comes from
``AstBackbone.prepare_checkpoint(converted)``, which the loader calls before ``load_converted``.

At run time the model accepts other frame counts than it was built for (the mel count must match):
a shorter input uses the first columns of the positional grid (as if it were zero-padded at the end,
without attending to padding); a longer one interpolates the grid along time. Inputs shorter than one
patch (16 frames) are zero-padded to 16 frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from audiotag.config.schema import ModelBase
from audiotag.core.errors import ConfigError
from audiotag.fetch.weights import Checkpoint
from audiotag.models.family import EMBEDDING, Family, Layers, Verification
from audiotag.models.loading import Converted, Converter, rgb_to_mono
from audiotag.models.vit import VIT_NORM, PatchEmbed, init_linears, prefix_token_embeddings, vit_blocks


class AstConfig(ModelBase):
    """Audio Spectrogram Transformer: ViT/DeiT blocks over overlapping 16x16 patches."""

    name: Literal["ast"] = "ast"
    token_heads: ClassVar[bool] = True
    head: Literal["linear", "attention", "cls", "mean"] = "cls"
    fstride: int = Field(10, ge=1, le=16)
    tstride: int = Field(10, ge=1, le=16)
    embed_dim: int = Field(768, gt=0)
    depth: int = Field(12, ge=1)
    num_heads: int = Field(12, ge=1)
    drop_path: float = Field(0.0, ge=0, lt=1)
    input_frames: int | None = Field(
        None, gt=0, description="frames the positional embedding is built for; null = the training crop"
    )

    @model_validator(mode="after")
    def _check(self) -> AstConfig:
        if self.embed_dim % self.num_heads:
            raise ValueError("embed_dim must be a multiple of num_heads")
        return self


Grid = tuple[int, int]  # (frequency rows, time columns) of the patch grid

PATCH = 16
N_PREFIX = 2  # class token + distillation token
AST_ROWS = 12  # patch rows of the released AST checkpoints: 128 mel bins at fstride 10
AST_MEAN = -4.2677393  # AST's input normalisation: (x - mean) / std = (x + 4.27) / (4.57 * 2)
AST_STD = 4.5689974 * 2


def patch_grid(n_mels: int, frames: int, fstride: int, tstride: int) -> Grid:
    """Patch grid (rows, cols) of a ``(n_mels x frames)`` input: ``(size - 16) // stride + 1`` per axis."""
    if n_mels < PATCH or frames < PATCH:
        raise ConfigError(f"ast: input of {n_mels} mel bins x {frames} frames is smaller than a 16x16 patch")
    return (n_mels - PATCH) // fstride + 1, (frames - PATCH) // tstride + 1


def fit_axis(grid: Tensor, axis: int, size: int, crop: str = "middle") -> Tensor:
    """Cut ``grid`` (1, dim, rows, cols) along ``axis`` (2 or 3) to ``size``, or interpolate it longer.

    ``crop="middle"`` keeps the middle part (AST's conversion); ``"start"`` keeps the first part.
    """
    n = grid.shape[axis]
    if size == n:
        return grid
    if size < n:
        start = n // 2 - size // 2 if crop == "middle" else 0
        return grid.narrow(axis, start, size)
    shape = list(grid.shape[2:])
    shape[axis - 2] = size
    out = F.interpolate(grid.float(), size=tuple(shape), mode="bilinear", align_corners=False)
    return out.to(grid.dtype)


def resample_pos_embed(pos_embed: Tensor, src: Grid, dst: Grid, n_prefix: int = N_PREFIX) -> Tensor:
    """(1, prefix + src rows*cols, dim) -> (1, prefix + dst rows*cols, dim), AST's rule per axis."""
    dim = pos_embed.shape[-1]
    grid = pos_embed[:, n_prefix:].reshape(1, src[0], src[1], dim).permute(0, 3, 1, 2)
    grid = fit_axis(fit_axis(grid, 3, dst[1]), 2, dst[0])
    patches = grid.permute(0, 2, 3, 1).reshape(1, dst[0] * dst[1], dim)
    return torch.cat([pos_embed[:, :n_prefix], patches], dim=1)


@dataclass(frozen=True)
class PosEmbedResampler:
    """Adapter for ``*pos_embed``: resample the checkpoint's patch grid to the model's.

    ``src_grid`` is set by the converter; ``dst_grid`` by ``AstBackbone.prepare_checkpoint``. Until
    both are known, or when a count does not match its grid, it declines (returns None), so the key
    is reported as a shape mismatch rather than filled by a guess.
    """

    src_grid: Grid | None
    dst_grid: Grid | None = None
    n_prefix: int = N_PREFIX

    def __call__(self, key: str, src: Tensor, dst: Tensor) -> Tensor | None:
        if not key.endswith("pos_embed") or self.src_grid is None or self.dst_grid is None:
            return None
        if src.ndim != 3 or dst.ndim != 3 or src.shape[-1] != dst.shape[-1]:
            return None
        (fs, ts), (fd, td) = self.src_grid, self.dst_grid
        if src.shape[1] != self.n_prefix + fs * ts or dst.shape[1] != self.n_prefix + fd * td:
            return None
        return resample_pos_embed(src, self.src_grid, self.dst_grid, self.n_prefix)


class AstBackbone(nn.Module):
    """Log mel ``(batch, frames, mels)`` -> tokens ``(batch, 2 + rows*cols, dim)`` after the final norm."""

    output = "tokens"
    n_prefix_tokens = N_PREFIX

    def __init__(self, cfg: AstConfig, n_mels: int, frames: int) -> None:
        super().__init__()
        self.n_mels = n_mels
        self.frames = frames
        self.grid = patch_grid(n_mels, frames, cfg.fstride, cfg.tstride)
        self.out_dim = dim = cfg.embed_dim
        self.patch_embed = PatchEmbed(dim, cfg.fstride, cfg.tstride)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, N_PREFIX + self.grid[0] * self.grid[1], dim))
        self.blocks = vit_blocks(dim, cfg.depth, cfg.num_heads, cfg.drop_path)
        self.norm = VIT_NORM(dim)
        self._init_weights()

    def _init_weights(self) -> None:
        for param in (self.cls_token, self.dist_token, self.pos_embed):
            nn.init.trunc_normal_(param, std=0.02)
        init_linears(self.blocks)

    def positions(self, cols: int) -> Tensor:
        """The positional embedding for ``cols`` time columns (the built grid cut or interpolated)."""
        if cols == self.grid[1]:
            return self.pos_embed
        rows, built = self.grid
        dim = self.pos_embed.shape[-1]
        grid = self.pos_embed[:, N_PREFIX:].reshape(1, rows, built, dim).permute(0, 3, 1, 2)
        grid = fit_axis(grid, 3, cols, crop="start")
        patches = grid.permute(0, 2, 3, 1).reshape(1, rows * cols, dim)
        return torch.cat([self.pos_embed[:, :N_PREFIX], patches], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.blocks(self.input_tokens(x)))

    def input_tokens(self, x: Tensor) -> Tensor:
        """The tokens the first block takes: prefix tokens and patches, positions added."""
        if x.shape[-1] != self.n_mels:
            raise ValueError(f"ast: built for {self.n_mels} mel bins, got input with {x.shape[-1]}")
        if x.shape[1] < PATCH:
            x = F.pad(x, (0, 0, 0, PATCH - x.shape[1]))
        patches = self.patch_embed(x.transpose(1, 2).unsqueeze(1))  # (batch, dim, rows, cols)
        cols = patches.shape[-1]
        tokens = patches.flatten(2).transpose(1, 2)
        batch = tokens.shape[0]
        prefix = torch.cat(
            [self.cls_token.expand(batch, -1, -1), self.dist_token.expand(batch, -1, -1)], dim=1
        )
        return torch.cat([prefix, tokens], dim=1) + self.positions(cols)

    def prepare_checkpoint(self, converted: Converted) -> Converted:
        """Give the converted checkpoint's positional-embedding resamplers this model's patch grid."""
        adapters = [
            replace(a, dst_grid=self.grid) if isinstance(a, PosEmbedResampler) else a
            for a in converted.adapters
        ]
        return Converted(dict(converted.state), list(converted.ignored), adapters)


def ast_block_embeddings(backbone: AstBackbone, x: Tensor, layers: list[int]) -> dict[int, Tensor]:
    """One vector per input and chosen block (1-based), as AST-Fusion forms them.

    nttcslab/composing-general-audio-repr ``to_evar/evar/ar_ast_ext.py`` (``AR_AST_Fusion``, blocks
    ``[4, 11]`` counted from 0, i.e. 5 and 12): each chosen block's output goes through the final
    LayerNorm ``norm``, then the class and distillation tokens are averaged (as AST's head does).
    Returns {block: (batch, 1, dim)}: one frame, there is nothing to pool over time; and under key 0
    what ``backbone(x)`` returns when the last block was among them.
    """
    return prefix_token_embeddings(backbone, x, layers)


def build_backbone(cfg: AstConfig, n_mels: int, frames: int) -> nn.Module:
    """An AST for ``n_mels`` bins and ``cfg.input_frames`` frames (default: ``frames``, the training crop)."""
    return AstBackbone(cfg, n_mels, cfg.input_frames or frames)


def _pos_tokens(state: dict[str, Tensor], key: str) -> int | None:
    value = state.get(key)
    return int(value.shape[1]) - N_PREFIX if value is not None and value.ndim == 3 else None


def convert_ast(state: dict[str, Tensor]) -> Converted:
    """Official AST checkpoint (``module.v.*``, ``module.mlp_head.{0,1}``) -> ``backbone.*``, ``head.*``.

    The checkpoint's patch grid is taken to have 12 rows (128 mel bins at fstride 10, true of every
    released AST checkpoint), so 1212 patch tokens read as 12x101; a count not divisible by 12 is not
    resampled and is refused as a shape mismatch.
    """
    out: dict[str, Tensor] = {}
    ignored: list[str] = []
    renames = {"v.": "backbone.", "mlp_head.0.": "head.norm.", "mlp_head.1.": "head.fc."}
    for key, value in state.items():
        name = key.removeprefix("module.")
        if name.startswith(("v.head.", "v.head_dist.")):
            ignored.append(key)
            continue
        prefix = next((p for p in renames if name.startswith(p)), None)
        # a key with no known prefix is kept, so load_converted reports it as one the model lacks
        out[renames[prefix] + name[len(prefix) :] if prefix else key] = value
    tokens = _pos_tokens(out, "backbone.pos_embed")
    src = (AST_ROWS, tokens // AST_ROWS) if tokens and tokens % AST_ROWS == 0 else None
    return Converted(out, ignored, [PosEmbedResampler(src)])


def convert_deit(state: dict[str, Tensor]) -> Converted:
    """timm DeiT (distilled) ImageNet state dict -> ``backbone.*``; the square grid is read from the count."""
    out: dict[str, Tensor] = {}
    ignored: list[str] = []
    for key, value in state.items():
        if key.startswith(("head.", "head_dist.")):
            ignored.append(key)
        else:
            out["backbone." + key] = value
    tokens = _pos_tokens(out, "backbone.pos_embed")
    side = math.isqrt(tokens) if tokens else 0
    src = (side, side) if side and side * side == tokens else None
    return Converted(out, ignored, [rgb_to_mono, PosEmbedResampler(src)])


CONVERTERS: dict[str, Converter] = {"ast": convert_ast, "deit": convert_deit}


def detect_layout(keys) -> str:
    """The official AudioSet checkpoint (a DataParallel ``module.v.*``) or timm's DeiT."""
    return "ast" if any(k.startswith("module.v.") for k in keys) else "deit"


CHECKPOINTS = (
    Checkpoint(
        name="ast_audioset",
        url="https://www.dropbox.com/s/ca0b1v2nlxzyeb4/audioset_10_10_0.4593.pth?dl=1",
        filename="audioset_10_10_0.4593.pth",
        size=None,
        sha256=None,
        md5=None,
        license="BSD-3-Clause",
        layout="ast",
        features="ast_kaldi_128",
        model="ast_base",
        note="AST (Gong et al. 2021), full AudioSet, 10/10 stride, weight averaging, mAP 0.459; link "
        "from the README of github.com/YuanGongND/ast (BSD-3-Clause). The repo's ast_models.py "
        "downloads the same model from dropbox.com/s/cv4knew8mvbrnvq/audioset_0.4593.pth and the "
        "README offers OneDrive/Weiyun mirrors (manual download; pass the file with --weights PATH). "
        "Plain state dict of a DataParallel model: module.v.* (DeiT-base, 1-channel patch_embed) "
        "and module.mlp_head.{0,1}.*.",
    ),
    Checkpoint(
        name="deit_base_384",
        url="https://huggingface.co/timm/deit_base_distilled_patch16_384.fb_in1k/resolve/"
        "cb8f6fe63da08d7410513f9dac2f8a994eda0adc/model.safetensors",
        filename="deit_base_distilled_patch16_384.fb_in1k.safetensors",
        size=None,
        sha256=None,
        md5=None,
        license="Apache-2.0*",  # * as timm lists it; see the note
        layout="deit",
        features=None,
        model="ast_base",
        note="DeiT-base distilled 384 (Touvron et al. 2021), ImageNet-1k: the ImageNet "
        "initialisation of AST (RGB patch weights summed to one channel, position embedding "
        "resampled). timm pretrained_cfg hf_hub_id timm/deit_base_distilled_patch16_384.fb_in1k "
        "(licence field apache-2.0), pinned to the revision that added the weights. timm's code "
        "is Apache-2.0; licences of ImageNet-trained weights vary by model and the ImageNet "
        "terms of use are non-commercial.",
    ),
)


# default layers: AST-Fusion's blocks 5 and 12 (4 and 11 counted from 0) of a 12-block AST
LAYERS = Layers(
    lambda c: c.depth, lambda c: ["5", "12"] if c.depth == 12 else [EMBEDDING], ast_block_embeddings, "mean"
)
# AudioSet input: 1024 frames (10.24 s, zero-padded); min_frames 1: AstBackbone pads short inputs itself
VERIFY = Verification(audioset_layouts=frozenset({"ast"}), input_frames=1024)
FAMILY = Family(
    AstConfig, build_backbone, CONVERTERS, detect_layout, CHECKPOINTS, LAYERS, lambda b: 1, VERIFY
)
