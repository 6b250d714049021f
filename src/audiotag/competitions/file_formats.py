"""The shared machinery of the real competitions (:class:`FileCompetition`: published file formats,
download, ``data_dir``) and the readers they share (CSV files, clip names, audio headers).

Errors name the CSV file and its line (header = line 1) so the user can find the bad row; clip names
must stay inside their audio folder (:func:`audio_paths`); audio headers are probed as the table is
parsed, an unusable file kept with its ``audio_issue`` (:func:`probe_clips`).
"""

from __future__ import annotations

import csv
import logging
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pandas as pd

from audiotag.competitions.base import Competition
from audiotag.core.atomic import atomic_write_text
from audiotag.core.errors import AudiotagError, ConfigError, DataError
from audiotag.core.paths import inside_problem
from audiotag.data.audio import MISSING, UnusableAudio, audio_info

log = logging.getLogger(__name__)


def read_csv(path: Path, required: Iterable[str]) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: file not found; run `./run.sh prepare` to fetch the competition data")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise DataError(f"{path}: cannot be parsed as CSV ({csv_problem(path, exc)})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {list(df.columns)}")
    duplicated = df["fname"].duplicated(keep="first") if "fname" in df.columns else None
    if duplicated is not None and duplicated.any():
        row = int(duplicated.to_numpy().nonzero()[0][0])
        raise DataError(f"{path}: line {row + 2}: duplicate fname {df['fname'].iloc[row]!r}")
    return df


def csv_problem(path: Path, exc: Exception) -> str:
    """Why pandas could not read the CSV ``path``; text in another encoding than UTF-8: the line of its
    first such byte and what to do (pandas' own position counts from the start of a buffer, not the file)."""
    if not isinstance(exc, UnicodeDecodeError):
        return str(exc)
    data = path.read_bytes()
    try:
        data.decode("utf-8")
        where = ""
    except UnicodeDecodeError as first:
        line = data.count(b"\n", 0, first.start) + 1
        where = f" at line {line}: byte {data[first.start]:#04x}"
    return (
        f"not UTF-8 text{where}; save it as UTF-8 (a spreadsheet's 'CSV UTF-8' export, or "
        f"`iconv -f <its encoding> -t utf-8`) and run again"
    )


def require_rows(df: pd.DataFrame, path: Path, what: str = "training clips") -> None:
    """Refuse a table without rows (a header-only CSV) before anything is written from it."""
    if len(df) == 0:
        raise DataError(
            f"{path}: no {what}: the file has a header and no rows; restore the complete file "
            "(re-download the data, or point --data-dir at the complete competition folder)"
        )


def audio_paths(
    folder: Path, fnames: Iterable[str], csv_path: Path, suffix: str = "", first_line: int = 2
) -> list[Path]:
    """``folder / (fname + suffix)`` for each fname of ``csv_path`` (row i on line ``first_line + i``).

    A name that would leave ``folder`` (core/paths.py's ``inside_problem``: an absolute path, a
    Windows drive or a ``..`` part) is refused before anything is opened; an empty name is refused
    too. A symbolic link inside the folder named by a plain relative name is followed.
    """
    out = []
    for i, fname in enumerate(fnames):
        name = f"{fname}{suffix}"
        if not fname.strip():
            raise DataError(
                f"{csv_path}: line {first_line + i}: empty fname; every row must name its audio file"
            )
        why = inside_problem(name)
        if why:
            raise DataError(
                f"{csv_path}: line {first_line + i}: fname {fname!r} leaves the audio folder "
                f"{folder.name}/ ({why}); a clip must be named by its path inside {folder}, without "
                "'..' or a leading '/'; fix the row (a symbolic link placed inside the folder is followed)"
            )
        out.append(folder / name)
    return out


def check_labels(labels: list[list[str]], vocabulary: set[str], path: Path) -> None:
    for row, names in enumerate(labels):
        if not names:
            raise DataError(f"{path}: line {row + 2}: no label")
        bad = [n for n in names if n not in vocabulary]
        if bad:
            raise DataError(
                f"{path}: line {row + 2}: unknown label(s) {bad}; "
                f"the vocabulary has {len(vocabulary)} classes"
            )


# ----------------------------------------------------------------------------- real competitions
#
# The real datasets share one shape: a few CSV files and folders of audio in a published file format
# (Kaggle's or Zenodo's), fetched into ``<competition>/raw/`` or used in place from ``data_dir``.

AUDIO_ISSUE = "audio_issue"  # extra clip-table column: "" when fine, else a short word ("empty", "silent")
NOT_FOUND = "file not found"  # probe_audio's error for a missing file
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif")  # what libsndfile decodes


