"""Submit a CSV to a Kaggle competition and keep a log of every submission.

``submit_file`` validates the file against the competition's sample submission (the same checks the
ensemble stage applies before it writes one), sends it through the ``kaggle`` package's API, and
appends one JSON line to ``submissions/log.jsonl``: time, competition, Kaggle slug, file, SHA-256, the
CV of the blend and its members (from the report ``<name>.json`` the ensemble stage wrote beside the
CSV), the message and Kaggle's reply. ``read_log`` reads it back for the leaderboard.

The ``kaggle`` package authenticates when it is imported and exits when it finds no credentials, so
it is imported only inside :func:`default_api`; :func:`authenticated_api` calls ``authenticate()``
and turns every failure into one :class:`KaggleError` line that says what to do. Credential values
never reach our output or the log: the client's own printing is discarded and every message we build
from its errors is passed through :func:`redact`.

``API_FACTORY`` builds the client; tests replace it with a fake, or point the real client at a local
HTTP server (``KAGGLE_API_ENVIRONMENT=LOCALHOST`` makes it call ``http://localhost``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from audiotag.errors import AudiotagError, ConfigError, DataError
from audiotag.paths import submissions_root

log = logging.getLogger(__name__)

LOG_NAME = "log.jsonl"
ApiFactory = Callable[[], Any]

TOKEN_HELP = (
    "create an API token at https://www.kaggle.com/settings (API -> Create New Token) and either set "
    "KAGGLE_API_TOKEN, or save the legacy kaggle.json as ~/.kaggle/kaggle.json (chmod 600), or set "
    "KAGGLE_USERNAME and KAGGLE_KEY"
)
UPLOAD_FAILED = "Could not submit to competition"  # the client's reply when the file upload failed


class KaggleError(AudiotagError):
    """The Kaggle API refused or failed; the message says why and what to do."""


class MissingCredentials(KaggleError):
    """No usable Kaggle credentials were found."""


class RulesNotAccepted(KaggleError):
    """HTTP 403: the account has not accepted the competition's rules."""


class SubmissionLimit(KaggleError):
    """The competition's daily submission limit is reached."""


class CompetitionNotFound(KaggleError):
    """HTTP 404: no such competition (or it is not open to this account)."""


# --------------------------------------------------------------------------- the client


def default_api() -> Any:
    """A new, unauthenticated ``KaggleApi``; the package is imported here, not at module import."""
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            from kaggle.api.kaggle_api_extended import KaggleApi
    except ImportError as exc:
        raise KaggleError(
            f"the Kaggle client is not installed ({exc.name or exc}); run ./run.sh once to install the "
            "pinned dependencies, or `pip install kaggle six`"
        ) from None
    except (Exception, SystemExit) as exc:  # older clients raise at import without credentials
        raise MissingCredentials(
            f"the Kaggle client failed to start ({type(exc).__name__}); {TOKEN_HELP}"
        ) from None
    return KaggleApi()


API_FACTORY: ApiFactory = default_api  # tests put a fake here


