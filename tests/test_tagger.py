"""Tagger mechanics: parameter groups, freezing, input normalisation, features: auto, pretrained runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from audiotag.cli.main import main
from audiotag.config.files import configs_root
from audiotag.config.schema import InputNorm
from audiotag.core.errors import ConfigError
from audiotag.models.cnn14 import CnnConfig
from audiotag.models.loading import Converted, load_converted
from audiotag.models.registry import build_model
from audiotag.train.experiment import load_experiment
from tests.conftest import tiny_args

SMALL = CnnConfig(channels=[4, 8], embedding_dim=6)


def test_param_groups_split_backbone_and_head() -> None:
    model = build_model(SMALL, 16, 3, frames=20)
    groups = model.param_groups(lr=1e-2, backbone_lr_ratio=0.1, weight_decay=0.05)
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    for group in groups:
        in_backbone = {id(p) in backbone_ids for p in group["params"]}
        assert len(in_backbone) == 1  # a group never mixes backbone and head
        assert group["lr"] == pytest.approx(1e-3 if in_backbone.pop() else 1e-2)
        if group["weight_decay"] > 0:
            assert all(p.ndim > 1 for p in group["params"])
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_frozen_backbone_keeps_weights_and_batchnorm_statistics() -> None:
    torch.manual_seed(0)
    model = build_model(SMALL, 16, 3, frames=20)
    model.set_backbone_trainable(False)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head_before = model.head.fc.weight.clone()
    optimizer = torch.optim.AdamW(model.param_groups(1e-2, 1.0, 0.0))
    model.train()
    for _ in range(3):
        loss = model(torch.randn(8, 20, 16)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for key, value in model.backbone.state_dict().items():
        torch.testing.assert_close(value, before[key], msg=key)
    assert not torch.equal(model.head.fc.weight, head_before)
    model.set_backbone_trainable(True)
    model.train()
    assert model.backbone.training and all(p.requires_grad for p in model.backbone.parameters())


def test_input_norm_is_applied_before_the_backbone() -> None:
    cfg = CnnConfig(channels=[4], embedding_dim=None, input_norm=InputNorm(mean=-40.0, std=20.0))
    model = build_model(cfg, 8, 2, frames=10).eval()
    plain = build_model(CnnConfig(channels=[4], embedding_dim=None), 8, 2, frames=10).eval()
    plain.load_state_dict(model.state_dict())
    x = torch.randn(2, 10, 8) * 20 - 40
    torch.testing.assert_close(model(x), plain((x + 40.0) / 20.0))


def test_missing_backbone_keys_are_refused() -> None:
    model = build_model(SMALL, 16, 3, frames=20)
    state = {k: v for k, v in model.state_dict().items() if "conv_block2" not in k}
    with pytest.raises(ConfigError, match=r"missing from the checkpoint: backbone\.conv_block2"):
        load_converted(model, Converted(state), "partial.pth")


def test_features_auto_takes_the_checkpoints_front_end() -> None:
    exp = configs_root() / "experiments" / "demo" / "aisfx_pretrained.yaml"
    cfg = load_experiment(exp)
    assert cfg.features.name == "aisfx_44k_96" and cfg.features.n_mels == 96
    with pytest.raises(ConfigError, match="features: auto"):
        load_experiment(exp, ["model.pretrained=null"])
    # --set features.KEY=VALUE changes one setting of the resolved front-end, whatever the order
    for order in (
        ["features=panns_32k", "features.fmax=12000"],
        ["features.fmax=12000", "features=panns_32k"],
    ):
        other = load_experiment(exp, order)  # a whole group, then one of its settings, in either order
        assert other.features.name == "panns_32k" and other.features.fmax == 12000
    tuned = load_experiment(exp, ["features.resampler=sinc", "train.epochs=3"])
    assert tuned.features.resampler == "sinc" and tuned.features.n_mels == 96 and tuned.train.epochs == 3
    assert tuned.features.model_copy(update={"resampler": "soxr_hq"}) == cfg.features
    from audiotag.models.registry import check_frontend

    check_frontend(tuned.features, "aisfx_44k_96", "aisfx")  # another resampler: the same inputs
    with pytest.raises(ConfigError, match=r"differ \(n_mels: 64 \(checkpoint: 96\)\)"):
        check_frontend(tuned.features.model_copy(update={"n_mels": 64}), "aisfx_44k_96", "aisfx")
    with pytest.raises(ConfigError, match=r"features\.resampler=linear"):
        load_experiment(exp, ["features.resampler=linear"])  # the error names the override


@pytest.mark.slow
def test_training_from_a_checkpoint_file(workspace: Path, tmp_path: Path, caplog) -> None:
    """A run initialised from a PANNs-layout file: the load is reported and the frozen epoch is honoured."""
    torch.manual_seed(0)
    donor = build_model(CnnConfig(channels=[8, 16], embedding_dim=16), 64, 527, frames=100)
    official = {
        k.removeprefix("backbone."): v for k, v in donor.state_dict().items() if k.startswith("backbone.")
    }
    official |= {"fc1.weight": donor.head.fc1.weight, "fc1.bias": donor.head.fc1.bias}
    official |= {"fc_audioset.weight": donor.head.fc.weight, "fc_audioset.bias": donor.head.fc.bias}
    path = tmp_path / "Cnn_tiny.pth"
    torch.save({"model": official}, path)
    extra = ["train.freeze_backbone_epochs=1", "train.folds=[0]"]
    caplog.set_level("INFO")
    assert main(tiny_args("train", extra=[*extra, "model.pretrained=missing.pth"])) == 2
    assert main([*tiny_args("prepare", "train", extra=extra), "--weights", str(path)]) == 0
    assert "tensors loaded" in caplog.text and "head.fc.weight" in caplog.text
    done = json.loads((workspace / "competition/demo/runs/cnn_small/fold0/done.json").read_text())
    assert done["epochs_run"] == 2


def test_dataset_input_norm_is_the_training_folds_statistics() -> None:
    from audiotag.config.schema import FeatureConfig, NormStatsConfig
    from audiotag.data.norm_stats import dataset_norm

    clips = {"a": np.full((4, 3), 1.0), "b": np.full((2, 3), 4.0), "held-out": np.full((9, 3), 99.0)}

    class Cache:
        def get(self, clip_id: str) -> np.ndarray:
            return clips[clip_id]

    # whole clips; the official BYOL-A recipe (0.95 s units) is checked in tests/test_golden_byola.py
    norm = dataset_norm(Cache(), ["a", "b"], FeatureConfig(n_mels=3), NormStatsConfig(unit_seconds=None))
    values = np.concatenate([clips["a"].ravel(), clips["b"].ravel()])
    assert norm.mean == pytest.approx(values.mean()) and norm.std == pytest.approx(values.std())
    with pytest.raises(ConfigError, match="dataset"):
        build_model(CnnConfig(channels=[4], input_norm="dataset"), 8, 2, frames=10)
    model = build_model(CnnConfig(channels=[4], input_norm="dataset"), 8, 2, frames=10, input_norm=norm)
    assert model.norm_mean == pytest.approx(values.mean())


def test_layer_decay_scales_each_block_by_depth() -> None:
    from audiotag.models.ast import AstConfig

    cfg = AstConfig(embed_dim=8, depth=3, num_heads=2, fstride=16, tstride=16)
    model = build_model(cfg, 16, 3, frames=32)
    groups = model.param_groups(lr=1.0, backbone_lr_ratio=0.5, weight_decay=0.0, layer_decay=0.5)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    backbone = dict(model.backbone.named_parameters())
    assert lr_of[id(backbone["patch_embed.proj.weight"])] == pytest.approx(0.5 * 0.5**4)
    assert lr_of[id(backbone["pos_embed"])] == pytest.approx(0.5 * 0.5**4)
    for block in range(3):
        weight = backbone[f"blocks.{block}.attn.qkv.weight"]
        assert lr_of[id(weight)] == pytest.approx(0.5 * 0.5 ** (3 - block))
    assert lr_of[id(backbone["norm.weight"])] == pytest.approx(0.5)
    assert all(lr_of[id(p)] == 1.0 for p in model.head.parameters())
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    plain = model.param_groups(lr=1.0, backbone_lr_ratio=0.5, weight_decay=0.0)
    assert len(plain) < len(groups)


def test_layer_decay_without_blocks_is_refused_by_name() -> None:
    model = build_model(SMALL, 16, 3, frames=20)
    with pytest.raises(ConfigError, match=r"train\.layer_decay.*no `blocks`"):
        model.param_groups(lr=1.0, backbone_lr_ratio=1.0, weight_decay=0.0, layer_decay=0.7)
