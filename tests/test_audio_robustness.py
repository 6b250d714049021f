"""The audio rules of ``data/audio.py``, each checked on a real file written here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audiotag.config.schema import AudioRules, FeatureConfig
from audiotag.core.errors import DataError
from audiotag.data.audio import (
    EMPTY,
    MISSING,
    UNDECODABLE,
    UnusableAudio,
    _wav_declared_frames,
    decode,
    load_audio,
)
from audiotag.data.cache_compute import compute_clip
from audiotag.data.cache_reader import SKIPPED, ZERO_FILLED
from audiotag.data.features import make_extractor, n_frames

SR = 16000


def tone(sr: int = SR, seconds: float = 1.0, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write(path: Path, data: np.ndarray, sr: int = SR, subtype: str | None = None) -> Path:
    sf.write(str(path), data, sr, subtype=subtype)
    return path


def peak_hz(wave: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.argmax(spectrum) * sr / len(wave))


# ----------------------------------------------------------------------------- formats


@pytest.mark.parametrize(
    ("name", "subtype", "atol"),
    [
        ("a.wav", "PCM_16", 1 / 2**15),
        ("a.wav", "PCM_24", 1 / 2**23),
        ("a.wav", "FLOAT", 0.0),
        ("a.flac", "PCM_16", 1 / 2**15),
        ("a.flac", "PCM_24", 1 / 2**23),
    ],
)
def test_lossless_formats_decode_exactly(tmp_path: Path, name: str, subtype: str, atol: float) -> None:
    y = tone()
    decoded = decode(write(tmp_path / name, y, subtype=subtype), SR)
    assert decoded.status == "ok" and decoded.flags == () and decoded.source_rate == SR
    assert decoded.wave.dtype == np.float32 and decoded.wave.shape == y.shape
    np.testing.assert_allclose(decoded.wave, y, rtol=0, atol=atol)


@pytest.mark.parametrize("channels", [1, 2, 3])
@pytest.mark.parametrize("name", ["p.wav", "p.flac"])
def test_pcm16_fast_path_is_bit_identical(tmp_path: Path, name: str, channels: int) -> None:
    """16-bit PCM is read as int16 and scaled by us: the same bits as libsndfile's float decoding."""
    rng = np.random.default_rng(channels)
    path = write(tmp_path / name, rng.uniform(-1, 1, (5000, channels)), subtype="PCM_16")
    ref, _ = sf.read(str(path), dtype="float32", always_2d=True)
    expected = ref[:, 0] if channels == 1 else ref.mean(axis=1, dtype=np.float32)
    np.testing.assert_array_equal(decode(path, SR).wave, expected)


@pytest.mark.parametrize(("name", "subtype"), [("a.ogg", "VORBIS"), ("a.mp3", "MPEG_LAYER_III")])
def test_lossy_formats_keep_length_and_pitch(tmp_path: Path, name: str, subtype: str) -> None:
    if subtype not in sf.available_subtypes(name.rsplit(".", 1)[1].upper()):
        pytest.skip(f"libsndfile here has no {subtype}")
    decoded = decode(write(tmp_path / name, tone(sr=44100, freq=1000.0), 44100, subtype), SR)
    assert decoded.status == "ok" and decoded.source_rate == 44100
    assert abs(len(decoded.wave) - SR) <= 2
    assert abs(peak_hz(decoded.wave, SR) - 1000.0) < 3.0


def test_multichannel_is_the_mean(tmp_path: Path) -> None:
    channels = np.stack([tone(freq=f, amp=0.2) for f in (200.0, 300.0, 400.0, 500.0)], axis=1)
    decoded = decode(write(tmp_path / "quad.wav", channels, subtype="FLOAT"), SR)
    assert decoded.channels == 4 and decoded.status == "ok"
    np.testing.assert_allclose(decoded.wave, channels.mean(axis=1), atol=1e-7)


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 44100, 96000])
def test_odd_rates_are_resampled(tmp_path: Path, rate: int) -> None:
    decoded = decode(write(tmp_path / "r.wav", tone(sr=rate, freq=1000.0), rate), SR)
    assert decoded.source_rate == rate and decoded.seconds == pytest.approx(1.0)
    assert abs(len(decoded.wave) - SR) <= 1
    assert abs(peak_hz(decoded.wave, SR) - 1000.0) < 2.0
    assert decoded.flags == (("upsampled",) if rate < SR else ())


