"""Submission CSVs in each competition's exact format, validated against the sample submission
before anything is written; the file appears whole or not at all.

The ensemble stage writes two files that belong together, ``<name>.csv`` and its report
``<name>.json``. They cannot be renamed into place as one, so the report records the SHA-256 of the
CSV it describes (``submission_sha256``) and is written *first*: a run killed between the two renames
leaves a new report beside the old CSV, and every reader (the leaderboard, ``submit``'s log, ``package``)
checks the pair with :func:`report_mismatch` and does not use a report that does not describe the CSV
beside it. Reports from before the hash was recorded are used unchecked.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from audiotag.competitions import Competition
from audiotag.core.atomic import atomic_write_bytes
from audiotag.core.errors import DataError
from audiotag.scoring.metrics import top_k

log = logging.getLogger(__name__)


def id_column(comp: Competition) -> str:
    """The id column of the competition's sample submission (``fname`` unless a table sets another)."""
    return getattr(comp, "id_column", "fname")


def read_sample(comp: Competition) -> pd.DataFrame:
    path = comp.sample_submission_path
    if not path.is_file():
        raise DataError(f"{path}: sample submission not found; run `./run.sh prepare` first")
    key = id_column(comp)
    sample = pd.read_csv(path, dtype={key: str}, keep_default_na=False)
    if key not in sample.columns:
        raise DataError(
            f"{path}: no id column {key!r} (columns {list(sample.columns)[:5]}); name the sample's id column "
            "in competition.submission.id_column"
        )
    return sample


def class_columns(comp: Competition, sample: pd.DataFrame) -> list[str]:
    """The sample's score columns in its order; refused, naming the missing and the extra ones, unless
    they are the vocabulary (as a set)."""
    columns = [c for c in sample.columns if c != id_column(comp)]
    missing = [c for c in comp.classes if c not in columns]
    extra = [c for c in columns if c not in set(comp.classes)]
    if missing or extra:
        raise DataError(
            f"{comp.sample_submission_path}: the class columns differ from the {len(comp.classes)} "
            f"classes of the vocabulary: missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, extra "
            f"{extra[:5]}{' ...' if len(extra) > 5 else ''}"
        )
    return columns


def build_submission(comp: Competition, clip_ids: Sequence[str], scores: np.ndarray) -> pd.DataFrame:
    """Rows in the sample submission's order; top-k labels (``comp.label_count``, 3 unless a table
    competition says) in the sample's label column, or the scores in the sample's columns and order
    (``scores`` and ``sample_columns``)."""
    sample = read_sample(comp)
    key = id_column(comp)
    position = {c: i for i, c in enumerate(clip_ids)}
    missing = [f for f in sample[key] if f not in position]
    if missing:
        raise DataError(
            f"{len(missing)} clip(s) of the sample submission have no prediction (e.g. {missing[:3]}); "
            "re-run train so every fold predicts the test set"
        )
    ordered = scores[[position[f] for f in sample[key]]]
    classes = np.asarray(comp.classes)
    if comp.submission_kind == "top_k_labels":
        labels = [" ".join(row) for row in classes[top_k(ordered, comp.label_count)]]
        others = [c for c in sample.columns if c != key]
        label = others[0] if len(others) == 1 else "label"
        return pd.DataFrame({key: sample[key], label: labels})
    index = {c: i for i, c in enumerate(comp.classes)}
    columns = class_columns(comp, sample)
    table = pd.DataFrame(ordered[:, [index[c] for c in columns]], columns=columns)
    table.insert(list(sample.columns).index(key), key, sample[key].to_numpy())
    return table


