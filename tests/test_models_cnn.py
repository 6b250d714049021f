"""The CNN14 family and aisfx: official key layouts load, and forward passes match the originals."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from audiotag.config.files import load_group, validate
from audiotag.core.errors import ConfigError
from audiotag.models.cnn14 import CnnConfig, convert_aisfx, convert_panns
from audiotag.models.loading import load_converted
from audiotag.models.registry import build_model, load_pretrained
from tests.golden_weights import seeded_state


def preset(name: str, **changes) -> CnnConfig:
    return validate(CnnConfig, {**load_group("model", name), **changes}, name)


BN_PARTS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def small_panns_state(channels: list[int], n_mels: int, emb: int, n_classes: int) -> dict[str, torch.Tensor]:
    """A state dict in the official PANNs layout (front-end buffers included), for a narrow model.

    Numerical agreement with the official code is checked on golden fixtures (test_golden_panns.py);
    this one only exercises key mapping and refusals.
    """
    shapes: list[tuple[str, tuple[int, ...]]] = [
        ("spectrogram_extractor.stft.conv_real.weight", (5, 1, 8)),
        ("logmel_extractor.melW", (5, 16)),
    ]
    shapes += [(f"bn0.{p}", (n_mels,)) for p in BN_PARTS]
    ins = [1, *channels]
    for i, out in enumerate(channels):
        shapes += [(f"conv_block{i + 1}.conv1.weight", (out, ins[i], 3, 3))]
        shapes += [(f"conv_block{i + 1}.conv2.weight", (out, out, 3, 3))]
        for bn in ("bn1", "bn2"):
            shapes += [(f"conv_block{i + 1}.{bn}.{p}", (out,)) for p in BN_PARTS]
    shapes += [("fc1.weight", (emb, channels[-1])), ("fc1.bias", (emb,))]
    shapes += [("fc_audioset.weight", (n_classes, emb)), ("fc_audioset.bias", (n_classes,))]
    return seeded_state(shapes, seed=7)


def test_panns_layout_loads_every_backbone_and_head_tensor() -> None:
    state = small_panns_state([8, 16, 32], 16, 24, 5)
    ours = build_model(preset("cnn14", channels=[8, 16, 32], embedding_dim=24), 16, 5, frames=40)
    report = load_converted(ours, convert_panns(state), "fake Cnn14")
    assert not report.missing and not report.adapted
    assert {"logmel_extractor.melW", "spectrogram_extractor.stft.conv_real.weight"} <= set(report.ignored)
    torch.testing.assert_close(ours.head.fc.weight, state["fc_audioset.weight"])
    torch.testing.assert_close(
        ours.backbone.conv_block3.bn2.running_var, state["conv_block3.bn2.running_var"]
    )


@torch.no_grad()
def test_audioset_head_is_left_for_a_new_class_count() -> None:
    state = small_panns_state([8, 16], 16, 12, 527)
    ours = build_model(preset("cnn10", channels=[8, 16], embedding_dim=12), 16, 7, frames=20)
    report = load_converted(ours, convert_panns(state), "fake")
    assert any(k.startswith("head.fc.weight") for k in report.missing)
    torch.testing.assert_close(ours.head.fc1.weight, state["fc1.weight"])


def test_full_cnn14_key_names_and_shapes() -> None:
    """Every tensor of the published CNN14 layout has its place in our model (on the meta device)."""
    with torch.device("meta"):
        ours = build_model(preset("cnn14"), 64, 527, frames=1000)
    expected = {"bn0.weight": (64,), "fc1.weight": (2048, 2048), "fc_audioset.weight": (527, 2048)}
    widths = [1, 64, 128, 256, 512, 1024, 2048]
    for i in range(6):
        expected[f"conv_block{i + 1}.conv1.weight"] = (widths[i + 1], widths[i], 3, 3)
        expected[f"conv_block{i + 1}.conv2.weight"] = (widths[i + 1], widths[i + 1], 3, 3)
        for bn in ("bn1", "bn2"):
            for part in ("weight", "bias", "running_mean", "running_var"):
                expected[f"conv_block{i + 1}.{bn}.{part}"] = (widths[i + 1],)
    mapped = convert_panns({k: torch.empty(s, device="meta") for k, s in expected.items()}).state
    target = ours.state_dict()
    for key, value in mapped.items():
        assert key in target and target[key].shape == value.shape, key
    n_params = sum(p.numel() for p in ours.backbone.parameters()) + ours.head.fc1.weight.numel()
    assert 78e6 < n_params < 82e6  # CNN14 is about 80 M parameters


def test_cnn6_uses_single_5x5_blocks() -> None:
    model = build_model(preset("cnn6", channels=[8, 16]), 16, 3, frames=32)
    assert model.backbone.conv_block1.conv1.kernel_size == (5, 5)
    assert not hasattr(model.backbone.conv_block1, "conv2")
    assert model(torch.randn(2, 32, 16)).shape == (2, 3)


def test_wrong_width_is_refused_with_the_keys() -> None:
    state = small_panns_state([8, 16], 16, 12, 5)
    ours = build_model(preset("cnn10", channels=[8, 32], embedding_dim=12), 16, 5, frames=20)
    with pytest.raises(ConfigError, match=r"conv_block2\.conv1\.weight"):
        load_converted(ours, convert_panns(state), "fake")


def test_attention_head_and_pooling_variants() -> None:
    for head in ("linear", "attention"):
        for pool in ("mean", "max", "mean+max"):
            model = build_model(preset("cnn_small", head=head, global_pool=pool), 64, 6, frames=50)
            out = model(torch.randn(4, 50, 64))
            assert out.shape == (4, 6) and torch.isfinite(out).all()


# ----------------------------------------------------------------------------- aisfx (real weights)


def aisfx_checkpoint() -> Path:
    spec = importlib.util.find_spec("aisfx")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("aisfx is not installed (requirements-nodeps.lock)")
    return Path(spec.submodule_search_locations[0]) / "models" / "checkpoint.pth"


def validate_features(name: str):
    from audiotag.config.schema import FeatureConfig

    return validate(FeatureConfig, load_group("features", name), name)


def test_aisfx_layout_detected_from_a_path_and_frontend_checked() -> None:
    """By name the front-end is checked; by path the layout is told from the keys (outputs:
    tests/test_golden_aisfx.py, against the package itself)."""
    path = aisfx_checkpoint()
    cfg = preset("aisfx", pretrained="aisfx")
    model = build_model(cfg, 64, 10, frames=100)
    with pytest.raises(ConfigError, match="aisfx_44k_96"):
        load_pretrained(model, cfg, validate_features("logmel_16k_64"))  # wrong front-end refused
    assert convert_aisfx({"embedding_net.conv_block1.conv1.weight": torch.zeros(1)}).state

    by_path = preset("aisfx", pretrained=str(path))
    model = build_model(by_path, 96, 10, frames=100)
    report = load_pretrained(model, by_path, validate_features("aisfx_44k_96"))
    assert report is not None and set(report.loaded) == {
        k for k in model.state_dict() if k.startswith("backbone.")
    }
    assert any(k.startswith("fc.") for k in report.ignored)  # CrossNet's nine dataset heads


@torch.no_grad()
def test_full_cnn14_on_32k_audio_through_its_front_end() -> None:
    """One second of 32 kHz audio through panns_32k log-mel and the full CNN14: 527 finite scores."""
    from audiotag.data.features import compute_logmel

    features = validate_features("panns_32k")
    t = torch.arange(32000) / 32000
    wave = (0.3 * torch.sin(2 * torch.pi * 440 * t) + 0.01 * torch.randn(32000)).numpy()
    logmel = compute_logmel(wave, features)
    assert logmel.shape == (101, 64)  # 100 frames per second, centred STFT
    torch.manual_seed(0)
    model = build_model(preset("cnn14"), features.n_mels, 527, frames=101).eval()
    seq = model.backbone(torch.from_numpy(logmel)[None])
    assert seq.shape == (1, 101 // 32, 2048)  # five 2x2 poolings over time
    scores = torch.sigmoid(model(torch.from_numpy(logmel)[None]))
    assert scores.shape == (1, 527) and torch.isfinite(scores).all()
