"""Readers for the Kaggle file layouts of the Freesound competitions, and the shared machinery of
the real competitions (:class:`FileCompetition`: published layouts, download, ``data_dir``).

The demo competitions are written in the Kaggle layouts so that one code path reads both.
Errors name the CSV file and its line (header = line 1) so the user can find the bad row.
"""

from __future__ import annotations

import csv
import logging
import zipfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pandas as pd
import soundfile as sf

from audiotag.atomic import atomic_write_text
from audiotag.competitions.base import Competition
from audiotag.errors import ConfigError, DataError

log = logging.getLogger(__name__)


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


# ----------------------------------------------------------------------------- real competitions
#
# The real datasets share one shape: a few CSV files and folders of audio in a published layout
# (Kaggle's or Zenodo's), fetched into ``<competition>/raw/`` or used in place from ``data_dir``.

AUDIO_ISSUE = "audio_issue"  # extra clip-table column: "" when fine, else a short word ("empty", "silent")
NOT_FOUND = "file not found"
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif")  # what libsndfile decodes


FETCH_API: Any = None  # tests put a stand-in here (an object with the attributes download_api() gives)


def download_api() -> Any:
    """What the competitions fetch with (``RemoteFile``, ``download``, ``zenodo_files``,
    ``join_split_zip``, ``extract_zip``, ``kaggle_download``), from the :mod:`audiotag.fetch` modules
    imported on first use, or ``FETCH_API`` where a test put one."""
    if FETCH_API is not None:
        return FETCH_API
    from audiotag.fetch import extract, http, kaggle, splitzip, zenodo

    return SimpleNamespace(
        RemoteFile=http.RemoteFile,
        download=http.download,
        zenodo_files=zenodo.zenodo_files,
        join_split_zip=splitzip.join_split_zip,
        extract_zip=extract.extract_zip,
        kaggle_download=kaggle.kaggle_download,
    )


def probe_audio(paths: Sequence[str], root: Path) -> tuple[list[float], list[int], list[str]]:
    """Duration (s), sample rate and error ("" when readable) of each file, from its header only."""
    durations: list[float] = []
    rates: list[int] = []
    errors: list[str] = []
    for rel in paths:
        path = root / rel
        try:
            info = sf.info(str(path))
        except Exception as exc:  # libsndfile reports missing and corrupt files with varying types
            durations.append(float("nan"))
            rates.append(0)
            errors.append(NOT_FOUND if not path.exists() else (str(exc).strip() or type(exc).__name__))
            continue
        durations.append(info.frames / info.samplerate if info.samplerate else 0.0)
        rates.append(int(info.samplerate))
        errors.append("")
    return durations, rates, errors


def missing_audio_error(paths: Sequence[str], errors: Sequence[str], root: Path) -> DataError:
    bad = [f"{p} ({e})" for p, e in zip(paths, errors, strict=True) if e]
    head = ", ".join(bad[:5])
    return DataError(
        f"{len(bad)} audio file(s) listed in the CSVs are missing or unreadable under {root}: "
        f"{head}{' ...' if len(bad) > 5 else ''}; re-run `./run.sh prepare`, or check the download "
        "or the --data-dir folder"
    )


def split_labels(text: str) -> list[str]:
    """``"Bark,Walk_and_footsteps"`` -> ``["Bark", "Walk_and_footsteps"]`` (blanks dropped)."""
    return [x.strip() for x in text.split(",") if x.strip()]


def read_vocabulary(path: Path) -> list[tuple[int, str, str]]:
    """(index, label, mid) rows of a Freesound ``vocabulary.csv``, sorted by index.

    The files have no header (FSD50K: ``0,Accelerating_and_revving_and_vroom,/m/07q2z82``; FSDKaggle2019:
    index,label, without the mid); a header line, if one is there, is skipped.
    """
    if not path.is_file():
        raise DataError(f"{path}: file not found; run `./run.sh prepare` to fetch the competition data")
    rows: list[tuple[int, str, str]] = []
    with path.open(newline="", encoding="utf-8") as f:
        for line, row in enumerate(csv.reader(f), start=1):
            if not row or (line == 1 and not row[0].strip().isdigit()):
                continue
            if len(row) < 2 or not row[0].strip().isdigit() or not row[1].strip():
                raise DataError(f"{path}: line {line}: expected index,label[,mid], got {','.join(row)!r}")
            rows.append((int(row[0]), row[1].strip(), row[2].strip() if len(row) > 2 else ""))
    rows.sort()
    labels = [label for _, label, _ in rows]
    if len(set(labels)) != len(labels):
        dup = next(label for label in labels if labels.count(label) > 1)
        raise DataError(f"{path}: label {dup!r} is listed twice")
    indices = [i for i, _, _ in rows]
    if len(set(indices)) != len(indices):
        raise DataError(f"{path}: an index is listed twice")
    return rows


