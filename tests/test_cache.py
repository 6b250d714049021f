"""The feature cache: build (parallel, idempotent, resumable), read through a memory map, errors."""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from audiotag.config import FeatureConfig
from audiotag.data import cache as cache_mod
from audiotag.data.audio import load_audio
from audiotag.data.cache import FeatureCache, build_cache, cache_dir_for
from audiotag.data.features import compute_logmel
from audiotag.errors import DataError

CFG = FeatureConfig()
N_CLIPS = 12


def write_clips(root: Path) -> pd.DataFrame:
    """12 short clips: mono and stereo at 44.1 kHz, mono at 22.05 kHz, one shorter than n_fft."""
    rng = np.random.default_rng(123)
    rows = []
    for i in range(N_CLIPS):
        sr = 22050 if i in (9, 10) else 44100
        n = 300 if i == 11 else int(sr * rng.uniform(0.2, 1.2))
        t = np.arange(n) / sr
        mono = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 4000) * t) + 0.05 * rng.standard_normal(n)
        data = np.stack([mono, rng.standard_normal(n) * 0.1], axis=1) if i in (6, 7, 8) else mono
        rel = f"audio/clip{i:02d}.wav"
        (root / "audio").mkdir(parents=True, exist_ok=True)
        sf.write(str(root / rel), data.astype(np.float32), sr, subtype="PCM_16")
        rows.append((f"clip{i:02d}", rel))
    rows = [rows[i] for i in rng.permutation(N_CLIPS)]  # the cache sorts by clip_id itself
    return pd.DataFrame(rows, columns=["clip_id", "path"])


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame, Path]:
    root = tmp_path_factory.mktemp("competition")
    clips = write_clips(root)
    return root, clips, build_cache(clips, root, CFG, workers=2)


def expected(root: Path, rel: str, cfg: FeatureConfig = CFG) -> np.ndarray:
    return compute_logmel(load_audio(root / rel, cfg.sample_rate), cfg).astype(np.float16)


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_build_matches_direct_computation(built: tuple[Path, pd.DataFrame, Path]) -> None:
    root, clips, cache_dir = built
    assert cache_dir == cache_dir_for(root, CFG)
    assert not cache_dir.with_name(cache_dir.name + ".partial").exists()
    assert sorted(p.name for p in cache_dir.iterdir()) == ["frames.f16", "index.parquet", "manifest.json"]
    cache = FeatureCache(cache_dir)
    assert len(cache) == N_CLIPS and cache.clip_ids == sorted(clips["clip_id"])
    assert cache.n_mels == CFG.n_mels and cache.config == CFG
    for clip_id, rel in zip(clips["clip_id"], clips["path"], strict=True):
        assert clip_id in cache
        got = cache.get(clip_id)
        assert got.dtype == np.float16 and got.shape == (cache.n_frames(clip_id), CFG.n_mels)
        np.testing.assert_array_equal(got, expected(root, rel))
    assert "nope" not in cache
    with pytest.raises(KeyError, match="nope"):
        cache.get("nope")


def test_layout_is_contiguous(built: tuple[Path, pd.DataFrame, Path]) -> None:
    _, _, cache_dir = built
    index = pd.read_parquet(cache_dir / "index.parquet")
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    lengths = index["n_frames"].to_numpy()
    np.testing.assert_array_equal(index["offset"].to_numpy(), np.cumsum(lengths) - lengths)
    assert manifest["complete"] is True and manifest["key"] == CFG.key()
    assert manifest["n_clips"] == N_CLIPS and manifest["total_frames"] == lengths.sum()
    assert manifest["bytes"] == lengths.sum() * CFG.n_mels * 2 == (cache_dir / "frames.f16").stat().st_size
    assert index.loc[index["clip_id"] == "clip11", "n_frames"].item() == 1  # 300 samples at 44.1 kHz


