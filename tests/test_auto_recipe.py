"""``train.auto``'s derivation (train/auto_recipe.py) on dataset shapes worked out by hand, and the
prior bias of the classifier (``train.head_bias: prior``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from audiotag.models.heads import AttentionHead, LinearHead, set_prior_bias
from audiotag.train import auto_recipe
from audiotag.train.auto_recipe import DataFacts, ModelFacts, derive

GIB = 2**30


def facts(durations, n_classes: int, labels: float = 1.0) -> DataFacts:
    return DataFacts(tuple(float(d) for d in durations), n_classes, labels, n_folds=5)


def machine(memory: int = 64 * GIB, per_frame: float = 1e5, parameters: int = 10**6, processes: int = 1):
    """A 16 kHz / hop 320 front-end (50 frames/s, 64 mels) and a CNN pooling time by 16."""
    return ModelFacts(50.0, 16, 64, per_frame, parameters, memory, f"{memory / GIB:g} GiB test", processes)


def values(data: DataFacts, model: ModelFacts) -> dict[str, object]:
    return {d.key: d.value for d in derive(data, model)}


def test_one_second_speech_clips_x300() -> None:
    # 0.8..1.0 s: p90 = 0.98 s = 49 frames -> 48 on the grid of 16 = 0.96 s; a fold trains on
    # 300 - 60 = 240 clips -> 240 / 10 = 24 -> batch 16 -> 15 steps an epoch -> ceil(1000 / 15) = 67
    got = values(facts(np.linspace(0.8, 1.0, 300), 30), machine())
    assert got == {
        "train.crop_seconds": 0.96,
        "train.batch_size": 16,
        "train.epochs": 67,
        "train.warmup_epochs": 3.35,  # 0.05 * 67
        "train.patience": 17,  # ceil(0.25 * 67)
        "train.mixup_prob": 0.0,  # 0.96 s < 1.5 s
        "train.specaugment.time_masks": 2,
        "train.specaugment.time_width": 5,  # round(0.1 * 48)
        "train.specaugment.freq_masks": 2,
        "train.specaugment.freq_width": 8,  # 64 / 8
        "train.head_bias": "prior",
    }


def test_esc50_five_second_clips_x2000() -> None:
    # p90 = 5 s, clamped to 2 s = 100 frames -> 96 = 1.92 s; 1600 clips a fold / 10 = 160 -> 128 ->
    # cap 32 -> 50 steps an epoch -> 20 epochs
    got = values(facts([5.0] * 2000, 50), machine())
    assert got["train.crop_seconds"] == 1.92
    assert got["train.batch_size"] == 32
    assert (got["train.epochs"], got["train.warmup_epochs"], got["train.patience"]) == (20, 1.0, 5)
    assert got["train.mixup_prob"] == 0.5
    assert got["train.specaugment.time_width"] == 10  # round(9.6)


def test_fsdkaggle2019_like_variable_clips_x5000() -> None:
    # 0.3..30 s: p90 = 0.3 + 0.9 * 29.7 = 27.03 s -> clamped to 2 s -> 1.92 s; 4000 clips a fold ->
    # batch 32 -> 125 steps an epoch -> ceil(1000 / 125) = 8 epochs, raised to the minimum of 10
    got = values(facts(np.linspace(0.3, 30.0, 5000), 80, labels=1.2), machine())
    assert (got["train.crop_seconds"], got["train.batch_size"]) == (1.92, 32)
    assert (got["train.epochs"], got["train.warmup_epochs"], got["train.patience"]) == (10, 0.5, 5)
    (epochs,) = [
        d for d in derive(facts(np.linspace(0.3, 30.0, 5000), 80), machine()) if d.key == "train.epochs"
    ]
    assert "clamped to [10, 300]" in epochs.why


def test_memory_bounds_the_batch() -> None:
    # a quarter of 8 GiB less 4 x 100 MB of parameters, over 2 x 2 MB x 96 frames a crop: 4.55 crops
    model = machine(memory=8 * GIB, per_frame=2e6, parameters=100 * 10**6)
    budget = 0.25 * 8 * GIB - 4 * 100e6
    assert auto_recipe.memory_batch(model, 96) == math.floor(budget / (2 * 2e6 * 96)) == 4
    crop = next(d for d in derive(facts([5.0] * 2000, 50), model) if d.key == "train.batch_size")
    assert crop.value == 4 and "4 crops in memory (0.25 of 8 GiB test)" in crop.why


def test_a_memory_too_small_for_one_crop_gives_batch_one() -> None:
    model = machine(memory=GIB, per_frame=1e9)
    assert auto_recipe.memory_batch(model, 96) == 0
    assert values(facts([5.0] * 2000, 50), model)["train.batch_size"] == 1


def test_processes_share_the_batch() -> None:
    assert values(facts([5.0] * 2000, 50), machine(processes=3))["train.batch_size"] == 30  # 32 - 32 % 3


def test_short_clips_get_at_least_one_grid_step() -> None:
    # 0.2 s: clamped up to 0.5 s = 25 frames, down to the grid: 16 frames = 0.32 s
    assert values(facts([0.2] * 100, 5), machine())["train.crop_seconds"] == 0.32


def test_small_datasets_get_small_batches_and_capped_epochs() -> None:
    # 40 clips: 32 a fold -> batch power_of_two(3.2) = 2 -> 16 steps an epoch -> ceil(62.5) = 63 epochs
    assert values(facts([1.0] * 40, 4), machine())["train.epochs"] == 63
    # 6 clips in 2 folds: 3 a fold -> batch 1 -> 3 steps -> ceil(333.3) = 334, capped to 300
    tiny = DataFacts((1.0,) * 6, 2, 1.0, n_folds=2)
    assert tiny.train_per_fold == 3
    got = {d.key: d for d in derive(tiny, machine())}
    assert got["train.batch_size"].value == 1 and got["train.epochs"].value == 300
    assert "clamped to [10, 300]" in got["train.epochs"].why


def test_fewer_clips_than_folds_is_refused() -> None:
    with pytest.raises(ValueError, match="3 training clips cannot fill 5 folds"):
        derive(facts([1.0] * 3, 2), machine())


def test_power_of_two_at_most() -> None:
    assert [auto_recipe.power_of_two_at_most(x) for x in (0, 0.5, 1, 1.9, 2, 24, 32, 33)] == [
        1,
        1,
        1,
        1,
        2,
        16,
        32,
        32,
    ]


# ----------------------------------------------------------------------------- head_bias: prior


def test_prior_bias_is_each_class_s_log_odds() -> None:
    targets = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [1, 0, 0]], dtype=np.float32)
    head = LinearHead(8, 3, None, 0.0, "mean")
    bias = set_prior_bias(head, targets)
    # 3/4 and 1/4; the absent class is clipped to half a clip: 0.5 / 4 = 1/8
    expected = [math.log(3), math.log(1 / 3), math.log((1 / 8) / (7 / 8))]
    np.testing.assert_allclose(bias, expected, rtol=1e-6)
    np.testing.assert_allclose(head.fc.bias.detach().numpy(), expected, rtol=1e-6)
    with torch.no_grad():
        head.fc.weight.zero_()
        logits = head(torch.randn(2, 5, 8))
    np.testing.assert_allclose(torch.sigmoid(logits).numpy()[0], [0.75, 0.25, 0.125], rtol=1e-5)


def test_prior_bias_of_the_attention_head() -> None:
    head = AttentionHead(8, 2, None, 0.0)
    set_prior_bias(head, np.array([[1, 0], [0, 1], [1, 1], [1, 0]], dtype=np.float32))
    with torch.no_grad():
        head.cla.weight.zero_()
        logits = head.eval()(torch.randn(3, 7, 8))
    np.testing.assert_allclose(torch.sigmoid(logits).numpy(), [[0.75, 0.5]] * 3, rtol=1e-5)
