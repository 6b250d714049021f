"""PaSST backbone: official key layout, positional-embedding rules, patchout, layer decay, front-end frames.

The numbers against the official code are in tests/test_golden_passt.py; here small models check the
rules that fixture cannot reach (training mode, inputs longer than the time embedding).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from audiotag.cli.main import main
from audiotag.config.files import read_yaml
from audiotag.config.schema import FeatureConfig, InputNorm
from audiotag.data.features import make_extractor, n_frames
from audiotag.models.loading import load_converted
from audiotag.models.passt import (
    CONVERTERS,
    LAYERS,
    PasstBackbone,
    PasstConfig,
    build_backbone,
    default_layers,
)
from audiotag.models.representation import EmbeddingConfig, Representation, available_layers, resolve_layers
from audiotag.models.tagger import Tagger, build_head, layer_depths
from audiotag.runs.auto_settings import measure_model
from audiotag.train.experiment import load_experiment
from tests.golden_weights import load_fixture, unpack_shapes

REPO = Path(__file__).resolve().parents[1]
DIM, DEPTH, HEADS, MELS = 32, 2, 4, 64


def tiny(**changes: object) -> PasstConfig:
    return PasstConfig(embed_dim=DIM, depth=DEPTH, num_heads=HEADS, input_frames=200, **changes)


def tokens_of(backbone: PasstBackbone, frames: int) -> int:
    return backbone.input_tokens(torch.zeros(2, frames, MELS)).shape[1]


def test_patchout_acts_in_training_only() -> None:
    """5 rows x 19 columns at stride 10: s_patchout_t/f drop columns/rows, u_patchout patches."""
    backbone = build_backbone(tiny(s_patchout_t=4, s_patchout_f=2, u_patchout=3), MELS, 200)
    assert isinstance(backbone, PasstBackbone)
    backbone.eval()
    assert tokens_of(backbone, 200) == 2 + 5 * 19
    backbone.train()
    assert tokens_of(backbone, 200) == 2 + 3 * 15 - 3
    # 1 column (kept), 3 of 5 rows, then 3 patches less: at least one patch is kept
    assert tokens_of(backbone, 20) == 2 + 1


def test_time_embedding_first_columns_in_eval_random_run_in_training() -> None:
    backbone = build_backbone(tiny(), MELS, 200)
    assert isinstance(backbone, PasstBackbone)
    built = backbone.time_new_pos_embed
    assert built.shape == (1, DIM, 1, 200 // 10)
    backbone.eval()
    assert torch.equal(backbone.time_positions(5), built[..., :5])
    backbone.train()
    torch.manual_seed(0)
    starts = set()
    for _ in range(30):
        part = backbone.time_positions(5)
        starts.add(next(i for i in range(16) if torch.equal(part, built[..., i : i + 5])))
    assert len(starts) > 3


def test_longer_input_is_cut_to_the_time_embedding() -> None:
    """The official rule: patch columns beyond the time embedding are dropped, not interpolated."""
    backbone = build_backbone(tiny(), MELS, 200).eval()
    assert isinstance(backbone, PasstBackbone)
    long = torch.randn(1, 400, MELS)
    with torch.no_grad():
        # the 20 columns of the time embedding cover (20 - 1) * 10 + 16 = 206 frames
        assert torch.equal(backbone(long), backbone(long[:, :206]))
        assert not torch.equal(backbone(long), backbone(long[:, :205]))
        assert tokens_of(backbone, 10) == 2 + 5 * 1  # shorter than one patch: zero-padded to 16 frames


def official_layout(fixture: str, depth: int) -> dict[str, torch.Tensor]:
    """The official key list and shapes (a golden fixture's), its first ``depth`` blocks, on meta."""
    shapes = unpack_shapes(load_fixture(fixture))
    state = {k: torch.empty(s, device="meta") for k, s in shapes if not k.startswith("blocks.")}
    state |= {
        k: torch.empty(s, device="meta")
        for k, s in shapes
        if k.startswith(tuple(f"blocks.{i}." for i in range(depth)))
    }
    return state


@pytest.mark.parametrize(
    ("name", "depth", "fixture"),
    [("passt_s", 12, "passt_s10"), ("passt_s_s16", 12, "passt_s16"), ("passt_l", 7, "passt_s10")],
)
def test_model_files_take_the_official_key_layout(name: str, depth: int, fixture: str) -> None:
    """Every configs/models/passt_*.yaml at full size (meta device) loads the official names and shapes."""
    cfg = PasstConfig(**read_yaml(REPO / f"configs/models/{name}.yaml"))
    assert cfg.input_norm == InputNorm(mean=-4.5, std=5.0) and cfg.head == "cls" and cfg.depth == depth
    with torch.device("meta"):
        backbone = build_backbone(cfg, 128, 1000)
        model = Tagger(backbone, build_head(cfg, backbone, 527), cfg.input_norm)
    converted = CONVERTERS["passt"](official_layout(fixture, depth))
    assert {k: tuple(v.shape) for k, v in converted.state.items()} == {
        k: tuple(v.shape) for k, v in model.state_dict().items()
    }
    assert converted.ignored == ["head_dist.weight", "head_dist.bias"]


def test_checkpoint_of_other_stride_is_refused_naming_the_key() -> None:
    cfg = PasstConfig(**read_yaml(REPO / "configs/models/passt_s_s16.yaml"))
    with torch.device("meta"):
        backbone = build_backbone(cfg, 128, 1000)
        model = Tagger(backbone, build_head(cfg, backbone, 527))
    state = CONVERTERS["passt"](official_layout("passt_s10", 12))
    with pytest.raises(Exception, match=r"backbone\.freq_new_pos_embed.*\(1, 768, 12, 1\).*\(1, 768, 8, 1\)"):
        load_converted(model, state, "passt_s10.pt")


def test_layer_decay_and_layers() -> None:
    """Blocks come after the embeddings and before the final norm; default layers as AST-Fusion's."""
    backbone = build_backbone(tiny(), MELS, 200)
    depths = layer_depths(backbone)
    assert depths["time_new_pos_embed"] == depths["patch_embed.proj.weight"] == 0
    assert depths["blocks.1.mlp.fc2.weight"] == 2 and depths["norm.weight"] == 3
    assert default_layers(PasstConfig()) == ["5", "12"] and default_layers(PasstConfig(depth=7)) == ["3", "7"]
    x = torch.randn(2, 100, MELS)
    with torch.no_grad():
        out = LAYERS.frames(backbone.eval(), x, [1, 2])
        assert out[1].shape == out[2].shape == (2, 1, DIM)
        assert torch.equal(out[0], backbone(x))  # the last block's tokens: the backbone's own output
        assert torch.equal(out[2][:, 0], out[0][:, :2].mean(dim=1))


@pytest.mark.parametrize("samples", [1, 2, 319, 320, 321, 640, 16000])
def test_preemphasis_frames(samples: int) -> None:
    """The wave-level pre-emphasis takes one sample off: 1 + (samples - 1) // hop frames, as PaSST."""
    cfg = FeatureConfig(**read_yaml(REPO / "configs/features/passt_32k_128.yaml"))
    out = make_extractor(cfg)(torch.randn(1, samples))
    assert out.shape[1] == n_frames(samples, cfg) == 1 + max(0, samples - 1) // 320


def test_kaldi_mel_scale_settings_are_checked() -> None:
    base = read_yaml(REPO / "configs/features/passt_32k_128.yaml")
    FeatureConfig(**base)
    for change in ({"mel_norm": "slaney"}, {"n_fft": 1001}, {"kind": "kaldi_fbank"}):
        with pytest.raises(ValueError, match="mel_scale: kaldi"):
            FeatureConfig(**{**base, **change})


TINY_PASST = [
    "competition.n_folds=3",
    "competition.generator.train_per_class=4",
    "competition.generator.test_per_class=1",
    "competition.generator.max_duration=3.0",
    "model={base: passt_s, embed_dim: 32, depth: 2, num_heads: 4, input_frames: 200, "
    "s_patchout_t: 2, s_patchout_f: 1}",
    "train.epochs=1",
    "train.batch_size=16",
    "train.folds=[0]",
    "train.layer_decay=0.75",
]


@pytest.mark.slow
def test_tiny_passt_fine_tunes_on_the_demo(workspace: Path) -> None:
    """One fold, one epoch of a 2-block PaSST from random weights, with patchout and layer decay
    (about 15 s of CPU time on 2 cores)."""
    args = ["prepare", "train", "-c", "demo", "--workers", "1", "--run-name", "passt_tiny"]
    for item in TINY_PASST:
        args += ["--set", item]
    assert main(args) == 0
    run = workspace / "competition" / "demo" / "runs" / "passt_tiny"
    done = json.loads((run / "fold0" / "done.json").read_text())
    assert done and (run / "fold0" / "best.pt").is_file() and (run / "fold0" / "oof.parquet").is_file()
    saved = json.loads((run / "run.json").read_text())
    assert "passt" in json.dumps(saved) and "s_patchout_t" in json.dumps(saved)


def test_train_auto_measures_the_recipe_on_meta() -> None:
    """``train.auto``'s model facts for the full-size recipe: tokens, so a grid of one frame."""
    cfg = load_experiment(REPO / "configs/experiments/fsd50k/passt.yaml")
    assert cfg.features.name == "passt_32k_128" and cfg.model.s_patchout_t == 10
    grid, per_frame, parameters = measure_model(cfg, n_classes=200)
    assert grid == 1 and per_frame > 0 and parameters > 85_000_000 * 4


def test_embed_takes_passt_layers() -> None:
    """``embed``'s representation of a small PaSST: blocks 1..depth and its own embedding, the
    default fusion, one vector per window and layer (what the linear probe reads)."""
    features = FeatureConfig(**read_yaml(REPO / "configs/features/logmel_16k_64.yaml"))
    model = {"name": "passt", "embed_dim": DIM, "depth": 4, "num_heads": HEADS, "input_frames": 200}
    rep = Representation(EmbeddingConfig(model=model), features)
    assert available_layers(rep.model_cfg) == ["1", "2", "3", "4", "embedding"]
    assert resolve_layers(rep.model_cfg, "default") == ["2", "4"]
    out = rep.encode(torch.randn(3, 100, MELS), ["2", "4", "embedding"])
    assert {k: v.shape for k, v in out.items()} == {"2": (3, DIM), "4": (3, DIM), "embedding": (3, DIM)}
    assert rep.layer_dims(["2", "4"]) == {"2": DIM, "4": DIM}
