"""Freesound General-Purpose Audio Tagging Challenge (Kaggle 2018, DCASE 2018 Task 2): FSDKaggle2018.

41 AudioSet classes, one label per clip, MAP@3, submission ``fname,label`` with up to three
space-separated class names. Two published file formats, both read here:

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

Both file formats are tables of one shape, read by the ``kind: table`` machinery
(:class:`audiotag.competitions.table.TableFormat`) from the settings in ``FILE_FORMATS``; this module adds
the downloads, the known empty wavs and the test score on the scored clips only.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from audiotag.competitions.folds import GROUP
from audiotag.competitions.table import TableFormat
from audiotag.competitions.table_reading import PUBLISHED_REMEDY

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

# What both file formats share (the keys of a kind: table YAML).
TABLE: dict[str, Any] = {
    "file_column": "fname",
    "label_column": "label",
    "verified_column": "manually_verified",
    "classes": list(CLASSES),
    "metric": "map3",
    "submission": {"kind": "top_k_labels", "k": 3},
}
FILE_FORMATS = {
    "kaggle": {
        **TABLE,
        "train_csv": "train.csv",
        "audio_dir": "audio_train",
        "test_dir": "audio_test",
        "sample_submission": "sample_submission.csv",
    },
    "zenodo": {  # the test clips: the rows of TEST_POST (the truth file); a sample submission is written
        **TABLE,
        "train_csv": TRAIN_POST,
        "audio_dir": "FSDKaggle2018.audio_train",
        "test_dir": "FSDKaggle2018.audio_test",
        "group_column": "freesound_id",
    },
}


class Fsd2018(TableFormat):
    name = "fsd2018"
    FILE_FORMATS = FILE_FORMATS
    classes_described = f"the {len(CLASSES)} FSDKaggle2018 classes"
    columns_remedy = PUBLISHED_REMEDY
    truth_file = TEST_POST

    def download(self, source: str) -> None:
        if source == "kaggle":
            self.kaggle_fetch(KAGGLE_SLUG, labels=(ZENODO_RECORD, "FSDKaggle2018.meta.zip"))
        else:
            self.zenodo_fetch(ZENODO_RECORD, lambda name: name in ZENODO_ZIPS)

    def parse_clip_table(self) -> pd.DataFrame:
        table = super().parse_clip_table()
        if GROUP not in table.columns:
            log.info(
                "fsd2018: train.csv has no freesound_id column, so the folds are not grouped by Freesound "
                "recording (the Zenodo layout, --set competition.source=zenodo, has it)"
            )
        return table

    def audio_issues(self, table: pd.DataFrame, probed: list[str]) -> list[str]:
        """Every clip's issue ("" when fine): a header of 0 frames is "empty", and so is a known empty
        test wav that a decoder refuses outright."""
        issues = [
            "empty" if (issue and clip in KNOWN_EMPTY) or (not issue and duration == 0) else issue
            for clip, issue, duration in zip(table["clip_id"], probed, table["duration"], strict=True)
        ]
        flagged = [c for c, issue in zip(table["clip_id"], issues, strict=True) if issue == "empty"]
        if flagged:
            log.warning(
                "fsd2018: %d empty audio file(s) (%s) flagged audio_issue=empty; they keep their "
                "submission row but have no audio to predict from",
                len(flagged),
                ", ".join(flagged[:5]),
            )
        return issues

    def score_test(self, test_ids: list[str], scores: np.ndarray) -> float | None:
        """MAP@3 on the test clips that have public labels: in the Kaggle file format, the 1,600 scored
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


COMPETITIONS = (Fsd2018,)
