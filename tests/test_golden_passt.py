"""PaSST against the official code (kkoutini/PaSST): fixtures made by ``tools/golden/passt.py``.

``passt_frontend`` holds a seeded 0.5-s clip at 32 kHz (stored exactly, as float16 values) and the
official ``AugmentMelSTFT`` output in eval mode, ``(ln(mel + 1e-5) + 4.5) / 5`` (``model_input``, 50
frames); the official log-mel before the normalisation is ``5 * model_input - 4.5``.
``passt_s10`` / ``passt_s16`` hold the key list of a seeded checkpoint of the stride-10 and
stride-16 AudioSet models, loaded by the official pretrained path, and the official ``embedding``
(class and distillation tokens averaged after the final norm) and logits on ``model_input``. Here
the checkpoint is rebuilt from the key list, saved as the release files are (a plain state dict)
and loaded through ``load_pretrained`` (weights-table layout ``passt``, ``convert_passt``); our
front-end (configs/features/passt_32k_128.yaml), input normalisation and Tagger run on the wave.

Tolerances (max abs difference), with what was measured on the machine that made the fixtures (x86
CPU, torch 2.x, MKL) in brackets:

- log-mel: every bin ``1e-3`` (``9.5e-7``; ``5.0e-4`` on an AMD EPYC with AVX2 only, at a bin of
  -11.2, just above the ln(1e-5) floor of a near-silent frame), the bins within 10 of their frame's
  peak ``1e-4`` (``5.5e-5`` on that EPYC); normalised input ``3e-4`` (``1.2e-7``; ``9.9e-5``): our
  pre-emphasis (a subtraction, not a conv1d) and grouped mel product round differently from the
  official float32 code, and another CPU's FFT rounds the quietest bins differently (digital
  silence still gives ln(1e-5) on both sides). Errors of substance are far outside: fmax 15500
  (the module's own default, fmax_aug_range 1000) moves the log-mel by 7.5, a periodic Hann window
  by 0.16, no pre-emphasis by 12.9.
- embedding and logits ``1e-4`` (stride 10: ``1.6e-6`` / ``1.5e-6``; stride 16: ``1.7e-6`` /
  ``1.8e-6``): 12 float32 blocks (timm's fused attention against the official explicit softmax).
  Taking the last rather than the first columns of the time embedding moves the logits by 2.0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from audiotag.config.files import read_yaml
from audiotag.config.schema import FeatureConfig
from audiotag.data.features import make_extractor
from audiotag.models.passt import PasstBackbone, PasstConfig
from audiotag.models.registry import build_model, load_pretrained
from audiotag.models.tagger import Tagger
from tests.golden_weights import fixture_state, load_fixture, max_diff

REPO = Path(__file__).resolve().parents[1]
MODELS = {"passt_s10": "passt_s", "passt_s16": "passt_s_s16"}  # fixture -> configs/models/<name>.yaml
LOGMEL_TOL = 1e-3  # every bin
LOUD = 10.0
LOUD_TOL = 1e-4  # bins within LOUD of their frame's peak
INPUT_TOL = 3e-4
EMBEDDING_TOL = 1e-4
OUTPUT_TOL = 1e-4


def features_cfg(**changes: object) -> FeatureConfig:
    return FeatureConfig(**{**read_yaml(REPO / "configs/features/passt_32k_128.yaml"), **changes})


def model_cfg(name: str, **changes: object) -> PasstConfig:
    return PasstConfig(**{**read_yaml(REPO / f"configs/models/{name}.yaml"), **changes})


def our_logmel(features: FeatureConfig | None = None) -> np.ndarray:
    fixture = load_fixture("passt_frontend")
    cfg = features or features_cfg()
    assert cfg.sample_rate == int(fixture["sample_rate"])
    with torch.no_grad():
        return make_extractor(cfg)(torch.from_numpy(fixture["wave"].astype(np.float32))).numpy()


def official_logmel() -> np.ndarray:
    """The official log-mel as (batch, frames, mels): the normalisation undone."""
    return (5.0 * load_fixture("passt_frontend")["model_input"] - 4.5).transpose(0, 2, 1)


def normalised(logmel: np.ndarray) -> np.ndarray:
    norm = model_cfg("passt_s").input_norm
    assert norm is not None and not isinstance(norm, str)
    return ((logmel - norm.mean) / norm.std).transpose(0, 2, 1)


def test_frontend_matches_official() -> None:
    ours = our_logmel()
    assert ours.shape == official_logmel().shape == (1, 50, 128)
    official = official_logmel()
    assert max_diff(ours, official) < LOGMEL_TOL
    loud = official > official.max(axis=2, keepdims=True) - LOUD
    assert max_diff(ours[loud], official[loud]) < LOUD_TOL
    assert max_diff(normalised(ours), load_fixture("passt_frontend")["model_input"]) < INPUT_TOL


@pytest.mark.parametrize(
    ("change", "least"),
    [({"fmax": 15500}, 0.1), ({"window": "hann"}, 1e-2), ({"preemphasis": 0.0}, 0.1)],
)
def test_frontend_deviations_are_caught(change: dict, least: float) -> None:
    """The module's own fmax default, a periodic window, no pre-emphasis: far outside the bound."""
    ours = our_logmel(features_cfg(**change))[:, :50]
    assert max_diff(ours, official_logmel()[:, : ours.shape[1]]) > max(least, 10 * LOGMEL_TOL)


