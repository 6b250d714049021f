"""Readers for the Kaggle file layouts of the Freesound competitions.

The demo competitions are written in these same layouts so that one code path reads both.
Errors name the CSV file and its line (header = line 1) so the user can find the bad row.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import soundfile as sf

from audiotag.errors import DataError


def read_csv(path: Path, required: Iterable[str]) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: file not found; run `./run.sh prepare` to fetch the competition data")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise DataError(f"{path}: cannot be parsed as CSV ({exc})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {list(df.columns)}")
    duplicated = df["fname"].duplicated(keep="first") if "fname" in df.columns else None
    if duplicated is not None and duplicated.any():
        row = int(duplicated.to_numpy().nonzero()[0][0])
        raise DataError(f"{path}: line {row + 2}: duplicate fname {df['fname'].iloc[row]!r}")
    return df


def check_labels(labels: list[list[str]], vocabulary: set[str], path: Path, multi: bool) -> None:
    for row, names in enumerate(labels):
        if not names:
            raise DataError(f"{path}: line {row + 2}: no label")
        if not multi and len(names) != 1:
            raise DataError(f"{path}: line {row + 2}: expected one label, got {names}")
        bad = [n for n in names if n not in vocabulary]
        if bad:
            raise DataError(
                f"{path}: line {row + 2}: unknown label(s) {bad}; "
                f"the vocabulary has {len(vocabulary)} classes"
            )


def with_audio_info(table: pd.DataFrame, root: Path) -> pd.DataFrame:
    """Add duration and sample_rate from each file's header; a missing file is an error naming it."""
    durations, rates, missing = [], [], []
    for rel in table["path"]:
        path = root / rel
        try:
            info = sf.info(str(path))
        except Exception:
            missing.append(rel)
            durations.append(float("nan"))
            rates.append(0)
            continue
        durations.append(info.frames / info.samplerate)
        rates.append(info.samplerate)
    if missing:
        head = ", ".join(missing[:5])
        raise DataError(
            f"{len(missing)} audio file(s) listed in the CSVs are missing or unreadable under {root}: "
            f"{head}{' ...' if len(missing) > 5 else ''}; re-run `./run.sh prepare` or check the download"
        )
    return table.assign(duration=durations, sample_rate=rates)


def _test_rows(raw_dir: Path, audio_folder: str) -> pd.DataFrame:
    sample = read_csv(raw_dir / "sample_submission.csv", ["fname"])
    return pd.DataFrame(
        {
            "clip_id": sample["fname"],
            "path": [f"raw/{audio_folder}/{f}" for f in sample["fname"]],
            "split": "test",
            "subset": "test",
            "labels": [[] for _ in range(len(sample))],
            "verified": False,
        }
    )


def read_fsd2018_layout(raw_dir: Path, vocabulary: set[str]) -> pd.DataFrame:
    """train.csv (fname,label,manually_verified), audio_train/, audio_test/, sample_submission.csv."""
    path = raw_dir / "train.csv"
    train = read_csv(path, ["fname", "label", "manually_verified"])
    labels = [[label.strip()] for label in train["label"]]
    check_labels(labels, vocabulary, path, multi=False)
    bad_flag = ~train["manually_verified"].isin(["0", "1"])
    if bad_flag.any():
        row = int(bad_flag.to_numpy().nonzero()[0][0])
        raise DataError(f"{path}: line {row + 2}: manually_verified must be 0 or 1")
    rows = pd.DataFrame(
        {
            "clip_id": train["fname"],
            "path": [f"raw/audio_train/{f}" for f in train["fname"]],
            "split": "train",
            "subset": "train",
            "labels": labels,
            "verified": train["manually_verified"] == "1",
        }
    )
    table = pd.concat([rows, _test_rows(raw_dir, "audio_test")], ignore_index=True)
    return with_audio_info(table, raw_dir.parent)


def read_fsd2019_layout(raw_dir: Path, vocabulary: set[str], subsets: Iterable[str]) -> pd.DataFrame:
    """train_curated.csv / train_noisy.csv (fname,labels comma-separated), their folders, test/."""
    parts = []
    for subset in subsets:
        path = raw_dir / f"train_{subset}.csv"
        df = read_csv(path, ["fname", "labels"])
        labels = [[x.strip() for x in s.split(",") if x.strip()] for s in df["labels"]]
        check_labels(labels, vocabulary, path, multi=True)
        parts.append(
            pd.DataFrame(
                {
                    "clip_id": df["fname"],
                    "path": [f"raw/train_{subset}/{f}" for f in df["fname"]],
                    "split": "train",
                    "subset": subset,
                    "labels": labels,
                    "verified": subset == "curated",
                }
            )
        )
    table = pd.concat([*parts, _test_rows(raw_dir, "test")], ignore_index=True)
    dup = table["clip_id"].duplicated()
    if dup.any():
        raise DataError(f"{raw_dir}: clip {table['clip_id'][dup].iloc[0]!r} appears in two subsets")
    return with_audio_info(table, raw_dir.parent)


def sample_submission_classes(raw_dir: Path) -> list[str]:
    """Class columns of a scores-style sample submission, in the file's order."""
    header = pd.read_csv(raw_dir / "sample_submission.csv", nrows=0).columns.tolist()
    return [c for c in header if c != "fname"]
