"""Changed data is rebuilt even when copied with its old mtimes (``cp -p``, ``rsync -a``, ``tar``):
the clip table is stamped with the CSV files' contents, the cache with the audio files' fingerprints."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from audiotag.competitions import Competition, get_competition
from audiotag.config.files import configs_root
from audiotag.core.errors import DataError
from audiotag.data import cache_build as cache_mod
from audiotag.data.cache_build import build_cache
from audiotag.data.cache_reader import FeatureCache
from audiotag.data.fingerprint import audio_fingerprint
from audiotag.runs.prepare import clip_table
from audiotag.train.experiment import load_experiment
from tests.conftest import TINY_DEMO
from tests.test_cache import CFG, expected, write_clips


@pytest.fixture
def demo(workspace: Path) -> Competition:
    cfg = load_experiment(configs_root() / "experiments" / "demo" / "cnn_small.yaml", TINY_DEMO)
    comp = get_competition(cfg.competition)
    comp.obtain()
    return comp


def test_csv_replaced_by_an_older_copy_rebuilds_the_table(
    demo: Competition, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    table = clip_table(demo)
    csv = demo.raw_dir / "train.csv"
    rows = pd.read_csv(csv)
    n_train = int((table["split"] == "train").sum())
    assert n_train == len(rows)
    # `cp -p` of an older version listing 3 clips fewer: its mtime is a day older than meta.parquet
    older = tmp_path / "train_old.csv"
    rows.iloc[:-3].to_csv(older, index=False)
    day_ago = demo.meta_path.stat().st_mtime_ns - 86_400 * 10**9
    os.utime(older, ns=(day_ago, day_ago))
    os.replace(older, csv)
    assert csv.stat().st_mtime < demo.meta_path.stat().st_mtime
    with caplog.at_level(logging.INFO, logger="audiotag.runs.prepare"):
        rebuilt = clip_table(demo)
    assert "the contents of the raw CSV files changed since" in caplog.text
    assert "up to date" not in caplog.text
    assert int((rebuilt["split"] == "train").sum()) == n_train - 3
    assert len(pd.read_parquet(demo.meta_path)) == len(table) - 3
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="audiotag.runs.prepare"):
        clip_table(demo)
    assert "up to date" in caplog.text  # and unchanged contents are not rebuilt again


def test_audio_replaced_with_the_same_size_and_mtime_rebuilds_the_cache(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clips = write_clips(tmp_path)
    first = build_cache(clips, tmp_path, CFG, workers=1)
    path = tmp_path / "audio" / "clip03.wav"
    before = path.stat()
    old = FeatureCache(first).get("clip03").copy()
    data, sr = sf.read(str(path), dtype="float32")
    sf.write(str(path), np.roll(data, len(data) // 3)[::-1] * 0.5, sr, subtype="PCM_16")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    with caplog.at_level(logging.INFO, logger="audiotag.data.cache_build"):
        second = build_cache(clips, tmp_path, CFG, workers=1)
    assert second == first and "up to date" not in caplog.text and "from scratch" in caplog.text
    new = FeatureCache(second).get("clip03")
    assert not np.array_equal(new, old)
    np.testing.assert_array_equal(new, expected(tmp_path, "audio/clip03.wav"))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="audiotag.data.cache_build"):
        build_cache(clips, tmp_path, CFG, workers=1)
    assert "up to date" in caplog.text


def test_audio_fingerprint_samples_large_files(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    size = 1 << 20
    path.write_bytes(bytes(size))
    stamp = (10**18, 10**18)
    os.utime(path, ns=stamp)
    base = audio_fingerprint(path)
    assert base.startswith(f"{size}:{10**18}:")
    for at in (10, size // 2, size - 10):  # first, middle and last 64 KiB are hashed
        with open(path, "r+b") as f:
            f.seek(at)
            f.write(b"\x01")
        os.utime(path, ns=stamp)
        assert audio_fingerprint(path) != base
        with open(path, "r+b") as f:
            f.seek(at)
            f.write(b"\x00")
        os.utime(path, ns=stamp)
        assert audio_fingerprint(path) == base
    assert audio_fingerprint(tmp_path / "absent.wav") == "missing"


def test_full_disk_writing_the_clip_table(demo: Competition, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_space(self: pd.DataFrame, *args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pd.DataFrame, "to_parquet", no_space)
    with pytest.raises(DataError) as err:
        clip_table(demo)
    message = str(err.value)
    assert f"no space left on the device while writing the clip table in {demo.dir}" in message
    assert message.startswith("the disk is full: ")
    assert "it needs about" in message and "run the same command again" in message
    assert not demo.meta_path.exists()
    monkeypatch.undo()
    assert len(clip_table(demo)) > 0


def test_fingerprint_is_part_of_the_clip_list_hash(tmp_path: Path) -> None:
    clips = write_clips(tmp_path)
    order = cache_mod._clip_order(clips)
    rules = cache_mod.DEFAULT_RULES
    first = cache_mod._order_hash(order, CFG, rules, tmp_path)
    assert cache_mod._order_hash(order, CFG, rules, tmp_path) == first
    path = tmp_path / "audio" / "clip05.wav"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert cache_mod._order_hash(order, CFG, rules, tmp_path) != first


def test_audio_replaced_in_place_rebuilds_the_clip_table_too(
    demo: Competition, caplog: pytest.LogCaptureFixture
) -> None:
    """The clip table's durations follow the audio, noticed by the fingerprint the cache uses."""
    table = clip_table(demo)
    row = table[table["split"] == "train"].iloc[0]
    path = demo.dir / row["path"]
    before = path.stat()
    data, sr = sf.read(str(path), dtype="float32")
    sf.write(str(path), data[: len(data) // 2], sr, subtype="PCM_16")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    with caplog.at_level(logging.INFO, logger="audiotag.runs.prepare"):
        rebuilt = clip_table(demo)
    assert "audio files changed since" in caplog.text and "up to date" not in caplog.text
    duration = rebuilt.set_index("clip_id").loc[row["clip_id"], "duration"]
    assert duration == pytest.approx(row["duration"] / 2, abs=1 / sr)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="audiotag.runs.prepare"):
        clip_table(demo)
    assert "up to date" in caplog.text
