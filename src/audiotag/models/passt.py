"""PaSST (Koutini et al. 2021, "Efficient Training of Audio Transformers with Patchout").

A DeiT-style transformer over 16x16 patches of the log mel, read as a one-channel image
``(mels x frames)`` with stride ``(fstride, tstride)``, as AST; it differs in the positions and in
patchout (kkoutini/PaSST ``models/passt.py``, class ``PaSST``):

- Separate positional embeddings: ``freq_new_pos_embed`` (one per patch row) and
  ``time_new_pos_embed`` (one per column, ``input_frames // tstride`` of them: 99 for the
  released 998-frame models) are added to the patch grid, and ``new_pos_embed`` to the class and
  distillation tokens. An input with fewer columns takes the first ones at evaluation and a random
  run of them in training; an input with more is cut to the columns the embedding has (the
  official rule: its later frames are not seen; use a shorter crop or windows).
- Structured patchout, in training only: ``s_patchout_t`` random columns and ``s_patchout_f``
  random rows of the patch grid are dropped per batch (after the positions are added), and
  ``u_patchout`` random patches of the flattened sequence (unstructured). The sequence gets shorter,
  which is what makes PaSST's training fast.
- The head (``head.0`` LayerNorm, ``head.1`` Linear) takes the mean of the class and distillation
  tokens after the final norm: our ``TokenHead`` with ``head: cls``; ``head_dist`` is unused at
  inference in the official forward and is ignored.

Attribute names mirror the official ones (``patch_embed.proj``, ``cls_token``, ``dist_token``,
``new_pos_embed``, ``freq_new_pos_embed``, ``time_new_pos_embed``, ``blocks.N`` with timm's block
names, ``norm``), so the official checkpoints load by adding ``backbone.`` (layout ``"passt"``).
Input normalisation (``(x + 4.5) / 5``) is ``input_norm`` in configs/models/passt_*.yaml; the
front-end is configs/features/passt_32k_128.yaml.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from audiotag.config.schema import ModelBase
from audiotag.core.errors import ConfigError
from audiotag.fetch.weights import Checkpoint
from audiotag.models.family import Family, Layers, Verification
from audiotag.models.loading import Converted, Converter
from audiotag.models.vit import VIT_NORM, PatchEmbed, init_linears, prefix_token_embeddings, vit_blocks

PATCH = 16
N_PREFIX = 2  # class token + distillation token
RELEASE = "https://github.com/kkoutini/PaSST/releases/download/"


class PasstConfig(ModelBase):
    """PaSST: DeiT blocks over 16x16 patches, separate time/frequency positions, structured patchout."""

    name: Literal["passt"] = "passt"
    token_heads: ClassVar[bool] = True
    head: Literal["linear", "attention", "cls", "mean"] = "cls"
    fstride: int = Field(10, ge=1, le=16)
    tstride: int = Field(10, ge=1, le=16)
    embed_dim: int = Field(768, gt=0)
    depth: int = Field(12, ge=1)
    num_heads: int = Field(12, ge=1)
    drop_path: float = Field(0.0, ge=0, lt=1)
    input_frames: int = Field(
        998,
        ge=PATCH,
        description="PaSST's input_tdim: the time positional embedding has input_frames // tstride "
        "columns (998: 10 s at hop 320, as every released AudioSet model)",
    )
    s_patchout_t: int = Field(0, ge=0, description="structured patchout: patch columns dropped in training")
    s_patchout_f: int = Field(0, ge=0, description="structured patchout: patch rows dropped in training")
    u_patchout: int = Field(0, ge=0, description="unstructured patchout: patches dropped in training")

    @model_validator(mode="after")
    def _check(self) -> PasstConfig:
        if self.embed_dim % self.num_heads:
            raise ValueError("embed_dim must be a multiple of num_heads")
        return self


def patch_rows(n_mels: int, fstride: int) -> int:
    """Patch rows of ``n_mels`` bins: ``(n_mels - 16) // fstride + 1`` (12 for 128 bins at stride 10)."""
    if n_mels < PATCH:
        raise ConfigError(f"passt: {n_mels} mel bins are fewer than a 16-bin patch")
    return (n_mels - PATCH) // fstride + 1


