"""Kaggle: the ``kaggle`` package's API client (shared with ``audiotag submit``), and
:func:`kaggle_download`, which fetches a competition's archive with it, checks it and extracts it
(:func:`audiotag.fetch.extract.extract_zip`); its failures are raised as :class:`DataError`.

The ``kaggle`` package authenticates when it is imported, prints its own help and, in older versions,
exits when it finds no credentials, so it is imported only inside :func:`client_class`, with its
output discarded. :func:`authenticated_api` builds a client and signs in; :func:`explain` turns a
failed call into one :class:`KaggleError` line that says what to do: missing or wrong credentials
(which file or variables, ``chmod 600``), rules not accepted (403, with the competition's rules page),
no such competition (404), rate limits (429), Kaggle's own failures (5xx) and the network.

Signing in asks the network gate (:mod:`audiotag.fetch.network`) first, and warns (``chmod 600``)
about a ``kaggle.json`` other users can read. Credential values never reach our output: the client's
own printing is discarded while it runs (:func:`quiet_client`) and every message built here is
passed through :func:`redact`, which removes the key and the access token, the base64 of
``username:key`` and any ``Basic``/``Bearer`` header value (a server's error may echo the request's
``Authorization`` header).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import os
import re
import shutil
import socket
import sys
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audiotag.core.atomic import fsync_dir, read_json_object
from audiotag.core.errors import AudiotagError, DataError
from audiotag.core.paths import check_name
from audiotag.fetch.extract import extract_zip
from audiotag.fetch.http import human_size, locked
from audiotag.fetch.network import require_network

log = logging.getLogger(__name__)

ApiFactory = Callable[[], Any]

TOKEN_HELP = (
    "create an API token at https://www.kaggle.com/settings (API -> Create New Token) and either set "
    "KAGGLE_API_TOKEN, or save the legacy kaggle.json as ~/.kaggle/kaggle.json "
    "(chmod 600 ~/.kaggle/kaggle.json), or set KAGGLE_USERNAME and KAGGLE_KEY"
)


class KaggleError(AudiotagError):
    """The Kaggle API refused or failed; the message says why and what to do."""


class MissingCredentials(KaggleError):
    """No usable Kaggle credentials were found, or Kaggle rejected them (HTTP 401)."""


class RulesNotAccepted(KaggleError):
    """HTTP 403: the account has not accepted the competition's rules."""


class CompetitionNotFound(KaggleError):
    """HTTP 404: no such competition (or it is not open to this account)."""


# --------------------------------------------------------------------------- the client


def client_class() -> type:
    """The ``KaggleApi`` class, imported here (not at module import) with the package's output discarded."""
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            from kaggle.api.kaggle_api_extended import KaggleApi
    except ImportError as exc:
        raise KaggleError(
            f"the Kaggle client is not installed ({exc.name or exc}); run ./run.sh once to install the "
            "pinned dependencies, or `pip install kaggle six`"
        ) from None
    except (Exception, SystemExit) as exc:  # kaggle < 2 raises at import when it finds no credentials
        raise MissingCredentials(
            f"the Kaggle client failed to start ({type(exc).__name__}); {TOKEN_HELP}"
        ) from None
    return KaggleApi


def default_api() -> Any:
    """A new, unauthenticated ``KaggleApi``."""
    return client_class()()


