"""EfficientAT (Schmid, Koutini, Widmer, ICASSP 2023): MobileNetV3 CNNs distilled from PaSST on AudioSet.

The network is MobileNetV3-Large (Howard et al. 2019, Table 1) on one input channel, as the official
``models/mn`` of github.com/fschmid56/EfficientAT builds it: a 3x3 stride-2 stem (BN, Hardswish),
fifteen inverted-residual blocks (1x1 expansion, depthwise k x k, optional squeeze-excitation, 1x1
projection; ReLU in the first six, Hardswish after; a residual where shape allows), a 1x1 conv to six
times the last block's channels (BN, Hardswish). Every width is ``width`` times MobileNetV3's,
rounded to a multiple of 8 (``make_divisible``): mn10 is width 1.0, mn40 width 4.0. BatchNorm has
eps 1e-3 and momentum 0.01. The squeeze-excitation of the released ``*_as`` models works over
channels (``se_dims="c"``): mean over frequency and time, Linear to ``make_divisible(C // 4)``, ReLU,
Linear, a plain sigmoid (not MobileNetV3's hard sigmoid), times the input. The four stride-2 blocks
take ``strides`` (default 2, 2, 2, 2), so time and frequency shrink 32-fold.

The backbone returns the last feature map averaged over frequency, ``(batch, frames / 32, channels)``;
the ``mlp`` head (``models/heads.MlpHead``) is the official classifier: mean over time, Linear to
``embedding_dim`` (``make_divisible(1280 * width)``), Hardswish, dropout 0.2, Linear.

Module names mirror the official ones (``features.<i>.block.<j>.<0 conv|1 bn>``), so the checkpoints
convert by renaming their prefix; the squeeze-excitation sits at ``block.<j>`` itself where the
official code wraps it as ``block.<j>.conc_se_layers.0``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from audiotag.config.schema import InputNorm, ModelBase
from audiotag.fetch.weights import Checkpoint
from audiotag.models.family import Family, Layers, Verification
from audiotag.models.loading import Converted, Converter


def make_divisible(value: float, divisor: int = 8) -> int:
    """The nearest multiple of ``divisor`` (at least ``divisor``), never more than 10% below ``value``:
    MobileNet's channel rounding (TensorFlow slim's ``_make_divisible``)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class EfficientAtConfig(ModelBase):
    """EfficientAT's MobileNetV3 (``mn<width x 10>``), any width; AudioSet checkpoints mn01..mn40."""

    name: Literal["efficientat"] = "efficientat"
    head: Literal["linear", "attention", "mlp", "cls", "mean"] = "mlp"
    width: float = Field(1.0, gt=0, description="width multiplier of every layer (mn10: 1.0, mn40: 4.0)")
    strides: list[int] = Field(
        default_factory=lambda: [2, 2, 2, 2],
        description="strides of the four downsampling blocks (2 or 1 each; the official 'strides')",
    )
    dropout: float = Field(0.2, ge=0, lt=1, description="dropout before the classifier (official: 0.2)")
    input_norm: InputNorm | Literal["dataset"] | None = Field(
        default_factory=lambda: InputNorm(mean=-4.5, std=5.0),
        description="AugmentMelSTFT's fixed '(x + 4.5) / 5'",
    )

    @model_validator(mode="before")
    @classmethod
    def _hidden_width(cls, data: Any) -> Any:
        """``embedding_dim`` (the head's hidden layer) follows ``width`` unless given: 1280 x width."""
        if isinstance(data, dict) and "embedding_dim" not in data:
            width = data.get("width", 1.0)
            if isinstance(width, (int, float)) and width > 0:
                data = {**data, "embedding_dim": make_divisible(1280 * width)}
        return data

    @model_validator(mode="after")
    def _check(self) -> EfficientAtConfig:
        if len(self.strides) != 4 or any(s not in (1, 2) for s in self.strides):
            raise ValueError(f"strides: four values of 1 or 2 (got {self.strides})")
        return self


@dataclass(frozen=True)
class BlockSpec:
    """One inverted-residual block, widths already scaled."""

    inp: int
    kernel: int
    expanded: int
    out: int
    se: bool
    hardswish: bool
    stride: int


# MobileNetV3-Large (Howard et al. 2019, Table 1): in, kernel, expanded, out, SE, Hardswish, stride
# (None: one of the four downsampling strides)
LARGE = (
    (16, 3, 16, 16, False, False, 1),
    (16, 3, 64, 24, False, False, None),
    (24, 3, 72, 24, False, False, 1),
    (24, 5, 72, 40, True, False, None),
    (40, 5, 120, 40, True, False, 1),
    (40, 5, 120, 40, True, False, 1),
    (40, 3, 240, 80, False, True, None),
    (80, 3, 200, 80, False, True, 1),
    (80, 3, 184, 80, False, True, 1),
    (80, 3, 184, 80, False, True, 1),
    (80, 3, 480, 112, True, True, 1),
    (112, 3, 672, 112, True, True, 1),
    (112, 5, 672, 160, True, True, None),
    (160, 5, 960, 160, True, True, 1),
    (160, 5, 960, 160, True, True, 1),
)


