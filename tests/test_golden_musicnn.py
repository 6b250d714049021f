"""musicnn: our front-end and our network with the wheel's real weights give what musicnn gives.

Fixture ``tests/golden/musicnn_real.npz`` comes from ``tools/golden/musicnn_package.py``, which
runs the PyPI package musicnn 0.1.0 with TensorFlow 2.21 (tf_keras): ``extractor.batch_data``
(librosa 0.11 mel, float16 cast, ``log10(10000 x + 1)``) and ``models.define_model`` restored from
the wheel's checkpoints, on three seeded 187-frame clips (a chord, a chirp with bursts, noise).
Here the same waves go through ``features: musicnn_16k_96`` and ``model: musicnn`` with
``pretrained: musicnn_mtt`` / ``musicnn_msd`` (read from the installed wheel without TensorFlow).

Tolerances, from measurements:

- log-mel: both are float16 values (range 0 .. 4.14); ours equals the package's on all but
  0.009% of values, which differ by one float16 step (measured max 1.95e-3): librosa's float32
  STFT and ours round differently, and the float16 cast then lands on the neighbouring step.
  Without the float16 steps (plain float32 log10) 99.96% of the values differ (up to 1.4e-3).
- network from the package's log-mel: taggram atol 1e-5 (measured 8e-7), features rtol 1e-5 +
  atol 5e-4 on values up to 64 (measured 1.5e-4 at a cnn3 value of ~35, 4e-6 on penultimate; on an
  AMD EPYC with AVX2 only 1.6e-4 at a cnn3 value of 0.71 and 1.8e-4 on penultimate):
  float32 convolutions summed in another order. torch's BatchNorm epsilon (1e-5 instead of TF's
  1e-3) moves the taggram by more than 1e-3 (test_batchnorm_epsilon_is_tensorflows).
- end to end from the wave: taggram atol 2e-4 (measured 4.9e-6; MSD 2.6e-5), the one-step log-mel
  differences carried through the network.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from audiotag.config.files import load_group, validate
from audiotag.config.schema import FeatureConfig
from audiotag.data.features import compute_logmel
from audiotag.models.musicnn import MusicnnConfig
from audiotag.models.registry import build_model, load_pretrained
from tests.golden_weights import load_fixture

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("musicnn") is None,
    reason="musicnn is not installed: pip install --no-deps musicnn==0.1.0 (requirements-nodeps.lock)",
)
WEIGHTS = {"MTT_musicnn": "musicnn_mtt", "MSD_musicnn": "musicnn_msd"}


@pytest.fixture(scope="module")
def fixture() -> dict[str, np.ndarray]:
    return load_fixture("musicnn_real")


@pytest.fixture(scope="module")
def features() -> FeatureConfig:
    return validate(FeatureConfig, load_group("features", "musicnn_16k_96"), "musicnn_16k_96")


def musicnn_model(weights: str, features: FeatureConfig, **settings):
    cfg = validate(
        MusicnnConfig, {**load_group("model", "musicnn"), "pretrained": weights, **settings}, weights
    )
    model = build_model(cfg, features.n_mels, 50, frames=187)
    report = load_pretrained(model, cfg, features)
    assert (
        report is not None and not report.missing and sorted(report.ignored) == ["beta1_power", "beta2_power"]
    )
    return model.eval()


@pytest.fixture(scope="module")
def models(features: FeatureConfig):
    return {name: musicnn_model(weights, features) for name, weights in WEIGHTS.items()}


def run(model, logmel: np.ndarray) -> dict[str, np.ndarray]:
    with torch.no_grad():
        x = torch.from_numpy(np.asarray(logmel, np.float32))
        out = {k: v.numpy() for k, v in model.backbone.features(x).items()}
        out["taggram"] = torch.sigmoid(model(x)).numpy()
    return out


def test_frontend_matches_the_packages_float16_logmel(fixture, features: FeatureConfig) -> None:
    ours = np.stack([compute_logmel(w, features) for w in fixture["wave"]])
    theirs = fixture["logmel"].astype(np.float32)
    assert ours.shape == theirs.shape == (3, 187, 96)
    step = np.abs(ours - theirs)
    assert (step > 0).mean() < 1e-3
    assert step.max() <= 2e-3
    # a known deviation: the same scale without the float16 steps is off on most values
    plain = np.stack(
        [compute_logmel(w, features.model_copy(update={"float16": False})) for w in fixture["wave"]]
    )
    assert (np.abs(plain - theirs) > 0).mean() > 0.3


@pytest.mark.parametrize("model_name", list(WEIGHTS))
def test_real_weights_give_the_packages_outputs(fixture, models, model_name: str) -> None:
    out = run(models[model_name], fixture["logmel"])
    np.testing.assert_allclose(out["taggram"], fixture[f"{model_name}/taggram"], rtol=0, atol=1e-5)
    for name in ("penultimate", "max_pool", "mean_pool"):
        np.testing.assert_allclose(out[name], fixture[f"{model_name}/{name}"], rtol=1e-5, atol=5e-4)
    if f"{model_name}/cnn3" in fixture:
        np.testing.assert_allclose(out["cnn3"], fixture[f"{model_name}/cnn3"], rtol=1e-5, atol=5e-4)


def test_end_to_end_from_the_wave(fixture, features: FeatureConfig, models) -> None:
    logmel = np.stack([compute_logmel(w, features) for w in fixture["wave"]])
    taggram = run(models["MTT_musicnn"], logmel)["taggram"]
    np.testing.assert_allclose(taggram, fixture["MTT_musicnn/taggram"], rtol=0, atol=2e-4)


def test_batchnorm_epsilon_is_tensorflows(fixture, models) -> None:
    """A known deviation is caught: torch's default epsilon instead of TF's 1e-3."""
    model = models["MTT_musicnn"]
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    try:
        for module in norms:
            module.eps = 1e-5
        off = np.abs(run(model, fixture["logmel"][:1])["taggram"] - fixture["MTT_musicnn/taggram"][:1]).max()
    finally:
        for module in norms:
            module.eps = 1e-3
    assert off > 1e-3


def test_embed_layers_are_the_packages_features(fixture, features: FeatureConfig) -> None:
    """``embed``/the probe: layers 6 and 7 are musicnn's max_pool and mean_pool, the embedding its
    penultimate layer, layer 1 the timbral features max-pooled over time (the family's rule)."""
    from audiotag.models.representation import EmbeddingConfig, Representation, resolve_layers

    rep = Representation(EmbeddingConfig(weights="musicnn_mtt"), features)
    assert resolve_layers(rep.model_cfg, "default") == ["6", "7", "embedding"]
    out = rep.encode(torch.from_numpy(fixture["logmel"].astype(np.float32)), ["1", "6", "7", "embedding"])
    tol = {"rtol": 1e-5, "atol": 5e-4}
    np.testing.assert_allclose(out["6"], fixture["MTT_musicnn/max_pool"], **tol)
    np.testing.assert_allclose(out["7"], fixture["MTT_musicnn/mean_pool"], **tol)
    np.testing.assert_allclose(out["embedding"], fixture["MTT_musicnn/penultimate"], **tol)
    np.testing.assert_allclose(out["1"], fixture["MTT_musicnn/max_pool"][:, :408], **tol)
    assert rep.layer_dims(["2", "3"]) == {"2": 153, "3": 64}


def test_fine_tuning_builds_and_learns(fixture, features: FeatureConfig) -> None:
    """A new 5-class head on the pretrained network: one step changes the backbone too."""
    cfg = validate(MusicnnConfig, {**load_group("model", "musicnn"), "pretrained": "musicnn_mtt"}, "m")
    model = build_model(cfg, features.n_mels, 5, frames=187)
    report = load_pretrained(model, cfg, features)
    assert report is not None and [k.split()[0] for k in sorted(report.missing)] == [
        "head.fc.bias",
        "head.fc.weight",
    ]
    model.train()
    before = model.backbone.dense.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.from_numpy(fixture["logmel"][:, :48].astype(np.float32))  # short: a quick step
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), torch.eye(5)[:3])
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and not torch.equal(before, model.backbone.dense.weight)
