"""Freesound General-Purpose Audio Tagging Challenge (Kaggle 2018, DCASE 2018 Task 2): FSDKaggle2018.

41 AudioSet classes, one label per clip, MAP@3, submission ``fname,label`` with up to three
space-separated class names. Two published layouts, both read here:

- Kaggle (``freesound-audio-tagging``): ``train.csv`` (fname,label,manually_verified),
  ``sample_submission.csv`` (fname,label; 9,400 test clips, of which only 1,600 were scored, the rest
  being "padding" clips), ``audio_train/``, ``audio_test/``.
- Zenodo record 2552860: ``FSDKaggle2018.audio_train/``, ``FSDKaggle2018.audio_test/`` (the 1,600
  scored test clips only) and ``FSDKaggle2018.meta/`` with ``train_post_competition.csv``
  (fname,label,manually_verified,freesound_id,license) and ``test_post_competition_scoring_clips.csv``
  (fname,label,usage,freesound_id,license; usage = Public/Private leaderboard).

Facts from the dataset's README (FSDKaggle2018.doc, stored copy read with the search tool). The three
known empty test wavs of the Kaggle release keep their submission row and are flagged
``audio_issue = "empty"`` in the clip table (duration 0); they cannot be decoded into features.

Groups: the Zenodo ``train_post_competition.csv`` names each clip's ``freesound_id`` (the Freesound
recording it was cut from); it becomes the clip table's ``group`` column, so the CV folds never put
clips of one recording on both sides. Kaggle's ``train.csv`` has no such column: no groups there.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from audiotag.competitions.folds import GROUP, describe_groups
from audiotag.competitions.layouts import (
    AUDIO_ISSUE,
    FileCompetition,
    check_labels,
    read_csv,
    require_rows,
    write_sample_submission,
)
from audiotag.errors import AudiotagError, DataError

log = logging.getLogger(__name__)

KAGGLE_SLUG = "freesound-audio-tagging"
ZENODO_RECORD = 2552860
META = "FSDKaggle2018.meta"
TRAIN_POST = f"{META}/train_post_competition.csv"
TEST_POST = f"{META}/test_post_competition_scoring_clips.csv"
ZENODO_ZIPS = ("FSDKaggle2018.audio_train.zip", "FSDKaggle2018.audio_test.zip", "FSDKaggle2018.meta.zip")

# The 41 labels as listed (alphabetically) in the FSDKaggle2018 README.
CLASSES = (
    "Acoustic_guitar", "Applause", "Bark", "Bass_drum", "Burping_or_eructation", "Bus", "Cello", "Chime",
    "Clarinet", "Computer_keyboard", "Cough", "Cowbell", "Double_bass", "Drawer_open_or_close",
    "Electric_piano", "Fart", "Finger_snapping", "Fireworks", "Flute", "Glockenspiel", "Gong",
    "Gunshot_or_gunfire", "Harmonica", "Hi-hat", "Keys_jangling", "Knock", "Laughter", "Meow",
    "Microwave_oven", "Oboe", "Saxophone", "Scissors", "Shatter", "Snare_drum", "Squeak", "Tambourine",
    "Tearing", "Telephone", "Trumpet", "Violin_or_fiddle", "Writing",
)  # fmt: skip

# Header-only wavs (0 samples) in the Kaggle test set, known since the competition.
KNOWN_EMPTY = frozenset({"0b0427e2.wav", "6ea0099f.wav", "b39975f5.wav"})

SOURCE_FILES = {
    "kaggle": {"train_csv": "train.csv", "train_audio": "audio_train", "test_audio": "audio_test"},
    "zenodo": {
        "train_csv": TRAIN_POST,
        "train_audio": "FSDKaggle2018.audio_train",
        "test_audio": "FSDKaggle2018.audio_test",
    },
}


class Fsd2018(FileCompetition):
    name = "fsd2018"
    task = "single_label"
    metric = "map3"
    submission_kind = "top3_labels"
    truth_file = TEST_POST
    default_source = "kaggle"
    sources = ("kaggle", "zenodo")

    @property
    def classes(self) -> list[str]:
        return list(CLASSES)

    def expected_files(self, source: str) -> list[str]:
        files = SOURCE_FILES[source]
        tests = "sample_submission.csv" if source == "kaggle" else TEST_POST
        return [files["train_csv"], tests, files["train_audio"] + "/", files["test_audio"] + "/"]

    def download(self, source: str) -> None:
        if source == "kaggle":
            self.kaggle_fetch(KAGGLE_SLUG)
            try:  # the public test labels live only on Zenodo (a small zip)
                self.zenodo_fetch(ZENODO_RECORD, lambda name: name == "FSDKaggle2018.meta.zip")
            except (AudiotagError, OSError) as exc:
                log.warning("fsd2018: no test labels (%s); test scores will not be reported", exc)
        else:
            self.zenodo_fetch(ZENODO_RECORD, lambda name: name in ZENODO_ZIPS)

    # -------------------------------------------------------------- clip table

    def parse_clip_table(self) -> pd.DataFrame:
        source = self.source_found()
        files = SOURCE_FILES[source]
        train_path = self.raw_dir / files["train_csv"]
        train = read_csv(train_path, ["fname", "label", "manually_verified"])
        require_rows(train, train_path)
        labels = [[label.strip()] for label in train["label"]]
        check_labels(labels, set(CLASSES), train_path, multi=False)
        bad_flag = ~train["manually_verified"].isin(["0", "1"])
        if bad_flag.any():
            row = int(bad_flag.to_numpy().nonzero()[0][0])
            raise DataError(f"{train_path}: line {row + 2}: manually_verified must be 0 or 1")
        test_path = self.raw_dir / ("sample_submission.csv" if source == "kaggle" else TEST_POST)
        test_ids = read_csv(test_path, ["fname"])["fname"].tolist()
        overlap = sorted(set(test_ids) & set(train["fname"]))
        if overlap:
            raise DataError(f"{test_path}: clip {overlap[0]!r} is also in {train_path.name}")
        table = pd.DataFrame(
            {
                "clip_id": [*train["fname"], *test_ids],
                "path": [
                    *self.audio_paths(files["train_audio"], train["fname"], train_path),
                    *self.audio_paths(files["test_audio"], test_ids, test_path),
                ],
                "split": ["train"] * len(train) + ["test"] * len(test_ids),
                "subset": ["train"] * len(train) + ["test"] * len(test_ids),
                "labels": [*labels, *([] for _ in test_ids)],
                "verified": [*(train["manually_verified"] == "1"), *([False] * len(test_ids))],
            }
        )
        table = self._with_audio(table)
        table = self._with_groups(table, train, train_path)
        if source == "zenodo":
            write_sample_submission(self.dir / "sample_submission.csv", test_ids, None)
        return table

    def _with_groups(self, table: pd.DataFrame, train: pd.DataFrame, train_path: Path) -> pd.DataFrame:
        """``group`` = freesound_id for the training clips when the training CSV has it (Zenodo)."""
        if "freesound_id" not in train.columns:
            log.info(
                "fsd2018: %s has no freesound_id column, so the folds are not grouped by Freesound "
                "recording (the Zenodo layout, --set competition.source=zenodo, has it)",
                train_path.name,
            )
            return table
        ids = train["freesound_id"].str.strip()
        blank = ids == ""
        if blank.any():
            row = int(blank.to_numpy().nonzero()[0][0])
            raise DataError(f"{train_path}: line {row + 2}: empty freesound_id")
        n_test = len(table) - len(train)
        groups = pd.Series([*ids, *([None] * n_test)], dtype=object)
        log.info("fsd2018: training clips grouped by freesound_id: %s", describe_groups(ids))
        return table.assign(**{GROUP: groups.to_numpy()})

    def _with_audio(self, table: pd.DataFrame) -> pd.DataFrame:
        durations, rates, issues = self.probe(table["path"].tolist())
        for i, clip_id in enumerate(table["clip_id"]):
            if clip_id in KNOWN_EMPTY and issues[i]:
                issues[i] = "empty"  # a header-only file some decoders refuse: still empty
            elif not issues[i] and durations[i] == 0:
                issues[i] = "empty"
        flagged = [c for c, issue in zip(table["clip_id"], issues, strict=True) if issue == "empty"]
        if flagged:
            log.warning(
                "fsd2018: %d empty audio file(s) (%s) flagged audio_issue=empty; they keep their "
                "submission row but have no audio to predict from",
                len(flagged),
                ", ".join(flagged[:5]),
            )
        return table.assign(duration=durations, sample_rate=rates, **{AUDIO_ISSUE: issues})

    # -------------------------------------------------------------- test labels

    def test_truth(self) -> pd.DataFrame | None:
        """Labels of the 1,600 scored test clips (Public and Private leaderboard), when present."""
        path = self.truth_path()
        if path is None:
            return None
        df = read_csv(path, ["fname", "label"])
        labels = [[label.strip()] for label in df["label"]]
        check_labels(labels, set(CLASSES), path, multi=False)
        out = pd.DataFrame({"clip_id": df["fname"], "labels": labels})
        if "usage" in df.columns:
            out["usage"] = df["usage"].to_numpy()
        return out

    def score_test(self, test_ids: list[str], scores: np.ndarray) -> float | None:
        """MAP@3 on the test clips that have public labels: in the Kaggle layout, the 1,600 scored
        clips among the 9,400 (the others were never scored)."""
        truth = self.test_truth()
        if truth is None:
            return None
        known = set(truth["clip_id"])
        keep = [i for i, clip in enumerate(test_ids) if clip in known]
        if not keep:
            log.warning("fsd2018: none of the %d test clips has a public label", len(test_ids))
            return None
        if len(keep) < len(test_ids):
            log.info(
                "fsd2018: test MAP@3 on the %d of %d test clips that were scored", len(keep), len(test_ids)
            )
        return super().score_test([test_ids[i] for i in keep], np.asarray(scores)[keep])
