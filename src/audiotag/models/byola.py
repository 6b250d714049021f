"""BYOL-A's AudioNTT2020 encoder (Niizumi et al. 2021) as a frame-sequence backbone.

Three blocks of 3x3 conv (64 channels) + BatchNorm + ReLU + 2x2 max pooling, then per time step an
MLP ``fc``: Linear(64 * (n_mels // 8), d), ReLU, Dropout(0.3), Linear(d, d), ReLU. Module names
are the official ones (``features.0`` conv, ``features.1`` BN, …, ``fc.0``, ``fc.3``), so the
official ``AudioNTT2020-BYOLA-64x96d{512,1024,2048}.pth`` loads by prefixing ``backbone.``.
The official model pools the sequence by max + mean over time; here the LinearHead does that
(``global_pool`` mean+max, no ``embedding_dim``). Official weights need 64 mel bins.
"""

from __future__ import annotations

import re
from typing import Literal

import torch
from torch import nn

from audiotag.config.schema import ModelBase
from audiotag.core.errors import ConfigError
from audiotag.fetch.weights import Checkpoint
from audiotag.models.family import Family, Layers
from audiotag.models.loading import Converted, Converter


class ByolaConfig(ModelBase):
    """BYOL-A's AudioNTT2020 encoder: three conv blocks of 64 channels, then an MLP of ``dim``."""

    name: Literal["byola"] = "byola"
    dim: Literal[512, 1024, 2048] = 2048


CHANNELS = 64
PREFIX = "backbone."
_OWN_KEY = re.compile(r"(?:^|\.)((?:features|fc)\.\d+\.\w+)$")


