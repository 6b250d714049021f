"""How fast decoding and resampling alone go in threads of one process (soundfile and soxr release
the GIL): the CPU's share of a design where a GPU computes the log-mel in the same process.

    .venv/bin/python benchmarks/decode_threads.py [AUDIO_DIR]   # default: features.py's synthetic clips

Prints the median clips/s of 5 passes over the files with 1 and 2 threads, per target rate.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from audiotag.data.audio import decode
from audiotag.data.cache_compute import keep_freed_memory


def main() -> None:
    keep_freed_memory()  # as the cache's workers
    with tempfile.TemporaryDirectory(prefix="audiotag-threads-") as tmp:
        if len(sys.argv) > 1:
            paths = [str(p) for p in sorted(Path(sys.argv[1]).rglob("*.wav"))]
        else:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from features import synthesize

            paths = [str(p) for p in synthesize(Path(tmp), 200, 5.0, 10.0, 44100, 0)]
        for rate in (16000, 32000, 44100):
            for n in (1, 2):
                rates = []
                with ThreadPoolExecutor(n) as pool:
                    list(pool.map(lambda p, r=rate: decode(p, r).wave.size, paths[:4]))  # warm-up
                    for _ in range(5):
                        start = time.perf_counter()
                        list(pool.map(lambda p, r=rate: decode(p, r).wave.size, paths))
                        rates.append(len(paths) / (time.perf_counter() - start))
                print(f"decode to {rate} Hz, {n} thread(s): {statistics.median(rates):.0f} clips/s")


if __name__ == "__main__":
    main()
