"""PANNs-style CNNs (the CNN14 family, and aisfx's 9-layer CNN) as backbones.

Parameter names follow the official PANNs code (``bn0``, ``conv_block{i}.conv1/bn1/conv2/bn2``),
so official checkpoints load by a prefix rename: CNN14 is six double-3x3 blocks of 64..2048
channels, CNN10 four blocks of 64..512, CNN6 four single-5x5 blocks. The backbone returns the frame
sequence after averaging over frequency; the head pools it. As in the official tagging models
(``Cnn14``, ``Cnn10``, ``Cnn6`` of qiuqiangkong/audioset_tagging_cnn ``pytorch/models.py``): dropout
0.2 after every block, 2x2 average pooling after every block but CNN14's last (``pool_last``), no
smoothing over time (``time_smoothing`` is the detection variants' step, off by default).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from audiotag.config.schema import ModelBase
from audiotag.fetch.weights import Checkpoint
from audiotag.models.family import EMBEDDING, Family, Layers, Verification
from audiotag.models.loading import Converted, Converter


class CnnConfig(ModelBase):
    """The PANNs CNN family (CNN14, CNN10, CNN6) and other PANNs-style CNNs (aisfx)."""

    name: Literal["cnn"] = "cnn"
    channels: list[int] = Field(
        default_factory=lambda: [64, 128, 256, 512, 1024, 2048],
        description="output channels of each conv block (CNN14: 64..2048, six blocks)",
    )
    block: Literal["double3x3", "single5x5"] = Field(
        "double3x3", description="two 3x3 conv+BN+ReLU (CNN14, CNN10) or one 5x5 (CNN6)"
    )
    pool_size: list[int] = Field(
        default_factory=lambda: [2, 2],
        description="pooling (freq, time) after each block but the last",
    )
    pool_type: Literal["avg", "max"] = "avg"
    pool_last: bool = Field(
        False,
        description="the last block pools too (PANNs Cnn10/Cnn6 pool 2x2 after conv_block4; Cnn14's "
        "conv_block6 does not)",
    )
    block_dropout: float = Field(0.2, ge=0, lt=1, description="dropout after every conv block (PANNs: 0.2)")
    bn0: bool = Field(True, description="BatchNorm over mel bins at the input (PANNs)")
    time_smoothing: bool = Field(
        False,
        description="3-frame max+avg pooling over time before the head: PANNs' sound-event-detection "
        "variants (Cnn14_DecisionLevel*) only, not the tagging models Cnn14/Cnn10/Cnn6",
    )
    global_pool: Literal["mean+max", "mean", "max"] = "mean+max"
    embedding_dim: int | None = Field(2048, gt=0)

    @model_validator(mode="after")
    def _check(self) -> CnnConfig:
        if not self.channels or any(c <= 0 for c in self.channels):
            raise ValueError("channels must be a non-empty list of positive integers")
        if len(self.pool_size) != 2 or any(p < 1 for p in self.pool_size):
            raise ValueError("pool_size must be two positive integers (freq, time)")
        return self


class ConvBlock(nn.Module):
    """Two 3x3 conv+BN+ReLU (CNN14/CNN10) or one 5x5 conv+BN+ReLU (CNN6), then pooling."""

    def __init__(self, in_channels: int, out_channels: int, kind: str) -> None:
        super().__init__()
        size = 3 if kind == "double3x3" else 5
        self.conv1 = nn.Conv2d(in_channels, out_channels, size, padding=size // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.double = kind == "double3x3"
        if self.double:
            self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(out_channels)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)

    def forward(self, x: torch.Tensor, pool_size: tuple[int, int], pool_type: str) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        if self.double:
            x = F.relu(self.bn2(self.conv2(x)))
        if pool_size != (1, 1):
            pool = F.avg_pool2d if pool_type == "avg" else F.max_pool2d
            x = pool(x, kernel_size=pool_size)
        return x


class CnnBackbone(nn.Module):
    """Log-mel (batch, frames, mels) -> frame sequence (batch, frames / 2^(blocks-1), channels)."""

    output = "sequence"
    n_prefix_tokens = 0

    def __init__(self, cfg: CnnConfig, n_mels: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.bn0 = nn.BatchNorm2d(n_mels) if cfg.bn0 else None
        channels = [1, *cfg.channels]
        for i in range(len(cfg.channels)):
            self.add_module(f"conv_block{i + 1}", ConvBlock(channels[i], channels[i + 1], cfg.block))
        self.pool = (cfg.pool_size[1], cfg.pool_size[0])  # (time, freq) on the (frames, mels) image
        self.out_dim = cfg.channels[-1]

    @property
    def blocks(self) -> list[ConvBlock]:
        return [getattr(self, f"conv_block{i + 1}") for i in range(len(self.cfg.channels))]

    def forward(self, x: torch.Tensor, spec_keep: torch.Tensor | None = None) -> torch.Tensor:
        """``spec_keep``: a SpecAugment mask of ``x``'s shape, applied after ``bn0`` with zeros (PANNs)."""
        x = x.unsqueeze(1)  # (batch, 1, frames, mels)
        if self.bn0 is not None:
            x = self.bn0(x.transpose(1, 3)).transpose(1, 3)  # normalise each mel bin
        if spec_keep is not None:
            x = x.masked_fill(~spec_keep.unsqueeze(1), 0.0)
        x = self.block_maps(x)[-1].mean(dim=3)  # over frequency -> (batch, channels, frames)
        if self.cfg.time_smoothing:
            x = F.max_pool1d(x, 3, stride=1, padding=1) + F.avg_pool1d(x, 3, stride=1, padding=1)
        return x.transpose(1, 2)

    def block_pools(self) -> list[tuple[int, int]]:
        """The (time, freq) pooling after each block (1, 1 for CNN14's last)."""
        n = len(self.cfg.channels)
        return [(1, 1) if i == n - 1 and not self.cfg.pool_last else self.pool for i in range(n)]

    def block_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each block's output (batch, channels, frames', mels'), after its pooling and dropout;
        ``x`` is the (batch, 1, frames, mels) image after ``bn0``."""
        maps = []
        for block, pool in zip(self.blocks, self.block_pools(), strict=True):
            x = block(x, pool, self.cfg.pool_type)
            x = F.dropout(x, p=self.cfg.block_dropout, training=self.training)
            maps.append(x)
        return maps


def fused_block_frames(backbone: CnnBackbone, x: torch.Tensor, layers: list[int]) -> dict[int, torch.Tensor]:
    """Frame-wise features of the chosen blocks (1-based), as CNN14-Fusion forms them.

    Niizumi et al. 2022 (nttcslab/composing-general-audio-repr, ``to_gp_cnn14.patch``,
    ``GeneralPurposeCnn14.encode_frames``): each block's output (batch, C, T_i, F_i) is max-pooled
    over time, without overlap, down to the last block's frame rate (kernel (T_i / T_last, 1)), then
    each frame's C x F values are flattened channel-major (``reshape_along_time``). Returns
    {block: (batch, T_last, C * F_i)}, and under key 0 what ``backbone(x)`` returns (computed on the
    way); log-mel ``x`` is (batch, frames, mels), already normalised. The time kernels are 16, 8, 4,
    2, 1, 1 for CNN14's blocks 1-6; at 64 mels block 3 gives 256 x 8 = 2048 values a frame, block 6
    2048 x 2 = 4096, 6144 together, as the patch's example prints. Fused layers are concatenated
    and pooled by max + mean over time (``mean_max_pooling``; ``to_evar/config/cnn14_fusion.yaml``:
    ``temporal_pooling_type: mean_max``). The paper fuses CNN14 only (CNN14-Fusion#3#6, our default
    ``layers: [3, 6]``); the same rule on other CNNs (aisfx, CNN10) is our extension.
    """
    image = x.unsqueeze(1)
    if backbone.bn0 is not None:
        image = backbone.bn0(image.transpose(1, 3)).transpose(1, 3)
    maps = backbone.block_maps(image)
    time_pools = [pool[0] for pool in backbone.block_pools()]
    frames_last = maps[-1].shape[2]
    seq = maps[-1].mean(dim=3)
    if backbone.cfg.time_smoothing:
        seq = F.max_pool1d(seq, 3, stride=1, padding=1) + F.avg_pool1d(seq, 3, stride=1, padding=1)
    out: dict[int, torch.Tensor] = {0: seq.transpose(1, 2)}
    for layer in layers:
        fmap = maps[layer - 1]
        ratio = math.prod(time_pools[layer:])  # the time pooling still ahead of this block
        if ratio > 1:
            fmap = F.max_pool2d(fmap, kernel_size=(ratio, 1))
        fmap = fmap[:, :, :frames_last]
        batch, channels, frames, bins = fmap.shape
        out[layer] = fmap.transpose(2, 3).reshape(batch, channels * bins, frames).transpose(1, 2)
    return out


def cnn_min_frames(backbone: CnnBackbone) -> int:
    """Input frames the last block needs to keep one frame."""
    return math.prod(pool[0] for pool in backbone.block_pools())


def build_backbone(cfg: CnnConfig, n_mels: int, frames: int) -> nn.Module:
    return CnnBackbone(cfg, n_mels)


def convert_panns(state: dict[str, torch.Tensor]) -> Converted:
    """Official PANNs checkpoint (``Cnn14_mAP=0.431.pth`` and friends, already unwrapped from ``model``)."""
    out, ignored = {}, []
    for key, value in state.items():
        if key.startswith(("bn0.", "conv_block")):
            out[f"backbone.{key}"] = value
        elif key.startswith("fc1."):
            out[f"head.{key}"] = value
        elif key.startswith("fc_audioset."):
            out["head.fc." + key.removeprefix("fc_audioset.")] = value
        else:  # spectrogram_extractor.*, logmel_extractor.*: our front-end computes the same log-mel
            ignored.append(key)
    return Converted(out, ignored)


def convert_aisfx(state: dict[str, torch.Tensor]) -> Converted:
    """aisfx's ``checkpoint.pth`` (CrossNet): ``embedding_net.conv_block1..4``; its 9 heads are dropped."""
    out, ignored = {}, []
    for key, value in state.items():
        if key.startswith("embedding_net.conv_block"):
            out["backbone." + key.removeprefix("embedding_net.")] = value
        else:
            ignored.append(key)
    return Converted(out, ignored)


