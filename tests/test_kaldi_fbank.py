"""Kaldi fbank: our torch version against k2-fsa's C++ Kaldi (kaldi-native-fbank).

AST's own settings are checked against the official torchaudio front-end in test_golden_ast.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audiotag.config.schema import FeatureConfig
from audiotag.data.kaldi_fbank import FLOAT32_EPS, KaldiFbank, kaldi_mel_banks, kaldi_n_frames

SR = 16000
KNF_WINDOWS = {"hann": "hanning", "povey": "povey", "hamming": "hamming"}


def ast_cfg(**changes: object) -> FeatureConfig:
    """AST's front-end (configs/features/ast_kaldi_128.yaml), with changes."""
    settings: dict[str, object] = dict(
        kind="kaldi_fbank",
        sample_rate=SR,
        n_fft=512,
        win_length=400,
        hop_length=160,
        n_mels=128,
        fmin=20,
        window="hann",
        preemphasis=0.97,
        remove_dc=True,
    )
    settings.update(changes)
    return FeatureConfig(**settings)


def ours(wave: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    with torch.no_grad():
        return KaldiFbank(cfg)(torch.from_numpy(wave)[None])[0].numpy()


def signals() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(SR) / SR
    return {
        "noise": (0.1 * rng.standard_normal(SR)).astype(np.float32),
        "sine+dc": (0.5 * np.sin(2 * np.pi * 440 * t) + 0.3 * np.sin(2 * np.pi * 3100 * t) + 0.05).astype(
            np.float32
        ),
    }


def knf_fbank(wave: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    knf = pytest.importorskip("kaldi_native_fbank")
    opts = knf.FbankOptions()
    frame = opts.frame_opts
    frame.samp_freq = cfg.sample_rate
    frame.frame_length_ms = 1000 * (cfg.win_length or cfg.n_fft) / cfg.sample_rate
    frame.frame_shift_ms = 1000 * cfg.hop_length / cfg.sample_rate
    frame.dither = 0.0
    frame.window_type = KNF_WINDOWS[cfg.window]
    frame.preemph_coeff = cfg.preemphasis
    frame.remove_dc_offset = cfg.remove_dc
    frame.snip_edges = True
    frame.round_to_power_of_two = True
    opts.mel_opts.num_bins = cfg.n_mels
    opts.mel_opts.low_freq = cfg.fmin
    opts.mel_opts.high_freq = cfg.fmax or 0.0
    opts.use_energy = False
    extractor = knf.OnlineFbank(opts)
    extractor.accept_waveform(cfg.sample_rate, wave.tolist())
    extractor.input_finished()
    return np.stack([extractor.get_frame(i) for i in range(extractor.num_frames_ready)])


# Kaldi's C++ refuses filters that hold no FFT bin, which AST's 128 mels at a 512-point FFT have
# (torchaudio leaves such a filter at log(eps)), so the C++ comparison uses settings it accepts.
@pytest.mark.parametrize(
    "changes",
    [
        dict(n_mels=64),
        dict(n_mels=64, window="povey"),
        dict(n_mels=64, window="hamming", fmax=7600.0, fmin=100.0),
        dict(n_mels=40, preemphasis=0.0, remove_dc=False),
        dict(n_mels=128, win_length=800, n_fft=1024),
    ],
    ids=["ast64", "povey", "hamming-band", "plain", "128mels-50ms"],
)
@pytest.mark.parametrize("signal", ["noise", "sine+dc"])
def test_matches_kaldi_native_fbank(changes: dict, signal: str) -> None:
    cfg = ast_cfg(**changes)
    wave = signals()[signal]
    ref = knf_fbank(wave, cfg)
    got = ours(wave, cfg)
    assert got.shape == ref.shape == (kaldi_n_frames(len(wave), cfg), cfg.n_mels)
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3)


def test_ast_128_mels_has_one_empty_filter() -> None:
    """AST's own settings are checked against the official torchaudio front-end in test_golden_ast.py;
    here, the filter that holds no FFT bin at 128 mels (which Kaldi's C++ would refuse)."""
    cfg = ast_cfg()
    empty = np.flatnonzero(kaldi_mel_banks(cfg).sum(axis=0) == 0)
    assert list(empty) == [3]  # the one 128-mel filter narrower than an FFT bin: constant log(eps)
    assert np.allclose(ours(signals()["noise"], cfg)[:, 3], np.log(FLOAT32_EPS))


@pytest.mark.parametrize("n_samples", [400, 401, 559, 560, 561, 16000, 16001])
def test_frame_count_formula(n_samples: int) -> None:
    cfg = ast_cfg()
    assert kaldi_n_frames(n_samples, cfg) == 1 + (n_samples - 400) // 160
    wave = np.zeros(n_samples, dtype=np.float32)
    assert ours(wave, cfg).shape == (kaldi_n_frames(n_samples, cfg), 128)


def test_short_clips_are_padded_to_one_window() -> None:
    cfg = ast_cfg(n_mels=64)
    wave = signals()["noise"][:250]
    got = ours(wave, cfg)
    assert kaldi_n_frames(250, cfg) == kaldi_n_frames(1, cfg) == 1
    assert got.shape == (1, 64)
    padded = np.concatenate([wave, np.zeros(150, dtype=np.float32)])
    np.testing.assert_allclose(got, knf_fbank(padded, cfg), rtol=1e-3, atol=1e-3)


def test_batch_equals_single_clips() -> None:
    cfg = ast_cfg()
    waves = np.stack(list(signals().values()))
    with torch.no_grad():
        batch = KaldiFbank(cfg)(torch.from_numpy(waves)).numpy()
    for i, wave in enumerate(waves):
        np.testing.assert_allclose(batch[i], ours(wave, cfg), rtol=1e-5, atol=1e-5)
