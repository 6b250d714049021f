"""aisfx: our front-end and our CNN with the real shipped weights give what the aisfx package gives.

Fixture ``tests/golden/aisfx_real.npz`` comes from ``tools/golden/aisfx.py``, which runs the PyPI
package aisfx 0.1.2 itself (librosa 0.9.2 front-end, ``spectrogram_normalize``, ``load_bestModel``
with the wheel's ``models/checkpoint.pth``, ``model_get_embedding``, eval mode) on two seeded
2.31 s clips at 44.1 kHz (101900 samples, not a multiple of the 1024 hop: 100 frames, one
embedding block). Here the same waves go through ``features: aisfx_44k_96`` (``LogMel``, via
``compute_logmel`` as ``prepare`` uses it, and batched) and ``model: aisfx`` with ``pretrained: aisfx`` (the
real weights from the installed wheel, through ``load_pretrained``), embedding = the head's max
over time of the backbone's frequency-averaged sequence.

Tolerances, from measurements:

- log-mel (range 0 .. 9.5): atol 2e-4. Measured 9.7e-5, at one low-energy bin (value 0.14) of
  clip 1: our float32 ``torch.stft`` rounds relative to the frame's energy, where librosa's numpy
  FFT runs in float64 (against a float64 reference: ours 9.7e-5, the package's 1.4e-5). Reflect
  instead of zero padding of the centred STFT is off by 2.6 at the first and last frames; a wrong
  mel scale or filter norm by far more.
- embedding from the package's own log-mel (range 0 .. 7.2): atol 1e-5, rtol 1e-5. Measured 0.0:
  the same float32 convolutions, pooling and reductions in the same order; the margin is for torch
  versions and CPU kernels.
- embedding end to end, from our log-mel: atol 1e-4 (measured 1.5e-5, the log-mel rounding above
  carried through the network).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from audiotag.config.files import load_group, validate
from audiotag.config.schema import FeatureConfig
from audiotag.data.features import LogMel, compute_logmel
from audiotag.models.cnn14 import CnnConfig
from audiotag.models.registry import build_model, load_pretrained
from tests.golden_weights import load_fixture

AISFX_RANGE = 9.457798957824707  # aisfx's spectrogram_normalize: (x - 0) / (9.4578 - 0)

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("aisfx") is None, reason="aisfx is not installed (requirements-nodeps.lock)"
)


@pytest.fixture(scope="module")
def fixture() -> dict[str, np.ndarray]:
    return load_fixture("aisfx_real")


def aisfx_features() -> FeatureConfig:
    return validate(FeatureConfig, load_group("features", "aisfx_44k_96"), "aisfx_44k_96")


def aisfx_model(features: FeatureConfig):
    """Our aisfx tagger with the wheel's weights through ``load_pretrained``, and the load report
    (benchmarks/gpu_golden.py builds it the same way)."""
    cfg = validate(CnnConfig, {**load_group("model", "aisfx"), "pretrained": "aisfx"}, "aisfx")
    model = build_model(cfg, features.n_mels, 10, frames=100)
    return model, load_pretrained(model, cfg, features)


@pytest.fixture(scope="module")
def features() -> FeatureConfig:
    return aisfx_features()


@pytest.fixture(scope="module")
def ours(features: FeatureConfig):
    model, report = aisfx_model(features)
    assert report is not None and set(report.loaded) == {
        k for k in model.state_dict() if k.startswith("backbone.")
    }
    assert all(k.startswith("head.") for k in report.missing)
    return model.eval()


def embed(model, logmel: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        x = (torch.from_numpy(logmel) - model.norm_mean) / model.norm_std
        return model.head.embedding(model.backbone(x))


def test_frontend_matches_the_packages_librosa_logmel(fixture, features: FeatureConfig) -> None:
    assert int(fixture["sample_rate"]) == features.sample_rate
    waves = fixture["wave"]
    assert waves.shape[1] % features.hop_length != 0
    logmel = np.stack([compute_logmel(w, features) for w in waves])
    assert logmel.shape == fixture["logmel"].shape == (2, 100, 96)
    np.testing.assert_allclose(logmel, fixture["logmel"], rtol=0, atol=2e-4)
    with torch.no_grad():  # the batched module too (cache: wave, log-mel per batch on the device)
        batched = LogMel(features)(torch.from_numpy(waves)).numpy()
    np.testing.assert_allclose(batched, fixture["logmel"], rtol=0, atol=2e-4)
    np.testing.assert_allclose(
        fixture["logmel_scaled"], fixture["logmel"] / AISFX_RANGE, rtol=1e-6, atol=1e-7
    )
    # the edges are where zero padding matters: reflect padding is far off there
    reflect = compute_logmel(waves[0], features.model_copy(update={"center_pad": "reflect"}))
    assert np.abs(reflect[0] - fixture["logmel"][0, 0]).max() > 0.1


def test_real_weights_give_the_packages_embedding(fixture, ours) -> None:
    """Input scaling (1 / 9.4578), the four blocks, mean over frequency and max over time."""
    torch.testing.assert_close(
        embed(ours, fixture["logmel"]), torch.from_numpy(fixture["embedding"]), rtol=1e-5, atol=1e-5
    )


def test_end_to_end_from_the_wave(fixture, features: FeatureConfig, ours) -> None:
    logmel = np.stack([compute_logmel(w, features) for w in fixture["wave"]])
    torch.testing.assert_close(embed(ours, logmel), torch.from_numpy(fixture["embedding"]), rtol=0, atol=1e-4)


def test_no_dropout_inside_the_backbone(fixture, ours) -> None:
    """aisfx's EmbeddingNet has no dropout: with BatchNorm frozen, training mode changes nothing."""
    backbone = ours.backbone
    x = torch.from_numpy(fixture["logmel_scaled"])
    try:
        backbone.train()
        for module in backbone.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eval()
        with torch.no_grad():
            train_seq = backbone(x)
    finally:
        backbone.eval()
    with torch.no_grad():
        torch.testing.assert_close(train_seq, backbone(x), rtol=0, atol=0)
