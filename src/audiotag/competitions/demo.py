"""The self-made demo competitions: synthesised offline from a seed, in the Kaggle layouts.

``demo`` mirrors FSDKaggle2018 (single label, MAP@3, top-3 label submission); ``demo2019`` mirrors
FSDKaggle2019 (curated + noisy, multi-label, lwlrap, score-table submission). Both keep the true test
labels in ``hidden/test_truth.csv``, outside the Kaggle layout, so the pipeline can report a test score.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from audiotag.competitions import demo_synth
from audiotag.competitions.base import Competition
from audiotag.competitions.layouts import read_csv, read_fsd2018_layout, read_fsd2019_layout
from audiotag.config import DemoGeneratorConfig

log = logging.getLogger(__name__)


class _DemoBase(Competition):
    label_column: str

    @property
    def classes(self) -> list[str]:
        return sorted(demo_synth.CLASSES)

    @property
    def truth_path(self) -> Path:
        return self.dir / "hidden" / "test_truth.csv"

    @property
    def generator(self) -> DemoGeneratorConfig:
        return self.cfg.generator or DemoGeneratorConfig()

    def obtain(self) -> None:
        if self.raw_dir.is_dir() and any(self.raw_dir.iterdir()) and self.truth_path.is_file():
            log.info("%s: raw data present in %s", self.name, self.raw_dir)
            return
        log.info("%s: synthesising the demo competition into %s", self.name, self.raw_dir)
        self._generate(self.raw_dir, self.truth_path, self.generator)

    def _generate(self, raw_dir: Path, truth_path: Path, cfg: DemoGeneratorConfig) -> None:
        raise NotImplementedError

    def test_truth(self) -> pd.DataFrame | None:
        if not self.truth_path.is_file():
            return None
        df = read_csv(self.truth_path, ["fname", self.label_column])
        labels = [[x for x in s.replace(" ", ",").split(",") if x] for s in df[self.label_column]]
        return pd.DataFrame({"clip_id": df["fname"], "labels": labels})


class Demo(_DemoBase):
    name = "demo"
    task = "single_label"
    metric = "map3"
    submission_kind = "top3_labels"
    label_column = "label"

    def _generate(self, raw_dir: Path, truth_path: Path, cfg: DemoGeneratorConfig) -> None:
        demo_synth.generate_fsd2018_layout(raw_dir, truth_path, cfg)

    def parse_clip_table(self) -> pd.DataFrame:
        return read_fsd2018_layout(self.raw_dir, set(self.classes))


class Demo2019(_DemoBase):
    name = "demo2019"
    task = "multi_label"
    metric = "lwlrap"
    submission_kind = "scores"
    label_column = "labels"

    def _generate(self, raw_dir: Path, truth_path: Path, cfg: DemoGeneratorConfig) -> None:
        demo_synth.generate_fsd2019_layout(raw_dir, truth_path, cfg)

    def parse_clip_table(self) -> pd.DataFrame:
        return read_fsd2019_layout(self.raw_dir, set(self.classes), ["curated", "noisy"])