CONVERTERS: dict[str, Converter] = {"panns": convert_panns, "aisfx": convert_aisfx}


def detect_layout(keys) -> str:
    """aisfx's CrossNet keys sit under ``embedding_net.``; anything else is read as PANNs'."""
    return "aisfx" if any(k.startswith("embedding_net.") for k in keys) else "panns"


def _panns(name: str, filename: str, size: int | None, sha256: str | None, md5: str, note: str) -> Checkpoint:
    """A PANNs checkpoint of Zenodo record 3987831: ``filename``'s model, 16 or 32 kHz by its name."""
    return Checkpoint(
        name=name,
        url="https://zenodo.org/records/3987831/files/" + filename.replace("=", "%3D") + "?download=1",
        filename=filename,
        size=size,
        sha256=sha256,
        md5=md5,
        license="CC-BY-4.0",
        layout="panns",
        pickle_globals=("numpy",),
        features="panns_16k" if "_16k" in filename else "panns_32k",
        model=filename.split("_")[0].lower(),
        note=note
        + " PANNs (Kong et al. 2020), AudioSet, 527 classes; Zenodo record 3987831 (weights CC BY 4.0; "
        "code github.com/qiuqiangkong/audioset_tagging_cnn, MIT). MD5 as listed on the Zenodo record. "
        "The file is a dict with 'model' (plus training state); its front-end buffers "
        "(spectrogram_extractor.*, logmel_extractor.*) are not used by our models.",
    )


