"""Frozen representations: any backbone of the weights table as a clip encoder, with layer fusion.

A :class:`Representation` is a pretrained tagger used frozen (eval mode, no gradients). It turns a
batch of log-mel windows into one vector per window for each chosen *layer*; layers named together
are concatenated by the caller (``audiotag.models.embedding_cache``), in network order, into one clip
embedding: the layer fusion of Niizumi et al., "Composing General Audio Representation by Fusing
Multilayer Features of a Pre-trained Model" (EUSIPCO 2022, arXiv 2205.08138).

Layers are named ``"1"`` .. ``"N"`` (1-based, network order) and ``"embedding"`` (the model's own
clip embedding: ``head.embedding`` on the backbone's output, e.g. PANNs' ``fc1``, aisfx's max over
time of the frequency-averaged last block, AST's averaged class tokens). CNN14's ``embedding`` is
the baseline the paper compares with: EVAR's ``AR_Cnn14`` runs ``Cnn14_Decoupled`` (daisukelab/
sound-clf-pytorch ``for_evar/cnn14_decoupled.py``): frequency mean, max + mean over time, ``fc1`` +
ReLU. What a numbered layer is, each family declares in its module (``FAMILY.layers``, see
``models/family.py``): the conv blocks of PANNs-style CNNs (``cnn14.py``: ``fused_block_frames``),
AST's transformer blocks (``ast.py``: ``ast_block_embeddings``), BYOL-A's conv blocks and MLP layers
(``byola.py``: ``byola_layer_frames``); timm CNNs offer ``"embedding"`` only.

Sources read: the authors' code (above) and the paper's abstract (ar5iv 2205.08138: "(1) calculating
feature vectors along the time frame from middle/late layer outputs, and (2) fusing them"; index
term "global pooling"); the body of the paper could not be read here, so nothing above rests on it.
Not confirmed: that the paper's tables used eval mode (EVAR, which runs the code, calls ``eval()``;
we assume it), and how EVAR pads clips shorter than a task's unit length. Ours: a clip up to
``window_seconds`` long is encoded whole at its own length (a clip shorter than the model's total
time stride is wrap-padded to it); a longer one in windows of ``window_seconds`` every
``hop_fraction`` of a window, the last aligned to the clip's end (as evaluation slides them,
``data/dataset.py``), each window pooled as above and the window vectors averaged: EVAR instead
feeds a task's clips whole, cut or padded to one length per task.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator

from audiotag.config.files import deep_merge, load_group, validate
from audiotag.config.schema import FeatureConfig, InputNorm, ModelBase, StrictModel
from audiotag.core.errors import ConfigError
from audiotag.models.family import EMBEDDING
from audiotag.models.heads import pool_time
from audiotag.models.hear_in import HearRepresentation, hear_spec
from audiotag.models.registry import build_model, family_of, load_pretrained, weights_table
from audiotag.models.tagger import Tagger

log = logging.getLogger(__name__)

LayerSpec = list[int | Literal["embedding"]] | Literal["default", "all"]


class EmbeddingConfig(StrictModel):
    """Which frozen model embeds the clips, and which of its layers."""

    weights: str | None = Field(
        None,
        description="a name from `./run.sh weights list` (e.g. aisfx, cnn14_16k, ast_audioset, byola2048) "
        "or a checkpoint file, or hear:<module>[:<model_file>] (an installed HEAR module, "
        "models/hear_in.py); null = random weights (seeded: a baseline)",
    )
    model: str | dict[str, Any] | None = Field(
        None,
        description="model config: a name under configs/models/ or the settings inline; null = the "
        "architecture the weights-table entry names",
    )
    layers: LayerSpec = Field(
        "default",
        description="1-based layers to fuse, and/or 'embedding' (the model's own clip embedding); "
        "default: CNN14 blocks [3, 6], AST blocks [5, 12], the embedding otherwise; all: every layer",
    )
    window_seconds: float = Field(
        10.0, gt=0, allow_inf_nan=False, description="longer clips are embedded in windows this long"
    )
    hop_fraction: float = Field(0.5, gt=0, le=1, description="window hop, as a fraction of the window")
    batch_size: int = Field(16, ge=1, description="windows per forward pass")
    seed: int = Field(0, description="seed of random weights (weights: null)")

    @field_validator("layers")
    @classmethod
    def _layers(cls, layers: LayerSpec) -> LayerSpec:
        if isinstance(layers, list):
            if not layers:
                raise ValueError("name at least one layer, or use default / all")
            bad = [layer for layer in layers if isinstance(layer, int) and layer < 1]
            if bad:
                raise ValueError(f"layers count from 1 (block 1 is the first); got {bad}")
            if len(set(map(str, layers))) != len(layers):
                raise ValueError(f"each layer once; got {layers}")
        return layers


def weights_entry(cfg: EmbeddingConfig) -> Any:
    """The weights-table entry of ``cfg.weights``, or None (a file path, or random weights)."""
    return weights_table().get(cfg.weights) if cfg.weights else None


def embedding_features(cfg: EmbeddingConfig) -> str | None:
    """The front-end (configs/features/ name) the weights were trained with, when the table knows it."""
    entry = weights_entry(cfg)
    return entry.features if entry is not None else None


def model_config(cfg: EmbeddingConfig) -> ModelBase:
    """The model's config, validated against its family's schema, with ``pretrained`` set to the weights."""
    spec = cfg.model
    if spec is None:
        entry = weights_entry(cfg)
        if entry is None:
            raise ConfigError(
                f"embedding.model: needed for weights {cfg.weights!r} (not a weights-table name); name a "
                "config under configs/models/ or give the model settings inline"
            )
        spec = entry.model
    if isinstance(spec, str):
        tree = load_group("model", spec)
    elif "base" in spec:
        tree = deep_merge(
            load_group("model", str(spec["base"])), {k: v for k, v in spec.items() if k != "base"}
        )
    else:
        tree = dict(spec)
    tree["pretrained"] = cfg.weights
    if "name" not in tree:
        raise ConfigError(f"embedding.model: {spec!r} has no name (the model family)")
    family = family_of(str(tree["name"]))
    source = f"configs/models/{spec}.yaml" if isinstance(spec, str) else "embedding.model"
    return validate(family.config, tree, source)


def available_layers(model_cfg: ModelBase) -> list[str]:
    """Every layer a model offers, in network order (numbered layers, then its own embedding)."""
    layers = family_of(model_cfg.name).layers  # type: ignore[attr-defined]
    n = layers.count(model_cfg) if layers is not None else 0
    return [str(i) for i in range(1, n + 1)] + [EMBEDDING]


def resolve_layers(model_cfg: ModelBase, spec: LayerSpec) -> list[str]:
    """Layer names in network order for ``default``, ``all`` or a list; ConfigError for unknown ones."""
    offered = available_layers(model_cfg)
    if spec == "all":
        return offered
    layers = family_of(model_cfg.name).layers  # type: ignore[attr-defined]
    if spec == "default":
        names = layers.defaults(model_cfg) if layers is not None else [EMBEDDING]
    else:
        names = [str(layer) for layer in spec]
    unknown = [n for n in names if n not in offered]
    if unknown:
        raise ConfigError(
            f"embedding.layers: {unknown} not offered by this {model_cfg.name!r} model; it has "  # type: ignore[attr-defined]
            f"{', '.join(offered)}"
        )
    return sorted(names, key=layer_order)


def layer_order(name: str) -> tuple[int, int]:
    """Network order: numbered layers by number, the model's embedding last."""
    return (1, 0) if name == EMBEDDING else (0, int(name))