def first_duplicate(values: pd.Series) -> int | None:
    """Row index of the first value seen before, else None."""
    dup = values.duplicated(keep="first").to_numpy()
    return int(dup.nonzero()[0][0]) if dup.any() else None


def unpack_target(archive: Path, dest: Path) -> Path:
    """Where to extract ``archive`` so the published layout appears under ``dest``.

    An archive whose members are loose audio files at its top level (Kaggle's ``audio_train.zip``,
    ``train_curated.zip``) goes into ``dest/<archive stem>/``; everything else (a single top folder
    such as ``FSDKaggle2018.audio_train/``, ``train.csv.zip``, Kaggle's all-files archive) into ``dest``.
    """
    with zipfile.ZipFile(archive) as zf:
        names = [n for n in zf.namelist() if not n.endswith("/")]
    loose_audio = names and all("/" not in n and n.lower().endswith(AUDIO_SUFFIXES) for n in names)
    return dest / archive.name.removesuffix(".zip") if loose_audio else dest


def unpack_archives(archives: Iterable[Path], dest: Path) -> None:
    """Extract each archive (and any archive found inside one) so the published layout appears in dest."""
    extract_zip = download_api().extract_zip
    queue = list(archives)
    done: set[Path] = set()
    while queue:
        archive = queue.pop(0)
        if archive in done:
            continue
        done.add(archive)
        log.info("extracting %s", archive.name)
        extracted = extract_zip(archive, unpack_target(archive, dest))
        queue += [Path(p) for p in extracted or [] if str(p).lower().endswith(".zip")]


def write_sample_submission(path: Path, clip_ids: Sequence[str], classes: Sequence[str] | None) -> None:
    """A sample submission where the competition has none: ``fname,label`` (top-3 labels, when
    ``classes`` is None) or ``fname`` + one score column per class."""
    if classes is None:
        sample = pd.DataFrame({"fname": list(clip_ids), "label": ""})
    else:
        sample = pd.DataFrame(0.0, index=range(len(clip_ids)), columns=list(classes))
        sample.insert(0, "fname", list(clip_ids))
    atomic_write_text(path, sample.to_csv(index=False))


