"""BEATs against the official code (microsoft/unilm beats/): the fixture made by ``tools/golden/beats.py``.

The fixture holds two 0.55 s clips (16-bit integer values at 16 kHz: 53 fbank frames, of which the
16x16 patch conv uses 48), the key list of a seeded fine-tuned checkpoint and the official outputs:
the Kaldi fbank before normalisation (``logmel``), the token mean of the encoder output
(``embedding``) and after blocks 3 and 8 (``blocks``), the logits (``output``), the official
relative-position buckets for distances -1200..1200, and the permutation its ``label_dict`` was made
from. Here the checkpoint is rebuilt from the key list, written as the real files are
(``{"cfg", "model", "label_dict"}``, ``.pt``) and loaded through ``load_pretrained`` (converter,
the file's cfg checked against configs/models/beats.yaml, classifier rows put in AudioSet's order);
our front-end, input normalisation and Tagger then run on the same wave, in eval mode.

Tolerances (max abs difference; measured here, torch 2.9 CPU, in brackets):

- log-mel. The fixture was made with ``MKL_CBWR=COMPATIBLE`` (MKL's SSE4.2 code path, which every
  x86 CPU can take); torch's CPU FFT and float32 ``log`` round differently on each MKL path, as for
  AST (``tests/test_golden_ast.py``). Strict, on the fixture's path (a child process started with
  ``MKL_CBWR=COMPATIBLE``): every bin ``STRICT_LOGMEL_TOL`` 2e-4 and the bins within 10 of their
  frame's peak ``STRICT_LOUD_TOL`` 5e-6 (on the machine that made the fixture 1.9e-6 everywhere: one
  float32 ulp of the largest values, ln of the 2**15-scaled power, -15.9 at the eps floor to 28.8; on
  an AMD EPYC with AVX2 only, where MKL_CBWR changes nothing, 9.8e-5 on a bin 13.5 under its frame's
  peak and 2.9e-6 on the loud ones). On this CPU's own
  path, in the test process: every bin ``LOGMEL_TOL`` 5e-3 (1.3e-3 on the AVX2 path, 3.7e-3 on this
  machine's AVX512 path: the quietest bins, 15+ nepers under their frame's peak), the bins within 10
  of their frame's peak ``LOUD_TOL`` 1e-4 (1.7e-5 AVX2, 3.6e-5 AVX512). Only the strict check sees
  small slips: subtracting the clip mean as AST does (``clip_dc: true``) moves the quiet bins by
  about 1e-3 (3.0e-3 on that EPYC) and the loud ones by 1.5e-5 (both machines).
- normalised input: the log-mel error divided by 13.1.
- embedding, block means and logits ``1e-4`` (1.2e-6, 9.5e-7, 1.1e-6): 12 blocks in float32, SDPA
  against the official explicit softmax. Known deviations move them by far more (tests below): the
  tokens in frequency-major order, the classifier rows left in the file's order (4.2).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import audiotag
from audiotag.config.files import read_yaml
from audiotag.config.schema import FeatureConfig
from audiotag.core.errors import ConfigError
from audiotag.data.features import make_extractor
from audiotag.models import verify
from audiotag.models.beats import BeatsConfig, audioset_names, beats_block_frames, relative_buckets
from audiotag.models.registry import build_model, load_pretrained
from audiotag.models.tagger import Tagger
from tests.golden_weights import fixture_state, load_fixture, max_diff

REPO = Path(__file__).resolve().parents[1]
FIXTURE = "beats_as2m"
STRICT_LOGMEL_TOL = 2e-4  # on the fixture's MKL path (MKL_CBWR=COMPATIBLE), every bin
STRICT_LOUD_TOL = 5e-6  # there, the bins within LOUD of their frame's peak
LOGMEL_TOL = 5e-3  # on this CPU's MKL path, every bin
LOUD = 10.0
LOUD_TOL = 1e-4  # on this CPU's MKL path, bins within LOUD of their frame's peak
INPUT_TOL = 5e-4
EMBEDDING_TOL = 1e-4
OUTPUT_TOL = 1e-4
CFG = {  # the released checkpoints' architecture, as the file's cfg records it (tools/golden/beats.py)
    "input_patch_size": 16,
    "embed_dim": 512,
    "conv_bias": False,
    "encoder_layers": 12,
    "encoder_embed_dim": 768,
    "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12,
    "activation_fn": "gelu",
    "layer_norm_first": False,
    "deep_norm": True,
    "conv_pos": 128,
    "conv_pos_groups": 16,
    "relative_position_embedding": True,
    "num_buckets": 320,
    "max_distance": 800,
    "gru_rel_pos": True,
    "finetuned_model": True,
    "predictor_class": 527,
}


@pytest.fixture(scope="module")
def fixture() -> dict[str, np.ndarray]:
    data = load_fixture(FIXTURE)
    assert str(data["source"]).startswith("microsoft/unilm@768a3c87")
    return data


def features_cfg(**changes: object) -> FeatureConfig:
    return FeatureConfig(**{**read_yaml(REPO / "configs/features/beats_kaldi_128.yaml"), **changes})


def our_logmel(fixture: dict[str, np.ndarray], **changes: object) -> np.ndarray:
    wave = torch.from_numpy(fixture["wave"].astype(np.float32) / 32768)
    with torch.no_grad():
        return make_extractor(features_cfg(**changes))(wave).numpy()


def write_checkpoint(fixture: dict[str, np.ndarray], folder: Path) -> Path:
    """The seeded checkpoint as the released files hold it: cfg, model and label_dict."""
    state = fixture_state(fixture)
    for key in [k for k in state if k.endswith("relative_attention_bias.weight")]:
        state[key] = state["encoder.layers.0.self_attn.relative_attention_bias.weight"]  # one shared table
    mids = [mid for mid, _ in audioset_names()]
    label_dict = {j: mids[int(k)] for j, k in enumerate(fixture["label_order"])}
    path = folder / "BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt1.pt"
    torch.save({"cfg": CFG, "model": state, "label_dict": label_dict}, path)
    return path


def our_tagger(path: Path) -> Tagger:
    model_cfg = BeatsConfig(**{**read_yaml(REPO / "configs/models/beats.yaml"), "pretrained": str(path)})
    model = build_model(model_cfg, 128, 527, frames=53)
    report = load_pretrained(model, model_cfg, features_cfg(), offline=True)
    assert report is not None and not report.missing and not report.adapted
    assert set(report.loaded) == set(model.state_dict())  # every tensor came from the file
    assert len(report.ignored) == 11  # the shared bias table's copies under blocks 1..11
    return model.eval()


@pytest.fixture(scope="module")
def checkpoint(fixture: dict[str, np.ndarray], module_tmp: Path) -> Path:
    return write_checkpoint(fixture, module_tmp)  # 360 MB, removed with module_tmp


@pytest.fixture(scope="module")
def tagger(checkpoint: Path) -> Tagger:
    return our_tagger(checkpoint)


# Run by a child process: our log-mel of the fixture (as given, and with clip_dc), into argv[1].
COMPATIBLE_LOGMEL = """
import sys
import numpy as np
from tests.golden_weights import load_fixture
from tests.test_golden_beats import FIXTURE, our_logmel
fixture = load_fixture(FIXTURE)
np.savez(sys.argv[1], ours=our_logmel(fixture), clip_dc=our_logmel(fixture, clip_dc=True))
"""


@pytest.mark.skipif(
    not torch.backends.mkl.is_available(), reason="MKL_CBWR pins MKL's path; this torch has no MKL"
)
def test_frontend_matches_official_on_its_mkl_path(fixture: dict[str, np.ndarray], tmp_path: Path) -> None:
    """Strict: in a child process on the fixture's MKL path (MKL reads MKL_CBWR once, at its start)."""
    out = tmp_path / "logmel.npz"
    paths = [str(Path(audiotag.__file__).parents[1]), str(REPO), os.environ.get("PYTHONPATH")]
    env = {**os.environ, "MKL_CBWR": "COMPATIBLE", "PYTHONPATH": os.pathsep.join(filter(None, paths))}
    proc = subprocess.run(
        [sys.executable, "-c", COMPATIBLE_LOGMEL, str(out)], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    with np.load(out) as data:
        ours, clip_dc = data["ours"], data["clip_dc"]
    official = fixture["logmel"]
    loud = official > official.max(axis=2, keepdims=True) - LOUD
    assert max_diff(ours, official) < STRICT_LOGMEL_TOL
    assert max_diff(ours[loud], official[loud]) < STRICT_LOUD_TOL
    # AST's clip mean: caught on the loud bins and on all of them
    assert max_diff(clip_dc[loud], official[loud]) > 2 * STRICT_LOUD_TOL
    assert max_diff(clip_dc, official) > 2.5 * STRICT_LOGMEL_TOL


def test_frontend_on_this_cpu(fixture: dict[str, np.ndarray]) -> None:
    ours, official = our_logmel(fixture), fixture["logmel"]
    assert max_diff(ours, official) < LOGMEL_TOL
    loud = official > official.max(axis=2, keepdims=True) - LOUD
    assert max_diff(ours[loud], official[loud]) < LOUD_TOL
    assert max_diff((ours - 15.41663) / 13.11164, (official - 15.41663) / 13.11164) < INPUT_TOL
    assert (official[1, -5:] == np.float32(np.log(np.finfo(np.float32).eps))).all()  # silence: the floor
    assert np.array_equal(ours[1, -5:], official[1, -5:])


def test_frontend_without_the_wave_scale_is_caught(fixture: dict[str, np.ndarray]) -> None:
    """Known deviation: the fbank of the unscaled wave (the shift 2 ln 32768 absorbed by the
    normalisation would still leave digital silence at the floor, 20.8 off)."""
    shifted = our_logmel(fixture, wave_scale=1.0) + 2 * np.log(32768.0)
    assert max_diff(shifted, fixture["logmel"]) > 20.0


def test_relative_buckets_match_official(fixture: dict[str, np.ndarray]) -> None:
    reach = int(fixture["max_rel"])
    ours = relative_buckets(2 * reach + 1, 320, 800)[
        reach
    ]  # query in the middle: key - query = -reach..reach
    assert np.array_equal(ours.numpy(), fixture["buckets"].astype(np.int64))


def test_tagger_matches_official(fixture: dict[str, np.ndarray], tagger: Tagger) -> None:
    """Wave -> our front-end, input norm, backbone, head, with the classifier in AudioSet's order."""
    x = torch.from_numpy(our_logmel(fixture))
    with torch.no_grad():
        logits = tagger(x)
        normed = (x - tagger.norm_mean) / tagger.norm_std
        tokens = tagger.backbone(normed)
        blocks = beats_block_frames(tagger.backbone, normed, [int(b) for b in fixture["block_numbers"]])
    assert tokens.shape == (2, 3 * 8, 768)
    assert max_diff(tagger.head.embedding(tokens), fixture["embedding"]) < EMBEDDING_TOL
    for i, block in enumerate(fixture["block_numbers"]):
        assert max_diff(blocks[int(block)].mean(dim=1), fixture["blocks"][i]) < EMBEDDING_TOL
    order = torch.from_numpy(fixture["label_order"].astype(np.int64))
    assert max_diff(logits[:, order], fixture["output"]) < OUTPUT_TOL  # official class j is ours order[j]
    assert max_diff(logits, fixture["output"]) > 100 * OUTPUT_TOL  # the file's order, not AudioSet's: caught


def test_wrong_patch_order_is_caught(fixture: dict[str, np.ndarray], tagger: Tagger) -> None:
    """Known deviation: tokens frequency-major (AST's order) instead of time-major."""

    class FreqMajor(nn.Module):
        def __init__(self, conv: nn.Module) -> None:
            super().__init__()
            self.conv = conv

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x).transpose(2, 3)

    x = torch.from_numpy(our_logmel(fixture))
    backbone = tagger.backbone
    original = backbone.patch_embed
    backbone.patch_embed = FreqMajor(original)
    try:
        with torch.no_grad():
            logits = tagger(x)
    finally:
        backbone.patch_embed = original
    order = torch.from_numpy(fixture["label_order"].astype(np.int64))
    assert max_diff(logits[:, order], fixture["output"]) > 100 * OUTPUT_TOL