_PINNED = "SHA-256 as pinned by independent projects that verified the Zenodo MD5."
CHECKPOINTS = (
    _panns(
        "cnn14",
        "Cnn14_mAP=0.431.pth",
        327_428_481,
        "0dc499e40e9761ef5ea061ffc77697697f277f6a960894903df3ada000e34b31",
        "541141fa2ee191a88f24a3219fff024e",
        "CNN14 at 32 kHz, AudioSet mAP 0.431. Size and " + _PINNED,
    ),
    _panns(
        "cnn14_16k",
        "Cnn14_16k_mAP=0.438.pth",
        None,
        "e2ee543a27919542c2ea03eabaa70b24dcd4e6c8e05621de6b67a94e4c5058e6",
        "362fc5ff18f1d6ad2f6d464b45893f2c",
        "CNN14 at 16 kHz (STFT 512 / hop 160, 50-8000 Hz), AudioSet mAP 0.438. " + _PINNED,
    ),
    _panns(
        "cnn10",
        "Cnn10_mAP=0.380.pth",
        25_237_595,
        None,
        "bfb1f1f9968938fa8ef4012b8471f5f6",
        "CNN10 at 32 kHz, AudioSet mAP 0.380.",
    ),
    _panns(
        "cnn6",
        "Cnn6_mAP=0.343.pth",
        None,
        None,
        "e25e26b84585b14c7754c91e48efc9be",
        "CNN6 at 32 kHz (5x5 convolutions), AudioSet mAP 0.343.",
    ),
    Checkpoint(
        name="aisfx",
        url=None,
        package="aisfx==0.1.2",
        filename="models/checkpoint.pth",
        size=24_900_277,
        sha256="499ea75909c932a2f94c35fa722fa4fabc5bcb7e84917209cc5f7402627b7eb5",
        md5=None,
        license="CC-BY-4.0",
        layout="aisfx",
        pickle_globals=("numpy",),  # (state_dict, datasets): numpy scalars in the second element
        features="aisfx_44k_96",
        model="aisfx",
        note="aiSFX (Ma & Lerch, ISMIR 2022), sound-effects libraries; shipped inside the PyPI wheel "
        "aisfx==0.1.2 (size and SHA-256 from the wheel's RECORD). The wheel's LICENSE file is "
        "Creative Commons Attribution 4.0 although its METADATA classifier says MIT. The file is a "
        "tuple (state_dict, datasets): embedding_net.conv_block1..4.* and 9 heads fc.0..8.*. "
        "Install without dependencies (it pins numpy 1.23 and librosa 0.9); we never import it.",
    ),
)


# default layers: CNN14-Fusion#3#6 for six blocks, the model's own embedding otherwise
LAYERS = Layers(
    lambda cfg: len(cfg.channels),
    lambda cfg: ["3", "6"] if len(cfg.channels) == 6 else [EMBEDDING],
    fused_block_frames,
    "mean+max",
)
VERIFY = Verification(audioset_layouts=frozenset({"panns"}))
FAMILY = Family(
    CnnConfig, build_backbone, CONVERTERS, detect_layout, CHECKPOINTS, LAYERS, cnn_min_frames, VERIFY
)
