"""PANNs-style CNN (the CNN14 family): conv blocks of two 3x3 conv+BN+ReLU and average pooling.

Parameter names follow the official PANNs code (``bn0``, ``conv_block{i}.conv1/bn1/conv2/bn2``,
``fc1``) so that official checkpoints can be loaded into it. Width and depth come from the model
config: six blocks of 64..2048 channels is CNN14; the demo uses a narrow four-block variant.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from audiotag.config import ModelConfig


class ConvBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        for conv in (self.conv1, self.conv2):
            nn.init.xavier_uniform_(conv.weight)

    def forward(self, x: torch.Tensor, pool_size: tuple[int, int]) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        if pool_size != (1, 1):
            x = F.avg_pool2d(x, kernel_size=pool_size)
        return x


class Cnn(nn.Module):
    """Input (batch, frames, mels) log-mel; output (batch, n_classes) logits."""

    def __init__(self, cfg: ModelConfig, n_mels: int, n_classes: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.bn0 = nn.BatchNorm2d(n_mels)
        channels = [1, *cfg.channels]
        for i in range(len(cfg.channels)):
            self.add_module(f"conv_block{i + 1}", ConvBlock(channels[i], channels[i + 1]))
        # PANNs pools (time, freq) = (2, 2) after every block but the last.
        self.pool = (cfg.pool_size[1], cfg.pool_size[0])
        self.fc1 = nn.Linear(cfg.channels[-1], cfg.embedding_dim)
        self.head = nn.Linear(cfg.embedding_dim, n_classes)
        nn.init.xavier_uniform_(self.fc1.weight)
        nn.init.zeros_(self.fc1.bias)

    @property
    def blocks(self) -> list[ConvBlock]:
        return [getattr(self, f"conv_block{i + 1}") for i in range(len(self.cfg.channels))]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unsqueeze(1)  # (batch, 1, frames, mels)
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)  # normalise each mel bin
        dropout = self.cfg.dropout
        blocks = self.blocks
        for i, block in enumerate(blocks):
            x = block(x, self.pool if i < len(blocks) - 1 else (1, 1))
            x = F.dropout(x, p=dropout, training=self.training)
        x = x.mean(dim=3)  # over frequency -> (batch, channels, frames)
        if self.cfg.global_pool == "mean+max":
            x = x.amax(dim=2) + x.mean(dim=2)
        elif self.cfg.global_pool == "max":
            x = x.amax(dim=2)
        else:
            x = x.mean(dim=2)
        x = F.dropout(x, p=dropout, training=self.training)
        return F.relu(self.fc1(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        x = F.dropout(x, p=self.cfg.dropout, training=self.training)
        return self.head(x)
