"""Training throughput: our engine against a minimal re-creation of the official loops, same data.

Ours: random crops read from the memory-mapped cache by DataLoader workers (pinned memory, the
training loop's default worker count), SpecAugment and mixup batched on the device, fused AdamW, and
per variant: fp32 or bf16 autocast, channels-last, torch.compile, the wave cache (log-mel computed
on the device) or the log-mel cache, and DDP in a one-process group (the wrapper's overhead). The
``_loop`` variants time the product's own epochs (``train_one_epoch``) instead of this script's step,
so any gap between the two is the loop's overhead.
Official-style (the PANNs/AST repositories' recipe): each item's log-mel computed on the CPU from the
waveform inside the dataset, plain fp32, Adam. Both train the same model on the same synthetic clips.

Printed per row: samples per second, peak GPU memory, the ratio to the official-style loop, and for
bf16 rows the model FLOP utilisation (training FLOPs = 3 x the forward pass's, counted by
``torch.utils.flop_counter``) against the GPU's datasheet peak and against a measured bf16 matrix
product. Per model it also prints the rate at which the data pipeline alone delivers crops (it must
outrun the fastest variant: the headroom).

    .venv/bin/python benchmarks/train_throughput.py                       # CPU smoke run, small model
    .venv/bin/python benchmarks/train_throughput.py --device cuda --models cnn14 ast_base \\
        --variants all                                                    # issue 14's table
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader, Dataset

from audiotag.config.files import load_group, validate
from audiotag.config.schema import FeatureConfig, TrainConfig
from audiotag.data.augment import mixup, spec_augment
from audiotag.data.cache_build import build_cache
from audiotag.data.cache_reader import FeatureCache
from audiotag.data.dataset import CropDataset, silence_value
from audiotag.data.features import make_extractor
from audiotag.models.registry import build_model
from audiotag.train.engine import StepEngine, configure_determinism
from audiotag.train.epoch import loader_workers
from audiotag.train.experiment import ModelConfig
from audiotag.train.schedule import make_scheduler

N_CLASSES = 80


@dataclass(frozen=True)
class Setup:
    """What one model trains on: issue 14's shapes (CNN14: 32 kHz, 64 mels, 10 s, batch 32; AST:
    1024 frames of 128 mels at 16 kHz, batch 12)."""

    features: str
    crop_seconds: float
    batch: int


SETUPS = {
    "cnn14": Setup("panns_32k", 10.0, 32),
    "ast_base": Setup("ast_kaldi_128", 10.24, 12),
    "efficientnet_b0": Setup("panns_32k", 10.0, 32),
    "cnn_small": Setup("logmel_16k_64", 2.0, 16),
    "atst_frame_base": Setup("atst_16k_64", 10.0, 8),  # the official fine-tuning's 10 s; a small batch
    # PaSST-S: 10-s inputs as the official fine-tuning (batch 12 there); a small batch for the CPU row
    "passt_s": Setup("passt_32k_128", 10.0, 4),
    "mn10": Setup("passt_32k_128", 10.0, 8),
    "m2d_vit_base": Setup("m2d_16k_80", 6.08, 4),  # the pre-trained 608-frame input; a small batch
    "beats": Setup("beats_kaldi_128", 10.0, 8),  # BEATs' AudioSet input: 10 s, 62 x 8 patches
    "musicnn": Setup("musicnn_16k_96", 2.0, 16),  # train.auto's 2-s crop and batch on the real sets
}


@dataclass(frozen=True)
class Variant:
    label: str
    cache: str  # "logmel" or "wave"
    precision: str
    channels_last: bool = False
    compile: bool = False
    ddp: bool = False
    batch: int | None = None  # None: the model's Setup batch
    workers: int | None = None  # loader processes; None: the training loop's default (up to 8 on a GPU)
    compile_mode: str = "default"
    loop: bool = False  # the product's own epochs (train_one_epoch), not this script's step


VARIANTS = {
    "fp32": Variant("fp32", "logmel", "fp32"),
    "bf16": Variant("bf16", "logmel", "bf16"),
    "bf16_cl": Variant("bf16 + channels-last", "logmel", "bf16", channels_last=True),
    "bf16_cl_compile": Variant("bf16 + channels-last + compile", "logmel", "bf16", True, True),
    "wave_bf16_cl": Variant("wave cache, bf16 + channels-last", "wave", "bf16", channels_last=True),
    "wave_bf16_cl_compile": Variant("wave cache, bf16 + channels-last + compile", "wave", "bf16", True, True),
    "bf16_cl_ddp": Variant("bf16 + channels-last, DDP (1 process)", "logmel", "bf16", True, ddp=True),
    "wave_bf16_cl_w14": Variant(
        "wave cache, bf16 + channels-last, 14 loader workers", "wave", "bf16", True, workers=14
    ),
    "bf16_compile_ro": Variant(
        "bf16 + compile (reduce-overhead: CUDA graphs)",
        "logmel",
        "bf16",
        compile=True,
        compile_mode="reduce-overhead",
    ),
    "bf16_cl_loop": Variant(
        "bf16 + channels-last, the training loop's own epochs", "logmel", "bf16", True, loop=True
    ),
    "bf16_compile_b24": Variant("bf16 + compile, batch 24", "logmel", "bf16", compile=True, batch=24),
    "bf16_compile_b48": Variant("bf16 + compile, batch 48", "logmel", "bf16", compile=True, batch=48),
}
CPU_VARIANTS = ["fp32", "bf16", "wave_bf16_cl", "bf16_cl_loop"]

# Dense bf16 tensor-core peaks from NVIDIA's datasheets (SXM parts; sparsity not counted).
DATASHEET_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}


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
        torch.set_num_threads(1)  # one item per worker at a time, as the official loaders run
        wave, _ = sf.read(self.folder / f"{self.ids[i]}.wav", dtype="float32")
        start = np.random.randint(0, max(1, wave.size - self.crop))
        with torch.no_grad():
            logmel = self.extractor(torch.from_numpy(wave[start : start + self.crop])[None])[0]
        return logmel, torch.from_numpy(self.targets[i].astype(np.float32))


def model_config(name: str) -> ModelConfig:
    from pydantic import TypeAdapter

    return TypeAdapter(ModelConfig).validate_python(load_group("model", name))


def forever(loader: DataLoader) -> Iterator:
    """Batches without end, each one loaded (``itertools.cycle`` would replay the first epoch's)."""
    while True:
        yield from loader


def timed(batches: Iterator, step: Callable, steps: int, warmup: int, device: torch.device) -> float:
    """Samples per second over ``steps`` batches after ``warmup`` batches."""
    for _ in range(warmup):
        step(next(batches))
    sync(device)
    seen, start = 0, time.perf_counter()
    for _ in range(steps):
        seen += step(next(batches))
    sync(device)
    return seen / (time.perf_counter() - start)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_with_peak(
    batches: Iterator, step: Callable, steps: int, warmup: int, device
) -> tuple[float, float]:
    """``timed``'s samples/s and the GPU's peak memory in GiB over the timed steps (NaN on the CPU).

    The peak is reset after the warm-up: cuDNN's autotuner tries algorithms with large workspaces
    in the first steps (71 GiB for CNN14 on an H100, sized to the free memory), a transient that
    the steady state does not need."""
    for _ in range(warmup):
        step(next(batches))
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rate = timed(batches, step, steps, 0, device)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return rate, peak


@contextlib.contextmanager
def one_process_group(device: torch.device) -> Iterator[None]:
    """A process group of one rank (NCCL on a GPU, gloo on the CPU), torn down afterwards."""
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@dataclass
class Data:
    """One model's synthetic clips and their caches."""

    setup: Setup
    features: dict[str, FeatureConfig]  # by cache kind
    caches: dict[str, FeatureCache]
    folder: Path
    ids: list[str]

    def frames(self, kind: str) -> int:
        return round(self.setup.crop_seconds * self.features[kind].cache_rate)


def prepare_data(model_name: str, root: Path, clips: int, clip_seconds: float, kinds: set[str]) -> Data:
    setup = SETUPS[model_name]
    logmel = validate(FeatureConfig, load_group("features", setup.features), setup.features)
    folder = root / f"audio{logmel.sample_rate}"
    if not folder.exists():
        folder.mkdir(parents=True)
        table = synth_clips(folder, clips, clip_seconds, logmel.sample_rate)
    else:
        table = pd.DataFrame({"clip_id": sorted(p.stem for p in folder.glob("*.wav"))})
        table["path"] = table["clip_id"] + ".wav"
    features = {"logmel": logmel, "wave": logmel.model_copy(update={"cache": "wave"})}
    workers = os.cpu_count() or 1
    caches = {
        kind: FeatureCache(build_cache(table, folder, features[kind], workers=workers))
        for kind in sorted(kinds)
    }
    return Data(setup, features, caches, folder, table["clip_id"].tolist())


def crop_dataset(data: Data, kind: str) -> CropDataset:
    """The training crops of the synthetic clips from the ``kind`` cache, with random targets."""
    targets = (np.random.default_rng(1).random((len(data.ids), N_CLASSES)) > 0.9).astype(np.float32)
    return CropDataset(
        data.caches[kind], data.ids, targets, np.ones(len(data.ids)), data.frames(kind), "wrap",
        silence_value(data.features[kind]), 0,
    )  # fmt: skip


def crop_loader(data: Data, kind: str, device: torch.device, workers: int) -> DataLoader:
    """The training loop's loader: crops from the cache, pinned memory on a GPU, prefetch 4."""
    return DataLoader(
        crop_dataset(data, kind), data.setup.batch, shuffle=True, drop_last=True, num_workers=workers,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
        prefetch_factor=4 if workers else None,
    )  # fmt: skip


def training_setup(model_name: str, data: Data, variant: Variant, device: torch.device) -> tuple:
    """(data with the variant's batch, its train config, the model on ``device``, its optimiser)."""
    if variant.batch:
        data = dataclasses.replace(data, setup=dataclasses.replace(data.setup, batch=variant.batch))
    features = data.features[variant.cache]
    tc = TrainConfig(
        batch_size=data.setup.batch, precision=variant.precision, compile=variant.compile,
        channels_last=variant.channels_last, compile_mode=variant.compile_mode, num_workers=variant.workers,
    )  # fmt: skip
    frames = data.frames("logmel")
    model = build_model(model_config(model_name), features.n_mels, N_CLASSES, frames, features=features)
    model = model.to(device)
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.param_groups(1e-4, 1.0, 0.01), fused=device.type == "cuda" or None)
    return data, tc, model, optimizer


