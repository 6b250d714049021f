"""Freesound Audio Tagging 2019 (Kaggle, DCASE 2019 Task 2): FSDKaggle2019.

80 AudioSet classes, one or more labels per clip, lwlrap, submission ``fname`` + one score column per
class (alphabetical, the order of ``sample_submission.csv``). Two training subsets: ``curated``
(4,970 manually labelled Freesound clips, ``verified``) and ``noisy`` (19,815 Flickr clips with noisy
labels). Only the configured ``competition.subsets`` are read (default ``[curated]``), so the noisy
audio (about 80 h) is neither needed nor cached unless asked for.

The competition's rules banned pretrained models and external data; the config says so
(``rules: {pretrained_allowed: false, external_data_allowed: false}``) and
:func:`audiotag.competitions.base.warn_about_rules` warns when an experiment breaks them.

Layouts:

- Kaggle (``freesound-audio-tagging-2019``): ``train_curated.csv``, ``train_noisy.csv``
  (fname,labels; labels comma-separated and quoted), ``sample_submission.csv``, ``train_curated/``,
  ``train_noisy/``, ``test/``. It was a kernels-only competition: the downloadable test set is the
  sample submission's clips (we do not assume their number).
- Zenodo record 3612637: ``FSDKaggle2019.audio_train_curated/``, ``FSDKaggle2019.audio_train_noisy/``
  (zip split into ``.z01``-``.z06`` + ``.zip``), ``FSDKaggle2019.audio_test/`` (the full 4,481-clip test
  set) and ``FSDKaggle2019.meta/`` with ``train_{curated,noisy}_post_competition.csv``,
  ``test_post_competition.csv`` (fname,labels,usage,freesound_id,license) and ``vocabulary.csv``
  (no header: index,label).

Known problems (FSDKaggle2019 README): curated ``1d44b0bd.wav`` contains no signal
(``audio_issue = "silent"``); five curated clips carry a wrong label from a renaming bug
(``audio_issue = "mislabeled"``). Both stay in the table; the flag lets a run drop them.
Both file formats are tables of one shape, read by the ``kind: table`` machinery
(:class:`audiotag.competitions.table.TableFormat`) from the settings in ``FILE_FORMATS``; this module adds
the downloads, the known problems and the check of the files' class list against ours.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from audiotag.competitions.file_formats import read_vocabulary
from audiotag.competitions.table import TableFormat
from audiotag.competitions.table_reading import PUBLISHED_REMEDY
from audiotag.config.schema import CompetitionConfig
from audiotag.core.errors import DataError

log = logging.getLogger(__name__)

KAGGLE_SLUG = "freesound-audio-tagging-2019"
ZENODO_RECORD = 3612637
META = "FSDKaggle2019.meta"
TEST_POST = f"{META}/test_post_competition.csv"
VOCABULARY = f"{META}/vocabulary.csv"
SUBSETS = ("curated", "noisy")

# The 80 labels in alphabetical order: the sample submission's columns, and the order of the DCASE
# 2019 Task 2 baseline's class_map.csv (github.com/DCASE-REPO/dcase2019_task2_baseline).
CLASSES = (
    "Accelerating_and_revving_and_vroom", "Accordion", "Acoustic_guitar", "Applause", "Bark", "Bass_drum",
    "Bass_guitar", "Bathtub_(filling_or_washing)", "Bicycle_bell", "Burping_and_eructation", "Bus", "Buzz",
    "Car_passing_by", "Cheering", "Chewing_and_mastication", "Child_speech_and_kid_speaking",
    "Chink_and_clink", "Chirp_and_tweet", "Church_bell", "Clapping", "Computer_keyboard", "Crackle",
    "Cricket", "Crowd", "Cupboard_open_or_close", "Cutlery_and_silverware", "Dishes_and_pots_and_pans",
    "Drawer_open_or_close", "Drip", "Electric_guitar", "Fart", "Female_singing",
    "Female_speech_and_woman_speaking", "Fill_(with_liquid)", "Finger_snapping", "Frying_(food)", "Gasp",
    "Glockenspiel", "Gong", "Gurgling", "Harmonica", "Hi-hat", "Hiss", "Keys_jangling", "Knock",
    "Male_singing", "Male_speech_and_man_speaking", "Marimba_and_xylophone", "Mechanical_fan", "Meow",
    "Microwave_oven", "Motorcycle", "Printer", "Purr", "Race_car_and_auto_racing", "Raindrop", "Run",
    "Scissors", "Screaming", "Shatter", "Sigh", "Sink_(filling_or_washing)", "Skateboard", "Slam",
    "Sneeze", "Squeak", "Stream", "Strum", "Tap", "Tick-tock", "Toilet_flush",
    "Traffic_noise_and_roadway_noise", "Trickle_and_dribble", "Walk_and_footsteps",
    "Water_tap_and_faucet", "Waves_and_surf", "Whispering", "Writing", "Yell", "Zipper_(clothing)",
)  # fmt: skip

KNOWN_ISSUES = {
    "1d44b0bd.wav": "silent",
    **dict.fromkeys(
        ("f76181c4.wav", "77b925c2.wav", "6a1f682a.wav", "c7db12aa.wav", "7752cc8a.wav"), "mislabeled"
    ),
}

# What both file formats share (the keys of a kind: table YAML).
TABLE: dict[str, Any] = {
    "file_column": "fname",
    "label_column": "labels",
    "multi_label": True,
    "label_separator": ",",
    "noisy_subsets": ["noisy"],
    "classes": list(CLASSES),
    "metric": "lwlrap",
    "submission": {"kind": "scores"},
}
FILE_FORMATS = {
    "kaggle": {
        **TABLE,
        "train_csv": {s: f"train_{s}.csv" for s in SUBSETS},
        "audio_dir": {s: f"train_{s}" for s in SUBSETS},
        "test_dir": "test",
        "sample_submission": "sample_submission.csv",
    },
    "zenodo": {  # the test clips: the rows of TEST_POST (the truth file); a sample submission is written
        **TABLE,
        "train_csv": {s: f"{META}/train_{s}_post_competition.csv" for s in SUBSETS},
        "audio_dir": {s: f"FSDKaggle2019.audio_train_{s}" for s in SUBSETS},
        "test_dir": "FSDKaggle2019.audio_test",
    },
}


class Fsd2019(TableFormat):
    name = "fsd2019"
    FILE_FORMATS = FILE_FORMATS
    classes_described = f"the {len(CLASSES)} FSDKaggle2019 classes"
    columns_remedy = PUBLISHED_REMEDY
    truth_file = TEST_POST

    @property
    def subsets(self) -> list[str]:
        return self.configured_subsets(SUBSETS)

    def file_format(self, source: str) -> CompetitionConfig:
        """Only the configured subsets are read (the noisy audio is neither needed nor cached otherwise)."""
        return super().file_format(source).model_copy(update={"subsets": self.subsets})

    def expected_files(self, source: str) -> list[str]:
        return [*super().expected_files(source), *([VOCABULARY] if source == "zenodo" else [])]

    def download(self, source: str) -> None:
        if source == "kaggle":
            # the test labels and the full test set's list live only on Zenodo (a small zip)
            self.kaggle_fetch(KAGGLE_SLUG, labels=(ZENODO_RECORD, "FSDKaggle2019.meta.zip"))
            return
        wanted = {"FSDKaggle2019.meta.zip", "FSDKaggle2019.audio_test.zip"}
        wanted |= {f"FSDKaggle2019.audio_train_{s}.zip" for s in self.subsets}

        def select(name: str) -> bool:
            split_noisy = "noisy" in self.subsets and name.startswith("FSDKaggle2019.audio_train_noisy.z")
            return name in wanted or split_noisy

        self.zenodo_fetch(ZENODO_RECORD, select)

    def check_sample_header(self, file_format: CompetitionConfig, vocabulary: list[str]) -> None:
        """The files' class list must be ours, in our order (sample submission) or as a set (vocabulary)."""
        if file_format.sample_submission:
            path = self.raw_dir / file_format.sample_submission
            columns = [c for c in pd.read_csv(path, nrows=0).columns if c != self.id_column]
            if columns != list(CLASSES):
                diff = sorted(set(columns) ^ set(CLASSES))
                detail = f"differ in {diff[:5]}" if diff else "are in another order"
                raise DataError(
                    f"{path}: line 1: the class columns {detail} than the 80 FSDKaggle2019 classes"
                )
            return
        path = self.raw_dir / VOCABULARY
        names = [label for _, label, _ in read_vocabulary(path)]
        diff = sorted(set(names) ^ set(CLASSES))
        if diff or len(names) != len(CLASSES):
            raise DataError(
                f"{path}: the vocabulary ({len(names)} classes) differs from ours, e.g. {diff[:5]}"
            )

    def audio_issues(self, table: pd.DataFrame, probed: list[str]) -> list[str]:
        """Every clip's issue ("" when fine): the README's known problems of curated clips first, then
        the probe's, and "empty" for a header of 0 frames."""
        known = [
            KNOWN_ISSUES.get(clip, "") if subset == "curated" else ""
            for clip, subset in zip(table["clip_id"], table["subset"], strict=True)
        ]
        return [
            issue or found or ("empty" if duration == 0 else "")
            for issue, found, duration in zip(known, probed, table["duration"], strict=True)
        ]


COMPETITIONS = (Fsd2019,)
