"""Offline, deterministic writing of the demo competitions in the exact Kaggle file formats (the
sounds themselves: ``demo_sounds.py``).

Two writers produce the FSDKaggle2018 file format (single label, ``manually_verified`` flag, label noise
on unverified clips) and the FSDKaggle2019 file format (multi-label, curated + noisy subsets). Both are
pure functions of ``DemoGeneratorConfig``: the plan (names, labels, durations) comes from one seeded
generator, each clip's audio from its own ``_seeded(seed, file_format, 1, index)``, so the same seed
gives byte-identical files. Everything is written into ``<raw_dir>.partial`` and renamed onto
``raw_dir`` at the end, so a killed run never leaves a half-written competition behind.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from audiotag.competitions.demo_sounds import CLASSES, Rng, mix_clip
from audiotag.config.competition_parts import DemoGeneratorConfig
from audiotag.core.atomic import atomic_write_text
from audiotag.core.errors import DataError
from audiotag.core.log import progress

log = logging.getLogger(__name__)

FORMAT_2018 = 2018
FORMAT_2019 = 2019
N_LABELS_P = (0.6, 0.3, 0.1)  # probabilities of 1, 2, 3 labels per 2019 clip


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class ClipPlan:
    """One clip of a demo file format, before any audio exists."""

    index: int  # seeds the clip's audio: _seeded(seed, file_format, 1, index)
    fname: str
    subset: str  # 2018: train / test; 2019: curated / noisy / test
    folder: str  # audio folder inside raw_dir
    labels: tuple[str, ...]  # true labels, the generating class first
    given: tuple[str, ...]  # labels written to the train CSV (possibly wrong); () for test clips
    verified: bool
    duration: float  # seconds, a whole number of samples


def _seeded(seed: int, *keys: int) -> Rng:
    """Independent generator for (seed, *keys); negative seeds are folded into uint64 first."""
    return np.random.default_rng([seed % 2**64, *keys])


def _fnames(rng: Rng, count: int) -> list[str]:
    """``count`` unique Kaggle-like names: 8 lowercase hex digits + .wav."""
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < count:
        name = f"{int(rng.integers(0, 2**32)):08x}.wav"
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def _durations(rng: Rng, cfg: DemoGeneratorConfig, count: int) -> list[float]:
    """Log-uniform in [min_duration, max_duration], rounded to whole samples inside the bounds."""
    sr = cfg.sample_rate
    lo, hi = math.ceil(cfg.min_duration * sr), math.floor(cfg.max_duration * sr)
    raw = np.exp(rng.uniform(np.log(cfg.min_duration), np.log(cfg.max_duration), count))
    return [min(max(round(d * sr), lo), max(hi, lo)) / sr for d in raw]


def _count(fraction: float, total: int) -> int:
    return math.floor(fraction * total + 0.5)


def _stratified_verified(rng: Rng, cfg: DemoGeneratorConfig, n_classes: int) -> np.ndarray:
    """Boolean mask over class-major train clips: ``verified_fraction`` of each class, at random."""
    per = cfg.train_per_class
    mask = np.zeros(n_classes * per, dtype=bool)
    k = _count(cfg.verified_fraction, per)
    for c in range(n_classes):
        mask[c * per + rng.permutation(per)[:k]] = True
    return mask


def _other(rng: Rng, exclude: Sequence[str]) -> str:
    choices = [c for c in CLASSES if c not in exclude]
    return choices[int(rng.integers(len(choices)))]


def _primaries(cfg: DemoGeneratorConfig) -> tuple[list[str], list[str]]:
    train = [c for c in CLASSES for _ in range(cfg.train_per_class)]
    test = [c for c in CLASSES for _ in range(cfg.test_per_class)]
    return train, test


def plan_fsd2018(cfg: DemoGeneratorConfig) -> list[ClipPlan]:
    """Train then test clips of the 2018-style demo; train rows sorted by (random) fname.

    ``verified_fraction`` of each class is manually verified (label correct); exactly
    ``round(label_noise * n_unverified)`` unverified clips carry a wrong label, uniform among the others.
    """
    rng = _seeded(cfg.seed, FORMAT_2018, 0)
    train, test = _primaries(cfg)
    names = _fnames(rng, len(train) + len(test))
    durations = _durations(rng, cfg, len(train) + len(test))
    verified = _stratified_verified(rng, cfg, len(CLASSES))
    unverified = np.flatnonzero(~verified)
    wrong = set(rng.permutation(unverified)[: _count(cfg.label_noise, len(unverified))].tolist())
    clips = []
    for i, label in enumerate(train):
        given = _other(rng, [label]) if i in wrong else label
        clips.append(
            ClipPlan(i, names[i], "train", "audio_train", (label,), (given,), bool(verified[i]), durations[i])
        )
    for j, label in enumerate(test, start=len(train)):
        clips.append(ClipPlan(j, names[j], "test", "audio_test", (label,), (), False, durations[j]))
    return _sorted_within_subsets(clips)


def _corrupt(rng: Rng, labels: tuple[str, ...], noise: float) -> tuple[str, ...]:
    """Drop each label with probability noise/2 (keeping one) and add a wrong one with probability noise."""
    kept = [x for x in labels if rng.random() >= noise / 2]
    if not kept:
        kept = [labels[int(rng.integers(len(labels)))]]
    if rng.random() < noise:
        kept.append(_other(rng, labels))
    return tuple(kept)


def plan_fsd2019(cfg: DemoGeneratorConfig) -> list[ClipPlan]:
    """Curated, noisy and test clips of the 2019-style demo (1-3 labels each, generating class first).

    ``verified_fraction`` of each class's train clips is curated (labels correct); the rest are noisy,
    with labels corrupted by ``_corrupt``.
    """
    rng = _seeded(cfg.seed, FORMAT_2019, 0)
    train, test = _primaries(cfg)
    names = _fnames(rng, len(train) + len(test))
    durations = _durations(rng, cfg, len(train) + len(test))
    curated = _stratified_verified(rng, cfg, len(CLASSES))
    clips = []
    for i, primary in enumerate(train + test):
        extra = int(rng.choice(len(N_LABELS_P), p=N_LABELS_P))
        others = [c for c in CLASSES if c != primary]
        labels = (primary, *(others[k] for k in rng.permutation(len(others))[:extra]))
        if i >= len(train):
            clips.append(ClipPlan(i, names[i], "test", "test", labels, (), False, durations[i]))
        elif curated[i]:
            clips.append(
                ClipPlan(i, names[i], "curated", "train_curated", labels, labels, True, durations[i])
            )
        else:
            given = _corrupt(rng, labels, cfg.label_noise)
            clips.append(ClipPlan(i, names[i], "noisy", "train_noisy", labels, given, False, durations[i]))
    return _sorted_within_subsets(clips)


def _sorted_within_subsets(clips: list[ClipPlan]) -> list[ClipPlan]:
    """Order of the CSV rows: subsets in first-seen order, rows by fname (random, like Kaggle's)."""
    order = {s: k for k, s in enumerate(dict.fromkeys(c.subset for c in clips))}
    return sorted(clips, key=lambda c: (order[c.subset], c.fname))


# ----------------------------------------------------------------------------- writing


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    path.write_text(_csv_text(header, rows), encoding="utf-8", newline="")


def _write_wav(path: Path, audio: np.ndarray, sr: int) -> None:
    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)
    sf.write(str(path), pcm, sr, subtype="PCM_16", format="WAV")


