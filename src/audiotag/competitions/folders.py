"""Your own dataset as one sub-folder of audio per class (``kind: folders``), described by its YAML alone.

Layout (Speech Commands style): ``<data_dir>/<audio_dir>/<class>/<clip>.wav``, the class being the
sub-folder's name (the keys: ``config/competition.py``). How the optional lists are used (text files
relative to ``data_dir``, one clip a line, its path inside ``audio_dir``: ``yes/0a7c2a8d_nohash_0.wav``):

- ``testing_list``: those clips are the **test split**. Their labels (their folders) are kept out of the
  clip table, as the demo competitions keep their hidden test labels, and serve only
  :meth:`test_truth`, so the runs and the ensemble print and save a test score beside the CV
  (comparable with published Speech Commands results, which report accuracy on this list). The
  ensemble writes a submission for them. ``test_dir`` (unlabelled test audio, like ``kind: table``)
  is the alternative; the two are refused together.
- ``validation_list``: those clips stay in the training pool, marked as their ``subset``
  ``validation`` (the others ``train``), and are **cross-validated with the rest** (k folds, groups
  kept whole). One fixed holdout would give out-of-fold predictions for a tenth of the clips only,
  while the blending and the CV report here need every training clip scored out of fold; the
  published lists are speaker-disjoint, and ``group_pattern`` keeps speakers disjoint across our folds
  the same way. ``competition.subsets: [train]`` leaves the validation clips out of training instead.

A file name that ``group_pattern`` does not match is an error naming it. The vocabulary is
``classes`` when given (a class folder outside it is an error; ``exclude`` it), else the sorted folder
names, fixed at the first prepare (:mod:`audiotag.competitions.vocabulary`, shared with ``kind: table``).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path, PurePosixPath

import pandas as pd

from audiotag.competitions.archive import OwnDataset
from audiotag.competitions.file_formats import AUDIO_SUFFIXES, read_csv
from audiotag.competitions.folds import GROUP, describe_groups
from audiotag.competitions.vocabulary import VOCABULARY, Vocabulary
from audiotag.config.schema import CompetitionConfig
from audiotag.core.atomic import atomic_write_text
from audiotag.core.errors import ConfigError, DataError

log = logging.getLogger(__name__)

TRAIN, VALIDATION, TEST = "train", "validation", "test"


def audio_files(folder: Path) -> list[str]:
    """Audio files under ``folder`` (any depth), as sorted POSIX paths relative to it; hidden ones skipped."""
    return sorted(
        rel.as_posix()
        for rel in (p.relative_to(folder) for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        if not any(part.startswith(".") for part in rel.parts) and (folder / rel).is_file()
    )


class FoldersCompetition(OwnDataset):
    """A single-label dataset given as one folder of audio per class, used in place."""

    name = "folders"  # the instance's name is the YAML's (set in __init__)
    kind = "folders"  # serves every config of kind: folders
    task = "single_label"
    sources = ("folders",)
    data_dir_holds = "the class folders"

    def __init__(self, cfg: CompetitionConfig, root: Path | None = None) -> None:
        super().__init__(cfg, root)
        self.metric = cfg.metric or ""  # type: ignore[misc]
        assert cfg.submission is not None  # CompetitionConfig checks it for kind: folders
        if cfg.submission.kind == "sample_columns" and not cfg.sample_submission:
            raise ConfigError(
                "competition.submission.kind sample_columns needs sample_submission (with test_dir)"
            )
        self.submission_kind = "top_k_labels" if cfg.submission.kind == "top_k_labels" else "scores"  # type: ignore[misc]
        self.label_count = cfg.submission.k
        self.id_column = cfg.submission.id_column
        self.vocabulary = Vocabulary(self.dir / VOCABULARY, cfg.classes, cfg.name)

    # -------------------------------------------------------------- where the files are

    @property
    def audio_dir(self) -> Path:
        return self.raw_dir / str(self.cfg.audio_dir)

    def expected_files(self, source: str) -> list[str]:
        cfg = self.cfg
        files = [f"{cfg.audio_dir}/"]
        files += [f for f in (cfg.validation_list, cfg.testing_list, cfg.sample_submission) if f]
        if cfg.test_dir:
            files.append(f"{cfg.test_dir}/")
        return files

    def incomplete(self) -> bool:
        return super().incomplete() or not self._class_folders(strict=False)

    def obtain(self) -> None:
        super().obtain()
        self._class_folders()  # at least one class folder (each checked for audio when parsed)

    def table_sources(self) -> list[Path]:
        """The list files, the sample submission and a listing of the audio files (written to
        ``competition/<name>/audio_files.txt`` when it changed): adding, removing or moving a clip
        rebuilds the clip table, as a changed CSV does for the other competitions."""
        cfg = self.cfg
        listing = self.dir / "audio_files.txt"
        folders = [self.audio_dir, *([self.raw_dir / cfg.test_dir] if cfg.test_dir else [])]
        text = "".join(f"{f.name}/{rel}\n" for f in folders if f.is_dir() for rel in audio_files(f))
        if not listing.is_file() or listing.read_text(encoding="utf-8") != text:
            atomic_write_text(listing, text)
        named = (cfg.validation_list, cfg.testing_list, cfg.sample_submission)
        return [listing, *(self.raw_dir / f for f in named if f and (self.raw_dir / f).is_file())]

    # -------------------------------------------------------------- classes

    @property
    def classes(self) -> list[str]:
        return self.vocabulary.classes

    def _class_folders(self, strict: bool = True) -> list[str]:
        """The class folders under audio_dir (not excluded, not hidden), each checked to hold audio."""
        folder = self.audio_dir
        if not folder.is_dir():
            if not strict:
                return []
            raise DataError(f"{folder}: audio_dir is not a folder; check competition.audio_dir")
        excluded = set(self.cfg.exclude or [])
        names = sorted(
            p.name for p in folder.iterdir() if p.is_dir() and p.name not in excluded and p.name[0] != "."
        )
        if self.cfg.test_dir and (self.raw_dir / self.cfg.test_dir).resolve().parent == folder.resolve():
            names = [n for n in names if n != PurePosixPath(self.cfg.test_dir).name]
        if not names and strict:
            raise DataError(
                f"{folder}: no class folders (one sub-folder of audio files per class); check "
                "competition.audio_dir" + (f" and exclude {sorted(excluded)}" if excluded else "")
            )
        return names

    # -------------------------------------------------------------- lists

    def _read_list(self, rel: str, known: set[str], what: str) -> list[str]:
        """The clips of a list file (paths inside audio_dir), each checked to be a class folder's clip."""
        path = self.raw_dir / rel
        out: list[str] = []
        seen: dict[str, int] = {}
        for line, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            name = text.strip().replace("\\", "/").removeprefix("./")
            if not name:
                continue
            if name.startswith("/") or ".." in name.split("/"):
                raise DataError(
                    f"{path}: line {line}: {name!r} leaves {self.cfg.audio_dir}/; list each clip by its "
                    "path inside audio_dir (e.g. yes/0a7c2a8d_nohash_0.wav)"
                )
            if name in seen:
                raise DataError(f"{path}: line {line}: {name!r} is listed twice (first on line {seen[name]})")
            if name not in known:
                raise DataError(
                    f"{path}: line {line}: {name!r} is not an audio file of a class folder under "
                    f"{self.audio_dir} (excluded folders hold no clips); fix the {what} or the folders"
                )
            seen[name] = line
            out.append(name)
        return out

    def _lists(self, clips: list[str]) -> tuple[set[str], list[str]]:
        """(validation clips, test clips) from validation_list and testing_list."""
        cfg, known = self.cfg, set(clips)
        validation = (
            set(self._read_list(cfg.validation_list, known, "validation_list"))
            if cfg.validation_list
            else set()
        )
        testing = self._read_list(cfg.testing_list, known, "testing_list") if cfg.testing_list else []
        both = sorted(validation & set(testing))
        if both:
            raise DataError(
                f"{both[0]!r} is in both {cfg.validation_list} and {cfg.testing_list} ({len(both)} such "
                "clips); a clip is either validated or tested"
            )
        return validation, testing

    # -------------------------------------------------------------- groups

    def _groups(self, clips: list[str]) -> list[str]:
        """The group of each clip from group_pattern searched in its file name."""
        pattern = re.compile(str(self.cfg.group_pattern))
        groups: list[str] = []
        unmatched: list[str] = []
        for clip in clips:
            match = pattern.search(PurePosixPath(clip).name)
            if match is None or not (match.group(1) if pattern.groups else match.group(0)):
                unmatched.append(clip)
                groups.append("")
            else:
                groups.append(match.group(1) if pattern.groups else match.group(0))
        if unmatched:
            raise DataError(
                f"{self.audio_dir}: {len(unmatched)} file name(s) do not match group_pattern "
                f"{pattern.pattern!r} (or match it empty), e.g. {unmatched[:3]}; fix "
                "competition.group_pattern or rename the files (every clip needs a group)"
            )
        return groups

    # -------------------------------------------------------------- test clips

    def _test_dir_ids(self) -> list[str]:
        """Test clip names (relative to test_dir): the sample submission's ids, or every audio file."""
        cfg = self.cfg
        if not cfg.test_dir:
            return []
        if cfg.sample_submission:
            path = self.raw_dir / cfg.sample_submission
            return read_csv(path, [self.id_column])[self.id_column].tolist()
        names = audio_files(self.raw_dir / cfg.test_dir)
        if not names:
            raise DataError(
                f"{self.raw_dir / cfg.test_dir}: test_dir holds no audio files ({', '.join(AUDIO_SUFFIXES)})"
            )
        return names

    def test_truth(self) -> pd.DataFrame | None:
        """The testing_list clips and their folders' labels; None without a testing_list."""
        if not self.cfg.testing_list:
            return None
        path = self.raw_dir / self.cfg.testing_list
        names = [t.strip().replace("\\", "/").removeprefix("./") for t in path.read_text().splitlines()]
        names = [n for n in names if n]
        return pd.DataFrame({"clip_id": names, "labels": [[PurePosixPath(n).parts[0]] for n in names]})

    # -------------------------------------------------------------- clip table

    def parse_clip_table(self) -> pd.DataFrame:
        cfg = self.cfg
        self.source_found()
        folders = self._class_folders()
        clips = [f"{name}/{rel}" for name in folders for rel in audio_files(self.audio_dir / name)]
        empty = sorted(set(folders) - {c.split("/", 1)[0] for c in clips})
        if empty:
            raise DataError(
                f"{self.audio_dir / empty[0]}: a class folder without audio files "
                f"({', '.join(AUDIO_SUFFIXES)}); add it to competition.exclude if it is no class"
            )
        validation, testing = self._lists(clips)
        test_set = set(testing)
        train = [c for c in clips if c not in test_set]
        labels = [[c.split("/", 1)[0]] for c in train]
        vocabulary = self.vocabulary.fix(
            labels,
            lambda row: f"{self.audio_dir / labels[row][0]}/",
            no_spaces=self.submission_kind == "top_k_labels",
        )
        missing = sorted(set(vocabulary) - {names[0] for names in labels})
        if missing:
            log.warning(
                "%s: class(es) %s have no training clip under %s", self.name, missing[:10], self.audio_dir
            )
        if self.submission_kind == "top_k_labels" and self.label_count > len(vocabulary):
            raise DataError(f"submission.k {self.label_count} exceeds the {len(vocabulary)} classes")
        test_ids = testing or self._test_dir_ids()
        if testing:
            test_paths = [self.rel(self.audio_dir / c) for c in testing]
        elif test_ids:
            listed_in = self.raw_dir / str(cfg.sample_submission or cfg.test_dir)
            test_paths = self.audio_paths(str(cfg.test_dir), test_ids, listed_in)
        else:
            test_paths = []
        n_train, n_test = len(train), len(test_ids)
        table = pd.DataFrame(
            {
                "clip_id": [*train, *test_ids],
                "path": [*(self.rel(self.audio_dir / c) for c in train), *test_paths],
                "split": [TRAIN] * n_train + [TEST] * n_test,
                "subset": [VALIDATION if c in validation else TRAIN for c in train] + [TEST] * n_test,
                "labels": [*labels, *([] for _ in range(n_test))],
                "verified": [True] * n_train + [False] * n_test,
            }
        )
        dup = table["clip_id"].duplicated()
        if dup.any():
            raise DataError(f"test clip {table['clip_id'][dup].iloc[0]!r} is also a training clip")
        durations, rates, issues = self.probe(table["path"].tolist())
        table = table.assign(duration=durations, sample_rate=rates)
        if any(issues):
            table = table.assign(audio_issue=issues)
        if cfg.group_pattern:
            self._add_groups(table, train, testing, n_test)
        log.info(
            "%s: %d classes, %d training clips (%d of validation_list), %d test clips",
            self.name,
            len(vocabulary),
            n_train,
            len(validation),
            n_test,
        )
        if not cfg.sample_submission:
            self.write_sample_submission(
                test_ids, None if self.submission_kind == "top_k_labels" else vocabulary
            )
        return table

    def _add_groups(self, table: pd.DataFrame, train: list[str], testing: list[str], n_test: int) -> None:
        """The training clips' groups (by group_pattern) as the table's group column; a warning where a
        group also has clips in testing_list."""
        groups = self._groups(train)
        table[GROUP] = pd.Series([*groups, *([None] * n_test)], dtype=object).to_numpy()
        log.info(
            "%s: training clips grouped by group_pattern: %s", self.name, describe_groups(pd.Series(groups))
        )
        shared = sorted(set(self._groups(testing)) & set(groups)) if testing else []
        if shared:
            log.warning(
                "%s: %d group(s) have clips in both the training clips and testing_list (e.g. %r); "
                "the test score is then optimistic",
                self.name,
                len(shared),
                shared[0],
            )


COMPETITIONS = (FoldersCompetition,)
