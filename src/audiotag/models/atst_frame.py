"""ATST-Frame (Li, Shao, Li et al., "Self-supervised Audio Teacher-Student Transformer for Both
Clip-level and Frame-level Tasks", IEEE/ACM TASLP 2024, arXiv 2306.04186): a ViT over 40 ms frames.

Official code: github.com/Audio-WestlakeU/audiossl, ``audiossl/methods/atstframe`` (``FrameAST`` in
``audio_transformer.py``, the embedding API in ``embedding.py``), read at commit ec3a14db.

The log mel ``(batch, frames, 64 mels)`` (``features: atst_16k_64``; min-max scaled to [-1, 1] by
``input_norm``) is cut into patches of all 64 mel bins x 4 frames (40 ms); each patch, flattened mel
bin by mel bin (bin-major: ``mel * 4 + frame``, the official ``(p1 p2 c)`` order), is one token
through a linear ``patch_embed``. A learned positional embedding is added: the first ``n`` positions
for ``n`` tokens (the official ``pos_type: cut``, no interpolation), then 12 pre-norm blocks without
qkv bias, then the LayerNorm ``norm_frame``. No class token: one output token per 40 ms frame.

Longer inputs: the positional embedding covers ``input_frames`` (1001 frames, 10.01 s, the official
``chunk_len``). Like the official ``get_timestamp_embedding`` and fine-tuning encoder, an input longer
than that is cut into chunks of ``input_frames`` frames, each chunk encoded alone, and the chunks'
tokens concatenated along time; frames past the last multiple of 4 in a chunk are dropped (official).
Official clip-level pooling averages the per-chunk means (fine-tuning: leaving out a last chunk of at
most 500 frames); our heads and layers pool all tokens, which differs only for inputs over 10.01 s.
The official code also masks padded frames out of attention by each clip's length; inputs here are
taken as unpadded (a short clip padded by the data pipeline is attended in full).

One checkpoint layout converts: ``"lightning"``, the official PyTorch Lightning checkpoints
(``atstframe_base.ckpt``): ``state_dict`` keys ``model.teacher.encoder.*`` (the EMA teacher encoder
the official embedding and fine-tuning code use), the unused class slot of ``pos_embed`` dropped;
the student, projector, predictor and ``mask_embed`` are ignored. A checkpoint fine-tuned by the
official downstream code (``encoder.encoder.*``) converts the same way, its head ignored.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from audiotag.config.schema import ModelBase
from audiotag.fetch.weights import Checkpoint
from audiotag.models.family import Family, Layers, Verification
from audiotag.models.loading import Converted, Converter
from audiotag.models.vit import VIT_NORM, init_linears, vit_blocks

PATCH_FRAMES = 4  # frames per token: 40 ms at a 10 ms hop
ENCODER_PREFIXES = ("model.teacher.encoder.", "encoder.encoder.")


class AtstFrameConfig(ModelBase):
    """ATST-Frame: ViT blocks over patches of all mel bins x 4 frames, one token per 40 ms."""

    name: Literal["atst_frame"] = "atst_frame"
    token_heads: ClassVar[bool] = False  # its output is a frame sequence: linear/attention heads
    global_pool: Literal["mean", "max", "mean+max"] = Field(
        "mean", description="pooling of the frame tokens for the linear head (official: mean)"
    )
    embed_dim: int = Field(768, gt=0)
    depth: int = Field(12, ge=1)
    num_heads: int = Field(12, ge=1)
    drop_path: float = Field(
        0.1, ge=0, lt=1, description="stochastic depth of the last block (official default 0.1)"
    )
    input_frames: int = Field(
        1001,
        ge=PATCH_FRAMES,
        description="frames per chunk, the positional embedding's length (1001: the checkpoints' 10.01 s); "
        "longer inputs are encoded chunk by chunk",
    )

    @model_validator(mode="after")
    def _check(self) -> AtstFrameConfig:
        if self.embed_dim % self.num_heads:
            raise ValueError("embed_dim must be a multiple of num_heads")
        return self


class FramePatches(nn.Module):
    """(batch, frames, mels) -> (batch, frames // 4, dim): each 4-frame patch, bin-major, projected."""

    def __init__(self, n_mels: int, dim: int) -> None:
        super().__init__()
        self.patch_embed = nn.Linear(n_mels * PATCH_FRAMES, dim)

    def forward(self, x: Tensor) -> Tensor:
        batch, frames, mels = x.shape
        n = frames // PATCH_FRAMES
        patches = x[:, : n * PATCH_FRAMES].reshape(batch, n, PATCH_FRAMES, mels).transpose(2, 3)
        return self.patch_embed(patches.reshape(batch, n, mels * PATCH_FRAMES))


class AtstFrameBackbone(nn.Module):
    """Log mel ``(batch, frames, mels)`` -> frame tokens ``(batch, frames // 4, dim)`` after ``norm_frame``
    (per chunk of ``input_frames`` frames, concatenated)."""

    output = "sequence"

    def __init__(self, cfg: AtstFrameConfig, n_mels: int) -> None:
        super().__init__()
        self.n_mels = n_mels
        self.chunk = cfg.input_frames
        self.out_dim = dim = cfg.embed_dim
        self.patch_embed = FramePatches(n_mels, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.input_frames // PATCH_FRAMES, dim))
        self.blocks = vit_blocks(dim, cfg.depth, cfg.num_heads, cfg.drop_path, qkv_bias=False)
        self.norm_frame = VIT_NORM(dim)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        init_linears(self)

    def chunks(self, x: Tensor) -> list[Tensor]:
        """``x`` cut into chunks of ``input_frames`` frames; a last chunk under one patch is dropped
        (it has no token), unless it is the whole input, which is then zero-padded to one patch."""
        if x.shape[-1] != self.n_mels:
            raise ValueError(f"atst_frame: built for {self.n_mels} mel bins, got input with {x.shape[-1]}")
        if x.shape[1] < PATCH_FRAMES:
            return [F.pad(x, (0, 0, 0, PATCH_FRAMES - x.shape[1]))]
        return [c for c in torch.split(x, self.chunk, dim=1) if c.shape[1] >= PATCH_FRAMES]

    def tokens(self, chunk: Tensor) -> Tensor:
        """A chunk's patch tokens with their positions, as the first block takes them."""
        tokens = self.patch_embed(chunk)
        return tokens + self.pos_embed[:, : tokens.shape[1]]

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.norm_frame(self.blocks(self.tokens(c))) for c in self.chunks(x)], dim=1)


