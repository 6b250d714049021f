"""What a fresh DataLoader each epoch costs against the fold's one ``EpochLoader`` (``train/epoch.py``),
whose worker processes start once: the epochs of a small set, read with no model at all.

    .venv/bin/python benchmarks/loader_epochs.py                  # 2 and 8 workers, 10 epochs
    .venv/bin/python benchmarks/loader_epochs.py --workers 8 14 --clips 1600

The crops come from a log-mel cache of synthetic clips (``train_throughput.py``'s CNN14 setup: 10 s
crops of 1,000 frames x 64 mels, batch 32), as the training loop reads them. Per row: the mean seconds
an epoch takes after the first (the first epoch of both starts workers), and the ratio. The ratio is
the loader's alone: with a model, an epoch also holds the training steps, so the gain is the
difference in seconds, not the ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_throughput as tt

from audiotag.train.epoch import EpochLoader


def epoch_times(loader_for_epoch, batches: list[list[int]], epochs: int) -> list[float]:
    times = []
    for epoch in range(epochs):
        started = time.perf_counter()
        for _ in loader_for_epoch(epoch, batches):
            pass
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--clips", type=int, default=256, help="clips in the set (an epoch reads each once)")
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPU cores, torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="audiotag-loader-") as tmp:
        data = tt.prepare_data("cnn14", Path(tmp), args.clips, 11.0, {"logmel"})
        dataset = tt.crop_dataset(data, "logmel")
        batch = data.setup.batch
        batches = [list(range(i, i + batch)) for i in range(0, len(dataset) - batch + 1, batch)]
        print(f"{len(dataset)} clips, {len(batches)} batches of {batch} an epoch, {args.epochs} epochs")
        for workers in args.workers:

            def fresh(epoch: int, batches: list[list[int]], workers: int = workers) -> DataLoader:
                dataset.set_epoch(epoch)
                return DataLoader(dataset, batch_sampler=batches, num_workers=workers, prefetch_factor=4)

            kept = EpochLoader(dataset, workers, torch.device("cpu"), seed=0)
            try:
                new_each = epoch_times(fresh, batches, args.epochs)
                one = epoch_times(kept.epoch, batches, args.epochs)
            finally:
                kept.close()
            a, b = statistics.mean(new_each[1:]), statistics.mean(one[1:])
            print(
                f"{workers:>2} workers: a new DataLoader each epoch {a:.3f} s an epoch (first "
                f"{new_each[0]:.3f}), one EpochLoader {b:.3f} s (first {one[0]:.3f}): {a / b:.2f}x, "
                f"{a - b:.3f} s saved an epoch"
            )


if __name__ == "__main__":
    main()
