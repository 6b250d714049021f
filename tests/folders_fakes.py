"""A tiny made-up dataset in the Speech Commands layout: one folder per word of 1 s 16 kHz clips named
``<speaker>_nohash_<n>.wav``, a ``_background_noise_`` folder, ``validation_list.txt`` and
``testing_list.txt`` (whole speakers, as the real lists are), and loose README/LICENSE files."""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

RATE = 16000
WORDS = {"zorp": 300.0, "blip": 1200.0, "whirr": 3000.0}  # made up, deliberately not sorted


def wav_bytes(freq: float, seed: int, seconds: float = 1.0) -> bytes:
    rng = np.random.default_rng(seed)
    t = np.arange(int(RATE * seconds)) / RATE
    wave = 0.2 * np.sin(2 * np.pi * freq * t) + 0.02 * rng.standard_normal(t.size)
    buf = io.BytesIO()
    sf.write(buf, wave.astype(np.float32), RATE, format="WAV")
    return buf.getvalue()


@dataclass
class SpeechLayout:
    files: dict[str, bytes] = field(default_factory=dict)  # path inside the dataset -> bytes
    validation: list[str] = field(default_factory=list)
    testing: list[str] = field(default_factory=list)

    def speaker(self, clip: str) -> str:
        return Path(clip).name.split("_nohash_")[0]

    def write(self, root: Path) -> Path:
        for rel, data in self.files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
        return root

    def tar_gz(self, top: str | None = None) -> bytes:
        """The layout as a .tar.gz, its members at the root (``./word/...``) or under ``top``."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tf:
            for rel, data in sorted(self.files.items()):
                info = tarfile.TarInfo(f"{top}/{rel}" if top else f"./{rel}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        return buf.getvalue()


def speech_layout(
    words: dict[str, float] | None = None,
    speakers: int = 6,
    takes: int = 2,
    validation_speakers: int = 1,
    testing_speakers: int = 1,
) -> SpeechLayout:
    """Per word, ``speakers`` speakers saying it ``takes`` times; the last ``testing_speakers`` speakers
    are listed in testing_list.txt, the ones before them in validation_list.txt."""
    words = words or WORDS
    layout = SpeechLayout()
    seed = 0
    for word, freq in words.items():
        for s in range(speakers):
            speaker = f"{s:02d}c0ffee"  # one speaker says every word, as in the real data
            for take in range(takes):
                rel = f"{word}/{speaker}_nohash_{take}.wav"
                seed += 1
                layout.files[rel] = wav_bytes(freq * (1 + 0.02 * s), seed)
                if s >= speakers - testing_speakers:
                    layout.testing.append(rel)
                elif s >= speakers - testing_speakers - validation_speakers:
                    layout.validation.append(rel)
    layout.files["_background_noise_/white_noise.wav"] = wav_bytes(50.0, 999, seconds=2.0)
    layout.files["README.md"] = b"made up\n"
    layout.files["LICENSE"] = b"CC BY 4.0 (made up)\n"
    layout.files["validation_list.txt"] = "".join(f"{c}\n" for c in layout.validation).encode()
    layout.files["testing_list.txt"] = "".join(f"{c}\n" for c in layout.testing).encode()
    return layout
