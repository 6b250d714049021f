"""What every competition knows: its classes, where its files come from, its metric and format.

All later stages read only the normalised clip table (``meta.parquet``) and the feature cache, so a
competition's job ends at producing that table from its raw files.
"""

from __future__ import annotations

import abc
import logging
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import pandas as pd

from audiotag.config.schema import CompetitionConfig
from audiotag.core.errors import DataError
from audiotag.core.paths import competition_dir

Task = Literal["single_label", "multi_label"]
SubmissionKind = Literal["top_k_labels", "scores", "sample_columns"]

log = logging.getLogger(__name__)


def warn_about_rules(competition: CompetitionConfig, pretrained: str | None) -> list[str]:
    """Warn (logging.warning) where the experiment breaks the competition's rules; returns the warnings.

    Only what the config shows can be checked: pretrained weights (``model.pretrained``) on a
    competition with ``rules.pretrained_allowed: false``. External data cannot be seen from a config;
    ``rules.external_data_allowed: false`` is reported alongside so the user is reminded of it.
    """
    rules = competition.rules
    warnings: list[str] = []
    if not rules.pretrained_allowed and pretrained:
        extra = "" if rules.external_data_allowed else " and external data"
        warnings.append(
            f"{competition.name}: the competition rules banned pretrained models{extra}, but "
            f"model.pretrained is {pretrained!r}; its scores are not comparable with the "
            "leaderboard (set model.pretrained=null to follow the rules)"
        )
    for message in warnings:
        log.warning(message)
    return warnings


class Competition(abc.ABC):
    """One competition: subclasses set the class attributes and implement the three methods."""

    name: ClassVar[str]
    kind: ClassVar[str | None] = None  # the config kind this class serves; None: the config named name
    task: ClassVar[Task]
    metric: ClassVar[str]
    submission_kind: ClassVar[SubmissionKind]
    label_count: int = 3  # labels per row of a "top_k_labels" submission (a kind: table competition sets k)
    id_column: str = "fname"  # the id column of the sample and the written submission (a table may set it)

    def __init__(self, cfg: CompetitionConfig, root: Path | None = None) -> None:
        self.cfg = cfg
        self.dir = root if root is not None else competition_dir(cfg.name)

    @property
    def raw_dir(self) -> Path:
        return self.dir / "raw"

    @property
    def meta_path(self) -> Path:
        return self.dir / "meta.parquet"

    @property
    @abc.abstractmethod
    def classes(self) -> list[str]:
        """Class vocabulary in the order used for every score column."""

    @abc.abstractmethod
    def obtain(self) -> None:
        """Make the raw files available under ``raw_dir`` (download, or synthesise for the demo)."""

    @abc.abstractmethod
    def parse_clip_table(self) -> pd.DataFrame:
        """Parse the raw files into the normalised clip table (its schema: ``audiotag.data.meta``)."""

    @property
    def sample_submission_path(self) -> Path:
        return self.raw_dir / "sample_submission.csv"

    def test_truth(self) -> pd.DataFrame | None:
        """Test labels (clip_id, labels) when the competition knows them; None otherwise."""
        return None

    def table_sources(self) -> list[Path]:
        """The raw files whose contents decide the clip table (``prepare`` rebuilds ``meta.parquet`` when
        one changes): by default the CSV files at the top of raw_dir and of data_dir."""
        data_dir = Path(self.cfg.data_dir) if self.cfg.data_dir else None
        return list(self.raw_dir.glob("*.csv")) + (list(data_dir.glob("*.csv")) if data_dir else [])

    # ------------------------------------------------------------------ helpers shared by stages

    def score_test(self, test_ids: list[str], scores: np.ndarray) -> float | None:
        """The competition metric on the test clips, when the competition knows their labels (demo)."""
        truth = self.test_truth()
        if truth is None:
            return None
        labels = truth.set_index("clip_id")["labels"]
        missing = sorted(set(test_ids) - set(labels.index))
        if missing:
            raise DataError(f"test truth lacks {len(missing)} clip(s), e.g. {missing[:3]}")
        from audiotag.scoring import metrics

        return metrics.score(self.metric, self.label_matrix(labels.loc[test_ids]), scores)

    def label_matrix(self, labels: pd.Series) -> np.ndarray:
        """Binary (n_clips, n_classes) matrix from a series of label lists."""
        index = {c: i for i, c in enumerate(self.classes)}
        out = np.zeros((len(labels), len(index)), dtype=np.float32)
        for row, names in enumerate(labels):
            for name in names:
                if name not in index:
                    raise DataError(f"label {name!r} is not in the {self.name} vocabulary")
                out[row, index[name]] = 1.0
        return out

    def training_clips(self, table: pd.DataFrame) -> pd.DataFrame:
        """Train clips of the configured subsets (all subsets when ``subsets`` is null)."""
        train = table[table["split"] == "train"]
        if self.cfg.subsets is not None:
            known = sorted(train["subset"].unique())
            unknown = sorted(set(self.cfg.subsets) - set(known))
            if unknown:
                raise DataError(f"competition.subsets: {unknown} not in this competition's subsets {known}")
            train = train[train["subset"].isin(self.cfg.subsets)]
        return train.reset_index(drop=True)
