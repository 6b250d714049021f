"""BYOL-A AudioNTT2020: checkpoint layout, dims and errors (outputs vs official: test_golden_byola)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from audiotag.core.errors import ConfigError
from audiotag.models.byola import CONVERTERS, AudioNTT2020, ByolaConfig, build_backbone, convert_byola
from audiotag.models.heads import LinearHead
from audiotag.models.loading import load_converted
from audiotag.models.tagger import Tagger, build_head

N_CLASSES = 5


def official_checkpoint(tmp_path: Path, d: int = 512, n_mels: int = 64) -> tuple[AudioNTT2020, Path]:
    """An encoder saved as the official file is: its plain state dict (features.*, fc.*)."""
    torch.manual_seed(0)
    encoder = AudioNTT2020(n_mels, d)
    path = tmp_path / f"AudioNTT2020-BYOLA-64x96d{d}.pth"
    torch.save(encoder.state_dict(), path)
    return encoder.eval(), path


def tagger_for(cfg: ByolaConfig, n_mels: int = 64) -> Tagger:
    backbone = build_backbone(cfg, n_mels, 96)
    return Tagger(backbone, build_head(cfg, backbone, N_CLASSES))


def test_official_layout_loads_completely(tmp_path: Path) -> None:
    """Every official key lands; the outputs are checked against the official code in test_golden_byola."""
    _, path = official_checkpoint(tmp_path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert "features.1.running_mean" in state and "fc.3.weight" in state
    tagger = tagger_for(ByolaConfig(dim=512)).eval()
    report = load_converted(tagger, CONVERTERS["byola"](state), path.name)
    assert len(report.loaded) == len(state) and not report.adapted and not report.ignored
    assert sorted(report.missing) == ["head.fc.bias", "head.fc.weight"]
    assert isinstance(tagger.head, LinearHead) and tagger.head.pool == "mean+max"
    assert tagger.head.fc1 is None


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
