"""AST backbone: checkpoint conversion (official AST and timm DeiT layouts), resampling, forward shapes."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from timm.models.deit import VisionTransformerDistilled

from audiotag.config.files import read_yaml
from audiotag.config.schema import FeatureConfig, InputNorm
from audiotag.core.errors import ConfigError
from audiotag.models.ast import (
    AST_MEAN,
    AST_STD,
    CONVERTERS,
    AstBackbone,
    AstConfig,
    PosEmbedResampler,
    build_backbone,
    patch_grid,
)
from audiotag.models.loading import Converted, LoadReport, load_converted
from audiotag.models.tagger import Tagger, build_head

REPO = Path(__file__).resolve().parents[1]
DIM, DEPTH, HEADS = 64, 2, 4


def tiny_cfg(**changes: object) -> AstConfig:
    return AstConfig(embed_dim=DIM, depth=DEPTH, num_heads=HEADS, **changes)


def tagger(cfg: AstConfig, n_mels: int, frames: int, n_classes: int = 10) -> Tagger:
    backbone = build_backbone(cfg, n_mels, frames)
    return Tagger(backbone, build_head(cfg, backbone, n_classes), InputNorm(mean=AST_MEAN, std=AST_STD))


def timm_deit(depth: int = DEPTH, dim: int = DIM) -> VisionTransformerDistilled:
    """timm's distilled DeiT at 384 px (24x24 patch grid), small."""
    torch.manual_seed(0)
    return VisionTransformerDistilled(
        img_size=384, patch_size=16, embed_dim=dim, depth=depth, num_heads=HEADS
    )


def official_ast_state(depth: int = DEPTH, dim: int = DIM, t_dim: int = 101) -> dict[str, torch.Tensor]:
    """A checkpoint in the official AST layout: DataParallel ``module.``, ``v.`` = timm DeiT, mlp_head."""
    torch.manual_seed(1)
    state = {f"module.v.{k}": v.clone() for k, v in timm_deit(depth, dim).state_dict().items()}
    state["module.v.patch_embed.proj.weight"] = torch.randn(dim, 1, 16, 16)
    state["module.v.pos_embed"] = torch.randn(1, 2 + 12 * t_dim, dim)
    state["module.mlp_head.0.weight"] = torch.rand(dim) + 0.5
    state["module.mlp_head.0.bias"] = torch.randn(dim)
    state["module.mlp_head.1.weight"] = torch.randn(527, dim)
    state["module.mlp_head.1.bias"] = torch.randn(527)
    return state


def load(model: Tagger, layout: str, state: dict[str, torch.Tensor]) -> LoadReport:
    backbone: AstBackbone = model.backbone  # type: ignore[assignment]
    return load_converted(model, backbone.prepare_checkpoint(CONVERTERS[layout](state)), layout)


def test_official_ast_checkpoint_loads_by_renaming() -> None:
    state = official_ast_state()
    model = tagger(tiny_cfg(), 128, 1024)
    report = load(model, "ast", state)
    ours = model.state_dict()
    for key in ours:
        if key.startswith("backbone."):
            assert torch.equal(ours[key], state["module.v." + key.removeprefix("backbone.")]), key
    assert torch.equal(ours["head.norm.weight"], state["module.mlp_head.0.weight"])
    assert not report.adapted and not report.mismatched
    assert any(k.startswith("head.fc.weight") for k in report.missing)  # 527 AudioSet classes -> 10
    assert sorted(report.ignored) == sorted(k for k in state if k.startswith("module.v.head"))
    same_classes = tagger(tiny_cfg(), 128, 1024, n_classes=527)
    load(same_classes, "ast", state)
    assert torch.equal(same_classes.state_dict()["head.fc.weight"], state["module.mlp_head.1.weight"])


def test_deit_checkpoint_report_and_copied_blocks() -> None:
    """What the conversion keeps and reports; the values of the RGB sum and of the resampled grid
    are checked against the official AST code in test_golden_ast.py."""
    deit = timm_deit().state_dict()
    model = tagger(tiny_cfg(), 128, 1024)
    report = load(model, "deit", deit)
    ours = model.state_dict()
    for key, value in deit.items():
        if key.startswith("blocks.") or key.startswith("norm.") or key.endswith("_token"):
            assert torch.equal(ours["backbone." + key], value), key
    assert sorted(report.ignored) == ["head.bias", "head.weight", "head_dist.bias", "head_dist.weight"]
    assert sorted(report.adapted) == [
        f"backbone.patch_embed.proj.weight ({DIM}, 3, 16, 16)->({DIM}, 1, 16, 16)",
        f"backbone.pos_embed (1, 578, {DIM})->(1, 1214, {DIM})",
    ]
    assert torch.equal(ours["backbone.pos_embed"][:, :2], deit["pos_embed"][:, :2])


