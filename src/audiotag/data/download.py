"""Getting competition data onto the disk: HTTP with resume and checks, Zenodo listings, split zips,
safe extraction, and the Kaggle API.

HTTP (:func:`download`). A transfer is written to ``<file>.part`` and renamed into place only after its
size, MD5 and SHA-256 (those that are known) match; a mismatch deletes the ``.part`` and nothing else.
A dropped connection is resumed with a ``Range`` request, guarded by ``If-Range`` with the ETag (or
Last-Modified date) of the first response, so bytes of an older version of the file are never glued
to a newer one; a server that ignores ``Range`` (answers 200) is read from the start. A file that is
already in place is checked, not downloaded again; one that fails the checks is never deleted: the
error says to move it away. The digests of a checked file are remembered in a hidden stamp beside it
(keyed by size and modification time), so large archives are hashed once, not on every run.

The lower-level pieces (:func:`fetch_part`, :func:`accept_part`, :func:`file_digests`,
:func:`locked`) are shared with :mod:`audiotag.models.pretrained`, which adds its own checksum records.

Archives. :func:`join_split_zip` turns an Info-ZIP split archive (``x.z01 ... x.zNN, x.zip``) into one
zip, streaming, the way ``zip -s 0 x.zip --out joined.zip`` does. :func:`extract_zip` refuses entries
that would land outside the target folder before it writes anything, extracts into a hidden folder
beside the target and moves the result into place, and records a finished extraction so a second call
returns at once.

Kaggle. :func:`kaggle_download` uses the official client through :mod:`audiotag.kaggle_api` (shared
with ``audiotag submit``), which imports it only when called (importing the ``kaggle`` package
authenticates at import time and prints to stdout), signs in, and turns its failures into one-line
errors that say what to do; they are raised here as :class:`DataError`. Credentials are never printed
or logged.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import json
import logging
import os
import re
import shutil
import socket
import stat
import struct
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

from tqdm import tqdm

from audiotag.atomic import atomic_path, atomic_write_json, fsync_dir
from audiotag.errors import ConfigError, DataError
from audiotag.kaggle_api import ApiFactory, KaggleError, authenticated_api, default_api, explain, secrets_of

log = logging.getLogger(__name__)

USER_AGENT = "audiotag (python urllib)"
CHUNK = 1 << 20
TIMEOUT_S = 60.0
RETRIES = 3  # reconnections (resuming where the transfer stopped) before giving up
RETRY_WAIT_S = 2.0  # doubled after each failed attempt, at most 30 s
ZENODO_API = "https://zenodo.org/api/records/"
RETRYABLE_HTTP = (408, 425, 429, 500, 502, 503, 504)

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX32 = re.compile(r"[0-9a-f]{32}")


# --------------------------------------------------------------------------- small shared helpers


def human_size(size: int | None) -> str:
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"


def is_offline(offline: bool | None = None) -> bool:
    """True when asked, or when ``AUDIOTAG_OFFLINE`` is set to 1/true/yes/on."""
    env = os.environ.get("AUDIOTAG_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    return bool(offline) or env


def part_path(final: Path) -> Path:
    """Where the transfer of ``final`` is written until it is verified."""
    return final.with_name(final.name + ".part")


def _validator_path(part: Path) -> Path:
    return part.with_name(f".{part.name}.json")


def _discard_part(part: Path) -> None:
    part.unlink(missing_ok=True)
    _validator_path(part).unlink(missing_ok=True)


def _bar(total: int | None, desc: str, unit: str = "B", initial: int = 0) -> tqdm:
    """The progress bar every long step shows (hidden when stderr is not a terminal)."""
    scaled = unit == "B"
    return tqdm(
        total=total,
        initial=initial,
        unit=unit,
        unit_scale=scaled,
        unit_divisor=1024 if scaled else 1000,
        desc=desc,
        disable=None,
        file=sys.stderr,
        leave=False,
    )


def _check_free_space(folder: Path, needed: int, what: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise DataError(
            f"{what} needs {human_size(needed)} in {folder} but only {human_size(free)} is free; "
            "free some space or point the workspace elsewhere (AUDIOTAG_WORKSPACE)"
        )


@contextlib.contextmanager
def locked(lock_file: Path, waiting: str = "") -> Iterator[None]:
    """Hold an exclusive advisory lock (POSIX flock) on ``lock_file`` for the block.

    Several processes (e.g. the ranks of one torchrun job) may ask for the same file at once: one
    does the work, the others wait and then find it done. ``waiting`` is logged when the lock is busy.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        yield
        return
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                log.info("%s", waiting)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- checks


class Digests(NamedTuple):
    size: int
    sha256: str
    md5: str | None


@dataclass(frozen=True)
class Expected:
    """What a file must be, and where each expected value comes from (quoted in error messages)."""

    size: int | None = None
    md5: str | None = None
    sha256: str | None = None
    size_from: str = "the file listing"
    md5_from: str = "the published MD5"
    sha256_from: str = "the published SHA-256"

    def mismatches(self, got: Digests) -> list[tuple[str, str, str, str]]:
        """(what, actual, expected, source) for every check that fails."""
        checks = [
            ("size", str(got.size), str(self.size) if self.size is not None else None, self.size_from),
            ("MD5", got.md5 or "", self.md5, self.md5_from),
            ("SHA-256", got.sha256, self.sha256, self.sha256_from),
        ]
        return [(w, a, e, s) for w, a, e, s in checks if e is not None and a != e]


def file_digests(path: Path, *, md5: bool = False) -> Digests:
    """Size, SHA-256 and (when asked) MD5 of a file, in one pass, with a progress bar."""
    sha = hashlib.sha256()
    m5 = hashlib.md5(usedforsecurity=False) if md5 else None
    size = 0
    with open(path, "rb") as f, _bar(path.stat().st_size, f"checking {path.name}") as bar:
        while block := f.read(CHUNK):
            size += len(block)
            sha.update(block)
            if m5 is not None:
                m5.update(block)
            bar.update(len(block))
    return Digests(size, sha.hexdigest(), m5.hexdigest() if m5 is not None else None)


