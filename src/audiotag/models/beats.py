"""BEATs (Chen et al. 2022, "BEATs: Audio Pre-Training with Acoustic Tokenizers"): the audio encoder.

What the official code (microsoft/unilm ``beats/BEATs.py`` + ``beats/backbone.py``) computes, here
written anew and batch-first:

- input: the log mel ``(batch, frames, 128)`` of ``configs/features/beats_kaldi_128.yaml``, normalised
  by the model's ``input_norm`` ``(fbank - 15.41663) / (2 * 6.55582)``;
- patches: a 16x16 conv with stride 16 (no bias) over the ``(frames x mels)`` image, *time rows first*:
  token ``t * 8 + f`` is time patch ``t``, frequency patch ``f``; frames past the last whole patch are
  dropped (the conv's rule), inputs under 16 frames are zero-padded to 16 (the official code fails);
  LayerNorm over the 512 patch channels, then a Linear to 768 (``post_extract_proj``);
- a convolutional position embedding over the token sequence (wav2vec 2.0's: grouped Conv1d, kernel
  128, 16 groups, weight-normalised over all but the kernel axis, the last output dropped, GELU),
  added to the tokens, then LayerNorm (``encoder.layer_norm``: post-LN, so before the blocks);
- 12 post-LN blocks with DeepNorm residuals ``LN(alpha * x + f(x))``, ``alpha = (2 * depth) ** 0.25``;
  attention adds a T5-style bucketed relative position bias (320 buckets, max distance 800, one table
  shared by all blocks) scaled per query and head by a gate (``gru_rel_pos``: sigmoid of a Linear on
  the head's query, ``a * (b * grep_a - 1) + 2``);
- no class token: the output is the token sequence; the AudioSet head (``predictor``) is a Linear on
  each token, averaged over tokens, which equals a Linear on the token mean: our ``LinearHead`` with
  ``global_pool: mean`` (same numbers within float32 rounding). The official ``predictor_dropout``
  acts on every token before the Linear, ours on the mean (training only).

There is no positional grid to interpolate: the model takes any length (the official fine-tuning
used AudioSet's 10 s clips). Training-only options as the official config names them: ``layer_drop``
(``encoder_layerdrop``: a whole block skipped at random per batch), ``block_dropout`` (``dropout``),
``attention_dropout``, ``activation_dropout``. The official ``layer_wise_gradient_decay_ratio``
scales gradients per block; under AdamW a constant gradient scale per parameter nearly cancels, so
the recipes use ``train.layer_decay`` (learning rates by depth) instead; ``blocks`` is registered
after the embeddings (depth 0) and before nothing else.

Checkpoints (layout ``"beats"``): ``{"cfg": {...}, "model": state_dict[, "label_dict": {...}]}``.
The converter renames keys; ``check_settings`` compares the file's ``cfg`` with the model config and
refuses any architecture setting that differs (naming it), and orders the fine-tuned files' 527
classifier rows by their ``label_dict`` into AudioSet's ``class_labels_indices.csv`` order.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from audiotag.config.schema import ModelBase
from audiotag.core.errors import ConfigError
from audiotag.fetch.weights import Checkpoint
from audiotag.models.family import Family, Layers, Verification
from audiotag.models.loading import Converted, Converter

log = logging.getLogger(__name__)


class BeatsConfig(ModelBase):
    """The BEATs encoder (all released iter1..iter3+ checkpoints: 12 blocks of 768)."""

    name: Literal["beats"] = "beats"
    global_pool: Literal["mean", "max", "mean+max"] = Field(
        "mean", description="pooling of the tokens before the head (official: mean of per-token logits)"
    )
    embedding_dim: int | None = Field(None, gt=0)
    patch_size: int = Field(16, ge=1, description="input_patch_size")
    patch_dim: int = Field(512, gt=0, description="embed_dim: channels of the patch conv")
    embed_dim: int = Field(768, gt=0, description="encoder_embed_dim")
    depth: int = Field(12, ge=1, description="encoder_layers")
    num_heads: int = Field(12, ge=1, description="encoder_attention_heads")
    ffn_dim: int = Field(3072, gt=0, description="encoder_ffn_embed_dim")
    conv_pos: int = Field(128, ge=1, description="kernel of the convolutional position embedding")
    conv_pos_groups: int = Field(16, ge=1)
    num_buckets: int = Field(320, ge=4, description="relative position buckets (both directions)")
    max_distance: int = Field(800, ge=1, description="distance of the last relative position bucket")
    gated_rel_pos: bool = Field(True, description="gru_rel_pos: the query-dependent gate on the bias")
    deep_norm: bool = Field(True, description="DeepNorm residual scale (2 * depth) ** 0.25, else 1")
    block_dropout: float = Field(0.0, ge=0, lt=1, description="dropout: after attention, FFN and the input")
    attention_dropout: float = Field(0.0, ge=0, lt=1)
    activation_dropout: float = Field(0.0, ge=0, lt=1)
    layer_drop: float = Field(0.0, ge=0, lt=1, description="encoder_layerdrop: skip a block (training)")

    @model_validator(mode="after")
    def _check(self) -> BeatsConfig:
        if self.embed_dim % self.num_heads:
            raise ValueError("embed_dim must be a multiple of num_heads")
        if self.embed_dim % self.conv_pos_groups:
            raise ValueError("embed_dim must be a multiple of conv_pos_groups")
        return self


AUDIOSET_CLASSES = 527
# official cfg name -> (our field, the official default where the file's cfg leaves it out)
CFG_FIELDS: dict[str, tuple[str, Any]] = {
    "input_patch_size": ("patch_size", -1),
    "embed_dim": ("patch_dim", 512),
    "encoder_embed_dim": ("embed_dim", 768),
    "encoder_layers": ("depth", 12),
    "encoder_attention_heads": ("num_heads", 12),
    "encoder_ffn_embed_dim": ("ffn_dim", 3072),
    "conv_pos": ("conv_pos", 128),
    "conv_pos_groups": ("conv_pos_groups", 16),
    "num_buckets": ("num_buckets", 320),
    "max_distance": ("max_distance", 1280),
    "gru_rel_pos": ("gated_rel_pos", False),
    "deep_norm": ("deep_norm", False),
}
# settings this implementation has one value of: (official name, required value, its default)
CFG_FIXED = (
    ("relative_position_embedding", True, False),
    ("layer_norm_first", False, False),
    ("activation_fn", "gelu", "gelu"),
    ("conv_bias", False, False),
)


def relative_buckets(n: int, num_buckets: int, max_distance: int) -> Tensor:
    """(n, n) bucket of key position minus query position: T5's bidirectional log buckets, with the
    official arithmetic (float32 log, truncation), so boundary distances fall in the same bucket."""
    pos = torch.arange(n, dtype=torch.long)
    rel = pos[None, :] - pos[:, None]
    half = num_buckets // 2
    buckets = (rel > 0).to(torch.long) * half
    dist = rel.abs()
    exact = half // 2
    far = exact + (torch.log(dist.float() / exact) / math.log(max_distance / exact) * (half - exact)).to(
        torch.long
    )
    far = torch.minimum(far, torch.full_like(far, half - 1))
    return buckets + torch.where(dist < exact, dist, far)


class PosConv(nn.Module):
    """Convolutional position embedding: weight-normalised grouped Conv1d (norm over all axes but the
    kernel's, as ``weight_norm(dim=2)``), the last output dropped for an even kernel, GELU."""

    def __init__(self, dim: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.kernel, self.groups = kernel, groups
        self.weight_v = nn.Parameter(torch.randn(dim, dim // groups, kernel) * math.sqrt(4 / (kernel * dim)))
        self.weight_g = nn.Parameter(self.weight_v.detach().norm(dim=(0, 1), keepdim=True))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:  # (batch, tokens, dim) -> the same
        weight = self.weight_v * (self.weight_g / self.weight_v.norm(dim=(0, 1), keepdim=True))
        y = F.conv1d(x.transpose(1, 2), weight, self.bias, padding=self.kernel // 2, groups=self.groups)
        if self.kernel % 2 == 0:
            y = y[..., :-1]
        return F.gelu(y).transpose(1, 2)


class BeatsAttention(nn.Module):
    """Self-attention with the (gated) relative position bias added to the scaled scores."""

    def __init__(self, cfg: BeatsConfig) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.heads = cfg.num_heads
        self.dropout = cfg.attention_dropout
        self.q_proj, self.k_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.v_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.gated = cfg.gated_rel_pos
        if self.gated:
            self.grep_linear = nn.Linear(dim // self.heads, 8)
            self.grep_a = nn.Parameter(torch.ones(1, self.heads, 1, 1))

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        """``x`` (batch, tokens, dim); ``bias`` (heads, tokens, tokens), not yet gated."""
        batch, n, dim = x.shape

        def split(t: Tensor) -> Tensor:
            return t.view(batch, n, self.heads, dim // self.heads).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        mask = bias.unsqueeze(0).to(q.dtype)
        if self.gated:  # the gate reads the unscaled query (official: q * scaling / 32 * 32 / scaling)
            gates = torch.sigmoid(self.grep_linear(q).view(batch, self.heads, n, 2, 4).sum(-1))
            gate_a, gate_b = gates[..., :1], gates[..., 1:]
            mask = (gate_a * (gate_b * self.grep_a - 1.0) + 2.0) * mask
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.out_proj(out.transpose(1, 2).reshape(batch, n, dim))


class BeatsBlock(nn.Module):
    """Post-LN block with DeepNorm residuals; names as the official ``TransformerSentenceEncoderLayer``."""

    def __init__(self, cfg: BeatsConfig) -> None:
        super().__init__()
        self.self_attn = BeatsAttention(cfg)
        self.self_attn_layer_norm = nn.LayerNorm(cfg.embed_dim)
        self.fc1 = nn.Linear(cfg.embed_dim, cfg.ffn_dim)
        self.fc2 = nn.Linear(cfg.ffn_dim, cfg.embed_dim)
        self.final_layer_norm = nn.LayerNorm(cfg.embed_dim)
        self.alpha = (2 * cfg.depth) ** 0.25 if cfg.deep_norm else 1.0
        self.dropout, self.activation_dropout = cfg.block_dropout, cfg.activation_dropout

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        drop = partial_dropout(self.training)
        x = self.self_attn_layer_norm(x * self.alpha + drop(self.self_attn(x, bias), self.dropout))
        hidden = drop(F.gelu(self.fc1(x)), self.activation_dropout)
        return self.final_layer_norm(x * self.alpha + drop(self.fc2(hidden), self.dropout))


def partial_dropout(training: bool):
    return lambda t, p: F.dropout(t, p=p, training=training) if p > 0 else t


class BeatsBackbone(nn.Module):
    """Log mel ``(batch, frames, mels)``, normalised -> tokens ``(batch, time * freq patches, dim)``."""

    output = "sequence"

    def __init__(self, cfg: BeatsConfig, n_mels: int) -> None:
        super().__init__()
        if n_mels < cfg.patch_size:
            raise ConfigError(f"beats: {n_mels} mel bins is fewer than one {cfg.patch_size}-bin patch")
        self.patch, self.n_mels = cfg.patch_size, n_mels
        self.frame_grid = cfg.patch_size  # input frames per time step (train.auto rounds crops to it)
        self.freq_patches = n_mels // cfg.patch_size
        self.num_buckets, self.max_distance = cfg.num_buckets, cfg.max_distance
        self.layer_drop, self.dropout = cfg.layer_drop, cfg.block_dropout
        self.out_dim = cfg.embed_dim
        self.patch_embed = nn.Conv2d(1, cfg.patch_dim, cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.patch_norm = nn.LayerNorm(cfg.patch_dim)
        self.proj = nn.Linear(cfg.patch_dim, cfg.embed_dim) if cfg.patch_dim != cfg.embed_dim else None
        self.pos_conv = PosConv(cfg.embed_dim, cfg.conv_pos, cfg.conv_pos_groups)
        self.pre_norm = nn.LayerNorm(cfg.embed_dim)
        self.rel_bias = nn.Embedding(cfg.num_buckets, cfg.num_heads)  # one table for every block
        self.blocks = nn.ModuleList(BeatsBlock(cfg) for _ in range(cfg.depth))
        self._init_weights(cfg)
        self._buckets: dict[int, Tensor] = {}

    def _init_weights(self, cfg: BeatsConfig) -> None:
        """The official initialisation: N(0, 0.02) Linear and Embedding weights, zero biases; with
        deep_norm, Xavier-normal attention and FFN weights (gain (8 * depth) ** -0.25 but q and k)."""
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        if cfg.deep_norm:
            beta = (8 * cfg.depth) ** -0.25
            for block in self.blocks:
                attn: BeatsAttention = block.self_attn  # type: ignore[assignment]
                for layer, gain in ((attn.q_proj, 1.0), (attn.k_proj, 1.0), (attn.v_proj, beta)):
                    nn.init.xavier_normal_(layer.weight, gain=gain)
                for layer in (attn.out_proj, block.fc1, block.fc2):
                    nn.init.xavier_normal_(layer.weight, gain=beta)  # type: ignore[arg-type]

    def position_bias(self, n: int, device: torch.device) -> Tensor:
        """(heads, n, n): the bias table looked up by relative bucket (buckets cached per length)."""
        if n not in self._buckets:
            self._buckets[n] = relative_buckets(n, self.num_buckets, self.max_distance)
        return self.rel_bias(self._buckets[n].to(device)).permute(2, 0, 1)

    def input_tokens(self, x: Tensor) -> Tensor:
        """The tokens the first block takes: patches, their norm and projection, position conv, norm."""
        if x.shape[-1] != self.n_mels:
            raise ValueError(f"beats: built for {self.n_mels} mel bins, got input with {x.shape[-1]}")
        if x.shape[1] < self.patch:
            x = F.pad(x, (0, 0, 0, self.patch - x.shape[1]))
        patches = self.patch_embed(x.unsqueeze(1))  # (batch, channels, time patches, freq patches)
        tokens = self.patch_norm(patches.flatten(2).transpose(1, 2))
        if self.proj is not None:
            tokens = self.proj(tokens)
        tokens = self.pre_norm(tokens + self.pos_conv(tokens))
        return F.dropout(tokens, p=self.dropout, training=self.training) if self.dropout > 0 else tokens

    def run_blocks(self, tokens: Tensor, keep: set[int] | None = None) -> dict[int, Tensor]:
        """Block outputs (1-based) in ``keep``; under 0 the last block's. LayerDrop skips blocks in
        training (each with probability ``layer_drop``, the whole batch at once, as fairseq)."""
        bias = self.position_bias(tokens.shape[1], tokens.device)
        out: dict[int, Tensor] = {}
        for index, block in enumerate(self.blocks, start=1):
            if not (self.training and self.layer_drop > 0 and float(torch.rand(())) < self.layer_drop):
                tokens = block(tokens, bias)
            if keep is not None and index in keep:
                out[index] = tokens
            if keep is not None and index >= max(keep):
                break
        if keep is None or len(self.blocks) in keep:
            out[0] = tokens
        return out

    def forward(self, x: Tensor) -> Tensor:
        return self.run_blocks(self.input_tokens(x))[0]


def beats_block_frames(backbone: BeatsBackbone, x: Tensor, layers: list[int]) -> dict[int, Tensor]:
    """{block: (batch, time patches, dim)}: each chosen block's tokens averaged over the frequency
    patches of each time step (one frame per 16 input frames), pooled over time by the ``mean`` rule:
    the mean of all tokens, what the official classifier sees. The backbone's own output (key 0) is
    not returned: it is a token sequence, not frames, so ``embedding`` is computed from it apart."""
    out = backbone.run_blocks(backbone.input_tokens(x), set(layers))
    freq = backbone.freq_patches
    return {
        k: v.view(v.shape[0], v.shape[1] // freq, freq, v.shape[2]).mean(dim=2) for k, v in out.items() if k
    }


def build_backbone(cfg: BeatsConfig, n_mels: int, frames: int) -> nn.Module:
    """A BEATs encoder for ``n_mels`` bins; it takes any number of frames."""
    return BeatsBackbone(cfg, n_mels)


RENAMES = {
    "patch_embedding.": "backbone.patch_embed.",
    "layer_norm.": "backbone.patch_norm.",
    "post_extract_proj.": "backbone.proj.",
    "encoder.pos_conv.0.weight_g": "backbone.pos_conv.weight_g",
    "encoder.pos_conv.0.weight_v": "backbone.pos_conv.weight_v",
    # the same, saved by torch's newer weight_norm (parametrizations: original0 = g, original1 = v)
    "encoder.pos_conv.0.parametrizations.weight.original0": "backbone.pos_conv.weight_g",
    "encoder.pos_conv.0.parametrizations.weight.original1": "backbone.pos_conv.weight_v",
    "encoder.pos_conv.0.bias": "backbone.pos_conv.bias",
    "encoder.layer_norm.": "backbone.pre_norm.",
    "predictor.": "head.fc.",
}
BLOCK_KEY = re.compile(r"encoder\.layers\.(\d+)\.(.+)")
SHARED_BIAS = "self_attn.relative_attention_bias.weight"


def convert_beats(state: dict[str, Tensor]) -> Converted:
    """Official BEATs state dict (``model`` of the file) -> ``backbone.*``, ``head.fc.*``.

    The relative-bias table, one module shared by every block, is saved under each block's name: the
    first block's is loaded, the others are ignored after checking that they are the same table.
    """
    out: dict[str, Tensor] = {}
    ignored: list[str] = []
    first = state.get(f"encoder.layers.0.{SHARED_BIAS}")
    for key, value in state.items():
        block = BLOCK_KEY.fullmatch(key)
        if block and block.group(2) == SHARED_BIAS:
            if block.group(1) == "0":
                out["backbone.rel_bias.weight"] = value
                continue
            if first is None or not torch.equal(value, first):
                raise ConfigError(f"beats checkpoint: {key} differs from block 0's shared bias table")
            ignored.append(key)
        elif block:
            out[f"backbone.blocks.{block.group(1)}.{block.group(2)}"] = value
        else:
            prefix = next((p for p in RENAMES if key.startswith(p)), None)
            # a key with no known name is kept, so load_converted reports it as one the model lacks
            out[RENAMES[prefix] + key[len(prefix) :] if prefix else key] = value
    return Converted(out, ignored)


def audioset_names() -> list[tuple[str, str]]:
    """(mid, display name) of AudioSet's 527 classes in ``class_labels_indices.csv`` order."""
    with open(Path(__file__).with_name("audioset_labels.csv"), newline="", encoding="utf-8") as f:
        return [(row["mid"], row["display_name"]) for row in csv.DictReader(f)]


def check_settings(cfg: BeatsConfig, beside: Mapping[str, Any], converted: Converted) -> Converted:
    """The file's ``cfg`` against ``cfg`` (ConfigError naming every difference); the classifier rows
    of a fine-tuned file put in AudioSet's order by its ``label_dict`` (index -> mid or name)."""
    recorded = beside.get("cfg")
    if not isinstance(recorded, Mapping):
        log.warning("beats checkpoint: no 'cfg' beside the weights; architecture taken from the model config")
        recorded = None
    if recorded is not None:
        wrong = [
            f"{name} {recorded.get(name, default)!r} (model.{ours}: {getattr(cfg, ours)!r})"
            for name, (ours, default) in CFG_FIELDS.items()
            if recorded.get(name, default) != getattr(cfg, ours)
        ]
        wrong += [
            f"{name} {recorded.get(name, default)!r} (this implementation: {value!r})"
            for name, value, default in CFG_FIXED
            if recorded.get(name, default) != value
        ]
        if wrong:
            raise ConfigError(
                f"beats checkpoint: its cfg differs from the model config: {'; '.join(wrong)}. Set the "
                "model settings to the checkpoint's (configs/models/beats.yaml has the released ones)"
            )
    return order_classes(beside.get("label_dict"), converted)


def order_classes(label_dict: Any, converted: Converted) -> Converted:
    weight = converted.state.get("head.fc.weight")
    if not isinstance(label_dict, Mapping) or weight is None or weight.shape[0] != AUDIOSET_CLASSES:
        return converted
    names = audioset_names()
    where = {str(label): int(index) for index, label in label_dict.items()}
    rows = [where.get(mid, where.get(name)) for mid, name in names]
    if len(label_dict) != AUDIOSET_CLASSES or None in rows or sorted(rows) != list(range(AUDIOSET_CLASSES)):  # type: ignore[type-var]
        log.warning(
            "beats checkpoint: its label_dict does not name AudioSet's 527 classes; classifier not used"
        )
        state = {k: v for k, v in converted.state.items() if not k.startswith("head.fc.")}
        return Converted(
            state, [*converted.ignored, "predictor.weight", "predictor.bias"], converted.adapters
        )
    order = torch.tensor(rows)
    state = dict(converted.state)
    state["head.fc.weight"] = weight[order]
    state["head.fc.bias"] = converted.state["head.fc.bias"][order]
    return Converted(state, list(converted.ignored), list(converted.adapters))


CONVERTERS: dict[str, Converter] = {"beats": convert_beats}

BLOB = "https://valle.blob.core.windows.net/share/BEATs/"
# read-only access signature of the links in microsoft/unilm beats/README.md at commit 3085b51a (valid
# to 2034-04-05); the README now links the same files as OneDrive share pages (see the notes)
SAS = (
    "?sv=2021-10-04&st=2024-04-04T07%3A15%3A11Z&se=2034-04-05T07%3A15%3A00Z&sr=c&sp=rl"
    "&sig=xH3MbkMqHPLBI5gN%2Frt9H4J8Ai%2BtUnkduo7KGpkLbdA%3D"
)
NOTE = (
    "BEATs (Chen et al. 2022, arXiv 2212.09058), microsoft/unilm beats/ (MIT). URL from the README at "
    "commit 3085b51a (Azure blob with a read-only signature to 2034); the current README links the "
    "same file as a OneDrive share page ({onedrive}): if the blob link stops working, download it "
    "there and pass it with --weights PATH or model.pretrained: PATH. File: {{'cfg', 'model'{label}}}. "
)


def _row(name: str, filename: str, onedrive: str, what: str, finetuned: bool) -> Checkpoint:
    label = ", 'label_dict'" if finetuned else ""
    return Checkpoint(
        name=name,
        url=BLOB + filename + SAS,
        filename=filename,
        size=None,
        sha256=None,
        md5=None,
        license="MIT",
        layout="beats",
        features="beats_kaldi_128",
        model="beats",
        note=NOTE.format(onedrive="https://1drv.ms/u/s!" + onedrive, label=label) + what,
    )


CHECKPOINTS = (
    _row(
        "beats_iter3",
        "BEATs_iter3.pt",
        "AqeByhGUtINrgcpxJUNDxg4eU0r-vA?e=qezPJ5",
        "Self-supervised on AudioSet-2M, third iteration (tokenizer iter3); no classifier. Paper: "
        "fine-tuned, mAP 0.480 on AudioSet-2M.",
        False,
    ),
    _row(
        "beats_iter3_as2m",
        "BEATs_iter3_finetuned_on_AS2M_cpt1.pt",
        "AqeByhGUtINrgcplb48ll1zIt82eWQ?e=XyxrX7",
        "BEATs_iter3 fine-tuned on AudioSet-2M (cpt1 of two), 527-class head. The paper's 0.480 is for "
        "this fine-tuning; the README gives no figure per checkpoint.",
        True,
    ),
    _row(
        "beats_iter3_plus_as2m",
        "BEATs_iter3_plus_AS2M.pt",
        "AqeByhGUtINrgcpke6_lRSZEKD5j2Q?e=A3FpOf",
        "Self-supervised on AudioSet-2M with the iter3+ tokenizer (itself distilled from a model "
        "fine-tuned on AudioSet-2M labels); no classifier. Paper: fine-tuned, mAP 0.486.",
        False,
    ),
    _row(
        "beats_iter3_plus_as2m_as2m",
        "BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt1.pt",
        "AqeByhGUtINrgcpoZecQbiXeaUjN8A?e=DasbeC",
        "BEATs_iter3+ (AS2M) fine-tuned on AudioSet-2M (cpt1 of two), 527-class head. The paper's 0.486 "
        "is for this fine-tuning; the README gives no figure per checkpoint.",
        True,
    ),
)

# all blocks, each token-averaged (module docstring of beats_block_frames): the paper studies no
# layer choice, so every block is offered to the probe, as BYOL-A's fusion offers all its layers
LAYERS = Layers(
    lambda c: c.depth, lambda c: [str(i) for i in range(1, c.depth + 1)], beats_block_frames, "mean"
)
VERIFY = Verification(audioset_layouts=frozenset({"beats"}))
FAMILY = Family(
    BeatsConfig,
    build_backbone,
    CONVERTERS,
    checkpoints=CHECKPOINTS,
    layers=LAYERS,
    min_frames=lambda backbone: backbone.patch,  # one time patch: the frames per output step
    verification=VERIFY,
    check_settings=check_settings,
)
