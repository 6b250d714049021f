"""EfficientAT against the official code (fschmid56/EfficientAT): fixtures by ``tools/golden/efficientat.py``.

``efficientat_frontend`` holds a seeded two-clip batch (0.5 s at 32 kHz, int16 samples) and the
official ``AugmentMelSTFT`` output for it (eval mode, normalised ``(x + 4.5) / 5``: 50 frames of 128
bins); ``efficientat_<mn04|mn10|mn40>`` the key list of a seeded checkpoint in the official layout
and the official outputs for that input: the pooled ``features`` (our ``embedding``), the logits, and
the outputs of blocks 5, 11 and 15 averaged over frequency. Here each checkpoint is rebuilt from its
key list, saved as the released ``.pt`` is (a plain state dict) and loaded through
``load_pretrained`` (converter, loader); our front-end (``configs/features/passt_32k_128.yaml``),
input norm, backbone and head then run on the same wave in eval mode.

Tolerances (max abs difference), measured on this machine (x86, torch 2.x CPU, 2 loaded cores):

- normalised log-mel ``FRONTEND_TOL = 1e-4``: measured 1.2e-7 over all bins (values -1.4..2.7).
  The official code multiplies the whole filterbank with the power spectrum, ours only the bins each
  run of filters touches, so the sums may round differently; the STFT is the same torch call and the
  Kaldi filters are computed in torchaudio's float32 order. The frame count (50, not the 51 of an
  STFT of the unshortened wave) must match exactly. The bound leaves room for other CPUs' MKL paths
  (AST's fixture saw up to 3e-3 in its quietest Kaldi bins; here the log floor 1e-5 keeps the
  quietest bins away from float32 rounding of tiny powers).
- embedding, logits and block outputs ``MODEL_TOL = 1e-4``: measured 6e-8 (mn04), 7.5e-8 (mn10),
  1.2e-7 (mn40), with our log-mel as input. Deviations of substance are far outside (the tests
  below): a periodic instead of a symmetric Hann window moves the input by 3.1e-2; MobileNetV3's
  hard sigmoid in the squeeze-excitation moves mn10's logits by 1.3e-3 (their magnitude with seeded
  weights is about 0.4).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from audiotag.config.files import load_group, read_yaml, validate
from audiotag.config.schema import FeatureConfig
from audiotag.data.features import make_extractor
from audiotag.models import efficientat
from audiotag.models.efficientat import EfficientAtConfig, block_frames
from audiotag.models.registry import build_model, load_pretrained
from audiotag.models.tagger import Tagger
from tests.golden_weights import fixture_state, load_fixture, max_diff

REPO = Path(__file__).resolve().parents[1]
# mn40 (68M parameters): ~20 s on 2 loaded cores, seeding and saving its weights included
MODELS = ["mn04", "mn10", pytest.param("mn40", marks=pytest.mark.slow)]
FRONTEND_TOL = 1e-4
MODEL_TOL = 1e-4


def features_cfg(**changes: object) -> FeatureConfig:
    return FeatureConfig(**{**read_yaml(REPO / "configs/features/passt_32k_128.yaml"), **changes})


def our_input(features: FeatureConfig | None = None) -> torch.Tensor:
    """Our normalised log-mel of the fixture's wave (batch, frames, mels)."""
    frontend = load_fixture("efficientat_frontend")
    features = features or features_cfg()
    assert features.sample_rate == int(frontend["sample_rate"])
    wave = torch.from_numpy(frontend["wave"].astype(np.float32) / 32768)
    with torch.no_grad():
        logmel = make_extractor(features)(wave)
    norm = validate(EfficientAtConfig, load_group("model", "mn10"), "mn10").input_norm
    return (logmel - norm.mean) / norm.std  # type: ignore[union-attr]


def our_tagger(name: str, folder: Path) -> Tagger:
    """Our Tagger from the fixture's seeded checkpoint, saved as the release's .pt and loaded by name."""
    fixture = load_fixture(f"efficientat_{name}")
    assert str(fixture["source"]).startswith("fschmid56/EfficientAT@")
    path = folder / f"{name}_as_seeded.pt"
    torch.save(fixture_state(fixture), path)
    cfg = validate(EfficientAtConfig, {**load_group("model", name), "pretrained": str(path)}, name)
    assert cfg.width == float(fixture["width"])
    model = build_model(cfg, 128, 527, 50)
    report = load_pretrained(model, cfg, features_cfg(), offline=True)
    assert report is not None and not report.missing and not report.adapted
    assert set(report.loaded) == set(model.state_dict())
    path.unlink()
    return model.eval()


def test_frontend_matches_official() -> None:
    official = load_fixture("efficientat_frontend")["model_input"]
    ours = our_input()
    assert ours.shape == official.shape == (2, 50, 128)  # pre-emphasis: one sample, one frame fewer
    assert max_diff(ours, official) < FRONTEND_TOL


def test_a_periodic_window_is_caught() -> None:
    """The known slip: torch.stft's usual periodic Hann instead of AugmentMelSTFT's symmetric one."""
    official = load_fixture("efficientat_frontend")["model_input"]
    assert max_diff(our_input(features_cfg(window="hann")), official) > 100 * FRONTEND_TOL


@pytest.mark.parametrize("name", MODELS)
def test_tagger_matches_official(name: str, tmp_path: Path) -> None:
    fixture = load_fixture(f"efficientat_{name}")
    model = our_tagger(name, tmp_path)
    x = our_input()
    with torch.no_grad():
        seq = model.backbone(x)
        embedding = model.head.embedding(seq)
        logits = model.head(seq)
        layers = block_frames(model.backbone, x, [5, 11, 15])
    assert max_diff(embedding, fixture["embedding"]) < MODEL_TOL
    assert max_diff(logits, fixture["output"]) < MODEL_TOL
    for block in (5, 11, 15):  # the official block output, at the last block's frame rate
        ratio = model.backbone.time_strides[-1] // model.backbone.time_strides[block - 1]
        official = torch.from_numpy(fixture[f"block{block}"])
        if ratio > 1:
            official = F.avg_pool1d(official, ratio, ratio, ceil_mode=True)
        assert max_diff(layers[block], official.transpose(1, 2).numpy()) < MODEL_TOL


def test_a_hard_sigmoid_squeeze_excitation_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The known slip: torchvision MobileNetV3's hard sigmoid where EfficientAT has a plain sigmoid."""
    fixture = load_fixture("efficientat_mn10")
    model = our_tagger("mn10", tmp_path)

    def hard(self: efficientat.SqueezeExcite, x: torch.Tensor) -> torch.Tensor:
        scale = F.hardsigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3))))))
        return x * scale[:, :, None, None]

    monkeypatch.setattr(efficientat.SqueezeExcite, "forward", hard)
    with torch.no_grad():
        logits = model(our_input())
    assert max_diff(logits, fixture["output"]) > 5 * MODEL_TOL