def _render(clips: Sequence[ClipPlan], stage: Path, cfg: DemoGeneratorConfig, file_format: int) -> None:
    for folder in dict.fromkeys(c.folder for c in clips):
        (stage / folder).mkdir(parents=True, exist_ok=True)
    total = sum(c.duration for c in clips)
    log.info("synthesising %d clips (%.0f s of audio at %d Hz)", len(clips), total, cfg.sample_rate)
    for clip in progress(clips, desc="demo clips", unit="clip"):
        rng = _seeded(cfg.seed, file_format, 1, clip.index)
        audio = mix_clip(list(clip.labels), clip.duration, cfg.sample_rate, rng)
        _write_wav(stage / clip.folder / clip.fname, audio, cfg.sample_rate)


@contextlib.contextmanager
def _staging(raw_dir: Path) -> Iterator[Path]:
    """Yield an empty ``<raw_dir>.partial`` folder; rename it onto ``raw_dir`` if the block succeeds."""
    raw_dir = Path(raw_dir)
    if raw_dir.exists() and (not raw_dir.is_dir() or any(raw_dir.iterdir())):
        raise DataError(f"{raw_dir} already exists and is not empty; remove it to synthesise the demo again")
    stage = raw_dir.with_name(raw_dir.name + ".partial")
    if stage.exists():
        log.info("removing %s left over from an interrupted run", stage)
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if raw_dir.is_dir():
        raw_dir.rmdir()  # empty (checked above)
    os.replace(stage, raw_dir)