def bench_ours(model_name: str, data: Data, variant: Variant, device: torch.device, args) -> dict:
    data, tc, model, optimizer = training_setup(model_name, data, variant, device)
    with one_process_group(device) if variant.ddp else contextlib.nullcontext():
        engine = StepEngine(
            model, optimizer, make_scheduler(optimizer, 0, 10**6, 0.01), tc, device, variant.ddp
        )
        loader = crop_loader(data, variant.cache, device, loader_workers(variant.workers, device))
        gen = torch.Generator().manual_seed(0)
        model.train()

        def step(batch) -> int:
            x, y, w = (t.to(device, non_blocking=True) for t in batch)
            x = x.float()  # crops travel as float16, as in the training loop
            with torch.no_grad():
                x = model.logmel(x)  # wave cache: log-mel on the device
            x = spec_augment(x, tc.specaugment, gen)  # at the input for both loops: same work, same place
            x, y, w = mixup(x, y, w, 0.4, gen)
            with engine.autocast():
                logits = engine.forward_model(x)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), y)
            engine.backward(loss)
            return x.shape[0]

        warmup = args.warmup + (args.compile_warmup if variant.compile else 0)
        started = time.perf_counter()
        rate, peak = timed_with_peak(forever(loader), step, args.steps, warmup, device)
    return {
        "batch": data.setup.batch,
        "samples_per_s": rate,
        "peak_gib": peak,
        "seconds": time.perf_counter() - started,
        "forward_gflop_per_sample": forward_flops(model, data, device) / 1e9
        if variant.precision == "bf16"
        else None,
    }


