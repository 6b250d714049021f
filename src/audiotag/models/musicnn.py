"""musicnn (Pons & Serra 2019): the MagnaTagATune and Million Song Dataset taggers, real weights.

The network of musicnn 0.1.0's ``models.py`` (``build_musicnn``, 64 mid-end filters, 200 back-end
units), rebuilt in torch on the (batch, frames, 96) log-mel of ``configs/features/musicnn_16k_96``:

- front-end: BatchNorm of the input, then on the time-padded image (pad 3) two *timbral* convs of 7
  frames x 38 and x 67 mel bins (204 filters each), and on the unpadded image three *temporal* convs
  of 128, 64, 32 frames x 1 bin ('same' padding, 51 filters each); each conv ReLU then BatchNorm,
  then max over frequency: 204 + 204 + 51 x 3 = 561 values a frame;
- mid-end: three 7-frame convs over all 561 (then 64) values (pad 3), ReLU, BatchNorm, the 2nd
  and 3rd added to their input; the front-end and the three outputs concatenated: 753 a frame;
- back-end: max and mean over time, interleaved (TF's ``flatten`` of (753, 2)), BatchNorm, dropout
  0.5, dense 200 + ReLU, BatchNorm (the *penultimate* features), dropout 0.5, dense 50 (our head).

Every BatchNorm has TF's epsilon 1e-3. The backbone returns the penultimate features as a
one-frame sequence, so the tagger's linear head is the official output layer (``dense_1``) and
fine-tuning replaces only it. Variables are read from the wheel's TensorFlow checkpoint
(``models/tf_checkpoint.py``, no TensorFlow): conv kernels HWIO -> OIHW, dense kernels transposed.
Checked against the package run with TensorFlow: tests/test_golden_musicnn.py
(tools/golden/musicnn_package.py).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from audiotag.config.schema import ModelBase
from audiotag.fetch.weights import Checkpoint
from audiotag.models.family import EMBEDDING, Family, Layers, Verification
from audiotag.models.loading import Converted, Converter

TF_EPS = 1e-3  # tf.compat.v1.layers.batch_normalization's default epsilon (torch's is 1e-5)
TF_MOMENTUM = 0.01  # and its moving-average decay 0.99, in torch's convention
PATCH_FRAMES = 187  # musicnn's 3-s input: librosa.time_to_frames(3, 16000, 256, 512) + 1


class MusicnnConfig(ModelBase):
    """musicnn's front-, mid- and back-end (``build_musicnn`` of musicnn 0.1.0)."""

    name: Literal["musicnn"] = "musicnn"
    timbral_filters: int = Field(204, gt=0, description="filters of each timbral conv (int(1.6 * 128))")
    temporal_filters: int = Field(51, gt=0, description="filters of each temporal conv (int(1.6 * 32))")
    midend_filters: int = Field(64, gt=0, description="filters of the mid-end convs (MSD_musicnn_big: 512)")
    backend_units: int = Field(200, gt=0, description="units of the penultimate dense layer")
    backend_dropout: float = Field(0.5, ge=0, lt=1, description="dropout before the penultimate dense layer")
    # the backbone pools over time itself and hands the head one frame, which must pass unchanged
    global_pool: Literal["mean"] = "mean"


def _conv_bn(in_ch: int, out_ch: int, kernel: tuple[int, int]) -> nn.ModuleDict:
    return nn.ModuleDict(
        {
            "conv": nn.Conv2d(in_ch, out_ch, kernel),
            "bn": nn.BatchNorm2d(out_ch, eps=TF_EPS, momentum=TF_MOMENTUM),
        }
    )


def _apply(block: nn.ModuleDict, x: torch.Tensor) -> torch.Tensor:
    return block["bn"](F.relu(block["conv"](x)))


