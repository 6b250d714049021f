"""BEATs (models/beats.py) beyond the golden fixture: a tiny fine-tuning run on the demo, layer-wise
learning-rate decay over its blocks, LayerDrop in training only, its layers for ``embed``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from audiotag.cli.main import main
from audiotag.config.files import load_group, validate
from audiotag.config.schema import FeatureConfig
from audiotag.models.beats import BeatsBackbone, BeatsConfig, relative_buckets
from audiotag.models.pretrained import read_weights_file
from audiotag.models.representation import EmbeddingConfig, Representation, available_layers, resolve_layers
from audiotag.models.tagger import layer_depths
from tests.conftest import TINY_DEMO

SMALL = {"patch_dim": 16, "embed_dim": 32, "depth": 2, "num_heads": 2, "ffn_dim": 64}
SMALL |= {"conv_pos": 16, "conv_pos_groups": 4, "num_buckets": 32, "max_distance": 64}


def small(**changes: object) -> BeatsConfig:
    return BeatsConfig(**{**SMALL, **changes})


@pytest.mark.slow
def test_tiny_finetuning_on_the_demo(workspace: Path) -> None:
    """One fold, two epochs, random weights, BEATs' own front-end, layer decay and LayerDrop."""
    model = "{name: beats, " + ", ".join(f"{k}: {v}" for k, v in SMALL.items()) + ", layer_drop: 0.2}"
    sets = [item for item in TINY_DEMO if not item.startswith("model.")]
    sets += [f"model={model}", "features=beats_kaldi_128", "train.layer_decay=0.75", "train.crop_seconds=1.0"]
    args = ["prepare", "train", "-c", "demo", "--workers", "1", "--folds", "0", "--run-name", "beats_tiny"]
    for item in sets:
        args += ["--set", item]
    assert main(args) == 0
    run = workspace / "competition" / "demo" / "runs" / "beats_tiny"
    done = json.loads((run / "fold0" / "done.json").read_text())
    assert done["epochs_run"] == 2 and all(0 < e["loss"] < 10 for e in done["history"])
    assert (run / "fold0" / "oof.parquet").is_file() and (run / "fold0" / "test.parquet").is_file()
    assert "beats_kaldi_128" in (run / "run.json").read_text()


def test_layer_decay_counts_its_blocks() -> None:
    backbone = BeatsBackbone(small(), 128)
    depths = layer_depths(backbone)
    assert depths["patch_embed.weight"] == depths["rel_bias.weight"] == depths["pre_norm.weight"] == 0
    assert depths["blocks.0.fc1.weight"] == 1 and depths["blocks.1.self_attn.grep_a"] == 2
    assert max(depths.values()) == 2  # nothing after the last block


def test_layer_drop_acts_in_training_only() -> None:
    torch.manual_seed(0)
    backbone = BeatsBackbone(small(layer_drop=0.999), 128)
    x = torch.randn(2, 40, 128)
    with torch.no_grad():
        backbone.train()
        skipped = backbone(x)  # every block dropped: the input tokens
        assert torch.equal(skipped, backbone.input_tokens(x))
        backbone.eval()
        assert not torch.allclose(backbone(x), skipped)


def test_input_lengths() -> None:
    """Frames past the last whole 16-frame patch are dropped; under one patch, zero-padded to one."""
    backbone = BeatsBackbone(small(), 128).eval()
    with torch.no_grad():
        assert backbone(torch.randn(1, 53, 128)).shape == (1, 3 * 8, 32)
        assert backbone(torch.randn(1, 5, 128)).shape == (1, 8, 32)
    with pytest.raises(ValueError, match="built for 128 mel bins"):
        backbone(torch.randn(1, 53, 64))


def test_relative_buckets_are_symmetric_in_kind() -> None:
    buckets = relative_buckets(200, 320, 800)
    assert buckets[0, 0] == 0 and buckets[0, 1] == 161 and buckets[1, 0] == 1  # later keys: upper half
    assert buckets[0, 79] == 160 + 79 and buckets[0, 80] == 160 + 80  # exact below 80, log from 80
    assert int(buckets.max()) <= 319


def test_embed_layers_are_its_blocks() -> None:
    """Every block by default, each the mean of its tokens; one frame per 16-frame time patch."""
    cfg = small()
    assert available_layers(cfg) == ["1", "2", "embedding"]
    assert resolve_layers(cfg, "default") == ["1", "2"]
    features = validate(FeatureConfig, load_group("features", "beats_kaldi_128"), "beats")
    rep = Representation(EmbeddingConfig(model={"name": "beats", **SMALL}, window_seconds=1.0), features)
    assert rep.min_frames == 16
    assert rep.layer_dims(["1", "2", "embedding"]) == {"1": 32, "2": 32, "embedding": 32}
    x = torch.randn(2, 53, 128)
    out = rep.encode(x, ["2", "embedding"])
    assert np.allclose(out["2"], out["embedding"], atol=1e-5)  # the last block's mean = the head's pool


def test_new_front_end_options_keep_existing_cache_keys() -> None:
    """wave_scale and clip_dc at their defaults leave every existing cache key as it was (main's
    keys, measured before the options existed); BEATs' values give its own key; wave_scale is a
    Kaldi-fbank option only."""
    assert validate(FeatureConfig, load_group("features", "ast_kaldi_128"), "ast").key() == "63a80fd52f"
    assert validate(FeatureConfig, load_group("features", "panns_32k"), "panns").key() == "d9e7285c45"
    beats = validate(FeatureConfig, load_group("features", "beats_kaldi_128"), "beats")
    assert beats.key() != beats.model_copy(update={"clip_dc": True}).key()
    with pytest.raises(ValueError, match="wave_scale applies to kind: kaldi_fbank only"):
        FeatureConfig(wave_scale=32768)


def test_the_entries_beside_the_weights_are_read(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save(
        {"cfg": {"encoder_layers": 2}, "model": {"w": torch.zeros(1)}, "label_dict": {0: "/m/x"}}, path
    )
    tensors, beside = read_weights_file(path)
    assert list(tensors) == ["w"] and beside == {"cfg": {"encoder_layers": 2}, "label_dict": {0: "/m/x"}}
    torch.save({"w": torch.zeros(1)}, path)
    assert read_weights_file(path)[1] == {}