def atst_block_frames(backbone: AtstFrameBackbone, x: Tensor, layers: list[int]) -> dict[int, Tensor]:
    """Each chosen block's (1-based) output through ``norm_frame``: {block: (batch, frames // 4, dim)},
    chunks concatenated along time, and under key 0 the backbone's output when the last block is chosen.

    As the official ``get_intermediate_layers`` (every block's tokens normalised by the final
    ``norm_frame``), which ``get_timestamp_embedding`` concatenates over blocks per frame and
    ``get_scene_embedding`` / linear evaluation (``n_last_blocks: 12``) averages over time first.
    """
    per_layer: dict[int, list[Tensor]] = {layer: [] for layer in layers}
    for chunk in backbone.chunks(x):
        tokens = backbone.tokens(chunk)
        for index, block in enumerate(backbone.blocks):
            if index >= max(layers):
                break
            tokens = block(tokens)
            if index + 1 in per_layer:
                per_layer[index + 1].append(backbone.norm_frame(tokens))
    out = {layer: torch.cat(parts, dim=1) for layer, parts in per_layer.items()}
    if len(backbone.blocks) in out:
        out[0] = out[len(backbone.blocks)]
    return out


def build_backbone(cfg: AtstFrameConfig, n_mels: int, frames: int) -> nn.Module:
    """Any input length works (chunks of ``cfg.input_frames``), so the training crop is not needed."""
    return AtstFrameBackbone(cfg, n_mels)