def _join(labels: Sequence[str]) -> str:
    return ",".join(sorted(labels))


def generate_fsd2018_files(raw_dir: Path, truth_path: Path, cfg: DemoGeneratorConfig) -> None:
    """FSDKaggle2018 files: train.csv, audio_train/, audio_test/, sample_submission.csv (+ hidden truth)."""
    raw_dir, truth_path = Path(raw_dir), Path(truth_path)
    clips = plan_fsd2018(cfg)
    train = [c for c in clips if c.subset == "train"]
    test = [c for c in clips if c.subset == "test"]
    log.info(
        "demo (2018 file format): %d classes, %d train + %d test clips -> %s",
        len(CLASSES),
        len(train),
        len(test),
        raw_dir,
    )
    with _staging(raw_dir) as stage:
        _render(clips, stage, cfg, FORMAT_2018)
        rows = [(c.fname, c.given[0], int(c.verified)) for c in train]
        _write_csv(stage / "train.csv", ["fname", "label", "manually_verified"], rows)
        placeholder = " ".join(sorted(CLASSES)[:3])
        sample = [(c.fname, placeholder) for c in test]
        _write_csv(stage / "sample_submission.csv", ["fname", "label"], sample)
        atomic_write_text(truth_path, _csv_text(["fname", "label"], [(c.fname, c.labels[0]) for c in test]))
    log.info("demo (2018 file format) written to %s; test truth in %s", raw_dir, truth_path)


def generate_fsd2019_files(raw_dir: Path, truth_path: Path, cfg: DemoGeneratorConfig) -> None:
    """FSDKaggle2019 files: train_curated/noisy .csv and folders, test/, sample_submission.csv."""
    raw_dir, truth_path = Path(raw_dir), Path(truth_path)
    clips = plan_fsd2019(cfg)
    by_subset = {s: [c for c in clips if c.subset == s] for s in ("curated", "noisy", "test")}
    log.info(
        "demo (2019 file format): %d classes, %d curated + %d noisy + %d test clips -> %s",
        len(CLASSES),
        *(len(v) for v in by_subset.values()),
        raw_dir,
    )
    with _staging(raw_dir) as stage:
        _render(clips, stage, cfg, FORMAT_2019)
        for subset in ("curated", "noisy"):
            rows = [(c.fname, _join(c.given)) for c in by_subset[subset]]
            _write_csv(stage / f"train_{subset}.csv", ["fname", "labels"], rows)
        classes = sorted(CLASSES)
        sample = [(c.fname, *([0] * len(classes))) for c in by_subset["test"]]
        _write_csv(stage / "sample_submission.csv", ["fname", *classes], sample)
        truth = [(c.fname, _join(c.labels)) for c in by_subset["test"]]
        atomic_write_text(truth_path, _csv_text(["fname", "labels"], truth))
    log.info("demo (2019 file format) written to %s; test truth in %s", raw_dir, truth_path)
