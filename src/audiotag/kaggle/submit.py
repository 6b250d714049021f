"""Submit a CSV to a Kaggle competition and keep a log of every submission.

``check_submission`` (all that ``submit --dry-run`` does) checks the file against the competition's
sample submission (the same checks the ensemble stage applies before it writes one); ``submit_file``
then refuses a kernels-only competition (``kernels_only`` in its config: Kaggle takes only notebooks),
sends the file through the ``kaggle`` package's API, and appends one JSON line to
``submissions/log.jsonl``: time, competition, Kaggle slug, file, SHA-256, the CV of the blend and its
members (from the report ``<name>.json`` the ensemble stage wrote beside the CSV), the message and
Kaggle's reply. ``audiotag.core.jsonl.read_jsonl`` reads it back for the leaderboard.

The client (``audiotag.fetch.kaggle.KAGGLE_API_FACTORY``, which tests replace with a fake) is built,
signed in and its failures explained by :mod:`audiotag.fetch.kaggle`; the daily submission limit is
recognised here (:func:`explain`). Credential values never reach our output or the log: the client's
own printing is discarded and every message built from its errors and replies is redacted.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from audiotag.competitions.submission import report_mismatch
from audiotag.core.digests import file_sha256
from audiotag.core.errors import ConfigError, DataError
from audiotag.core.jsonl import append_jsonl
from audiotag.core.paths import submission_log
from audiotag.fetch import kaggle as kaggle_client
from audiotag.fetch.kaggle import (
    KaggleError,
    error_detail,
    http_status,
    quiet_client,
    redact,
    secrets_of,
)

log = logging.getLogger(__name__)

UPLOAD_FAILED = "Could not submit to competition"  # the client's reply when the file upload failed
LIMIT_PATTERN = re.compile(r"daily|allowance|submission limit|too many submissions|limit reached", re.I)


class SubmissionLimit(KaggleError):
    """The competition's daily submission limit is reached."""


def explain(exc: BaseException, slug: str, secrets: Sequence[str], doing: str = "submit to") -> KaggleError:
    """One clear error for a failed API call: the daily submission limit here, the rest in
    :func:`audiotag.fetch.kaggle.explain`."""
    status = http_status(exc)
    detail = error_detail(exc, secrets)
    submitting = doing == "submit to"  # reading the submission list is rate-limited, not capped daily
    if submitting and (status == 429 or (status in (400, 403, None) and LIMIT_PATTERN.search(detail))):
        return SubmissionLimit(
            f"Kaggle refused to {doing} {slug!r}: the daily submission limit is reached "
            f"({detail or 'HTTP 429'}); nothing was submitted or logged; submit again after the limit "
            "resets (00:00 UTC)"
        )
    return kaggle_client.explain(exc, slug, secrets, doing=doing, slug_from="-c/--slug")


# --------------------------------------------------------------------------- submitting


@dataclass
class SubmissionRecord:
    time: str
    competition: str
    slug: str
    file: str
    sha256: str
    message: str
    metric: str | None = None
    cv: float | None = None
    cv_std: float | None = None
    members: list[str] = field(default_factory=list)
    ensemble: str | None = None
    reply: str = ""
    ref: str | None = None


def read_report(csv_path: Path) -> dict[str, Any] | None:
    """The ensemble report written beside a submission CSV (``<name>.json``), if there is one."""
    path = csv_path.with_suffix(".json")
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        log.warning("%s: unreadable report; the submission is logged without its CV", path)
        return None
    if not isinstance(report, dict):
        return None
    if problem := report_mismatch(csv_path, report):  # an ensemble run killed between its two files
        log.warning("%s; the submission is logged without its CV", problem)
        return None
    return report


def infer_competition(path: Path, report: dict[str, Any] | None) -> str:
    if report and isinstance(report.get("competition"), str):
        return report["competition"]
    from audiotag.competitions import competition_names

    if path.resolve().parent.name in competition_names():
        return path.resolve().parent.name
    raise ConfigError(f"{path}: cannot tell which competition it is for; pass -c COMPETITION")


def kaggle_slug(comp: Any) -> str | None:
    """The competition's Kaggle slug: a ``kaggle_slug`` attribute, or its module's ``KAGGLE_SLUG``."""
    slug = getattr(comp, "kaggle_slug", None)
    if slug is None:
        slug = getattr(sys.modules.get(type(comp).__module__), "KAGGLE_SLUG", None)
    return slug if isinstance(slug, str) and slug else None