def forward_flops(model: torch.nn.Module, data: Data, device: torch.device) -> float:
    """FLOPs of one crop's forward pass (matrix products and convolutions, 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, data.frames("logmel"), data.features["logmel"].n_mels, device=device)
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    except Exception as exc:  # an operator the counter cannot trace must not cost the timing
        print(f"FLOP count failed: {type(exc).__name__}: {exc}")
        return float("nan")
    finally:
        model.train()
    return float(counter.get_total_flops())


def bench_loop(model_name: str, data: Data, variant: Variant, device: torch.device, args) -> dict:
    """The product's training loop, ``train_one_epoch`` with its fold ``EpochLoader``, over whole
    epochs of the synthetic clips: everything ``bench_ours`` leaves out (the loss read back every
    few steps, the progress bar, SpecAugment and mixup as configured, the loader's epoch changes)."""
    from audiotag.config.schema import load_competition
    from audiotag.train.epoch import fold_loader, train_one_epoch
    from audiotag.train.experiment import ExperimentConfig

    data, tc, model, optimizer = training_setup(model_name, data, variant, device)
    cfg = ExperimentConfig(
        name="bench", competition=load_competition("demo"), features=data.features[variant.cache],
        model=model_config(model_name), train=tc,
    )  # fmt: skip
    engine = StepEngine(model, optimizer, make_scheduler(optimizer, 0, 10**6, 0.01), tc, device, False)
    dataset = crop_dataset(data, variant.cache)
    loader = fold_loader(dataset, cfg, 0, device)
    per_epoch = len(dataset) // tc.batch_size
    warm_epochs = -(-(args.warmup + (args.compile_warmup if variant.compile else 0)) // per_epoch)
    timed_epochs = max(1, -(-args.steps // per_epoch))
    try:
        for epoch in range(warm_epochs):
            train_one_epoch(engine, dataset, cfg, 0, epoch, device, loader=loader)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        for epoch in range(warm_epochs, warm_epochs + timed_epochs):
            train_one_epoch(engine, dataset, cfg, 0, epoch, device, loader=loader)
        sync(device)
        seconds = time.perf_counter() - started
    finally:
        loader.close()
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {
        "batch": tc.batch_size,
        "samples_per_s": timed_epochs * per_epoch * tc.batch_size / seconds,
        "peak_gib": peak,
        "seconds": seconds,
        "epochs_timed": timed_epochs,
        "forward_gflop_per_sample": forward_flops(model, data, device) / 1e9
        if tc.precision == "bf16"
        else None,
    }


def bench_official(model_name: str, data: Data, device: torch.device, args) -> dict:
    features = data.features["logmel"]
    model = build_model(model_config(model_name), features.n_mels, N_CLASSES, data.frames("logmel")).to(
        device
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    crop = int(data.setup.crop_seconds * features.sample_rate)
    workers = loader_workers(None, device)
    loader = DataLoader(
        WaveCrops(data.folder, data.ids, features, crop), data.setup.batch, shuffle=True, drop_last=True,
        num_workers=workers, persistent_workers=workers > 0, pin_memory=device.type == "cuda",
    )  # fmt: skip
    model.train()

    def step(batch) -> int:
        x, y = (t.to(device) for t in batch)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return x.shape[0]

    started = time.perf_counter()
    rate, peak = timed_with_peak(forever(loader), step, args.steps, args.warmup, device)
    return {"samples_per_s": rate, "peak_gib": peak, "seconds": time.perf_counter() - started}


def bench_pipeline(data: Data, kind: str, device: torch.device, args) -> float:
    """Crops per second that the cache + the training loop's DataLoader deliver, with no model at all
    (pinned memory included: the copy to page-locked memory happens in the loader)."""
    loader = crop_loader(data, kind, device, loader_workers(None, device))
    return timed(forever(loader), lambda batch: batch[0].shape[0], args.steps * 4, 4, torch.device("cpu"))


def matmul_tflops(device: torch.device) -> float | None:
    """bf16 matrix-product rate this GPU reaches (8192^3, mean of 10 after 3 warm-ups)."""
    if device.type != "cuda":
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 10 * 2 * 8192**3 / (time.perf_counter() - start) / 1e12


def datasheet_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in DATASHEET_BF16_TFLOPS.items() if k in name), None)


def run(
    device: torch.device,
    models: list[str],
    variants: list[str],
    args: argparse.Namespace,
    out: Callable[[dict], None] | None = None,
    deadline: float | None = None,
) -> list[dict]:
    """Every model x variant row (official first), streamed to ``out``; variants that would start
    after ``deadline`` (time.monotonic()) are recorded as skipped."""
    configure_determinism(False, device)
    peak_sheet, peak_measured = datasheet_tflops(device), matmul_tflops(device)
    rows: list[dict] = []

    def emit(row: dict) -> None:
        rows.append(row)
        if out is not None:
            out(row)

    emit(
        {
            "kind": "gpu_peak",
            "datasheet_bf16_tflops": peak_sheet,
            "measured_bf16_matmul_tflops": peak_measured,
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        for model_name in models:
            kinds = {VARIANTS[v].cache for v in variants} | {"logmel"}
            t0 = time.perf_counter()
            data = prepare_data(model_name, Path(tmp), args.clips, args.clip_seconds, kinds)
            base = {
                "kind": "train",
                "model": model_name,
                "batch": data.setup.batch,
                "frames": data.frames("logmel"),
            }
            emit({**base, "variant": "data: synthesise + cache", "seconds": time.perf_counter() - t0})
            official = bench_official(model_name, data, device, args)
            emit(
                {
                    **base,
                    "variant": "official-style (CPU log-mel per item, fp32, Adam)",
                    **official,
                    "ratio": 1.0,
                }
            )
            best = 0.0
            for name in variants:
                variant = VARIANTS[name]
                if deadline is not None and time.monotonic() > deadline:
                    emit({**base, "variant": variant.label, "skipped": "time budget"})
                    continue
                try:
                    bench = bench_loop if variant.loop else bench_ours
                    ours = bench(model_name, data, variant, device, args)
                except Exception as exc:  # one failing variant must not hide the others
                    emit({**base, "variant": variant.label, "error": f"{type(exc).__name__}: {exc}"[:500]})
                    continue
                finally:
                    torch._dynamo.reset()
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                ours["ratio"] = ours["samples_per_s"] / official["samples_per_s"]
                if (
                    ours["forward_gflop_per_sample"]
                    and ours["forward_gflop_per_sample"] == ours["forward_gflop_per_sample"]
                ):
                    achieved = 3 * ours["forward_gflop_per_sample"] * ours["samples_per_s"] / 1e3  # TFLOP/s
                    ours["train_tflops"] = achieved
                    ours["mfu_datasheet"] = achieved / peak_sheet if peak_sheet else None
                    ours["mfu_measured_matmul"] = achieved / peak_measured if peak_measured else None
                best = max(best, ours["samples_per_s"])
                emit({**base, "variant": variant.label, **ours})
            for kind in sorted(kinds):
                pipe = bench_pipeline(data, kind, device, args)
                emit({
                    **base, "kind": "pipeline", "variant": f"data pipeline alone ({kind} cache)",
                    "samples_per_s": pipe, "headroom_vs_fastest": pipe / best if best else None,
                    "workers": loader_workers(None, device),
                })  # fmt: skip
    return rows


def print_table(rows: list[dict], console: Console) -> None:
    table = Table(title="training throughput (samples/s); official-style = per-item CPU log-mel, fp32, Adam")
    for col in (
        "model",
        "batch",
        "variant",
        "samples/s",
        "vs official",
        "GPU GiB",
        "MFU sheet/matmul",
        "note",
    ):
        table.add_column(col, justify="right")
    for r in rows:
        shown = any(key in r for key in ("samples_per_s", "error", "skipped"))
        if r["kind"] not in ("train", "pipeline") or not shown:
            continue
        mfu = (
            f"{r['mfu_datasheet']:.1%}/{r['mfu_measured_matmul']:.1%}"
            if r.get("mfu_datasheet") and r.get("mfu_measured_matmul")
            else ""
        )
        note = (
            r.get("error")
            or r.get("skipped")
            or (f"headroom {r['headroom_vs_fastest']:.1f}x" if r.get("headroom_vs_fastest") else "")
        )
        table.add_row(
            r["model"], str(r["batch"]), r["variant"],
            f"{r['samples_per_s']:.1f}" if "samples_per_s" in r else "",
            f"{r['ratio']:.2f}x" if "ratio" in r else "",
            f"{r['peak_gib']:.2f}" if r.get("peak_gib") == r.get("peak_gib") and "peak_gib" in r else "",
            mfu, note,
        )  # fmt: skip
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--models", nargs="+", default=["cnn_small"], choices=sorted(SETUPS))
    parser.add_argument(
        "--variants", nargs="+", default=None,
        help=f"of {sorted(VARIANTS)} or 'all'; default: {CPU_VARIANTS} on the CPU, all on a GPU",
    )  # fmt: skip
    parser.add_argument("--clips", type=int, default=96)
    parser.add_argument("--clip-seconds", type=float, default=12.0)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile-warmup", type=int, default=2, help="extra warm-up steps when compiling")
    args = parser.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    variants = args.variants or (list(VARIANTS) if device.type == "cuda" else CPU_VARIANTS)
    if variants == ["all"]:
        variants = list(VARIANTS)
    console = Console(width=160)
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "none"
    console.print(f"device {device} (GPU: {gpu}), {os.cpu_count()} CPU cores, torch {torch.__version__}")
    rows = run(device, args.models, variants, args, out=lambda r: console.print(r))
    print_table(rows, console)


if __name__ == "__main__":
    main()
