"""Real-audio check sets of our own, kept as generators (the audio is made, never committed).

Each module makes one set from recordings or sample libraries that Debian packages ship, in a
Kaggle layout, with a train/test split that tests generalisation:

- ``speech`` (``spoken_words``): eSpeak NG keywords, FSDKaggle2018 layout, tested on unseen voices;
- ``instruments``: SoundFont instruments mixed 1-3 to a clip, FSDKaggle2019 layout, tested on an
  unseen sample library.

``ensure(name, root, seed, size)`` makes a set under ``root/<name>-<size>-seed<seed>`` unless the
one there was made by the same generator version, seed, size and package versions (the manifest).
Each set's competition YAML (``kind: table``) sits beside its module; ``benchmarks/accuracy.py``
runs the recipes on the sets, ``benchmarks/README.md`` says which packages to install.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from . import instruments, speech
from .common import DATA, TRUTH, MissingSource, Size, is_current, manifest_for

log = logging.getLogger(__name__)

SETS: dict[str, ModuleType] = {module.NAME: module for module in (speech, instruments)}


@dataclass(frozen=True)
class RealSet:
    name: str
    folder: Path  # the set: data/, hidden/, manifest.json
    yaml: Path  # its competition YAML (kind: table)

    @property
    def data_dir(self) -> Path:
        return self.folder / DATA

    @property
    def truth(self) -> Path:
        return self.folder / TRUTH


def module(name: str) -> ModuleType:
    if name not in SETS:
        raise KeyError(f"unknown set {name!r}; known: {', '.join(SETS)}")
    return SETS[name]


def default_size(name: str) -> Size:
    return module(name).DEFAULT_SIZE


def ensure(name: str, root: Path, seed: int, size: Size | None = None) -> RealSet:
    """The set ``name`` under ``root``, generated unless an up-to-date copy is there."""
    gen = module(name)
    size = size or gen.DEFAULT_SIZE
    tag = f"{size.train_per_class}x{size.test_per_class}" + (f"c{size.classes}" if size.classes else "")
    folder = root / f"{name}-{tag}-seed{seed}"
    wanted = manifest_for(name, gen.VERSION, seed, size, gen.sources())
    if is_current(folder, wanted):
        log.info("%s: up to date in %s", name, folder)
    else:
        log.info("%s: generating into %s", name, folder)
        gen.generate(folder, seed, size)
    return RealSet(name, folder, gen.YAML)


__all__ = ["SETS", "MissingSource", "RealSet", "Size", "default_size", "ensure", "module"]
