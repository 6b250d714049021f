"""VGGish (Hershey et al., ICASSP 2017): the AudioSet embedding network of tensorflow/models
``research/audioset/vggish``, rebuilt in torch.

- input: the log-mel of ``configs/features/vggish_16k_64`` (``mel_features.py``: 16 kHz, 25 ms
  periodic-Hann windows every 10 ms, not centred, magnitude spectrum, 64 HTK mel bands 125-7500 Hz
  with triangles linear in mel, ``log(mel + 0.01)``), cut here into *examples* of 96 frames
  (0.96 s) every ``example_hop`` frames (96: no overlap, as ``vggish_input.waveform_to_examples``;
  frames past the last whole example are dropped, as there; a clip shorter than one example is
  repeated to 96 frames);
- network (``vggish_slim.define_vggish_slim``): 3x3 convs (stride 1, 'SAME') with ReLU and 2x2
  max-pools (stride 2): conv1 64, pool, conv2 128, pool, conv3_1/conv3_2 256, pool, conv4_1/conv4_2
  512, pool; flattened in TensorFlow's (frames, bands, channels) order; fc1_1 and fc1_2 4096 with
  ReLU; fc2 128 *without* activation: the raw embedding (harritaylor/torchvggish adds a ReLU there;
  its weights load here without it);
- optional post-processing (``postprocess: pca``, ``vggish_postprocess.Postprocessor``): ``(x -
  pca_means) @ pca_eigen_vectors.T``, clipped to [-2, 2], quantised to 0..255 as ``astype(uint8)``
  does (kept as float values); the parameters come from ``pca_params`` (a weights name or .npz path)
  when the pretrained weights are loaded. Quantisation has no gradient: fine-tune without it.

The backbone returns one 128-d vector per example (``output = "sequence"``): the head pools them
(``global_pool``) and classifies. Checked against the official code run with TensorFlow:
tests/test_golden_vggish.py (tools/golden/vggish_official.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from audiotag.config.schema import ModelBase
from audiotag.core.errors import ConfigError, DataError
from audiotag.fetch.weights import Checkpoint, fetch
from audiotag.models.family import EMBEDDING, Family, Layers, Verification
from audiotag.models.loading import Converted, Converter, read_npz

EXAMPLE_FRAMES = 96  # vggish_params.NUM_FRAMES: 0.96 s of 10-ms frames
EMBEDDING_SIZE = 128
QUANTIZE_MIN, QUANTIZE_MAX = -2.0, 2.0  # vggish_params.QUANTIZE_MIN_VAL / MAX_VAL
PCA_NAME = "vggish_pca"  # the weights-table row of the official PCA parameters
CONVS = ("conv1", "conv2", "conv3_1", "conv3_2", "conv4_1", "conv4_2")
POOL_AFTER = ("conv1", "conv2", "conv3_2", "conv4_2")  # the four blocks end here
FCS = ("fc1_1", "fc1_2")


class VggishConfig(ModelBase):
    """VGGish's network (``define_vggish_slim``), its examples and its optional PCA post-processing."""

    name: Literal["vggish"] = "vggish"
    example_hop: int = Field(
        EXAMPLE_FRAMES,
        gt=0,
        description="frames between the starts of successive 96-frame examples (96: no overlap, "
        "vggish_params.EXAMPLE_HOP_SECONDS 0.96)",
    )
    postprocess: Literal["none", "pca"] = Field(
        "none",
        description="pca: the official PCA (whitening) + 8-bit quantisation of the embedding "
        "(vggish_postprocess.py; the released AudioSet features); none: the raw 128-d embedding",
    )
    pca_params: str = Field(
        PCA_NAME,
        description="postprocess: pca: a weights name (vggish_pca) or an .npz with "
        "pca_eigen_vectors (128, 128) and pca_means (128)",
    )
    global_pool: Literal["mean", "max", "mean+max"] = Field(
        "mean", description="how the head pools the examples' embeddings over a clip"
    )