def test_a_checkpoint_of_other_settings_is_refused_by_name(tmp_path: Path) -> None:
    """The file's cfg is read: a setting the weights' shapes do not show (max_distance) is named."""
    small = {"patch_dim": 16, "embed_dim": 32, "depth": 1, "num_heads": 2, "ffn_dim": 64, "conv_pos": 4}
    file_cfg = {**CFG, "embed_dim": 16, "encoder_embed_dim": 32, "encoder_layers": 1}
    file_cfg |= {"encoder_attention_heads": 2, "encoder_ffn_embed_dim": 64, "conv_pos": 4}
    path = tmp_path / "BEATs_small.pt"
    model_cfg = BeatsConfig(**small, conv_pos_groups=2, pretrained=str(path))
    file_cfg["conv_pos_groups"] = 2
    model = build_model(model_cfg, 128, 527, frames=53)
    torch.save(
        {"cfg": {**file_cfg, "max_distance": 1280}, "model": {"patch_embedding.weight": torch.zeros(1)}}, path
    )
    with pytest.raises(ConfigError, match=r"max_distance 1280 \(model.max_distance: 800\)"):
        load_pretrained(model, model_cfg, features_cfg(), offline=True)
    torch.save({"cfg": file_cfg, "model": {"patch_embedding.weight": torch.zeros(1)}}, path)
    with pytest.raises(ConfigError, match=r"shapes that do not fit: backbone\.patch_embed\.weight"):
        load_pretrained(model, model_cfg, features_cfg(), offline=True)  # the same cfg: on to the weights


@pytest.mark.slow
def test_weights_verify_names_the_official_top_class(
    fixture: dict[str, np.ndarray], checkpoint: Path
) -> None:
    """``weights verify`` on the fixture's clips: its top label is the official top class, named
    through the file's label_dict (official class j is AudioSet class order[j])."""
    clips = {f"clip{i}": w.astype(np.float32) / 32768 for i, w in enumerate(fixture["wave"])}
    results, notes = verify.run_checkpoint("beats_iter3_plus_as2m_as2m", clips, checkpoint, top_k=2)
    names = verify.audioset_labels()
    order = fixture["label_order"]
    for result, official in zip(results, fixture["output"], strict=True):
        assert result.top[0][0] == names[int(order[int(official.argmax())])]
        assert result.embedding.shape == (768,)
    assert "0 adapted, 11 ignored" in notes[0]
