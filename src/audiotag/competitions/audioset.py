"""AudioSet (Gemmeke et al. 2017): 10-second YouTube segments, 527 classes, multi-label, mAP.

Google publishes only the labels; the audio lives on YouTube and we never download it. ``obtain()``
fetches the public label CSVs (the URLs linked from research.google.com/audioset/download.html, the
same files PANNs' ``runme.sh`` downloads) and otherwise reads **your own folder of clips**, given with
``--data-dir PATH`` (``competition.data_dir``), or placed in ``<competition>/raw/audio/``.

Label files (also looked for in ``data_dir`` and ``data_dir/metadata/``, so a PANNs-style dataset
folder works as is):

- ``balanced_train_segments.csv`` (subset ``balanced``, ~22k), ``unbalanced_train_segments.csv``
  (subset ``unbalanced``, ~2M), ``eval_segments.csv`` (the test split, ~20k): three comment lines
  (``# Segments csv created ...``, ``# num_ytids=...``, ``# YTID, start_seconds, end_seconds,
  positive_labels``), then rows like ``--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"``;
- ``class_labels_indices.csv``: ``index,mid,display_name`` with a header; the class names are the
  display names (unique over the 527), in index order.

Audio file names: a clip is found anywhere under the folder (sub-folders included) by its YouTube id
and start time, with or without a leading ``Y`` (PANNs writes ``Y<ytid>.wav``):

- ``<ytid>.<ext>`` and ``Y<ytid>.<ext>``;
- ``<ytid>_<start>.<ext>``, e.g. ``--PJHxphWEs_30.000.wav``, ``--PJHxphWEs_30.wav``, ``--PJHxphWEs_30.0.wav``;
- ``<ytid>_<start>_<end>.<ext>``, e.g. ``--PJHxphWEs_30.000_40.000.flac``, ``--PJHxphWEs_30_40.flac``,
  or in milliseconds ``--PJHxphWEs_30000_40000.flac``;

where ``<ext>`` is one libsndfile decodes: wav, flac, ogg, opus, mp3, aiff. Files in other formats
(m4a, webm, aac, mp4, ...) are reported as unsupported: convert them (e.g. ``ffmpeg -i x.m4a x.flac``).

Clips missing from the folder (deleted videos are common: PANNs found 20,550 of 22,160 balanced
clips) are counted per subset in the log and listed in ``<competition>/missing_clips.csv``
(clip_id, ytid, start_seconds, end_seconds, subset, reason); they are left out of the clip table,
never a crash. ``clip_id`` is ``<ytid>_<start_seconds as written in the CSV>``.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from audiotag.competitions.file_formats import (
    AUDIO_ISSUE,
    AUDIO_SUFFIXES,
    FileCompetition,
    download_api,
    probe_audio,
)
from audiotag.core.atomic import atomic_write_text
from audiotag.core.errors import ConfigError, DataError

log = logging.getLogger(__name__)

CSV_URL = "https://storage.googleapis.com/us_audioset/youtube_corpus/v1/csv/"
LABELS_CSV = "class_labels_indices.csv"
SEGMENT_CSVS = {
    "balanced": "balanced_train_segments.csv",
    "unbalanced": "unbalanced_train_segments.csv",
    "eval": "eval_segments.csv",
}
TRAIN_SUBSETS = ("balanced", "unbalanced")
UNSUPPORTED_SUFFIXES = (".m4a", ".mp4", ".webm", ".aac", ".mkv", ".wma", ".3gp")
MISSING_REPORT = "missing_clips.csv"
N_CLASSES = 527


@dataclass(frozen=True)
class Segment:
    clip_id: str
    ytid: str
    start: str
    end: str
    labels: list[str]
    subset: str


def number_forms(text: str) -> list[str]:
    """The ways a time may be written in a file name, in a fixed order: as in the CSV, whole seconds
    (when whole), 1 decimal, 3 decimals, milliseconds. Entries may repeat; the order is what matters,
    so the start and end of a segment can be paired form by form."""
    value = float(text)
    whole = str(int(value)) if value.is_integer() else text
    return [text, whole, f"{value:.1f}", f"{value:.3f}", str(round(value * 1000))]


def candidate_stems(ytid: str, start: str, end: str) -> list[str]:
    """File names (without extension) a segment's clip may have, the most specific first."""
    starts, ends = number_forms(start), number_forms(end)
    names = [f"{ytid}_{s}_{e}" for s, e in zip(starts, ends, strict=True)]
    names += [f"{ytid}_{s}" for s in starts] + [ytid]
    return list(dict.fromkeys(n for name in names for n in (name, f"Y{name}")))


