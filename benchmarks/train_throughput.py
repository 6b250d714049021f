"""Training throughput: our engine against a minimal re-creation of the official loops, same data.

Ours: random crops read from the memory-mapped log-mel cache by DataLoader workers (pinned memory),
SpecAugment and mixup batched on the device, mixed precision, channels-last, optional torch.compile,
fused AdamW. Official-style (the PANNs/AST repositories' recipe): each item's log-mel computed on the
CPU from the waveform inside the dataset, plain fp32, Adam. Both train the same model on the same
synthetic clips; the script prints samples per second, peak GPU memory and the ratio, and the rate
at which the data pipeline alone delivers crops (it must outrun the GPU).

    .venv/bin/python benchmarks/train_throughput.py                       # CPU smoke run, small model
    .venv/bin/python benchmarks/train_throughput.py --device cuda --models cnn14 efficientnet_b0 ast_base \\
        --batch-sizes 32 64 128 --precisions fp32 bf16 --compile both
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader, Dataset

from audiotag.config import FeatureConfig, TrainConfig
from audiotag.config_files import load_group, validate
from audiotag.data.augment import mixup, spec_augment
from audiotag.data.cache_build import build_cache
from audiotag.data.cache_reader import FeatureCache
from audiotag.data.dataset import CropDataset, silence_value
from audiotag.data.features import make_extractor
from audiotag.experiment import ModelConfig
from audiotag.models.registry import build_model
from audiotag.train.engine import StepEngine, configure_determinism
from audiotag.train.schedule import make_scheduler

FEATURES_FOR = {"cnn14": "panns_32k", "efficientnet_b0": "panns_32k", "ast_base": "ast_kaldi_128"}
N_CLASSES = 80


def synth_clips(folder: Path, n: int, seconds: float, sr: int) -> pd.DataFrame:
    """Noise bursts and chirps, deterministic; written as 16-bit WAV like a real competition."""
    rng = np.random.default_rng(0)
    rows = []
    t = np.arange(int(seconds * sr)) / sr
    for i in range(n):
        f0 = rng.uniform(200, 2000)
        chirp = np.sin(2 * np.pi * (f0 * t + rng.uniform(50, 400) * t**2))
        wave = 0.3 * chirp * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.5, 4) * t))
        wave += 0.05 * rng.standard_normal(t.size)
        path = folder / f"clip{i:04d}.wav"
        sf.write(path, wave.astype(np.float32), sr, subtype="PCM_16")
        rows.append({"clip_id": path.stem, "path": path.name})
    return pd.DataFrame(rows)


class WaveCrops(Dataset):
    """Official-style dataset: decode, crop and compute the log-mel of each item on the CPU."""

    def __init__(self, folder: Path, ids: list[str], features: FeatureConfig, crop_samples: int) -> None:
        self.folder, self.ids, self.features, self.crop = folder, ids, features, crop_samples
        self.extractor = make_extractor(features)
        self.targets = np.random.default_rng(1).random((len(ids), N_CLASSES)).astype(np.float32) > 0.9

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        wave, _ = sf.read(self.folder / f"{self.ids[i]}.wav", dtype="float32")
        start = np.random.randint(0, max(1, wave.size - self.crop))
        with torch.no_grad():
            logmel = self.extractor(torch.from_numpy(wave[start : start + self.crop])[None])[0]
        return logmel, torch.from_numpy(self.targets[i].astype(np.float32))


def model_config(name: str) -> ModelConfig:
    from pydantic import TypeAdapter

    return TypeAdapter(ModelConfig).validate_python(load_group("model", name))


def timed(loader: DataLoader, step, steps: int, warmup: int, device: torch.device) -> float:
    """Samples per second over ``steps`` batches after ``warmup`` batches."""
    batches = itertools.cycle(loader)
    for _ in range(warmup):
        step(next(batches))
    if device.type == "cuda":
        torch.cuda.synchronize()
    seen, start = 0, time.perf_counter()
    for _ in range(steps):
        seen += step(next(batches))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def timed_with_peak(loader, step, args, device: torch.device) -> tuple[float, float]:
    """``timed``'s samples/s and the GPU's peak memory in GiB over the same steps (NaN on the CPU)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rate = timed(loader, step, args.steps, args.warmup, device)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return rate, peak


def bench_ours(
    model_name, features, cache, ids, bs, precision, compile_, device, args
) -> tuple[float, float]:
    tc = TrainConfig(
        batch_size=bs, precision=precision, compile=compile_, channels_last=device.type == "cuda"
    )
    frames = round(args.crop_seconds * features.frames_per_second)
    rows = round(args.crop_seconds * features.cache_rate)  # samples when the cache holds waves
    model = build_model(model_config(model_name), features.n_mels, N_CLASSES, frames, features=features)
    model = model.to(device)
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.param_groups(1e-4, 1.0, 0.01), fused=device.type == "cuda" or None)
    engine = StepEngine(model, optimizer, make_scheduler(optimizer, 0, 10**6, 0.01), tc, device)
    targets = (np.random.default_rng(1).random((len(ids), N_CLASSES)) > 0.9).astype(np.float32)
    dataset = CropDataset(cache, ids, targets, np.ones(len(ids)), rows, "wrap", silence_value(features), 0)
    loader = DataLoader(
        dataset, bs, shuffle=True, drop_last=True, num_workers=args.workers,
        pin_memory=device.type == "cuda", persistent_workers=args.workers > 0,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    model.train()

    def step(batch) -> int:
        x, y, w = (t.to(device, non_blocking=True) for t in batch)
        with torch.no_grad():
            x = model.logmel(x)  # wave cache: log-mel on the device
        x = spec_augment(x, tc.specaugment, gen)  # at the input for both loops: same work, same place
        x, y, w = mixup(x, y, w, 0.4, gen)
        with engine.autocast():
            logits = engine.forward_model(x)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), y)
        engine.backward(loss)
        return x.shape[0]

    return timed_with_peak(loader, step, args, device)


