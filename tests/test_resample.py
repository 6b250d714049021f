"""``data/resample.py`` (``features.resampler: sinc``) against soxr, the independent library it stands
in for, and the feature cache built with it: its own key, the same clips, log-mels within 0.1 dB
(0.3 dB in a top mel band that reaches the Nyquist frequency)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soxr
import torch

from audiotag.config.schema import FeatureConfig
from audiotag.data import resample as rs
from audiotag.data.audio import decode
from audiotag.data.cache_build import build_cache
from audiotag.data.cache_reader import FeatureCache
from audiotag.data.features import compute_logmel
from tests.test_cache import CFG, copy_competition
from tests.test_cache_threads import assert_same_cache, problem_clips

SINC = CFG.model_copy(update={"resampler": "sinc"})
PAIRS = [(44100, 32000), (48000, 16000), (22050, 32000), (16000, 32000), (8000, 16000), (11025, 16000)]


def tones(rate: int, seconds: float, freqs: list[float], seed: int = 0) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    phases = np.random.default_rng(seed).uniform(0, 2 * np.pi, len(freqs))
    waves = (0.2 * np.sin(2 * np.pi * f * t + p) for f, p in zip(freqs, phases, strict=True))
    return sum(waves).astype(np.float32)


def ours(x: np.ndarray, old: int, new: int) -> np.ndarray:
    return rs.resample(torch.from_numpy(x), old, new).numpy()


@pytest.mark.parametrize("old, new", [*PAIRS, (32000, 16000), (44100, 22050)])
def test_output_length_is_soxrs(old: int, new: int) -> None:
    for n in (1, 2, 3, 5, 99, 441, 1000, 4411, 33333):
        x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
        want = len(soxr.resample(x, old, new, "HQ"))
        assert rs.output_length(n, old, new) == want, n
        assert len(ours(x, old, new)) == want, n


@pytest.mark.parametrize("old, new", PAIRS)
def test_passband_tones_match_soxr(old: int, new: int) -> None:
    low = min(old, new) / 2
    x = tones(old, 0.5, [440.0, 0.3 * low, 0.8 * low])  # 0.8 of the lower Nyquist: inside both passbands
    got, want = ours(x, old, new), soxr.resample(x, old, new, "HQ")
    inner = slice(len(want) // 8, -len(want) // 8)  # away from the ends, where the filters' edges differ
    # soxr HQ allows 0.01 dB of passband roll-off (1.2e-3 of the amplitude): ours is flat to 1e-5
    assert np.max(np.abs(got[inner] - want[inner])) < 2e-4
    assert abs(np.sqrt(np.mean(got[inner] ** 2)) / np.sqrt(np.mean(x**2)) - 1) < 1e-3


@pytest.mark.parametrize("old, new", [(44100, 32000), (48000, 16000)])
def test_stopband_is_rejected(old: int, new: int) -> None:
    """A tone above the new Nyquist frequency must not alias into the output."""
    x = tones(old, 0.5, [0.55 * new, 0.9 * old / 2])
    got = ours(x, old, new)
    inner = got[len(got) // 8 : -len(got) // 8]
    ratio_db = 20 * np.log10(np.sqrt(np.mean(inner**2)) / np.sqrt(np.mean(x**2)))
    assert ratio_db < -100, ratio_db


def test_polyphase_and_direct_paths_agree() -> None:
    """The two ways of applying the filter (a rate whose ratio does not reduce takes the direct one)."""
    x = np.random.default_rng(1).standard_normal(22050).astype(np.float32) * 0.1
    t = torch.from_numpy(x)[None]
    n = rs.output_length(x.size, 44100, 32000)
    poly = rs.resample(t, 44100, 32000)
    direct = rs._direct(t, 44100, 32000, n)
    assert rs._polyphase(44100, 32000) is not None
    assert torch.max(torch.abs(poly - direct)) < 1e-6
    assert rs._polyphase(44099, 32000) is None  # 32000 phases: the dense kernel would be too large
    odd = ours(x[:4410], 44099, 32000)
    want = soxr.resample(x[:4410], 44099, 32000, "HQ")
    assert odd.shape == want.shape
    assert np.sqrt(np.mean((odd - want)[200:-200] ** 2)) < 1e-3  # white noise: transition bands differ


def test_batch_rows_are_resampled_alone() -> None:
    x = torch.from_numpy(np.random.default_rng(2).standard_normal((3, 5000)).astype(np.float32))
    batch = rs.resample(x, 48000, 32000)
    for row in range(3):
        torch.testing.assert_close(batch[row], rs.resample(x[row], 48000, 32000), rtol=0, atol=1e-6)
    assert rs.resample(x, 32000, 32000) is x


def test_log_mel_of_noise_within_a_tenth_of_a_db_of_soxrs() -> None:
    """White noise fills the filters' transition bands: the worst case for the two resamplers."""
    cfg = FeatureConfig(sample_rate=32000, n_fft=1024, hop_length=320, n_mels=64, fmin=50, fmax=14000)
    x = (np.random.default_rng(3).standard_normal(44100 * 2) * 0.1).astype(np.float32)
    a = compute_logmel(soxr.resample(x, 44100, 32000, "HQ"), cfg)
    b = compute_logmel(ours(x, 44100, 32000), cfg)
    assert a.shape == b.shape
    assert np.max(np.abs(a - b)[2:-2]) < 0.1  # dB; the first and last frames see the ends