def credential_sources() -> list[str]:
    """Where Kaggle credentials are (variable and file names only, never values)."""
    found = [v for v in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY") if os.environ.get(v)]
    folder = config_dir()
    for name in ("kaggle.json", "access_token", "access_token.txt", "credentials.json"):
        if (folder / name).is_file():
            found.append(str(folder / name))
    return found


def config_dir() -> Path:
    return Path(os.environ.get("KAGGLE_CONFIG_DIR") or Path.home() / ".kaggle")


def kaggle_username() -> str | None:
    """The Kaggle username of the credentials, read locally (``KAGGLE_USERNAME``, else ``kaggle.json``);
    None when neither names one (an access token names it only when Kaggle is asked)."""
    legacy = read_json_object(config_dir() / "kaggle.json") or {}  # None: missing or unreadable
    return os.environ.get("KAGGLE_USERNAME") or (str(legacy["username"]) if legacy.get("username") else None)


def _file_token(path: Path) -> str:
    """An access-token file's contents (small files only), for scrubbing."""
    with contextlib.suppress(OSError, UnicodeDecodeError):
        if path.is_file() and path.stat().st_size < 10_000:
            return path.read_text().strip()
    return ""


def secrets_of(api: Any = None) -> list[str]:
    """Credential values to scrub from any text we show or store, longest first: the key and the
    access token (from the variables, the client's config and the token files), and the base64 of
    ``username:key`` that an ``Authorization: Basic`` header carries (see also :func:`redact`)."""
    users = [os.environ.get("KAGGLE_USERNAME", "")]
    keys = [os.environ.get(v, "") for v in ("KAGGLE_KEY", "KAGGLE_API_TOKEN")]
    config = getattr(api, "config_values", None)
    if isinstance(config, dict):
        keys += [str(config.get(k) or "") for k in ("key", "token")]
        users.append(str(config.get("username") or ""))
    folder = config_dir()
    keys += [_file_token(folder / name) for name in ("access_token", "access_token.txt")]
    with contextlib.suppress(OSError, ValueError, UnicodeDecodeError):
        legacy = json.loads((folder / "kaggle.json").read_text())
        if isinstance(legacy, dict):
            keys.append(str(legacy.get("key") or ""))
            users.append(str(legacy.get("username") or ""))
    keys = [k for k in keys if len(k) >= 4]
    values = set(keys)
    for user in {u for u in users if u}:
        for key in keys:
            pair = f"{user}:{key}".encode()
            values.add(base64.b64encode(pair).decode())
            values.add(base64.urlsafe_b64encode(pair).decode())
    for key in keys:
        values.add(base64.b64encode(key.encode()).decode())
    return sorted(values, key=len, reverse=True)


# the value of an Authorization (or Proxy-Authorization) header in any echo of a request, whoever's
AUTH_VALUE = re.compile(r"\b(Basic|Bearer|BASIC|BEARER|basic|bearer)(\s+|%20|\+)[A-Za-z0-9+/=._~%-]{8,}")


def redact(text: str, secrets: Sequence[str]) -> str:
    """``text`` without credentials: each value in ``secrets``, and any ``Basic``/``Bearer`` header value."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return AUTH_VALUE.sub(lambda m: f"{m.group(1)} ***", text)


def kaggle_json_problem() -> str | None:
    """What is wrong with ``kaggle.json`` when the client ignores it (it skips a file it cannot read
    silently): not JSON, not an object, or no username/key (that the variables do not supply either).
    Never quotes the file's values."""
    path = config_dir() / "kaggle.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except UnicodeDecodeError:
        return f"{path} is not a text file"
    except json.JSONDecodeError as exc:  # its message gives the position only, never the text
        return f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
    except OSError as exc:
        return f"{path} cannot be read ({exc.strerror or type(exc).__name__})"
    if not isinstance(data, dict):
        return f'{path} does not hold a JSON object like {{"username": "...", "key": "..."}}'
    env = {"username": "KAGGLE_USERNAME", "key": "KAGGLE_KEY"}
    missing = [k for k in ("username", "key") if not data.get(k) and not os.environ.get(env[k])]
    if missing:
        names = " and ".join(repr(k) for k in missing)
        return f'{path} has no {names} (it must hold {{"username": "...", "key": "..."}})'
    return None


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


def error_detail(exc: BaseException, secrets: Sequence[str]) -> str:
    """The first line of the client's message, redacted and cut to 300 characters."""
    return redact(str(exc).splitlines()[0] if str(exc) else "", secrets)[:300]


def _also(alternative: str, joint: str = "; or ") -> str:
    """``alternative`` ("download the data by hand from ...") as the end of a message, or nothing."""
    return f"{joint}{alternative}" if alternative else ""


# --------------------------------------------------------------------------- signing in and errors


def warn_readable_kaggle_json() -> None:
    """Warn, naming ``chmod 600``, when ``kaggle.json`` can be read by other users (the client's own
    warning is printed while its output is discarded)."""
    path = config_dir() / "kaggle.json"
    with contextlib.suppress(OSError):
        mode = path.stat().st_mode
        if os.name != "nt" and path.is_file() and mode & 0o077:
            log.warning(
                "%s can be read by other users of this machine (mode %s): your Kaggle key is exposed; "
                "run `chmod 600 %s`",
                path,
                oct(mode & 0o777),
                path,
            )


def _checked_with_kaggle(sources: Sequence[str]) -> list[str]:
    """The sources among ``sources`` the client checks by sending them to Kaggle (access tokens and
    OAuth credentials are looked up there; a legacy username/key is not)."""
    sent = ("KAGGLE_API_TOKEN", "access_token", "access_token.txt", "credentials.json")
    return [source for source in sources if Path(source).name in sent]


def authenticated_api(
    factory: ApiFactory | None = None, *, alternative: str = "", purpose: str = "using the Kaggle API"
) -> Any:
    """A client from ``factory`` (default :func:`default_api`) that found credentials, or a
    :class:`KaggleError` (:class:`MissingCredentials` when there are none) saying how to provide them.

    ``purpose`` ("submitting x to y") is what the network gate names when offline mode is on (then
    nothing is imported or sent). ``alternative`` (what else to do, e.g. "download the data by hand
    from ...") is added where Kaggle cannot be used at all: offline, the client is missing or the
    network is down."""
    require_network(f"{purpose} (the Kaggle API)", alternative)
    warn_readable_kaggle_json()
    try:
        api = (factory or default_api)()
    except KaggleError as exc:  # the client is not installed or failed to start
        raise type(exc)(f"{exc}{_also(alternative)}") from None
    try:
        with quiet_client():
            api.authenticate()
    except (Exception, SystemExit) as exc:  # the client calls exit(1) when it finds no credentials
        status = http_status(exc)
        sources = credential_sources()
        error: type[KaggleError] = KaggleError
        if is_network_error(exc):
            msg = (
                f"cannot reach Kaggle to check the credentials ({type(exc).__name__}); check the network "
                f"or proxy{_also(alternative, ', or ')}"
            )
        elif status is not None and status != 401:
            msg = f"Kaggle answered HTTP {status} while signing in; try again"
        elif status == 401:
            error = MissingCredentials
            msg = f"Kaggle did not accept the credentials in {', '.join(sources) or '?'}; {TOKEN_HELP}"
        elif problem := kaggle_json_problem():
            error = MissingCredentials
            msg = f"{problem}; nothing was sent to Kaggle. Fix the file, or {TOKEN_HELP}"
        elif sent := _checked_with_kaggle(sources):
            error = MissingCredentials
            msg = (
                f"Kaggle did not accept the access token in {', '.join(sent)}: it was sent to Kaggle to be "
                f"checked and is invalid, expired or revoked; {TOKEN_HELP}"
            )
        elif sources:
            error = MissingCredentials
            msg = (
                f"the Kaggle client found no usable credentials in {', '.join(sources)} (nothing was sent "
                f"to Kaggle); {TOKEN_HELP}"
            )
        else:
            error = MissingCredentials
            msg = f"no Kaggle credentials found; {TOKEN_HELP}"
        raise error(redact(msg, secrets_of(api))) from None
    return api


def explain(
    exc: BaseException,
    slug: str,
    secrets: Sequence[str],
    *,
    doing: str,
    slug_from: str,
    alternative: str = "",
) -> KaggleError:
    """One clear, redacted error for a failed API call.

    ``doing`` completes "cannot reach Kaggle to ..." (e.g. "submit to", "download the data of");
    ``slug_from`` says where the slug came from (e.g. "-c/--slug"); ``alternative`` is added to the
    errors no retry on Kaggle will fix (the network, an unexpected failure)."""
    status = http_status(exc)
    page = f"https://www.kaggle.com/competitions/{slug}"
    error: type[KaggleError] = KaggleError
    if status == 401:
        error = MissingCredentials
        msg = (
            f"Kaggle rejected the credentials (HTTP 401) in {', '.join(credential_sources()) or '?'}: the "
            f"username/key or token is wrong or expired; {TOKEN_HELP}"
        )
    elif status == 403:
        error = RulesNotAccepted
        msg = (
            f"Kaggle refused to let you {doing} {slug!r} (HTTP 403): the competition's rules are not "
            f"accepted for this account; open {page}/rules, sign in with the account of your API token, "
            "accept the rules (or join the competition), and run again"
        )
    elif status == 404:
        error = CompetitionNotFound
        msg = (
            f"Kaggle has no competition {slug!r} (HTTP 404); check {slug_from}: the slug is the part after "
            f"/competitions/ in the competition's address, e.g. {page}"
        )
    elif status == 429:
        msg = (
            f"Kaggle is rate-limiting this account (HTTP 429) while you {doing} {slug!r}; wait and run again"
        )
    elif status is not None and status >= 500:
        msg = f"Kaggle answered HTTP {status} for {slug!r}: a problem on Kaggle's side; try again later"
    elif is_network_error(exc):
        msg = (
            f"cannot reach Kaggle to {doing} {slug!r} ({type(exc).__name__}); check the network or proxy"
            f"{_also(alternative, ', or ')}"
        )
    else:
        what = f"HTTP {status}" if status is not None else type(exc).__name__
        detail = error_detail(exc, secrets)
        msg = f"could not {doing} Kaggle competition {slug!r} ({what}: {detail}){_also(alternative, '; ')}"
    return error(redact(msg, secrets))


# --------------------------------------------------------------------------- reading scores back


@dataclass
class KaggleScore:
    ref: str
    file_name: str
    description: str
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
    api = authenticated_api(factory or KAGGLE_API_FACTORY, purpose=f"reading the scores of {slug}")
    secrets = secrets_of(api)
    try:
        with quiet_client():
            items = api.competition_submissions(slug, page_size=100) or []
    except (Exception, SystemExit) as exc:
        raise explain(exc, slug, secrets, doing="list the submissions of", slug_from="-c/--slug") from None

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
                status=str(getattr(status, "name", status) or ""),
                public=as_score(get(item, "public_score")),
                private=as_score(get(item, "private_score")),
            )
        )
    return scores


