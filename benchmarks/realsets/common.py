"""What the real-audio check sets share: finding their Debian packages, seeded randomness, the room
(noise and reverberation) a clip is heard in, and writing a set atomically with its manifest.

A set is written as ``<out>/data/`` (the competition files, in a Kaggle layout), ``<out>/hidden/
test_truth.csv`` (the test labels, outside the layout, as the demo competitions keep them) and
``<out>/manifest.json`` (what made it: generator version, seed, size, source packages and versions).
Everything is written into ``<out>.partial`` and renamed at the end, so a killed run leaves no
half-written set behind.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import signal as sp_signal

from audiotag.core.atomic import atomic_write_text
from audiotag.core.errors import DataError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
DATA = "data"
TRUTH = "hidden/test_truth.csv"


class MissingSource(DataError):
    """A Debian (or PyPI) package a set is made from is not installed; the message names it."""


@dataclass(frozen=True)
class Size:
    """How big a set is: clips per class in train and test, and how many classes (None: all)."""

    train_per_class: int
    test_per_class: int
    classes: int | None = None


FULL = Size(train_per_class=10, test_per_class=10)
TINY = Size(train_per_class=2, test_per_class=1, classes=3)


def require_command(command: str, package: str) -> str:
    path = shutil.which(command)
    if path is None:
        raise MissingSource(
            f"{command}: not found; it comes with the Debian package {package} "
            f"(as root: apt-get install -y {package}); see benchmarks/README.md"
        )
    return path


def require_file(path: Path, package: str) -> Path:
    if not path.is_file():
        raise MissingSource(
            f"{path}: not found; it comes with the Debian package {package} "
            f"(as root: apt-get install -y {package}); see benchmarks/README.md"
        )
    return path


def debian_version(package: str) -> str:
    """The installed version of a Debian package ('unknown' where dpkg cannot say)."""
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, check=False
        )
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def rng_for(seed: int, *keys: int) -> np.random.Generator:
    """A generator of its own for each (seed, keys): a clip's draws never depend on other clips."""
    return np.random.default_rng([seed, *keys])


def log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """1/f noise (white noise shaped in the frequency domain), unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum[1:] /= np.sqrt(np.arange(1, len(spectrum)))
    spectrum[0] = 0.0
    noise = np.fft.irfft(spectrum, n)
    return noise / (np.sqrt(np.mean(noise**2)) + 1e-12)


def room(wave: np.ndarray, rate: int, rng: np.random.Generator, snr_db: tuple[float, float]) -> np.ndarray:
    """The clip as heard in a room: a short exponentially decaying reverberation (RT60 0.1-0.6 s, wet
    share 0-40 %), then pink background noise at a drawn SNR, then a drawn gain; peak at most 0.99."""
    wave = wave.astype(np.float64)
    rt60 = rng.uniform(0.1, 0.6)
    n_ir = int(rt60 * rate)
    t = np.arange(n_ir) / rate
    ir = rng.standard_normal(n_ir) * 10.0 ** (-3.0 * t / rt60)
    ir /= np.sqrt(np.sum(ir**2)) + 1e-12
    wet = sp_signal.fftconvolve(wave, ir)[: len(wave)]
    mix = rng.uniform(0.0, 0.4)
    wave = (1 - mix) * wave + mix * wet
    power = np.mean(wave**2)
    if power > 0:
        snr = rng.uniform(*snr_db)
        wave = wave + pink_noise(len(wave), rng) * np.sqrt(power / 10.0 ** (snr / 10.0))
    peak = np.max(np.abs(wave)) if len(wave) else 0.0
    gain = 10.0 ** (rng.uniform(-18.0, -1.0) / 20.0)
    return (wave / peak * gain if peak > 0 else wave).astype(np.float32)


def write_wav(path: Path, wave: np.ndarray, rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.clip(wave, -1.0, 1.0), rate, subtype="PCM_16")


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, buffer.getvalue())


def manifest_for(name: str, version: int, seed: int, size: Size, sources: dict[str, str]) -> dict:
    return {"set": name, "generator_version": version, "seed": seed, "size": asdict(size), "sources": sources}


def read_manifest(out: Path) -> dict | None:
    path = out / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


def is_current(out: Path, manifest: dict) -> bool:
    """The set at ``out`` was made by this generator version from the same seed, size and sources."""
    found = read_manifest(out)
    if found is None:
        return False
    return {k: found.get(k) for k in manifest} == manifest


def write_manifest(folder: Path, manifest: dict, counts: dict[str, float]) -> None:
    atomic_write_text(folder / MANIFEST, json.dumps({**manifest, "counts": counts}, indent=1) + "\n")


@contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A fresh ``<out>.partial`` to write the set into; renamed onto ``out`` (replacing it) at the end."""
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    yield partial
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    log.info("written %s", out)
