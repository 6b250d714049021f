"""The self-made demo competitions: synthesised offline from a seed, in the Kaggle file formats.

``demo`` mirrors FSDKaggle2018 (single label, MAP@3, top-3 label submission); ``demo2019`` mirrors
FSDKaggle2019 (curated + noisy, multi-label, lwlrap, score-table submission). Their files are read as
those competitions' Kaggle file formats (the same ``FILE_FORMATS`` settings, with the demo's classes);
both keep the true test labels in ``hidden/test_truth.csv``, outside the Kaggle files, so the pipeline can
report a test score.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

from audiotag.competitions import demo_sounds, demo_synth, fsd2018, fsd2019
from audiotag.competitions.file_formats import probe_clips
from audiotag.competitions.table import TableFormat
from audiotag.config.competition_parts import DemoGeneratorConfig

log = logging.getLogger(__name__)

CLASSES = sorted(demo_sounds.CLASSES)
FILE_FORMATS_2018 = {"kaggle": {**fsd2018.FILE_FORMATS["kaggle"], "classes": CLASSES}}
FILE_FORMATS_2019 = {
    "kaggle": {**fsd2019.FILE_FORMATS["kaggle"], "classes": CLASSES}
}  # both subsets always read


class _DemoBase(TableFormat):
    classes_described = f"the {len(CLASSES)} demo classes"
    write_files: ClassVar[Callable[[Path, Path, DemoGeneratorConfig], None]]  # demo_synth's writer

    @property
    def raw_dir(self) -> Path:
        return self.dir / "raw"  # synthesised there; a data_dir is not the demo's

    @property
    def hidden_truth(self) -> Path:
        return self.dir / "hidden" / "test_truth.csv"

    @property
    def generator(self) -> DemoGeneratorConfig:
        return self.cfg.generator or DemoGeneratorConfig()

    def obtain(self) -> None:
        if self.raw_dir.is_dir() and any(self.raw_dir.iterdir()) and self.hidden_truth.is_file():
            log.info("%s: raw data present in %s", self.name, self.raw_dir)
            return
        log.info("%s: synthesising the demo competition into %s", self.name, self.raw_dir)
        self.write_files(self.raw_dir, self.hidden_truth, self.generator)

    def probe(self, paths: Sequence[str]) -> tuple[list[float], list[int], list[str]]:
        hint = f"delete {self.raw_dir} and re-run `./run.sh prepare` to synthesise the demo again"
        return probe_clips(paths, self.dir, str(self.raw_dir), hint)

    def truth_path(self) -> Path | None:
        """The test labels the generator kept apart (read like the file format's training labels)."""
        return self.hidden_truth if self.hidden_truth.is_file() else None


class Demo(_DemoBase):
    name = "demo"
    FILE_FORMATS = FILE_FORMATS_2018
    write_files = staticmethod(demo_synth.generate_fsd2018_files)


class Demo2019(_DemoBase):
    name = "demo2019"
    FILE_FORMATS = FILE_FORMATS_2019
    write_files = staticmethod(demo_synth.generate_fsd2019_files)


COMPETITIONS = (Demo, Demo2019)