class AudioNTT2020(nn.Module):
    """Log-mel ``(batch, frames, mels)`` -> ``(batch, frames // 8, d)``; needs at least 8 frames."""

    output = "sequence"
    n_prefix_tokens = 0

    def __init__(self, n_mels: int = 64, d: int = 2048) -> None:
        super().__init__()
        if n_mels < 8:
            raise ConfigError(f"features.n_mels: BYOL-A pools mels by 8, needs 8 or more (got {n_mels})")
        layers: list[nn.Module] = []
        for i in range(3):
            layers += [
                nn.Conv2d(1 if i == 0 else CHANNELS, CHANNELS, 3, stride=1, padding=1),
                nn.BatchNorm2d(CHANNELS),
                nn.ReLU(),
                nn.MaxPool2d(2, stride=2),
            ]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Sequential(
            nn.Linear(CHANNELS * (n_mels // 8), d),
            nn.ReLU(),
            nn.Dropout(p=0.3),
            nn.Linear(d, d),
            nn.ReLU(),
        )
        self.n_mels = n_mels
        self.out_dim = d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x.transpose(1, 2).unsqueeze(1))  # (batch, ch, mel, time)
        x = x.permute(0, 3, 2, 1)  # (batch, time, mel, ch): each frame's vector is mel-major, ch-minor
        batch, frames, mels, channels = x.shape
        return self.fc(x.reshape(batch, frames, mels * channels))


def build_backbone(cfg: ByolaConfig, n_mels: int, frames: int) -> nn.Module:
    """Random init works at any ``n_mels >= 8``; the official weights only at 64."""
    return AudioNTT2020(n_mels=n_mels, d=cfg.dim)


BYOLA_LAYERS = 5  # conv1, conv2, conv3, fc1, fc2 (the embedding), as AudioNTT2020Task6X counts them


def byola_layer_frames(encoder: AudioNTT2020, x: torch.Tensor, layers: list[int]) -> dict[int, torch.Tensor]:
    """Frame-wise features of the chosen layers (1-based), as BYOL-A's own layered encoder forms them.

    nttcslab/byol-a ``byol_a/models.py`` ``AudioNTT2020Task6X.forward(layered=True)``: layers 1-3 are
    the conv blocks' outputs (after max pooling), each frame's channel x mel values flattened
    channel-major and brought to the final frame count ``frames // 8`` by averaging adjoining
    frames (an odd count first averages its last two frames into one); layer 4 is ``fc.0`` + ReLU,
    layer 5 the whole ``fc`` (the embedding's frames); pooled by max + mean over time as
    ``AudioNTT2020.forward`` pools (eval-audio-repr ``config/byola.yaml``: ``mean_max``). Unlike the
    official code, conv features shorter than ``d`` are not zero-padded to ``d`` (constant columns
    carry nothing). Returns {layer: (batch, frames // 8, dim)}, and under key 0 what ``encoder(x)``
    returns (layer 5's frames); log-mel ``x`` is (batch, frames, mels), already normalised.
    """
    target = x.shape[1] // 8
    h = x.transpose(1, 2).unsqueeze(1)  # (batch, 1, mel, time)
    out: dict[int, torch.Tensor] = {}
    for block in range(3):
        h = encoder.features[4 * block : 4 * block + 4](h)
        if block + 1 in layers:
            batch, channels, mels, frames = h.shape
            out[block + 1] = _halve_to(h.permute(0, 3, 1, 2).reshape(batch, frames, channels * mels), target)
    seq = h.permute(0, 3, 2, 1).flatten(2)  # (batch, time, mel * ch), as ``forward``
    fc1 = encoder.fc[:2](seq)
    if 4 in layers:
        out[4] = fc1
    out[0] = encoder.fc[2:](fc1)
    if 5 in layers:
        out[5] = out[0]
    return out


def _halve_to(v: torch.Tensor, target: int) -> torch.Tensor:
    """Average adjoining frames until ``target`` remain (Task6X's ``reshape_conv_feature``)."""
    while v.shape[1] > target:
        if v.shape[1] % 2 == 1:
            v = torch.cat([v[:, :-2], v[:, -2:].mean(1, keepdim=True)], dim=1)
        v = v.reshape(v.shape[0], v.shape[1] // 2, 2, v.shape[2]).mean(2)
    return v


def _explain_fc0(key: str, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor | None:
    """Not an adapter: turns the one telling shape mismatch into a clear error (mels or dim)."""
    if key != f"{PREFIX}fc.0.weight" or src.ndim != 2 or dst.ndim != 2:
        return None
    ckpt_dim, ckpt_mels = src.shape[0], src.shape[1] // CHANNELS * 8
    model_dim, model_mels = dst.shape[0], dst.shape[1] // CHANNELS * 8
    problems = []
    if ckpt_mels != model_mels:
        problems.append(
            f"it was trained on {ckpt_mels} mel bins, this model has {model_mels} (set features.n_mels: "
            f"{ckpt_mels}, e.g. features: byola_16k_64)"
        )
    if ckpt_dim != model_dim:
        problems.append(f"its dim is {ckpt_dim}, this model's is {model_dim} (set model.dim: {ckpt_dim})")
    raise ConfigError("BYOL-A checkpoint does not fit: " + "; ".join(problems))


def convert_byola(state: dict[str, torch.Tensor]) -> Converted:
    """Official BYOL-A encoder state dict (``features.*``, ``fc.*``) -> ``backbone.*``.

    Keys with a leading path (``module.``, ``encoder.``) are accepted as the official loader does:
    everything before ``features.``/``fc.`` is cut. Other keys are ignored; two keys that would
    land on the same name (e.g. online and target networks of a training checkpoint) are refused.
    """
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    ignored: list[str] = []
    for key, value in state.items():
        match = _OWN_KEY.search(key)
        if match is None:
            ignored.append(key)
            continue
        ours = PREFIX + match.group(1)
        if ours in out:
            raise ConfigError(
                f"BYOL-A checkpoint: {origin[ours]!r} and {key!r} both hold {match.group(1)}; "
                "save the encoder's own state dict (model.state_dict()) and load that"
            )
        out[ours], origin[ours] = value, key
    if not out:
        raise ConfigError("BYOL-A checkpoint: no features.* or fc.* keys; not an AudioNTT2020 state dict")
    return Converted(state=out, ignored=ignored, adapters=[_explain_fc0])


CONVERTERS: dict[str, Converter] = {"byola": convert_byola}


_BYOLA_URL = (  # every URL is pinned to one commit
    "https://github.com/nttcslab/byol-a/raw/3e65c9283498d06915e6dbcff3445307d8d3e930/pretrained_weights/"
    "AudioNTT2020-BYOLA-64x96d{d}.pth"
)
_BYOLA_LICENSE = "NTT-eval"
_BYOLA_NOTE = (
    "BYOL-A (Niizumi et al. 2021), AudioSet, self-supervised; github.com/nttcslab/byol-a "
    "pretrained_weights/. The repository's LICENSE is NTT's 'Software license agreement for "
    "evaluation': internal testing and evaluation of the paper's method only, no redistribution. "
    "Plain state dict: features.{0,1,4,5,8,9}.*, fc.{0,3}.*."
)

_UNKNOWN_BLOB = (
    "Git blob {} at nttcslab/byol-a@3e65c92 (the URL is pinned to that commit); size and hashes unknown, "
    "as the mirror used lacks that blob: the SHA-256 of the first download is recorded (trust on first use)."
)
CHECKPOINTS = tuple(
    Checkpoint(
        name=f"byola{d}",
        url=_BYOLA_URL.format(d=d),
        filename=f"AudioNTT2020-BYOLA-64x96d{d}.pth",
        size=size,
        sha256=sha256,
        md5=md5,
        license=_BYOLA_LICENSE,
        layout="byola",
        features="byola_16k_64",
        model=f"byola{d}",
        note=f"BYOL-A AudioNTT2020 encoder, {d}-d embedding. {extra} {_BYOLA_NOTE}",
    )
    for d, size, sha256, md5, extra in (
        (
            512,
            2_410_576,
            "6cc64226318494f06ef41d7e5810be7d37abfd6490da45abdab48f188c5332e2",
            "2fb4b0beda4c7fc900e41cac58a796ce",
            "Size and hashes computed from git blob 314a35a5 at nttcslab/byol-a@3e65c92 "
            "(the URL is pinned to that commit).",
        ),
        (1024, None, None, None, _UNKNOWN_BLOB.format("1c04492d54707e53f04fb664ec6bf3ec655d47f0")),
        (2048, None, None, None, _UNKNOWN_BLOB.format("dd93cab283451ad67baff974933aa122d4a8fa24")),
    )
)


# default layer: 5, the BYOL-A embedding's frames; three 2x2 max poolings need 8 input frames
LAYERS = Layers(lambda cfg: BYOLA_LAYERS, lambda cfg: [str(BYOLA_LAYERS)], byola_layer_frames, "mean+max")
FAMILY = Family(ByolaConfig, build_backbone, CONVERTERS, None, CHECKPOINTS, LAYERS, lambda b: 8)
