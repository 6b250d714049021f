"""Sliding-window prediction over whole clips, with test-time augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audiotag.config.files import load_group, validate
from audiotag.config.schema import FeatureConfig
from audiotag.core.errors import AudiotagError
from audiotag.data.dataset import window_starts
from audiotag.data.features import compute_logmel
from audiotag.models.cnn14 import CnnConfig
from audiotag.models.registry import build_model
from audiotag.train.loop import gain_offset
from audiotag.train.predict import _predict_once, predict_clips


class Cache:
    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.clips = {
            f"c{i}": rng.normal(0, 1, (n, 16)).astype(np.float16) for i, n in enumerate([7, 30, 55])
        }

    def get(self, clip_id: str) -> np.ndarray:
        return self.clips[clip_id]


def test_shifted_window_grid_still_covers_the_clip() -> None:
    assert window_starts(100, 20, 10) == [0, 10, 20, 30, 40, 50, 60, 70, 80]
    assert window_starts(100, 20, 10, shift=5) == [0, 5, 15, 25, 35, 45, 55, 65, 75, 80]
    assert window_starts(15, 20, 10, shift=5) == [0]


@torch.no_grad()
def test_tta_averages_the_variants() -> None:
    torch.manual_seed(0)
    model = build_model(CnnConfig(channels=[4, 8], embedding_dim=8), 16, 3, frames=20).eval()
    cache, ids = Cache(), ["c0", "c1", "c2"]
    common = dict(window=20, hop=10, batch_size=4, pad_mode="wrap", fill=-100.0, aggregate="mean")
    plain = predict_clips(model, cache, ids, device=torch.device("cpu"), **common)
    same = predict_clips(model, cache, ids, device=torch.device("cpu"), tta_offsets=[0.0], **common)
    np.testing.assert_allclose(plain, same)
    tta = predict_clips(
        model, cache, ids, device=torch.device("cpu"), tta_shifts=2, tta_offsets=[2.0], **common
    )
    args = (model, cache, ids, 20, 10, 4, "wrap", -100.0, "mean", torch.device("cpu"))
    by_hand = (_predict_once(*args, 0, 0.0) + _predict_once(*args, 5, 0.0) + _predict_once(*args, 0, 2.0)) / 3
    np.testing.assert_allclose(tta, by_hand, rtol=1e-6)
    assert not np.allclose(tta, plain)


def test_gain_offsets_per_scale() -> None:
    assert gain_offset(FeatureConfig(scale="db"), 6.0) == 6.0
    assert gain_offset(FeatureConfig(scale="log"), 10.0) == pytest.approx(np.log(10))
    with pytest.raises(AudiotagError, match="log10"):
        gain_offset(FeatureConfig(scale="log10_1p"), 3.0)
    with pytest.raises(AudiotagError, match="waveform"):
        gain_offset(FeatureConfig(cache="wave"), 3.0)


@pytest.mark.parametrize("preset", ["panns_32k", "byola_16k_64", "ast_kaldi_128"])
def test_gain_offset_is_what_a_gain_does_to_the_front_end(preset: str) -> None:
    """A gain of 6 dB on the wave shifts every loud bin by gain_offset (Kaldi fbank: natural log)."""
    cfg = validate(FeatureConfig, load_group("features", preset), preset)
    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal(cfg.sample_rate // 2)).astype(np.float32)
    quiet, loud = compute_logmel(wave, cfg), compute_logmel(wave * 10 ** (6 / 20), cfg)
    floor = quiet.min()  # empty mel filters (Kaldi's lowest bins at 512 FFT points) stay at the floor
    loud_bins = quiet > floor + 1.0
    assert loud_bins.mean() > 0.9
    np.testing.assert_allclose((loud - quiet)[loud_bins], gain_offset(cfg, 6.0), atol=2e-3)
