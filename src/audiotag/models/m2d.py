"""Masked Modeling Duo (M2D, Niizumi et al. 2023-24): its ViT encoder as a backbone and a representation.

As the official runtime (nttcslab/m2d ``m2d/runtime_audio.py``: ``RuntimeM2D``, the same steps as
``examples/portable_m2d.py``): the log mel ``(batch, frames, 80)`` is read as a one-channel image
``(mels x frames)``, cut into non-overlapping 16x16 patches (a grid of 5 frequency rows x columns),
flattened row-major (frequency-major), a fixed 2-D sin-cos positional embedding is added, a class
token (with its own position) goes first, and timm ViT blocks and a final LayerNorm follow.

Input length. The encoder is built for ``input_frames`` frames (the "unit": 608 = 6.08 s for the
pre-trained checkpoints, 1001 for the AudioSet fine-tuned ones; null = the training crop). As
``encode_lms``: a longer input is split into chunks of ``unit`` frames, encoded one by one, and their
patch tokens concatenated; the input is first zero-padded at its end so that the last chunk's length
is a multiple of 16 (frames past the last whole patch of a chunk of exactly ``unit`` frames are not
seen: 1001 frames make 62 columns). A chunk with fewer columns than the grid uses the first columns
of the positional grid (``adjust_short``). ``forward`` returns ``(batch, 1 + patches, dim)``: the
chunks' class tokens averaged, then every patch token of every chunk in order.

Positional grid of a checkpoint made for another length (``get_backbone`` with ``dur_frames``): a
longer grid is interpolated bicubically (timm's ``resample_abs_pos_embed`` without antialiasing), a
shorter one keeps its first columns; done by ``M2DBackbone.prepare_checkpoint`` at load time.

Normalisation: ``(log-mel - mean) / std`` with the checkpoint's ``norm_stats`` (``-7.1, 4.2`` for
every 2022 checkpoint and the default of files without it); our ``model.input_norm`` must equal them
(checked at load time) unless it is ``dataset`` (EVAR normalises by the downstream training set).

Structured patch dropout (``training_mask``, training only): ``random_structured_mask`` of the
official ``models_mae.py`` (the patched MAE file of ``patch_m2d.diff``), the same random draws
(numpy's global generator once, then ``torch.randperm`` per clip for rows, then for columns) and the
same selection: tokens ordered by ``argsort(mask, descending=True)`` and the first ``len_keep``
(the count of unmasked tokens) kept. Note what that does: the *masked* rows/columns sort first, so
the kept tokens are the masked ones plus some unmasked ones chosen by the sort's order of ties; we
reproduce the official code, not the intent its docstring states.

Heads: EVAR's fine-tuning head (``TaskHead``): the mean of the patch tokens (``flat_features``, 768-d),
a BatchNorm1d without affine parameters, a Linear (``head: mean``, ``head_norm: batch``). The
AudioSet checkpoints order their 527 outputs by the classes' MIDs (sorted, as the official tagging
notebook reads them); the ``m2d_audioset`` converter reorders them to AudioSet's index order.

Layers for ``embed``: as EVAR's ``AR_M2D`` (``encode_lms(return_layers=True)``): each block's output
(the last one after the final LayerNorm, the others without it), class token dropped, the patch
tokens of one time column concatenated over frequency (5 x 768 = 3840 values per 160 ms), chunks
joined over time; pooled by the mean over time (EVAR's ``forward``: ``x.mean(dim=-1)``). Default: the
last block only, EVAR's ``config/m2d.yaml`` (``output_layers: [-1]``).
"""

from __future__ import annotations

import csv
import logging
import math
import re
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from audiotag.config.schema import InputNorm, ModelBase
from audiotag.core.errors import ConfigError
from audiotag.fetch.weights import Checkpoint
from audiotag.models.family import Family, Layers, Verification
from audiotag.models.loading import Converted, Converter
from audiotag.models.vit import VIT_NORM, init_linears, vit_blocks

