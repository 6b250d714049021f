"""Your own dataset, described by a competition YAML alone (``kind: table``): a CSV of files and labels.

The YAML names the folder (``data_dir``, used in place, or ``--data-dir``; or ``download``: a zip
archive fetched into ``competition/<name>/raw/`` and extracted there when no data_dir is given and the
files are missing, its top-level ``folder`` then used as the data folder), the training CSV
(``train_csv``) and its audio folder (``audio_dir``), the test audio (``test_dir``: every audio file in
it, or the files of ``sample_submission`` when given; left out: no test set, the runs and the ensemble
report CV only and no submission is written), the CSV's columns (``file_column``,
``label_column``, optional ``group_column``, ``fold_column``, ``verified_column``), how labels are
written (``multi_label``, ``label_separator``), the metric and the submission format. The readers are
the shared ones of :mod:`audiotag.competitions.layouts` (names confined to their folder, headers probed,
the audio rules).

The vocabulary is ``classes`` when given (a label outside it is an error naming file, line and
label); otherwise the sorted set of training labels, written to ``competition/<name>/vocabulary.json``
at the first prepare and fixed from then on: a later label outside it is an error naming the row,
never a silent new score column (delete the file to start over, with new runs).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pandas as pd

from audiotag.atomic import atomic_write_text
from audiotag.competitions.folds import FOLD, GROUP, describe_groups
from audiotag.competitions.layouts import (
    AUDIO_SUFFIXES,
    FileCompetition,
    download_api,
    read_csv,
    require_rows,
    write_sample_submission,
)
from audiotag.config import CompetitionConfig
from audiotag.errors import ConfigError, DataError

log = logging.getLogger(__name__)

VOCABULARY = "vocabulary.json"
TRUE_FLAGS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


class TableCompetition(FileCompetition):
    """A tagging dataset given as a CSV table and folders of audio, used in place."""

    name = "table"  # the instance's name is the YAML's (set in __init__)
    sources = ("table",)
    default_source = "table"

    def __init__(self, cfg: CompetitionConfig, root: Path | None = None) -> None:
        super().__init__(cfg, root)
        self.name = cfg.name  # type: ignore[misc]
        self.task = "multi_label" if cfg.multi_label else "single_label"  # type: ignore[misc]
        self.metric = cfg.metric or ""  # type: ignore[misc]
        assert cfg.submission is not None  # CompetitionConfig checks it for kind: table
        self.submission_kind = "top3_labels" if cfg.submission.kind == "top_k_labels" else "scores"  # type: ignore[misc]
        self.label_count = cfg.submission.k

    # -------------------------------------------------------------- where the files are

    @property
    def source(self) -> str:
        return "table"

    @property
    def vocabulary_path(self) -> Path:
        return self.dir / VOCABULARY

    def _file(self, rel: str) -> Path:
        return self.raw_dir / rel

    def expected_files(self, source: str) -> list[str]:
        cfg = self.cfg
        files = [str(cfg.train_csv), f"{cfg.audio_dir}/"]
        if cfg.test_dir:
            files.append(f"{cfg.test_dir}/")
        if cfg.sample_submission:
            files.append(cfg.sample_submission)
        return files

    @property
    def raw_dir(self) -> Path:
        """data_dir when given; else, with ``download``, the archive's folder extracted into raw/."""
        if self.data_dir is None and self.cfg.download is not None:
            return self.dir / "raw" / self.cfg.download.folder
        return super().raw_dir

    def obtain(self) -> None:
        if self.data_dir is None and self.cfg.download is None:
            raise ConfigError(
                f"competition {self.name} (kind: table) has no data_dir: set data_dir in its YAML or pass "
                "--data-dir PATH (the folder holding train_csv and the audio)"
            )
        if self.data_dir is None and self.cfg.download is not None and self.missing_files(self.source):
            log.info("%s: downloading %s into %s", self.name, self.cfg.download.url, self.dir / "raw")
            self.download(self.source)
        super().obtain()  # in place from data_dir, or the files in raw_dir (checked complete)

    def download(self, source: str) -> None:
        """The ``download`` archive into raw/, extracted there; its top folder becomes raw_dir."""
        spec = self.cfg.download
        if spec is None:  # pragma: no cover - obtain refuses a table without data_dir or download
            raise DataError(f"{self.name}: a kind: table competition without download is used in place")
        api = download_api()
        dest = self.dir / "raw"
        filename = PurePosixPath(urlsplit(spec.url).path).name
        if not filename.endswith(".zip"):
            raise ConfigError(f"competition.download.url: {spec.url} does not name a .zip archive")
        archive = Path(api.download(api.RemoteFile(spec.url, filename, sha256=spec.sha256), dest))
        files = [Path(f) for f in api.extract_zip(archive, dest) or []]
        tops = sorted({f.relative_to(dest).parts[0] for f in files if len(f.relative_to(dest).parts) > 1})
        if spec.folder not in tops:
            raise DataError(
                f"{archive}: has no top-level folder {spec.folder!r} (found {tops}); set "
                "competition.download.folder to the archive's folder"
            )

    # -------------------------------------------------------------- vocabulary

    @property
    def classes(self) -> list[str]:
        if self.cfg.classes is not None:
            return list(self.cfg.classes)
        saved = self._saved_vocabulary()
        if saved is None:
            raise DataError(
                f"{self.vocabulary_path}: no vocabulary yet; run `./run.sh prepare -c ...` first (it is "
                "the sorted set of training labels, fixed at the first prepare)"
            )
        return saved

    def _saved_vocabulary(self) -> list[str] | None:
        if not self.vocabulary_path.is_file():
            return None
        try:
            data = json.loads(self.vocabulary_path.read_text())
        except ValueError as exc:
            raise DataError(f"{self.vocabulary_path}: not valid JSON ({exc}); delete it to rebuild") from None
        classes = data.get("classes") if isinstance(data, dict) else None
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes) or not classes:
            raise DataError(f'{self.vocabulary_path}: expected {{"classes": [names]}}; delete it to rebuild')
        return classes

    def _vocabulary(self, labels: list[list[str]], path: Path) -> list[str]:
        """The explicit classes, the saved vocabulary, or (first prepare) the training labels, saved."""
        cfg = self.cfg
        if cfg.classes is not None:
            self._check(labels, set(cfg.classes), path, "the classes listed in the competition YAML")
            return list(cfg.classes)
        saved = self._saved_vocabulary()
        if saved is not None:
            self._check(
                labels,
                set(saved),
                path,
                f"the vocabulary saved at the first prepare ({self.vocabulary_path}; runs and caches "
                "use it: delete it and the runs to start over with a new vocabulary)",
            )
            return saved
        vocabulary = sorted({name for names in labels for name in names})
        if cfg.submission is not None and cfg.submission.kind == "top_k_labels":
            spaced = [c for c in vocabulary if " " in c]
            if spaced:
                raise DataError(
                    f"{path}: label {spaced[0]!r} has a space, but top_k_labels separates labels by spaces"
                )
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.vocabulary_path, json.dumps({"classes": vocabulary}, indent=1) + "\n")
        log.info(
            "%s: vocabulary of %d classes written to %s", self.name, len(vocabulary), self.vocabulary_path
        )
        return vocabulary

    @staticmethod
    def _check(labels: list[list[str]], vocabulary: set[str], path: Path, what: str) -> None:
        for row, names in enumerate(labels):
            bad = [n for n in names if n not in vocabulary]
            if bad:
                raise DataError(f"{path}: line {row + 2}: label {bad[0]!r} is not in {what}")

    # -------------------------------------------------------------- clip table

    def _labels(self, texts: pd.Series, path: Path) -> list[list[str]]:
        sep = self.cfg.label_separator
        out = []
        for row, text in enumerate(texts):
            names = (
                [x.strip() for x in text.split(sep) if x.strip()] if self.cfg.multi_label else [text.strip()]
            )
            if not names or not all(names):
                raise DataError(f"{path}: line {row + 2}: no label")
            if len(set(names)) != len(names):
                raise DataError(f"{path}: line {row + 2}: label repeated in {text!r}")
            out.append(names)
        return out

    def _verified(self, train: pd.DataFrame, path: Path) -> list[bool]:
        column = self.cfg.verified_column
        if column is None:
            return [True] * len(train)
        out = []
        for row, text in enumerate(train[column]):
            flag = TRUE_FLAGS.get(text.strip().lower())
            if flag is None:
                raise DataError(f"{path}: line {row + 2}: {column} must be 0/1 or true/false, got {text!r}")
            out.append(flag)
        return out

    def _test_ids(self) -> tuple[list[str], Path | None]:
        """Test clip names (relative to test_dir) and the CSV that listed them (None: the folder's files)."""
        cfg = self.cfg
        if cfg.sample_submission:
            path = self._file(cfg.sample_submission)
            sample = read_csv(path, ["fname"])
            return sample["fname"].tolist(), path
        if not cfg.test_dir:
            return [], None
        folder = self._file(cfg.test_dir)
        names = sorted(
            p.relative_to(folder).as_posix()
            for p in folder.rglob("*")
            if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES
        )
        if not names:
            raise DataError(f"{folder}: test_dir holds no audio files ({', '.join(AUDIO_SUFFIXES)})")
        return names, None

    def parse_clip_table(self) -> pd.DataFrame:
        cfg = self.cfg
        self.source_found()
        path = self._file(str(cfg.train_csv))
        columns = [cfg.file_column, cfg.label_column]
        columns += [c for c in (cfg.group_column, cfg.fold_column, cfg.verified_column) if c]
        train = read_csv(path, columns)
        require_rows(train, path)
        dup = train[cfg.file_column].duplicated()
        if dup.any():
            row = int(dup.to_numpy().nonzero()[0][0])
            raise DataError(f"{path}: line {row + 2}: file {train[cfg.file_column].iloc[row]!r} listed twice")
        labels = self._labels(train[cfg.label_column], path)
        vocabulary = self._vocabulary(labels, path)
        top_k = cfg.submission is not None and cfg.submission.kind == "top_k_labels"
        if top_k and cfg.submission is not None and cfg.submission.k > len(vocabulary):
            raise DataError(f"submission.k {cfg.submission.k} exceeds the {len(vocabulary)} classes")
        verified = self._verified(train, path)
        test_ids, test_csv = self._test_ids()
        if test_ids and not cfg.test_dir:
            raise ConfigError(
                "competition.test_dir: sample_submission is given, but not the test audio folder"
            )
        overlap = sorted(set(test_ids) & set(train[cfg.file_column]))
        if overlap:
            raise DataError(f"test clip {overlap[0]!r} is also a training clip in {path}")
        train_paths = self.audio_paths(str(cfg.audio_dir), train[cfg.file_column], path)
        test_paths = (
            self.audio_paths(str(cfg.test_dir), test_ids, test_csv or self._file(str(cfg.test_dir)))
            if test_ids
            else []
        )
        n_test = len(test_ids)
        table = pd.DataFrame(
            {
                "clip_id": [*train[cfg.file_column], *test_ids],
                "path": [*train_paths, *test_paths],
                "split": ["train"] * len(train) + ["test"] * n_test,
                "subset": ["train"] * len(train) + ["test"] * n_test,
                "labels": [*labels, *([] for _ in range(n_test))],
                "verified": [*verified, *([False] * n_test)],
            }
        )
        durations, rates, issues = self.probe(table["path"].tolist())
        table = table.assign(duration=durations, sample_rate=rates)
        if any(issues):
            table = table.assign(audio_issue=issues)
        for source, target in ((cfg.group_column, GROUP), (cfg.fold_column, FOLD)):
            if source:
                values = train[source].str.strip()
                blank = values == ""
                if blank.any():
                    row = int(blank.to_numpy().nonzero()[0][0])
                    raise DataError(f"{path}: line {row + 2}: empty {source}")
                table[target] = pd.Series([*values, *([None] * n_test)], dtype=object).to_numpy()
        if cfg.group_column:
            log.info(
                "%s: training clips grouped by %s: %s",
                self.name,
                cfg.group_column,
                describe_groups(train[cfg.group_column].str.strip()),
            )
        if not cfg.sample_submission:
            classes = None if self.submission_kind == "top3_labels" else vocabulary
            write_sample_submission(self.dir / "sample_submission.csv", test_ids, classes)
        return table

    @property
    def sample_submission_path(self) -> Path:
        if self.cfg.sample_submission:
            return self._file(self.cfg.sample_submission)
        return self.dir / "sample_submission.csv"
