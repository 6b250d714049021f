"""BYOL-A AudioNTT2020: an official-layout checkpoint loads and gives the official embedding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from audiotag.config import ByolaConfig
from audiotag.errors import ConfigError
from audiotag.models.byola import CONVERTERS, AudioNTT2020, build_backbone, convert_byola
from audiotag.models.heads import LinearHead, pool_time
from audiotag.models.loading import load_converted
from audiotag.models.tagger import Tagger, build_head

N_CLASSES = 5


class ReferenceEncoder(nn.Module):
    """Independent copy of the official module structure and forward (nttcslab/byol-a models.py)."""

    def __init__(self, n_mels: int, d: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 64, 3, stride=1, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2, stride=2),
            nn.Conv2d(64, 64, 3, stride=1, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2, stride=2),
            nn.Conv2d(64, 64, 3, stride=1, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2, stride=2),
        )
        self.fc = nn.Sequential(
            nn.Linear(64 * (n_mels // (2**3)), d), nn.ReLU(), nn.Dropout(p=0.3), nn.Linear(d, d), nn.ReLU()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (batch, 1, mel, time)
        x = self.features(x)
        x = x.permute(0, 3, 2, 1)
        b, t, d, c = x.shape
        x = self.fc(x.reshape((b, t, c * d)))
        return torch.max(x, dim=1)[0] + torch.mean(x, dim=1)


def official_checkpoint(tmp_path: Path, d: int = 512, n_mels: int = 64) -> tuple[ReferenceEncoder, Path]:
    """A reference encoder with non-trivial BatchNorm statistics, saved as a plain state dict."""
    torch.manual_seed(0)
    ref = ReferenceEncoder(n_mels, d)
    with torch.no_grad():
        for module in ref.features:
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
    path = tmp_path / f"AudioNTT2020-BYOLA-64x96d{d}.pth"
    torch.save(ref.state_dict(), path)
    return ref.eval(), path


def tagger_for(cfg: ByolaConfig, n_mels: int = 64) -> Tagger:
    backbone = build_backbone(cfg, n_mels, 96)
    return Tagger(backbone, build_head(cfg, backbone, N_CLASSES))


def test_official_layout_gives_the_official_embedding(tmp_path: Path) -> None:
    ref, path = official_checkpoint(tmp_path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert "features.1.running_mean" in state and "fc.3.weight" in state

    tagger = tagger_for(ByolaConfig(dim=512)).eval()
    report = load_converted(tagger, CONVERTERS["byola"](state), path.name)
    assert len(report.loaded) == len(state) and not report.adapted and not report.ignored
    assert sorted(report.missing) == ["head.fc.bias", "head.fc.weight"]
    assert isinstance(tagger.head, LinearHead) and tagger.head.pool == "mean+max"
    assert tagger.head.fc1 is None

    torch.manual_seed(1)
    for frames in (96, 203):
        x = torch.randn(3, frames, 64) * 2.0  # ours: (batch, frames, mels)
        with torch.no_grad():
            expected = ref(x.transpose(1, 2).unsqueeze(1))  # official: (batch, 1, mels, frames)
            seq = tagger.backbone(x)
            ours = pool_time(seq, tagger.head.pool)
        assert seq.shape == (3, frames // 8, 512)
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)

    # The check is sensitive to the axis order: flattening (ch, mel) instead of (mel, ch) differs.
    with torch.no_grad():
        maps = ref.features(x.transpose(1, 2).unsqueeze(1)).permute(0, 3, 1, 2)
        wrong = ref.fc(maps.reshape(*maps.shape[:2], -1))
    assert not torch.allclose(pool_time(wrong, "mean+max"), expected, atol=1e-3)


@pytest.mark.parametrize("dim", [512, 1024, 2048])
def test_output_dims(dim: int) -> None:
    tagger = tagger_for(ByolaConfig(dim=dim)).eval()
    assert tagger.backbone.out_dim == dim and tagger.backbone.output == "sequence"
    x = torch.randn(2, 100, 64)
    with torch.no_grad():
        assert tagger.backbone(x).shape == (2, 12, dim)
        assert tagger(x).shape == (2, N_CLASSES)


def test_random_init_at_any_mels_but_official_weights_need_64(tmp_path: Path) -> None:
    _, path = official_checkpoint(tmp_path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    tagger = tagger_for(ByolaConfig(dim=512), n_mels=128)
    assert tagger(torch.randn(2, 48, 128)).shape == (2, N_CLASSES)
    with pytest.raises(ConfigError, match="trained on 64 mel bins, this model has 128"):
        load_converted(tagger, convert_byola(state), path.name)
    with pytest.raises(ConfigError, match=r"its dim is 512, this model's is 2048 \(set model\.dim: 512\)"):
        load_converted(tagger_for(ByolaConfig(dim=2048)), convert_byola(state), path.name)


def test_prefixed_keys_and_ambiguous_checkpoints() -> None:
    state = AudioNTT2020(64, 512).state_dict()
    prefixed = {f"module.encoder.{k}": v for k, v in state.items()}
    converted = convert_byola(prefixed | {"step": torch.tensor(3)})
    assert set(converted.state) == {f"backbone.{k}" for k in state}
    assert converted.ignored == ["step"]
    load_converted(tagger_for(ByolaConfig(dim=512)), converted, "prefixed")

    both = {f"online.{k}": v for k, v in state.items()} | {f"target.{k}": v for k, v in state.items()}
    with pytest.raises(ConfigError, match=r"both hold features\.0\.weight"):
        convert_byola(both)
    with pytest.raises(ConfigError, match="not an AudioNTT2020 state dict"):
        convert_byola({"conv.weight": torch.zeros(1)})


def test_too_few_mels_refused() -> None:
    with pytest.raises(ConfigError, match="n_mels"):
        build_backbone(ByolaConfig(), 4, 96)
