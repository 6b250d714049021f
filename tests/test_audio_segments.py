"""Segments of a file (a table's ``start_column``/``end_column``): decoded alone, resampled as the
whole file would be, the audio rules applied to the segment, and the feature cache keyed by them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from audiotag.config.schema import AudioRules, FeatureConfig
from audiotag.data.audio import EMPTY, UnusableAudio, decode
from audiotag.data.cache_build import _clip_order, _order_hash, build_cache
from audiotag.data.cache_reader import FeatureCache, read_manifest
from audiotag.data.features import n_frames

CFG = FeatureConfig(sample_rate=16000, hop_length=160, n_mels=32)


def noise(path: Path, rate: int, seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(round(rate * seconds)) / rate
    wave = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave, rate, subtype="FLOAT")
    return wave


def test_a_segment_at_the_file_rate_is_exactly_its_samples(tmp_path: Path) -> None:
    wave = noise(tmp_path / "a.wav", 16000, 2.0)
    decoded = decode(tmp_path / "a.wav", 16000, start=0.25, end=0.75)
    np.testing.assert_array_equal(decoded.wave, wave[4000:12000])
    assert decoded.status == "ok" and decoded.seconds == 0.5
    np.testing.assert_array_equal(decode(tmp_path / "a.wav", 16000, start=1.5).wave, wave[24000:])
    np.testing.assert_array_equal(decode(tmp_path / "a.wav", 16000, end=0.5).wave, wave[:8000])


def test_a_resampled_segment_matches_the_resampled_file_inside_its_edges(tmp_path: Path) -> None:
    """Frames round(start * 44100) .. round(end * 44100), resampled alone: equal to the same stretch of
    the whole file's resampled wave (to float32 rounding) except within the resampler's filter length
    of either edge (measured: 64 samples at 16 kHz); 100 samples are left out at each side."""
    noise(tmp_path / "b.wav", 44100, 3.0)
    whole = decode(tmp_path / "b.wav", 16000).wave
    segment = decode(tmp_path / "b.wav", 16000, start=1.0, end=2.0).wave
    assert segment.size == 16000
    np.testing.assert_allclose(segment[100:-100], whole[16100:31900], atol=1e-6)


def test_the_rules_apply_to_the_segment(tmp_path: Path) -> None:
    noise(tmp_path / "c.wav", 16000, 2.0)
    with pytest.raises(
        UnusableAudio, match=r"segment 2\.5-3 s: no samples in it \(the file is 2\.000 s long\)"
    ) as info:
        decode(tmp_path / "c.wav", 16000, start=2.5, end=3.0)
    assert info.value.kind == EMPTY
    past = decode(tmp_path / "c.wav", 16000, start=1.0, end=2.5)  # 0.5 s past the end: kept, flagged
    assert past.flags == ("truncated",) and past.wave.size == 16000
    assert "segment 1-2.5 s: decoded 16000 of 24000 frames the segment spans" in past.reason
    cut = decode(tmp_path / "c.wav", 16000, AudioRules(max_seconds=0.5, fill_seconds=0.5), start=0.5, end=1.5)
    assert cut.flags == ("cut",) and cut.wave.size == 8000


def _clips(tmp_path: Path, end: float = 0.75) -> pd.DataFrame:
    noise(tmp_path / "long.wav", 16000, 2.0)
    piece = decode(tmp_path / "long.wav", 16000, start=0.25, end=end).wave
    sf.write(tmp_path / "piece.wav", piece, 16000, subtype="FLOAT")  # the segment as a file of its own
    return pd.DataFrame(
        {
            "clip_id": ["seg", "piece", "whole"],
            "path": ["long.wav", "piece.wav", "long.wav"],
            "split": ["train", "train", "test"],
            "start": [0.25, np.nan, np.nan],
            "end": [end, np.nan, np.nan],
        }
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_the_cache_holds_the_segment_s_frames(tmp_path: Path, workers: int) -> None:
    cache = FeatureCache(build_cache(_clips(tmp_path), tmp_path, CFG, workers=workers))
    np.testing.assert_array_equal(cache.get("seg"), cache.get("piece"))
    assert cache.get("seg").shape == (n_frames(8000, CFG), 32)
    assert cache.get("whole").shape == (n_frames(32000, CFG), 32)


def test_a_changed_segment_rebuilds_the_cache(tmp_path: Path) -> None:
    first = build_cache(_clips(tmp_path), tmp_path, CFG, workers=1)
    before = read_manifest(first)["clips_hash"]
    clips = _clips(tmp_path, end=1.25)
    clips["path"] = ["long.wav", "piece_old.wav", "long.wav"]  # the piece file changed: set it aside
    (tmp_path / "piece_old.wav").write_bytes((tmp_path / "piece.wav").read_bytes())
    rebuilt = build_cache(clips, tmp_path, CFG, workers=1)
    assert read_manifest(rebuilt)["clips_hash"] != before
    assert FeatureCache(rebuilt).get("seg").shape[0] == n_frames(16000, CFG)


def test_whole_file_clips_hash_as_before_segments_existed(tmp_path: Path) -> None:
    clips = _clips(tmp_path).iloc[1:].reset_index(drop=True)  # whole files only
    without = _order_hash(_clip_order(clips[["clip_id", "path", "split"]]), CFG, AudioRules(), tmp_path)
    with_nan = _order_hash(_clip_order(clips), CFG, AudioRules(), tmp_path)
    assert without == with_nan
    shifted = clips.assign(start=[0.0, np.nan])
    assert _order_hash(_clip_order(shifted), CFG, AudioRules(), tmp_path) != without