log = logging.getLogger(__name__)

M2D_NORM = (-7.1, 4.2)  # norm_stats of the 2022 checkpoints, and the official default without one


class M2DConfig(ModelBase):
    """M2D's ViT encoder: 16x16 patches of an 80-bin log mel, 2-D sin-cos positions, ViT blocks."""

    name: Literal["m2d"] = "m2d"
    token_heads: ClassVar[bool] = True
    head: Literal["linear", "attention", "cls", "mean"] = "mean"
    head_norm: Literal["batch", "layer"] = Field(
        "batch", description="batch: BatchNorm1d without affine (EVAR's TaskHead, M2D's); layer: LayerNorm"
    )
    embed_dim: int = Field(768, gt=0)
    depth: int = Field(12, ge=1)
    num_heads: int = Field(12, ge=1)
    patch_freq: int = Field(16, ge=1, description="mel bins per patch")
    patch_time: int = Field(16, ge=1, description="frames per patch")
    drop_path: float = Field(0.0, ge=0, lt=1)
    input_frames: int | None = Field(
        None,
        gt=0,
        description="frames the encoder takes at once (the checkpoint's unit: 608 pre-trained, 1001 "
        "AudioSet fine-tuned); longer inputs are encoded in chunks of it; null = the training crop",
    )
    training_mask: float = Field(
        0.0, ge=0, lt=1, description="structured patch dropout ratio in training (official fine-tuning: 0.5)"
    )
    input_norm: InputNorm | Literal["dataset"] | None = Field(
        InputNorm(mean=M2D_NORM[0], std=M2D_NORM[1]),
        description="(x - mean) / std before the encoder: the checkpoint's norm_stats, or 'dataset'",
    )

    @model_validator(mode="after")
    def _check(self) -> M2DConfig:
        if self.embed_dim % self.num_heads:
            raise ValueError("embed_dim must be a multiple of num_heads")
        if self.embed_dim % 4:
            raise ValueError("embed_dim must be a multiple of 4 (2-D sin-cos positions)")
        return self


def sincos_positions(dim: int, rows: int, cols: int) -> Tensor:
    """(1, 1 + rows*cols, dim): MAE's fixed 2-D sin-cos embedding (a zero row first, for the class
    token). The first half of the channels encodes the column (time), the second half the row
    (frequency), each as sin then cos of ``position / 10000**(2k / (dim/2))``."""
    quarter = dim // 4
    freq = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    col = torch.arange(cols, dtype=torch.float64).repeat(rows)  # row-major: column index varies fastest
    row = torch.arange(rows, dtype=torch.float64).repeat_interleave(cols)
    parts = []
    for pos in (col, row):
        angle = pos[:, None] * freq[None, :]
        parts += [angle.sin(), angle.cos()]
    grid = torch.cat(parts, dim=1)
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), grid]).float().unsqueeze(0)


def structured_keep(tokens: Tensor, rows: int, cols: int, ratio: float) -> Tensor:
    """The tokens ``random_structured_mask`` + ``random_masking`` keep (see the module docstring)."""
    batch, _, dim = tokens.shape
    n_rows = min(rows - 1, int(rows * (ratio + 1.0 / rows) * np.random.rand()))
    n_cols = int(cols * max(ratio + 0.5 / cols - n_rows / rows, 0.0))
    mask = torch.zeros((batch, rows, cols), dtype=torch.int)
    for b in range(batch):
        mask[b, torch.randperm(rows)[:n_rows]] = 1
    for b in range(batch):
        mask[b, :, torch.randperm(cols)[:n_cols]] = 1
    order = torch.argsort(mask.view(batch, -1).to(tokens.device), descending=True)
    keep = rows * cols - (n_rows * cols + n_cols * rows - n_rows * n_cols)
    index = order[:, :keep].unsqueeze(-1).expand(-1, -1, dim)
    return torch.gather(tokens, 1, index)