FETCH_API: Any = None  # tests put a stand-in here (an object with the attributes download_api() gives)


def download_api() -> Any:
    """What the competitions fetch with (``RemoteFile``, ``download``, ``zenodo_files``,
    ``join_split_zip``, ``extract_zip``, ``extract_tar``, ``kaggle_download``), from the
    :mod:`audiotag.fetch` modules imported on first use, or ``FETCH_API`` where a test put one."""
    if FETCH_API is not None:
        return FETCH_API
    from audiotag.fetch import extract, http, kaggle, splitzip, zenodo

    return SimpleNamespace(
        RemoteFile=http.RemoteFile,
        download=http.download,
        zenodo_files=zenodo.zenodo_files,
        join_split_zip=splitzip.join_split_zip,
        extract_zip=extract.extract_zip,
        extract_tar=extract.extract_tar,
        kaggle_download=kaggle.kaggle_download,
    )


def probe_audio(paths: Sequence[str], root: Path) -> tuple[list[float], list[int], list[str]]:
    """Duration (s), sample rate and error ("" when readable) of each file, from its header only;
    the error of a missing file is ``NOT_FOUND``, of another unusable one the rules' reason."""
    durations: list[float] = []
    rates: list[int] = []
    errors: list[str] = []
    for _, duration, rate, exc in _headers(paths, root):
        durations.append(float("nan") if exc else duration)
        rates.append(rate)
        errors.append("" if exc is None else NOT_FOUND if exc.kind == MISSING else exc.detail)
    return durations, rates, errors


def _headers(paths: Sequence[str], root: Path) -> Iterator[tuple[str, float, int, UnusableAudio | None]]:
    """``(path, duration, rate, None)`` per readable file, ``(path, 0.0, 0, why)`` per unusable one."""
    for rel in paths:
        try:
            duration, rate = audio_info(root / rel)
        except UnusableAudio as exc:
            yield rel, 0.0, 0, exc
            continue
        yield rel, duration, rate, None


def probe_clips(
    paths: Sequence[str], root: Path, where: str, hint: str | None = None
) -> tuple[list[float], list[int], list[str]]:
    """Duration (s), sample rate and ``audio_issue`` of each clip, from its header only.

    A missing file (or a link to nothing) is an error that names every one, under ``where`` (the
    folder the user knows: ``--data-dir PATH`` or the workspace's raw/). A file that exists but cannot
    be used follows the rules of ``audiotag.data.audio``: duration 0, issue ``empty`` (0 bytes) or
    ``undecodable`` (not audio, unreadable, a link loop), and one warning listing them; the feature
    cache then skips such a training clip or zero-fills such a test clip, listed in ``report.csv``.
    """
    durations: list[float] = []
    rates: list[int] = []
    issues: list[str] = []
    missing: list[str] = []
    unusable: list[str] = []
    for rel, duration, rate, exc in _headers(paths, root):
        durations.append(duration)
        rates.append(rate)
        issues.append("" if exc is None else exc.kind)
        if exc is not None and exc.kind == MISSING:
            missing.append(f"{_shown(rel, root, where)} ({exc.detail.removeprefix('audio ')})")
        elif exc is not None:
            unusable.append(f"{_shown(rel, root, where)} ({exc.kind}: {exc.detail})")
    if missing:
        raise DataError(
            f"{len(missing)} audio file(s) listed in the CSVs are missing under {where}: "
            f"{_head(missing)}; {hint or PREPARE_HINT}"
        )
    if unusable:
        log.warning(
            "%d audio file(s) under %s cannot be used: %s; they stay in the clip table (audio_issue), "
            "the feature cache skips such training clips and zero-fills such test clips (report.csv)",
            len(unusable),
            where,
            _head(unusable),
        )
    return durations, rates, issues


PREPARE_HINT = "re-run `./run.sh prepare`, or check the download"


