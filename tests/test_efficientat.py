"""EfficientAT's MobileNets: widths, config, converter, layers, weights table, verify, a tiny training run.

The numbers against the official code are in ``tests/test_golden_efficientat.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from audiotag.cli.main import main
from audiotag.config.files import load_group, validate
from audiotag.core.errors import ConfigError
from audiotag.models import verify
from audiotag.models.efficientat import (
    EfficientAtBackbone,
    EfficientAtConfig,
    block_frames,
    convert_efficientat,
    make_divisible,
)
from audiotag.models.registry import build_model, weights_table
from audiotag.models.representation import EmbeddingConfig, Representation, resolve_layers
from tests import demo_workspace
from tests.golden_weights import fixture_state, load_fixture


def config(name: str, **changes: object) -> EfficientAtConfig:
    return validate(EfficientAtConfig, {**load_group("model", name), **changes}, name)


def test_widths_round_as_mobilenet_and_the_head_follows_the_width() -> None:
    assert [make_divisible(v) for v in (1.6, 6.4, 28.8, 73.6, 672 * 0.4)] == [8, 8, 32, 72, 272]
    assert (config("mn10").embedding_dim, config("mn40").embedding_dim, config("mn04").embedding_dim) == (
        1280,
        5120,
        512,
    )
    assert config("mn10", embedding_dim=64).embedding_dim == 64
    with pytest.raises(ConfigError, match="strides"):
        config("mn10", strides=[2, 2, 3, 2])


def test_parameter_counts_are_the_published_ones_on_meta() -> None:
    """The official README: mn04 0.983M, mn10 4.88M parameters (527-class head; the README rounds
    some down, some to nearest: 983,599 and 4,876,831 here). mn40's 68.43M: the golden fixture."""
    for name, millions in (("mn04", 0.983), ("mn10", 4.88)):
        with torch.device("meta"):
            model = build_model(config(name), 128, 527, 1000)
        assert abs(sum(p.numel() for p in model.parameters()) / 1e6 - millions) < 0.004


def test_any_length_and_mel_count_goes_through() -> None:
    model = build_model(config("mn01"), 64, 3, 100).eval()
    for frames in (1, 33):
        with torch.no_grad():
            assert model(torch.randn(2, frames, 64)).shape == (2, 3)
    assert model.backbone(torch.randn(1, 33, 64)).shape == (1, 2, 6 * make_divisible(16))


def test_converter_renames_and_reports_what_it_cannot_place() -> None:
    state = fixture_state(load_fixture("efficientat_mn04"))
    converted = convert_efficientat(state)
    assert "backbone.features.4.block.2.fc1.weight" in converted.state  # conc_se_layers.0 dropped
    assert "head.fc1.weight" in converted.state and "head.fc.bias" in converted.state
    assert not any("conc_se_layers" in k or k.startswith("classifier.") for k in converted.state)
    model = build_model(config("mn04"), 128, 10, 100)
    assert set(converted.state) == set(model.state_dict())
    no_counters = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert set(convert_efficientat(no_counters).state) == set(model.state_dict())
    extra = convert_efficientat({**state, "features.4.block.2.conc_se_layers.1.fc1.weight": torch.zeros(1)})
    assert "backbone.features.4.block.2.conc_se_layers.1.fc1.weight" in extra.state  # refused by the loader


def test_weights_table_rows() -> None:
    table = weights_table()
    names = [f"mn{w}_as" for w in ("01", "02", "04", "05", "10", "20", "30", "40")] + ["mn40_as_ext"]
    for name in names:
        row = table[name]
        assert row.url.startswith("https://github.com/fschmid56/EfficientAT/releases/download/v0.0.1/")
        assert (row.license, row.layout, row.features) == ("MIT", "efficientat", "passt_32k_128")
        assert config(row.model).width == int(name[2:4]) / 10
    assert table["mn40_as_ext"].filename == "mn40_as_ext_mAP_487.pt"