class VggishBackbone(nn.Module):
    """Log-mel (batch, frames, 64) -> one embedding per 0.96-s example (batch, examples, 128)."""

    output = "sequence"
    n_prefix_tokens = 0

    def __init__(self, cfg: VggishConfig, n_mels: int) -> None:
        super().__init__()
        self.cfg = cfg
        channels = (1, 64, 128, 256, 256, 512, 512)
        for name, c_in, c_out in zip(CONVS, channels[:-1], channels[1:], strict=True):
            self.add_module(name, nn.Conv2d(c_in, c_out, 3, padding=1))
        height, width = EXAMPLE_FRAMES, n_mels
        for _ in POOL_AFTER:  # TF's 'SAME' 2x2 pooling keeps a last odd row: ceil
            height, width = -(-height // 2), -(-width // 2)
        self.fc1_1 = nn.Linear(512 * height * width, 4096)
        self.fc1_2 = nn.Linear(4096, 4096)
        self.fc2 = nn.Linear(4096, EMBEDDING_SIZE)
        if cfg.postprocess == "pca":  # filled from cfg.pca_params when the weights are loaded
            self.register_buffer("pca_means", torch.zeros(EMBEDDING_SIZE))
            self.register_buffer("pca_eigen_vectors", torch.zeros(EMBEDDING_SIZE, EMBEDDING_SIZE))
        self.out_dim = EMBEDDING_SIZE

    def examples(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, frames, mels) -> (batch, examples, 96, mels), as ``mel_features.frame``."""
        if x.shape[1] < EXAMPLE_FRAMES:
            x = x.repeat(1, -(-EXAMPLE_FRAMES // x.shape[1]), 1)[:, :EXAMPLE_FRAMES]
        return x.unfold(1, EXAMPLE_FRAMES, self.cfg.example_hop).transpose(2, 3)

    def features(self, x: torch.Tensor, upto: str = "fc2") -> dict[str, torch.Tensor]:
        """The outputs per example up to layer ``upto``: block1..block4 (n, channels, time, bands),
        fc1_1, fc1_2, fc2 (n, dim), and ``postprocessed`` (pca); n = batch x examples."""
        ex = self.examples(x)
        h = ex.reshape(-1, 1, *ex.shape[2:])
        out: dict[str, torch.Tensor] = {}
        for name in CONVS:
            h = F.relu(self.get_submodule(name)(h))
            if name in POOL_AFTER:
                h = F.max_pool2d(h, 2, ceil_mode=True)
                out[f"block{POOL_AFTER.index(name) + 1}"] = h
                if upto == f"block{POOL_AFTER.index(name) + 1}":
                    return out
        h = h.permute(0, 2, 3, 1).flatten(1)  # slim.flatten of NHWC
        for name in FCS:
            h = out[name] = F.relu(self.get_submodule(name)(h))
            if upto == name:
                return out
        out["fc2"] = self.fc2(h)
        if self.cfg.postprocess == "pca":
            out["postprocessed"] = self.postprocess(out["fc2"])
        return out

    def postprocess(self, embedding: torch.Tensor) -> torch.Tensor:
        """``vggish_postprocess.Postprocessor.postprocess``: PCA, clip, 8-bit quantisation."""
        pca = (embedding - self.pca_means) @ self.pca_eigen_vectors.T
        clipped = pca.clamp(QUANTIZE_MIN, QUANTIZE_MAX)
        return torch.floor((clipped - QUANTIZE_MIN) * (255.0 / (QUANTIZE_MAX - QUANTIZE_MIN)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.features(x)
        final = out["postprocessed"] if self.cfg.postprocess == "pca" else out["fc2"]
        return final.reshape(x.shape[0], -1, EMBEDDING_SIZE)

    def prepare_checkpoint(self, converted: Converted) -> Converted:
        """Add the PCA parameters (``postprocess: pca``) to a network checkpoint that lacks them."""
        if self.cfg.postprocess != "pca" or "backbone.pca_means" in converted.state:
            return converted
        means, vectors = read_pca_params(self.cfg.pca_params)
        state = {**converted.state, "backbone.pca_means": means, "backbone.pca_eigen_vectors": vectors}
        return Converted(state, converted.ignored, converted.adapters)


def read_pca_params(spec: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(pca_means (128,), pca_eigen_vectors (128, 128)) from the weights row ``vggish_pca`` or a file."""
    row = next((c for c in CHECKPOINTS if c.name == spec), None)
    path = (
        fetch(row, read_weights=lambda p, s, g: read_npz(p)) if row is not None else Path(spec).expanduser()
    )
    if not path.is_file():
        raise ConfigError(f"model.pca_params: {spec!r} is neither {PCA_NAME!r} nor an existing .npz file")
    params = read_npz(path)
    try:
        means = np.asarray(params["pca_means"], np.float32).reshape(-1)
        vectors = np.asarray(params["pca_eigen_vectors"], np.float32)
    except KeyError as exc:
        raise DataError(
            f"{path}: no {exc} array (VGGish's PCA file holds pca_means and pca_eigen_vectors)"
        ) from None
    if means.shape != (EMBEDDING_SIZE,) or vectors.shape != (EMBEDDING_SIZE, EMBEDDING_SIZE):
        raise DataError(
            f"{path}: PCA shapes {means.shape} and {vectors.shape}; expected (128,) and (128, 128)"
        )
    return torch.from_numpy(means), torch.from_numpy(vectors)


def build_backbone(cfg: VggishConfig, n_mels: int, frames: int) -> nn.Module:
    return VggishBackbone(cfg, n_mels)


# numbered layers (1-based, network order): the four conv blocks (averaged over frequency, their
# time positions as frames), fc1_1 and fc1_2 (one frame per example); the embedding is fc2
# (or its post-processed form), pooled by the head
LAYER_NAMES = ("block1", "block2", "block3", "block4", "fc1_1", "fc1_2")


def vggish_layer_frames(
    backbone: VggishBackbone, x: torch.Tensor, layers: list[int]
) -> dict[int, torch.Tensor]:
    """{layer: (batch, frames', dim)}; key 0 holds the backbone's output when it was computed."""
    names = [LAYER_NAMES[layer - 1] for layer in layers]
    # through fc2 (a small layer) once an fc layer is asked for: the embedding comes on the way
    upto = "fc2" if any(n.startswith("fc") for n in names) else max(names, key=LAYER_NAMES.index)
    feats = backbone.features(x, upto)
    batch = x.shape[0]
    out: dict[int, torch.Tensor] = {}
    if "fc2" in feats:
        final = feats["postprocessed"] if "postprocessed" in feats else feats["fc2"]
        out[0] = final.reshape(batch, -1, EMBEDDING_SIZE)
    for layer, name in zip(layers, names, strict=True):
        value = feats[name]
        if value.ndim == 4:  # (n, channels, time, bands) -> (batch, examples x time, channels)
            value = value.mean(dim=3).transpose(1, 2)
        out[layer] = value.reshape(batch, -1, value.shape[-1])
    return out


def _conv_fc(state: dict[str, torch.Tensor], names: dict[str, tuple[str, str]], tf: bool) -> Converted:
    """``names``: our layer -> (its weight key, its bias key) in the checkpoint."""
    out: dict[str, torch.Tensor] = {}
    for ours, (weight, bias) in names.items():
        w = state[weight]
        if tf:  # conv HWIO -> OIHW, dense (in, out) -> (out, in)
            w = w.permute(3, 2, 0, 1) if w.ndim == 4 else w.T
        out[f"backbone.{ours}.weight"] = w.contiguous()
        out[f"backbone.{ours}.bias"] = state[bias]
    used = {k for pair in names.values() for k in pair}
    return Converted(out, sorted(set(state) - used))


def convert_tf_vggish(state: dict[str, torch.Tensor]) -> Converted:
    """The official checkpoint (``vggish_model.ckpt``): ``vggish/<scope>/weights`` and ``biases``,
    slim.repeat's layers under ``conv3/conv3_1`` etc."""
    if "vggish/conv1/weights" not in state:
        raise ValueError("not a VGGish TensorFlow checkpoint: no vggish/conv1/weights")
    scopes = {"conv1": "conv1", "conv2": "conv2", "fc2": "fc2"}
    scopes |= {n: f"{n[:5]}/{n}" for n in ("conv3_1", "conv3_2", "conv4_1", "conv4_2")}
    scopes |= {n: f"fc1/{n}" for n in FCS}
    names = {ours: (f"vggish/{s}/weights", f"vggish/{s}/biases") for ours, s in scopes.items()}
    return _conv_fc(state, names, tf=True)


def convert_torchvggish(state: dict[str, torch.Tensor]) -> Converted:
    """harritaylor/torchvggish's ``vggish-10086976.pth``: ``features.<i>`` (an nn.Sequential of
    convs, ReLUs and pools) and ``embeddings.<i>`` (Linear, ReLU, ...), copied from the official
    checkpoint."""
    if "features.0.weight" not in state:
        raise ValueError("not a torchvggish checkpoint: no features.0.weight")
    index = dict(zip((*CONVS, *FCS, "fc2"), ("features.0", "features.3", "features.6", "features.8",
                                              "features.11", "features.13", "embeddings.0",
                                              "embeddings.2", "embeddings.4"), strict=True))  # fmt: skip
    return _conv_fc(state, {ours: (f"{k}.weight", f"{k}.bias") for ours, k in index.items()}, tf=False)


def convert_pca(state: dict[str, torch.Tensor]) -> Converted:
    raise ConfigError(
        f"{PCA_NAME} holds VGGish's PCA parameters, not a network: use pretrained: vggish with "
        f"postprocess: pca (pca_params: {PCA_NAME})"
    )


def detect_layout(keys: list[str]) -> str:
    if "vggish/conv1/weights" in keys:
        return "tf_vggish"
    if "features.0.weight" in keys:
        return "torchvggish"
    if "pca_eigen_vectors" in keys:
        return "vggish_pca"
    raise ValueError("not a VGGish checkpoint: neither vggish/conv1/weights nor features.0.weight")


CONVERTERS: dict[str, Converter] = {
    "tf_vggish": convert_tf_vggish,
    "torchvggish": convert_torchvggish,
    "vggish_pca": convert_pca,
}

_NOTE = (
    "VGGish (Hershey et al. 2017; tensorflow/models research/audioset/vggish, Apache-2.0), trained "
    "on a preliminary YouTube-8M; {what}. No size or SHA-256 is published: the first download's "
    "SHA-256 is recorded and checked on every later use."
)
CHECKPOINTS = (
    Checkpoint(
        name="vggish",
        url="https://storage.googleapis.com/audioset/vggish_model.ckpt",
        filename="vggish_model.ckpt",
        size=None,
        sha256=None,
        md5=None,
        license="Apache-2.0",
        layout="tf_vggish",
        features="vggish_16k_64",
        model="vggish",
        note=_NOTE.format(
            what="the official TensorFlow checkpoint, in TF's old V1 format (one file), read without "
            "TensorFlow (models/tf_checkpoint.py)"
        ),
    ),
    Checkpoint(
        name=PCA_NAME,
        url="https://storage.googleapis.com/audioset/vggish_pca_params.npz",
        filename="vggish_pca_params.npz",
        size=None,
        sha256=None,
        md5=None,
        license="Apache-2.0",
        layout="vggish_pca",
        features="vggish_16k_64",
        model="vggish",
        note=_NOTE.format(
            what="its PCA (whitening) parameters, for postprocess: pca (pca_params: vggish_pca); not a "
            "network"
        ),
    ),
    Checkpoint(
        name="torchvggish",
        url="https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth",
        filename="vggish-10086976.pth",
        size=None,
        sha256=None,
        md5=None,
        license="Apache-2.0",
        layout="torchvggish",
        features="vggish_16k_64",
        model="vggish",
        note=_NOTE.format(
            what="harritaylor/torchvggish's PyTorch copy of the official weights (torch.hub names it by "
            "the first 8 hex digits of its SHA-256, 10086976, which torch.hub checks; its model adds a "
            "ReLU after the embedding, ours keeps the official linear one)"
        ),
    ),
)

LAYERS = Layers(lambda cfg: len(LAYER_NAMES), lambda cfg: [EMBEDDING], vggish_layer_frames, "mean")
FAMILY = Family(
    VggishConfig,
    build_backbone,
    CONVERTERS,
    detect_layout,
    CHECKPOINTS,
    LAYERS,
    lambda backbone: EXAMPLE_FRAMES,
    Verification(input_frames=None),
)
