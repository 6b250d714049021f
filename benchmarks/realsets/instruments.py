"""Sampled instruments, mixed 1-3 to a clip, tested on an unseen sample library: FSDKaggle2019
layout, multi-label, lwlrap.

Eighteen General MIDI instruments, played from the recorded samples of two SoundFont banks that
Debian ships: the training clips from FluidR3_GM (``fluid-soundfont-gm``), the test clips from
TimGM6mb (``timgm6mb-soundfont``, the bank pretty_midi also bundles). The two banks were recorded
and assembled independently, so the test asks whether a model learnt the instrument or the bank.
Notes are rendered by this folder's own SoundFont reader (``sf2.py``) rather than by fluidsynth: it
needs no binary or Python binding, gives the same samples whatever fluidsynth's version and default
effects (reverb, chorus, gain, interpolation), and tests can build a tiny bank to check it.

A clip (2-5 s) holds one instrument (half of the clips), two (35 %) or three (15 %). Each plays,
from a drawn start, a held note, a chord of 2-4 notes, or a melody of 3-8 notes, at drawn velocities
and pitches within the instrument's usual range; each instrument's part is scaled to a drawn level
(0 to -10 dB) and the mix is heard in a drawn room (reverberation, pink noise at 15-40 dB SNR). Each
class is the first instrument of ``clips per class`` clips, so every class has at least that many.

Files: ``train_curated.csv`` (fname,labels; labels comma-separated), ``train_curated/``, ``test/``,
``sample_submission.csv`` (fname + the class columns); the test labels in ``hidden/test_truth.csv``.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import signal as sp_signal

from audiotag.core.errors import DataError
from audiotag.core.log import progress

from .common import (
    DATA,
    TRUTH,
    Size,
    debian_version,
    manifest_for,
    require_file,
    rng_for,
    room,
    staged,
    write_csv,
    write_manifest,
    write_wav,
)
from .sf2 import SoundFont

log = logging.getLogger(__name__)

NAME = "instruments"
YAML = Path(__file__).with_name("instruments.yaml")
VERSION = 1  # bump when the same seed would give other files
DEFAULT_SIZE = Size(train_per_class=20, test_per_class=8)
SF2_DIR = Path("/usr/share/sounds/sf2")
LIBRARIES = {  # split -> (SoundFont file, Debian package)
    "train": (SF2_DIR / "FluidR3_GM.sf2", "fluid-soundfont-gm"),
    "test": (SF2_DIR / "TimGM6mb.sf2", "timgm6mb-soundfont"),
}
RENDER_RATE = 44100  # notes are rendered here, then brought down with an anti-aliasing filter
RATE = 22050
N_LABELS_P = (0.5, 0.35, 0.15)
SNR_DB = (15.0, 40.0)


@dataclass(frozen=True)
class Instrument:
    label: str
    program: int  # General MIDI program, 0-based
    low: int  # usual range, MIDI keys
    high: int


INSTRUMENTS = (
    Instrument("Piano", 0, 36, 96),
    Instrument("Harpsichord", 6, 41, 89),
    Instrument("Vibraphone", 11, 53, 89),
    Instrument("Church_organ", 19, 36, 84),
    Instrument("Accordion", 21, 53, 84),
    Instrument("Harmonica", 22, 60, 84),
    Instrument("Nylon_guitar", 24, 40, 76),
    Instrument("Clean_electric_guitar", 27, 40, 79),
    Instrument("Acoustic_bass", 32, 28, 55),
    Instrument("Violin", 40, 55, 96),
    Instrument("Cello", 42, 36, 72),
    Instrument("Harp", 46, 36, 96),
    Instrument("Trumpet", 56, 55, 82),
    Instrument("Trombone", 57, 40, 72),
    Instrument("Alto_sax", 65, 49, 80),
    Instrument("Clarinet", 71, 50, 89),
    Instrument("Flute", 73, 60, 96),
    Instrument("Banjo", 105, 48, 79),
)


@dataclass(frozen=True)
class Note:
    key: int
    velocity: int
    start: float  # seconds into the clip
    held: float  # seconds until release


@dataclass(frozen=True)
class Part:
    instrument: Instrument
    notes: tuple[Note, ...]
    level_db: float


@dataclass(frozen=True)
class Clip:
    fname: str
    duration: float
    parts: tuple[Part, ...]

    @property
    def labels(self) -> list[str]:
        return [p.instrument.label for p in self.parts]


def clip_name(seed: int, split: str, index: int) -> str:
    return hashlib.sha1(f"{NAME}/{seed}/{split}/{index}".encode()).hexdigest()[:8] + ".wav"


def phrase(inst: Instrument, duration: float, rng: np.random.Generator) -> tuple[Note, ...]:
    """A held note, a chord or a melody within the instrument's range, inside ``duration`` seconds."""
    start = float(rng.uniform(0.0, min(1.0, duration / 3)))
    room_left = duration - start
    centre = int(rng.integers(inst.low + 4, inst.high - 3))
    kind = rng.choice(["note", "chord", "melody"], p=[0.25, 0.3, 0.45])
    if kind == "note":
        held = float(rng.uniform(0.4, room_left))
        return (Note(centre, int(rng.integers(50, 121)), start, held),)
    if kind == "chord":
        intervals = rng.choice([3, 4, 5, 7, 8, 9, 12], size=int(rng.integers(1, 4)), replace=False)
        keys = sorted({centre, *(min(centre + int(i), inst.high) for i in intervals)})
        held = float(rng.uniform(0.5, room_left))
        velocity = int(rng.integers(50, 121))
        return tuple(Note(k, velocity, start, held) for k in keys)
    n = int(rng.integers(3, 9))
    step = room_left / n
    keys = np.clip(centre + np.cumsum(rng.integers(-5, 6, size=n)), inst.low, inst.high)
    return tuple(
        Note(int(k), int(rng.integers(50, 121)), start + i * step, float(step * rng.uniform(0.5, 1.0)))
        for i, k in enumerate(keys)
    )