class PatchEmbed(nn.Module):
    def __init__(self, dim: int, patch: tuple[int, int]) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, dim, kernel_size=patch, stride=patch)


class M2DBackbone(nn.Module):
    """Log mel ``(batch, frames, mels)`` -> tokens ``(batch, 1 + patches, dim)`` after the final norm."""

    output = "tokens"
    n_prefix_tokens = 1

    def __init__(self, cfg: M2DConfig, n_mels: int, frames: int) -> None:
        super().__init__()
        self.patch = (cfg.patch_freq, cfg.patch_time)
        self.unit = cfg.input_frames or frames
        if n_mels < self.patch[0] or self.unit < self.patch[1]:
            raise ConfigError(
                f"m2d: an input of {n_mels} mel bins x {self.unit} frames is smaller than one "
                f"{self.patch[0]}x{self.patch[1]} patch (model.input_frames, features.n_mels)"
            )
        self.grid = (n_mels // self.patch[0], self.unit // self.patch[1])
        self.training_mask = cfg.training_mask
        self.input_norm = cfg.input_norm  # what the checkpoint's norm_stats are checked against
        self.out_dim = dim = cfg.embed_dim
        self.patch_embed = PatchEmbed(dim, self.patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", sincos_positions(dim, *self.grid))  # fixed, as the official
        self.blocks = vit_blocks(dim, cfg.depth, cfg.num_heads, cfg.drop_path)
        self.norm = VIT_NORM(dim)
        nn.init.normal_(self.cls_token, std=1e-6)
        init_linears(self.blocks)

    def chunks(self, x: Tensor) -> list[Tensor]:
        """(batch, frames, mels) -> one-channel images (batch, 1, mels, <= unit), as ``encode_lms``."""
        image = x.transpose(1, 2).unsqueeze(1)
        frames, step = image.shape[-1], self.patch[1]
        count = math.ceil(frames / self.unit)
        pad = (step - frames % self.unit % step) % step
        if pad:
            image = F.pad(image, (0, pad))
        return [image[..., i * self.unit : (i + 1) * self.unit] for i in range(count)]

    def chunk_input(self, image: Tensor) -> tuple[Tensor, int]:
        """The first block's input for one chunk (class token first) and its patch columns."""
        patches = self.patch_embed.proj(image)  # (batch, dim, rows, cols)
        rows, cols = patches.shape[-2:]
        dim = patches.shape[1]
        grid = self.pos_embed[:, 1:].reshape(1, self.grid[0], self.grid[1], dim)
        tokens = patches.flatten(2).transpose(1, 2) + grid[:, :rows, :cols].reshape(1, rows * cols, dim)
        if self.training and self.training_mask > 0:
            tokens = structured_keep(tokens, rows, cols, self.training_mask)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1), cols

    def forward(self, x: Tensor) -> Tensor:
        outs = [self.norm(self.blocks(self.chunk_input(image)[0])) for image in self.chunks(x)]
        if len(outs) == 1:
            return outs[0]
        cls = torch.stack([out[:, :1] for out in outs]).mean(dim=0)
        return torch.cat([cls, *(out[:, 1:] for out in outs)], dim=1)

    def prepare_checkpoint(self, converted: Converted) -> Converted:
        """Check the checkpoint's ``norm_stats`` against ``model.input_norm``; fit its positional grid."""
        state = dict(converted.state)
        stats = state.pop(NORM_STATS, None)
        ignored = list(converted.ignored) + ([NORM_STATS] if stats is not None else [])
        mean, std = (float(v) for v in stats.flatten()) if stats is not None else M2D_NORM
        self._check_norm(mean, std, "its norm_stats" if stats is not None else "M2D's default, no norm_stats")
        return Converted(state, ignored, [*converted.adapters, self._fit_positions])

    def _check_norm(self, mean: float, std: float, origin: str) -> None:
        norm = self.input_norm
        if norm == "dataset":
            log.info(
                "m2d: input_norm dataset, not the checkpoint's mean %.4g, std %.4g (%s)", mean, std, origin
            )
            return
        if norm is None or not (
            math.isclose(norm.mean, mean, abs_tol=1e-4) and math.isclose(norm.std, std, abs_tol=1e-4)
        ):
            given = "none" if norm is None else f"mean {norm.mean:g}, std {norm.std:g}"
            raise ConfigError(
                f"m2d: the checkpoint was trained on log-mels normalised by mean {mean:.6g}, std {std:.6g} "
                f"({origin}), but model.input_norm is {given}; set model.input_norm: "
                f"{{mean: {mean:.6g}, std: {std:.6g}}} (or 'dataset', as EVAR)"
            )

    def _fit_positions(self, key: str, src: Tensor, dst: Tensor) -> Tensor | None:
        """Adapter: the checkpoint's (1, 1 + rows*cols, dim) grid to this model's columns."""
        rows, cols = self.grid
        if key != f"backbone.{POS_EMBED}" or src.ndim != 3 or src.shape[-1] != dst.shape[-1]:
            return None
        if (src.shape[1] - 1) % rows or dst.shape[1] != 1 + rows * cols:
            return None
        dim, src_cols = src.shape[-1], (src.shape[1] - 1) // rows
        grid = src[:, 1:].reshape(1, rows, src_cols, dim)
        if cols <= src_cols:
            grid = grid[:, :, :cols]
        else:
            image = F.interpolate(grid.permute(0, 3, 1, 2).float(), size=(rows, cols), mode="bicubic")
            grid = image.permute(0, 2, 3, 1).to(src.dtype)
        return torch.cat([src[:, :1], grid.reshape(1, rows * cols, dim)], dim=1)


def m2d_layer_frames(backbone: M2DBackbone, x: Tensor, layers: list[int]) -> dict[int, Tensor]:
    """{block (1-based): (batch, columns, rows * dim)}, EVAR's layer features (module docstring), and
    under key 0 what ``backbone(x)`` returns when the last block was among them."""
    depth = len(backbone.blocks)
    last = max(layers)
    frames: dict[int, list[Tensor]] = {layer: [] for layer in layers}
    outs = []
    for image in backbone.chunks(x):
        h, cols = backbone.chunk_input(image)
        for index, block in enumerate(backbone.blocks[:last]):
            h = block(h)
            if index + 1 == depth:
                h = backbone.norm(h)
                outs.append(h)
            if index + 1 in frames:
                batch, _, dim = h.shape
                patches = h[:, 1:].reshape(batch, -1, cols, dim)  # (batch, rows, cols, dim)
                frames[index + 1].append(patches.permute(0, 2, 1, 3).reshape(batch, cols, -1))
    result = {layer: torch.cat(parts, dim=1) for layer, parts in frames.items()}
    if outs:
        cls = torch.stack([out[:, :1] for out in outs]).mean(dim=0)
        result[0] = outs[0] if len(outs) == 1 else torch.cat([cls, *(out[:, 1:] for out in outs)], dim=1)
    return result


def build_backbone(cfg: M2DConfig, n_mels: int, frames: int) -> nn.Module:
    return M2DBackbone(cfg, n_mels, frames)


# ------------------------------------------------------------------------------ checkpoints

POS_EMBED = "pos_embed"
NORM_STATS = "backbone.norm_stats"
_ENCODER_KEY = re.compile(
    r"(patch_embed\.proj\.(weight|bias)|cls_token|pos_embed|blocks\.\d+\.\S+|norm\.(weight|bias))"
)
_PREFIXES = ("module.ar.runtime.backbone.", "backbone.")  # EVAR's fine-tuned files, RuntimeM2D's
_EVAR_HEAD = {  # EVAR's TaskHead (BatchNorm1d without affine, MLP with no hidden layer)
    "module.head.norm.running_mean": "head.norm.running_mean",
    "module.head.norm.running_var": "head.norm.running_var",
    "module.head.norm.num_batches_tracked": "head.norm.num_batches_tracked",
    "module.head.mlp.mlp.0.weight": "head.fc.weight",
    "module.head.mlp.mlp.0.bias": "head.fc.bias",
}
AUDIOSET_CLASSES = 527


def _encoder_name(key: str) -> str | None:
    """The encoder-relative name of a checkpoint key (``blocks.0.attn.qkv.weight``), or None."""
    name = next((key[len(p) :] for p in _PREFIXES if key.startswith(p)), key)
    return name if name == "norm_stats" or _ENCODER_KEY.fullmatch(name) else None


def convert_m2d(state: dict[str, Tensor]) -> Converted:
    """Any official M2D file -> ``backbone.*`` (and ``head.*`` for EVAR's fine-tuned files).

    Pre-training checkpoints (``model`` of ``checkpoint-300.pth``: the online encoder's
    ``patch_embed``, ``cls_token``, ``pos_embed``, ``blocks``, ``norm``; decoder, target network and
    offline predictor ignored), encoder-only files (``*_enconly``), EVAR fine-tuned files
    (``module.ar.runtime.backbone.*`` + ``module.head.*``; the front-end buffers ignored) and
    RuntimeM2D state dicts (``backbone.*``). ``norm_stats`` goes to ``prepare_checkpoint``'s check.
    """
    out: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    ignored: list[str] = []
    for key, value in state.items():
        name = _EVAR_HEAD.get(key)
        if name is None:
            encoder = _encoder_name(key)
            name = None if encoder is None else f"backbone.{encoder}"
        if name is None:
            ignored.append(key)
            continue
        if name in out:
            raise ConfigError(
                f"M2D checkpoint: {origin[name]!r} and {key!r} both hold {name}; load one model"
            )
        out[name], origin[name] = value, key
    if not any(k.startswith("backbone.blocks.") for k in out):
        raise ConfigError("M2D checkpoint: no encoder blocks (blocks.N.*); not an M2D encoder's state dict")
    return Converted(out, ignored)


def audioset_mids() -> list[str]:
    """AudioSet's class MIDs in index order (``class_labels_indices.csv``, shipped as audioset_labels.csv)."""
    with open(Path(__file__).with_name("audioset_labels.csv"), newline="", encoding="utf-8") as f:
        return [row["mid"] for row in csv.DictReader(f)]


def convert_m2d_audioset(state: dict[str, Tensor]) -> Converted:
    """An AudioSet fine-tuned M2D file: as ``convert_m2d``, the head's 527 rows reordered from EVAR's
    class order (MIDs sorted) to AudioSet's index order."""
    converted = convert_m2d(state)
    mids = audioset_mids()
    rank = {mid: i for i, mid in enumerate(sorted(mids))}
    order = torch.tensor([rank[mid] for mid in mids])
    for key in ("head.fc.weight", "head.fc.bias"):
        value = converted.state.get(key)
        if value is not None and value.shape[0] == AUDIOSET_CLASSES:
            converted.state[key] = value[order]
    return converted


CONVERTERS: dict[str, Converter] = {"m2d": convert_m2d, "m2d_audioset": convert_m2d_audioset}

_RELEASE = "https://github.com/nttcslab/m2d/releases/download/{tag}/{name}.zip"
_LICENSE = "NTT-eval"
_NOTE = (
    "github.com/nttcslab/m2d README (weights table). A zip holding one folder with one .pth (read from "
    "inside the archive); size and SHA-256 not published: recorded on first fetch. Licence: the "
    "repository's LICENSE.pdf, NTT's 'Software license agreement for evaluation': internal, "
    "non-commercial testing and evaluation of the paper's method only."
)


def _row(name: str, release: str, tag: str, layout: str, features: str, model: str, what: str) -> Checkpoint:
    return Checkpoint(
        name=name,
        url=_RELEASE.format(tag=tag, name=release),
        filename=f"{release}.zip",
        size=None,
        sha256=None,
        md5=None,
        license=_LICENSE,
        layout=layout,
        features=features,
        model=model,
        note=f"{release}: {what} {_NOTE}",
    )


CHECKPOINTS = (
    _row(
        "m2d_vit_base",
        "m2d_vit_base-80x608p16x16-221006-mr7_enconly",
        "v0.1.0",
        "m2d",
        "m2d_16k_80",
        "m2d_vit_base",
        "M2D/0.7 (masking ratio 0.7), AudioSet, self-supervised, 6.08-s input; encoder only. The README's "
        "'general-purpose transfer learning' weights.",
    ),
    _row(
        "m2d_vit_base_as",
        "m2d_vit_base-80x1001p16x16-221006-mr7_as_46ab246d",
        "v0.3.0",
        "m2d_audioset",
        "m2d_16k_80",
        "m2d_vit_base_1001",
        "M2D/0.7 fine-tuned on AudioSet-2M (EVAR, 10.01-s input), AS2M mAP 0.479 per the README; EVAR's "
        "file: encoder, AudioSet head (527 classes, MID order), front-end buffers (ignored).",
    ),
    _row(
        "m2d_as_vit_base_as",
        "m2d_as_vit_base-80x1001p16x16-240213_AS-FT_enconly",
        "v0.3.0",
        "m2d_audioset",
        "m2d_16k_80",
        "m2d_vit_base_1001",
        "M2D-AS (M2D-X specialised in AudioSet) fine-tuned on AudioSet-2M, AS2M mAP 0.485 per the README "
        "(its 2nd best for tagging); encoder and AudioSet head.",
    ),
    _row(
        "m2d_clap_vit_base_as",
        "m2d_clap_vit_base-80x1001p16x16-240128_AS-FT_enconly",
        "v0.3.0",
        "m2d_audioset",
        "m2d_16k_80",
        "m2d_vit_base_1001",
        "M2D-CLAP fine-tuned on AudioSet-2M, AS2M mAP 0.485 per the README (its best for tagging); "
        "encoder and AudioSet head (the audio-language projections, if present, are ignored).",
    ),
    _row(
        "m2d_as_vit_base_32k",
        "m2d_as_vit_base-80x608p16x16p32k-240413_enconly",
        "v0.1.0",
        "m2d",
        "m2d_32k_80",
        "m2d_vit_base",
        "M2D-AS pre-trained at 32 kHz (80 mels 50-16000 Hz, hop 320), encoder only.",
    ),
    _row(
        "m2d_as_vit_base_32k_as",
        "m2d_as_vit_base-80x1001p16x16p32k-240413_AS-FT_enconly",
        "v0.3.0",
        "m2d_audioset",
        "m2d_32k_80",
        "m2d_vit_base_1001",
        "M2D-AS at 32 kHz fine-tuned on AudioSet-2M, AS2M mAP 0.480 per the README; encoder and "
        "AudioSet head.",
    ),
)


def detect_layout(keys) -> str:
    """A file given by path: ``m2d`` (its head, if any, keeps the file's class order)."""
    return "m2d"


# default layer: the last block (EVAR's config/m2d.yaml, output_layers: [-1])
LAYERS = Layers(lambda c: c.depth, lambda c: [str(c.depth)], m2d_layer_frames, "mean")
# the encoder pads its input to whole patches itself; AudioSet heads on the fine-tuned files
VERIFY = Verification(audioset_layouts=frozenset({"m2d_audioset"}))
FAMILY = Family(
    M2DConfig, build_backbone, CONVERTERS, detect_layout, CHECKPOINTS, LAYERS, lambda b: 1, VERIFY
)