def credential_sources() -> list[str]:
    """Where Kaggle credentials are (variable and file names only, never values)."""
    found = [v for v in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY") if os.environ.get(v)]
    folder = Path(os.environ.get("KAGGLE_CONFIG_DIR") or Path.home() / ".kaggle")
    for name in ("kaggle.json", "access_token", "access_token.txt", "credentials.json"):
        if (folder / name).is_file():
            found.append(str(folder / name))
    return found


def secrets_of(api: Any = None) -> list[str]:
    """Credential values to scrub from any text we show or store."""
    values = [os.environ.get(v, "") for v in ("KAGGLE_KEY", "KAGGLE_API_TOKEN")]
    config = getattr(api, "config_values", None)
    if isinstance(config, dict):
        values += [str(config.get(k) or "") for k in ("key", "token")]
    return sorted({v for v in values if len(v) >= 4}, key=len, reverse=True)


def redact(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


@contextlib.contextmanager
def quiet_client() -> Iterator[None]:
    """Discard what the client prints (its help text, progress bars, verbose request dumps with the
    Authorization header) and keep its loggers below DEBUG while it runs."""
    loggers = [logging.getLogger(name) for name in ("kaggle", "kagglesdk", "urllib3")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def http_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if status is None:
        status = getattr(exc, "status", None)  # kaggle < 1.7: kaggle.rest.ApiException
    return status if isinstance(status, int) else None


def is_network_error(exc: BaseException) -> bool:
    if isinstance(exc, ConnectionError | TimeoutError | socket.gaierror):
        return True
    module = type(exc).__module__ or ""
    return module.startswith(("requests", "urllib3")) and http_status(exc) is None


def authenticated_api(factory: ApiFactory | None = None) -> Any:
    """A client that found credentials, or :class:`MissingCredentials` saying how to provide them."""
    api = (factory or API_FACTORY)()
    try:
        with quiet_client():
            api.authenticate()
    except (Exception, SystemExit) as exc:  # the client calls exit(1) when it finds no credentials
        secrets = secrets_of(api)
        status = http_status(exc)
        if is_network_error(exc):
            raise KaggleError(
                f"cannot reach Kaggle to check the credentials ({type(exc).__name__}); check the network"
            ) from None
        if status is not None and status != 401:
            raise KaggleError(
                redact(f"Kaggle answered HTTP {status} while signing in; try again", secrets)
            ) from None
        sources = credential_sources()
        if sources or status == 401:
            msg = f"Kaggle did not accept the credentials in {', '.join(sources) or '?'}; {TOKEN_HELP}"
        else:
            msg = f"no Kaggle credentials found; {TOKEN_HELP}"
        raise MissingCredentials(redact(msg, secrets)) from None
    return api


LIMIT_PATTERN = re.compile(r"daily|allowance|submission limit|too many submissions|limit reached", re.I)


def explain(exc: BaseException, slug: str, secrets: Sequence[str], doing: str = "submit to") -> KaggleError:
    """One clear error for a failed API call."""
    status = http_status(exc)
    detail = redact(str(exc).splitlines()[0] if str(exc) else "", secrets)[:300]
    page = f"https://www.kaggle.com/competitions/{slug}"
    if status == 401:
        return MissingCredentials(
            f"Kaggle rejected the credentials (HTTP 401) in {', '.join(credential_sources()) or '?'}: the "
            f"username/key or token is wrong or expired; {TOKEN_HELP}"
        )
    if status == 429 or (status in (400, 403, None) and LIMIT_PATTERN.search(detail)):
        return SubmissionLimit(
            f"Kaggle refused to {doing} {slug!r}: the daily submission limit is reached "
            f"({detail or 'HTTP 429'}); nothing was submitted or logged; submit again after the limit "
            "resets (00:00 UTC)"
        )
    if status == 403:
        return RulesNotAccepted(
            f"Kaggle refused to let you {doing} {slug!r} (HTTP 403): the competition's rules are not "
            f"accepted for this account; open {page}/rules, sign in with the account of your API token, "
            "accept the rules (or join the competition), and run again"
        )
    if status == 404:
        return CompetitionNotFound(
            f"Kaggle has no competition {slug!r} (HTTP 404); check -c/--slug: the slug is the part after "
            f"/competitions/ in the competition's address, e.g. {page}"
        )
    if status is not None and status >= 500:
        return KaggleError(
            f"Kaggle answered HTTP {status} for {slug!r}: a problem on Kaggle's side; try later"
        )
    if is_network_error(exc):
        return KaggleError(
            f"cannot reach Kaggle to {doing} {slug!r} ({type(exc).__name__}); check the network"
        )
    what = f"HTTP {status}" if status is not None else type(exc).__name__
    return KaggleError(f"Kaggle refused to {doing} {slug!r} ({what}: {detail})")


# --------------------------------------------------------------------------- the log


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one line atomically: one ``write`` with O_APPEND under an exclusive lock, then fsync.

    A torn last line left by a crash is closed first, so it can never swallow this record."""
    line = (json.dumps(record, sort_keys=True, ensure_ascii=False, default=str) + "\n").encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        view = memoryview(line)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)  # closing releases the lock


def log_path() -> Path:
    return submissions_root() / LOG_NAME


def read_log(path: Path | None = None) -> list[dict[str, Any]]:
    """Every logged submission, oldest first; a torn last line (a crash mid-write) is skipped."""
    path = path or log_path()
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s: line %d is not valid JSON; skipped", path, number)
    return records


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


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    return report if isinstance(report, dict) else None


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
    from audiotag.submission import validate_submission

    try:
        sub = pd.read_csv(path, dtype={"fname": str}, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: not a readable CSV ({exc}); nothing was submitted") from None
    if "fname" not in sub.columns:
        raise DataError(f"{path}: no fname column; nothing was submitted")
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


def submit_file(
    path: Path,
    message: str,
    competition: str | None = None,
    slug: str | None = None,
    factory: ApiFactory | None = None,
    log_file: Path | None = None,
) -> SubmissionRecord:
    """Validate ``path``, submit it to Kaggle with ``message``, log it, and return the log record."""
    from audiotag.competitions import get_competition
    from audiotag.config import load_competition

    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{path}: no such file; the ensemble stage writes submissions/<competition>/<name>.csv"
        )
    if not message.strip():
        raise ConfigError("-m MESSAGE: give the submission a description (Kaggle shows it beside the score)")
    report = read_report(path)
    name = competition or infer_competition(path, report)
    comp = get_competition(load_competition(name))
    if report and report.get("competition") not in (None, comp.name):
        raise ConfigError(f"{path}: its report says competition {report['competition']!r}, not {comp.name!r}")
    validate_file(comp, path)
    slug = slug or kaggle_slug(comp)
    if slug is None:
        raise ConfigError(
            f"competition {comp.name!r} has no Kaggle slug; pass --slug SLUG to submit it to Kaggle"
        )
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
    api = authenticated_api(factory)
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
    append_jsonl(log_file or log_path(), asdict(record))
    return record


# --------------------------------------------------------------------------- reading scores back


@dataclass
class KaggleScore:
    ref: str
    file_name: str
    description: str
    date: str
    status: str
    public: float | None
    private: float | None


def as_score(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if out == out else None  # NaN -> None


def fetch_scores(slug: str, factory: ApiFactory | None = None) -> list[KaggleScore]:
    """This account's submissions to ``slug`` with their public and private scores."""
    api = authenticated_api(factory)
    secrets = secrets_of(api)
    try:
        with quiet_client():
            items = api.competition_submissions(slug, page_size=100) or []
    except (Exception, SystemExit) as exc:
        raise explain(exc, slug, secrets, doing="list the submissions of") from None

    def get(item: Any, key: str) -> Any:
        return item.get(key) if isinstance(item, dict) else getattr(item, key, None)

    scores = []
    for item in items:
        if item is None:
            continue
        status = get(item, "status")
        scores.append(
            KaggleScore(
                ref=str(get(item, "ref") or ""),
                file_name=str(get(item, "file_name") or ""),
                description=str(get(item, "description") or ""),
                date=str(get(item, "date") or ""),
                status=str(getattr(status, "name", status) or ""),
                public=as_score(get(item, "public_score")),
                private=as_score(get(item, "private_score")),
            )
        )
    return scores
