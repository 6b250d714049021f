"""What the augmentation libraries cost per training batch, on the demo competition's clips.

Waves (``train.wave_augment``, audiomentations, in ``CropDataset`` on each crop of the wave cache):
crops per second of one process without augmentation and with each transform alone (forced on,
``p: 1``, the worst case), then the chain given by ``--wave-chain``. Log-mel
(``train.spec_augment_lib``, albumentations, per clip after the log-mel): clips per second of
``SpecAugmentLib.batch`` for each transform alone (``p: 1``). For scale, the same table gives what
a wave cache costs by itself (the log-mel computed per batch instead of read from the log-mel
cache) and one optimizer step of the demo's small CNN on this CPU, all per batch of ``--batch-size``.

    .venv/bin/python benchmarks/augment_speed.py                  # demo cache (built on first use)
    .venv/bin/python benchmarks/augment_speed.py --batches 4 --threads 1

Ratios are clips/s with the transform over clips/s without (1.0 = free). The DataLoader spreads the
wave augmentation over its workers (``train.num_workers``; 0 on a CPU run: the training process
does it), so on a GPU machine with 8 workers the crops per second scale with the cores; the
log-mel library runs in the training process on the CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "experiments" / "demo" / "cnn_small.yaml"

WAVE_TRANSFORMS = [
    {"name": "Gain", "min_gain_db": -6, "max_gain_db": 6},
    {"name": "AddBackgroundNoise", "source": "competition", "min_snr_db": 3, "max_snr_db": 20},
    {"name": "BandPassFilter"},
    {"name": "PitchShift", "min_semitones": -2, "max_semitones": 2},
    {"name": "PitchShift", "min_semitones": -2, "max_semitones": 2, "method": "librosa_phase_vocoder"},
    {"name": "TimeStretch", "min_rate": 0.8, "max_rate": 1.25},
    {"name": "ApplyImpulseResponse", "ir_path": "IRS"},  # a folder of synthetic IRs made here
    {"name": "AddGaussianSNR"},
]
WAVE_CHAIN = [
    {"name": "Gain", "min_gain_db": -6, "max_gain_db": 6, "p": 0.5},
    {"name": "AddBackgroundNoise", "source": "competition", "min_snr_db": 3, "max_snr_db": 20, "p": 0.5},
    {"name": "PitchShift", "min_semitones": -2, "max_semitones": 2, "p": 0.3},
]
SPEC_TRANSFORMS = [
    {
        "name": "CoarseDropout",
        "num_holes_range": [1, 3],
        "hole_height_range": [4, 12],
        "hole_width_range": [8, 30],
    },
    {"name": "XYMasking", "num_masks_x": 2, "num_masks_y": 2, "mask_x_length": 12, "mask_y_length": 8},
    {"name": "Affine", "translate_px": {"x": [-20, 20], "y": [-2, 2]}, "border_mode": 3},
    {"name": "RandomBrightnessContrast", "brightness_limit": 0.03, "contrast_limit": 0.1},
    {"name": "GaussNoise", "std_range": [0.005, 0.01]},
    {"name": "GridDistortion"},
]


def label(spec: dict) -> str:
    extra = {k: v for k, v in spec.items() if k not in ("name", "p")}
    method = f" ({extra['method']})" if "method" in extra else ""
    return f"{spec['name']}{method}"


def per_second(work: Callable[[], int], repeats: int = 3) -> float:
    """Items per second of ``work`` (which returns how many it did): the best of ``repeats``."""
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = work()
        best = max(best, n / (time.perf_counter() - t0))
    return best


def impulse_responses(folder: Path, sr: int) -> Path:
    """Three exponentially decaying noise bursts (0.2-0.6 s), the IRs of rooms of growing size."""
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, seconds in enumerate((0.2, 0.4, 0.6)):
        t = np.arange(round(seconds * sr)) / sr
        ir = rng.standard_normal(t.size) * np.exp(-6.9 * t / seconds)
        ir[0] = 1.0
        sf.write(folder / f"ir{i}.wav", (ir / np.abs(ir).max()).astype(np.float32), sr)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=3, help="batches per measurement (best of 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all)")
    parser.add_argument("--workers", type=int, default=2, help="prepare's decode workers")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    sys.path.insert(0, str(REPO / "src"))

    from audiotag.core.log import setup_logging
    from audiotag.data.cache_reader import FeatureCache
    from audiotag.data.dataset import CropDataset, fit_length, silence_value
    from audiotag.data.features import make_extractor
    from audiotag.data.spec_augment_lib import SpecAugmentLib
    from audiotag.data.wave_augment import fold_wave_augment
    from audiotag.models.registry import build_model
    from audiotag.runs.prepare import prepare
    from audiotag.train.experiment import load_experiment

    setup_logging()
    console = Console(width=150)
    wave_cfg = load_experiment(DEMO, ["features.cache=wave"])
    logmel_cfg = load_experiment(DEMO)
    waves = FeatureCache(prepare(wave_cfg.competition, wave_cfg.features, workers=args.workers).cache_dir)
    logmels = FeatureCache(
        prepare(logmel_cfg.competition, logmel_cfg.features, workers=args.workers).cache_dir
    )
    features = logmel_cfg.features
    sr, n = features.sample_rate, args.batch_size * args.batches
    ids = [c for c in waves.clip_ids if c in logmels][: max(n, 64)]
    targets, weights = np.zeros((len(ids), 1), np.float32), np.ones(len(ids), np.float32)
    seconds = logmel_cfg.train.crop_seconds
    crop_samples, crop_frames = round(seconds * sr), round(seconds * features.frames_per_second)
    work = REPO / "competition" / "_bench_augment"
    irs = impulse_responses(work / "irs", sr)

    def crops(cache, rows: int, augment=None) -> Callable[[], int]:
        dataset = CropDataset(
            cache, ids, targets, weights, rows, "wrap", silence_value(cache.config), 0, augment
        )

        def run() -> int:
            for i in range(n):
                dataset[i % len(ids)]
            return n

        return run

    # seconds per clip of each part; a CPU run (no DataLoader worker) does them one after the other
    wave_crop = 1 / per_second(crops(waves, crop_samples))
    logmel_crop = 1 / per_second(crops(logmels, crop_frames))
    extractor = make_extractor(features)
    batch_waves = 0.1 * torch.randn(args.batch_size, crop_samples, generator=torch.Generator().manual_seed(0))

    def logmel_from_waves() -> int:
        with torch.no_grad():
            for _ in range(args.batches):
                extractor(batch_waves)
        return n

    front_end = 1 / per_second(logmel_from_waves)
    fill = silence_value(features)
    batch = torch.stack(
        [torch.from_numpy(fit_length(logmels.get(c), crop_frames, 0, "wrap", fill)) for c in ids[:8]]
    )
    batch = batch[torch.arange(args.batch_size) % len(batch)]
    model = build_model(logmel_cfg.model, features.n_mels, 14, crop_frames, None, features)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    y = torch.zeros(args.batch_size, 14)

    def steps() -> int:
        for _ in range(args.batches):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return n

    step = 1 / per_second(steps)
    wave_run, logmel_run = wave_crop + front_end + step, logmel_crop + step

    rows: list[tuple[str, str, float, float, float]] = []  # family, what, s per clip, data ratio, run ratio
    rows.append(("parts", "log-mel crop, read from the log-mel cache", logmel_crop, np.nan, np.nan))
    rows.append(("parts", "wave crop, read from the wave cache", wave_crop, np.nan, np.nan))
    rows.append(("parts", "log-mel of a wave crop (front-end, per batch)", front_end, np.nan, np.nan))
    rows.append(("parts", "optimizer step of the demo's cnn_small", step, np.nan, np.nan))
    rows.append(
        ("parts", "wave cache instead of log-mel cache", wave_run - logmel_run, np.nan, logmel_run / wave_run)
    )

    def wave_row(what: str, specs: list[dict]) -> None:
        augment = fold_wave_augment(specs, sr, waves, ids, None, fold=0)
        cost = max(0.0, 1 / per_second(crops(waves, crop_samples, augment)) - wave_crop)
        rows.append(
            ("wave_augment", what, cost, wave_crop / (wave_crop + cost), wave_run / (wave_run + cost))
        )

    for spec in WAVE_TRANSFORMS:
        spec = {**spec, "p": 1.0}
        if spec.get("ir_path") == "IRS":
            spec["ir_path"] = str(irs)
        wave_row(f"{label(spec)}, p 1", [spec])
    wave_row(" + ".join(f"{label(s)} p {s['p']}" for s in WAVE_CHAIN), WAVE_CHAIN)

    entropies = [[0, 0, 5, 0, i] for i in range(args.batch_size)]
    for spec in SPEC_TRANSFORMS:
        augment = SpecAugmentLib([{**spec, "p": 1.0}], features)

        def run(augment: SpecAugmentLib = augment) -> int:
            for _ in range(args.batches):
                augment.batch(batch, entropies)
            return n

        cost = 1 / per_second(run)
        ratios = logmel_crop / (logmel_crop + cost), logmel_run / (logmel_run + cost)
        rows.append(("spec_augment_lib", f"{label(spec)}, p 1", cost, *ratios))

    table = Table(
        title=f"augmentation cost per batch of {args.batch_size}, {torch.get_num_threads()} torch threads"
    )
    for column in ("family", "what", "ms per batch", "clips/s ratio: data", "clips/s ratio: CPU run"):
        table.add_column(column, justify="left" if column in ("family", "what") else "right")
    for family, what, cost, data_ratio, run_ratio in rows:
        ratios = ["" if np.isnan(r) else f"{r:.3f}" for r in (data_ratio, run_ratio)]
        table.add_row(family, what, f"{1000 * args.batch_size * cost:.1f}", *ratios)
    console.print(table)
    console.print(
        "ratio data: crops/s with the transform over crops/s without (the data pipeline alone); ratio CPU "
        "run: clips/s of a CPU training run (crops, front-end, augmentation and optimizer step one after "
        "the other) with it over without. The wave rows compare with the wave-cache run, the log-mel rows "
        "with the log-mel-cache run; 'wave cache instead of log-mel cache' compares the two."
    )


if __name__ == "__main__":
    main()