def cut_positions(key: str, src: Tensor, dst: Tensor) -> Tensor | None:
    """A model built for fewer frames per chunk takes the checkpoint's first positions (``pos_type: cut``)."""
    if not key.endswith("pos_embed") or src.ndim != 3 or dst.ndim != 3 or src.shape[-1] != dst.shape[-1]:
        return None
    return src[:, : dst.shape[1]] if dst.shape[1] < src.shape[1] else None


def convert_lightning(state: dict[str, Tensor]) -> Converted:
    """Official Lightning checkpoint's ``state_dict`` -> ``backbone.*`` (the teacher encoder).

    ``pos_embed`` (1, 1 + positions, dim) loses its first slot, which the official ``pos_type: cut``
    never reads (its positions are ``pos_embed[:, 1 : n + 1]``).
    """
    out: dict[str, Tensor] = {}
    ignored: list[str] = []
    for key, value in state.items():
        prefix = next((p for p in ENCODER_PREFIXES if key.startswith(p)), None)
        name = key[len(prefix) :] if prefix else ""
        if prefix is None or name == "mask_embed":
            ignored.append(key)  # student, projector/predictor, a fine-tuned head; the mask token
            continue
        out["backbone." + name] = value[:, 1:] if name == "pos_embed" else value
    return Converted(out, ignored, [cut_positions])


CONVERTERS: dict[str, Converter] = {"lightning": convert_lightning}

_NOTE = (
    "ATST-Frame (Li et al. 2023, TASLP), AudioSet-2M self-supervised (no AudioSet head). Link from "
    "audiossl/methods/atstframe/README.md of github.com/Audio-WestlakeU/audiossl; the repository's "
    "LICENSE puts the hyper-linked checkpoints under CC BY 4.0 (code MIT). Google Drive answers large "
    "files with a confirmation page: if the fetch fails, download it in a browser and pass the file "
    "with --weights PATH. PyTorch Lightning checkpoint: state_dict with model.{student,teacher}.* "
    "keys; the teacher encoder is used, as the official embedding.py."
)
CHECKPOINTS = (
    Checkpoint(
        name="atstframe_base",
        url="https://drive.google.com/uc?export=download&id=1bGJSZWlAIIJ6GL5Id5dW0PTB72DL-QDQ",
        filename="atstframe_base.ckpt",
        size=None,
        sha256=None,
        md5=None,
        license="CC-BY-4.0",
        layout="lightning",
        features="atst_16k_64",
        model="atst_frame_base",
        note="Base (768-d, 12 blocks). " + _NOTE,
    ),
    Checkpoint(
        name="atstframe_small",
        url="https://drive.google.com/uc?export=download&id=1xZoOTuxV415icYONYbeFQzgrmJQf4a4B",
        filename="atstframe_small.ckpt",
        size=None,
        sha256=None,
        md5=None,
        license="CC-BY-4.0",
        layout="lightning",
        features="atst_16k_64",
        model="atst_frame_small",
        note="Small (384-d, 12 blocks; the README's link text says 'atstframe_samll'). " + _NOTE,
    ),
)

# default layers: all blocks, as the official linear evaluation (n_last_blocks 12) and embedding.py
# (N_BLOCKS = 12) concatenate every block's normalised output; mean over time as get_scene_embedding
LAYERS = Layers(
    lambda c: c.depth, lambda c: [str(i) for i in range(1, c.depth + 1)], atst_block_frames, "mean"
)
FAMILY = Family(
    AtstFrameConfig,
    build_backbone,
    CONVERTERS,
    None,
    CHECKPOINTS,
    LAYERS,
    lambda backbone: PATCH_FRAMES,
    Verification(),
)