def keep_random(count: int, drop: int) -> Tensor:
    """Sorted indices of ``count - drop`` of ``count`` items at random (at least one kept)."""
    return torch.randperm(count)[: max(1, count - drop)].sort().values


class PasstBackbone(nn.Module):
    """Log mel ``(batch, frames, mels)`` -> tokens ``(batch, 2 + patches, dim)`` after the final norm."""

    output = "tokens"
    n_prefix_tokens = N_PREFIX

    def __init__(self, cfg: PasstConfig, n_mels: int, frames: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_mels = n_mels
        self.out_dim = dim = cfg.embed_dim
        rows, cols = patch_rows(n_mels, cfg.fstride), cfg.input_frames // cfg.tstride
        self.patch_embed = PatchEmbed(dim, cfg.fstride, cfg.tstride)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.new_pos_embed = nn.Parameter(torch.zeros(1, N_PREFIX, dim))
        self.freq_new_pos_embed = nn.Parameter(torch.zeros(1, dim, rows, 1))
        self.time_new_pos_embed = nn.Parameter(torch.zeros(1, dim, 1, cols))
        self.blocks = vit_blocks(dim, cfg.depth, cfg.num_heads, cfg.drop_path)
        self.norm = VIT_NORM(dim)
        self._init_weights()

    def _init_weights(self) -> None:
        for param in (self.cls_token, self.dist_token, self.new_pos_embed):
            nn.init.trunc_normal_(param, std=0.02)
        for param in (self.freq_new_pos_embed, self.time_new_pos_embed):
            nn.init.trunc_normal_(param, std=0.02)
        init_linears(self.blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.blocks(self.input_tokens(x)))

    def time_positions(self, cols: int) -> Tensor:
        """The time embedding for ``cols <= built`` columns: the first ones, or a random run in training."""
        built = self.time_new_pos_embed.shape[-1]
        offset = 0
        if self.training and cols < built:
            offset = int(torch.randint(1 + built - cols, (1,)).item())
        return self.time_new_pos_embed[..., offset : offset + cols]

    def input_tokens(self, x: Tensor) -> Tensor:
        """The tokens the first block takes: prefix tokens and (patched-out) patches, positions added."""
        if x.shape[-1] != self.n_mels:
            raise ValueError(f"passt: built for {self.n_mels} mel bins, got input with {x.shape[-1]}")
        if x.shape[1] < PATCH:
            x = F.pad(x, (0, 0, 0, PATCH - x.shape[1]))
        grid = self.patch_embed(x.transpose(1, 2).unsqueeze(1))  # (batch, dim, rows, cols)
        grid = grid[..., : self.time_new_pos_embed.shape[-1]]  # longer inputs are cut, as the official
        grid = grid + self.time_positions(grid.shape[-1]) + self.freq_new_pos_embed
        if self.training and self.cfg.s_patchout_t:
            grid = grid[..., keep_random(grid.shape[-1], self.cfg.s_patchout_t).to(grid.device)]
        if self.training and self.cfg.s_patchout_f:
            grid = grid[:, :, keep_random(grid.shape[2], self.cfg.s_patchout_f).to(grid.device)]
        tokens = grid.flatten(2).transpose(1, 2)
        if self.training and self.cfg.u_patchout:
            tokens = tokens[:, keep_random(tokens.shape[1], self.cfg.u_patchout).to(grid.device)]
        batch = tokens.shape[0]
        cls = self.cls_token.expand(batch, -1, -1) + self.new_pos_embed[:, :1]
        dist = self.dist_token.expand(batch, -1, -1) + self.new_pos_embed[:, 1:]
        return torch.cat([cls, dist, tokens], dim=1)


def passt_block_embeddings(backbone: PasstBackbone, x: Tensor, layers: list[int]) -> dict[int, Tensor]:
    """One vector per input and chosen block (1-based): the block's tokens through the final norm,
    class and distillation tokens averaged, as PaSST's head pools them. {block: (batch, 1, dim)}, and
    under key 0 what ``backbone(x)`` returns when the last block was among them."""
    return prefix_token_embeddings(backbone, x, layers)


def build_backbone(cfg: PasstConfig, n_mels: int, frames: int) -> nn.Module:
    return PasstBackbone(cfg, n_mels, frames)


def convert_passt(state: dict[str, Tensor]) -> Converted:
    """Official PaSST state dict -> ``backbone.*`` and ``head.{norm,fc}.*``; ``head_dist`` is ignored.

    The release files are plain state dicts of ``PaSST`` (a ``{"model": ...}`` wrapper is unwrapped
    by the reader, a ``module.`` prefix is removed here).
    """
    out: dict[str, Tensor] = {}
    ignored: list[str] = []
    heads = {"head.0.": "head.norm.", "head.1.": "head.fc."}
    for key, value in state.items():
        name = key.removeprefix("module.")
        if name.startswith("head_dist."):
            ignored.append(key)
            continue
        prefix = next((p for p in heads if name.startswith(p)), None)
        out[heads[prefix] + name[len(prefix) :] if prefix else "backbone." + name] = value
    return Converted(out, ignored)


CONVERTERS: dict[str, Converter] = {"passt": convert_passt}


def _release(name: str, tag: str, filename: str, model: str, note: str) -> Checkpoint:
    return Checkpoint(
        name=name,
        url=f"{RELEASE}{tag}/{filename}",
        filename=filename,
        size=None,
        sha256=None,
        md5=None,
        license="Apache-2.0",
        layout="passt",
        features="passt_32k_128",
        model=model,
        note=f"PaSST (Koutini et al. 2021), AudioSet, {note}. URL from default_cfgs in models/passt.py "
        "of github.com/kkoutini/PaSST (Apache-2.0, commit 2a5c818); a plain state dict with "
        "AudioSet's 527-class head (head.0/head.1; head_dist ignored).",
    )


CHECKPOINTS = (
    _release(
        "passt_s_swa_p16_128_ap476",
        "v0.0.1-audioset",
        "passt-s-f128-p16-s10-ap.476-swa.pt",
        "passt_s",
        "PaSST-S, patch stride 10 (overlapping), structured patchout, SWA, mAP 0.476",
    ),
    _release(
        "passt_s_kd_p16_128_ap486",
        "v.0.0.9",
        "passt-s-kd-ap.486.pt",
        "passt_s",
        "PaSST-S, stride 10, trained with knowledge distillation, mAP 0.486",
    ),
    _release(
        "passt_s_p16_s16_128_ap468",
        "v0.0.2-audioset",
        "passt-s-f128-p16-s16-ap.468.pt",
        "passt_s_s16",
        "PaSST-S, patch stride 16 (no overlap: 8x62 patches, about 3x faster), mAP 0.468",
    ),
    _release(
        "passt_s_swa_p16_s16_128_ap473",
        "v0.0.2-audioset",
        "passt-s-f128-p16-s16-ap.473-swa.pt",
        "passt_s_s16",
        "PaSST-S, patch stride 16 (no overlap), SWA, mAP 0.473",
    ),
    _release(
        "passt_l_kd_p16_128_ap47",
        "v.0.0.10",
        "passt-l-kd-ap.47.pt",
        "passt_l",
        "PaSST-L (light: 7 blocks), stride 10, knowledge distillation, mAP 0.47",
    ),
)


def default_layers(cfg: PasstConfig) -> list[str]:
    """AST-Fusion's choice carried over: blocks 5 and 12 of 12 (a middle and the last block).

    Neither the PaSST paper nor EVAR names layers for PaSST; it is AST's network (DeiT-base, 12
    blocks, class and distillation tokens), so the AST-Fusion layers of Niizumi et al. 2022
    (EVAR ``ar_ast_ext.py``) apply; another depth takes the block at the same share (PaSST-L's 7
    blocks: 3 and 7). Concatenated by the caller, as every family's fused layers.
    """
    middle = max(1, round(5 * cfg.depth / 12))
    return [str(i) for i in sorted({middle, cfg.depth})]


LAYERS = Layers(lambda c: c.depth, default_layers, passt_block_embeddings, "mean")
# AudioSet input: 998 frames as the official input_tdim (a 10-s clip gives 1000; the grid has 99 columns
# either way); min_frames 1: the backbone pads inputs shorter than one patch
VERIFY = Verification(audioset_layouts=frozenset({"passt"}), input_frames=998)
FAMILY = Family(PasstConfig, build_backbone, CONVERTERS, None, CHECKPOINTS, LAYERS, lambda b: 1, VERIFY)