class FileCompetition(Competition):
    """A real competition: its files follow one of a few published layouts (Kaggle, Zenodo), either
    downloaded into ``raw/`` by :meth:`obtain` or used in place from ``competition.data_dir``.

    Subclasses list the files of each layout in :meth:`expected_files` and fetch a layout in
    :meth:`download`. Clip paths in the table are relative to the competition folder, or absolute
    when the files live in ``data_dir``.
    """

    default_source: ClassVar[str] = "zenodo"
    sources: ClassVar[tuple[str, ...]] = ("zenodo",)
    truth_file: ClassVar[str | None] = None  # the post-competition test labels, relative to raw/

    def truth_path(self) -> Path | None:
        """The test-label file in the data folder or the workspace's raw/ (after a Kaggle download
        only the Zenodo meta files land in raw/), or None when neither has it."""
        if self.truth_file is None:
            return None
        for root in (self.raw_dir, self.dir / "raw"):
            if (root / self.truth_file).is_file():
                return root / self.truth_file
        return None

    # -------------------------------------------------------------- where the files are

    @property
    def data_dir(self) -> Path | None:
        return Path(self.cfg.data_dir).expanduser().resolve() if self.cfg.data_dir else None

    @property
    def raw_dir(self) -> Path:
        return self.data_dir if self.data_dir is not None else self.dir / "raw"

    @property
    def source(self) -> str:
        source = self.cfg.source or self.default_source
        if source not in self.sources:
            raise ConfigError(
                f"competition.source: {self.name} is published on {', '.join(self.sources)}, not {source!r}"
            )
        return source

    def rel(self, path: Path) -> str:
        """``path`` as stored in the clip table: relative to the competition folder when inside it."""
        try:
            return path.relative_to(self.dir).as_posix()
        except ValueError:
            return str(path if path.is_absolute() else path.resolve())

    # -------------------------------------------------------------- sources

    def expected_files(self, source: str) -> list[str]:
        """Paths under ``raw_dir`` the complete files of ``source`` have; a trailing ``/`` marks a folder."""
        raise NotImplementedError

    def missing_files(self, source: str) -> list[str]:
        missing = []
        for rel in self.expected_files(source):
            path = self.raw_dir / rel
            ok = path.is_dir() if rel.endswith("/") else path.is_file()
            if not ok:
                missing.append(rel)
        return missing

    def source_found(self) -> str:
        """The source (kaggle, zenodo) whose complete set of files is in ``raw_dir``, the configured
        source first, else a DataError listing what each source's files lack."""
        order = [self.source, *[s for s in self.sources if s != self.source]]
        missing = {name: self.missing_files(name) for name in order}
        for name in order:
            if not missing[name]:
                return name
        where = f"--data-dir {self.raw_dir}" if self.data_dir is not None else str(self.raw_dir)
        lacks = "; ".join(f"the {name} files lack {', '.join(missing[name])}" for name in order)
        hint = (
            "point --data-dir at the folder that holds these files"
            if self.data_dir is not None
            else "re-run `./run.sh prepare` to download them, or pass --data-dir PATH"
        )
        raise DataError(f"{where}: not a complete {self.name} data folder ({lacks}); {hint}")

    # -------------------------------------------------------------- obtain

    def obtain(self) -> None:
        source = self.source  # checked first: a wrong source is a config error whatever is on disk
        if self.data_dir is not None:
            if not self.data_dir.is_dir():
                raise DataError(f"--data-dir {self.data_dir}: no such folder")
            found = self.source_found()
            log.info("%s: using the %s files in place from %s", self.name, found, self.data_dir)
            return
        if any(not self.missing_files(name) for name in self.sources):
            log.info("%s: raw data present in %s (%s files)", self.name, self.raw_dir, self.source_found())
            return
        self.raw_dir.mkdir(parents=True, exist_ok=True)
        log.info("%s: downloading from %s into %s", self.name, source, self.raw_dir)
        self.download(source)
        self.source_found()  # raises, listing what the download did not provide

    def download(self, source: str) -> None:
        raise NotImplementedError

    def kaggle_fetch(self, slug: str) -> None:
        """The whole competition from Kaggle into ``raw_dir``, archives unpacked."""
        got = Path(download_api().kaggle_download(slug, self.raw_dir))
        archives = [got] if got.is_file() else sorted(got.glob("*.zip"))
        unpack_archives([a for a in archives if a.suffix == ".zip"], self.raw_dir)

    def zenodo_fetch(self, record: int, wanted: Callable[[str], bool]) -> None:
        """The record's files that ``wanted(filename)`` selects, downloaded into ``raw_dir`` and unpacked;
        split archives (``x.z01``, ``x.z02``, ... ``x.zip``) are joined first and the joined copy deleted."""
        api = download_api()
        remotes = [r for r in api.zenodo_files(record) if wanted(r.filename)]
        if not remotes:
            raise DataError(f"Zenodo record {record}: none of its files is the one expected for {self.name}")
        paths = {r.filename: Path(api.download(r, self.raw_dir)) for r in remotes}
        for name, path in sorted(paths.items()):
            if not name.endswith(".zip"):
                continue
            stem = name.removesuffix(".zip")
            parts = sorted(p for n, p in paths.items() if n.startswith(stem + ".z") and n != name)
            if parts:  # split archive: .z01 ... .zNN then .zip, as `zip -s` writes them
                joined = Path(api.join_split_zip([*parts, path], self.raw_dir / f"{stem}.joined.zip"))
                try:
                    unpack_archives([joined], self.raw_dir)
                finally:
                    joined.unlink(missing_ok=True)
            else:
                unpack_archives([path], self.raw_dir)

    # -------------------------------------------------------------- sample submission

    @property
    def sample_submission_path(self) -> Path:
        """The competition's own sample submission when its layout has one, else one we write
        (``<competition>/sample_submission.csv``) from the test clips of the clip table."""
        own = self.raw_dir / "sample_submission.csv"
        return own if own.is_file() else self.dir / "sample_submission.csv"
