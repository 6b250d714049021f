"""Zenodo record listings, as :class:`~audiotag.fetch.http.RemoteFile` entries to download."""

from __future__ import annotations

import json
import logging
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from http.client import HTTPException
from typing import Any

from audiotag.core.errors import ConfigError, DataError
from audiotag.fetch import http, network
from audiotag.fetch.http import (
    HEX32,
    HEX64,
    RETRIES,
    RETRYABLE_HTTP,
    TIMEOUT_S,
    USER_AGENT,
    RemoteFile,
    human_size,
)

log = logging.getLogger(__name__)

ZENODO_API = "https://zenodo.org/api/records/"


def _get_json(url: str, what: str, retries: int = RETRIES) -> Any:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": "application/json"})
    for attempt in range(retries + 1):
        try:
            listing = f"reading the file list of {what}"
            with network.urlopen(request, timeout=TIMEOUT_S, what=listing) as response:
                body = response.read()
            break
        except urllib.error.HTTPError as exc:
            if exc.code in RETRYABLE_HTTP and attempt < retries:
                time.sleep(min(http.RETRY_WAIT_S * 2**attempt, 30.0))
                continue
            raise DataError(f"{what}: {url} answered HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError, HTTPException) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            if attempt < retries and not isinstance(reason, socket.gaierror):
                time.sleep(min(http.RETRY_WAIT_S * 2**attempt, 30.0))
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
    if algo in ("", "md5") and HEX32.fullmatch(digest):
        return digest, None
    if algo in ("sha256", "sha-256") and HEX64.fullmatch(digest):
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
