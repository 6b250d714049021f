"""The feature cache: build (parallel, streaming, idempotent, resumable), problem audio, reading, errors."""

from __future__ import annotations

import errno
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

from audiotag.config.schema import AudioRules, FeatureConfig
from audiotag.core.errors import DataError
from audiotag.data import cache_build as cache_mod
from audiotag.data import cache_compute
from audiotag.data.audio import load_audio
from audiotag.data.cache_build import build_cache
from audiotag.data.cache_reader import FeatureCache, cache_dir_for
from audiotag.data.features import compute_logmel, n_frames
from audiotag.runs.prepare import report_cache

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
def built(module_tmp: Path) -> tuple[Path, pd.DataFrame, Path]:
    root = module_tmp / "competition"
    root.mkdir()
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
    names = sorted(p.name for p in cache_dir.iterdir())
    assert names == ["frames.f16", "index.parquet", "manifest.json", "report.csv"]
    cache = FeatureCache(cache_dir)
    assert len(cache) == N_CLIPS and cache.clip_ids == sorted(clips["clip_id"])
    assert cache.status_counts == {"ok": N_CLIPS} and cache.skipped == [] and cache.report().empty
    assert cache.n_mels == CFG.n_mels and cache.config == CFG
    for clip_id, rel in zip(clips["clip_id"], clips["path"], strict=True):
        assert clip_id in cache and cache.has(clip_id) and cache.status(clip_id) == "ok"
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
    assert list(index.columns) == ["clip_id", "offset", "n_frames", "status", "source_rate", "seconds"]
    rates = dict(zip(index["clip_id"], index["source_rate"], strict=True))
    assert rates["clip09"] == rates["clip10"] == 22050 and rates["clip00"] == 44100
    assert manifest["n_listed"] == N_CLIPS and manifest["status_counts"] == {"ok": N_CLIPS}
    assert manifest["audio_rules"] == AudioRules().model_dump()


