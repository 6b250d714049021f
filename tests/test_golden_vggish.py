"""VGGish: our front-end, network and PCA post-processing give what the official code gives.

Fixture ``tests/golden/vggish_official.npz`` comes from ``tools/golden/vggish_official.py``: the
official ``research/audioset/vggish`` code (tensorflow/models 09093db7) run with TensorFlow 2.21 on
seeded weights, saved by TF as a V1 checkpoint and restored from it by the official
``load_vggish_slim_checkpoint``; our V1 reader was checked to read that 288 MB file exactly (too
big to commit; the reader's own tests use tiny TF-written V1 files, tests/test_tf_checkpoint.py).
Here the same weights are regenerated from the seed (``seeded_weights``, as the script draws them),
written under the official checkpoint's variable names to an .npz, and loaded as ``pretrained:
<file>``: the real path (read_state_dict, detect_layout, the tf_vggish converter, load_converted).

Tolerances, from measurements:

- log-mel (``features: vggish_16k_64``) against ``waveform_to_examples`` (float64 numpy): max abs
  difference 2e-4 on values -4.6 .. 3.8 (float32 STFT); atol 1e-3. Power instead of magnitude,
  Slaney instead of HTK/mel-linear triangles, and a centred STFT each move values by > 0.1.
- network from the official examples: embedding (values up to 26) rtol 1e-4 + atol 1e-3 (measured
  3e-5), fc1_2 the same; float32 sums in another order.
- end to end from the wave: embedding atol 2e-2 (measured 4e-4: the log-mel differences carried
  through eight layers).
- PCA + quantisation: equal on all but boundary cases (a value within float32 rounding of a
  quantisation step): at most one step off, on < 2% of values (measured 0).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from audiotag.config.files import load_group, validate
from audiotag.config.schema import FeatureConfig
from audiotag.core.errors import ConfigError, DataError
from audiotag.data.features import compute_logmel
from audiotag.models.loading import Converted
from audiotag.models.registry import build_model, load_pretrained
from audiotag.models.vggish import VggishBackbone, VggishConfig
from tests.golden_weights import load_fixture
from tests.vggish_seeded import SEED, seeded_weights


@pytest.fixture(scope="module")
def fixture() -> dict[str, np.ndarray]:
    return load_fixture("vggish_official")


@pytest.fixture(scope="module")
def features() -> FeatureConfig:
    return validate(FeatureConfig, load_group("features", "vggish_16k_64"), "vggish_16k_64")


@pytest.fixture(scope="module")
def weights() -> dict[str, np.ndarray]:
    return seeded_weights(SEED)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, fixture, weights) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("vggish")
    np.savez(folder / "vggish_seeded.npz", **weights)
    np.savez(
        folder / "pca.npz", pca_means=fixture["pca_means"], pca_eigen_vectors=fixture["pca_eigen_vectors"]
    )
    return {"weights": folder / "vggish_seeded.npz", "pca": folder / "pca.npz"}


@pytest.fixture(scope="module")
def loaded(files, features):
    """The one full-size model of this module (72 M parameters), loaded through the real path,
    with a new 5-class head: (model, load report)."""
    raw = {**load_group("model", "vggish"), "pretrained": str(files["weights"])}
    cfg = validate(VggishConfig, raw, "vggish")
    model = build_model(cfg, features.n_mels, 5, frames=96)
    report = load_pretrained(model, cfg, features)
    return model.eval(), report


@pytest.fixture(scope="module")
def model(loaded):
    return loaded[0]


def variant(model, **settings) -> torch.nn.Module:
    """The loaded backbone's weights (shared, not copied) under other settings, built without
    initialising 72 M parameters first; the PCA parameters come as load_pretrained adds them."""
    cfg = model.backbone.cfg.model_copy(update=settings)
    with torch.device("meta"):
        backbone = VggishBackbone(cfg, 64)
    state = {f"backbone.{k}": v for k, v in model.backbone.state_dict().items()}
    state = backbone.prepare_checkpoint(Converted(state)).state
    backbone.load_state_dict({k.removeprefix("backbone."): v for k, v in state.items()}, assign=True)
    return backbone.eval()


def waves(fixture) -> list[np.ndarray]:
    ends = np.cumsum(fixture["lengths"])
    return [w.astype(np.float32) / 32768 for w in np.split(fixture["wave"], ends[:-1])]


def our_examples(fixture, features: FeatureConfig) -> np.ndarray:
    """Our log-mel of each clip, cut into whole 96-frame examples as waveform_to_examples does."""
    out = []
    for wave in waves(fixture):
        logmel = compute_logmel(wave, features)
        n = logmel.shape[0] // 96
        out.append(logmel[: n * 96].reshape(n, 96, -1))
    return np.concatenate(out)


def test_frontend_matches_mel_features(fixture, features: FeatureConfig) -> None:
    theirs = fixture["examples"]
    ours = our_examples(fixture, features)
    assert ours.shape == theirs.shape == (5, 96, 64)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-3)
    # the frame count of mel_features.frame: 1 + (samples - 400) // 160, here 218, 128, 198
    assert [compute_logmel(w, features).shape[0] for w in waves(fixture)] == [218, 128, 198]


@pytest.mark.parametrize(
    "deviation",
    [
        {"power": 2},
        {"mel_scale": "slaney", "mel_slopes": "hz"},
        {"mel_slopes": "hz"},
        {"center_pad": "reflect"},
    ],
)
def test_a_frontend_deviation_is_caught(fixture, features: FeatureConfig, deviation) -> None:
    """Known deviations, each past the tolerance (1e-3) by 10x at least: the power spectrum, Slaney
    mels, Hz-linear triangles on the HTK scale (the smallest: measured 1.1e-2), a centred STFT."""
    wrong = features.model_copy(update=deviation)
    wave = waves(fixture)[0]
    ours = compute_logmel(wave, wrong)[:96]
    assert np.abs(ours - fixture["examples"][0]).max() > 1e-2


def run(model, examples: np.ndarray) -> dict[str, np.ndarray]:
    """Each official example (n, 96, 64) through our network on its own."""
    with torch.no_grad():
        feats = model.backbone.features(torch.from_numpy(np.ascontiguousarray(examples)))
    return {k: v.numpy() for k, v in feats.items()}


def test_network_matches_the_official_graph(fixture, model) -> None:
    out = run(model, fixture["examples"])
    np.testing.assert_allclose(out["fc2"], fixture["embedding"], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(out["fc1_2"], fixture["fc1_2"], rtol=1e-4, atol=1e-3)


def test_flatten_order_is_tensorflows(fixture, model) -> None:
    """A known deviation is caught: fc1_1 read as if the conv output were flattened channels first
    (torch's NCHW order) instead of slim.flatten's (frames, bands, channels)."""
    weight = model.backbone.fc1_1.weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():  # columns in HWC order -> the same columns taken in CHW order
            weight.copy_(saved.reshape(4096, 6, 4, 512).permute(0, 3, 1, 2).reshape(4096, -1))
        off = np.abs(run(model, fixture["examples"][:1])["fc2"] - fixture["embedding"][:1]).max()
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    assert off > 0.1


def test_end_to_end_from_the_wave(fixture, features: FeatureConfig, model) -> None:
    """The clip's log-mel straight into the backbone: whole examples, the rest dropped, as official."""
    got = []
    with torch.no_grad():
        for wave in waves(fixture):
            logmel = torch.from_numpy(compute_logmel(wave, features))[None]
            got.append(model.backbone(logmel)[0].numpy())
    np.testing.assert_allclose(np.concatenate(got), fixture["embedding"], rtol=0, atol=2e-2)


def test_overlapping_examples(fixture, features: FeatureConfig, model) -> None:
    """example_hop 48 frames: vggish_params.EXAMPLE_HOP_SECONDS 0.48."""
    logmel = torch.from_numpy(compute_logmel(waves(fixture)[0], features))[None]
    with torch.no_grad():
        got = variant(model, example_hop=48)(logmel)[0].numpy()
    assert got.shape == fixture["hop48_embedding"].shape == (3, 128)
    np.testing.assert_allclose(got, fixture["hop48_embedding"], rtol=0, atol=2e-2)


def test_pca_postprocessing(fixture, model, files) -> None:
    backbone = variant(model, postprocess="pca", pca_params=str(files["pca"]))
    with torch.no_grad():
        got = backbone(torch.from_numpy(fixture["examples"]).reshape(1, -1, 64))[0].numpy()
    theirs = fixture["postprocessed"].astype(np.float32)
    assert got.shape == theirs.shape == (5, 128)
    step = np.abs(got - theirs)
    assert step.max() <= 1 and (step > 0).mean() < 0.02
    assert len(np.unique(theirs)) > 20  # the fixture's PCA spreads the values over many steps


def test_pca_params_are_checked(tmp_path: Path, model) -> None:
    np.savez(tmp_path / "bad.npz", pca_means=np.zeros(64), pca_eigen_vectors=np.eye(64))
    with pytest.raises(DataError, match=r"bad.npz: PCA shapes \(64,\) and \(64, 64\)"):
        variant(model, postprocess="pca", pca_params=str(tmp_path / "bad.npz"))
    with pytest.raises(ConfigError, match=r"neither .vggish_pca. nor an existing \.npz file"):
        variant(model, postprocess="pca", pca_params=str(tmp_path / "missing.npz"))


def test_torchvggish_layout_gives_the_same_network(weights) -> None:
    """harritaylor/torchvggish's key layout (features.<i>, embeddings.<i>, torch shapes)."""
    from audiotag.models.vggish import convert_tf_vggish, convert_torchvggish, detect_layout

    state = {k: torch.from_numpy(v) for k, v in weights.items()}
    ours = convert_tf_vggish(state).state
    index = {"conv1": "features.0", "conv2": "features.3", "conv3_1": "features.6", "conv3_2": "features.8",
             "conv4_1": "features.11", "conv4_2": "features.13", "fc1_1": "embeddings.0",
             "fc1_2": "embeddings.2", "fc2": "embeddings.4"}  # fmt: skip
    torch_state = {
        f"{theirs}.{kind}": ours[f"backbone.{layer}.{kind}"]
        for layer, theirs in index.items()
        for kind in ("weight", "bias")
    }
    assert detect_layout(list(torch_state)) == "torchvggish" and detect_layout(list(state)) == "tf_vggish"
    converted = convert_torchvggish(torch_state)
    assert not converted.ignored and converted.state.keys() == ours.keys()
    assert all(torch.equal(converted.state[k], ours[k]) for k in ours)


def test_embed_layers(fixture, features: FeatureConfig, model) -> None:
    """``embed``/the probe: the embedding is the mean of the examples' 128-d vectors; fc1_2 (layer
    6) the mean of theirs; a conv block gives one value per channel."""
    from audiotag.models.representation import EmbeddingConfig, Representation, resolve_layers

    rep = Representation(EmbeddingConfig(model="vggish"), features, tagger=model)
    assert resolve_layers(rep.model_cfg, "default") == ["embedding"]
    assert rep.min_frames == 96
    x = torch.from_numpy(fixture["examples"][:2]).reshape(1, 192, 64)  # clip 0's two examples
    out = rep.encode(x, ["4", "6", "embedding"])
    tol = {"rtol": 1e-4, "atol": 1e-3}
    np.testing.assert_allclose(out["embedding"][0], fixture["embedding"][:2].mean(axis=0), **tol)
    np.testing.assert_allclose(out["6"][0], fixture["fc1_2"][:2].mean(axis=0), **tol)
    assert rep.layer_dims(["1", "2", "3", "4", "5", "6", "embedding"]) == {
        "1": 64, "2": 128, "3": 256, "4": 512, "5": 4096, "6": 4096, "embedding": 128,
    }  # fmt: skip


def test_fine_tuning_builds_and_learns(fixture, loaded) -> None:
    """A new 5-class head on the pretrained network (nothing else missing, nothing ignored): one
    step changes the backbone too."""
    model, report = loaded
    assert sorted(k.split()[0] for k in report.missing) == ["head.fc.bias", "head.fc.weight"]
    assert not report.ignored and len(report.loaded) == 18
    model = copy.deepcopy(model).train()  # test_embed_layers froze the shared one
    for param in model.parameters():
        param.requires_grad_(True)
    before = model.backbone.fc2.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.from_numpy(fixture["examples"][:2])  # two clips of one example each
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), torch.eye(5)[:2])
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and not torch.equal(before, model.backbone.fc2.weight)


def test_uncentred_frames_of_short_clips(features: FeatureConfig) -> None:
    """``center_pad: none``: 1 + (samples - 400) // 160 frames; a clip shorter than one window is
    zero-padded to it (one frame) where mel_features.frame would give none."""
    for samples, frames in ((100, 1), (400, 1), (559, 1), (560, 2), (16000, 98)):
        assert compute_logmel(np.ones(samples, np.float32) * 0.1, features).shape == (frames, 64), samples
