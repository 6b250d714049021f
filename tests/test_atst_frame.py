"""ATST-Frame (models/atst_frame.py) beyond the golden fixture: the converter's layouts, chunking,
layer-wise learning-rate decay, the top_db front-end option and a tiny fine-tuning run on the demo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from audiotag.cli.main import main
from audiotag.config.files import load_group, validate
from audiotag.config.schema import FeatureConfig
from audiotag.core.errors import ConfigError
from audiotag.models.atst_frame import CONVERTERS, AtstFrameConfig
from audiotag.models.loading import load_converted
from audiotag.models.registry import build_model
from tests.conftest import TINY_DEMO

TINY = AtstFrameConfig(embed_dim=16, depth=2, num_heads=2, input_frames=41)


def official_state(model: torch.nn.Module, prefix: str = "model.teacher.encoder.") -> dict[str, torch.Tensor]:
    """``model``'s backbone in the official Lightning layout (class slot of pos_embed, mask token,
    student)."""
    state = {
        prefix + k.removeprefix("backbone."): v for k, v in model.state_dict().items() if "backbone." in k
    }
    pos = state[prefix + "pos_embed"]
    state[prefix + "pos_embed"] = torch.cat([torch.full_like(pos[:, :1], 7.0), pos], dim=1)
    state[prefix + "mask_embed"] = torch.zeros(1, 1, pos.shape[-1])
    state["model.student.encoder.norm_frame.weight"] = torch.ones(pos.shape[-1])
    return state


@pytest.mark.parametrize("prefix", ["model.teacher.encoder.", "encoder.encoder."])
def test_converter_takes_the_teacher_and_drops_the_class_slot(prefix: str) -> None:
    torch.manual_seed(0)
    donor = build_model(TINY, 8, 3, frames=41)
    model = build_model(TINY, 8, 3, frames=41)
    report = load_converted(model, CONVERTERS["lightning"](official_state(donor, prefix)), "ckpt")
    assert sorted(report.ignored) == sorted(
        [prefix + "mask_embed", "model.student.encoder.norm_frame.weight"]
    )
    assert all(k.startswith("head.") for k in report.missing)
    assert torch.equal(model.backbone.pos_embed, donor.backbone.pos_embed)  # not the 7.0 slot
    x = torch.randn(2, 41, 8)
    assert torch.equal(model.backbone.eval()(x), donor.backbone.eval()(x))


def test_shorter_chunks_cut_positions_and_other_widths_are_refused() -> None:
    donor = build_model(TINY, 8, 3, frames=41)
    short = build_model(TINY.model_copy(update={"input_frames": 21}), 8, 3, frames=21)
    report = load_converted(short, CONVERTERS["lightning"](official_state(donor)), "ckpt")
    assert report.adapted == ["backbone.pos_embed (1, 10, 16)->(1, 5, 16)"]
    assert torch.equal(short.backbone.pos_embed, donor.backbone.pos_embed[:, :5])
    wide = build_model(TINY.model_copy(update={"embed_dim": 32}), 8, 3, frames=41)
    with pytest.raises(ConfigError, match="shapes that do not fit"):
        load_converted(wide, CONVERTERS["lightning"](official_state(donor)), "ckpt")


def test_long_inputs_are_encoded_in_chunks() -> None:
    """41 frames per chunk: 100 frames -> chunks of 41, 41 and 18 frames -> 10 + 10 + 4 tokens; a
    3-frame tail has no token; the chunks are encoded alone."""
    backbone = build_model(TINY, 8, 3, frames=41).backbone.eval()
    x = torch.randn(1, 100, 8)
    with torch.no_grad():
        out = backbone(x)
        assert out.shape == (1, 24, 16)
        assert torch.allclose(out[:, 10:20], backbone(x[:, 41:82]), atol=1e-6)
        assert backbone(torch.randn(1, 85, 8)).shape == (1, 20, 16)  # 41 + 41 + 3: the tail dropped
        assert backbone(torch.randn(1, 2, 8)).shape == (1, 1, 16)  # shorter than a patch: padded


def test_layer_decay_counts_the_blocks() -> None:
    model = build_model(TINY, 8, 3, frames=41)
    groups = model.param_groups(lr=1.0, backbone_lr_ratio=1.0, weight_decay=0.0, layer_decay=0.5)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    named = dict(model.backbone.named_parameters())
    assert lr_of[id(named["patch_embed.patch_embed.weight"])] == pytest.approx(0.5**3)
    assert lr_of[id(named["pos_embed"])] == pytest.approx(0.5**3)
    assert lr_of[id(named["blocks.0.attn.qkv.weight"])] == pytest.approx(0.5**2)
    assert lr_of[id(named["blocks.1.mlp.fc2.weight"])] == pytest.approx(0.5)
    assert lr_of[id(named["norm_frame.weight"])] == pytest.approx(1.0)


def test_top_db_floors_each_clip_at_its_own_maximum() -> None:
    cfg = validate(FeatureConfig, load_group("features", "atst_16k_64"), "atst_16k_64")
    loud = np.sin(np.arange(16000) * 0.3).astype(np.float32)
    wave = torch.from_numpy(np.stack([loud, 1e-3 * loud]))
    wave[:, 8000:] = 0.0
    from audiotag.data.features import make_extractor

    with torch.no_grad():
        out = make_extractor(cfg)(wave)
        plain = make_extractor(cfg.model_copy(update={"top_db": None}))(wave)
    for clip in range(2):
        top = float(plain[clip].max())
        assert float(out[clip].min()) == pytest.approx(top - 80, abs=1e-4)  # the silence floored
        assert torch.equal(out[clip][plain[clip] > top - 80], plain[clip][plain[clip] > top - 80])
    assert cfg.key() != cfg.model_copy(update={"top_db": None}).key()
    with pytest.raises(ValueError, match="top_db"):
        FeatureConfig(scale="log", top_db=80)


@pytest.mark.slow
def test_tiny_atst_frame_fine_tunes_on_the_demo(workspace: Path) -> None:
    """Random weights, 2 blocks of 16-d, the ATST front-end, 1 fold, 2 epochs, layer decay."""
    model = "model={base: atst_frame_small, embed_dim: 16, depth: 2, num_heads: 2, input_frames: 101}"
    extra = [
        model,
        "features=atst_16k_64",
        "train.folds=[0]",
        "train.layer_decay=0.75",
        "train.crop_seconds=1.5",
    ]
    items = [item for item in TINY_DEMO if not item.startswith("model.")] + extra  # no CNN settings
    demo = Path(__file__).parents[1] / "configs/experiments/demo/cnn_small.yaml"  # this run only: no probe
    args = ["prepare", "train", "--config", str(demo), "--workers", "1"]
    assert main([*args, *[a for item in items for a in ("--set", item)]]) == 0
    run = workspace / "competition/demo/runs/cnn_small"
    done = json.loads((run / "fold0/done.json").read_text())
    assert done["epochs_run"] == 2
    assert "atst_frame" in (run / "config.yaml").read_text()


def test_embed_layers_default_to_every_block() -> None:
    """``embed``: layers 1..depth (default: all, as the official linear evaluation), each the block's
    tokens through ``norm_frame`` averaged over time; the last one is the model's own embedding."""
    from audiotag.models.representation import EmbeddingConfig, Representation, resolve_layers

    features = validate(FeatureConfig, load_group("features", "atst_16k_64"), "atst_16k_64")
    model = {"name": "atst_frame", "embed_dim": 16, "depth": 2, "num_heads": 2, "input_frames": 41}
    rep = Representation(EmbeddingConfig(model=model), features)
    assert resolve_layers(rep.model_cfg, "default") == ["1", "2"] and rep.min_frames == 4
    assert rep.layer_dims(["1", "2", "embedding"]) == {"1": 16, "2": 16, "embedding": 16}
    out = rep.encode(torch.randn(2, 100, 64), ["1", "2", "embedding"])
    assert out["1"].shape == (2, 16) and not np.allclose(out["1"], out["2"])
    np.testing.assert_allclose(out["2"], out["embedding"], atol=1e-6)


def test_train_auto_measures_the_family() -> None:
    """``train.auto`` sizes crops on the model's frame grid: 4 log-mel frames per token."""
    from audiotag.runs.auto_settings import measure_model
    from audiotag.train.experiment import load_experiment

    demo = Path(__file__).parents[1] / "configs/experiments/demo/cnn_small.yaml"
    model = "model={base: atst_frame_small, embed_dim: 16, depth: 2, num_heads: 2}"
    grid, per_frame, parameters = measure_model(load_experiment(demo, [model, "features=atst_16k_64"]), 5)
    assert grid == 4 and per_frame > 0 and parameters > 0