def id_differences(ids: Sequence[str], sample_ids: Sequence[str]) -> str | None:
    """How the submission's ids differ from the sample's, in counts (None when they are the same, in
    the same order)."""
    if list(ids) == list(sample_ids):
        return None
    have, want = set(ids), set(sample_ids)
    missing = [i for i in sample_ids if i not in have]
    extra = [i for i in ids if i not in want]
    repeated = len(ids) - len(have)
    counts = f"the submission has {len(ids)} rows, the sample submission {len(sample_ids)}"
    if not missing and not extra and not repeated:
        row = next(r for r, (a, b) in enumerate(zip(ids, sample_ids, strict=True)) if a != b)
        return (
            f"submission ids are the sample's but their order differs ({counts}): row {row + 1} is "
            f"{ids[row]!r}, the sample's {sample_ids[row]!r}"
        )
    parts = [f"{len(missing)} sample id(s) missing (e.g. {missing[:3]})"] if missing else []
    parts += [f"{len(extra)} id(s) not in the sample (e.g. {extra[:3]})"] if extra else []
    parts += [f"{repeated} repeated id(s)"] if repeated else []
    return f"submission ids differ from the sample submission's: {counts}; {', '.join(parts)}"


def validate_submission(comp: Competition, sub: pd.DataFrame) -> None:
    """Refuse a submission whose ids, order, columns or values do not match the sample's."""
    sample = read_sample(comp)
    key = id_column(comp)
    if list(sub.columns) != list(sample.columns):
        raise DataError(
            f"submission columns {list(sub.columns)[:5]}... differ from the sample's "
            f"{list(sample.columns)[:5]}..."
        )
    if problem := id_differences(list(sub[key]), list(sample[key])):
        raise DataError(problem)
    if comp.submission_kind == "top_k_labels":
        vocabulary = set(comp.classes)
        labels = sub.drop(columns=key)
        if labels.shape[1] != 1:
            raise DataError(f"a top-k submission has one label column beside {key}; got {list(labels)}")
        for row, text in enumerate(labels.iloc[:, 0]):
            names = str(text).split(" ")
            if (
                not 1 <= len(names) <= comp.label_count
                or len(set(names)) != len(names)
                or not set(names) <= vocabulary
            ):
                raise DataError(f"submission row {row + 1} ({sub[key].iloc[row]}): bad labels {text!r}")
        return
    values = sub.drop(columns=key).to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        raise DataError("submission holds NaN or infinite scores")
    if values.min() < 0 or values.max() > 1:
        raise DataError(f"submission scores outside [0, 1]: min {values.min()}, max {values.max()}")


def submission_bytes(comp: Competition, sub: pd.DataFrame) -> bytes:
    """The CSV file's bytes, after validating ``sub`` against the sample."""
    validate_submission(comp, sub)
    return sub.to_csv(index=False, float_format="%.6f").encode("utf-8")


def write_submission(comp: Competition, sub: pd.DataFrame, path: Path) -> Path:
    write_submission_bytes(path, submission_bytes(comp, sub), len(sub))
    return path


def write_submission_bytes(path: Path, data: bytes, rows: int) -> None:
    atomic_write_bytes(path, data)
    log.info("submission: wrote %s (%d rows)", path, rows)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def report_mismatch(csv_path: Path, report: dict) -> str | None:
    """Why the ensemble report ``report`` does not describe the submission CSV at ``csv_path`` (None when
    it does, or when the report predates ``submission_sha256`` and cannot tell)."""
    expected = report.get("submission_sha256")
    if not expected:
        return None
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        return f"{csv_path}, the submission its report describes, is missing"
    if sha256_hex(csv_path.read_bytes()) != expected:
        return (
            f"{csv_path} is not the submission its report {csv_path.with_suffix('.json')} describes "
            "(SHA-256 differs: the ensemble run that wrote them was interrupted between the two files, "
            "or one was changed)"
        )
    return None


def check_report(csv_path: Path, report: dict) -> None:
    """:func:`report_mismatch` as a :class:`DataError` that says to run the ensemble again."""
    problem = report_mismatch(csv_path, report)
    if problem:
        raise DataError(f"{problem}; run ./run.sh ensemble again to write both")