def bench_official(model_name, features, folder, ids, bs, device, args) -> tuple[float, float]:
    frames = round(args.crop_seconds * features.frames_per_second)
    model = build_model(model_config(model_name), features.n_mels, N_CLASSES, frames).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    crop = int(args.crop_seconds * features.sample_rate)
    loader = DataLoader(
        WaveCrops(folder, ids, features, crop), bs, shuffle=True, drop_last=True,
        num_workers=args.workers, persistent_workers=args.workers > 0,
    )  # fmt: skip
    model.train()

    def step(batch) -> int:
        x, y = (t.to(device) for t in batch)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return x.shape[0]

    return timed_with_peak(loader, step, args, device)


def bench_pipeline(features, cache, ids, bs, args) -> float:
    """Crops per second that the cache + DataLoader deliver, with no model at all."""
    frames = round(args.crop_seconds * features.frames_per_second)
    targets = np.zeros((len(ids), N_CLASSES), np.float32)
    dataset = CropDataset(cache, ids, targets, np.ones(len(ids)), frames, "wrap", silence_value(features), 0)
    loader = DataLoader(dataset, bs, shuffle=True, drop_last=True, num_workers=args.workers)
    return timed(loader, lambda batch: batch[0].shape[0], args.steps * 2, 2, torch.device("cpu"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--models", nargs="+", default=["cnn_small"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[16])
    parser.add_argument("--precisions", nargs="+", default=["auto"], choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--compile", choices=["off", "on", "both"], default="off")
    parser.add_argument(
        "--wave-cache",
        action="store_true",
        help="also run ours with features.cache: wave (log-mel on device)",
    )
    parser.add_argument("--clips", type=int, default=96)
    parser.add_argument("--clip-seconds", type=float, default=12.0)
    parser.add_argument("--crop-seconds", type=float, default=10.0)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    args = parser.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    configure_determinism(False, device)
    console = Console(width=150)
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "none"
    console.print(f"device {device} (GPU: {gpu}), {os.cpu_count()} CPU cores, torch {torch.__version__}")
    compiles = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    table = Table(title="training throughput (samples/s); official = per-item CPU log-mel, fp32, Adam")
    for col in (
        "model",
        "batch",
        "precision",
        "compile",
        "ours",
        "official",
        "ratio",
        "GPU GiB ours/off.",
        "pipe",
    ):
        table.add_column(col, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        for model_name in args.models:
            feature_name = FEATURES_FOR.get(model_name, "logmel_16k_64")
            features = validate(FeatureConfig, load_group("features", feature_name), feature_name)
            folder = Path(tmp) / f"audio{features.sample_rate}"
            if not folder.exists():
                folder.mkdir()
                clips = synth_clips(folder, args.clips, args.clip_seconds, features.sample_rate)
            else:
                clips = pd.DataFrame({"clip_id": sorted(p.stem for p in folder.glob("*.wav"))})
                clips["path"] = clips["clip_id"] + ".wav"
            workers = min(2, os.cpu_count() or 1)
            caches = {
                "logmel": (features, FeatureCache(build_cache(clips, folder, features, workers=workers)))
            }
            if args.wave_cache:
                waves = features.model_copy(update={"cache": "wave"})
                caches["wave"] = (waves, FeatureCache(build_cache(clips, folder, waves, workers=workers)))
            cache = caches["logmel"][1]
            ids = clips["clip_id"].tolist()
            for bs in args.batch_sizes:
                official, off_mem = bench_official(model_name, features, folder, ids, bs, device, args)
                pipe = bench_pipeline(features, cache, ids, bs, args)
                for kind, precision, compile_ in itertools.product(caches, args.precisions, compiles):
                    kind_features, kind_cache = caches[kind]
                    ours, mem = bench_ours(
                        model_name, kind_features, kind_cache, ids, bs, precision, compile_, device, args
                    )
                    label = model_name if kind == "logmel" else f"{model_name} (wave cache)"
                    table.add_row(
                        label, str(bs), precision, "yes" if compile_ else "no", f"{ours:.1f}",
                        f"{official:.1f}", f"{ours / official:.2f}x", f"{mem:.2f}/{off_mem:.2f}",
                        f"{pipe:.0f}",
                    )  # fmt: skip
                    console.print(
                        f"  {model_name}, batch {bs}, {precision}, compile {compile_}: {ours:.1f}/s"
                    )
    console.print(table)


if __name__ == "__main__":
    main()
