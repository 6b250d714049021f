"""The feature cache at data-set scale: FSD50K's clip count, memory over time, size on disk.

Synthesises ``--n-clips`` short 16-bit WAV files (FSD50K has 51,197 clips; the default) into a
temporary folder, then builds the cache with ``build_cache`` and its worker pool, the way ``prepare``
does, while a sampler records the resident memory (VmRSS) of the parent and of each worker every
0.2 s. It prints the rate, the parent's memory at each tenth of the build (it must stay flat: the
build streams to disk), the workers' peak, and the cache's size on disk, then reads every clip
back through ``FeatureCache`` to check the index.

    .venv/bin/python benchmarks/cache_scale.py                       # 51,197 clips of 0.5-1.5 s
    .venv/bin/python benchmarks/cache_scale.py --n-clips 20000 --min-seconds 5 --max-seconds 10

Clips are short so that the files fit on a small disk (51k clips of 1 s at 16 kHz: 1.6 GB); the
per-clip cost of longer clips is what ``features.py`` measures.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from features import _descendants, _status_kb  # the sibling benchmark's /proc helpers


class MemorySampler:
    """VmRSS of this process and the peak VmRSS of its descendants, sampled every ``period`` s."""

    def __init__(self, period: float = 0.2) -> None:
        self.samples: list[tuple[float, int]] = []  # (seconds since start, parent kB)
        self.worker_peak_kb = 0
        self._start = time.perf_counter()
        self._period = period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            self.samples.append((time.perf_counter() - self._start, _status_kb("self", "VmRSS")))
            for pid in _descendants(os.getpid()):
                self.worker_peak_kb = max(self.worker_peak_kb, _status_kb(pid, "VmRSS"))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def synthesize(folder: Path, n_clips: int, min_s: float, max_s: float, rate: int, seed: int) -> list[str]:
    """``n_clips`` mono 16-bit WAV files: noise under a tone, lengths uniform in ``min_s``..``max_s``."""
    import soundfile as sf
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    longest = int(max_s * rate)
    t = np.arange(longest) / rate
    base = (0.05 * rng.standard_normal(longest) + 0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
    names = []
    for i in tqdm(range(n_clips), desc="synthesising", unit="clip", mininterval=1.0):
        n = int(rate * rng.uniform(min_s, max_s))
        shift = int(rng.integers(0, longest - n + 1))
        name = f"{i // 1000:03d}/{i:06d}.wav"  # subfolders, as a real data set's
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), base[shift : shift + n] * rng.uniform(0.2, 1.0), rate, subtype="PCM_16")
        names.append(name)
    return names


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-clips", type=int, default=51_197, help="FSD50K's dev + eval clip count")
    parser.add_argument("--min-seconds", type=float, default=0.5)
    parser.add_argument("--max-seconds", type=float, default=1.5)
    parser.add_argument("--rate", type=int, default=16000, help="sample rate of the synthetic files")
    parser.add_argument("--workers", type=int, default=None, help="cache workers (default: all cores)")
    parser.add_argument("--dir", type=Path, help="work folder (default: a temporary one, removed after)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import pandas as pd

    from audiotag.config.schema import FeatureConfig
    from audiotag.data.cache_build import build_cache
    from audiotag.data.cache_reader import FeatureCache, disk_bytes

    logging.basicConfig(level=logging.WARNING)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"machine: {cores} usable core(s), load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="audiotag-scale-", dir=args.dir) as tmp:
        root = Path(tmp)
        names = synthesize(
            root / "audio", args.n_clips, args.min_seconds, args.max_seconds, args.rate, args.seed
        )
        seconds_of_audio = sum((root / "audio" / n).stat().st_size - 44 for n in names) / 2 / args.rate
        clips = pd.DataFrame(
            {"clip_id": [n[4:-4] for n in names], "path": [f"audio/{n}" for n in names], "split": "train"}
        )
        cfg = FeatureConfig()
        print(
            f"input: {len(names)} files, {seconds_of_audio / 3600:.1f} h of audio at {args.rate} Hz; "
            f"features: {cfg.sample_rate} Hz, {cfg.n_mels} mels"
        )
        sampler = MemorySampler()
        start = time.perf_counter()
        cache_dir = build_cache(clips, root, cfg, workers=args.workers)
        seconds = time.perf_counter() - start
        sampler.stop()

        cache = FeatureCache(cache_dir)
        frames = sum(cache.get(clip_id).shape[0] for clip_id in cache.clip_ids)
        assert len(cache) == len(names) and frames == cache.frames.shape[0], "index and frames disagree"
        print(f"build_cache: {seconds:.1f} s, {len(names) / seconds:.0f} clips/s end to end")
        tenths = [
            sampler.samples[min(len(sampler.samples) - 1, round(i * len(sampler.samples) / 10))]
            for i in range(11)
        ]
        print(
            "parent VmRSS (MB) at each tenth of the build: "
            + " ".join(f"{kb / 1024:.0f}" for _, kb in tenths)
        )
        peak = max(kb for _, kb in sampler.samples) / 1024
        print(f"parent peak {peak:.0f} MB; largest worker {sampler.worker_peak_kb / 1024:.0f} MB")
        print(
            f"cache on disk: {disk_bytes(cache_dir) / 2**20:.1f} MB for {frames:,} frames "
            f"({frames * cfg.n_mels * 2 / 2**20:.1f} MB of float16 frames); read back: all {len(cache)} clips"
        )


if __name__ == "__main__":
    main()