# --------------------------------------------------------------------------- the competition download

KAGGLE_API_FACTORY: ApiFactory = default_api  # tests put a fake here


def kaggle_download(slug: str, dest_dir: Path, *, api_factory: ApiFactory | None = None) -> Path:
    """Download a competition's data with the Kaggle API into ``dest_dir``, extract it there, and return
    ``dest_dir``.

    The archive is fetched into a hidden staging folder (where the client keeps its own resume state),
    checked to be a readable zip, renamed to ``dest_dir/<slug>.zip`` and extracted with
    :func:`extract_zip`. An archive already in place is not downloaded again. Failures are
    :func:`explain`'s. ``api_factory`` builds the client (default: the official ``KaggleApi``).
    """
    check_name(slug, "Kaggle competition slug")
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    archive = dest_dir / f"{slug}.zip"
    with locked(dest_dir / f".{slug}.kaggle.lock", f"waiting for another download of {slug}"):
        if archive.is_file() and zipfile.is_zipfile(archive):
            log.info("%s is already downloaded; skipping the Kaggle download", archive)
        else:
            if archive.exists():
                raise DataError(f"{archive} is not a readable zip; move it away and run again")
            _kaggle_fetch(slug, dest_dir, archive, api_factory or KAGGLE_API_FACTORY)
    extract_zip(archive, dest_dir)
    return dest_dir