class Representation:
    """A frozen pretrained model that embeds log-mel windows, layer by layer."""

    def __init__(
        self,
        cfg: EmbeddingConfig,
        features: FeatureConfig,
        input_norm: InputNorm | None = None,
        device: torch.device | str = "cpu",
        weights_file: Path | None = None,
        tagger: Tagger | None = None,
    ) -> None:
        """``weights_file``: a checked copy of ``cfg.weights``'s file to read (a package's);
        ``tagger``: a trained model used as it is (a fine-tuned run's fold; ``cfg.model`` its settings)."""
        self.cfg = cfg
        self.features = features
        self.model_cfg = model_config(cfg)
        self.device = torch.device(device)
        frames = max(1, round(cfg.window_seconds * features.frames_per_second))
        torch.manual_seed(cfg.seed)
        if tagger is None:
            tagger = build_model(self.model_cfg, features.n_mels, 1, frames, input_norm, features)
        if cfg.weights is not None:
            report = load_pretrained(tagger, self.model_cfg, features, weights_file=weights_file)
            unloaded = [k for k in (report.missing if report else []) if k.startswith("head.fc1.")]
            if unloaded:
                log.warning(
                    "embedding: %s holds no %s; layer 'embedding' passes through that randomly "
                    "initialised layer (numbered layers are not affected)",
                    cfg.weights,
                    ", ".join(unloaded),
                )
        self.tagger = tagger.eval().to(self.device)
        for param in self.tagger.parameters():
            param.requires_grad_(False)
        self.family = family_of(self.model_cfg.name)  # type: ignore[attr-defined]

    @property
    def min_frames(self) -> int:
        """Log-mel frames an input needs at least (the backbone's total time stride)."""
        return self.family.min_frames(self.tagger.backbone)

    @property
    def min_rows(self) -> int:
        """Cached rows an input needs at least (frames, or samples for a wave cache)."""
        if self.features.cache == "wave":
            return self.min_frames * self.features.hop_length
        return self.min_frames

    @torch.inference_mode()
    def encode(self, windows: torch.Tensor, layers: list[str]) -> dict[str, np.ndarray]:
        """{layer: (batch, dim) float32} for a batch of cached windows (batch, rows, width)."""
        tagger = self.tagger
        x = tagger.logmel(windows.to(self.device).float())
        if tagger.norm_mean != 0.0 or tagger.norm_std != 1.0:
            x = (x - tagger.norm_mean) / tagger.norm_std
        out: dict[str, torch.Tensor] = {}
        numbered = [int(n) for n in layers if n != EMBEDDING]
        backbone_out = None
        if numbered:
            rule = self.family.layers
            assert rule is not None  # resolve_layers refuses numbered layers of a family without them
            for layer, frames in rule.frames(tagger.backbone, x, numbered).items():
                if layer == 0:  # the backbone's own output, computed on the way: not run again
                    backbone_out = frames
                    continue
                if frames.shape[1] == 0:
                    raise ValueError(f"layer {layer}: input of {x.shape[1]} frames leaves no frame")
                out[str(layer)] = pool_time(frames, rule.pool)
        if EMBEDDING in layers:
            if backbone_out is None:
                backbone_out = tagger.backbone(x)
            out[EMBEDDING] = tagger.head.embedding(backbone_out)  # type: ignore[operator]
        return {name: out[name].float().cpu().numpy() for name in layers}

    def layer_dims(self, layers: list[str]) -> dict[str, int]:
        """Values per layer, from one forward pass on a silent input of the minimum length."""
        dummy = torch.zeros(1, self.min_rows, self.features.cache_width)
        return {name: int(v.shape[1]) for name, v in self.encode(dummy, layers).items()}


FrozenRepresentation = Representation | HearRepresentation


def frozen_representation(
    cfg: EmbeddingConfig,
    features: FeatureConfig,
    input_norm: InputNorm | None = None,
    device: torch.device | str = "cpu",
    weights_file: Path | None = None,
) -> FrozenRepresentation:
    """The frozen model ``cfg`` names: a backbone of the weights table (or a file), or a HEAR module
    (``weights: hear:<module>``, ``models/hear_in.py``), which takes the cached waves as they are."""
    spec = hear_spec(cfg.weights)
    if spec is not None:
        return HearRepresentation(spec, device)
    return Representation(cfg, features, input_norm, device, weights_file=weights_file)