def test_second_build_is_a_no_op(
    built: tuple[Path, pd.DataFrame, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    root, clips, cache_dir = built
    before = mtimes(cache_dir)
    monkeypatch.setattr(cache_mod, "_fill", lambda *a, **k: pytest.fail("recomputed an up-to-date cache"))
    with caplog.at_level(logging.INFO, logger="audiotag.data.cache"):
        assert build_cache(clips.iloc[::-1], root, CFG, workers=2) == cache_dir
    assert "up to date" in caplog.text
    assert mtimes(cache_dir) == before


def test_key_changes_with_a_setting(built: tuple[Path, pd.DataFrame, Path]) -> None:
    root, clips, cache_dir = built
    before = mtimes(cache_dir)
    cfg = FeatureConfig(n_mels=32)
    other = build_cache(clips.iloc[:3], root, cfg, workers=1)
    assert other != cache_dir and other == cache_dir_for(root, cfg)
    assert FeatureCache(other).n_mels == 32 and len(FeatureCache(other)) == 3
    assert mtimes(cache_dir) == before


def test_changed_clip_list_rebuilds(tmp_path: Path) -> None:
    clips = write_clips(tmp_path)
    first = build_cache(clips.iloc[:4], tmp_path, CFG, workers=1)
    second = build_cache(clips.iloc[:6], tmp_path, CFG, workers=1)
    assert first == second and len(FeatureCache(second)) == 6


def copy_competition(src: Path, dst: Path) -> Path:
    shutil.copytree(src / "audio", dst / "audio")
    return dst


def test_bad_file_names_it_and_resumes(
    built: tuple[Path, pd.DataFrame, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, clips, clean_dir = built
    comp = copy_competition(root, tmp_path)
    good = (comp / "audio/clip05.wav").read_bytes()
    (comp / "audio/clip05.wav").write_bytes(b"not audio at all")
    with pytest.raises(DataError, match=r"clip05\.wav"):
        build_cache(clips, comp, CFG, workers=2)
    final = cache_dir_for(comp, CFG)
    staging = final.with_name(final.name + ".partial")
    assert not final.exists()
    assert json.loads((staging / "progress.json").read_text())["n_done"] == 5

    (comp / "audio/clip05.wav").write_bytes(good)
    with caplog.at_level(logging.INFO, logger="audiotag.data.cache"):
        build_cache(clips, comp, CFG, workers=2)
    assert "resuming after 5 clips" in caplog.text
    assert not staging.exists()
    assert (final / "frames.f16").read_bytes() == (clean_dir / "frames.f16").read_bytes()
    assert pd.read_parquet(final / "index.parquet").equals(pd.read_parquet(clean_dir / "index.parquet"))


KILLED_BUILD = """
    import os, signal, sys
    from pathlib import Path
    import pandas as pd
    from audiotag.config import FeatureConfig
    from audiotag.data import cache

    cache.CHECKPOINT_EVERY = 3
    append = cache._Writer.append
    calls = 0

    def append_then_die(self, frames):
        global calls
        append(self, frames)
        calls += 1
        if calls == 7:  # clip 7 is written but not yet recorded in progress.json
            self.frames.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    cache._Writer.append = append_then_die
    root = Path(sys.argv[1])
    cache.build_cache(pd.read_parquet(root / "clips.parquet"), root, FeatureConfig(), workers=1)
"""


def test_resume_after_sigkill(built: tuple[Path, pd.DataFrame, Path], tmp_path: Path) -> None:
    root, clips, _ = built
    killed = copy_competition(root, tmp_path / "killed")
    clean = copy_competition(root, tmp_path / "clean")
    clips.to_parquet(killed / "clips.parquet")
    script = tmp_path / "killed_build.py"
    script.write_text(textwrap.dedent(KILLED_BUILD))
    proc = subprocess.run([sys.executable, str(script), str(killed)], capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]

    staging = cache_dir_for(killed, CFG).with_name(cache_dir_for(killed, CFG).name + ".partial")
    progress = json.loads((staging / "progress.json").read_text())
    assert progress["n_done"] == 6
    assert (staging / "frames.f16").stat().st_size > progress["bytes"]  # the unrecorded 7th clip

    resumed = build_cache(clips, killed, CFG, workers=1)
    reference = build_cache(clips, clean, CFG, workers=1)
    for name in ("frames.f16", "index.parquet"):
        assert (resumed / name).read_bytes() == (reference / name).read_bytes(), name


def test_missing_or_incomplete_cache(built: tuple[Path, pd.DataFrame, Path], tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"run \./run\.sh prepare"):
        FeatureCache(tmp_path / "nothing")
    partial = tmp_path / "partial"
    shutil.copytree(built[2], partial)
    manifest = json.loads((partial / "manifest.json").read_text())
    (partial / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(DataError, match="incomplete"):
        FeatureCache(partial)
    (partial / "manifest.json").write_text(json.dumps(manifest))
    with open(partial / "frames.f16", "r+b") as f:
        f.truncate(100)
    with pytest.raises(DataError, match=r"frames\.f16"):
        FeatureCache(partial)


def test_pickle_round_trip(built: tuple[Path, pd.DataFrame, Path]) -> None:
    cache = FeatureCache(built[2])
    before = {c: np.array(cache.get(c)) for c in cache.clip_ids}
    blob = pickle.dumps(cache)
    assert len(blob) < 20_000  # the frames are not in the pickle
    clone = pickle.loads(blob)
    assert clone.clip_ids == cache.clip_ids
    for clip_id, frames in before.items():
        np.testing.assert_array_equal(clone.get(clip_id), frames)
    assert isinstance(clone.frames, np.memmap) and not clone.frames.flags.writeable


def test_duplicate_clip_ids_rejected(tmp_path: Path) -> None:
    clips = pd.DataFrame({"clip_id": ["a", "a"], "path": ["x.wav", "y.wav"]})
    with pytest.raises(DataError, match="more than once"):
        build_cache(clips, tmp_path, CFG, workers=1)
    assert not (tmp_path / "cache").exists()


def test_staging_for_other_clips_is_discarded(tmp_path: Path) -> None:
    clips = write_clips(tmp_path)
    final = cache_dir_for(tmp_path, CFG)
    staging = final.with_name(final.name + ".partial")
    staging.mkdir(parents=True)
    (staging / "progress.json").write_text(json.dumps({"order_hash": "other", "n_done": 3, "bytes": 10}))
    (staging / "frames.f16").write_bytes(os.urandom(1000))
    cache = FeatureCache(build_cache(clips.iloc[:2], tmp_path, CFG, workers=1))
    for clip_id, rel in zip(clips["clip_id"][:2], clips["path"][:2], strict=True):
        np.testing.assert_array_equal(cache.get(clip_id), expected(tmp_path, rel))
