"""timm CNN backbone: shapes, and timm's own ImageNet files converted and loaded into a Tagger."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from audiotag.config.schema import FeatureConfig
from audiotag.core.errors import ConfigError
from audiotag.fetch import weights as fetch_weights
from audiotag.models import pretrained
from audiotag.models.loading import load_converted
from audiotag.models.pretrained import read_state_dict
from audiotag.models.registry import build_model, check_pretrained, load_pretrained, lookup
from audiotag.models.tagger import Tagger, build_head
from audiotag.models.timm_cnn import (
    CONVERTERS,
    TimmBackbone,
    TimmConfig,
    build_backbone,
    convert_timm,
)

N_CLASSES = 7


def tagger_for(arch: str, n_mels: int = 64, frames: int = 100) -> Tagger:
    cfg = TimmConfig(arch=arch)
    backbone = build_backbone(cfg, n_mels, frames)
    return Tagger(backbone, build_head(cfg, backbone, N_CLASSES))


def imagenet_state(arch: str) -> dict[str, torch.Tensor]:
    """A random model laid out like timm's ImageNet files: 3 input channels, 1000-class classifier."""
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, in_chans=3, num_classes=1000)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_()
    return {k: v.clone().contiguous() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def effnet_state() -> dict[str, torch.Tensor]:
    return imagenet_state("efficientnet_b0")


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_imagenet_file_loads_with_mono_stem(
    tmp_path: Path, effnet_state: dict[str, torch.Tensor], suffix: str
) -> None:
    path = tmp_path / f"model{suffix}"
    if suffix == ".safetensors":
        save_file(effnet_state, str(path))
    else:
        torch.save(effnet_state, path)
    state = read_state_dict(path)
    assert state.keys() == effnet_state.keys()

    tagger = tagger_for("efficientnet_b0")
    report = load_converted(tagger, CONVERTERS["timm"](state), str(path))

    assert sorted(report.ignored) == ["classifier.bias", "classifier.weight"]
    assert report.adapted == ["backbone.model.conv_stem.weight (32, 3, 3, 3)->(32, 1, 3, 3)"]
    assert sorted(report.missing) == ["head.fc.bias", "head.fc.weight"]
    ours = tagger.state_dict()
    stem = effnet_state["conv_stem.weight"]
    torch.testing.assert_close(ours["backbone.model.conv_stem.weight"], stem.sum(dim=1, keepdim=True))
    for key, value in effnet_state.items():
        if key not in ("conv_stem.weight", "classifier.weight", "classifier.bias"):
            assert torch.equal(ours[f"backbone.model.{key}"], value), key


def test_wrapped_pth_without_batch_counters(tmp_path: Path, effnet_state: dict[str, torch.Tensor]) -> None:
    """An older .pth: {"state_dict": ...} with a DataParallel prefix and no num_batches_tracked."""
    bare = {f"module.{k}": v for k, v in effnet_state.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old.pth"
    torch.save({"state_dict": bare, "epoch": 3}, path)
    state = read_state_dict(path)
    converted = convert_timm(state)
    assert "backbone.model.conv_stem.weight" in converted.state
    assert not any(".module." in k for k in converted.state)
    report = load_converted(tagger_for("efficientnet_b0"), converted, "old.pth")
    assert len(report.adapted) == 1


def test_convnext_classifier_dropped_norm_kept() -> None:
    """ConvNeXt: classifier ``head.fc`` dropped, ``head.norm`` kept; stem ``stem.0`` summed."""
    state = imagenet_state("convnext_atto")
    converted = convert_timm(state)
    assert sorted(converted.ignored) == ["head.fc.bias", "head.fc.weight"]
    assert "backbone.model.head.norm.weight" in converted.state
    tagger = tagger_for("convnext_atto")
    report = load_converted(tagger, converted, "convnext_atto")
    assert report.adapted == ["backbone.model.stem.0.weight (40, 3, 4, 4)->(40, 1, 4, 4)"]


def test_mismatched_arch_is_refused(effnet_state: dict[str, torch.Tensor]) -> None:
    with pytest.raises(ConfigError, match="does not fit") as exc:
        load_converted(tagger_for("resnet18"), convert_timm(effnet_state), "effnet.safetensors")
    assert "missing from the checkpoint: backbone.model.conv1.weight" in str(exc.value)
    assert "keys this model does not have: backbone.model.conv_stem.weight" in str(exc.value)


@pytest.mark.parametrize(("arch", "same_padding"), [("efficientnet_b0", True), ("convnext_atto", False)])
def test_forward_shapes(arch: str, same_padding: bool) -> None:
    """Any input size, short crops included (ConvNeXt needs 32 x 32: shorter inputs are padded)."""
    torch.manual_seed(0)
    tagger = tagger_for(arch).eval()
    for frames, n_mels in [(100, 64), (20, 64), (160, 128)]:
        x = torch.randn(2, frames, n_mels)
        with torch.no_grad():
            seq = tagger.backbone(x)
            logits = tagger.head(seq)
        steps = -(-frames // 32) if same_padding else max(1, frames // 32)
        assert seq.shape == (2, steps, tagger.backbone.out_dim)
        assert logits.shape == (2, N_CLASSES)
        assert torch.isfinite(logits).all()


def test_backbone_attributes_and_unknown_arch() -> None:
    backbone = build_backbone(TimmConfig(arch="resnet18", drop_path=0.1), 64, 100)
    assert isinstance(backbone, TimmBackbone)
    assert backbone.out_dim == 512 and backbone.output == "sequence"
    assert backbone.model.conv1.in_channels == 1
    with pytest.raises(ConfigError, match=r"model\.arch"):
        build_backbone(TimmConfig(arch="no_such_net"), 64, 100)


def test_imagenet_weights_from_the_cache_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A timm file copied into the cache by hand is found by name offline, recorded, converted, loaded."""
    arch = "test_efficientnet"  # a tiny timm arch with pretrained weights (timm/test_efficientnet.r160_in1k)
    state = imagenet_state(arch)
    ckpt = lookup("imagenet", arch)
    assert ckpt.name == f"timm/{arch}.r160_in1k" and ckpt.layout == "timm"
    save_file(state, str(tmp_path / ckpt.filename))
    monkeypatch.setenv("AUDIOTAG_CACHE", str(tmp_path))
    monkeypatch.setenv("AUDIOTAG_OFFLINE", "1")
    cfg = TimmConfig(arch=f"{arch}.r160_in1k", pretrained="imagenet")  # a tagged arch builds too
    model = build_model(cfg, n_mels=64, n_classes=N_CLASSES, frames=100)
    report = load_pretrained(model, cfg, FeatureConfig())
    assert report is not None and sorted(report.ignored) == ["classifier.bias", "classifier.weight"]
    ours = model.state_dict()
    torch.testing.assert_close(
        ours["backbone.model.conv_stem.weight"], state["conv_stem.weight"].sum(dim=1, keepdim=True)
    )
    assert torch.equal(ours["backbone.model.conv_head.weight"], state["conv_head.weight"])
    assert ckpt.filename in (tmp_path / fetch_weights.RECORD_FILE).read_text()


def test_pretrained_name_errors_are_config_errors() -> None:
    features = FeatureConfig()
    with pytest.raises(ConfigError, match="no architecture 'no_such_net'"):
        check_pretrained(TimmConfig(arch="no_such_net", pretrained="imagenet"), features)
    untrained = next(a for a in timm.list_models() if not pretrained.timm_tags(a))
    with pytest.raises(ConfigError, match=f"no pretrained weights for {untrained}"):
        check_pretrained(TimmConfig(arch=untrained, pretrained="imagenet"), features)
    with pytest.raises(ConfigError, match="no pretrained tag 'nope'"):
        check_pretrained(TimmConfig(arch="resnet18", pretrained="timm/resnet18.nope"), features)