def _kaggle_fetch(slug: str, dest_dir: Path, archive: Path, factory: ApiFactory) -> None:
    by_hand = (
        f"download the data by hand from https://www.kaggle.com/competitions/{slug}/data into {dest_dir}"
    )
    try:
        api = authenticated_api(factory, alternative=by_hand, purpose=f"downloading the data of {slug}")
    except KaggleError as exc:  # a download failure is a DataError, whatever the cause
        raise DataError(str(exc)) from None
    secrets = secrets_of(api)
    staging = dest_dir / f".kaggle-{slug}"
    staging.mkdir(exist_ok=True)
    log.info("downloading the data of Kaggle competition %s into %s", slug, dest_dir)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # the client's messages must not mix with our output
            api.competition_download_files(slug, path=str(staging), force=False, quiet=False)
    except (Exception, SystemExit) as exc:
        doing, slug_from = "download the data of", "the slug in the competition config"
        error = explain(exc, slug, secrets, doing=doing, slug_from=slug_from, alternative=by_hand)
        raise DataError(str(error)) from None
    got = sorted(p for p in staging.iterdir() if p.is_file() and not p.name.startswith("."))
    zips = [p for p in got if p.suffix == ".zip"]
    if len(zips) != 1:
        raise DataError(
            f"the Kaggle download of {slug!r} left {[p.name for p in got]} in {staging}, expected one .zip; "
            "check the folder and run again"
        )
    if not zipfile.is_zipfile(zips[0]):
        zips[0].unlink()
        raise DataError(f"the Kaggle download of {slug!r} is not a readable zip (deleted); run again")
    os.replace(zips[0], archive)
    fsync_dir(dest_dir)
    shutil.rmtree(staging, ignore_errors=True)
    log.info("downloaded %s (%s)", archive, human_size(archive.stat().st_size))