def index_audio(folder: Path) -> tuple[dict[str, Path], dict[str, str], int]:
    """(stem -> decodable file, stem -> unsupported suffix, number of duplicate stems) under ``folder``."""
    found: dict[str, Path] = {}
    unsupported: dict[str, str] = {}
    duplicates = 0
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            stem, dot, suffix = name.rpartition(".")
            if not dot:
                continue
            suffix = "." + suffix.lower()
            if suffix in AUDIO_SUFFIXES:
                if stem in found:
                    duplicates += 1
                    continue
                found[stem] = Path(root) / name
            elif suffix in UNSUPPORTED_SUFFIXES:
                unsupported.setdefault(stem, suffix)
    return found, unsupported, duplicates


def missing_row(seg: Segment, reason: str) -> dict[str, str]:
    """One line of ``missing_clips.csv``."""
    return {
        "clip_id": seg.clip_id,
        "ytid": seg.ytid,
        "start_seconds": seg.start,
        "end_seconds": seg.end,
        "subset": seg.subset,
        "reason": reason,
    }


class AudioSet(FileCompetition):
    name = "audioset"
    task = "multi_label"
    metric = "map"
    submission_kind = "scores"
    sources = ("google",)

    _vocabulary: tuple[list[str], dict[str, str]] | None = None

    # -------------------------------------------------------------- where the files are

    @property
    def source(self) -> str:
        if self.cfg.source is not None:
            raise ConfigError(
                "competition.source: AudioSet's labels come from Google and its audio from your own folder; "
                "leave source unset"
            )
        return "google"

    @property
    def subsets(self) -> list[str]:
        return self.configured_subsets(TRAIN_SUBSETS)

    def needed_csvs(self) -> list[str]:
        return [LABELS_CSV, *(SEGMENT_CSVS[s] for s in self.subsets), SEGMENT_CSVS["eval"]]

    @property
    def raw_dir(self) -> Path:
        """The folder with the label CSVs: ``data_dir``, ``data_dir/metadata`` or ``<competition>/raw``."""
        candidates = []
        if self.data_dir is not None:
            candidates += [self.data_dir, self.data_dir / "metadata"]
        candidates.append(self.dir / "raw")
        for folder in candidates:
            if all((folder / name).is_file() for name in self.needed_csvs()):
                return folder
        return self.dir / "raw"

    @property
    def audio_dir(self) -> Path:
        return self.data_dir if self.data_dir is not None else self.dir / "raw" / "audio"

    @property
    def missing_report_path(self) -> Path:
        return self.dir / MISSING_REPORT

    def expected_files(self, source: str) -> list[str]:
        return self.needed_csvs()

    # -------------------------------------------------------------- obtain

    def obtain(self) -> None:
        _ = self.source  # a configured source is an error: say so before anything else
        if self.data_dir is not None and not self.data_dir.is_dir():
            raise DataError(f"--data-dir {self.data_dir}: no such folder")
        missing = self.missing_files("google")
        if missing:
            self.download("google")
        else:
            log.info("audioset: label CSVs present in %s", self.raw_dir)
        if not self.audio_dir.is_dir():
            raise DataError(
                f"audioset: no audio folder at {self.audio_dir}. AudioSet's audio is not distributed (it "
                "lives on YouTube and we do not download it): put your clips in a folder, named "
                "<ytid>_<start>.wav, <ytid>_<start>_<end>.flac or Y<ytid>.wav (see audiotag.competitions."
                "audioset), and pass --data-dir PATH"
            )
        log.info("audioset: audio from %s", self.audio_dir)

    def download(self, source: str) -> None:
        """The public label CSVs (the balanced/eval lists are a few MB, the unbalanced one ~100 MB)."""
        api = download_api()
        dest = self.dir / "raw"
        dest.mkdir(parents=True, exist_ok=True)
        for name in self.needed_csvs():
            if not (dest / name).is_file():
                log.info("audioset: downloading %s", name)
                api.download(api.RemoteFile(url=CSV_URL + name, filename=name), dest)

    # -------------------------------------------------------------- vocabulary and segments

    def vocabulary(self) -> tuple[list[str], dict[str, str]]:
        """(display names in index order, mid -> display name) from ``class_labels_indices.csv``."""
        if self._vocabulary is None:
            path = self.raw_dir / LABELS_CSV
            if not path.is_file():
                raise DataError(f"{path}: file not found; run `./run.sh prepare -c audioset` to fetch it")
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
            missing = [c for c in ("index", "mid", "display_name") if c not in df.columns]
            if missing:
                raise DataError(f"{path}: missing column(s) {missing}; found {list(df.columns)}")
            for column in ("mid", "display_name"):
                dup = df[column].duplicated()
                if dup.any():
                    row = int(dup.to_numpy().nonzero()[0][0])
                    raise DataError(f"{path}: line {row + 2}: duplicate {column} {df[column].iloc[row]!r}")
            order = pd.to_numeric(df["index"], errors="coerce")
            if order.isna().any():
                row = int(order.isna().to_numpy().nonzero()[0][0])
                raise DataError(f"{path}: line {row + 2}: index must be an integer")
            df = df.assign(order=order).sort_values("order")
            if len(df) != N_CLASSES:
                log.warning("audioset: %s lists %d classes, not %d", path, len(df), N_CLASSES)
            names = df["display_name"].str.strip().tolist()
            self._vocabulary = (names, dict(zip(df["mid"].str.strip(), names, strict=True)))
        return self._vocabulary

    @property
    def classes(self) -> list[str]:
        return list(self.vocabulary()[0])

    def read_segments(self, subset: str) -> Iterator[Segment]:
        """Rows of one segments CSV; a malformed row or an unknown MID is an error naming file and line."""
        path = self.raw_dir / SEGMENT_CSVS[subset]
        if not path.is_file():
            raise DataError(f"{path}: file not found; run `./run.sh prepare -c audioset` to fetch it")
        mids = self.vocabulary()[1]
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f, skipinitialspace=True)
            for row in reader:
                if not row or row[0].startswith("#"):
                    continue
                line = reader.line_num
                if len(row) != 4:
                    raise DataError(
                        f'{path}: line {line}: expected YTID, start_seconds, end_seconds, "positive_labels"; '
                        f"got {len(row)} field(s)"
                    )
                ytid, start, end, positive = (x.strip() for x in row)
                try:
                    float(start), float(end)
                except ValueError:
                    raise DataError(
                        f"{path}: line {line}: start/end seconds {start!r}, {end!r} are not numbers"
                    ) from None
                codes = [m.strip() for m in positive.split(",") if m.strip()]
                unknown = [m for m in codes if m not in mids]
                if unknown or not codes:
                    raise DataError(
                        f"{path}: line {line}: unknown label MID(s) {unknown or codes}; "
                        f"{LABELS_CSV} lists {len(mids)} classes"
                    )
                yield Segment(f"{ytid}_{start}", ytid, start, end, [mids[m] for m in codes], subset)

    # -------------------------------------------------------------- clip table

    def parse_clip_table(self) -> pd.DataFrame:
        found, unsupported, duplicates = (
            index_audio(self.audio_dir) if self.audio_dir.is_dir() else ({}, {}, 0)
        )
        if duplicates:
            log.warning(
                "audioset: %d file name(s) appear twice under %s; the first (sorted) is used",
                duplicates,
                self.audio_dir,
            )
        located: list[tuple[Segment, Path]] = []
        missing: list[dict[str, str]] = []
        seen: set[str] = set()
        totals: dict[str, int] = {}
        for subset in [*self.subsets, "eval"]:
            totals[subset] = 0
            for seg in self.read_segments(subset):
                if seg.clip_id in seen:
                    log.warning("audioset: segment %s listed twice; skipped in %s", seg.clip_id, subset)
                    continue
                seen.add(seg.clip_id)
                totals[subset] += 1
                stems = candidate_stems(seg.ytid, seg.start, seg.end)
                path = next((found[s] for s in stems if s in found), None)
                if path is not None:
                    located.append((seg, path))
                    continue
                suffix = next((unsupported[s] for s in stems if s in unsupported), None)
                reason = f"unsupported format {suffix} (convert it to flac or wav)" if suffix else "not found"
                missing.append(missing_row(seg, reason))
        paths = [self.rel(path) for _, path in located]
        durations, rates, errors = probe_audio(paths, self.dir)
        keep: list[int] = []
        for i, (seg, _) in enumerate(located):
            if errors[i] or durations[i] == 0:
                missing.append(missing_row(seg, f"unreadable ({errors[i]})" if errors[i] else "empty file"))
            else:
                keep.append(i)
        segs = [located[i][0] for i in keep]
        table = pd.DataFrame(
            {
                "clip_id": [s.clip_id for s in segs],
                "path": [paths[i] for i in keep],
                "split": ["test" if s.subset == "eval" else "train" for s in segs],
                "subset": [s.subset for s in segs],
                "labels": [s.labels for s in segs],
                "verified": True,
                "duration": [durations[i] for i in keep],
                "sample_rate": [rates[i] for i in keep],
                AUDIO_ISSUE: "",
            }
        )
        self._report(table, missing, totals)
        if not (table["split"] == "train").any():
            raise DataError(
                f"audioset: none of the {sum(totals[s] for s in self.subsets)} training segments "
                f"({', '.join(self.subsets)}) has a clip under {self.audio_dir}; expected names like "
                "<ytid>_<start>.wav, <ytid>_<start>_<end>.flac or Y<ytid>.wav (see audiotag/competitions/"
                f"audioset.py); every missing segment is listed in {self.missing_report_path}"
            )
        test_ids = table.loc[table["split"] == "test", "clip_id"].tolist()
        self.write_sample_submission(test_ids, self.classes)
        return table

    def _report(self, table: pd.DataFrame, missing: list[dict[str, str]], totals: dict[str, int]) -> None:
        columns = ["clip_id", "ytid", "start_seconds", "end_seconds", "subset", "reason"]
        report = pd.DataFrame(missing, columns=columns)
        atomic_write_text(self.missing_report_path, report.to_csv(index=False))
        present = table["subset"].value_counts().to_dict()
        summary = ", ".join(f"{subset} {present.get(subset, 0)}/{total}" for subset, total in totals.items())
        if missing:
            reasons = report["reason"].str.replace(r" \(.*", "", regex=True).value_counts().to_dict()
            log.warning(
                "audioset: clips found: %s; %d missing (%s), listed in %s",
                summary,
                len(missing),
                ", ".join(f"{k}: {v}" for k, v in reasons.items()),
                self.missing_report_path,
            )
        else:
            log.info("audioset: clips found: %s; none missing", summary)
        if not present.get("eval"):
            log.warning(
                "audioset: no eval clip found under %s; there will be no test predictions", self.audio_dir
            )

    # -------------------------------------------------------------- test labels

    def test_truth(self) -> pd.DataFrame | None:
        """Labels of every eval segment (a superset of the eval clips you have)."""
        if not (self.raw_dir / SEGMENT_CSVS["eval"]).is_file() or not (self.raw_dir / LABELS_CSV).is_file():
            return None
        segments = list(self.read_segments("eval"))
        return pd.DataFrame(
            {"clip_id": [s.clip_id for s in segments], "labels": [s.labels for s in segments]}
        )


COMPETITIONS = (AudioSet,)