def validate_file(comp: Any, path: Path) -> pd.DataFrame:
    """Read ``path`` and run the submission checks on it; a bad file is refused before any upload."""
    from audiotag.competitions.submission import id_column, validate_submission

    key = id_column(comp)
    try:
        sub = pd.read_csv(path, dtype={key: str}, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: not a readable CSV ({exc}); nothing was submitted") from None
    if key not in sub.columns:
        raise DataError(f"{path}: no {key} column; nothing was submitted")
    try:
        validate_submission(comp, sub)
    except DataError as exc:
        raise DataError(
            f"{path}: refused, it does not match the {comp.name} sample submission: {exc}; "
            "nothing was submitted"
        ) from None
    return sub


def reply_fields(reply: Any) -> tuple[str, str | None]:
    """(message, ref) of the client's reply (an ApiCreateSubmissionResponse, a dict or a string)."""
    if isinstance(reply, dict):
        message, ref = reply.get("message"), reply.get("ref")
    elif isinstance(reply, str):
        message, ref = reply, None
    else:
        message, ref = getattr(reply, "message", None), getattr(reply, "ref", None)
    return str(message or ""), (str(ref) if ref not in (None, "", 0) else None)


@dataclass
class CheckedSubmission:
    """A submission file that matches its competition's sample submission, and where it would go."""

    path: Path
    comp: Any
    slug: str | None
    report: dict[str, Any] | None
    rows: int


def check_submission(
    path: Path, competition: str | None = None, slug: str | None = None, overrides: Sequence[str] = ()
) -> CheckedSubmission:
    """Read ``path`` and check it against the competition's sample submission (what ``submit`` and
    ``submit --dry-run`` do before anything is sent); the slug is ``slug`` or the competition's own.

    ``overrides`` change the competition config (``data_dir=PATH`` for a competition whose files are
    used in place: its own sample submission is then the one the file is checked against)."""
    from audiotag.competitions import get_competition
    from audiotag.config.schema import load_competition

    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{path}: no such file; the ensemble stage writes submissions/<competition>/<name>.csv"
        )
    report = read_report(path)
    name = competition or infer_competition(path, report)
    comp = get_competition(load_competition(name, list(overrides)))
    if report and report.get("competition") not in (None, comp.name):
        raise ConfigError(f"{path}: its report says competition {report['competition']!r}, not {comp.name!r}")
    sample = comp.sample_submission_path
    if not sample.is_file():
        used_in_place = getattr(comp, "data_dir", None) is not None
        raise DataError(
            f"{sample}: the {comp.name} sample submission, needed to check {path}, is not there; "
            + (
                "--data-dir must be the folder that holds the competition's sample_submission.csv"
                if used_in_place
                else "if the data was prepared in place, pass the same --data-dir PATH to submit; "
                "else run `./run.sh prepare` first"
            )
            + "; nothing was submitted"
        )
    rows = len(validate_file(comp, path))
    return CheckedSubmission(path, comp, slug or kaggle_slug(comp), report, rows)


def kernels_only_note(checked: CheckedSubmission) -> str | None:
    """Why Kaggle will not take ``checked`` as a file: its competition is kernels-only (``kernels_only``
    in the competition config) and the slug is the competition's own (any, where it has none)."""
    comp, own = checked.comp, kaggle_slug(checked.comp)
    if not getattr(comp.cfg, "kernels_only", False) or (own is not None and checked.slug != own):
        return None
    return (
        f"{comp.name} ({checked.slug}) is a kernels-only competition: Kaggle takes its submissions only "
        "from a notebook run on Kaggle, not as an uploaded CSV. Build the kernel bundle with `./run.sh "
        f"package OUT -c {comp.name} --kaggle-id USER/DATASET`, then follow OUT/README.md (`kaggle "
        "datasets create -p OUT --dir-mode zip`, `kaggle kernels push -p OUT`)"
    )


def submit_file(
    path: Path,
    message: str | None,
    competition: str | None = None,
    slug: str | None = None,
    overrides: Sequence[str] = (),
) -> SubmissionRecord:
    """Validate ``path`` (:func:`check_submission`), submit it to Kaggle with ``message``, log it, and
    return the log record."""
    if not (message or "").strip():
        raise ConfigError("-m MESSAGE: give the submission a description (Kaggle shows it beside the score)")
    assert message is not None
    checked = check_submission(path, competition, slug, overrides)
    path, comp, report, slug = checked.path, checked.comp, checked.report, checked.slug
    if slug is None:
        raise ConfigError(
            f"competition {comp.name!r} has no Kaggle slug; pass --slug SLUG to submit it to Kaggle"
        )
    if note := kernels_only_note(checked):
        raise ConfigError(f"{note}; nothing was submitted")
    blend = (report or {}).get("cv") or (report or {}).get("blend") or {}  # what was submitted
    record = SubmissionRecord(
        time=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        competition=comp.name,
        slug=slug,
        file=str(path.resolve()),
        sha256=file_sha256(path),
        message=message,
        metric=(report or {}).get("metric"),
        cv=blend.get("mean"),
        cv_std=blend.get("std"),
        members=sorted((report or {}).get("members") or {}),
        ensemble=(report or {}).get("name"),
    )
    api = kaggle_client.authenticated_api(
        kaggle_client.KAGGLE_API_FACTORY,
        purpose=f"submitting {path} to {slug}",
        alternative=f"the file matches the sample submission ({checked.rows} rows); submit it later",
    )
    secrets = secrets_of(api)
    log.info("submitting %s (sha256 %s…) to Kaggle competition %s", path, record.sha256[:12], slug)
    try:
        with quiet_client():
            reply = api.competition_submit(str(path), message, slug, quiet=True)
    except (Exception, SystemExit) as exc:
        raise explain(exc, slug, secrets) from None
    text, ref = reply_fields(reply)
    text = redact(text, secrets)
    if ref is None and LIMIT_PATTERN.search(text):
        raise explain(RuntimeError(text), slug, secrets)
    if text.startswith(UPLOAD_FAILED):
        raise KaggleError(f"the upload of {path} to Kaggle failed ({text}); nothing was logged; run again")
    record.reply, record.ref = text, ref
    append_jsonl(submission_log(), asdict(record))
    return record