class MusicnnBackbone(nn.Module):
    """Log-mel (batch, frames, mels) -> penultimate features as one frame (batch, 1, backend_units)."""

    output = "sequence"
    n_prefix_tokens = 0
    TEMPORAL = (128, 64, 32)

    def __init__(self, cfg: MusicnnConfig, n_mels: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.bn_input = nn.BatchNorm2d(1, eps=TF_EPS, momentum=TF_MOMENTUM)
        self.timbral = nn.ModuleList(
            [_conv_bn(1, cfg.timbral_filters, (7, int(share * n_mels))) for share in (0.4, 0.7)]
        )
        self.temporal = nn.ModuleList([_conv_bn(1, cfg.temporal_filters, (k, 1)) for k in self.TEMPORAL])
        self.frontend_dim = 2 * cfg.timbral_filters + len(self.TEMPORAL) * cfg.temporal_filters
        mid = cfg.midend_filters
        self.midend = nn.ModuleList(
            [_conv_bn(1, mid, (7, self.frontend_dim)), _conv_bn(1, mid, (7, mid)), _conv_bn(1, mid, (7, mid))]
        )
        self.pooled_dim = self.frontend_dim + 3 * mid
        self.bn_pool = nn.BatchNorm1d(2 * self.pooled_dim, eps=TF_EPS, momentum=TF_MOMENTUM)
        self.dense = nn.Linear(2 * self.pooled_dim, cfg.backend_units)
        self.bn_dense = nn.BatchNorm1d(cfg.backend_units, eps=TF_EPS, momentum=TF_MOMENTUM)
        self.out_dim = cfg.backend_units

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """musicnn's ``extract_features`` outputs: timbral, temporal, cnn1..3 (batch, frames, dim),
        max_pool, mean_pool (batch, 753) and penultimate (batch, 200)."""
        image = self.bn_input(x.unsqueeze(1))  # (batch, 1, frames, mels)
        padded = F.pad(image, (0, 0, 3, 3))
        timbral = [_apply(b, padded).amax(dim=3) for b in self.timbral]  # (batch, filters, frames)
        temporal = [
            _apply(b, F.pad(image, (0, 0, (k - 1) // 2, k // 2))).amax(dim=3)
            for b, k in zip(self.temporal, self.TEMPORAL, strict=True)
        ]  # TF 'same': extra at the end
        front = torch.cat(timbral + temporal, dim=1).transpose(1, 2)  # (batch, frames, 561)
        outputs, h = [], front
        for i, block in enumerate(self.midend):
            y = _apply(block, F.pad(h.unsqueeze(1), (0, 0, 3, 3))).squeeze(3).transpose(1, 2)
            h = y if i == 0 else y + h  # the 2nd and 3rd are residual
            outputs.append(h)
        dense = torch.cat([front, *outputs], dim=2)  # (batch, frames, 753)
        max_pool, mean_pool = dense.amax(dim=1), dense.mean(dim=1)
        flat = torch.stack([max_pool, mean_pool], dim=2).flatten(1)  # TF's flatten of (753, 2)
        flat = F.dropout(self.bn_pool(flat), self.cfg.backend_dropout, self.training)
        penultimate = self.bn_dense(F.relu(self.dense(flat)))
        return {
            "timbral": torch.cat(timbral, dim=1).transpose(1, 2),
            "temporal": torch.cat(temporal, dim=1).transpose(1, 2),
            "cnn1": outputs[0],
            "cnn2": outputs[1],
            "cnn3": outputs[2],
            "max_pool": max_pool,
            "mean_pool": mean_pool,
            "penultimate": penultimate,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)["penultimate"].unsqueeze(1)


# numbered layers (1-based, network order); the model's own embedding is the penultimate layer
LAYER_NAMES = ("timbral", "temporal", "cnn1", "cnn2", "cnn3", "max_pool", "mean_pool")


def musicnn_layer_frames(
    backbone: MusicnnBackbone, x: torch.Tensor, layers: list[int]
) -> dict[int, torch.Tensor]:
    """{layer: (batch, frames', dim)}: layers 1-5 frame by frame (max-pooled over time by the family's
    rule, as musicnn's own back-end does), 6 and 7 (max_pool, mean_pool) as one frame; key 0 holds the
    backbone's output (penultimate)."""
    feats = backbone.features(x)
    out = {0: feats["penultimate"].unsqueeze(1)}
    for layer in layers:
        value = feats[LAYER_NAMES[layer - 1]]
        out[layer] = value.unsqueeze(1) if value.ndim == 2 else value
    return out


def build_backbone(cfg: MusicnnConfig, n_mels: int, frames: int) -> nn.Module:
    return MusicnnBackbone(cfg, n_mels)


def _bn(prefix: str, tf: str, state: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> None:
    for ours, theirs in (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
                         ("running_var", "moving_variance")):  # fmt: skip
        out[f"{prefix}.{ours}"] = state[f"{tf}/{theirs}"]
    out[f"{prefix}.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)  # TF keeps no counter


def convert_tf_musicnn(state: dict[str, torch.Tensor]) -> Converted:
    """musicnn's TF checkpoint: layers named by creation order (``conv2d``, ``conv2d_1``, ...,
    ``batch_normalization_1``, ...), as ``build_musicnn`` creates them."""
    if "conv2d/kernel" not in state:
        raise ValueError("not a musicnn checkpoint: no conv2d/kernel")

    def name(kind: str, i: int) -> str:
        return kind if i == 0 else f"{kind}_{i}"

    out: dict[str, torch.Tensor] = {}
    _bn("backbone.bn_input", "batch_normalization", state, out)
    ours = [f"timbral.{i}" for i in range(2)] + [f"temporal.{i}" for i in range(3)]
    ours += [f"midend.{i}" for i in range(3)]
    for i, block in enumerate(ours):  # conv2d_i, then batch_normalization_{i+1}
        out[f"backbone.{block}.conv.weight"] = state[f"{name('conv2d', i)}/kernel"].permute(3, 2, 0, 1)
        out[f"backbone.{block}.conv.bias"] = state[f"{name('conv2d', i)}/bias"]
        _bn(f"backbone.{block}.bn", f"batch_normalization_{i + 1}", state, out)
    _bn("backbone.bn_pool", "batch_normalization_9", state, out)
    out["backbone.dense.weight"] = state["dense/kernel"].T
    out["backbone.dense.bias"] = state["dense/bias"]
    _bn("backbone.bn_dense", "batch_normalization_10", state, out)
    out["head.fc.weight"] = state["dense_1/kernel"].T
    out["head.fc.bias"] = state["dense_1/bias"]
    used = {k for k in state if any(k.startswith(p) for p in ("conv2d", "batch_normalization", "dense"))}
    return Converted(out, sorted(set(state) - used))


CONVERTERS: dict[str, Converter] = {"tf_musicnn": convert_tf_musicnn}

# sizes and SHA-256 of the .index files from the wheel's RECORD (the .data shard beside each is
# checked tensor by tensor against the CRC32C its index records)
_WHEEL = "musicnn==0.1.0"
_NOTE = (
    "musicnn (Pons & Serra, ISMIR 2019 LBD), {data}: tagger of {tags}; the TensorFlow 1 checkpoint "
    "shipped inside the PyPI wheel musicnn==0.1.0 (size and SHA-256 of the .index from the wheel's "
    "RECORD; the .data-00000-of-00001 beside it is checked by its CRC32Cs), read without TensorFlow. "
    "Install without dependencies (it pins numpy<1.17 and imports TensorFlow); we never import it."
)
CHECKPOINTS = (
    Checkpoint(
        name="musicnn_mtt",
        url=None,
        package=_WHEEL,
        filename="MTT_musicnn/.index",
        size=4948,
        sha256="da2d7bb670b2b31e9bc441bb1bd75eca31b5b061f963cc1f9630c1aff3238f57",
        md5=None,
        license="ISC",
        layout="tf_musicnn",
        features="musicnn_16k_96",
        model="musicnn",
        note=_NOTE.format(data="MagnaTagATune", tags="its 50 tags (guitar, classical, piano, violin, ...)"),
    ),
    Checkpoint(
        name="musicnn_msd",
        url=None,
        package=_WHEEL,
        filename="MSD_musicnn/.index",
        size=4948,
        sha256="87f3e0f3550c8d3bafc840374003e5c8af5eeb5ecf6add61af09a7822d3282c8",
        md5=None,
        license="ISC",
        layout="tf_musicnn",
        features="musicnn_16k_96",
        model="musicnn",
        note=_NOTE.format(
            data="Million Song Dataset", tags="the 50 most frequent last.fm tags (rock, pop, ...)"
        ),
    ),
)

LAYERS = Layers(lambda cfg: len(LAYER_NAMES), lambda cfg: ["6", "7", EMBEDDING], musicnn_layer_frames, "max")
FAMILY = Family(
    MusicnnConfig,
    build_backbone,
    CONVERTERS,
    None,
    CHECKPOINTS,
    LAYERS,
    lambda backbone: 1,
    Verification(input_frames=PATCH_FRAMES),
)
