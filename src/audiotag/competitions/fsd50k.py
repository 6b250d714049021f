"""FSD50K (Fonseca et al. 2020): 51,197 Freesound clips, 200 classes of the AudioSet ontology, multi-label.

Zenodo record 4060432. Files (names checked against soundata's FSD50K loader and its test resources):

- ``FSD50K.dev_audio.zip`` + ``.z01``-``.z05`` and ``FSD50K.eval_audio.zip`` + ``.z01``: split zips that
  unpack into ``FSD50K.dev_audio/<fname>.wav`` and ``FSD50K.eval_audio/<fname>.wav``;
- ``FSD50K.ground_truth.zip``: ``FSD50K.ground_truth/dev.csv`` (fname,labels,mids,split with split
  train/val), ``eval.csv`` (fname,labels,mids) and ``vocabulary.csv`` (no header: index,label,mid).
  ``fname`` is the Freesound id without ``.wav``; labels are smeared up the ontology, comma-separated.

Clip table: dev clips have ``split = train`` and keep the official split in ``subset`` (``train`` or
``val``), so ``competition.subsets: [train]`` trains on the official train part only and the K folds are
stratified over both; eval clips are the test split (``subset = eval``) and their labels are the test
truth. ``split`` stays train/test as everywhere else, because every later stage (folds, training,
prediction) keys on those two values. All labels are human-verified (``verified = True``).

Metric: macro mAP over the 200 classes (``metrics.mean_average_precision``; d' of the per-class ROC
AUC, ``metrics.roc_auc_per_class``, is the usual second number). No official submission format: a score table
``fname`` + 200 class columns, written as ``<competition>/sample_submission.csv``.
"""

from __future__ import annotations

import logging

import pandas as pd

from audiotag.competitions.file_formats import (
    AUDIO_ISSUE,
    FileCompetition,
    check_labels,
    read_csv,
    read_vocabulary,
    require_rows,
    split_labels,
)
from audiotag.core.errors import DataError

log = logging.getLogger(__name__)

ZENODO_RECORD = 4060432
GROUND_TRUTH = "FSD50K.ground_truth"
DEV_CSV = f"{GROUND_TRUTH}/dev.csv"
EVAL_CSV = f"{GROUND_TRUTH}/eval.csv"
VOCABULARY = f"{GROUND_TRUTH}/vocabulary.csv"
DEV_AUDIO = "FSD50K.dev_audio"
EVAL_AUDIO = "FSD50K.eval_audio"
N_CLASSES = 200


def _wanted(name: str) -> bool:
    return name.startswith((f"{DEV_AUDIO}.", f"{EVAL_AUDIO}.")) or name == f"{GROUND_TRUTH}.zip"


class Fsd50k(FileCompetition):
    name = "fsd50k"
    task = "multi_label"
    metric = "map"
    submission_kind = "scores"
    sources = ("zenodo",)

    _classes: list[str] | None = None

    @property
    def classes(self) -> list[str]:
        """The 200 labels in ``vocabulary.csv`` index order."""
        if self._classes is None:
            path = self.raw_dir / VOCABULARY
            names = [label for _, label, _ in read_vocabulary(path)]
            if len(names) != N_CLASSES:
                log.warning("fsd50k: %s lists %d classes, not %d", path, len(names), N_CLASSES)
            self._classes = names
        return self._classes

    def expected_files(self, source: str) -> list[str]:
        return [DEV_CSV, EVAL_CSV, VOCABULARY, f"{DEV_AUDIO}/", f"{EVAL_AUDIO}/"]

    def download(self, source: str) -> None:
        self.zenodo_fetch(ZENODO_RECORD, _wanted)

    def parse_clip_table(self) -> pd.DataFrame:
        self.source_found()
        vocabulary = set(self.classes)
        dev_path = self.raw_dir / DEV_CSV
        dev = read_csv(dev_path, ["fname", "labels", "split"])
        require_rows(dev, dev_path)
        dev_labels = [split_labels(s) for s in dev["labels"]]
        check_labels(dev_labels, vocabulary, dev_path)
        bad = ~dev["split"].isin(["train", "val"])
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            raise DataError(
                f"{dev_path}: line {row + 2}: split must be train or val, got {dev['split'].iloc[row]!r}"
            )
        truth = self._eval_truth()
        overlap = sorted(set(dev["fname"]) & set(truth["clip_id"]))
        if overlap:
            raise DataError(f"{self.raw_dir / EVAL_CSV}: clip {overlap[0]!r} is also in {dev_path.name}")
        n_dev, n_eval = len(dev), len(truth)
        table = pd.DataFrame(
            {
                "clip_id": [*dev["fname"], *truth["clip_id"]],
                "path": [
                    *self.audio_paths(DEV_AUDIO, dev["fname"], dev_path, ".wav"),
                    *self.audio_paths(EVAL_AUDIO, truth["clip_id"], self.raw_dir / EVAL_CSV, ".wav"),
                ],
                "split": ["train"] * n_dev + ["test"] * n_eval,
                "subset": [*dev["split"], *(["eval"] * n_eval)],
                "labels": [*dev_labels, *([] for _ in range(n_eval))],
                "verified": True,
            }
        )
        durations, rates, probed = self.probe(table["path"].tolist())
        issues = [found or ("empty" if d == 0 else "") for found, d in zip(probed, durations, strict=True)]
        self.write_sample_submission(truth["clip_id"].tolist(), self.classes)
        return table.assign(duration=durations, sample_rate=rates, **{AUDIO_ISSUE: issues})

    def _eval_truth(self) -> pd.DataFrame:
        path = self.raw_dir / EVAL_CSV
        df = read_csv(path, ["fname", "labels"])
        labels = [split_labels(s) for s in df["labels"]]
        check_labels(labels, set(self.classes), path)
        return pd.DataFrame({"clip_id": df["fname"], "labels": labels})

    def test_truth(self) -> pd.DataFrame | None:
        """The eval set's labels (exhaustively labelled, per the dataset's README)."""
        if not (self.raw_dir / EVAL_CSV).is_file():
            return None
        return self._eval_truth()


COMPETITIONS = (Fsd50k,)
