"""Model families are collected from their modules: adding one is adding a module (+ its YAML)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from audiotag.models.registry import families, family_of
from audiotag.train.experiment import ExperimentConfig

TOY_FAMILY = '''
"""A family written as a user would: one module, nothing else edited."""
from typing import Literal

import torch
from torch import nn

from audiotag.config.schema import ModelBase
from audiotag.models.family import Family


class ToyConfig(ModelBase):
    name: Literal["toy"] = "toy"
    width: int = 8


class ToyBackbone(nn.Module):
    output = "sequence"
    n_prefix_tokens = 0

    def __init__(self, cfg: ToyConfig, n_mels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(n_mels, cfg.width)
        self.out_dim = cfg.width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.proj(x))


FAMILY = Family(ToyConfig, lambda cfg, n_mels, frames: ToyBackbone(cfg, n_mels), {})
'''


def test_every_family_module_is_collected() -> None:
    expected = {"cnn", "timm", "ast", "byola", "musicnn", "vggish", "m2d", "beats"}
    assert set(families()) == expected | {"atst_frame", "passt", "efficientat"}
    for name, family in families().items():
        assert family.config.model_fields["name"].default == name
        assert family.converters, name
    assert family_of("ast").layout_of(["module.v.cls_token"]) == "ast"
    assert family_of("cnn").layout_of(["embedding_net.conv_block1.conv1.weight"]) == "aisfx"
    assert family_of("byola").layout_of(["features.0.weight"]) == "byola"
    assert family_of("vggish").layout_of(["vggish/conv1/weights"]) == "tf_vggish"
    assert family_of("vggish").layout_of(["features.0.weight"]) == "torchvggish"
    assert family_of("beats").layout_of(["encoder.layers.0.fc1.weight"]) == "beats"


def test_the_experiment_schema_takes_every_family() -> None:
    tree = {"name": "x", "competition": {"name": "demo"}}
    for name in families():
        cfg = ExperimentConfig.model_validate({**tree, "model": {"name": name}})
        assert type(cfg.model) is families()[name].config


def test_heads_are_checked_once_for_every_family() -> None:
    from audiotag.core.errors import ConfigError
    from audiotag.train.experiment import load_experiment

    demo = Path(__file__).parents[1] / "configs/experiments/demo/cnn_small.yaml"
    with pytest.raises(ConfigError, match="is for transformers"):
        load_experiment(demo, ["model.head=cls"])
    with pytest.raises(ConfigError, match="takes cls or mean"):
        load_experiment(demo, ["model={base: ast_base, head: linear}"])


def test_a_new_family_is_one_module(tmp_path: Path) -> None:
    """A module dropped beside the families (here: a folder added to the package path) is a family:
    an experiment can name it and a model is built from it, with no other file edited."""
    (tmp_path / "toy.py").write_text(TOY_FAMILY)
    script = textwrap.dedent(
        f"""
        import audiotag.models
        audiotag.models.__path__.append({str(tmp_path)!r})
        import torch
        from audiotag.train.experiment import ExperimentConfig
        from audiotag.models.registry import build_model, families
        cfg = ExperimentConfig.model_validate(
            {{"name": "x", "competition": {{"name": "demo"}}, "model": {{"name": "toy", "width": 5}}}}
        )
        model = build_model(cfg.model, 16, 3, frames=10)
        print("toy" in families(), type(cfg.model).__name__, tuple(model(torch.zeros(2, 10, 16)).shape))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[0] == "True ToyConfig (2, 3)"  # the other families: whatever modules exist


TOY_LAYERED = (
    TOY_FAMILY.replace('"toy"', '"toy_layered"')
    .replace("import Family", "import Family, Layers")
    .replace(
        "FAMILY = Family(ToyConfig, lambda cfg, n_mels, frames: ToyBackbone(cfg, n_mels), {})",
        textwrap.dedent(
            """
            def toy_frames(backbone, x, layers):
                return {1: x, 0: backbone(x)}  # layer 1: the log-mel frames themselves


            FAMILY = Family(
                ToyConfig,
                lambda cfg, n_mels, frames: ToyBackbone(cfg, n_mels),
                {},
                layers=Layers(lambda cfg: 1, lambda cfg: ["1"], toy_frames, "mean"),
                min_frames=lambda backbone: 2,
            )
            """
        ),
    )
)


def test_a_new_family_declares_its_own_layers(tmp_path: Path) -> None:
    """A family module that declares its layers and minimum input is embeddable layer by layer, with
    no central table edited."""
    (tmp_path / "toy_layered.py").write_text(TOY_LAYERED)
    script = textwrap.dedent(
        f"""
        import audiotag.models
        audiotag.models.__path__.append({str(tmp_path)!r})
        from audiotag.config.files import load_group, validate
        from audiotag.config.schema import FeatureConfig
        from audiotag.models.representation import (
            EmbeddingConfig, Representation, available_layers, resolve_layers
        )
        features = validate(FeatureConfig, load_group("features", "logmel_16k_64"), "logmel_16k_64")
        rep = Representation(EmbeddingConfig(model={{"name": "toy_layered", "width": 5}}), features)
        print(
            available_layers(rep.model_cfg), resolve_layers(rep.model_cfg, "default"), rep.min_frames,
            rep.layer_dims(["1"]),
        )
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[0] == "['1', 'embedding'] ['1'] 2 {'1': 64}"
