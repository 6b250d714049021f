"""HTTP downloads with resume and checks, and the file helpers the other fetch modules share.

:func:`download` writes a transfer to ``<file>.part`` and renames it into place only after its size,
MD5 and SHA-256 (those that are known) match; a mismatch deletes the ``.part`` and nothing else.
A dropped connection is resumed with a ``Range`` request, guarded by ``If-Range`` with the ETag (or
Last-Modified date) of the first response, so bytes of an older version of the file are never glued
to a newer one; a server that ignores ``Range`` (answers 200) is read from the start. A file that is
already in place is checked, not downloaded again; one that fails the checks is never deleted: the
error says to move it away. The digests of a checked file are remembered in a hidden stamp beside it
(keyed by size and modification time), so large archives are hashed once, not on every run.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

from tqdm import tqdm

from audiotag.core.atomic import atomic_write_json, fsync_dir
from audiotag.core.errors import ConfigError, DataError
from audiotag.core.locks import file_lock
from audiotag.core.log import progress
from audiotag.fetch.network import require_network, urlopen

log = logging.getLogger(__name__)

USER_AGENT = "audiotag (python urllib)"
CHUNK = 1 << 20
TIMEOUT_S = 60.0
RETRIES = 3  # reconnections (resuming where the transfer stopped) before giving up
RETRY_WAIT_S = 2.0  # doubled after each failed attempt, at most 30 s
RETRYABLE_HTTP = (408, 425, 429, 500, 502, 503, 504)

HEX64 = re.compile(r"[0-9a-f]{64}")
HEX32 = re.compile(r"[0-9a-f]{32}")

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


def part_path(final: Path) -> Path:
    """Where the transfer of ``final`` is written until it is verified."""
    return final.with_name(final.name + ".part")


def _validator_path(part: Path) -> Path:
    return part.with_name(f".{part.name}.json")


def _discard_part(part: Path) -> None:
    part.unlink(missing_ok=True)
    _validator_path(part).unlink(missing_ok=True)


def progress_bar(total: int | None, desc: str, unit: str = "B", initial: int = 0) -> tqdm:
    """The progress bar every long step shows (hidden when stderr is not a terminal)."""
    scaled = unit == "B"
    return progress(
        total=total,
        initial=initial,
        unit=unit,
        unit_scale=scaled,
        unit_divisor=1024 if scaled else 1000,
        desc=desc,
    )


def check_free_space(folder: Path, needed: int, what: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise DataError(
            f"{what} needs {human_size(needed)} in {folder} but only {human_size(free)} is free; "
            "free some space or point the workspace elsewhere (AUDIOTAG_WORKSPACE)"
        )


@contextlib.contextmanager
def locked(lock_file: Path, waiting: str = "") -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file`` for the block (``audiotag.core.locks.file_lock``: it dies
    with its process and records its owner). Several processes (e.g. the ranks of one torchrun job)
    may ask for the same file at once: one does the work, the others wait and then find it done.
    ``waiting`` is logged, with the holder, when the lock is busy."""
    what = f"working on {lock_file.name.removeprefix('.').removesuffix('.lock')}"
    with file_lock(lock_file, what, waiting):
        yield


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
    with open(path, "rb") as f, progress_bar(path.stat().st_size, f"checking {path.name}") as bar:
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
        check_free_space(part.parent, max(size - have, 0), f"the download of {label}")
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
        return urlopen(request, timeout=TIMEOUT_S, what=f"downloading {label} from {url}", instead=hint)
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
        with open(part, mode) as out, progress_bar(total, label, initial=offset) as bar:
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
        if self.md5 is not None and not HEX32.fullmatch(self.md5):
            raise ConfigError(f"{self.filename}: md5 must be 32 lowercase hex digits, got {self.md5!r}")
        if self.sha256 is not None and not HEX64.fullmatch(self.sha256):
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

    ``offline`` (or ``AUDIOTAG_OFFLINE=1``) never opens a connection: a missing file is an error that
    names it and where to get it. ``retries``: reconnections after a dropped transfer (default
    ``RETRIES``).
    """
    dest_dir = Path(dest_dir)
    final = dest_dir / remote.filename
    if final.is_file():
        _check_existing(remote, final)
        return final
    if final.exists():
        raise DataError(f"{final} exists but is not a file; move it away and run again")
    require_network(
        f"{final} is missing: downloading it from {remote.url}",
        f"download it on a machine with internet access and put it at {final}",
        offline,
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


# --------------------------------------------------------------------------- stamps (splitzip / extract)


def file_id(path: Path) -> list[Any]:
    st = path.stat()
    return [path.name, st.st_size, st.st_mtime_ns]