def test_second_build_is_a_no_op(
    built: tuple[Path, pd.DataFrame, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    root, clips, cache_dir = built
    before = mtimes(cache_dir)
    monkeypatch.setattr(cache_mod, "_fill", lambda *a, **k: pytest.fail("recomputed an up-to-date cache"))
    with caplog.at_level(logging.INFO, logger="audiotag.data.cache_build"):
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


def test_unusable_train_clip_is_skipped_and_reported(
    built: tuple[Path, pd.DataFrame, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, clips, clean_dir = built
    comp = copy_competition(root, tmp_path)
    (comp / "audio/clip05.wav").write_bytes(b"not audio at all")
    (comp / "audio/clip07.wav").unlink()
    with caplog.at_level(logging.INFO, logger="audiotag.data.cache_build"):
        cache = FeatureCache(build_cache(clips, comp, CFG, workers=1))
    assert "2 train clip(s) skipped" in caplog.text and "report.csv" in caplog.text
    assert len(cache) == N_CLIPS - 2 and not cache.has("clip05") and not cache.has("clip07")
    assert sorted(cache.skipped) == ["clip05", "clip07"]
    assert report_cache(cache.cache_dir) == {"clip05", "clip07"}  # Prepared.skipped, for training
    assert cache.status_counts == {"ok": N_CLIPS - 2, "skipped": 2}
    report = cache.report().set_index("clip_id")
    assert list(report.index) == ["clip05", "clip07"] and set(report["status"]) == {"skipped"}
    assert report.loc["clip05", "reason"].startswith("undecodable: cannot decode audio")
    assert report.loc["clip07", "reason"] == "missing: audio file not found"
    assert report.loc["clip05", "path"] == "audio/clip05.wav" and report.loc["clip05", "split"] == "train"
    with pytest.raises(KeyError, match=r"clip05.*report\.csv"):
        cache.get("clip05")
    reference = FeatureCache(clean_dir)
    for clip_id in cache.clip_ids:
        np.testing.assert_array_equal(cache.get(clip_id), reference.get(clip_id))


def test_unusable_test_clip_is_zero_filled(tmp_path: Path) -> None:
    clips = write_clips(tmp_path).assign(split="train", audio_issue="")
    clips.loc[clips["clip_id"] == "clip03", ["split", "audio_issue"]] = ["test", "known empty file"]
    clips.loc[clips["clip_id"] == "clip04", "split"] = "test"
    clips.loc[clips["clip_id"] == "clip08", "audio_issue"] = "mislabeled"
    sf.write(str(tmp_path / "audio/clip03.wav"), np.zeros(0, np.float32), 44100)
    sf.write(str(tmp_path / "audio/clip02.wav"), np.zeros(4410, np.float32), 44100)
    cache = FeatureCache(build_cache(clips, tmp_path, CFG, workers=1))
    assert len(cache) == N_CLIPS and cache.skipped == []
    assert cache.status("clip03") == "zero_filled" and cache.status("clip02") == "silent"
    assert cache.status("clip04") == "ok"
    assert cache.status_counts == {"ok": N_CLIPS - 2, "silent": 1, "zero_filled": 1}
    fill = cache.get("clip03")
    assert fill.shape == (n_frames(CFG.sample_rate, CFG), CFG.n_mels) and (fill == np.float16(-100)).all()
    report = cache.report().set_index("clip_id")
    assert list(report.index) == ["clip02", "clip03", "clip08"]
    assert report.loc["clip03", "reason"] == "empty: audio file is empty (0 samples)"
    assert report.loc["clip03", "audio_issue"] == "known empty file"
    assert report.loc["clip08", "status"] == "ok" and report.loc["clip08", "audio_issue"] == "mislabeled"
    assert report.loc["clip02", "reason"].startswith("silent: peak amplitude 0")


def test_split_and_rules_are_part_of_the_clip_list(tmp_path: Path) -> None:
    clips = write_clips(tmp_path).iloc[:3].assign(split="train")
    first = build_cache(clips, tmp_path, CFG, workers=1)
    created = json.loads((first / "manifest.json").read_text())["clips_hash"]
    assert build_cache(clips.assign(audio_issue="x"), tmp_path, CFG, workers=1) == first  # report only
    assert json.loads((first / "manifest.json").read_text())["clips_hash"] == created
    build_cache(clips.assign(split="test"), tmp_path, CFG, workers=1)
    second = json.loads((first / "manifest.json").read_text())["clips_hash"]
    build_cache(clips.assign(split="test"), tmp_path, CFG, workers=1, rules=AudioRules(max_seconds=5))
    third = json.loads((first / "manifest.json").read_text())["clips_hash"]
    assert len({created, second, third}) == 3


def test_no_usable_clip_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "audio").mkdir()
    for name in ("a", "b"):
        (tmp_path / f"audio/{name}.wav").write_bytes(b"")
    clips = pd.DataFrame({"clip_id": ["a", "b"], "path": ["audio/a.wav", "audio/b.wav"], "split": "test"})
    with pytest.raises(DataError, match=r"none of the 2 clips has usable audio.*a\.wav: empty"):
        build_cache(clips, tmp_path, CFG, workers=1)
    final = cache_dir_for(tmp_path, CFG)
    assert not final.exists() and not final.with_name(final.name + ".partial").exists()


@pytest.mark.parametrize("device", [None, "cpu"], ids=["worker processes", "threads (--cache-device cpu)"])
def test_interrupted_build_resumes(
    built: tuple[Path, pd.DataFrame, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    device: str | None,
) -> None:
    """Stopped after 5 clips, then run again (the threads design resuming too): the same cache."""
    root, clips, clean_dir = built
    comp = copy_competition(root, tmp_path)
    append = cache_mod._Writer.append

    def append_then_stop(self: cache_mod._Writer, result: cache_compute.ClipResult) -> None:
        if self.n_done == 5:
            raise KeyboardInterrupt
        append(self, result)

    monkeypatch.setattr(cache_mod._Writer, "append", append_then_stop)
    with pytest.raises(KeyboardInterrupt):
        build_cache(clips, comp, CFG, workers=2, device=device)
    final = cache_dir_for(comp, CFG)
    staging = final.with_name(final.name + ".partial")
    assert not final.exists()
    assert json.loads((staging / "progress.json").read_text())["n_done"] == 5

    monkeypatch.setattr(cache_mod._Writer, "append", append)
    with caplog.at_level(logging.INFO, logger="audiotag.data.cache_build"):
        build_cache(clips, comp, CFG, workers=1 if device is None else 2, device=device)
    assert "resuming after 5 clips" in caplog.text
    assert not staging.exists()
    assert (final / "frames.f16").read_bytes() == (clean_dir / "frames.f16").read_bytes()
    assert pd.read_parquet(final / "index.parquet").equals(pd.read_parquet(clean_dir / "index.parquet"))


def crash_on_marker(tasks: list[tuple[str, bool]]) -> list[cache_compute.ClipResult]:
    """A worker function that dies like a crashing decoder on any file named *crash*."""
    if any("crash" in Path(path).name for path, _ in tasks):
        os._exit(3)
    return cache_compute._worker_chunk(tasks)


@pytest.mark.soak
def test_a_crashing_worker_is_contained(built: tuple[Path, pd.DataFrame, Path]) -> None:
    root, _, clean_dir = built
    reference = FeatureCache(clean_dir)
    tasks = [(str(root / "audio" / f"clip{i:02d}.wav"), False) for i in range(N_CLIPS)]
    tasks[4] = (str(root / "audio/crash_train.wav"), False)
    tasks[9] = (str(root / "audio/crash_test.wav"), True)
    results = list(cache_compute._compute_parallel(tasks, CFG, AudioRules(), 2, run_chunk=crash_on_marker))
    assert [r.status for r in results] == ["ok"] * 4 + ["skipped"] + ["ok"] * 4 + ["zero_filled"] + ["ok"] * 2
    assert results[4].reason == results[9].reason == "undecodable: decoding it crashed the worker process"
    for i, result in enumerate(results):
        if result.status == "ok":
            np.testing.assert_array_equal(result.frames, reference.get(f"clip{i:02d}"))


BOUNDED_BUILD = """
    import sys, time, tracemalloc
    from pathlib import Path
    import pandas as pd
    from audiotag.config.schema import FeatureConfig
    from audiotag.data import cache_build as cache_mod, cache_compute

    append = cache_mod._Writer.append


    def slow_append(self, result):
        time.sleep(0.002)  # a slow disk: without a bound, the workers' results would pile up
        append(self, result)


    if __name__ == "__main__":  # the workers start by forkserver, which imports this script again
        root, n_clips = Path(sys.argv[1]), int(sys.argv[2])
        clips = pd.DataFrame({"clip_id": [f"{i:04d}" for i in range(n_clips)]})
        clips["path"] = "audio/" + clips["clip_id"] + ".wav"
        cache_compute.CHUNKS_PER_WORKER = 1  # 2 workers x 1 chunk x 16 clips in flight
        cache_mod._Writer.append = slow_append
        tracemalloc.start()
        cache_dir = cache_mod.build_cache(clips, root, FeatureConfig(hop_length=160, n_mels=128), workers=2)
        print(tracemalloc.get_traced_memory()[1], cache_dir)
"""


def test_build_streams_in_bounded_memory(tmp_path: Path) -> None:
    """The parent holds a few chunks of results at a time, however many clips there are. Measured in a
    fresh interpreter: tracemalloc counts every thread's allocations, and threads left by earlier tests
    in this process (loggers, bars) would be counted too."""
    n_clips, n_samples = 800, 8000
    (tmp_path / "audio").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n_clips):
        sf.write(str(tmp_path / f"audio/{i:04d}.wav"), rng.uniform(-0.5, 0.5, n_samples), 16000)
    script = tmp_path / "bounded.py"
    script.write_text(textwrap.dedent(BOUNDED_BUILD))
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path), str(n_clips)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak_text, cache_text = proc.stdout.split()[-2:]
    peak, cache_dir = int(peak_text), Path(cache_text)
    total = (cache_dir / "frames.f16").stat().st_size
    assert total > 10_000_000 and len(FeatureCache(cache_dir)) == n_clips
    # What grows with the clip count is the index (about 1.3 kB a clip when the records are read back at
    # the end), not the frames (13 kB a clip here, ten times more for real clips): held frames would
    # put the peak above the cache's size.
    assert peak < 0.25 * total, f"parent peak {peak / 1e6:.1f} MB for a {total / 1e6:.1f} MB cache"


KILLED_BUILD = """
    import os, signal, sys
    from pathlib import Path
    import pandas as pd
    from audiotag.config.schema import FeatureConfig
    from audiotag.data import cache_build as cache

    cache.CHECKPOINT_EVERY = 3
    append = cache._Writer.append
    calls = 0

    def append_then_die(self, result):
        global calls
        append(self, result)
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


def test_workers_that_cannot_start_are_not_blamed_on_the_clips() -> None:
    from audiotag.data.cache_compute import check_workers_start

    check_workers_start((CFG.model_dump_json(), {}))  # a healthy pool passes
    with pytest.raises(DataError, match="__name__ == '__main__'"):
        check_workers_start(("{not json", {}))  # every worker dies in its initializer


def test_changed_audio_rules_in_the_config_rebuild_the_cache(
    workspace: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``competition.audio_rules`` reach the cache through ``prepare``: a shorter ``max_seconds`` rebuilds
    it with exactly the longer clips flagged ``cut``; the clip table and folds are left as they are."""
    from audiotag.config.files import configs_root
    from audiotag.runs.prepare import prepare
    from audiotag.train.experiment import load_experiment
    from tests.conftest import TINY_DEMO

    def run(*overrides: str) -> tuple[Path, dict, pd.DataFrame]:
        cfg = load_experiment(
            configs_root() / "experiments" / "demo" / "cnn_small.yaml", [*TINY_DEMO, *overrides]
        )
        prepared = prepare(cfg.competition, cfg.features, workers=1)
        manifest = json.loads((prepared.cache_dir / "manifest.json").read_text())
        index = pd.read_parquet(prepared.cache_dir / "index.parquet").set_index("clip_id")
        return prepared.cache_dir, manifest, index

    cache_dir, default, full = run()
    assert default["audio_rules"] == AudioRules().model_dump()
    assert not full["status"].str.contains("cut").any()
    long_clips = set(full.index[full["seconds"] > 1.5])
    assert 0 < len(long_clips) < len(full)
    comp_dir = cache_dir.parents[1]
    fold_files = [p for p in comp_dir.glob("folds/*") if p.suffix != ".lock"]  # a lock records its holder
    table_and_folds = {p: p.stat().st_mtime_ns for p in [comp_dir / "meta.parquet", *fold_files]}

    caplog.set_level(logging.INFO)
    cut_dir, cut, short = run("competition.audio_rules.max_seconds=1.5")
    assert cut_dir == cache_dir  # same features, same folder, rebuilt in place
    assert cut["clips_hash"] != default["clips_hash"] and cut["audio_rules"]["max_seconds"] == 1.5
    assert set(short.index[short["status"].str.contains("cut")]) == long_clips
    assert (short.loc[sorted(long_clips), "seconds"] == 1.5).all()
    cut_frames = short.loc[sorted(long_clips), "n_frames"]  # all 1.5 s long now
    assert cut_frames.nunique() == 1 and (cut_frames <= full.loc[sorted(long_clips), "n_frames"]).all()
    assert short.loc[sorted(set(full.index) - long_clips), "n_frames"].equals(
        full.loc[sorted(set(full.index) - long_clips), "n_frames"]
    )
    assert f"clip table: {comp_dir / 'meta.parquet'} up to date" in caplog.text
    assert "competition settings changed" not in caplog.text
    assert {p: p.stat().st_mtime_ns for p in table_and_folds} == table_and_folds

    _, back, again = run()  # and back: the default rules give the first cache again
    assert back["clips_hash"] == default["clips_hash"]
    assert not again["status"].str.contains("cut").any()


FAULTS_SCRIPT = """
import resource, sys
import numpy as np
if sys.argv[1] == "keep":
    from audiotag.data.cache_compute import keep_freed_memory
    assert keep_freed_memory()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(30):  # a clip's buffers: a 44.1 kHz STFT alone is about 5 MB
    buffers = [np.ones(size << 20, np.uint8) for size in (5, 6, 4)]
    del buffers
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_workers_reuse_freed_buffers_instead_of_faulting_them_in_again() -> None:
    def faults(mode: str) -> int:
        run = subprocess.run([sys.executable, "-c", FAULTS_SCRIPT, mode], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        return int(run.stdout)

    default, kept = faults("default"), faults("keep")
    assert default > 30 * 1000  # by default at least one buffer a round comes fresh from the kernel
    assert kept < 15 << 8  # the first round's 15 MB (3840 pages) does; later rounds reuse it


class FullDisk:
    """A file whose writes fail with ENOSPC once ``budget`` writes have gone through."""

    def __init__(self, f: object, budget: int) -> None:
        self.f, self.budget = f, budget

    def write(self, data: bytes) -> int:
        if self.budget <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.budget -= 1
        return self.f.write(data)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self.f, name)


def test_full_disk_is_a_data_error_and_a_rerun_resumes(
    built: tuple[Path, pd.DataFrame, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    root, clips, clean_dir = built
    comp = copy_competition(root, tmp_path)
    init = cache_mod._Writer.__init__

    def init_on_a_small_disk(self: cache_mod._Writer, *args: object, **kwargs: object) -> None:
        init(self, *args, **kwargs)  # type: ignore[arg-type]
        self.frames = FullDisk(self.frames, budget=5)  # type: ignore[assignment]

    monkeypatch.setattr(cache_mod._Writer, "__init__", init_on_a_small_disk)
    with pytest.raises(DataError) as err:
        build_cache(clips, comp, CFG, workers=1)
    final = cache_dir_for(comp, CFG)
    staging = final.with_name(final.name + ".partial")
    message = str(err.value)
    assert message.startswith(
        f"the disk is full: no space left on the device while writing the feature cache in {staging}; "
        "it needs about "
    )
    assert f"mels x 2 bytes, estimated from the 6 of {N_CLIPS} clips written)" in message
    assert f" x {CFG.n_mels} mels x 2 bytes" in message and "free now" in message
    assert "the step resumes" in message and not final.exists()

    monkeypatch.setattr(cache_mod._Writer, "__init__", init)
    with caplog.at_level(logging.INFO, logger="audiotag.data.cache_build"):
        resumed = build_cache(clips, comp, CFG, workers=1)
    assert "resuming after 5 clips" in caplog.text
    for name in ("frames.f16", "index.parquet"):
        assert (resumed / name).read_bytes() == (clean_dir / name).read_bytes(), name


def test_full_disk_while_finishing_the_cache(
    built: tuple[Path, pd.DataFrame, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, clips, clean_dir = built
    comp = copy_competition(root, tmp_path)

    def no_space(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cache_mod, "atomic_path", no_space)  # writes the index, in _finish
    full = r"the disk is full: .* writing the feature cache in .*\.partial; it needs"
    with pytest.raises(DataError, match=full):
        build_cache(clips, comp, CFG, workers=1)
    monkeypatch.undo()
    resumed = build_cache(clips, comp, CFG, workers=1)
    assert (resumed / "frames.f16").read_bytes() == (clean_dir / "frames.f16").read_bytes()
