"""The CNN14 family and aisfx: official key layouts load, and forward passes match the originals."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from audiotag.config import CnnConfig, load_group, validate
from audiotag.errors import ConfigError
from audiotag.models.cnn14 import convert_aisfx, convert_panns
from audiotag.models.loading import load_converted
from audiotag.models.registry import build_model, load_pretrained


def preset(name: str, **changes) -> CnnConfig:
    return validate(CnnConfig, {**load_group("model", name), **changes}, name)


class ReferencePanns(nn.Module):
    """The official PANNs Cnn14/Cnn10 forward (eval mode), written from the published structure."""

    def __init__(self, channels: list[int], n_mels: int, emb: int, n_classes: int) -> None:
        super().__init__()
        self.bn0 = nn.BatchNorm2d(n_mels)
        ins = [1, *channels]
        for i, out in enumerate(channels):
            block = nn.Module()
            block.conv1 = nn.Conv2d(ins[i], out, 3, padding=1, bias=False)
            block.conv2 = nn.Conv2d(out, out, 3, padding=1, bias=False)
            block.bn1, block.bn2 = nn.BatchNorm2d(out), nn.BatchNorm2d(out)
            self.add_module(f"conv_block{i + 1}", block)
        self.n_blocks = len(channels)
        self.fc1 = nn.Linear(channels[-1], emb)
        self.fc_audioset = nn.Linear(emb, n_classes)
        self.register_buffer("spectrogram_extractor_dummy", torch.zeros(1))

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:  # (batch, frames, mels)
        x = logmel[:, None]
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)
        for i in range(self.n_blocks):
            b = getattr(self, f"conv_block{i + 1}")
            x = F.relu_(b.bn2(b.conv2(F.relu_(b.bn1(b.conv1(x))))))
            if i < self.n_blocks - 1:
                x = F.avg_pool2d(x, kernel_size=(2, 2))
        x = torch.mean(x, dim=3)
        x = F.max_pool1d(x, 3, 1, 1) + F.avg_pool1d(x, 3, 1, 1)
        x = torch.max(x, dim=2)[0] + torch.mean(x, dim=2)
        x = F.relu_(self.fc1(x))
        return torch.sigmoid(self.fc_audioset(x))


def randomise_bn(module: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def official_state(ref: nn.Module) -> dict[str, torch.Tensor]:
    state = {k: v for k, v in ref.state_dict().items() if "dummy" not in k}
    state["spectrogram_extractor.stft.conv_real.weight"] = torch.zeros(5, 1, 8)
    state["logmel_extractor.melW"] = torch.zeros(5, 16)
    return state


@torch.no_grad()
def test_panns_checkpoint_loads_and_matches_the_official_forward() -> None:
    torch.manual_seed(0)
    channels, n_mels, emb, n_classes = [8, 16, 32], 16, 24, 5
    ref = ReferencePanns(channels, n_mels, emb, n_classes).eval()
    randomise_bn(ref, 1)
    cfg = preset("cnn14", channels=channels, embedding_dim=emb)
    ours = build_model(cfg, n_mels, n_classes, frames=40)
    report = load_converted(ours, convert_panns(official_state(ref)), "fake Cnn14")
    assert not report.missing and not report.adapted
    assert "logmel_extractor.melW" in report.ignored
    ours.eval()
    x = torch.randn(3, 40, n_mels) * 10 - 40
    torch.testing.assert_close(torch.sigmoid(ours(x)), ref(x), rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_audioset_head_is_left_for_a_new_class_count() -> None:
    ref = ReferencePanns([8, 16], 16, 12, 527)
    ours = build_model(preset("cnn10", channels=[8, 16], embedding_dim=12), 16, 7, frames=20)
    report = load_converted(ours, convert_panns(official_state(ref)), "fake")
    assert any(k.startswith("head.fc.weight") for k in report.missing)
    torch.testing.assert_close(ours.head.fc1.weight, ref.fc1.weight)


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
    ref = ReferencePanns([8, 16], 16, 12, 5)
    ours = build_model(preset("cnn10", channels=[8, 32], embedding_dim=12), 16, 5, frames=20)
    with pytest.raises(ConfigError, match=r"conv_block2\.conv1\.weight"):
        load_converted(ours, convert_panns(official_state(ref)), "fake")


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


def aisfx_reference_module():
    """aisfx's own cnn2d.py, loaded by path (importing the package would pull librosa 0.9)."""
    path = aisfx_checkpoint().parent / "cnn2d.py"
    spec = importlib.util.spec_from_file_location("aisfx_cnn2d_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@torch.no_grad()
def test_aisfx_real_checkpoint_gives_the_packages_own_embeddings() -> None:
    path = aisfx_checkpoint()
    ref_mod = aisfx_reference_module()
    state, _datasets = torch.load(path, map_location="cpu", weights_only=False)
    reference = ref_mod.EmbeddingNet("max", 3, 1, 64)
    reference.load_state_dict(
        {k.removeprefix("embedding_net."): v for k, v in state.items() if "embedding" in k}
    )
    reference.eval()

    cfg = preset("aisfx", pretrained=str(path))
    model = build_model(cfg, 96, 10, frames=100)
    report = load_pretrained(model, cfg, validate_features("aisfx_44k_96"))
    assert report is not None and len(report.loaded) == len(reference.state_dict())
    assert any(k.startswith("fc.") for k in report.ignored)
    model.eval()
    spec = torch.rand(2, 100, 96) * 9.4578  # aisfx's log10(1 + 1e4 mel) range
    ours = model.backbone((spec - model.norm_mean) / model.norm_std).amax(dim=1)  # as EmbeddingNet
    torch.testing.assert_close(ours, reference(spec / 9.457798957824707), rtol=1e-5, atol=1e-5)


def validate_features(name: str):
    from audiotag.config import FeatureConfig

    return validate(FeatureConfig, load_group("features", name), name)


def test_aisfx_layout_detected_from_a_path_and_frontend_checked() -> None:
    path = aisfx_checkpoint()
    cfg = preset("aisfx", pretrained="aisfx")
    model = build_model(cfg, 64, 10, frames=100)
    with pytest.raises(ConfigError, match="aisfx_44k_96"):
        load_pretrained(model, cfg, validate_features("logmel_16k_64"))  # wrong front-end refused
    assert convert_aisfx({"embedding_net.conv_block1.conv1.weight": torch.zeros(1)}).state
    assert path.is_file()


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
