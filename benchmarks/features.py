"""Feature-extraction speed: audiotag's decode + log-mel path against librosa, and cache crop serving.

Our path is the cache's own worker function (``data.cache_build.compute_clip``: soundfile, soxr, torch
LogMel on one thread) in 1 process, the cache's worker pool in 2 processes, and ``build_cache`` end
to end. The baseline is ``librosa.load`` + ``librosa.feature.melspectrogram`` + ``power_to_db`` with
the same settings on the same files, in 1 and 2 processes. Each method runs in a fresh process that
imports only what it needs, so its peak memory (``VmHWM``; for pools also the largest worker's) is
its own. Methods are run ``--repeat`` times in turn and the fastest run is reported, because other
jobs on a shared machine slow runs down at random.

    .venv/bin/python benchmarks/features.py                     # 200 synthetic clips, 5-10 s, 44.1 kHz
    .venv/bin/python benchmarks/features.py --audio-dir DIR     # your own files (wav/flac/ogg/mp3)
    .venv/bin/python benchmarks/features.py --features argus44k --n-clips 100

The 2-process rows exclude start-up (the ``startup`` column): librosa's pool is warmed with one
call per worker, then timed over all clips; ours starts its fork server (torch and the cache module
imported once), then a new 2-worker pool forked from it is timed over all clips, less the time the
same pool start takes on two clips.
The ``build_cache`` row includes everything (fork server, imports, writing the cache, the index and
the report); on a small input the start-up dominates it.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

AUDIO_EXTENSIONS = {".wav", ".flac", ".ogg", ".mp3"}
LIBROSA_MODULES = ["librosa", "librosa.core", "librosa.feature", "librosa.filters", "soxr", "soundfile"]
PRESETS: dict[str, dict[str, Any]] = {
    # the library default: PANNs-like 16 kHz front-end, so 44.1 kHz files are resampled
    "default": {},
    # PANNs CNN14's front-end (the real competitions' CNN14 configs): 44.1 kHz files are resampled
    "panns32k": {
        "sample_rate": 32000,
        "n_fft": 1024,
        "hop_length": 320,
        "n_mels": 64,
        "fmin": 50.0,
        "fmax": 14000.0,
    },
    # the 2019 winner's front-end (argus-freesound): 44.1 kHz, no resampling, a large FFT
    "argus44k": {"sample_rate": 44100, "n_fft": 2560, "hop_length": 690, "n_mels": 128, "fmin": 20.0},
}
CROP_SECONDS = 2.0


# ----------------------------------------------------------------------------- inputs


def synthesize(folder: Path, n_clips: int, min_s: float, max_s: float, rate: int, seed: int) -> list[Path]:
    """16-bit mono WAV clips of noise, tones and chirps, ``min_s``..``max_s`` seconds long."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n_clips):
        n = int(rate * rng.uniform(min_s, max_s))
        t = np.arange(n, dtype=np.float64) / rate
        f0, f1 = rng.uniform(80, 4000, size=2)
        chirp = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * t[-1])))
        envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.2, 3) * t)
        y = 0.3 * chirp * envelope + 0.05 * rng.standard_normal(n)
        path = folder / f"clip{i:05d}.wav"
        sf.write(str(path), y.astype(np.float32), rate, subtype="PCM_16")
        paths.append(path)
    return paths


def find_audio(folder: Path, n_clips: int) -> list[Path]:
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
    if not paths:
        sys.exit(f"{folder}: no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))})")
    return paths[:n_clips]


# ----------------------------------------------------------------------------- methods (run in a child)


def _feature_config(preset: str):
    from audiotag.config.schema import FeatureConfig

    return FeatureConfig(**PRESETS[preset])


def librosa_logmel(path: str, preset: str) -> np.ndarray:
    import librosa

    cfg = _feature_config(preset)
    y, _ = librosa.load(path, sr=cfg.sample_rate, mono=True)  # soxr_hq, as ours
    mel = librosa.feature.melspectrogram(
        y=y,
        sr=cfg.sample_rate,
        n_fft=cfg.n_fft,
        hop_length=cfg.hop_length,
        n_mels=cfg.n_mels,
        fmin=cfg.fmin,
        fmax=cfg.fmax,
        htk=cfg.mel_scale == "htk",
        norm="slaney",
        pad_mode="reflect",  # librosa >= 0.10 pads with zeros by default; ours (and PANNs) reflect
    )
    return librosa.power_to_db(mel, ref=1.0, amin=cfg.amin, top_db=None).T