# ----------------------------------------------------------------------------- unusable files


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UnusableAudio, match=r"nothere\.wav: audio file not found") as info:
        decode(tmp_path / "nothere.wav", SR)
    assert info.value.kind == MISSING and isinstance(info.value, DataError)


@pytest.mark.parametrize("name", ["e.wav", "e.flac"])
def test_empty_file(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / name, np.zeros(0, dtype=np.float32))
    with pytest.raises(UnusableAudio, match="empty") as info:
        load_audio(path, SR)
    assert info.value.kind == EMPTY


@pytest.mark.parametrize(
    "content", [b"", b"RIFF", b"RIFF\x00\x00\x00\x00WAVEfmt garbage" * 4, b"\x00" * 5000]
)
def test_garbage_is_undecodable(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "g.wav"
    path.write_bytes(content)
    with pytest.raises(UnusableAudio, match=r"g\.wav") as info:
        decode(path, SR)
    assert info.value.kind in (UNDECODABLE, EMPTY)


def test_header_only_wav_is_undecodable(tmp_path: Path) -> None:
    path = write(tmp_path / "h.wav", tone())
    path.write_bytes(path.read_bytes()[:44])  # the header promises 1 s, no sample follows
    with pytest.raises(UnusableAudio, match="header declares 16000 frames") as info:
        decode(path, SR)
    assert info.value.kind == UNDECODABLE


def test_implausible_rate_is_undecodable(tmp_path: Path) -> None:
    path = write(tmp_path / "slow.wav", tone(sr=500), 500)
    with pytest.raises(UnusableAudio, match="implausible sample rate 500 Hz"):
        decode(path, SR)


# ----------------------------------------------------------------------------- truncated files


def test_truncated_wav_keeps_what_is_there(tmp_path: Path) -> None:
    y = tone(seconds=2.0)
    path = write(tmp_path / "t.wav", y, subtype="PCM_16")
    path.write_bytes(path.read_bytes()[: 44 + 2 * 12000])  # the header still says 32000 frames
    assert _wav_declared_frames(path) == 32000
    decoded = decode(path, SR)
    assert decoded.flags == ("truncated",)
    assert "decoded 12000 of 32000 frames" in decoded.reason
    np.testing.assert_allclose(decoded.wave, y[:12000], atol=1 / 2**15)


def test_truncated_flac_keeps_frames_before_the_error(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = (tone(seconds=4.0) + 0.05 * rng.standard_normal(4 * SR)).astype(np.float32)
    path = write(tmp_path / "t.flac", y, subtype="PCM_16")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    decoded = decode(path, SR)
    assert decoded.flags == ("truncated",)
    assert 0.3 * len(y) < len(decoded.wave) < 0.6 * len(y)
    np.testing.assert_allclose(decoded.wave, y[: len(decoded.wave)], atol=1 / 2**15)


def test_truncated_mp3_is_flagged(tmp_path: Path) -> None:
    if "MPEG_LAYER_III" not in sf.available_subtypes("MP3"):
        pytest.skip("libsndfile here has no MP3 encoder")
    path = write(tmp_path / "t.mp3", tone(sr=44100, seconds=2.0), 44100, "MPEG_LAYER_III")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    decoded = decode(path, 44100)
    assert decoded.flags == ("truncated",)
    assert 0.3 * 88200 < len(decoded.wave) < 0.7 * 88200


def test_complete_files_are_not_flagged_truncated(tmp_path: Path) -> None:
    for name in ("c.wav", "c.flac", "c.ogg"):
        assert decode(write(tmp_path / name, tone(seconds=0.7)), SR).status == "ok", name


# ----------------------------------------------------------------------------- content rules


def test_silent_file_is_kept_and_flagged(tmp_path: Path) -> None:
    decoded = decode(write(tmp_path / "s.wav", np.zeros(SR, dtype=np.float32)), SR)
    assert decoded.flags == ("silent",) and decoded.wave.shape == (SR,) and not decoded.wave.any()


def test_quiet_but_not_silent(tmp_path: Path) -> None:
    decoded = decode(write(tmp_path / "q.wav", tone(amp=1e-3)), SR)
    assert decoded.status == "ok"


def test_few_nan_samples_are_zeroed(tmp_path: Path) -> None:
    y = tone()
    y[[5, 500, 9000]] = [np.nan, np.inf, -np.inf]
    decoded = decode(write(tmp_path / "n.wav", y, subtype="FLOAT"), SR)
    assert decoded.flags == ("nonfinite",) and "3 NaN/inf" in decoded.reason
    assert np.isfinite(decoded.wave).all()
    assert decoded.wave[[5, 500, 9000]].tolist() == [0.0, 0.0, 0.0]
    np.testing.assert_array_equal(np.delete(decoded.wave, [5, 500, 9000]), np.delete(y, [5, 500, 9000]))


def test_many_nan_samples_are_undecodable(tmp_path: Path) -> None:
    y = tone()
    y[::50] = np.nan  # 2 %
    with pytest.raises(UnusableAudio, match=r"320 of 16000 samples are NaN.*2\.0%") as info:
        decode(write(tmp_path / "n.wav", y, subtype="FLOAT"), SR)
    assert info.value.kind == UNDECODABLE
    # the limit is a rule setting
    assert decode(tmp_path / "n.wav", SR, AudioRules(max_nonfinite=0.05)).flags == ("nonfinite",)


def test_long_file_is_cut(tmp_path: Path) -> None:
    y = tone(seconds=3.0)
    path = write(tmp_path / "long.flac", np.stack([y, y], axis=1))
    decoded = decode(path, SR, AudioRules(max_seconds=1.25))
    assert decoded.flags == ("cut",) and "3.0 s long" in decoded.reason
    assert decoded.seconds == 1.25 and len(decoded.wave) == 20000
    np.testing.assert_allclose(decoded.wave, y[:20000], atol=1 / 2**15)


def test_several_flags_in_fixed_order(tmp_path: Path) -> None:
    y = np.zeros(3 * 8000, dtype=np.float32)
    y[7] = np.nan
    decoded = decode(write(tmp_path / "x.wav", y, 8000, "FLOAT"), SR, AudioRules(max_seconds=2.0))
    assert decoded.flags == ("cut", "nonfinite", "silent", "upsampled")
    assert decoded.status == "cut,nonfinite,silent,upsampled"
    assert len(decoded.reason.split("; ")) == 4


# ----------------------------------------------------------------------------- the cache's worker function


CFG = FeatureConfig()


@pytest.fixture(scope="module")
def extractor():
    return make_extractor(CFG)


def test_worker_skips_train_and_zero_fills_test(tmp_path: Path, extractor) -> None:
    path = write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32))
    train = compute_clip(str(path), False, CFG, extractor)
    assert train.frames is None and train.status == SKIPPED and train.reason.startswith("empty: ")
    test = compute_clip(str(path), True, CFG, extractor, AudioRules(fill_seconds=0.5))
    assert test.status == ZERO_FILLED and test.reason == train.reason
    assert test.frames is not None and test.frames.shape == (n_frames(8000, CFG), CFG.n_mels)
    assert test.frames.dtype == np.float16 and (test.frames == np.float16(-100.0)).all()


def test_worker_keeps_flags(tmp_path: Path, extractor) -> None:
    result = compute_clip(
        str(write(tmp_path / "s.wav", np.zeros(SR, np.float32), 8000)), False, CFG, extractor
    )
    assert result.status == "silent,upsampled" and result.source_rate == 8000 and result.seconds == 2.0
    assert result.frames is not None and np.isfinite(result.frames).all()


def test_worker_rejects_overflowing_features(tmp_path: Path, extractor) -> None:
    path = write(tmp_path / "huge.wav", tone() * np.float32(1e30), subtype="FLOAT")
    result = compute_clip(str(path), False, CFG, extractor)
    assert result.status == SKIPPED and "log-mel is not finite" in result.reason
    assert compute_clip(str(path), True, CFG, extractor).status == ZERO_FILLED


def test_worker_never_raises(tmp_path: Path, extractor) -> None:
    for path in (tmp_path / "missing.wav", tmp_path):
        result = compute_clip(str(path), False, CFG, extractor)
        assert result.status == SKIPPED and result.frames is None
