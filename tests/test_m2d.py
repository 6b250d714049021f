"""M2D in the pipeline: a tiny fine-tuning run on the demo, train.auto's measurement and layer decay."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from audiotag.cli.main import main
from audiotag.models.m2d import M2DConfig
from audiotag.models.registry import build_model
from tests.conftest import TINY_DEMO

DEMO = Path(__file__).parents[1] / "configs/experiments/demo/cnn_small.yaml"  # its run name only
TINY_M2D = "model={base: m2d_vit_base, embed_dim: 16, depth: 2, num_heads: 2, input_frames: 96}"


def test_layer_decay_counts_the_blocks() -> None:
    model = build_model(M2DConfig(embed_dim=16, depth=2, num_heads=2, input_frames=96), 80, 3, frames=96)
    groups = model.param_groups(lr=1.0, backbone_lr_ratio=1.0, weight_decay=0.0, layer_decay=0.5)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    named = dict(model.backbone.named_parameters())
    first = next(name for name in named if not name.startswith("blocks."))
    assert lr_of[id(named[first])] == pytest.approx(0.5**3)  # the patch embedding, before the blocks
    assert lr_of[id(named["blocks.0.attn.qkv.weight"])] == pytest.approx(0.5**2)
    assert lr_of[id(named["blocks.1.attn.qkv.weight"])] == pytest.approx(0.5)


def test_train_auto_measures_the_family() -> None:
    """``train.auto`` runs with the structured patch dropout and the BatchNorm head."""
    from audiotag.runs.auto_settings import measure_model
    from audiotag.train.experiment import load_experiment

    experiment = load_experiment(DEMO, [TINY_M2D, "features=m2d_16k_80", "model.training_mask=0.5"])
    grid, per_frame, parameters = measure_model(experiment, 5)
    assert grid == 1 and per_frame > 0 and parameters > 0  # tokens: no frame grid


@pytest.mark.slow
def test_tiny_m2d_fine_tunes_on_the_demo(workspace: Path) -> None:
    """Random weights, 2 blocks of 16-d, the M2D front-end, structured patch dropout and layer decay,
    1 fold, 2 epochs, inputs longer than the model's 96 frames (chunked)."""
    extra = [
        TINY_M2D,
        "features=m2d_16k_80",
        "model.training_mask=0.5",
        "train.folds=[0]",
        "train.layer_decay=0.75",
        "train.crop_seconds=1.5",
    ]
    items = [item for item in TINY_DEMO if not item.startswith("model.")] + extra  # no CNN settings
    args = ["prepare", "train", "--config", str(DEMO), "--workers", "1"]
    assert main([*args, *[a for item in items for a in ("--set", item)]]) == 0
    run = workspace / "competition/demo/runs/cnn_small"
    assert json.loads((run / "fold0/done.json").read_text())["epochs_run"] == 2
    assert "name: m2d" in (run / "config.yaml").read_text()