def _head(items: Sequence[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (" ..." if len(items) > n else "")


def _shown(rel: str, root: Path, where: str) -> str:
    """``rel`` (relative to ``root``, or absolute) shown relative to the folder ``where`` names."""
    path = root / rel
    folder = Path(where.removeprefix("--data-dir "))
    try:
        return path.relative_to(folder).as_posix()
    except ValueError:
        return str(rel)


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


def unpack_target(archive: Path, dest: Path) -> Path:
    """Where to extract ``archive`` so the published file format appears under ``dest``.

    An archive whose members are loose audio files at its top level (Kaggle's ``audio_train.zip``,
    ``train_curated.zip``) goes into ``dest/<archive stem>/``; everything else (a single top folder
    such as ``FSDKaggle2018.audio_train/``, ``train.csv.zip``, Kaggle's all-files archive) into ``dest``.
    """
    with zipfile.ZipFile(archive) as zf:
        names = [n for n in zf.namelist() if not n.endswith("/")]
    loose_audio = names and all("/" not in n and n.lower().endswith(AUDIO_SUFFIXES) for n in names)
    return dest / archive.name.removesuffix(".zip") if loose_audio else dest


def unpack_archives(archives: Iterable[Path], dest: Path) -> None:
    """Extract each archive (and any archive found inside one) so the published files appear in dest."""
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


class FileCompetition(Competition):
    """A real competition: its files follow one of a few published file formats (Kaggle, Zenodo), either
    downloaded into ``raw/`` by :meth:`obtain` or used in place from ``competition.data_dir``.

    Subclasses list the files of each file format in :meth:`expected_files` and fetch a file format in
    :meth:`download`. Clip paths in the table are relative to the competition folder, or absolute
    when the files live in ``data_dir``.
    """

    # where its files are published (competition.source); the first is the default
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
        source = self.cfg.source or self.sources[0]
        if source not in self.sources:
            raise ConfigError(
                f"competition.source: {self.name} is published on {', '.join(self.sources)}, not {source!r}"
            )
        return source

    def probe(self, paths: Sequence[str]) -> tuple[list[float], list[int], list[str]]:
        """:func:`probe_clips` naming the data folder as the user gave it: ``--data-dir PATH``, or raw/."""
        if self.data_dir is None:
            hint = "re-run `./run.sh prepare` to fetch the data again, or pass --data-dir PATH"
            return probe_clips(paths, self.dir, str(self.raw_dir), hint)
        hint = (
            "check that --data-dir points at the complete competition folder (the files listed in its "
            "CSVs must all be there)"
        )
        return probe_clips(paths, self.dir, f"--data-dir {self.data_dir}", hint)

    def audio_paths(self, folder: str, fnames: Iterable[str], csv_path: Path, suffix: str = "") -> list[str]:
        """Clip-table paths of ``fnames`` (``csv_path``'s rows) in ``raw_dir / folder``, refusing a
        name that leaves the folder (:func:`audio_paths`)."""
        return [self.rel(p) for p in audio_paths(self.raw_dir / folder, fnames, csv_path, suffix)]

    def rel(self, path: Path) -> str:
        """``path`` as stored in the clip table: relative to the competition folder when inside it."""
        try:
            return path.relative_to(self.dir).as_posix()
        except ValueError:
            return str(path if path.is_absolute() else path.resolve())

    def configured_subsets(self, known: Sequence[str]) -> list[str]:
        """``competition.subsets`` (all of ``known`` when null), refused when empty or not among them."""
        subsets = list(self.cfg.subsets) if self.cfg.subsets is not None else list(known)
        unknown = [s for s in subsets if s not in known]
        if unknown or not subsets:
            raise ConfigError(
                f"competition.subsets: {unknown or subsets} not allowed; choose from {list(known)}"
            )
        return subsets

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

    def kaggle_fetch(self, slug: str, labels: tuple[int, str] | None = None) -> None:
        """The whole competition from Kaggle into ``raw_dir``, archives unpacked; then ``labels``, the
        (Zenodo record, zip) of the public test labels, which live only on Zenodo (a small zip)."""
        got = Path(download_api().kaggle_download(slug, self.raw_dir))
        archives = [got] if got.is_file() else sorted(got.glob("*.zip"))
        unpack_archives([a for a in archives if a.suffix == ".zip"], self.raw_dir)
        if labels is not None:
            try:
                self.zenodo_fetch(labels[0], lambda name: name == labels[1])
            except (AudiotagError, OSError) as exc:
                log.warning("%s: no test labels (%s); test scores will not be reported", self.name, exc)

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
        """The competition's own sample submission when its file format has one, else one we write
        (``<competition>/sample_submission.csv``) from the test clips of the clip table."""
        own = self.raw_dir / "sample_submission.csv"
        return own if own.is_file() else self.dir / "sample_submission.csv"

    def write_sample_submission(self, clip_ids: Sequence[str], classes: Sequence[str] | None) -> None:
        """The sample submission of a competition without one, ``<competition>/sample_submission.csv``:
        id + label (top-k labels, when ``classes`` is None) or id + one score column per class."""
        if classes is None:
            sample = pd.DataFrame({self.id_column: list(clip_ids), "label": ""})
        else:
            sample = pd.DataFrame(0.0, index=range(len(clip_ids)), columns=list(classes))
            sample.insert(0, self.id_column, list(clip_ids))
        atomic_write_text(self.dir / "sample_submission.csv", sample.to_csv(index=False))
