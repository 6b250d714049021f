"""Guess a competition YAML from a data folder (``./run.sh new-competition NAME --from DIR``).

Two file formats are recognised, tried in this order:

- ``kind: table``: a CSV (at most two folders deep; ``sample_submission*.csv`` aside) with a column of
  audio file names that exist under some folder (the file column: the most rows found; the folder
  they share is ``audio_dir``; files spread over sub-folders named by another column, as
  UrbanSound8K's ``fold1..fold10``, become a ``file_template``), a label-like column (named like
  label/class/category/tags, text, repeated values; labels holding ``,`` or ``;`` that recombine a
  smaller set of names make it multi-label), group-like columns by name (fsID, freesound_id, speaker,
  src_file, uploader, ...), a fold column (``fold``: integers, 2-20 values), a 0/1 verified column;
  several training CSVs with the same label column (``train_curated.csv``, ``train_noisy.csv``) become
  a ``{subset: CSV}`` mapping; a test folder (test, audio_test, ...) and a ``sample_submission.csv``.
- ``kind: folders``: the folder whose sub-folders hold audio files (one per class; names starting with
  ``_`` are excluded, as Speech Commands' ``_background_noise_``), ``*valid*.txt`` / ``*test*.txt``
  lists of clip paths, and ``_nohash_`` file names (Speech Commands speakers) as groups.

Every decision comes with a reason (``Guess.reasons``, printed by the command, and a comment beside
its key in the YAML) so the user can check it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from audiotag.competitions.file_formats import AUDIO_SUFFIXES, csv_problem
from audiotag.competitions.folders import audio_files
from audiotag.core.errors import DataError

LABEL_NAMES = {"label", "labels", "class", "classes", "category", "class_name", "classname", "tags", "tag"}
LABEL_NAMES |= {"word", "scene_label", "primary_label", "target_name", "species"}
GROUP_NAMES = ["fsid", "freesound_id", "speaker", "speaker_id", "src_file", "uploader", "recording_id"]
GROUP_NAMES += ["recording", "session", "source_id", "user", "user_id", "author", "client_id"]
VERIFIED_NAMES = {"manually_verified", "verified"}
TEST_DIR_NAMES = {"test", "audio_test", "test_audio", "testing", "eval", "evaluation"}
MAX_ROWS = 1_000_000
NOHASH = r"^(.+?)_nohash_"


@dataclass
class Guess:
    """The guessed YAML keys, why each was chosen, and the comment written beside it."""

    spec: dict[str, Any] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    comments: dict[str, str] = field(default_factory=dict)

    def set(self, key: str, value: Any, reason: str | None = None, comment: str | None = None) -> None:
        self.spec[key] = value
        if reason:
            self.reasons.append(f"{key.replace('_', ' ')}: {reason}")
        if comment or reason:
            self.comments[key] = comment or reason or ""


# --------------------------------------------------------------------------- the folder's files


@dataclass
class Files:
    """The audio files under the data folder, as POSIX paths relative to it."""

    root: Path
    audio: list[str]
    unreadable: list[str] = field(default_factory=list)  # CSVs pandas refused, with why

    @classmethod
    def scan(cls, root: Path) -> Files:
        return cls(root, audio_files(root))

    def by_name(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for rel in self.audio:
            out.setdefault(PurePosixPath(rel).name, []).append(rel)
        return out


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() or "."


def _shallow(root: Path, pattern: str, depth: int = 2) -> list[Path]:
    return sorted(p for p in root.rglob(pattern) if len(p.relative_to(root).parts) <= depth + 1)


def _test_dir(files: Files, used: set[str]) -> str | None:
    """A test-like folder holding audio files, none of them a training clip."""
    for folder in _shallow(files.root, "*", depth=1):
        if not folder.is_dir() or folder.name.lower() not in TEST_DIR_NAMES:
            continue
        rel = _rel(folder, files.root)
        inside = [a for a in files.audio if a.startswith(rel + "/")]
        if inside and not used & set(inside):
            return rel
    return None


# --------------------------------------------------------------------------- kind: table


@dataclass
class FileColumn:
    column: str
    found: int  # rows whose file exists
    audio_dir: str
    template: str | None  # file_template, when the files need one
    paths: list[str]  # the found files (relative to the data folder)
    note: str = ""


def _locate(value: str, by_name: dict[str, list[str]]) -> tuple[str, str] | None:
    """(file found, the value as written in it) for a CSV value naming an audio file, else None."""
    value = value.strip().replace("\\", "/")
    if not value:
        return None
    name = PurePosixPath(value).name
    for rel in by_name.get(name, []):
        if rel == value or rel.endswith("/" + value):
            return rel, value
    if not name.lower().endswith(AUDIO_SUFFIXES):  # an id without its extension
        for suffix in AUDIO_SUFFIXES:
            for rel in by_name.get(name + suffix, []):
                if rel == value + suffix or rel.endswith("/" + value + suffix):
                    return rel, value + suffix
    return None


def _common_dir(dirs: list[str]) -> str:
    parts = [d.split("/") if d else [] for d in dirs]
    common: list[str] = []
    for level in zip(*parts, strict=False):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return "/".join(common)


def _file_column(df: pd.DataFrame, by_name: dict[str, list[str]]) -> FileColumn | None:
    best: FileColumn | None = None
    for column in df.columns:
        located = [_locate(str(v), by_name) for v in df[column]]
        found = [x for x in located if x is not None]
        if len(found) < max(1, len(df) // 2) or (best and len(found) <= best.found):
            continue
        prefixes = [rel[: len(rel) - len(written)].rstrip("/") for rel, written in found]
        audio_dir = _common_dir(prefixes)
        subs = [p[len(audio_dir) :].strip("/") for p in prefixes]
        suffixed = any(
            x is not None and x[1] != str(v).strip() for x, v in zip(located, df[column], strict=True)
        )
        template, note = None, ""
        rows = [i for i, x in enumerate(located) if x is not None]
        if any(subs):
            template = _template(df, column, rows, subs)
            if template is None:
                note = "the files lie in sub-folders no column names: set file_template by hand"
        elif suffixed:
            template = "{" + column + "}" + PurePosixPath(found[0][1]).suffix
        best = FileColumn(column, len(found), audio_dir or ".", template, [rel for rel, _ in found], note)
    return best


def _template(df: pd.DataFrame, file_column: str, rows: list[int], subs: list[str]) -> str | None:
    """``'{pre}{column}{post}/{file_column}'`` when one column's value names each row's sub-folder."""
    for column in df.columns:
        if column == file_column:
            continue
        first = str(df[column].iloc[rows[0]]).strip()
        at = subs[0].find(first) if first else -1
        if at < 0:
            continue
        pre, post = subs[0][:at], subs[0][at + len(first) :]
        if all(
            sub == f"{pre}{str(df[column].iloc[r]).strip()}{post}" for r, sub in zip(rows, subs, strict=True)
        ):
            return f"{pre}{{{column}}}{post}/{{{file_column}}}"
    return None


def _separator(values: pd.Series) -> str | None:
    """ "," or ";" when labels hold it and the split names recombine a smaller set, else None."""
    distinct = set(values)
    for sep in (",", ";"):
        holding = values.str.contains(sep, regex=False)
        if holding.mean() < 0.02:
            continue
        names = {n.strip() for v in distinct for n in v.split(sep) if n.strip()}
        if len(names) < len(distinct):
            return sep
    return None


def _label_column(df: pd.DataFrame, skip: set[str]) -> tuple[str, str | None, int] | None:
    """(column, separator or None, number of distinct labels) of the most label-like column."""
    best: tuple[int, str, str | None, int] | None = None
    for column in df.columns:
        if column in skip:
            continue
        values = df[column].astype(str).str.strip()
        if (values == "").mean() > 0.01:
            continue
        sep = _separator(values)
        names = {n.strip() for v in set(values) for n in (v.split(sep) if sep else [v]) if n.strip()}
        if len(names) < 2 or len(names) > max(2, 0.5 * len(df)):
            continue
        numeric = pd.to_numeric(values, errors="coerce").notna().all()
        score = 3 * (column.lower() in LABEL_NAMES) + 2 * (not numeric) + 2 + (len(df) / len(names) >= 2)
        if best is None or score > best[0]:
            best = (score, column, sep, len(names))
    return None if best is None or best[0] < 4 else best[1:]


def _read(path: Path, files: Files) -> pd.DataFrame | None:
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, nrows=MAX_ROWS)
    except Exception as exc:  # not a CSV we can read: not a candidate, named if nothing else is found
        files.unreadable.append(f"{_rel(path, files.root)}: {csv_problem(path, exc)}")
        return None


@dataclass
class TableCandidate:
    path: Path
    df: pd.DataFrame
    file: FileColumn


def _table_candidates(files: Files) -> list[TableCandidate]:
    by_name = files.by_name()
    out = []
    for path in _shallow(files.root, "*.csv"):
        if path.name.lower().startswith("sample_submission"):
            continue
        df = _read(path, files)
        if df is None or df.empty:
            continue
        found = _file_column(df, by_name)
        if found is not None:
            out.append(TableCandidate(path, df, found))
    return sorted(out, key=lambda c: -c.file.found)


def guess_table(files: Files, candidates: list[TableCandidate], guess: Guess) -> None:
    main = candidates[0]
    df, fc = main.df, main.file
    root = files.root
    guess.set("kind", "table", f"{_rel(main.path, root)} names {fc.found} of its {len(df)} rows' audio files")
    fold = next(
        (
            c
            for c in df.columns
            if re.fullmatch(r"folds?(_?id)?", c.lower()) and _fold_values(df[c]) is not None
        ),
        None,
    )
    groups = [
        c for name in GROUP_NAMES for c in df.columns if c.lower() == name and c not in (fc.column, fold)
    ]
    verified = next((c for c in df.columns if c.lower() in VERIFIED_NAMES and _flags(df[c])), None)
    skip = {fc.column, *groups, *([fold] if fold else []), *([verified] if verified else [])}
    label = _label_column(df, skip)
    if label is None:
        raise DataError(
            f"{main.path}: no label-like column (text, repeated values) among {list(df.columns)}; write the "
            "YAML by hand (see README, 'Your own dataset')"
        )
    label_column, sep, n_labels = label
    same = [c for c in candidates[1:] if label_column in c.df.columns and c.file.template is None]
    if same and fc.template is None:
        subsets = {_subset(c.path): c for c in [main, *same]}
        guess.set(
            "train_csv",
            {s: _rel(c.path, root) for s, c in subsets.items()},
            f"{len(subsets)} CSVs with a {label_column!r} column, one subset each",
        )
        dirs = {s: c.file.audio_dir for s, c in subsets.items()}
        guess.set("audio_dir", dirs if len(set(dirs.values())) > 1 else fc.audio_dir, "their files' folders")
        noisy = [s for s in subsets if "noisy" in s]
        if noisy:
            guess.set("noisy_subsets", noisy, "named noisy: labels untrusted (weighted, not scored)")
    else:
        guess.set("train_csv", _rel(main.path, root), f"{fc.found} of {len(df)} rows name an existing file")
        guess.set("audio_dir", fc.audio_dir, f"the folder holding those files ({fc.found} found)")
    guess.set(
        "file_column", fc.column, f"{fc.column} ({fc.found} values are audio files under {fc.audio_dir})"
    )
    if fc.template:
        guess.set("file_template", fc.template, f"each file's path inside audio_dir, e.g. {fc.paths[0]}")
    elif fc.note:
        guess.reasons.append(f"file template: {fc.note}")
    kind = f"multi-label, separated by {sep!r}" if sep else "one label per row"
    guess.set(
        "label_column",
        label_column,
        f"{label_column} ({n_labels} distinct labels over {len(df)} rows, {kind})",
    )
    guess.set("multi_label", bool(sep))
    if sep:
        guess.set("label_separator", sep)
    if groups:
        n = df[groups[0]].nunique()
        others = f"; also group-like: {groups[1:]}" if groups[1:] else ""
        guess.set(
            "group_column",
            groups[0],
            f"{groups[0]} ({n} groups over {len(df)} rows, {len(df) / n:.1f} clips per group){others}",
            "clips of one group never straddle folds",
        )
    if verified:
        guess.set("verified_column", verified, f"{verified} (0/1 values)")
    if fold:
        values = _fold_values(df[fold]) or []
        guess.set("fold_column", fold, f"{fold} (predefined folds {values})")
        guess.set("n_folds", len(values))
    used = set().union(*(c.file.paths for c in candidates))
    guess_test_and_submission(files, guess, _test_dir(files, used), multi=bool(sep))


def _subset(path: Path) -> str:
    stem = path.stem.lower()
    return stem.removeprefix("train_").removeprefix("train-") or stem


def _fold_values(column: pd.Series) -> list[int] | None:
    numeric = pd.to_numeric(column, errors="coerce")
    if numeric.isna().any() or (numeric != numeric.round()).any():
        return None
    values = sorted({int(v) for v in numeric})
    return values if 2 <= len(values) <= 20 else None


def _flags(column: pd.Series) -> bool:
    return set(column.str.strip().str.lower()) <= {"0", "1", "true", "false", "yes", "no"}


def guess_test_and_submission(
    files: Files, guess: Guess, test_dir: str | None, multi: bool, listed_test: bool = False
) -> None:
    """test_dir, sample_submission, metric and submission; ``listed_test``: a testing_list is the test set."""
    root = files.root
    samples = [p for p in _shallow(root, "*.csv", depth=1) if p.name.lower().startswith("sample_submission")]
    sample = _read(samples[0], files) if samples else None
    if test_dir:
        n = sum(a.startswith(test_dir + "/") for a in files.audio)
        guess.set("test_dir", test_dir, f"{test_dir}/ ({n} audio files, none a training clip)")
    elif not listed_test:
        guess.reasons.append("test dir: none found (CV only: no submission is written)")
    if sample is not None and test_dir:
        guess.set("sample_submission", _rel(samples[0], root), f"{samples[0].name} ({len(sample)} rows)")
    id_column = str(sample.columns[0]) if sample is not None and test_dir else "fname"
    columns = len(sample.columns) if sample is not None and test_dir else 0
    ranked = sample.iloc[:, 1].str.split().str.len() if columns == 2 and sample is not None else None
    k = int(ranked.max()) if ranked is not None and ranked.max() > 1 else 1  # labels per row (MAP@3: 3)
    if multi or columns > 2:
        metric, reason = ("lwlrap", "multi-label: lwlrap") if multi else ("accuracy", "single label")
        submission: dict[str, Any] = {"kind": "scores"}
        why = "one score column per class" + (f" ({columns - 1} in the sample)" if columns > 2 else "")
    else:
        submission, why = {"kind": "top_k_labels", "k": k}, f"the {k} best label(s) of each clip"
        metric, reason = "accuracy", "single label (map3 with k: 3 for a MAP@3 leaderboard)"
        if k > 1:
            nearest = "" if k == 3 else f"; map3 is the nearest metric there is (no MAP@{k})"
            metric, reason = "map3", f"single label, {k} ranked labels per sample row{nearest}"
    guess.set("metric", metric, reason)
    if id_column != "fname":
        submission["id_column"] = id_column
    guess.set("submission", submission, why)


# --------------------------------------------------------------------------- kind: folders


def _class_parent(files: Files) -> tuple[str, list[str]] | None:
    """(folder, its sub-folders holding audio files directly) with the most such sub-folders."""
    children: dict[str, set[str]] = {}
    for rel in files.audio:
        parts = rel.split("/")
        if len(parts) >= 2:
            parent = "/".join(parts[:-2]) or "."
            children.setdefault(parent, set()).add(parts[-2])
    candidates = [
        (len([c for c in kids if c.lower() not in TEST_DIR_NAMES]), -parent.count("/"), parent, sorted(kids))
        for parent, kids in children.items()
        if parent.split("/")[0].lower() not in TEST_DIR_NAMES
    ]
    candidates = [c for c in candidates if c[0] >= 2]
    if not candidates:
        return None
    _, _, parent, kids = max(candidates)
    return parent, kids


def _list_file(files: Files, audio_dir: str, word: str) -> tuple[str, int] | None:
    """A ``*<word>*.txt`` whose lines are clips inside audio_dir: (its path, its number of clips)."""
    prefix = "" if audio_dir == "." else audio_dir + "/"
    known = set(files.audio)
    for path in _shallow(files.root, "*.txt", depth=1):
        if word not in path.name.lower():
            continue
        lines = [t.strip() for t in path.read_text(errors="replace").splitlines() if t.strip()]
        if lines and sum(prefix + t in known for t in lines) >= 0.9 * len(lines):
            return _rel(path, files.root), len(lines)
    return None


def guess_folders(files: Files, guess: Guess) -> None:
    found = _class_parent(files)
    if found is None:
        unread = "".join(f"\n  {line}" for line in files.unreadable[:5])
        raise DataError(
            f"{files.root}: no CSV naming audio files and no class folders (sub-folders of audio files) "
            "found; "
            + (f"CSV files that could not be read:{unread}\nfix them, or " if unread else "")
            + "write the YAML by hand (see README, 'Your own dataset')"
        )
    audio_dir, kids = found
    excluded = [k for k in kids if k.startswith("_")]
    test_like = [k for k in kids if k.lower() in TEST_DIR_NAMES]
    classes = [k for k in kids if k not in excluded and k not in test_like]
    guess.set("kind", "folders", f"{len(classes)} sub-folders of audio files under {audio_dir}/")
    guess.set(
        "audio_dir",
        audio_dir,
        f"{audio_dir} (class folders: {', '.join(classes[:8])}{' ...' if len(classes) > 8 else ''})",
    )
    if excluded:
        guess.set(
            "exclude", excluded, f"{excluded} (names starting with '_': no class, e.g. background noise)"
        )
    prefix = "" if audio_dir == "." else audio_dir + "/"
    clips = [a for a in files.audio if a.startswith(prefix) and a[len(prefix) :].split("/")[0] in classes]
    validation = _list_file(files, audio_dir, "valid")
    testing = _list_file(files, audio_dir, "test")
    if validation:
        guess.set(
            "validation_list",
            validation[0],
            f"{validation[0]} ({validation[1]} clips; cross-validated with the rest)",
        )
    if testing:
        guess.set("testing_list", testing[0], f"{testing[0]} ({testing[1]} clips: the test split, scored)")
    names = [PurePosixPath(c).name for c in clips]
    nohash = sum(bool(re.search(NOHASH, n)) for n in names)
    if names and nohash >= 0.9 * len(names):
        groups = {re.search(NOHASH, n).group(1) for n in names if re.search(NOHASH, n)}  # type: ignore[union-attr]
        guess.set(
            "group_pattern",
            NOHASH,
            f"{NOHASH} ({len(groups)} speakers over {len(names)} clips, Speech Commands file names)",
            "the part before _nohash_: one speaker, never in two folds",
        )
    test_dir = None if testing else _test_dir(files, set(clips))
    guess.reasons.append(
        f"classes: the {len(classes)} folder names, fixed in vocabulary.json at the first prepare"
    )
    guess_test_and_submission(files, guess, test_dir, multi=False, listed_test=bool(testing))


# --------------------------------------------------------------------------- entry points


def guess_competition(name: str, folder: Path) -> Guess:
    """The YAML keys for the data in ``folder`` (used in place), with their reasons."""
    folder = folder.expanduser().resolve()
    if not folder.is_dir():
        raise DataError(f"--from {folder}: no such folder")
    files = Files.scan(folder)
    if not files.audio:
        raise DataError(f"{folder}: no audio files ({', '.join(AUDIO_SUFFIXES)}) under it")
    guess = Guess()
    guess.set("name", name)
    guess.spec["kind"] = None  # keeps the key order: name, kind, data_dir, ...
    guess.set("data_dir", str(folder), f"{folder} ({len(files.audio)} audio files), used in place")
    candidates = _table_candidates(files)
    if candidates:
        guess_table(files, candidates, guess)
    else:
        guess_folders(files, guess)
    guess.spec.setdefault("n_folds", 5)
    return guess
