"""Spoken keywords from eSpeak NG's voices, tested on unseen voices: FSDKaggle2018 layout, MAP@3.

Thirty Speech Commands words, each spoken by ``espeak-ng`` (Debian package ``espeak-ng``). A speaker
is an English accent (eight: British, American, Scottish, Lancaster, West Midlands, RP, Caribbean,
New York) with one of eSpeak NG's voice variants (about a hundred: male, female, klatt, croak,
whisper, named characters). The variants are split once, from the seed, into training voices (two
thirds) and test voices (one third): the test clips are spoken by voice variants no training clip
has. Each clip draws its rate (110-220 words a minute) and pitch (20-80 of espeak's 0-99), silence
before and after, and the room it is heard in (reverberation, pink noise at 10-35 dB SNR, gain).
Within a class, each clip has a different speaker. The training CSV names each clip's voice variant
(``voice``), the competition's group column: the CV folds then hold out voices as the test does.

Files: ``train.csv`` (fname,label,manually_verified,voice,accent), ``audio_train/``,
``audio_test/``, ``sample_submission.csv``; the test labels in ``hidden/test_truth.csv``.
"""

from __future__ import annotations

import hashlib
import logging
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from audiotag.core.errors import DataError
from audiotag.core.log import progress

from .common import (
    DATA,
    FULL,
    TRUTH,
    Size,
    debian_version,
    log_uniform,
    manifest_for,
    require_command,
    rng_for,
    room,
    staged,
    write_csv,
    write_manifest,
    write_wav,
)

log = logging.getLogger(__name__)

NAME = "spoken_words"
YAML = Path(__file__).with_name("spoken_words.yaml")
VERSION = 1  # bump when the same seed would give other files
DEFAULT_SIZE = FULL
PACKAGE = "espeak-ng"
RATE = 22050  # espeak-ng's own output rate
# fmt: off
WORDS = (
    "backward", "bed", "bird", "cat", "dog", "down", "eight", "five", "follow", "forward", "four", "go",
    "happy", "house", "learn", "left", "nine", "no", "off", "on", "one", "right", "seven", "six", "stop",
    "three", "tree", "two", "up", "yes",
)
# fmt: on
ACCENTS = (
    "en",
    "en-us",
    "en-gb-scotland",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-gb-x-rp",
    "en-029",
    "en-us-nyc",
)
TEST_SHARE = 1 / 3  # of the voice variants, kept for the test clips
SNR_DB = (10.0, 35.0)
TRAIN, TEST = 0, 1


@dataclass(frozen=True)
class Clip:
    fname: str
    word: str
    accent: str
    variant: str
    rate_wpm: int
    pitch: int


def espeak_info(espeak: str) -> tuple[str, Path]:
    """espeak-ng's version and its data folder, from ``espeak-ng --version``."""
    out = subprocess.run([espeak, "--version"], capture_output=True, text=True, check=False).stdout
    version = re.search(r"(\d+\.\d+\S*)", out)
    data = re.search(r"Data at:\s*(\S.*)$", out.strip(), flags=re.MULTILINE)
    if data is None:
        raise DataError(f"{espeak} --version does not say where its data is: {out.strip()!r}")
    return (version.group(1) if version else "unknown"), Path(data.group(1).strip())


def voice_variants(data: Path) -> list[str]:
    """The voice variants (files in ``voices/!v``), sorted; names with spaces are left out."""
    folder = data / "voices" / "!v"
    names = sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    names = [n for n in names if re.fullmatch(r"[A-Za-z0-9_-]+", n)]
    if len(names) < 6:
        raise DataError(f"{folder}: {len(names)} voice variants; expected the ~100 of espeak-ng-data")
    return names


def accents(espeak: str) -> list[str]:
    """The accents of ACCENTS this espeak-ng knows (``--voices=en``'s language column)."""
    out = subprocess.run([espeak, "--voices=en"], capture_output=True, text=True, check=False).stdout
    have = {parts[1] for parts in (line.split() for line in out.splitlines()[1:]) if len(parts) > 1}
    found = [a for a in ACCENTS if a in have or (a == "en" and "en-gb" in have)]
    if len(found) < 4:
        raise DataError(f"espeak-ng knows only {found} of the English accents {list(ACCENTS)}")
    return found


def clip_name(seed: int, split: int, index: int) -> str:
    """An 8-hex-digit name, as Freesound's in FSDKaggle2018, that says nothing about the label."""
    return hashlib.sha1(f"{NAME}/{seed}/{split}/{index}".encode()).hexdigest()[:8] + ".wav"