def test_forward_matches_timm_deit_on_its_own_grid() -> None:
    """Stride 16 on a 384x384 input is DeiT's own 24x24 grid: our tokens must equal timm's."""
    deit = timm_deit().eval()
    model = AstBackbone(tiny_cfg(fstride=16, tstride=16), 384, 384).eval()
    converted = CONVERTERS["deit"](deit.state_dict())
    bare = {k.removeprefix("backbone."): v for k, v in converted.state.items()}  # the backbone alone
    load_converted(model, Converted(bare, adapters=converted.adapters), "deit", new_prefixes=())
    image = torch.randn(1, 1, 384, 384).expand(1, 3, 384, 384)
    with torch.no_grad():
        want = deit.forward_features(image)
        got = model(image[:, 0].transpose(1, 2))  # (batch, frames = width, mels = height)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_unbound_resampler_refuses_instead_of_guessing() -> None:
    model = tagger(tiny_cfg(), 128, 512)
    with pytest.raises(ConfigError, match=r"backbone\.pos_embed"):
        load_converted(model, CONVERTERS["ast"](official_ast_state()), "ast")
    assert (
        PosEmbedResampler((12, 101))("backbone.pos_embed", torch.zeros(1, 1214, 4), torch.zeros(1, 602, 4))
        is None
    )


@pytest.mark.parametrize(("depth", "named"), [(3, "blocks.2."), (1, "blocks.1.")])
def test_checkpoint_of_other_depth_is_refused_naming_keys(depth: int, named: str) -> None:
    model = tagger(tiny_cfg(), 128, 1024)
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load(model, "ast", official_ast_state(depth=depth))


def test_forward_shapes_for_other_frame_counts() -> None:
    model = tagger(tiny_cfg(), 128, 1024).eval()
    backbone: AstBackbone = model.backbone  # type: ignore[assignment]
    with torch.no_grad():
        assert backbone(torch.randn(2, 1024, 128)).shape == (2, 2 + 12 * 101, DIM)
        assert backbone(torch.randn(2, 512, 128)).shape == (2, 2 + 12 * 50, DIM)
        assert backbone(torch.randn(1, 2000, 128)).shape == (1, 2 + 12 * 199, DIM)
        assert backbone(torch.randn(1, 7, 128)).shape == (1, 2 + 12, DIM)  # padded to one patch
        assert model(torch.randn(2, 512, 128)).shape == (2, 10)
    short = backbone.positions(50)
    grid = backbone.pos_embed[:, 2:].reshape(1, 12, 101, DIM)
    assert torch.equal(short[:, 2:], grid[:, :, :50].reshape(1, 600, DIM))  # first columns, as end padding
    with pytest.raises(ValueError, match="128 mel bins"):
        backbone(torch.randn(1, 512, 64))


def test_build_backbone_grid_and_input_frames() -> None:
    assert patch_grid(128, 1024, 10, 10) == (12, 101)
    assert build_backbone(tiny_cfg(), 128, 512).grid == (12, 50)  # type: ignore[attr-defined]
    assert build_backbone(tiny_cfg(input_frames=1024), 128, 512).grid == (12, 101)  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="smaller than a 16x16 patch"):
        build_backbone(tiny_cfg(), 8, 512)


def test_full_size_official_layouts_match_ours_on_meta() -> None:
    """AST-base for 128 mels x 1024 frames: official key names and shapes (no memory used)."""
    with torch.device("meta"):
        model = tagger(AstConfig(), 128, 1024, n_classes=527)
        deit = timm.create_model("deit_base_distilled_patch16_384", pretrained=False).state_dict()
    official = {f"module.v.{k}": v for k, v in deit.items()}
    official["module.v.patch_embed.proj.weight"] = torch.empty(768, 1, 16, 16, device="meta")
    official["module.v.pos_embed"] = torch.empty(1, 1214, 768, device="meta")
    official["module.mlp_head.0.weight"] = official["module.mlp_head.0.bias"] = torch.empty(
        768, device="meta"
    )
    official["module.mlp_head.1.weight"] = torch.empty(527, 768, device="meta")
    official["module.mlp_head.1.bias"] = torch.empty(527, device="meta")
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    converted = CONVERTERS["ast"](official)
    assert {k: tuple(v.shape) for k, v in converted.state.items()} == ours
    assert len(converted.ignored) == 4
    report = load(model, "deit", deit)
    assert "backbone.pos_embed (1, 578, 768)->(1, 1214, 768)" in report.adapted
    assert "backbone.patch_embed.proj.weight (768, 3, 16, 16)->(768, 1, 16, 16)" in report.adapted


def test_config_files() -> None:
    """AST-base settings; the input norm is checked against the official input in test_golden_ast.py."""
    model = AstConfig(**read_yaml(REPO / "configs/models/ast_base.yaml"))
    assert (model.embed_dim, model.depth, model.num_heads, model.head) == (768, 12, 12, "cls")
    assert model.input_norm is not None and model.input_norm.std == pytest.approx(AST_STD)
    features = FeatureConfig(**read_yaml(REPO / "configs/features/ast_kaldi_128.yaml"))
    assert (features.kind, features.n_mels, features.hop_length, features.win_length) == (
        "kaldi_fbank",
        128,
        160,
        400,
    )