def _librosa_task(args: tuple[str, str]) -> int:
    return librosa_logmel(*args).shape[0]


def _librosa_warm_up(args: tuple[str, str]) -> int:
    time.sleep(0.3)  # so that each of the two workers takes one of the two warm-up calls
    return _librosa_task(args)


def _chunksize(n: int, workers: int = 2) -> int:
    return max(1, min(16, n // (workers * 8)))  # as the cache's pool


def _status_kb(pid: int | str, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        try:
            tasks = list(Path(f"/proc/{current}/task").glob("*/children"))
        except OSError:  # the process ended while we looked
            continue
        for children in tasks:
            try:
                kids = [int(x) for x in children.read_text().split()]
            except (OSError, ValueError):
                continue
            found += kids
            todo += kids
    return found


class WorkerPeak:
    """Samples the peak RSS (VmHWM) of this process's descendants (pool workers) every 20 ms."""

    def __init__(self) -> None:
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            for pid in _descendants(os.getpid()):
                self.peak_kb = max(self.peak_kb, _status_kb(pid, "VmHWM"))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_kb / 1024


def run_method(method: str, paths: list[str], preset: str, workdir: str) -> dict[str, float]:
    """Time one method on ``paths``: seconds of steady work, start-up seconds, peak RSS in MB."""
    cfg = _feature_config(preset)
    workers = WorkerPeak() if method.endswith("-2") else None
    startup, cpu = 0.0, 0.0
    if method == "librosa-1":
        for p in paths[:2]:
            librosa_logmel(p, preset)  # warm-up: imports, caches
        start, cpu = time.perf_counter(), time.process_time()
        for p in paths:
            librosa_logmel(p, preset)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    elif method == "librosa-2":
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["__main__", *LIBROSA_MODULES])
        start = time.perf_counter()
        with ctx.Pool(2) as pool:
            # librosa compiles and caches on its first call: one warm-up call per worker, untimed
            pool.map(_librosa_warm_up, [(paths[0], preset)] * 2, chunksize=1)
            startup = time.perf_counter() - start
            start = time.perf_counter()
            pool.map(_librosa_task, [(p, preset) for p in paths], chunksize=_chunksize(len(paths)))
            seconds = time.perf_counter() - start
    elif method == "ours-1":
        from audiotag.data.cache_compute import compute_clip, prepare_compute_process
        from audiotag.data.features import make_extractor

        prepare_compute_process()  # as the cache's workers do: one torch thread, malloc keeps freed memory
        extractor = make_extractor(cfg)
        for p in paths[:2]:
            compute_clip(p, False, cfg, extractor)
        start, cpu = time.perf_counter(), time.process_time()
        for p in paths:
            compute_clip(p, False, cfg, extractor)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    elif method == "ours-2":
        from audiotag.data.audio import DEFAULT_RULES
        from audiotag.data.cache_compute import _compute_parallel

        start = time.perf_counter()  # the pool's fork server imports torch and the cache module once
        list(_compute_parallel([(paths[0], False)], cfg, DEFAULT_RULES, 1))
        startup = time.perf_counter() - start
        # Each run forks a new 2-worker pool from the warm server. Its start (about 50 ms) is timed on
        # two clips and left out, as librosa's warm pool's start is: both rows are then steady rates.
        start = time.perf_counter()
        list(_compute_parallel([(p, False) for p in paths[:2]], cfg, DEFAULT_RULES, 2))
        pool_start = time.perf_counter() - start
        start = time.perf_counter()
        list(_compute_parallel([(p, False) for p in paths], cfg, DEFAULT_RULES, 2))
        seconds = time.perf_counter() - start - pool_start
        startup += pool_start
    elif method == "cache-2":
        import pandas as pd

        from audiotag.data.cache_build import build_cache

        clips = pd.DataFrame({"clip_id": paths, "path": paths})  # absolute paths: unique ids
        shutil.rmtree(Path(workdir) / "cache", ignore_errors=True)
        start = time.perf_counter()
        build_cache(clips, Path(workdir), cfg, workers=2)
        seconds = time.perf_counter() - start
    else:
        raise ValueError(method)
    worker_mb = workers.stop() if workers else 0.0
    own_mb = _status_kb("self", "VmHWM") / 1024
    return {"seconds": seconds, "cpu": cpu, "startup": startup, "rss_mb": own_mb, "worker_rss_mb": worker_mb}


def _child(queue: Any, method: str, paths: list[str], preset: str, workdir: str) -> None:
    import logging

    logging.disable(logging.WARNING)  # the cache's INFO lines would interleave with the table
    os.environ.setdefault("TQDM_DISABLE", "1")
    queue.put(run_method(method, paths, preset, workdir))


ONE_THREAD = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
# glibc's malloc set as ``data.cache_build.keep_freed_memory`` sets it in our workers, for a control row
KEEP_FREED = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(256 << 20)}


def in_fresh_process(
    method: str, paths: list[str], preset: str, workdir: str, env: dict[str, str] | None = None
) -> dict[str, float]:
    """``run_method`` in a new interpreter; ``env`` is set for it (and its workers) only."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, method, paths, preset, workdir))
    saved = {name: os.environ.get(name) for name in env or {}}
    os.environ.update(env or {})
    try:
        proc.start()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    result = queue.get()
    proc.join()
    return result


# ----------------------------------------------------------------------------- agreement, crops


def agreement(paths: list[str], preset: str) -> float:
    """Largest |ours - librosa| in dB on a few clips, over bins above the -100 dB floor.

    Ours in float32, before the cache rounds it to float16 (a relative step of 2**-11). The last two
    frames are left out: when resampling, librosa makes the wave ``ceil(n * ratio)`` samples long by
    appending a zero where soxr (and we) give ``round(n * ratio)``, which changes the reflect-padded
    last frame.
    """
    import torch

    from audiotag.data.audio import decode
    from audiotag.data.features import compute_logmel, make_extractor

    torch.set_num_threads(1)
    cfg = _feature_config(preset)
    extractor = make_extractor(cfg)
    worst = 0.0
    for p in paths[:5]:
        ours = compute_logmel(decode(p, cfg.sample_rate).wave, cfg, extractor)
        ref = librosa_logmel(p, preset)
        n = min(len(ours), len(ref)) - 2
        valid = ref[:n] > -100.0
        worst = max(worst, float(np.max(np.abs(ours[:n][valid] - ref[:n][valid]))))
    return worst


def crops_per_second(cache_dir: Path, seconds: float = 3.0) -> tuple[float, int]:
    """Random 2 s crops served from the memory map, the way the training Dataset does it."""
    from audiotag.data.cache_reader import FeatureCache
    from audiotag.data.dataset import CropDataset, silence_value

    cache = FeatureCache(cache_dir)
    ids = cache.clip_ids
    crop = round(CROP_SECONDS * cache.config.frames_per_second)
    data = CropDataset(
        cache,
        ids,
        np.zeros((len(ids), 1), np.float32),
        np.ones(len(ids), np.float32),
        crop,
        "wrap",
        silence_value(cache.config),
        seed=0,
    )
    rng = np.random.default_rng(0)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for i in rng.integers(0, len(data), size=256):
            data[int(i)]
        n += 256
    return n / (time.perf_counter() - start), crop


# ----------------------------------------------------------------------------- main


# (key, method, label, environment): librosa's numpy/BLAS threads are left as they come in the first
# row (2 per process here, which spin and stall when the other core is busy) and pinned to 1 in the
# others, as our workers pin torch; 2 processes of 2 threads each on 2 cores would only oversubscribe.
ROWS: list[tuple[str, str, str, dict[str, str]]] = [
    ("librosa-1", "librosa-1", "librosa load+melspec+power_to_db, 1 proc", {}),
    ("librosa-1t", "librosa-1", "librosa, 1 proc, 1 BLAS thread", ONE_THREAD),
    ("librosa-2", "librosa-2", "librosa, 2 procs x 1 thread (Pool)", ONE_THREAD),
    ("librosa-1m", "librosa-1", "control: librosa 1 proc, 1 thread, our malloc", ONE_THREAD | KEEP_FREED),
    ("ours-1", "ours-1", "audiotag compute_clip, 1 proc", {}),
    ("ours-2", "ours-2", "audiotag cache worker pool, 2 procs", {}),
    ("cache-2", "cache-2", "audiotag build_cache end to end, 2 workers", {}),
]


def bench_preset(preset: str, paths: list[str], audio_seconds: float, root: Path, repeat: int) -> None:
    from audiotag.data.cache_reader import cache_dir_for, disk_bytes

    cfg = _feature_config(preset)
    print(
        f"\n== features {preset}: {cfg.sample_rate} Hz, n_fft {cfg.n_fft}, hop {cfg.hop_length}, "
        f"{cfg.n_mels} mels"
    )
    workdir = root / f"competition-{preset}"
    runs: dict[str, list[dict[str, float]]] = {key: [] for key, *_ in ROWS}
    for _ in range(repeat):
        for key, method, _, env in ROWS:
            runs[key].append(in_fresh_process(method, paths, preset, str(workdir), env))

    def median(key: str, field: str) -> float:
        return float(np.median([run[field] for run in runs[key]]))

    n = len(paths)
    base1 = n / min(median("librosa-1", "seconds"), median("librosa-1t", "seconds"))
    base2 = n / median("librosa-2", "seconds")
    header = f"{'method':<44} {'median':>7} {'best':>7} {'x real':>7} {'cpu ms':>7} {'startup':>8}"
    print(f"{'':<44} {'clips/s':>7} {'clips/s':>7}")
    print(header + f" {'RSS MB':>7} {'wkr MB':>7} {'vs lib-1':>8} {'vs lib-2':>8}")
    for key, _, label, _ in ROWS:
        rate = n / median(key, "seconds")
        best = n / min(run["seconds"] for run in runs[key])
        realtime = audio_seconds / median(key, "seconds")
        cpu = f"{median(key, 'cpu') / n * 1e3:7.2f}" if median(key, "cpu") else f"{'-':>7}"
        rss = max(run["rss_mb"] for run in runs[key])
        workers = max(run["worker_rss_mb"] for run in runs[key])
        worker = f"{workers:7.0f}" if workers else f"{'-':>7}"
        startup = f"{median(key, 'startup'):7.1f}s" if median(key, "startup") else f"{'-':>8}"
        print(
            f"{label:<44} {rate:7.1f} {best:7.1f} {realtime:7.0f} {cpu} {startup} {rss:7.0f} {worker}"
            f" {rate / base1:7.2f}x {rate / base2:7.2f}x"
        )
    print(
        f"medians of {repeat} run(s); vs lib-1: against the faster librosa 1-process row, vs lib-2: "
        "against librosa's 2-process pool; cpu ms: CPU time per clip of 1-process rows"
    )
    print(f"agreement with librosa: max |diff| {agreement(paths, preset):.2e} dB (float32, 5 clips)")
    cache_dir = cache_dir_for(workdir, cfg)
    rate, crop = crops_per_second(cache_dir)
    print(
        f"cache on disk: {disk_bytes(cache_dir) / 2**20:.1f} MB; random {CROP_SECONDS:g} s crops "
        f"({crop} frames x {cfg.n_mels} mels) served from the memory map: {rate:,.0f} crops/s in one "
        f"process (= {rate / 32:,.0f} batches of 32/s)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--audio-dir", type=Path, help="benchmark these files instead of synthetic ones")
    parser.add_argument("--n-clips", type=int, default=200)
    parser.add_argument("--min-seconds", type=float, default=5.0)
    parser.add_argument("--max-seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=44100, help="sample rate of the synthetic files")
    parser.add_argument("--features", choices=[*PRESETS, "all"], default="all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="runs per method; the fastest is reported")
    args = parser.parse_args(argv)

    import soundfile as sf
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"machine: {cores} usable core(s) (os.cpu_count {os.cpu_count()}), load average {load}")
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, soundfile {sf.__version__}", end="")
    import librosa
    import soxr

    print(f", soxr {soxr.__version__}, librosa {librosa.__version__}")
    with tempfile.TemporaryDirectory(prefix="audiotag-bench-") as tmp:
        root = Path(tmp)
        if args.audio_dir:
            files = find_audio(args.audio_dir, args.n_clips)
        else:
            files = synthesize(
                root / "audio", args.n_clips, args.min_seconds, args.max_seconds, args.rate, args.seed
            )
        for f in files:
            f.read_bytes()  # every method reads from the page cache
        audio_seconds = sum(sf.info(str(f)).duration for f in files)
        print(f"input: {len(files)} files, {audio_seconds / 60:.1f} min of audio", end="")
        source = args.audio_dir or f"synthetic 16-bit WAV at {args.rate} Hz"
        print(f" ({source})")
        paths = [str(f) for f in files]
        presets = list(PRESETS) if args.features == "all" else [args.features]
        for preset in presets:
            bench_preset(preset, paths, audio_seconds, root, args.repeat)


if __name__ == "__main__":
    main()
