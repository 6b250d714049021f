"""Small in-memory competitions for unit tests that need no audio."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from audiotag.competitions.base import Competition
from audiotag.config.competition import NamedCompetitionConfig


class FakeSingle(Competition):
    name = "fake"
    task = "single_label"
    metric = "map3"
    submission_kind = "top_k_labels"

    @property
    def classes(self) -> list[str]:
        return ["Bark", "Chime", "Drum", "Flute", "Gong"]

    def obtain(self) -> None:
        pass

    def parse_clip_table(self) -> pd.DataFrame:
        rng = np.random.default_rng(0)
        n = 100
        return pd.DataFrame(
            {
                "clip_id": [f"{i:08x}.wav" for i in range(n)],
                "path": [f"raw/audio_train/{i:08x}.wav" for i in range(n)],
                "split": "train",
                "subset": "train",
                "labels": [[self.classes[i % 5]] for i in range(n)],
                "verified": rng.random(n) < 0.5,
            }
        )


class FakeMulti(FakeSingle):
    name = "fakemulti"
    task = "multi_label"
    metric = "lwlrap"
    submission_kind = "scores"

    def parse_clip_table(self) -> pd.DataFrame:
        rng = np.random.default_rng(1)
        rows = []
        for i in range(120):
            k = 1 + int(rng.integers(0, 3))
            labels = sorted(rng.choice(self.classes, size=k, replace=False).tolist())
            subset = "curated" if i % 2 else "noisy"
            rows.append(
                (
                    f"{i:08x}.wav",
                    f"raw/train_{subset}/{i:08x}.wav",
                    "train",
                    subset,
                    labels,
                    subset == "curated",
                )
            )
        return pd.DataFrame(rows, columns=["clip_id", "path", "split", "subset", "labels", "verified"])


def make(cls: type[FakeSingle], root: Path, **cfg) -> FakeSingle:
    return cls(NamedCompetitionConfig(name=cls.name, **cfg), root)


def write_sample(comp: Competition, ids: list[str]) -> None:
    comp.raw_dir.mkdir(parents=True, exist_ok=True)
    if comp.submission_kind == "top_k_labels":
        df = pd.DataFrame({"fname": ids, "label": "Bark Chime Drum"})
    else:
        df = pd.DataFrame(0, index=range(len(ids)), columns=sorted(comp.classes))
        df.insert(0, "fname", ids)
    df.to_csv(comp.sample_submission_path, index=False)
