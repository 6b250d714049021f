"""Audio decoding and the log-mel front-end, checked against librosa."""

from __future__ import annotations

from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from audiotag.config.schema import FeatureConfig
from audiotag.core.errors import DataError
from audiotag.data.audio import audio_info, load_audio
from audiotag.data.features import LogMel, compute_logmel, mel_filterbank, mel_groups, n_frames, reflect_pad

CONFIGS = [
    FeatureConfig(),
    FeatureConfig(mel_scale="htk", fmin=0.0),
    FeatureConfig(sample_rate=22050, n_fft=1024, win_length=800, hop_length=256, n_mels=96, fmax=9000.0),
    FeatureConfig(scale="log", n_mels=40, fmin=20.0, fmax=7600.0),
]


def sine(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def make_signal(sr: int, seconds: float = 1.3) -> np.ndarray:
    rng = np.random.default_rng(0)
    noise = 0.05 * rng.standard_normal(int(sr * seconds)).astype(np.float32)
    y = noise + sine(440.0, sr, seconds) * np.linspace(0, 1, len(noise), dtype=np.float32)
    y[: sr // 10] *= 1e-3  # a quiet start exercises the low end of the dB range
    return y


def librosa_logmel(y: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    mel = librosa.feature.melspectrogram(
        y=y,
        sr=cfg.sample_rate,
        n_fft=cfg.n_fft,
        hop_length=cfg.hop_length,
        win_length=cfg.win_length,
        window="hann",
        center=True,
        pad_mode="reflect",
        power=2.0,
        n_mels=cfg.n_mels,
        fmin=cfg.fmin,
        fmax=cfg.fmax,
        htk=cfg.mel_scale == "htk",
        norm="slaney",
    )
    if cfg.scale == "db":
        return librosa.power_to_db(mel, ref=1.0, amin=cfg.amin, top_db=None).T
    return np.log(mel + cfg.log_offset).T


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.mel_scale}-{c.scale}-{c.n_mels}")
def test_mel_filterbank_matches_librosa(cfg: FeatureConfig) -> None:
    ref = librosa.filters.mel(
        sr=cfg.sample_rate,
        n_fft=cfg.n_fft,
        n_mels=cfg.n_mels,
        fmin=cfg.fmin,
        fmax=cfg.fmax,
        htk=cfg.mel_scale == "htk",
        norm="slaney",
    )
    fb = mel_filterbank(cfg)
    assert fb.shape == (cfg.n_mels, cfg.n_fft // 2 + 1) and fb.dtype == np.float32
    np.testing.assert_allclose(fb, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.mel_scale}-{c.scale}-{c.n_mels}")
def test_logmel_matches_librosa(cfg: FeatureConfig) -> None:
    y = make_signal(cfg.sample_rate)
    ours = compute_logmel(y, cfg)
    ref = librosa_logmel(y, cfg)
    assert ours.shape == ref.shape == (n_frames(len(y), cfg), cfg.n_mels)
    assert ours.dtype == np.float32
    valid = ref > -100.0  # librosa and torch round tiny powers differently near the amin floor
    assert valid.mean() > 0.9
    np.testing.assert_allclose(ours[valid], ref[valid], rtol=0, atol=1e-3)


def test_logmel_batched_equals_single() -> None:
    cfg = FeatureConfig()
    waves = np.stack([make_signal(cfg.sample_rate), sine(1000.0, cfg.sample_rate, 1.3)])
    with torch.inference_mode():
        batch = LogMel(cfg)(torch.from_numpy(waves)).numpy()
    assert batch.shape == (2, n_frames(waves.shape[1], cfg), cfg.n_mels)
    for i in range(2):
        np.testing.assert_allclose(batch[i], compute_logmel(waves[i], cfg), atol=1e-4)


@pytest.mark.parametrize("cfg", [*CONFIGS, FeatureConfig(n_mels=128, n_fft=2048)], ids=str)
def test_mel_groups_cover_the_filterbank_exactly(cfg: FeatureConfig) -> None:
    fb = mel_filterbank(cfg)
    rebuilt = np.zeros_like(fb)
    start = 0
    for first, end, weights in mel_groups(fb):
        rebuilt[start : start + weights.shape[1], first:end] = weights.T
        start += weights.shape[1]
    assert start == cfg.n_mels
    np.testing.assert_array_equal(rebuilt, fb)  # no weight outside a group's bins is dropped


def test_mel_groups_of_an_empty_filter() -> None:
    fb = np.zeros((3, 10), np.float32)
    fb[0, 2:4] = 1.0  # the other two filters are empty (as AST's Kaldi bank #3 at n_fft 512)
    groups = mel_groups(fb, mels_per_group=1)
    assert [(a, b) for a, b, _ in groups] == [(2, 4), (0, 1), (0, 1)]
    assert all(not w.any() for _, _, w in groups[1:])


@pytest.mark.parametrize("shape", [(1, 600), (3, 257), (2, 1, 1000)])
@pytest.mark.parametrize("pad", [0, 1, 256])
def test_reflect_pad_equals_torch(shape: tuple[int, ...], pad: int) -> None:
    wave = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    flat = wave.reshape(-1, 1, shape[-1])
    expected = torch.nn.functional.pad(flat, (pad, pad), mode="reflect").reshape(*shape[:-1], -1)
    torch.testing.assert_close(reflect_pad(wave, pad), expected, rtol=0, atol=0)


def test_logmel_buffers_are_not_saved() -> None:
    assert LogMel(FeatureConfig()).state_dict() == {}


@pytest.mark.parametrize("n_samples", [0, 1, 100, 256, 257, 319, 320, 5000])
def test_short_clips_work(n_samples: int) -> None:
    cfg = FeatureConfig()  # n_fft 512: below 257 samples reflect padding is impossible
    y = sine(1000.0, cfg.sample_rate, 1.0)[:n_samples]
    out = compute_logmel(y, cfg)
    assert out.shape == (n_frames(n_samples, cfg), cfg.n_mels)
    assert np.isfinite(out).all()


def write(path: Path, data: np.ndarray, sr: int, subtype: str = "PCM_16") -> Path:
    sf.write(str(path), data, sr, subtype=subtype)
    return path


def test_load_mono_same_rate(tmp_path: Path) -> None:
    y = sine(440.0, 16000, 0.5)
    out = load_audio(write(tmp_path / "a.wav", y, 16000, "FLOAT"), 16000)
    assert out.dtype == np.float32 and out.ndim == 1 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, y)


def test_stereo_is_mixed_down(tmp_path: Path) -> None:
    left, right = sine(440.0, 16000, 0.5), sine(880.0, 16000, 0.5, amp=0.25)
    out = load_audio(write(tmp_path / "s.wav", np.stack([left, right], axis=1), 16000, "FLOAT"), 16000)
    np.testing.assert_allclose(out, (left + right) / 2, atol=1e-7)


def test_resampling_keeps_the_pitch(tmp_path: Path) -> None:
    path = write(tmp_path / "tone.wav", sine(1000.0, 44100, 1.0), 44100)
    out = load_audio(path, 16000)
    assert abs(len(out) - 16000) <= 1
    spectrum = np.abs(np.fft.rfft(out * np.hanning(len(out))))
    peak_hz = np.argmax(spectrum) * 16000 / len(out)
    assert abs(peak_hz - 1000.0) < 2.0
    assert audio_info(path) == pytest.approx((1.0, 44100))


def test_stereo_22k_resampled(tmp_path: Path) -> None:
    tone = sine(1000.0, 22050, 0.5)
    out = load_audio(write(tmp_path / "st.wav", np.stack([tone, tone], axis=1), 22050), 16000)
    assert abs(len(out) - 8000) <= 1


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nothere\.wav"):
        load_audio(tmp_path / "nothere.wav", 16000)
    with pytest.raises(DataError, match=r"nothere\.wav"):
        audio_info(tmp_path / "nothere.wav")


def test_empty_wav(tmp_path: Path) -> None:
    path = write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(DataError, match=r"empty\.wav.*empty"):
        load_audio(path, 16000)


def test_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.wav"
    path.write_bytes(b"RIFF not really a wave file" * 10)
    with pytest.raises(DataError, match=r"garbage\.wav"):
        load_audio(path, 16000)


def test_nan_samples(tmp_path: Path) -> None:
    y = sine(440.0, 16000, 0.2)
    y[100] = np.nan  # one sample in 3200: set to 0 (the rules in data/audio.py)
    out = load_audio(write(tmp_path / "few.wav", y, 16000, "FLOAT"), 16000)
    assert out[100] == 0.0 and np.isfinite(out).all()
    y[::20] = np.nan  # 5 %: unusable
    path = write(tmp_path / "nan.wav", y, 16000, "FLOAT")
    with pytest.raises(DataError, match=r"nan\.wav.*NaN"):
        load_audio(path, 16000)


def test_float16_log10_1p_rounds_as_numpy_and_saturates() -> None:
    """musicnn's ``np.log10(10000 * mel.astype(np.float16) + 1)`` step by step; where its float16
    product overflows to inf (mel > 6.55), ours stops at float16's largest value."""
    from audiotag.data.features import log10_1p_float16

    mel = np.array([0.0, 1.234e-5, 3.3e-3, 0.5, 6.0], np.float32)
    with np.errstate(over="ignore"):
        numpy_way = np.log10(10000 * mel.astype(np.float16) + 1)
    ours = log10_1p_float16(torch.from_numpy(mel), 10000.0).numpy()
    np.testing.assert_array_equal(ours, numpy_way.astype(np.float32))
    loud = log10_1p_float16(torch.tensor([7.0, 1e6]), 10000.0).numpy()
    assert np.isfinite(loud).all() and np.allclose(loud, np.log10(np.float32(65504.0)), atol=1e-3)