def plan(seed: int, split: str, per_class: int, instruments: list[Instrument]) -> list[Clip]:
    """``per_class`` clips led by each instrument, with 0-2 other instruments drawn at random."""
    order_rng = rng_for(seed, 0, 0 if split == "train" else 1)
    leads = [inst for inst in instruments for _ in range(per_class)]
    leads = [leads[i] for i in order_rng.permutation(len(leads))]
    clips = []
    for index, lead in enumerate(leads):
        rng = rng_for(seed, 1, 0 if split == "train" else 1, index)
        duration = float(rng.uniform(2.0, 5.0))
        n_labels = min(int(rng.choice([1, 2, 3], p=N_LABELS_P)), len(instruments))
        others = [i for i in instruments if i is not lead]
        extra = [others[i] for i in rng.choice(len(others), size=n_labels - 1, replace=False)]
        parts = tuple(
            Part(inst, phrase(inst, duration, rng), float(rng.uniform(-10.0, 0.0))) for inst in (lead, *extra)
        )
        clips.append(Clip(clip_name(seed, split, index), duration, parts))
    return clips


def render(bank: SoundFont, clip: Clip, seed: int, split: str, index: int) -> np.ndarray:
    n = int(clip.duration * RENDER_RATE)
    mix = np.zeros(n, dtype=np.float64)
    for part in clip.parts:
        stem = np.zeros(n, dtype=np.float64)
        for note in part.notes:
            wave = bank.render(part.instrument.program, note.key, note.velocity, note.held, RENDER_RATE)
            at = int(note.start * RENDER_RATE)
            take = min(len(wave), n - at)
            if take > 0:
                stem[at : at + take] += wave[:take]
        rms = np.sqrt(np.mean(stem**2))
        if rms == 0:
            raise DataError(
                f"{bank.path}: program {part.instrument.program} ({part.instrument.label}) rendered silence"
            )
        mix += stem / rms * 10.0 ** (part.level_db / 20.0)
    mix = sp_signal.resample_poly(mix, RATE, RENDER_RATE)
    return room(mix, RATE, rng_for(seed, 2, 0 if split == "train" else 1, index), SNR_DB)


def sources() -> dict[str, str]:
    """The packages this set is made from, with their versions; MissingSource when one is absent."""
    for path, package in LIBRARIES.values():
        require_file(path, package)
    return {package: debian_version(package) for _, package in LIBRARIES.values()}


def generate(out: Path, seed: int, size: Size = DEFAULT_SIZE) -> dict:
    """Write the set into ``out`` (replaced); returns its manifest."""
    manifest = manifest_for(NAME, VERSION, seed, size, sources())
    instruments = list(INSTRUMENTS) if size.classes is None else list(INSTRUMENTS)[: size.classes]
    labels = sorted(i.label for i in instruments)
    splits = {
        "train": ("train_curated", plan(seed, "train", size.train_per_class, instruments)),
        "test": ("test", plan(seed, "test", size.test_per_class, instruments)),
    }
    with staged(out) as folder:
        data = folder / DATA
        for split, (audio, clips) in splits.items():
            bank = SoundFont(LIBRARIES[split][0])
            for index, clip in enumerate(progress(clips, desc=f"{NAME} {audio}", unit="clip")):
                write_wav(data / audio / clip.fname, render(bank, clip, seed, split, index), RATE)
        train, test = splits["train"][1], splits["test"][1]
        write_csv(
            data / "train_curated.csv", ["fname", "labels"], [(c.fname, ",".join(c.labels)) for c in train]
        )
        write_csv(
            data / "sample_submission.csv", ["fname", *labels], [(c.fname, *[0] * len(labels)) for c in test]
        )
        write_csv(folder / TRUTH, ["fname", "labels"], [(c.fname, ",".join(c.labels)) for c in test])
        counts = {"train": len(train), "test": len(test), "classes": len(labels)}
        counts |= {"labels per clip (train)": round(float(np.mean([len(c.parts) for c in train])), 2)}
        write_manifest(folder, manifest, counts)
    return manifest
