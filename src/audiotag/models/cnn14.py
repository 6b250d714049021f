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

import torch
import torch.nn.functional as F
from torch import nn

from audiotag.config import CnnConfig
from audiotag.models.loading import Converted, Converter


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
        blocks = self.blocks
        for i, block in enumerate(blocks):
            last = i == len(blocks) - 1
            x = block(x, (1, 1) if last and not self.cfg.pool_last else self.pool, self.cfg.pool_type)
            x = F.dropout(x, p=self.cfg.block_dropout, training=self.training)
        x = x.mean(dim=3)  # over frequency -> (batch, channels, frames)
        if self.cfg.time_smoothing:
            x = F.max_pool1d(x, 3, stride=1, padding=1) + F.avg_pool1d(x, 3, stride=1, padding=1)
        return x.transpose(1, 2)


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
