"""timm CNNs: our converter (stem summed RGB -> mono) and backbone give timm's own one-channel model.

Fixtures ``tests/golden/timm_<arch>.npz`` come from ``tools/golden/timm_stem.py``: seeded weights in
timm's ImageNet layout (3-channel stem, 1000-class classifier) loaded by timm 1.x itself with
``pretrained=True, in_chans=1, num_classes=0`` (timm's ``adapt_input_conv`` adapts the stem), and
that model's ``forward_features``, pooled features and per-stage means (``forward_intermediates``
averaged over space) on a seeded (2, 1, 64, 96) log-mel image. With seeded weights the input's
effect fades through depth (~10x per EfficientNet stage: a wrong stem moves EfficientNet-B0's
pooled features by only 2e-6), so the stem is checked on the early stages; ResNet-18 keeps it to
the end (4.3), and checks the input layout there too.

Here the same seeded weights, saved as a timm ``.safetensors`` file, go through our real path
(``pretrained: <file>`` -> ``load_pretrained`` -> ``convert_timm`` -> ``load_converted``) into a
Tagger; its backbone runs on the same input given as (batch, frames, mels).

Tolerance: atol 1e-5 + rtol 1e-5 (values of magnitude <= 10). Both sides run the same float32 ops
in the same order (measured: features 0, pooled <= 5e-7); the margin is for kernel choices of
other torch versions and CPUs. A stem adapted the wrong way (RGB mean, or the first channel,
instead of the sum) moves the stage means by > 1e-2, which the test also checks.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from audiotag.config.schema import FeatureConfig
from audiotag.models.registry import build_model, load_pretrained
from audiotag.models.timm_cnn import TimmConfig
from tests.golden_weights import fixture_state, load_fixture

ARCHS = ("efficientnet_b0", "resnet18")
TOL = {"rtol": 1e-5, "atol": 1e-5}


def loaded_timm(fixture: dict, path: Path):
    """The fixture's seeded weights saved as a timm ``.safetensors`` file at ``path`` and loaded into
    our tagger through ``load_pretrained``: the model, the load report and the fixture's input image
    (benchmarks/gpu_golden.py builds it the same way)."""
    save_file(fixture_state(fixture), str(path))
    cfg = TimmConfig(arch=str(fixture["arch"]), pretrained=str(path))
    image = torch.from_numpy(fixture["input"])  # (batch, 1, mels, frames)
    n_mels, frames = image.shape[2:]
    model = build_model(cfg, n_mels=n_mels, n_classes=5, frames=frames)
    return model, load_pretrained(model, cfg, FeatureConfig(n_mels=n_mels)), image


@pytest.mark.parametrize("arch", ARCHS)
@torch.no_grad()
def test_our_mono_stem_model_matches_timms_own(arch: str, tmp_path: Path) -> None:
    fixture = load_fixture(f"timm_{arch}")
    assert str(fixture["arch"]) == arch
    state = fixture_state(fixture)
    model, report, image = loaded_timm(fixture, tmp_path / "model.safetensors")
    stem = str(fixture["stem_key"])
    assert (
        report is not None
        and report.adapted
        and report.adapted[0].startswith(f"backbone.model.{stem}.weight")
    )
    assert not report.unexpected and sorted(report.missing) == ["head.fc.bias", "head.fc.weight"]
    model.eval()

    features = model.backbone.model.forward_features(image)
    torch.testing.assert_close(features, torch.from_numpy(fixture["features"]), **TOL)

    timm_model = model.backbone.model
    stages = torch.from_numpy(fixture["stages"])
    torch.testing.assert_close(stage_means(timm_model, image), stages, **TOL)

    x = image[:, 0].transpose(1, 2)  # our log-mel layout (batch, frames, mels)
    seq = model.backbone(x)  # (batch, frames', channels): mean over frequency
    assert seq.shape == (2, fixture["features"].shape[3], fixture["features"].shape[1])
    torch.testing.assert_close(seq.mean(dim=1), torch.from_numpy(fixture["embedding"]), **TOL)

    # the fixture has teeth: the stem averaged (or cut to one channel) instead of summed fails
    stem_weight = timm_model.get_parameter(f"{stem}.weight")
    rgb = state[f"{stem}.weight"]
    for wrong in (rgb.mean(dim=1, keepdim=True), rgb[:, :1]):
        stem_weight.copy_(wrong)
        assert (stage_means(timm_model, image) - stages).abs().max() > 1e-2


def stage_means(timm_model: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    """Each stage's output averaged over space, concatenated (as the fixture's ``stages``)."""
    outs = timm_model.forward_intermediates(image, intermediates_only=True)
    return torch.cat([out.mean(dim=(2, 3)) for out in outs], dim=1)
