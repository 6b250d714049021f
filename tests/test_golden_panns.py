"""PANNs CNN14 (32 kHz and 16 kHz), CNN10 and CNN6 against the official code's own outputs.

The fixtures ``tests/golden/panns_*.npz`` were written by ``tools/golden/panns.py``, which runs the
official ``pytorch/models.py`` (qiuqiangkong/audioset_tagging_cnn) with torchlibrosa's front-end on
seeded weights and a seeded waveform. Here the same seeded weights, saved as an official checkpoint
(``{"iteration", "model", "sampler"}`` with numpy arrays in the sampler state, as PANNs' training
script saves them), go through our real loading path, and our front-end and model must give the
official numbers.

Tolerances (float32 throughout; measured differences in brackets): the log-mel within 5e-4 dB
[5e-5..8e-5] (torchlibrosa computes the STFT as a convolution, we with ``torch.stft``: the sums
round differently); the embedding and the logits within 1e-5 + 1e-5 of the largest value [6e-7..6e-6
on values up to 35: float32 rounding through up to 12 convolutions]; the clip-wise output within 1e-5
[1e-7..1e-6]. The errors these fixtures were made to catch (the detection variants' smoothing over
time, a missing pooling after CNN10/CNN6's last block) move the outputs by 0.15..0.3.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from audiotag.config.files import load_group, validate
from audiotag.config.schema import FeatureConfig
from audiotag.data.features import compute_logmel
from audiotag.models.cnn14 import CnnConfig
from audiotag.models.registry import build_model, load_pretrained
from tests.golden_weights import assert_close, fixture_state, load_fixture, max_diff

CASES = {  # fixture: (model config, front-end)
    "panns_cnn14_32k": ("cnn14", "panns_32k"),
    "panns_cnn14_16k": ("cnn14", "panns_16k"),
    "panns_cnn10": ("cnn10", "panns_32k"),
    "panns_cnn6": ("cnn6", "panns_32k"),
}


def model_config(name: str, **changes) -> CnnConfig:
    return validate(CnnConfig, {**load_group("model", name), **changes}, name)


def features_config(name: str) -> FeatureConfig:
    return validate(FeatureConfig, load_group("features", name), name)


def official_checkpoint(fixture: dict[str, np.ndarray], path: Path) -> Path:
    """The seeded weights as PANNs' training script saves a checkpoint (numpy in the sampler state)."""
    sampler = {
        "indexes_per_class": [np.arange(5, dtype=np.int64) + i for i in range(3)],
        "queue": [np.int64(2), np.int64(0)],
        "pointers_of_classes": [0, 1, 2],
    }
    torch.save({"iteration": 660000, "model": fixture_state(fixture), "sampler": sampler}, path)
    return path


@pytest.fixture(scope="module")
def checkpoints(module_tmp: Path) -> dict[str, Path]:
    """Each fixture's seeded weights as an official checkpoint file, written once per module."""
    return {name: official_checkpoint(load_fixture(name), module_tmp / f"{name}.pth") for name in CASES}


def loaded_model(fixture: dict[str, np.ndarray], name: str, path: Path, **changes) -> torch.nn.Module:
    """Our model of fixture ``name``, with its seeded weights loaded from the official-style ``path``."""
    model, front_end = CASES[name]
    cfg = model_config(model, pretrained=str(path), **changes)
    tagger = build_model(cfg, 64, 527, frames=fixture["logmel"].shape[1])
    report = load_pretrained(tagger, cfg, features_config(front_end))
    assert report is not None and not report.missing and not report.adapted
    return tagger.eval()


@pytest.mark.parametrize("name", sorted(CASES))
@torch.no_grad()
def test_front_end_and_model_give_the_official_outputs(name: str, checkpoints: dict[str, Path]) -> None:
    _, front_end = CASES[name]
    fixture = load_fixture(name)
    features = features_config(front_end)
    assert features.sample_rate == int(fixture["sample_rate"])
    logmel = np.stack([compute_logmel(w, features) for w in fixture["wave"]])
    assert logmel.shape == fixture["logmel"].shape
    assert max_diff(logmel, fixture["logmel"]) < 5e-4

    tagger = loaded_model(fixture, name, checkpoints[name])
    x = torch.from_numpy(logmel)
    seq = tagger.backbone(x)
    assert_close(tagger.head.embedding(seq), fixture["embedding"], 1e-5, 1e-5, f"{name} embedding")
    logits = tagger(x)
    assert_close(logits, fixture["logits"], 1e-5, 1e-5, f"{name} logits")
    assert_close(torch.sigmoid(logits), fixture["output"], 1e-5, 0, f"{name} clip-wise output")

    official_in = torch.from_numpy(fixture["logmel"])  # the model alone, on the official log-mel
    assert_close(tagger(official_in), fixture["logits"], 1e-5, 1e-5, f"{name} logits on the official log-mel")


@pytest.mark.parametrize(
    ("name", "wrong"),
    [
        ("panns_cnn14_32k", {"time_smoothing": True}),  # the SED variants' 3-frame smoothing
        ("panns_cnn10", {"pool_last": False}),  # Cnn10 pools after its last block
        ("panns_cnn6", {"pool_last": False}),
    ],
)
@torch.no_grad()
def test_the_fixtures_catch_a_model_that_differs(
    name: str, wrong: dict, checkpoints: dict[str, Path]
) -> None:
    """The errors these fixtures were made to catch move the logits far beyond the tolerance."""
    fixture = load_fixture(name)
    tagger = loaded_model(fixture, name, checkpoints[name], **wrong)
    diff = max_diff(tagger(torch.from_numpy(fixture["logmel"])).numpy(), fixture["logits"])
    assert diff > 1e-2, f"{wrong}: max abs difference only {diff:.3g}"


def test_fixtures_name_the_official_source() -> None:
    for name in CASES:
        assert "audioset_tagging_cnn@d2f4b8c" in str(load_fixture(name)["source"])


DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(CASES))
@torch.no_grad()
def test_bf16_autocast_stays_near_the_official_outputs(
    name: str, device: str, checkpoints: dict[str, Path]
) -> None:
    """Training and prediction run under bf16 autocast on a GPU: the logits stay within 1 % of the
    largest official logit (bf16 keeps 8 bits of mantissa, 0.4 % per rounding; measured on the CPU:
    0.5-0.6 % for all four models, clip-wise outputs within 0.02)."""
    fixture = load_fixture(name)
    tagger = loaded_model(fixture, name, checkpoints[name]).to(device)
    x = torch.from_numpy(fixture["logmel"]).to(device)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        logits = tagger(x).float().cpu()
    assert_close(logits, fixture["logits"], 0.0, 1e-2, f"{name} bf16 logits on {device}")