def test_layers_are_the_blocks_at_the_last_frame_rate() -> None:
    cfg = config("mn01")
    assert resolve_layers(cfg, "default") == ["5", "11", "13", "15"]
    assert resolve_layers(cfg, "all")[-2:] == ["16", "embedding"]
    backbone = EfficientAtBackbone(cfg).eval()
    x = torch.randn(2, 70, 128)
    with torch.no_grad():
        out = block_frames(backbone, x, [1, 5, 16])
        assert torch.equal(out[0], backbone(x))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        0: (2, 3, 96),
        1: (2, 3, 8),
        5: (2, 3, 8),
        16: (2, 3, 96),
    }
    assert torch.allclose(out[16], out[0])
    rep = Representation(EmbeddingConfig(model="mn01", layers="default"), validate_features())
    assert rep.min_frames == 32
    assert rep.layer_dims(["5", "embedding"]) == {"5": 8, "embedding": 96}


def validate_features():
    from audiotag.config.schema import FeatureConfig

    return validate(FeatureConfig, load_group("features", "passt_32k_128"), "passt_32k_128")


def test_kaldi_filters_need_no_normalisation_and_an_even_fft() -> None:
    from audiotag.config.schema import FeatureConfig

    base = load_group("features", "passt_32k_128")
    with pytest.raises(ValueError, match="mel_norm: none"):
        FeatureConfig(**{**base, "mel_norm": "slaney"})
    with pytest.raises(ValueError, match="even n_fft"):
        FeatureConfig(**{**base, "n_fft": 1023})


def test_weights_verify_prints_audioset_labels(tmp_path: Path) -> None:
    """mn04_as with the golden fixture's seeded weights, saved as the release's plain state dict."""
    weights = tmp_path / "mn04_as_mAP_432.pt"
    torch.save(fixture_state(load_fixture("efficientat_mn04")), weights)
    clips = {k: v[:16000] for k, v in verify.synthetic_clips(32000).items()}  # 0.5 s each: fast
    results, notes = verify.run_checkpoint("mn04_as", clips, weights, top_k=2)
    assert "0 adapted" in notes[0] and "passt_32k_128" in notes[1]
    labels = set(verify.audioset_labels())
    for result in results:
        assert len(result.top) == 2 and all(label in labels for label, _ in result.top)
        assert result.embedding.shape == (make_divisible(960 * 0.4),)


def test_a_wrong_width_checkpoint_is_refused_by_name(tmp_path: Path) -> None:
    from audiotag.models.registry import load_pretrained

    weights = tmp_path / "mn04.pt"
    torch.save(fixture_state(load_fixture("efficientat_mn04")), weights)
    cfg = config("mn05", pretrained=str(weights))
    wrong = r"shapes that do not fit: backbone\.features\.2\.block\.0\.0\.weight"
    with pytest.raises(ConfigError, match=wrong):
        load_pretrained(build_model(cfg, 128, 527, 100), cfg, validate_features(), offline=True)


@pytest.mark.slow
def test_tiny_fine_tuning_run_on_the_demo(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One fold, one epoch, random weights, width 0.1, on the session's prepared demo workspace."""
    ws = demo_workspace.copy_to(demo_workspace.trained_base(tmp_path_factory), tmp_path / "ws", monkeypatch)
    sets = [
        "competition.n_folds=3",
        "competition.generator.train_per_class=6",
        "competition.generator.test_per_class=2",
        "competition.generator.max_duration=3.0",
        "model={name: efficientat, width: 0.1}",
        "train.epochs=1",
        "train.batch_size=16",
        "train.folds=[0]",
        "train.crop_seconds=1.0",
    ]
    args = ["train", "-c", "demo", "--workers", "1", "--run-name", "mn01_tiny"]
    for item in sets:
        args += ["--set", item]
    assert main(args) == 0
    run = ws / "competition" / "demo" / "runs" / "mn01_tiny"
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["name"] == "efficientat"
    assert (run / "fold0" / "best.pt").is_file()