def our_tagger(name: str, folder: Path, monkeypatch: pytest.MonkeyPatch) -> Tagger:
    """Our Tagger loaded from the fixture's checkpoint (the release files' format) by ``load_pretrained``.

    The random initialisation is skipped to save time: every tensor is overwritten, checked below.
    """
    fixture = load_fixture(name)
    path = folder / f"{fixture['arch']}.pt"
    torch.save(fixture_state(fixture), path)
    cfg = model_cfg(MODELS[name], pretrained=str(path))
    assert cfg.fstride == cfg.tstride == int(fixture["stride"])
    with monkeypatch.context() as patch:
        patch.setattr(PasstBackbone, "_init_weights", lambda _self: None)
        patch.setattr(nn.Linear, "reset_parameters", lambda _self: None)
        model = build_model(cfg, 128, 527, 50)
    report = load_pretrained(model, cfg, features_cfg(), offline=True)
    assert report is not None
    assert set(report.loaded) == set(model.state_dict())  # nothing left at init
    assert report.ignored == ["head_dist.weight", "head_dist.bias"] and not report.adapted
    return model.eval()


@pytest.fixture(scope="module", params=list(MODELS))
def loaded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Tagger]:
    with pytest.MonkeyPatch.context() as patch:
        model = our_tagger(request.param, tmp_path_factory.mktemp(request.param), patch)
    return load_fixture(request.param), model


def run(model: Tagger, logmel: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and the pooled token the head's LayerNorm takes (the official ``features``)."""
    pooled: list[torch.Tensor] = []
    hook = model.head.norm.register_forward_pre_hook(lambda _m, args: pooled.append(args[0]))
    with torch.no_grad():
        logits = model(torch.from_numpy(logmel))
    hook.remove()
    return logits, pooled[0]


def test_tagger_matches_official(loaded: tuple[dict, Tagger]) -> None:
    """Wave -> our front-end, input norm, backbone and head; against the official outputs."""
    fixture, model = loaded
    assert str(fixture["source"]).startswith("kkoutini/PaSST@")
    logits, pooled = run(model, our_logmel())
    assert max_diff(pooled, fixture["embedding"]) < EMBEDDING_TOL
    assert max_diff(logits, fixture["output"]) < OUTPUT_TOL


def test_time_embedding_from_the_end_is_caught(loaded: tuple[dict, Tagger]) -> None:
    """The official eval rule takes the first columns of the time embedding; the last ones fail."""
    fixture, model = loaded
    backbone = model.backbone
    assert isinstance(backbone, PasstBackbone)
    original = backbone.time_new_pos_embed.data.clone()
    try:
        backbone.time_new_pos_embed.data = original.flip(-1)
        logits, _ = run(model, our_logmel())
    finally:
        backbone.time_new_pos_embed.data = original
    assert max_diff(logits, fixture["output"]) > 100 * OUTPUT_TOL