def plan(
    seed: int, size: Size, variants: list[str], accent_names: list[str]
) -> tuple[list[Clip], list[Clip]]:
    """Training and test clips: words x clips per class, distinct speakers within a class."""
    rng = rng_for(seed, 0)
    order = rng.permutation(len(variants))
    n_test = max(1, round(len(variants) * TEST_SHARE))
    pools = {
        TEST: [variants[i] for i in sorted(order[:n_test])],
        TRAIN: [variants[i] for i in sorted(order[n_test:])],
    }
    words = list(WORDS) if size.classes is None else list(WORDS)[: size.classes]
    out: dict[int, list[Clip]] = {TRAIN: [], TEST: []}
    for split, per_class in ((TRAIN, size.train_per_class), (TEST, size.test_per_class)):
        speakers = [(a, v) for v in pools[split] for a in accent_names]
        for word_index, word in enumerate(words):
            draw = rng_for(seed, 1, split, word_index)
            chosen = draw.choice(len(speakers), size=per_class, replace=per_class > len(speakers))
            for k in chosen:
                accent, variant = speakers[k]
                index = len(out[split])
                out[split].append(
                    Clip(
                        clip_name(seed, split, index),
                        word,
                        accent,
                        variant,
                        int(draw.integers(110, 221)),
                        int(draw.integers(20, 81)),
                    )
                )
    return out[TRAIN], out[TEST]


def speak(espeak: str, clip: Clip, tmp: Path) -> np.ndarray:
    target = tmp / "word.wav"
    command = [espeak, "-v", f"{clip.accent}+{clip.variant}", "-s", str(clip.rate_wpm), "-p", str(clip.pitch)]
    result = subprocess.run([*command, "-w", str(target), clip.word], capture_output=True, text=True)
    if result.returncode != 0 or not target.is_file():
        raise DataError(f"{' '.join(command)} {clip.word!r} failed: {result.stderr.strip()}")
    wave, rate = sf.read(target, dtype="float32")
    if rate != RATE:
        raise DataError(f"espeak-ng wrote {rate} Hz, expected {RATE}")
    if not np.any(wave):
        raise DataError(f"espeak-ng said nothing for {' '.join(command)} {clip.word!r}")
    return wave


def render(espeak: str, clip: Clip, seed: int, split: int, index: int, tmp: Path) -> np.ndarray:
    rng = rng_for(seed, 2, split, index)
    word = speak(espeak, clip, tmp)
    lead, tail = (np.zeros(int(log_uniform(rng, 0.03, 0.5) * RATE), np.float32) for _ in range(2))
    return room(np.concatenate([lead, word, tail]), RATE, rng, SNR_DB)


def sources() -> dict[str, str]:
    """The packages this set is made from, with their versions; MissingSource when one is absent."""
    espeak = require_command("espeak-ng", PACKAGE)
    return {"espeak-ng": espeak_info(espeak)[0], "espeak-ng-data (Debian)": debian_version("espeak-ng-data")}


def generate(out: Path, seed: int, size: Size = DEFAULT_SIZE) -> dict:
    """Write the set into ``out`` (replaced); returns its manifest."""
    espeak = require_command("espeak-ng", PACKAGE)
    variants = voice_variants(espeak_info(espeak)[1])
    accent_names = accents(espeak)
    manifest = manifest_for(NAME, VERSION, seed, size, sources())
    train, test = plan(seed, size, variants, accent_names)
    with staged(out) as folder, tempfile.TemporaryDirectory() as tmp:
        data = folder / DATA
        for split, clips, audio in ((TRAIN, train, "audio_train"), (TEST, test, "audio_test")):
            for index, clip in enumerate(progress(clips, desc=f"{NAME} {audio}", unit="clip")):
                write_wav(
                    data / audio / clip.fname, render(espeak, clip, seed, split, index, Path(tmp)), RATE
                )
        write_csv(
            data / "train.csv",
            ["fname", "label", "manually_verified", "voice", "accent"],
            [(c.fname, c.word, 1, c.variant, c.accent) for c in train],
        )
        write_csv(data / "sample_submission.csv", ["fname", "label"], [(c.fname, "") for c in test])
        write_csv(
            folder / TRUTH,
            ["fname", "label", "voice", "accent"],
            [(c.fname, c.word, c.variant, c.accent) for c in test],
        )
        counts = {"train": len(train), "test": len(test), "classes": len({c.word for c in train})}
        counts |= {
            "train voices": len({c.variant for c in train}),
            "test voices": len({c.variant for c in test}),
        }
        manifest = {**manifest, "accents": accent_names}
        write_manifest(folder, manifest, counts)
    return manifest