def block_specs(width: float, strides: list[int]) -> list[BlockSpec]:
    downsampling = iter(strides)
    return [
        BlockSpec(
            make_divisible(inp * width),
            kernel,
            make_divisible(expanded * width),
            make_divisible(out * width),
            se,
            hardswish,
            stride if stride is not None else next(downsampling),
        )
        for inp, kernel, expanded, out, se, hardswish, stride in LARGE
    ]


def conv_bn(
    inp: int, out: int, kernel: int, stride: int = 1, groups: int = 1, act: type[nn.Module] | None = None
) -> nn.Sequential:
    """Conv (no bias, 'same' padding) + BatchNorm (eps 1e-3, momentum 0.01) + activation."""
    layers: list[nn.Module] = [
        nn.Conv2d(inp, out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out, eps=1e-3, momentum=0.01),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    """Channel squeeze-excitation: mean over (freq, time), fc1, ReLU, fc2, sigmoid, times the input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        squeezed = make_divisible(channels // 4)
        self.fc1 = nn.Linear(channels, squeezed)
        self.fc2 = nn.Linear(squeezed, channels)

    def forward(self, x: Tensor) -> Tensor:
        scale = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3))))))
        return x * scale[:, :, None, None]


class InvertedResidual(nn.Module):
    def __init__(self, spec: BlockSpec) -> None:
        super().__init__()
        act = nn.Hardswish if spec.hardswish else nn.ReLU
        layers: list[nn.Module] = []
        if spec.expanded != spec.inp:
            layers.append(conv_bn(spec.inp, spec.expanded, 1, act=act))
        layers.append(conv_bn(spec.expanded, spec.expanded, spec.kernel, spec.stride, spec.expanded, act))
        if spec.se:
            layers.append(SqueezeExcite(spec.expanded))
        layers.append(conv_bn(spec.expanded, spec.out, 1))
        self.block = nn.Sequential(*layers)
        self.residual = spec.stride == 1 and spec.inp == spec.out

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return out + x if self.residual else out


class EfficientAtBackbone(nn.Module):
    """Log-mel (batch, frames, mels) -> (batch, ceil(frames / 32), 6 x last block's channels)."""

    output = "sequence"
    n_prefix_tokens = 0

    def __init__(self, cfg: EfficientAtConfig) -> None:
        super().__init__()
        specs = block_specs(cfg.width, cfg.strides)
        last = specs[-1].out
        self.features = nn.Sequential(
            conv_bn(1, specs[0].inp, 3, 2, act=nn.Hardswish),
            *(InvertedResidual(spec) for spec in specs),
            conv_bn(last, 6 * last, 1, act=nn.Hardswish),
        )
        self.out_dim = 6 * last
        # time stride of each numbered layer's output (features[1..16]), the stem's 2 included
        self.time_strides = [2 * math.prod(spec.stride for spec in specs[: i + 1]) for i in range(len(specs))]
        self.time_strides.append(self.time_strides[-1])
        for module in self.modules():  # the official initialisation
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        image = x.transpose(1, 2).unsqueeze(1)  # (batch, 1, mels, frames), the official layout
        return self.features(image).mean(dim=2).transpose(1, 2)


def block_frames(backbone: EfficientAtBackbone, x: Tensor, layers: list[int]) -> dict[int, Tensor]:
    """Each chosen layer's output averaged over frequency, at the last layer's frame rate.

    Layers 1..15 are the inverted-residual blocks, 16 the final 1x1 conv (``features[i]``, the
    official component ids: the stem, ``features[0]``, is not offered). EfficientAT_HEAR's block
    features (fschmid56/EfficientAT_HEAR ``hear_mn/hear_wrapper.py``, ``add_block_features``) are
    each chosen map averaged over frequency and time (``adaptive_avg_pool2d``); here the time axis is
    first averaged down to the last layer's rate (non-overlapping windows, the last one partial), so
    the layers line up frame by frame, and the representation's mean over time finishes the pool
    (equal to the plain mean where the frames divide evenly). Returns {layer: (batch, frames', C)}
    and under key 0 what ``backbone(x)`` returns.
    """
    h = x.transpose(1, 2).unsqueeze(1)
    maps: dict[int, Tensor] = {}
    for index, layer in enumerate(backbone.features):
        h = layer(h)
        if index in layers:
            maps[index] = h.mean(dim=2)  # (batch, channels, frames_i)
    out: dict[int, Tensor] = {0: h.mean(dim=2).transpose(1, 2)}
    last = backbone.time_strides[-1]
    for index, frames in maps.items():
        ratio = last // backbone.time_strides[index - 1]
        if ratio > 1:
            frames = F.avg_pool1d(frames, ratio, ratio, ceil_mode=True)
        out[index] = frames.transpose(1, 2)
    return out


def build_backbone(cfg: EfficientAtConfig, n_mels: int, frames: int) -> nn.Module:
    """Any input size works (every conv pads; the squeeze-excitation is over channels only)."""
    return EfficientAtBackbone(cfg)


def convert_efficientat(state: dict[str, Tensor]) -> Converted:
    """An official ``mn*_as`` / ``mn*_im`` checkpoint (a plain state dict of ``MN``) -> ours.

    ``features.*`` -> ``backbone.features.*`` (``conc_se_layers.0.`` dropped), ``classifier.2`` ->
    ``head.fc1``, ``classifier.5`` -> ``head.fc``. A key of no known place is kept, so the loader
    reports it as one the model lacks (e.g. a second concurrent squeeze-excitation, se_dims "cf").
    """
    renames = {"classifier.2.": "head.fc1.", "classifier.5.": "head.fc."}
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        prefix = next((p for p in renames if key.startswith(p)), None)
        if prefix is not None:
            out[renames[prefix] + key[len(prefix) :]] = value
        elif key.startswith("features."):
            out["backbone." + key.replace(".conc_se_layers.0.", ".")] = value
        else:
            out[key] = value
    for key in [k for k in out if k.endswith(".running_mean")]:  # a counter does not change the output
        out.setdefault(key.removesuffix("running_mean") + "num_batches_tracked", torch.tensor(0))
    return Converted(out)


CONVERTERS: dict[str, Converter] = {"efficientat": convert_efficientat}

RELEASES = "https://github.com/fschmid56/EfficientAT/releases/download/v0.0.1/"


def _release(name: str, filename: str, model: str, note: str) -> Checkpoint:
    return Checkpoint(
        name=name,
        url=RELEASES + filename,
        filename=filename,
        size=None,
        sha256=None,
        md5=None,
        license="MIT",
        layout="efficientat",
        features="passt_32k_128",
        model=model,
        note=note + " EfficientAT (Schmid et al., ICASSP 2023), MobileNetV3 distilled from PaSST on "
        "AudioSet (527 classes), ImageNet-initialised; github.com/fschmid56/EfficientAT (MIT), GitHub "
        "release v0.0.1 (URL from models/mn/model.py pretrained_models; size and checksum are not "
        "published: recorded on first fetch). A plain state dict: features.*, classifier.{2,5}.*. "
        "Trained in float16 on 10 s clips (1000 frames).",
    )


CHECKPOINTS = (
    _release("mn01_as", "mn01_as_mAP_298.pt", "mn01", "mn01_as, width 0.1, AudioSet mAP 0.298 (file name)."),
    _release("mn02_as", "mn02_as_mAP_378.pt", "mn02", "mn02_as, width 0.2, AudioSet mAP 0.378 (file name)."),
    _release("mn04_as", "mn04_as_mAP_432.pt", "mn04", "mn04_as, width 0.4, AudioSet mAP 0.432 (README)."),
    _release("mn05_as", "mn05_as_mAP_443.pt", "mn05", "mn05_as, width 0.5, AudioSet mAP 0.443 (README)."),
    _release("mn10_as", "mn10_as_mAP_471.pt", "mn10", "mn10_as, width 1.0, AudioSet mAP 0.471 (README)."),
    _release("mn20_as", "mn20_as_mAP_478.pt", "mn20", "mn20_as, width 2.0, AudioSet mAP 0.478 (README)."),
    _release("mn30_as", "mn30_as_mAP_482.pt", "mn30", "mn30_as, width 3.0, AudioSet mAP 0.482 (README)."),
    _release("mn40_as", "mn40_as_mAP_484.pt", "mn40", "mn40_as, width 4.0, AudioSet mAP 0.484 (README)."),
    _release(
        "mn40_as_ext",
        "mn40_as_ext_mAP_487.pt",
        "mn40",
        "mn40_as_ext, width 4.0, extended training (300 epochs), AudioSet mAP 0.487 (README).",
    ),
)


# default layers: the blocks EfficientAT_HEAR's "all_b" modules pool (b5, b11, b13, b15)
LAYERS = Layers(lambda cfg: 16, lambda cfg: ["5", "11", "13", "15"], block_frames, "mean")
VERIFY = Verification(audioset_layouts=frozenset({"efficientat"}))
FAMILY = Family(
    EfficientAtConfig,
    build_backbone,
    CONVERTERS,
    None,
    CHECKPOINTS,
    LAYERS,
    lambda backbone: backbone.time_strides[-1],
    VERIFY,
)