# --------------------------------------------------------------------------- transfer


class _Interrupted(Exception):
    """A transfer that stopped early; the .part file is kept and the next attempt resumes it."""


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total length) of a ``Content-Range: bytes a-b/total`` or ``bytes */total`` header."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value or "")
    if not match:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None), (int(total) if total and total != "*" else None)


def _read_validator(part: Path, url: str) -> str | None:
    """The ETag or Last-Modified of the response that started ``part`` (None if unknown)."""
    try:
        data = json.loads(_validator_path(part).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("url") != url:
        return None
    value = data.get("validator")
    return value if isinstance(value, str) and value else None


def _write_validator(part: Path, url: str, headers: Mapping[str, str]) -> None:
    etag = headers.get("ETag")
    validator = etag if etag and not etag.startswith("W/") else headers.get("Last-Modified")
    if validator:
        atomic_write_json(_validator_path(part), {"url": url, "validator": validator})
    else:
        _validator_path(part).unlink(missing_ok=True)


def fetch_part(
    url: str,
    part: Path,
    *,
    size: int | None = None,
    label: str | None = None,
    size_from: str = "the file listing",
    retries: int = RETRIES,
    retry_wait: float = RETRY_WAIT_S,
    hint: str = "",
) -> None:
    """Bring ``part`` to the complete file at ``url``, resuming it and reconnecting after drops.

    ``size`` is the expected length (a server announcing another length is refused at once). After
    ``retries`` failed reconnections the ``.part`` is kept and a DataError says to run again (``hint``
    adds the other ways to get the file). No check of the content happens here: see
    :func:`accept_part`.
    """
    label = label or part.name.removesuffix(".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    if size is not None:
        have = part.stat().st_size if part.exists() else 0
        _check_free_space(part.parent, max(size - have, 0), f"the download of {label}")
    attempts = 1 + retries
    for attempt in range(1, attempts + 1):
        try:
            _transfer_once(url, part, size=size, label=label, size_from=size_from, hint=hint)
            return
        except _Interrupted as exc:
            if attempt == attempts:
                kept = f"; the partial download {part} is kept" if part.exists() else ""
                also = f", or {hint}" if hint else ""
                raise DataError(
                    f"download of {label} from {url} failed after {attempts} attempt(s): {exc}{kept}. "
                    f"Run the same command again to resume{also}"
                ) from None
            wait = min(retry_wait * 2 ** (attempt - 1), 30.0)
            log.warning(
                "%s: %s; resuming in %.0f s (attempt %d of %d)", label, exc, wait, attempt + 1, attempts
            )
            time.sleep(wait)


def _open(url: str, offset: int, validator: str | None, label: str, hint: str, part: Path) -> Any:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
        if validator:
            request.add_header("If-Range", validator)
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            _, total = _content_range(exc.headers.get("Content-Range"))
            if total == offset:
                return None  # the .part holds the whole file
            _discard_part(part)
            raise _Interrupted("the server refused to resume the partial download; starting again") from None
        if exc.code in RETRYABLE_HTTP:
            raise _Interrupted(f"HTTP {exc.code} {exc.reason}") from None
        also = f"; {hint}" if hint else ""
        raise DataError(f"download of {label}: {url} answered HTTP {exc.code} {exc.reason}{also}") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, socket.gaierror):
            also = f"; {hint}" if hint else ""
            raise DataError(f"download of {label}: cannot reach {url} ({exc.reason}){also}") from None
        raise _Interrupted(f"connection failed: {exc.reason}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise _Interrupted(f"connection failed: {exc}") from None


def _transfer_once(url: str, part: Path, *, size: int | None, label: str, size_from: str, hint: str) -> None:
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        _discard_part(part)
        offset = 0
    if size is not None and offset == size:
        return  # complete already (killed before the rename): verified next
    response = _open(url, offset, _read_validator(part, url) if offset else None, label, hint, part)
    if response is None:
        return
    with response:
        length = response.headers.get("Content-Length")
        length_n = int(length) if length and length.isdigit() else None
        if response.status == 206:
            start, total = _content_range(response.headers.get("Content-Range"))
            if start != offset:
                _discard_part(part)
                raise _Interrupted(f"the server resumed at byte {start}, not {offset}; starting again")
            mode = "ab"
        elif response.status == 200:
            if offset:
                log.info("%s: the server sent the whole file instead of resuming; starting again", label)
            offset, total, mode = 0, length_n, "wb"
            _write_validator(part, url, response.headers)
        else:
            raise DataError(f"download of {label}: unexpected HTTP {response.status} from {url}")
        if total is not None and size is not None and total != size:
            _discard_part(part)
            raise DataError(
                f"download of {label} refused: {url} serves {total} bytes, expected {size} "
                f"(from {size_from}); the download was deleted and nothing else was changed"
            )
        received = offset
        with open(part, mode) as out, _bar(total, label, initial=offset) as bar:
            try:
                while block := response.read(CHUNK):
                    out.write(block)
                    received += len(block)
                    bar.update(len(block))
            except (OSError, http.client.HTTPException) as exc:
                raise _Interrupted(f"connection lost after {received} bytes ({exc})") from None
            finally:
                out.flush()
                os.fsync(out.fileno())
    if total is not None and received < total:
        raise _Interrupted(f"connection closed after {received} of {total} bytes")


def accept_part(
    part: Path,
    final: Path,
    expected: Expected,
    *,
    url: str,
    label: str | None = None,
    md5: bool = False,
    check: Callable[[Path], None] | None = None,
) -> Digests:
    """Verify a complete ``.part`` and rename it onto ``final``; on any mismatch delete only the part.

    ``check`` inspects the content too (for a file nothing is published about): a ``DataError`` from
    it deletes the part. Returns the digests of the accepted file (its MD5 when one was expected or
    ``md5`` is true).
    """
    label = label or final.name
    if check is not None:
        try:
            check(part)
        except DataError as exc:
            _discard_part(part)
            kept = f"; the existing {final} was left as it was" if final.exists() else ""
            raise DataError(
                f"download of {label} from {url} refused: {exc}. The download was deleted{kept} and "
                "nothing was recorded. Check the URL (a proxy or mirror may have answered with an error "
                "page), or use a file of your own"
            ) from None
    got = file_digests(part, md5=md5 or expected.md5 is not None)
    bad = expected.mismatches(got)
    if bad:
        _discard_part(part)
        what, actual, wanted, source = bad[0]
        kept = f"; the existing {final} was left as it was" if final.exists() else ""
        raise DataError(
            f"download of {label} from {url} refused: {what} is {actual}, expected {wanted} (from {source}). "
            f"The download was deleted{kept}. The file on the server differs from the one this project "
            "knows; check the source before trusting it"
        )
    os.replace(part, final)
    _validator_path(part).unlink(missing_ok=True)
    fsync_dir(final.parent)
    log.info("verified %s (%s, SHA-256 %s)", final, human_size(got.size), got.sha256)
    return got


# --------------------------------------------------------------------------- download


@dataclass(frozen=True)
class RemoteFile:
    """A file to download: its URL, its name on disk, and what it must be (each check where known)."""

    url: str
    filename: str
    size: int | None = None
    md5: str | None = None
    sha256: str | None = None

    def __post_init__(self) -> None:
        if self.md5 is not None and not _HEX32.fullmatch(self.md5):
            raise ConfigError(f"{self.filename}: md5 must be 32 lowercase hex digits, got {self.md5!r}")
        if self.sha256 is not None and not _HEX64.fullmatch(self.sha256):
            raise ConfigError(f"{self.filename}: sha256 must be 64 lowercase hex digits, got {self.sha256!r}")
        if self.size is not None and self.size < 0:
            raise ConfigError(f"{self.filename}: size must be >= 0, got {self.size}")
        pure = PurePosixPath(self.filename)
        if not self.filename or pure.is_absolute() or ".." in pure.parts or "\\" in self.filename:
            raise ConfigError(f"{self.filename!r} (from {self.url}): the file name must be a relative path")

    def expected(self) -> Expected:
        return Expected(self.size, self.md5, self.sha256)


def _stamp_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.verified")


def _write_stamp(final: Path, got: Digests) -> None:
    st = final.stat()
    atomic_write_json(
        _stamp_path(final),
        {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": got.sha256, "md5": got.md5},
    )


def _stamped_digests(final: Path) -> Digests | None:
    """The digests recorded when ``final`` was last checked, if it has not changed since."""
    try:
        data = json.loads(_stamp_path(final).read_text(encoding="utf-8"))
        st = final.stat()
        if data["size"] == st.st_size and data["mtime_ns"] == st.st_mtime_ns and data.get("md5"):
            return Digests(int(data["size"]), str(data["sha256"]), str(data["md5"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _check_existing(remote: RemoteFile, final: Path) -> None:
    """Accept a file already in place, or raise (never deleting it) when it fails a check."""
    expected = remote.expected()
    size = final.stat().st_size
    got = Digests(size, "", None)
    bad = expected.mismatches(got)[:1] if expected.size is not None and size != expected.size else []
    if not bad and (remote.md5 or remote.sha256):
        stamped = _stamped_digests(final)
        got = stamped or file_digests(final, md5=True)
        bad = expected.mismatches(got)
        if not bad and stamped is None:
            _write_stamp(final, got)
    if bad:
        what, actual, wanted, source = bad[0]
        raise DataError(
            f"{final} is already there but its {what} is {actual}, expected {wanted} (from {source}); it was "
            f"left untouched: move it away (e.g. `mv '{final}' '{final}.bad'`) and run again to download a "
            "fresh copy"
        )
    checked = "checked" if (remote.md5 or remote.sha256 or remote.size is not None) else "no checksum known"
    log.info("%s is already downloaded (%s); skipping", final, checked)


def download(
    remote: RemoteFile, dest_dir: Path, *, offline: bool = False, retries: int | None = None
) -> Path:
    """Download ``remote`` into ``dest_dir`` (with resume, retries and checks) and return its path.

    A file already in place that passes the checks is returned as is; one that fails them is an error
    and is left alone. ``offline`` (or ``AUDIOTAG_OFFLINE=1``) never opens a connection: a missing
    file is an error that names it and where to get it. ``retries``: reconnections after a dropped
    transfer (default ``RETRIES``).
    """
    dest_dir = Path(dest_dir)
    final = dest_dir / remote.filename
    if final.is_file():
        _check_existing(remote, final)
        return final
    if final.exists():
        raise DataError(f"{final} exists but is not a file; move it away and run again")
    if is_offline(offline):
        raise DataError(
            f"{final} is missing and offline mode is on (offline=True or AUDIOTAG_OFFLINE=1): download "
            f"{remote.url} on a machine with internet access and put it at {final}, or run without "
            "offline mode"
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    waiting = f"waiting for another process that is downloading {remote.filename}"
    with locked(final.with_name(f".{final.name}.lock"), waiting):
        if final.is_file():  # another process fetched it while this one waited
            _check_existing(remote, final)
            return final
        log.info("downloading %s (%s) from %s", remote.filename, human_size(remote.size), remote.url)
        part = part_path(final)
        fetch_part(
            remote.url,
            part,
            size=remote.size,
            label=remote.filename,
            size_from="the file listing",
            retries=RETRIES if retries is None else retries,
            retry_wait=RETRY_WAIT_S,
            hint=f"download {remote.url} yourself and put it at {final}",
        )
        got = accept_part(part, final, remote.expected(), url=remote.url, label=remote.filename, md5=True)
        _write_stamp(final, got)
    return final


# --------------------------------------------------------------------------- Zenodo


def _get_json(url: str, what: str, retries: int = RETRIES) -> Any:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": "application/json"})
    for attempt in range(retries + 1):
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                body = response.read()
            break
        except urllib.error.HTTPError as exc:
            if exc.code in RETRYABLE_HTTP and attempt < retries:
                time.sleep(min(RETRY_WAIT_S * 2**attempt, 30.0))
                continue
            raise DataError(f"{what}: {url} answered HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            if attempt < retries and not isinstance(reason, socket.gaierror):
                time.sleep(min(RETRY_WAIT_S * 2**attempt, 30.0))
                continue
            raise DataError(f"{what}: cannot reach {url} ({reason}); check the network connection") from None
    try:
        return json.loads(body)
    except ValueError:
        raise DataError(f"{what}: {url} did not answer with JSON; is the API address right?") from None


def _parse_checksum(value: object) -> tuple[str | None, str | None]:
    """(md5, sha256) from a Zenodo checksum: ``md5:<hex>``, ``sha256:<hex>`` or bare hex (MD5)."""
    if not isinstance(value, str):
        return None, None
    algo, _, digest = value.strip().lower().rpartition(":")
    if algo in ("", "md5") and _HEX32.fullmatch(digest):
        return digest, None
    if algo in ("sha256", "sha-256") and _HEX64.fullmatch(digest):
        return None, digest
    return None, None


def zenodo_files(record_id: int | str, *, api_base: str = ZENODO_API) -> list[RemoteFile]:
    """The files of a Zenodo record: name, download URL, size and MD5, from the records API.

    Understands the shapes Zenodo has served: the legacy list (``key``, ``size``, ``checksum:
    "md5:..."``, ``links.self``), the 2023 transition (``filename``, ``filesize``, bare-hex checksum,
    ``links.download``), today's list (``key``, ``links.self`` ending in ``/content``) and InvenioRDM's
    ``files.entries`` (a list or a mapping by name, with ``links.content``). Where no usable link is
    given the URL is ``<api_base><record>/files/<name>/content``.
    """
    rid = str(record_id).strip()
    if not rid.isdigit():
        raise ConfigError(f"Zenodo record id must be a number, got {record_id!r}")
    base = api_base if api_base.endswith("/") else api_base + "/"
    url = f"{base}{rid}"
    what = f"Zenodo record {rid}"
    record = _get_json(url, what)
    files = record.get("files") if isinstance(record, dict) else None
    if isinstance(files, dict):
        files = files.get("entries")
    if isinstance(files, dict):
        files = list(files.values())
    if not isinstance(files, list):
        raise DataError(f"{what}: {url} lists no files (restricted or empty record?); open it in a browser")
    out: list[RemoteFile] = []
    for item in files:
        if not isinstance(item, dict):
            raise DataError(f"{what}: unexpected file entry {item!r} in {url}")
        name = item.get("key") or item.get("filename")
        if not isinstance(name, str) or not name:
            raise DataError(f"{what}: a file entry without a name in {url}: {sorted(item)}")
        size = item.get("size", item.get("filesize"))
        md5, sha256 = _parse_checksum(item.get("checksum"))
        links = item.get("links") if isinstance(item.get("links"), dict) else {}
        link = links.get("content") or links.get("download")
        if not link and isinstance(links.get("self"), str) and links["self"].rstrip("/").endswith("/content"):
            link = links["self"]
        if not link and isinstance(links.get("self"), str) and "/api/files/" in links["self"]:
            link = links["self"]  # legacy bucket link
        if not link:
            link = f"{base}{rid}/files/{urllib.parse.quote(name)}/content"
        out.append(
            RemoteFile(
                url=str(link),
                filename=name,
                size=int(size) if isinstance(size, int | str) and str(size).isdigit() else None,
                md5=md5,
                sha256=sha256,
            )
        )
    log.info("%s: %d file(s), %s", what, len(out), human_size(sum(f.size or 0 for f in out)))
    return out


# --------------------------------------------------------------------------- stamps (join / extract)


def _file_id(path: Path) -> list[Any]:
    st = path.stat()
    return [path.name, st.st_size, st.st_mtime_ns]


def _read_stamp(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# --------------------------------------------------------------------------- split zips

_SIG_LOCAL = b"PK\x03\x04"
_SIG_CENTRAL = b"PK\x01\x02"
_SIG_EOCD = b"PK\x05\x06"
_SIG_Z64_EOCD = b"PK\x06\x06"
_SIG_Z64_LOCATOR = b"PK\x06\x07"
_SPLIT_MARKERS = (b"PK\x07\x08", b"PK00")  # the first 4 bytes of the first part of a split archive
_EOCD = struct.Struct("<4s4H2LH")
_Z64_LOCATOR = struct.Struct("<4sLQL")
_Z64_EOCD = struct.Struct("<4sQ2H2L4Q")
_CENTRAL = struct.Struct("<4s6H3L5H2L")
_LOCAL = struct.Struct("<4s5H3L2H")
ZIP64_LIMIT = 0xFFFFFFFF  # offsets/sizes at or above need Zip64 fields (a module constant for tests)
ZIP64_COUNT_LIMIT = 0xFFFF


class _Parts:
    """The parts of a split archive read as one stream addressed by (disk, offset)."""

    def __init__(self, parts: Sequence[Path], stack: contextlib.ExitStack) -> None:
        self.paths = list(parts)
        self.sizes = [p.stat().st_size for p in self.paths]
        self.files = [stack.enter_context(p.open("rb")) for p in self.paths]
        head = self.files[0].read(4)
        self.skip = 4 if head in _SPLIT_MARKERS and len(self.paths) > 1 else 0
        self.bases = []
        total = -self.skip
        for size in self.sizes:
            self.bases.append(total)
            total += size

    def position(self, disk: int, offset: int) -> int:
        """Where byte ``offset`` of part ``disk`` lands in the joined file."""
        return self.bases[disk] + offset

    def read(self, disk: int, offset: int, n: int, what: str) -> bytes:
        if not 0 <= disk < len(self.paths):
            raise DataError(
                f"{what} is said to be on part {disk + 1} but the archive has {len(self.paths)} parts"
            )
        chunks: list[bytes] = []
        while n > 0:
            if disk >= len(self.paths):
                raise DataError(
                    f"{what} runs past the end of {self.paths[-1].name}; a part is truncated: download the "
                    "parts again"
                )
            if offset >= self.sizes[disk]:
                offset -= self.sizes[disk]
                disk += 1
                continue
            self.files[disk].seek(offset)
            chunk = self.files[disk].read(min(n, self.sizes[disk] - offset))
            chunks.append(chunk)
            n -= len(chunk)
            offset = 0
            disk += 1
        return b"".join(chunks)


@dataclass
class _Entry:
    name: str
    fixed: list[Any]  # the 17 fields of the central directory header
    name_raw: bytes
    extra: bytes
    comment: bytes
    csize: int
    usize: int
    offset: int
    disk: int


def _order_parts(parts: Sequence[Path]) -> list[Path]:
    """x.z01, x.z02, ..., x.zip in order; a gap in the numbers is reported by name."""
    paths = [Path(p) for p in parts]
    if not paths:
        raise DataError("join_split_zip: no parts given")
    lasts = [p for p in paths if p.suffix.lower() == ".zip"]
    numbered = {p: re.fullmatch(r"\.z(\d+)", p.suffix.lower()) for p in paths}
    if not lasts and all(numbered.values()):
        last = paths[0].with_suffix(".zip")
        raise DataError(
            f"split archive {last.name}: the last part {last.name} (it holds the directory) is missing from "
            f"the list; download it into {last.parent} and run again"
        )
    if len(lasts) != 1 or any(numbered[p] is None for p in paths if p not in lasts):
        return paths  # not the usual naming: trust the order given
    last = lasts[0]
    ordered = sorted((p for p in paths if p != last), key=lambda p: int(numbered[p].group(1)))  # type: ignore[union-attr]
    numbers = [int(numbered[p].group(1)) for p in ordered]  # type: ignore[union-attr]
    wanted = list(range(1, len(ordered) + 1))
    if numbers != wanted:
        top = max(numbers, default=0)
        missing = [f"{last.stem}.z{i:02d}" for i in range(1, top + 1) if i not in numbers]
        raise DataError(
            f"split archive {last.name}: part(s) {', '.join(missing)} missing from the list; download them "
            f"into {last.parent} and run again"
        )
    for p in [*ordered, last]:
        if not p.is_file():
            raise DataError(f"split archive {last.name}: part {p} is missing; download it and run again")
    return [*ordered, last]


def _find_eocd(parts: _Parts) -> tuple[int, tuple[Any, ...]]:
    last = len(parts.paths) - 1
    size = parts.sizes[last]
    n = min(size, _EOCD.size + 0xFFFF)
    tail = parts.read(last, size - n, n, f"the end of {parts.paths[last].name}")
    pos = tail.rfind(_SIG_EOCD)
    while pos >= 0 and pos + _EOCD.size > len(tail):
        pos = tail.rfind(_SIG_EOCD, 0, pos)
    if pos < 0:
        raise DataError(
            f"{parts.paths[last]}: no end-of-central-directory record; this part is truncated or is not "
            "the last part (.zip) of the archive: download it again"
        )
    return size - n + pos, _EOCD.unpack_from(tail, pos)


def _parse_zip64_extra(extra: bytes, usize: int, csize: int, offset: int, disk: int) -> tuple[int, ...]:
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<2H", extra, pos)
        if tag == 0x0001:
            data = extra[pos + 4 : pos + 4 + length]
            values = []
            i = 0
            for current, width in ((usize, 8), (csize, 8), (offset, 8), (disk, 4)):
                limit = 0xFFFF if width == 4 else 0xFFFFFFFF
                if current == limit and i + width <= len(data):
                    values.append(int.from_bytes(data[i : i + width], "little"))
                    i += width
                else:
                    values.append(current)
            return tuple(values)
        pos += 4 + length
    return usize, csize, offset, disk


def _strip_zip64_extra(extra: bytes) -> bytes:
    out, pos = b"", 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<2H", extra, pos)
        if tag != 0x0001:
            out += extra[pos : pos + 4 + length]
        pos += 4 + length
    return out + extra[pos:]


def _read_central(parts: _Parts, disk: int, offset: int, size: int, count: int) -> list[_Entry]:
    where = f"the central directory (in {parts.paths[min(disk, len(parts.paths) - 1)].name})"
    data = parts.read(disk, offset, size, where)
    entries: list[_Entry] = []
    pos = 0
    while pos < len(data) and len(entries) < count:
        if data[pos : pos + 4] != _SIG_CENTRAL or pos + _CENTRAL.size > len(data):
            raise DataError(f"{where} is damaged at entry {len(entries) + 1}: download the parts again")
        fixed = list(_CENTRAL.unpack_from(data, pos))
        nlen, xlen, clen = fixed[10], fixed[11], fixed[12]
        start = pos + _CENTRAL.size
        name_raw = data[start : start + nlen]
        extra = data[start + nlen : start + nlen + xlen]
        comment = data[start + nlen + xlen : start + nlen + xlen + clen]
        usize, csize, off, dsk = _parse_zip64_extra(extra, fixed[9], fixed[8], fixed[16], fixed[13])
        name = name_raw.decode("utf-8" if fixed[3] & 0x800 else "cp437", errors="replace")
        entries.append(_Entry(name, fixed, name_raw, extra, comment, csize, usize, off, dsk))
        pos = start + nlen + xlen + clen
    if len(entries) != count:
        raise DataError(f"{where} holds {len(entries)} entries, expected {count}: download the parts again")
    return entries


def _check_layout(parts: _Parts, entries: list[_Entry], cd_disk: int, cd_position: int) -> None:
    """Every entry starts with a file header, and its data ends where the next record begins; a part
    that is shorter or longer than the archive says is named."""
    placed: list[tuple[int, _Entry, int]] = []
    for e in entries:
        where = f"{e.name} (part {parts.paths[min(e.disk, len(parts.paths) - 1)].name}, offset {e.offset})"
        if e.disk >= len(parts.paths) or e.offset >= parts.sizes[e.disk]:
            part = parts.paths[min(e.disk, len(parts.paths) - 1)]
            raise DataError(
                f"{part}: the archive puts {e.name} at offset {e.offset} but the part is only "
                f"{parts.sizes[min(e.disk, len(parts.paths) - 1)]} bytes: it is truncated; download it again"
            )
        header = parts.read(e.disk, e.offset, _LOCAL.size, f"the header of {where}")
        fields = _LOCAL.unpack(header)
        if fields[0] != _SIG_LOCAL:
            raise DataError(
                f"{parts.paths[e.disk]}: no file header for {e.name} at offset {e.offset}; the part is "
                "corrupted or belongs to another archive: download it again"
            )
        length = _LOCAL.size + fields[9] + fields[10] + e.csize
        placed.append((parts.position(e.disk, e.offset), e, length))
    placed.sort(key=lambda t: t[0])
    for i, (pos, e, length) in enumerate(placed):
        next_pos, next_disk = (
            (placed[i + 1][0], placed[i + 1][1].disk) if i + 1 < len(placed) else (cd_position, cd_disk)
        )
        if next_disk == e.disk:
            continue  # only part boundaries tell whether a part has the right length
        gap = next_pos - (pos + length)
        allowed = (12, 16, 20, 24) if e.fixed[3] & 0x08 else (0,)
        if gap in allowed:
            continue
        part = parts.paths[e.disk]
        how = "shorter" if gap < min(allowed) else "longer"
        raise DataError(
            f"{part}: the data of {e.name} does not end where the archive says ({abs(gap - allowed[0])} "
            f"bytes off): this part is {how} than it should be (truncated or corrupted); download it again"
        )


def _central_record(e: _Entry, offset: int) -> tuple[bytes, bool]:
    """The central directory header of ``e`` for a single-disk archive with its header at ``offset``."""
    fixed = list(e.fixed)
    extra = _strip_zip64_extra(e.extra)
    z64 = b""
    big_u, big_c, big_o = e.usize >= ZIP64_LIMIT, e.csize >= ZIP64_LIMIT, offset >= ZIP64_LIMIT
    if big_u:
        z64 += struct.pack("<Q", e.usize)
    if big_c:
        z64 += struct.pack("<Q", e.csize)
    if big_o:
        z64 += struct.pack("<Q", offset)
    fixed[9] = 0xFFFFFFFF if big_u else e.usize
    fixed[8] = 0xFFFFFFFF if big_c else e.csize
    fixed[16] = 0xFFFFFFFF if big_o else offset
    fixed[13] = 0  # disk number start
    if z64:
        extra = struct.pack("<2H", 0x0001, len(z64)) + z64 + extra
        fixed[2] = max(fixed[2], 45)
    fixed[11] = len(extra)
    return _CENTRAL.pack(*fixed) + e.name_raw + extra + e.comment, bool(z64)


def join_split_zip(parts: list[Path], out: Path, *, verify_crc: bool = False) -> Path:
    """Join an Info-ZIP split archive (``x.z01 ... x.zNN, x.zip``) into the single zip ``out``.

    The equivalent of ``zip -s 0 x.zip --out out``: the parts are copied one after the other (without
    the split marker at the start of the first), and the central directory is rewritten with offsets
    into the joined file (Zip64 where they pass 4 GiB). Streaming, so memory stays small; written
    atomically; the result is opened with :mod:`zipfile` before it is renamed into place
    (``verify_crc`` also reads every entry and checks its CRC). A missing, truncated or corrupted
    part is named in the error. A join already done from the same parts (same sizes and times) is
    skipped.
    """
    ordered = _order_parts(parts)
    out = Path(out)
    stamp_file = out.with_name(f".{out.name}.joined")
    ident = [_file_id(p) for p in ordered]
    stamp = _read_stamp(stamp_file)
    if out.is_file() and stamp and stamp.get("parts") == ident and stamp.get("size") == out.stat().st_size:
        log.info("%s is already joined from %d parts; skipping", out, len(ordered))
        return out
    with contextlib.ExitStack() as stack:
        src = _Parts(ordered, stack)
        eocd_pos, eocd = _find_eocd(src)
        _, disk_no, cd_disk, _, n_total, cd_size, cd_off, _ = eocd
        last = len(ordered) - 1
        comment = src.read(last, eocd_pos + _EOCD.size, eocd[7], "the archive comment")
        total_disks = disk_no + 1
        if eocd_pos >= _Z64_LOCATOR.size:
            loc = _Z64_LOCATOR.unpack(
                src.read(last, eocd_pos - _Z64_LOCATOR.size, _Z64_LOCATOR.size, "zip64")
            )
            if loc[0] == _SIG_Z64_LOCATOR:
                z64_disk, z64_off, total_disks = loc[1], loc[2], loc[3]
                rec = _Z64_EOCD.unpack(src.read(z64_disk, z64_off, _Z64_EOCD.size, "the zip64 end record"))
                if rec[0] != _SIG_Z64_EOCD:
                    raise DataError(
                        f"{ordered[z64_disk]}: the zip64 end record is damaged; download it again"
                    )
                cd_disk, n_total, cd_size, cd_off = rec[5], rec[7], rec[8], rec[9]
        if total_disks != len(ordered):
            last_path = ordered[-1]
            if total_disks > len(ordered):
                names = [f"{last_path.stem}.z{i:02d}" for i in range(1, total_disks)]
                given = {p.name.lower() for p in ordered}
                missing = [n for n in names if n.lower() not in given] or names[len(ordered) - 1 :]
                raise DataError(
                    f"split archive {last_path.name} has {total_disks} parts but {len(ordered)} were given; "
                    f"missing: {', '.join(missing)} (download into {last_path.parent} and run again)"
                )
            raise DataError(
                f"split archive {last_path.name} has {total_disks} part(s) but {len(ordered)} were given; "
                "pass only the parts of this archive"
            )
        entries = _read_central(src, cd_disk, cd_off, cd_size, n_total)
        cd_position = src.position(cd_disk, cd_off)
        _check_layout(src, entries, cd_disk, cd_position)
        _check_free_space(out.parent, cd_position + cd_size + 1024, f"joining {ordered[-1].name}")
        log.info("joining %d parts of %s into %s", len(ordered), ordered[-1].name, out)
        with atomic_path(out) as tmp:
            with open(tmp, "wb") as dst, _bar(cd_position, f"joining {ordered[-1].name}") as bar:
                for disk in range(cd_disk + 1):
                    f = src.files[disk]
                    f.seek(src.skip if disk == 0 else 0)
                    left = (cd_off if disk == cd_disk else src.sizes[disk]) - (src.skip if disk == 0 else 0)
                    while left > 0:
                        block = f.read(min(CHUNK, left))
                        if not block:
                            raise DataError(f"{ordered[disk]} ended early while joining; download it again")
                        dst.write(block)
                        left -= len(block)
                        bar.update(len(block))
                central = bytearray()
                any_z64 = False
                for e in entries:
                    record, z64 = _central_record(e, src.position(e.disk, e.offset))
                    central += record
                    any_z64 |= z64
                dst.write(central)
                _write_end(dst, cd_position, len(central), len(entries), comment, any_z64)
            _verify_joined(tmp, entries, src, verify_crc)
        atomic_write_json(stamp_file, {"parts": ident, "size": out.stat().st_size})
    log.info("joined %s (%s, %d entries)", out, human_size(out.stat().st_size), len(entries))
    return out


def _write_end(
    dst: io.BufferedWriter, cd_start: int, cd_size: int, count: int, comment: bytes, z64: bool
) -> None:
    need = z64 or cd_start >= ZIP64_LIMIT or cd_size >= ZIP64_LIMIT or count >= ZIP64_COUNT_LIMIT
    if need:
        z64_pos = cd_start + cd_size
        dst.write(
            _Z64_EOCD.pack(_SIG_Z64_EOCD, _Z64_EOCD.size - 12, 45, 45, 0, 0, count, count, cd_size, cd_start)
        )
        dst.write(_Z64_LOCATOR.pack(_SIG_Z64_LOCATOR, 0, z64_pos, 1))
    small_count = min(count, ZIP64_COUNT_LIMIT) if not need else ZIP64_COUNT_LIMIT
    dst.write(
        _EOCD.pack(
            _SIG_EOCD,
            0,
            0,
            small_count,
            small_count,
            0xFFFFFFFF if need else cd_size,
            0xFFFFFFFF if need else cd_start,
            len(comment),
        )
    )
    dst.write(comment)


def _verify_joined(tmp: Path, entries: list[_Entry], src: _Parts, verify_crc: bool) -> None:
    by_name = {e.name: e for e in entries}
    try:
        with zipfile.ZipFile(tmp) as zf:
            infos = zf.infolist()
            if len(infos) != len(entries):
                raise DataError(f"the joined archive lists {len(infos)} entries, expected {len(entries)}")
            if not verify_crc:
                return
            with _bar(len(infos), "checking CRCs", unit="file") as bar:
                for info in infos:
                    try:
                        with zf.open(info) as member:
                            while member.read(CHUNK):
                                pass
                    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
                        e = by_name.get(info.filename)
                        where = src.paths[e.disk].name if e is not None else "one of the parts"
                        raise DataError(
                            f"{info.filename} in the split archive {src.paths[-1].name} is corrupted "
                            f"({exc}); it starts in {where}: download the parts again"
                        ) from None
                    bar.update(1)
    except zipfile.BadZipFile as exc:
        raise DataError(
            f"joining {src.paths[-1].name} gave an archive zipfile cannot read ({exc}); "
            "download the parts again"
        ) from None


# --------------------------------------------------------------------------- extraction


def _unsafe_reason(info: zipfile.ZipInfo, root: str) -> str | None:
    """Why writing this entry under the folder ``root`` would be unsafe (None when it is fine).

    The check is lexical: the archive's own names must stay inside ``root``; folders the user has
    already symlinked inside the target are theirs to decide.
    """
    name = info.filename
    if info.create_system == 3 and stat.S_ISLNK(info.external_attr >> 16):
        return "it is a symbolic link"
    if "\x00" in name:
        return "its name holds a NUL byte"
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        return "it is an absolute path"
    if ".." in norm.split("/"):
        return "it climbs out of the folder with '..'"
    target = os.path.normpath(os.path.join(root, norm))
    if target != root and not target.startswith(root.rstrip(os.sep) + os.sep):
        return f"it would be written to {target}"
    if info.flag_bits & 0x1:
        return "it is encrypted"
    return None


def _move_into(src: Path, dst: Path) -> None:
    """Move ``src`` onto ``dst``: one rename when ``dst`` is absent, else a merge file by file."""
    if not os.path.lexists(dst):
        os.replace(src, dst)
        return
    if src.is_dir() and dst.is_dir():
        for child in sorted(src.iterdir()):
            _move_into(child, dst / child.name)
        return
    if src.is_dir() or dst.is_dir():
        kind = "folder" if src.is_dir() else "file"
        raise DataError(
            f"{dst} is in the way of an extracted {kind} of the same name; move it away and run again"
        )
    os.replace(src, dst)


def _extraction_done(marker: Path, archive: Path, wanted: list[str], files: list[Path]) -> bool:
    stamp = _read_stamp(marker)
    if not stamp or stamp.get("archive") != _file_id(archive):
        return False
    members = stamp.get("members")
    if members != "all" and not set(wanted) <= set(members or []):
        return False
    return all(p.exists() for p in files)


def extract_zip(archive: Path, dest_dir: Path, *, members: list[str] | None = None) -> list[Path]:
    """Extract ``archive`` (or only ``members``) into ``dest_dir`` and return the extracted files.

    Safe: every selected entry is checked before anything is written; an entry whose path would leave
    ``dest_dir`` (``..``, an absolute path) or that is a symbolic link is refused by name. Atomic per
    top-level item: entries are extracted into a hidden folder inside ``dest_dir`` and each top-level
    file or folder is renamed into place (merged file by file only where it already exists), so a
    killed extraction leaves no half folder behind. Idempotent: a finished extraction is recorded in
    ``dest_dir/.<archive>.extracted`` (with the archive's size and time) and skipped next time while
    the extracted files are still there. A CRC error names the entry.
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    if not archive.is_file():
        raise DataError(f"{archive} does not exist; download it first")
    marker = dest_dir / f".{archive.name}.extracted"
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{archive} is not a readable zip archive ({exc}); download it again") from None
    with zf:
        infos = _select(zf, archive, members)
        files = [dest_dir / i.filename.replace("\\", "/") for i in infos if not i.is_dir()]
        wanted = sorted(i.filename for i in infos)
        if _extraction_done(marker, archive, wanted, files):
            log.info("%s is already extracted into %s; skipping", archive.name, dest_dir)
            return files
        root = os.path.abspath(dest_dir)
        for info in infos:
            reason = _unsafe_reason(info, root)
            if reason is not None:
                raise DataError(
                    f"{archive}: refusing to extract entry {info.filename!r} into {dest_dir}: {reason}. "
                    "Nothing was extracted; the archive is damaged or malicious: get it from the official "
                    "source"
                )
        _check_free_space(dest_dir, sum(i.file_size for i in infos), f"extracting {archive.name}")
        with locked(
            dest_dir / f".{archive.name}.extract.lock", f"waiting for another extraction of {archive.name}"
        ):
            if _extraction_done(marker, archive, wanted, files):  # done by another process meanwhile
                return files
            for stale in dest_dir.glob(f".{archive.name}.extracting-*"):
                shutil.rmtree(stale, ignore_errors=True)  # left by a killed extraction
            tmp = Path(tempfile.mkdtemp(prefix=f".{archive.name}.extracting-", dir=dest_dir))
            try:
                _extract_all(zf, archive, infos, tmp)
                for child in sorted(tmp.iterdir()):
                    _move_into(child, dest_dir / child.name)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            fsync_dir(dest_dir)
            recorded: str | list[str] = "all" if members is None else wanted
            previous = _read_stamp(marker)
            if members is not None and previous and previous.get("archive") == _file_id(archive):
                before = previous.get("members")
                recorded = "all" if before == "all" else sorted(set(wanted) | set(before or []))
            atomic_write_json(marker, {"archive": _file_id(archive), "members": recorded})
    log.info("extracted %d file(s) from %s into %s", len(files), archive.name, dest_dir)
    return files


def _select(zf: zipfile.ZipFile, archive: Path, members: list[str] | None) -> list[zipfile.ZipInfo]:
    infos = zf.infolist()
    if members is None:
        return infos
    by_name = {i.filename: i for i in infos}
    missing = [m for m in members if m not in by_name]
    if missing:
        head = ", ".join(repr(m) for m in missing[:5])
        raise DataError(
            f"{archive} has no entr{'y' if len(missing) == 1 else 'ies'} {head}"
            f"{' ...' if len(missing) > 5 else ''}; check the member names"
        )
    return [by_name[m] for m in dict.fromkeys(members)]


def _extract_all(zf: zipfile.ZipFile, archive: Path, infos: list[zipfile.ZipInfo], tmp: Path) -> None:
    with _bar(len(infos), f"extracting {archive.name}", unit="file") as bar:
        for info in infos:
            target = tmp / info.filename.replace("\\", "/")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    with zf.open(info) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst, CHUNK)
                except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
                    raise DataError(
                        f"{archive}: entry {info.filename!r} is corrupted ({exc}); nothing was extracted; "
                        "download the archive again"
                    ) from None
            bar.update(1)


# --------------------------------------------------------------------------- Kaggle

KaggleApiFactory = ApiFactory
KAGGLE_API_FACTORY: KaggleApiFactory = default_api  # tests put a fake here


def kaggle_download(slug: str, dest_dir: Path, *, api_factory: KaggleApiFactory | None = None) -> Path:
    """Download a competition's data with the Kaggle API into ``dest_dir``, extract it there, and return
    ``dest_dir``.

    The archive is fetched into a hidden staging folder (where the client keeps its own resume state),
    checked to be a readable zip, renamed to ``dest_dir/<slug>.zip`` and extracted with
    :func:`extract_zip`. An archive already in place is not downloaded again. Failures become one-line
    errors saying what to do: no credentials, wrong credentials (401), rules not accepted (403), no
    such competition (404). ``api_factory`` builds the client (default: the official ``KaggleApi``).
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", slug):
        raise ConfigError(f"Kaggle competition slug {slug!r} is not valid (letters, digits, '-', '_', '.')")
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


def _kaggle_fetch(slug: str, dest_dir: Path, archive: Path, factory: KaggleApiFactory) -> None:
    by_hand = (
        f"download the data by hand from https://www.kaggle.com/competitions/{slug}/data into {dest_dir}"
    )
    try:
        api = authenticated_api(factory, alternative=by_hand)
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
