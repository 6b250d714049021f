"""An audiotag model behind the HEAR API: the Out side of the HEAR bridge (``audiotag.hear`` loads it).

:class:`HearExport` wraps a frozen :class:`~audiotag.models.representation.Representation` (a
weights-table backbone, an encoder file, or a fine-tuned run's fold) and its layers (the family's
defaults, as ``embed`` fuses them):

- **timestamp embeddings**: the layers' frame-level features (``Layers.frames``, the frames that
  ``embed`` pools; for the layer ``embedding``, the backbone's output frames that the head pools),
  concatenated per frame, computed on the whole sound in one pass (wrap-padded to the backbone's
  total time stride if shorter). Frame ``i`` of a backbone whose total time stride is ``P`` log-mel
  frames covers input frames ``iP .. iP + P - 1``; its timestamp is their middle, in milliseconds.
  A backbone whose layers have no time axis (AST's class tokens) gives one frame, at the middle.
- **scene embeddings**: exactly ``embed``'s clip vectors: the sound in windows of ``window_seconds``
  (one window when it fits; else every ``hop_fraction`` of a window, the last ending the sound), each
  window's layers pooled over time and concatenated, the windows averaged.

The sounds are resampled to the front-end's rate when that is not one of HEAR's (a 32 kHz PANNs
model declares 44100 Hz and resamples each batch to 32 kHz on its device). Nothing depends on the
other sounds of a batch (eval mode throughout).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from audiotag.data.dataset import window_starts
from audiotag.data.features import make_extractor
from audiotag.data.resample import resample
from audiotag.models.family import EMBEDDING
from audiotag.models.hear_in import HEAR_RATES
from audiotag.models.representation import Representation


def hear_rate(rate: int) -> int:
    """The HEAR sample rate a model of front-end rate ``rate`` declares: its own, else the next above."""
    above = [r for r in HEAR_RATES if r >= rate]
    return rate if rate in HEAR_RATES else (above[0] if above else HEAR_RATES[-1])


class HearExport(nn.Module):
    """A frozen tagger with HEAR's attributes (``sample_rate``, ``scene_embedding_size``,
    ``timestamp_embedding_size``); ``.to(device)`` moves it like any module."""

    def __init__(
        self, rep: Representation, layers: list[str], window_seconds: float = 10.0, hop_fraction: float = 0.5
    ) -> None:
        super().__init__()
        self.rep = rep
        self.tagger = rep.tagger  # registered, so that .to() moves it
        self.extractor = make_extractor(rep.features)
        self.layers = list(layers)
        self.model_rate = int(rep.features.sample_rate)
        self.sample_rate = hear_rate(self.model_rate)
        fps = rep.features.frames_per_second
        self.window = max(1, round(window_seconds * fps))
        self.hop = max(1, round(self.window * hop_fraction))
        self.batch_size = 16
        self.eval()
        probe = torch.zeros(1, self.sample_rate)
        self.scene_embedding_size = int(self.scene(probe).shape[1])
        self.timestamp_embedding_size = int(self.timestamps(probe)[0].shape[2])

    def train(self, mode: bool = True) -> HearExport:
        return super().train(False)  # frozen: BatchNorm keeps its statistics, dropout stays off

    def logmel(self, audio: torch.Tensor) -> torch.Tensor:
        """(n_sounds, frames, mels) float32, on the model's device."""
        self.rep.device = next(self.tagger.parameters()).device
        audio = resample(audio.to(self.rep.device).float(), self.sample_rate, self.model_rate)
        with torch.no_grad():
            return self.extractor(audio)

    def scene(self, audio: torch.Tensor) -> torch.Tensor:
        """(n_sounds, scene_embedding_size): ``embed``'s vectors of each sound."""
        x = self.logmel(audio)
        n, frames = x.shape[:2]
        if frames <= self.window:
            windows = _wrap(x, max(frames, self.rep.min_frames))[:, None]
        else:
            starts = window_starts(frames, self.window, self.hop)
            windows = torch.stack([x[:, s : s + self.window] for s in starts], dim=1)
        flat = windows.flatten(0, 1)  # (n_sounds * windows, window frames, mels)
        parts = []
        for start in range(0, flat.shape[0], self.batch_size):
            out = self.rep.encode(flat[start : start + self.batch_size], self.layers)
            parts.append(torch.cat([torch.from_numpy(out[name]) for name in self.layers], dim=1))
        vectors = torch.cat(parts).view(n, windows.shape[1], -1)
        return vectors.mean(dim=1).to(x.device)

    @torch.no_grad()
    def frames(self, x: torch.Tensor) -> torch.Tensor:
        """(n_sounds, frames', dim): the layers' frame-level features of normalised log-mel ``x``."""
        tagger, rule = self.tagger, self.rep.family.layers
        numbered = [int(name) for name in self.layers if name != EMBEDDING]
        found = rule.frames(tagger.backbone, x, numbered) if numbered and rule is not None else {}
        parts = []
        for name in self.layers:
            if name != EMBEDDING:
                parts.append(found[int(name)])
                continue
            out = found.get(0)
            out = tagger.backbone(x) if out is None else out
            tokens = getattr(tagger.backbone, "output", "sequence") == "tokens"
            parts.append(tagger.head.embedding(out)[:, None] if tokens else out)  # type: ignore[operator]
        length = min(p.shape[1] for p in parts)
        return torch.cat([p[:, :length] for p in parts], dim=2)

    def timestamps(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeddings (n_sounds, n_timestamps, dim) float32, timestamps (n_sounds, n_timestamps) ms)."""
        x = self.logmel(audio)
        frames = x.shape[1]
        x = _wrap(x, max(frames, self.rep.min_frames))
        if self.tagger.norm_mean != 0.0 or self.tagger.norm_std != 1.0:
            x = (x - self.tagger.norm_mean) / self.tagger.norm_std
        emb = self.frames(x).float()
        n_out = emb.shape[1]
        ms_per_frame = 1000.0 / self.rep.features.frames_per_second
        if n_out == 1:
            stamps = torch.tensor([500.0 * audio.shape[1] / self.sample_rate])
        else:
            stride = self.rep.min_frames
            stamps = (torch.arange(n_out, dtype=torch.float64) * stride + (stride - 1) / 2) * ms_per_frame
        stamps = stamps.float().to(emb.device).expand(emb.shape[0], n_out).contiguous()
        return emb, stamps


def _wrap(x: torch.Tensor, length: int) -> torch.Tensor:
    """(n, frames, mels) wrap-padded (repeated from the start) to ``length`` frames."""
    if x.shape[1] >= length:
        return x
    return x.repeat(1, math.ceil(length / x.shape[1]), 1)[:, :length]


def get_scene_embeddings(audio: torch.Tensor, model: HearExport) -> torch.Tensor:
    """HEAR: (n_sounds, scene_embedding_size) float32 for float32 audio (n_sounds, n_samples)."""
    return model.scene(audio).float()


def get_timestamp_embeddings(audio: torch.Tensor, model: HearExport) -> tuple[torch.Tensor, torch.Tensor]:
    """HEAR: (embeddings (n_sounds, n_timestamps, timestamp_embedding_size), timestamps in ms)."""
    return model.timestamps(audio)