def test_decode_without_resampling_keeps_the_source_rate(tmp_path: Path) -> None:
    root = tmp_path / "c"
    clips = problem_clips(root)
    path = clips.loc[clips["clip_id"] == "clip09", "path"].iloc[0]  # 22.05 kHz
    full = decode(root / path, 16000)
    raw = decode(root / path, 16000, resample=False)
    assert (full.rate, raw.rate, raw.source_rate) == (16000, 22050, 22050)
    assert raw.wave.size == round(full.seconds * 22050) and raw.status == full.status


def test_sinc_is_a_feature_setting_with_its_own_cache_key() -> None:
    assert SINC.key() != CFG.key()
    assert CFG.model_copy(update={"resampler": "soxr_hq"}).key() == CFG.key()  # the default: old keys stay
    with pytest.raises(ValueError):
        FeatureConfig(resampler="linear")


@pytest.fixture(scope="module")
def caches(module_tmp: Path) -> tuple[Path, pd.DataFrame, Path, Path]:
    root = module_tmp / "competition"
    root.mkdir()
    clips = problem_clips(root)
    return root, clips, build_cache(clips, root, CFG, workers=1), build_cache(clips, root, SINC, workers=2)


def test_cache_with_sinc_matches_soxrs_within_a_tenth_of_a_db(caches: tuple) -> None:
    _, _, soxr_dir, sinc_dir = caches
    assert soxr_dir != sinc_dir and soxr_dir.parent == sinc_dir.parent  # two caches side by side
    a, b = FeatureCache(soxr_dir), FeatureCache(sinc_dir)
    assert a.skipped == b.skipped == ["clip05"] and b.status("clip03") == "zero_filled"
    assert a.report().equals(b.report())
    for clip in a.clip_ids:
        x, y = a.get(clip).astype(np.float32), b.get(clip).astype(np.float32)
        assert x.shape == y.shape, clip
        # dB; one float16 step is 0.03 at -40 dB. The top mel band (fmax is the Nyquist frequency
        # here) reaches into the 91.3-100 % transition band, where the two filters' shapes differ,
        # and the first and last frames see how each handles the clip's ends.
        assert np.max(np.abs(x - y)[2:-2, :-1], initial=0) < 0.1, clip
        assert np.max(np.abs(x - y)) < 0.3, clip


def test_sinc_through_threads_gives_the_pools_cache(caches: tuple, tmp_path: Path) -> None:
    root, clips, _, sinc_dir = caches
    comp = copy_competition(root, tmp_path)
    got = build_cache(clips, comp, SINC, workers=2, device="cpu")
    assert_same_cache(got, sinc_dir)


def test_wave_cache_with_sinc(tmp_path: Path) -> None:
    clips = problem_clips(tmp_path / "a")
    cfg = FeatureConfig(cache="wave", resampler="sinc")
    want = build_cache(clips, tmp_path / "a", cfg, workers=1)
    got = build_cache(clips, copy_competition(tmp_path / "a", tmp_path / "b"), cfg, workers=2, device="cpu")
    assert_same_cache(got, want)
    soxr_wave = FeatureCache(build_cache(clips, tmp_path / "a", FeatureConfig(cache="wave"), workers=1))
    sinc_wave = FeatureCache(want)
    x, y = (c.get("clip00").astype(np.float32)[:, 0] for c in (soxr_wave, sinc_wave))
    assert x.shape == y.shape and np.sqrt(np.mean((x - y) ** 2)) < 1e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_sinc_on_cuda_matches_the_cpu() -> None:
    """cuDNN's TF32 is off for the resampler: the GPU result is the CPU's up to float rounding."""
    x = torch.from_numpy(np.random.default_rng(4).standard_normal((2, 44100)).astype(np.float32))
    for old, new in [(44100, 32000), (44099, 32000), (16000, 32000)]:
        cpu = rs.resample(x, old, new)
        gpu = rs.resample(x.cuda(), old, new).cpu()
        assert torch.max(torch.abs(cpu - gpu)) < 1e-5, (old, new)
