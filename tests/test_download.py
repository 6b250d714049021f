"""Data download: HTTP with resume and checks, Zenodo listings, split-zip joining, safe extraction, Kaggle.

Everything runs offline: downloads go to a local HTTP server on 127.0.0.1 (a thread) that supports
Range/If-Range and can drop a connection midway, ignore Range, serve a corrupted body, serve Zenodo
record JSON, and answer the Kaggle API's download call. Split archives are made with the system
``zip -s`` (tests skip where it is absent); the Kaggle client is replaced by fakes that raise the
client's real exception types, plus one test of the real client against the local server.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import sys
import types
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from audiotag.core.errors import ConfigError, DataError
from audiotag.fetch import extract as fetch_extract
from audiotag.fetch import http as fetch_http
from audiotag.fetch import kaggle as fetch_kaggle
from audiotag.fetch import splitzip as fetch_splitzip
from audiotag.fetch.extract import extract_zip
from audiotag.fetch.http import RemoteFile, download
from audiotag.fetch.kaggle import kaggle_download
from audiotag.fetch.splitzip import join_split_zip
from audiotag.fetch.zenodo import zenodo_files
from tests.http_fakes import running_server, serve_bytes

PAYLOAD = np.random.default_rng(1).integers(0, 256, 200_000, dtype=np.uint8).tobytes()
OTHER = np.random.default_rng(2).integers(0, 256, 50_000, dtype=np.uint8).tobytes()
SECRET = "FAKEKEY-0123456789abcdef"  # a fake Kaggle key that must never surface


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def visible(folder: Path) -> list[str]:
    """Entries other than the hidden lock, stamp and validator files."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.exists() else []


# --------------------------------------------------------------------------- the local server


@dataclass
class ServerState:
    files: dict[str, bytes] = field(default_factory=lambda: {"a.bin": PAYLOAD, "b.bin": OTHER})
    json: dict[str, Any] = field(default_factory=dict)  # path -> JSON body
    drop_after: int | None = None  # the next file response sends this many body bytes, then closes
    ignore_range: bool = False
    corrupt: bool = False  # flip one byte of every file served
    etag: bool = True
    kaggle: tuple[int, str] | None = None  # answer to the Kaggle API call: (status, zip name or message)
    log: list[tuple[str, str, str | None, str | None]] = field(
        default_factory=list
    )  # method, path, Range, If-Range

    def etag_of(self, data: bytes) -> str:
        return f'"{sha256(data)[:16]}"'


class Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    @property
    def state(self) -> ServerState:
        return self.server.state  # type: ignore[attr-defined]

    def _send_json(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # the Kaggle API (real-client test)
        state = self.state
        state.log.append(("POST", self.path, None, None))
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, what = state.kaggle or (404, "not configured")
        if status == 302:
            self.send_response(302)
            self.send_header("Location", f"/files/{what}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._send_json(status, {"code": status, "message": what})

    def do_GET(self) -> None:
        state = self.state
        path = self.path.split("?")[0]
        state.log.append(("GET", path, self.headers.get("Range"), self.headers.get("If-Range")))
        if path in state.json:
            self._send_json(200, state.json[path])
            return
        match = re.fullmatch(r"/files/(.+)|/api/records/\d+/files/(.+)/content", path)
        name = next((g for g in match.groups() if g), None) if match else None
        if name is None or name not in state.files:
            self._send_json(404, {"status": 404, "message": "not found"})
            return
        data = state.files[name]
        if state.corrupt:
            data = data[:1000] + bytes([data[1000] ^ 0xFF]) + data[1001:]
        etag = state.etag_of(data)
        if_range = self.headers.get("If-Range")
        headers = {"Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT", **({"ETag": etag} if state.etag else {})}
        cut, state.drop_after = state.drop_after, None
        honour = not state.ignore_range and (if_range is None or if_range == etag)
        serve_bytes(self, data, honour, headers, drop_after=cut)


@dataclass
class Server:
    state: ServerState
    base: str

    def url(self, name: str) -> str:
        return f"{self.base}/files/{name}"

    def gets(self) -> list[tuple[str, str, str | None, str | None]]:
        return [r for r in self.state.log if r[0] == "GET"]


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv("AUDIOTAG_OFFLINE", raising=False)
    monkeypatch.setattr(fetch_http, "RETRY_WAIT_S", 0.0)  # zenodo reads it here too
    state = ServerState()
    with running_server(Handler, state) as url:
        yield Server(state, url)


def remote(server: Server, name: str = "a.bin", data: bytes = PAYLOAD, **kwargs: Any) -> RemoteFile:
    fields: dict[str, Any] = {"size": len(data), "md5": md5(data), "sha256": sha256(data)}
    fields.update(kwargs)
    return RemoteFile(url=server.url(name), filename=name, **fields)


# --------------------------------------------------------------------------- download


def test_download_verifies_and_existing_good_file_is_not_fetched_again(
    server: Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = download(remote(server), tmp_path)
    assert path == tmp_path / "a.bin" and path.read_bytes() == PAYLOAD
    assert visible(tmp_path) == ["a.bin"] and len(server.gets()) == 1
    with caplog.at_level(logging.INFO, logger="audiotag"):
        assert download(remote(server), tmp_path) == path
    assert len(server.gets()) == 1 and "already downloaded" in caplog.text


def test_dropped_connection_is_retried_within_one_call(server: Server, tmp_path: Path) -> None:
    server.state.drop_after = 70_000
    assert download(remote(server), tmp_path, retries=1).read_bytes() == PAYLOAD
    etag = server.state.etag_of(PAYLOAD)
    assert [(r[2], r[3]) for r in server.gets()] == [(None, None), ("bytes=70000-", etag)]


def test_interrupted_transfer_resumes_on_the_next_call_and_verifies(server: Server, tmp_path: Path) -> None:
    server.state.drop_after = 70_000
    with pytest.raises(DataError, match="Run the same command again to resume") as err:
        download(remote(server), tmp_path, retries=0)
    assert "a.bin" in str(err.value) and server.url("a.bin") in str(err.value)
    part = tmp_path / "a.bin.part"
    assert part.read_bytes() == PAYLOAD[:70_000] and not (tmp_path / "a.bin").exists()
    assert download(remote(server), tmp_path, retries=0).read_bytes() == PAYLOAD
    assert server.gets()[-1][2] == "bytes=70000-" and not part.exists()
    assert visible(tmp_path) == ["a.bin"]


def test_changed_file_on_the_server_restarts_instead_of_resuming(server: Server, tmp_path: Path) -> None:
    # no checksums known: only If-Range keeps old bytes from being glued to the new version
    server.state.drop_after = 70_000
    with pytest.raises(DataError):
        download(remote(server, size=None, md5=None, sha256=None), tmp_path, retries=0)
    new = PAYLOAD[::-1]
    server.state.files["a.bin"] = new
    assert download(remote(server, size=None, md5=None, sha256=None), tmp_path).read_bytes() == new
    assert server.gets()[-1][2:] == ("bytes=70000-", server.state.etag_of(PAYLOAD))


def test_server_ignoring_range_restarts_from_zero(server: Server, tmp_path: Path) -> None:
    server.state.ignore_range = True
    (tmp_path / "a.bin.part").write_bytes(b"x" * 1000)  # stale bytes that must not survive
    assert download(remote(server), tmp_path).read_bytes() == PAYLOAD
    assert [r[2] for r in server.gets()] == ["bytes=1000-"]


def test_complete_part_is_accepted_after_416(server: Server, tmp_path: Path) -> None:
    (tmp_path / "a.bin.part").write_bytes(PAYLOAD)  # killed after the last byte, before the rename
    assert download(remote(server, size=None), tmp_path).read_bytes() == PAYLOAD
    assert [r[2] for r in server.gets()] == [f"bytes={len(PAYLOAD)}-"]


def test_corrupted_download_is_refused_and_only_its_part_removed(server: Server, tmp_path: Path) -> None:
    good = download(remote(server), tmp_path)
    server.state.corrupt = True
    with pytest.raises(DataError) as err:
        download(remote(server, "b.bin", OTHER), tmp_path)
    message = str(err.value)
    bad = OTHER[:1000] + bytes([OTHER[1000] ^ 0xFF]) + OTHER[1001:]
    assert "b.bin" in message and md5(OTHER) in message and md5(bad) in message and "deleted" in message
    assert not (tmp_path / "b.bin.part").exists() and not (tmp_path / "b.bin").exists()
    assert good.read_bytes() == PAYLOAD and visible(tmp_path) == ["a.bin"]


def test_accept_part_keeps_the_existing_file_on_mismatch(tmp_path: Path) -> None:
    final, part = tmp_path / "a.bin", tmp_path / "a.bin.part"
    final.write_bytes(PAYLOAD)
    part.write_bytes(OTHER)
    with pytest.raises(DataError, match="left as it was"):
        fetch_http.accept_part(part, final, fetch_http.Expected(sha256=sha256(PAYLOAD)), url="http://x/a.bin")
    assert final.read_bytes() == PAYLOAD and not part.exists()


def test_size_mismatch_is_refused(server: Server, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"serves {len(PAYLOAD)} bytes, expected {len(PAYLOAD) + 1}"):
        download(remote(server, size=len(PAYLOAD) + 1), tmp_path)
    assert visible(tmp_path) == [] and not (tmp_path / "a.bin.part").exists()


def test_existing_file_that_fails_the_checks_is_kept(server: Server, tmp_path: Path) -> None:
    final = tmp_path / "a.bin"
    final.write_bytes(PAYLOAD[:-1] + b"\x00")
    with pytest.raises(DataError, match="move it away") as err:
        download(remote(server), tmp_path)
    assert md5(PAYLOAD) in str(err.value) and str(final) in str(err.value)
    assert final.read_bytes() == PAYLOAD[:-1] + b"\x00" and server.gets() == []
    final.write_bytes(PAYLOAD[:-1])
    with pytest.raises(DataError, match=f"size is {len(PAYLOAD) - 1}, expected {len(PAYLOAD)}"):
        download(remote(server), tmp_path)
    assert final.exists()


def test_checked_file_is_not_hashed_again(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    download(remote(server), tmp_path)

    def no_hashing(*args: object, **kwargs: object) -> None:
        raise AssertionError("hashed again")

    monkeypatch.setattr(fetch_http, "file_digests", no_hashing)
    download(remote(server), tmp_path)  # the stamp beside it holds the digests
    os.utime(tmp_path / "a.bin", ns=(1, 1))  # touched: the stamp no longer applies
    with pytest.raises(AssertionError, match="hashed again"):
        download(remote(server), tmp_path)


def test_offline_mode_never_connects(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("offline mode opened a connection")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(DataError, match="offline") as err:
        download(remote(server), tmp_path, offline=True)
    assert str(tmp_path / "a.bin") in str(err.value) and server.url("a.bin") in str(err.value)
    monkeypatch.setenv("AUDIOTAG_OFFLINE", "1")
    with pytest.raises(DataError, match="offline"):
        download(remote(server), tmp_path)
    (tmp_path / "a.bin").write_bytes(PAYLOAD)  # a file in place is checked and used offline
    assert download(remote(server), tmp_path) == tmp_path / "a.bin"
    assert server.state.log == []


def test_http_error_names_the_url(server: Server, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="HTTP 404") as err:
        download(RemoteFile(server.url("gone.bin"), "gone.bin"), tmp_path)
    assert server.url("gone.bin") in str(err.value)
    assert visible(tmp_path) == []


def test_remote_file_refuses_bad_values() -> None:
    with pytest.raises(ConfigError, match="md5"):
        RemoteFile("http://x/a", "a", md5="XYZ")
    with pytest.raises(ConfigError, match="relative path"):
        RemoteFile("http://x/a", "../a")


# --------------------------------------------------------------------------- Zenodo


def zenodo_record(shape: str, base: str) -> dict[str, Any]:
    files = [("a.bin", PAYLOAD), ("b.bin", OTHER)]
    if shape == "legacy":  # before October 2023
        entries: Any = [
            {"key": n, "size": len(d), "checksum": f"md5:{md5(d)}", "links": {"self": f"{base}/files/{n}"}}
            for n, d in files
        ]
    elif shape == "transition":  # October 2023: filename/filesize, bare MD5, a 'self' link that 404s
        entries = [
            {
                "id": f"uuid-{i}",
                "filename": n,
                "filesize": len(d),
                "checksum": md5(d),
                "links": {"self": f"{base}/api/records/42/files/uuid-{i}"},
            }
            for i, (n, d) in enumerate(files)
        ]
    elif shape == "current":  # key/size/'md5:' with links.self ending in /content
        entries = [
            {
                "id": f"uuid-{i}",
                "key": n,
                "size": len(d),
                "checksum": f"md5:{md5(d)}",
                "links": {"self": f"{base}/api/records/42/files/{n}/content"},
            }
            for i, (n, d) in enumerate(files)
        ]
    else:  # InvenioRDM: files.entries keyed by name, links.self (metadata) and links.content
        entries = {
            "enabled": True,
            "entries": {
                n: {
                    "key": n,
                    "size": len(d),
                    "checksum": f"md5:{md5(d)}",
                    "links": {"self": f"{base}/api/records/42/files/{n}", "content": f"{base}/files/{n}"},
                }
                for n, d in files
            },
        }
    return {"id": 42, "metadata": {"title": "test"}, "files": entries}


@pytest.mark.parametrize("shape", ["legacy", "transition", "current", "inveniordm"])
def test_zenodo_record_listing(server: Server, tmp_path: Path, shape: str) -> None:
    server.state.json["/api/records/42"] = zenodo_record(shape, server.base)
    listed = zenodo_files(42, api_base=f"{server.base}/api/records/")
    assert [(f.filename, f.size, f.md5) for f in listed] == [
        ("a.bin", len(PAYLOAD), md5(PAYLOAD)),
        ("b.bin", len(OTHER), md5(OTHER)),
    ]
    if shape == "transition":  # the broken uuid link is not used
        assert listed[0].url == f"{server.base}/api/records/42/files/a.bin/content"
    for item, data in zip(listed, (PAYLOAD, OTHER), strict=True):
        assert download(item, tmp_path).read_bytes() == data


def test_zenodo_errors_name_the_record(server: Server) -> None:
    with pytest.raises(DataError, match=r"Zenodo record 7: .*HTTP 404"):
        zenodo_files("7", api_base=f"{server.base}/api/records")
    server.state.json["/api/records/8"] = {"id": 8, "files": None}
    with pytest.raises(DataError, match=r"Zenodo record 8: .*lists no files"):
        zenodo_files(8, api_base=f"{server.base}/api/records/")
    with pytest.raises(ConfigError, match="number"):
        zenodo_files("abc")


# --------------------------------------------------------------------------- split zips

ZIP = shutil.which("zip")
needs_zip = pytest.mark.skipif(ZIP is None, reason="the zip command is not installed")


def source_tree(root: Path) -> dict[str, bytes]:
    rng = np.random.default_rng(3)
    files = {
        "d/a.bin": rng.integers(0, 256, 70_000, dtype=np.uint8).tobytes(),
        "d/b.txt": b"hello world\n" * 20_000,
        "d/sub/c.bin": rng.integers(0, 256, 90_000, dtype=np.uint8).tobytes(),
        "d/sub/e.txt": b"tiny",
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def make_split(tmp_path: Path, split: str) -> tuple[list[Path], dict[str, bytes]]:
    src = tmp_path / "src"
    files = source_tree(src)
    subprocess.run([ZIP, "-q", "-r", "-s", split, "x.zip", "d"], cwd=src, check=True)  # type: ignore[list-item]
    parts = [*sorted(src.glob("x.z[0-9]*")), src / "x.zip"]
    return parts, files


def assert_same(archive: Path, files: dict[str, bytes]) -> None:
    with zipfile.ZipFile(archive) as zf:
        assert zf.testzip() is None
        got = {i.filename: zf.read(i) for i in zf.infolist() if not i.is_dir()}
    assert got == files


@needs_zip
@pytest.mark.parametrize(("split", "n_parts"), [("64k", 3), ("128k", 2)])
def test_join_split_zip_equals_the_original(
    tmp_path: Path, split: str, n_parts: int, caplog: pytest.LogCaptureFixture
) -> None:
    parts, files = make_split(tmp_path, split)
    assert len(parts) == n_parts and parts[0].read_bytes()[:4] == b"PK\x07\x08"
    out = join_split_zip(list(reversed(parts)), tmp_path / "joined.zip", verify_crc=True)
    assert_same(out, files)
    assert visible(tmp_path) == ["joined.zip", "src"]
    with caplog.at_level(logging.INFO, logger="audiotag"):
        assert join_split_zip(parts, out) == out
    assert "already joined" in caplog.text
    # byte for byte what Info-ZIP's own `zip -s 0` writes
    ref = tmp_path / "ref.zip"
    subprocess.run([ZIP, "-q", "-s", "0", "x.zip", "--out", str(ref)], cwd=parts[0].parent, check=True)  # type: ignore[list-item]
    assert out.read_bytes() == ref.read_bytes()


@needs_zip
def test_join_with_zip64_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # archives over 4 GiB need Zip64 offsets; force them on a small one and let zipfile read it back
    parts, files = make_split(tmp_path, "64k")
    monkeypatch.setattr(fetch_splitzip, "ZIP64_LIMIT", 0)
    out = join_split_zip(parts, tmp_path / "joined.zip", verify_crc=True)
    raw = out.read_bytes()
    assert b"PK\x06\x06" in raw and b"PK\x06\x07" in raw
    assert_same(out, files)
    extract_zip(out, tmp_path / "x")
    assert (tmp_path / "x" / "d" / "sub" / "c.bin").read_bytes() == files["d/sub/c.bin"]


@needs_zip
def test_join_names_a_missing_part(tmp_path: Path) -> None:
    parts, _ = make_split(tmp_path, "64k")
    with pytest.raises(DataError, match=r"x\.z02") as err:
        join_split_zip([parts[0], parts[2]], tmp_path / "joined.zip")
    assert "missing" in str(err.value)
    with pytest.raises(DataError, match=r"x\.zip .*missing"):
        join_split_zip(parts[:2], tmp_path / "joined.zip")
    parts[1].unlink()
    with pytest.raises(DataError, match=r"x\.z02"):
        join_split_zip(parts, tmp_path / "joined.zip")
    assert not (tmp_path / "joined.zip").exists()


@needs_zip
@pytest.mark.parametrize("which", [0, 1, 2])
def test_join_names_a_truncated_part(tmp_path: Path, which: int) -> None:
    parts, _ = make_split(tmp_path, "64k")
    data = parts[which].read_bytes()
    parts[which].write_bytes(data[:-100] if which < 2 else data[:-30])
    with pytest.raises(DataError, match=re.escape(parts[which].name)) as err:
        join_split_zip(parts, tmp_path / "joined.zip")
    assert "download it again" in str(err.value)
    assert visible(tmp_path) == ["src"]


@needs_zip
def test_join_names_the_entry_of_a_corrupted_part(tmp_path: Path) -> None:
    parts, _ = make_split(tmp_path, "64k")
    data = bytearray(parts[1].read_bytes())
    data[30_000] ^= 0xFF  # same length, one bad byte in d/b.txt's or d/sub/c.bin's data
    parts[1].write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"corrupted .*x\.z0[12]"):
        join_split_zip(parts, tmp_path / "joined.zip", verify_crc=True)
    assert not (tmp_path / "joined.zip").exists()
    out = join_split_zip(parts, tmp_path / "joined.zip")  # the layout is fine: only CRCs tell
    with pytest.raises(DataError, match=r"entry 'd/.*' is corrupted"):
        extract_zip(out, tmp_path / "x")
    assert visible(tmp_path / "x") == []


# --------------------------------------------------------------------------- extraction


def write_zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def test_extract_zip_then_skip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entries = {"train.csv": b"fname,label\n", "audio/a.wav": PAYLOAD, "audio/deep/b.wav": OTHER}
    archive = write_zip(tmp_path / "data.zip", entries)
    dest = tmp_path / "raw"
    got = extract_zip(archive, dest)
    assert sorted(got) == sorted(dest / n for n in entries)
    assert all((dest / n).read_bytes() == d for n, d in entries.items())
    assert visible(dest) == ["audio", "train.csv"]
    assert not list(dest.glob(".data.zip.extracting-*"))

    def must_not_run(*args: object) -> None:
        raise AssertionError("extracted again")

    monkeypatch.setattr(fetch_extract, "_extract_all", must_not_run)
    assert sorted(extract_zip(archive, dest)) == sorted(got)
    (dest / "audio" / "a.wav").unlink()  # a file gone: extract again
    with pytest.raises(AssertionError, match="extracted again"):
        extract_zip(archive, dest)


def test_extract_selected_members_then_all(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "data.zip", {"a.txt": b"a", "b/c.txt": b"c"})
    dest = tmp_path / "raw"
    assert extract_zip(archive, dest, members=["b/c.txt"]) == [dest / "b" / "c.txt"]
    assert visible(dest) == ["b"]
    assert sorted(extract_zip(archive, dest)) == [dest / "a.txt", dest / "b" / "c.txt"]  # merged into b/
    with pytest.raises(DataError, match=r"no entry 'nope\.txt'"):
        extract_zip(archive, dest, members=["nope.txt"])


def symlink_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize(
    "bad", ["../evil.txt", "/abs.txt", "d/../../evil.txt", "..\\evil.txt", "C:/x.txt", "symlink"]
)
def test_malicious_entries_are_refused_before_anything_is_written(tmp_path: Path, bad: str) -> None:
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok.txt", b"harmless, and listed first")
        if bad == "symlink":
            zf.writestr(symlink_info("link"), "/etc/passwd")
        else:
            zf.writestr(zipfile.ZipInfo(bad), b"evil")
    dest = tmp_path / "deep" / "raw"
    with pytest.raises(DataError, match="refusing to extract entry") as err:
        extract_zip(archive, dest)
    assert repr("link" if bad == "symlink" else bad) in str(err.value)
    assert not dest.exists()  # not even the folder
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["bad.zip"]


def test_corrupted_entry_leaves_no_half_extraction(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "data.zip", {"a/one.bin": PAYLOAD, "a/two.bin": OTHER})
    raw = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo("a/two.bin")
    raw[info.header_offset + 30 + len("a/two.bin") + 100] ^= 0xFF  # inside two.bin's compressed data
    archive.write_bytes(bytes(raw))
    dest = tmp_path / "raw"
    with pytest.raises(DataError, match=r"'a/two\.bin' is corrupted"):
        extract_zip(archive, dest)
    assert os.listdir(dest) == [".data.zip.extract.lock"]  # no a/ with one file in it, no temp folder


def test_not_a_zip_is_reported(tmp_path: Path) -> None:
    (tmp_path / "x.zip").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable zip"):
        extract_zip(tmp_path / "x.zip", tmp_path / "out")
    with pytest.raises(DataError, match="does not exist"):
        extract_zip(tmp_path / "y.zip", tmp_path / "out")


# --------------------------------------------------------------------------- Kaggle

SLUG = "freesound-audio-tagging"


def http_error(status: int) -> Exception:
    """The exception the real client raises (requests.HTTPError with a response)."""
    requests = pytest.importorskip("requests")
    response = requests.Response()
    response.status_code = status
    response.url = "https://api.kaggle.com/v1/competitions.CompetitionApiService/DownloadDataFiles"
    # a leaky message, as if a library put the key in it: our error must not repeat it
    return requests.HTTPError(f"{status} Client Error for key {SECRET}", response=response)


class FakeKaggleApi:
    """Stands in for kaggle.api.kaggle_api_extended.KaggleApi."""

    def __init__(self, *, credentials: bool = True, error: Exception | None = None) -> None:
        self.credentials, self.error = credentials, error
        self.config_values: dict[str, str] = {}
        self.calls: list[tuple[str, str, bool]] = []

    def authenticate(self) -> None:
        if not self.credentials:
            print("Authentication required to call the Kaggle API. ... export KAGGLE_API_TOKEN=xxxx")
            raise SystemExit(1)
        self.config_values = {"username": "alice", "key": SECRET}

    def competition_download_files(
        self, competition: str, path: str | None = None, force: bool = False, quiet: bool = True
    ) -> None:
        assert path is not None
        self.calls.append((competition, path, force))
        if self.error is not None:
            raise self.error
        write_zip(
            Path(path) / f"{competition}.zip", {"train.csv": b"fname,label\n", "audio_train/a.wav": b"RIFF"}
        )


@pytest.fixture
def kaggle_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No real credentials anywhere: HOME and the Kaggle config folder point at empty folders."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(home / ".kaggle"))
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_API_ENVIRONMENT", "VERBOSE"):
        monkeypatch.delenv(var, raising=False)
    return home


def test_kaggle_download_fetches_extracts_and_then_skips(kaggle_env: Path, tmp_path: Path) -> None:
    api = FakeKaggleApi()
    dest = tmp_path / "raw"
    assert kaggle_download(SLUG, dest, api_factory=lambda: api) == dest
    assert api.calls == [(SLUG, str(dest / f".kaggle-{SLUG}"), False)]
    assert visible(dest) == ["audio_train", f"{SLUG}.zip", "train.csv"]
    assert (dest / "audio_train" / "a.wav").read_bytes() == b"RIFF"

    def no_client() -> None:
        raise AssertionError("the client was started again")

    assert kaggle_download(SLUG, dest, api_factory=no_client) == dest


def test_kaggle_missing_credentials(
    kaggle_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(DataError) as err:
        kaggle_download(SLUG, tmp_path / "raw", api_factory=lambda: FakeKaggleApi(credentials=False))
    message = str(err.value)
    assert "\n" not in message and message.startswith("no Kaggle credentials found")
    for hint in (
        "kaggle.com/settings",
        "~/.kaggle/kaggle.json",
        "chmod 600",
        "KAGGLE_USERNAME",
        "KAGGLE_KEY",
    ):
        assert hint in message
    assert "KAGGLE_API_TOKEN" in message
    assert "Authentication required" not in capsys.readouterr().out  # the client's own help is swallowed
    assert visible(tmp_path / "raw") == []


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (401, "wrong or expired"),
        (403, f"open https://www.kaggle.com/competitions/{SLUG}/rules"),
        (404, f"no competition '{SLUG}'"),
        (429, "wait and run again"),
        (500, "try again later"),
    ],
)
def test_kaggle_http_errors_say_what_to_do_without_the_key(
    kaggle_env: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    status: int,
    expected: str,
) -> None:
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    monkeypatch.setenv("KAGGLE_KEY", SECRET)
    api = FakeKaggleApi(error=http_error(status))
    with caplog.at_level(logging.DEBUG), pytest.raises(DataError) as err:
        kaggle_download(SLUG, tmp_path / "raw", api_factory=lambda: api)
    message = str(err.value)
    assert expected in message and f"HTTP {status}" in message and "\n" not in message
    out, errs = capsys.readouterr()
    for text in (message, caplog.text, out, errs):
        assert SECRET not in text
    if status == 403:
        assert "accept" in message
    if status == 401:
        assert "KAGGLE_KEY" in message and "kaggle.com/settings" in message


def test_kaggle_unexpected_error_is_redacted(kaggle_env: Path, tmp_path: Path) -> None:
    api = FakeKaggleApi(error=ValueError(f"something odd with {SECRET}"))
    with pytest.raises(DataError, match="ValueError") as err:
        kaggle_download(SLUG, tmp_path / "raw", api_factory=lambda: api)
    assert SECRET not in str(err.value) and "***" in str(err.value)


class FlakyKaggleApi(FakeKaggleApi):
    """Signing in fails with ``auth_error`` (the network, or an HTTP status other than 401)."""

    def __init__(self, auth_error: Exception) -> None:
        super().__init__()
        self.auth_error = auth_error

    def authenticate(self) -> None:
        raise self.auth_error


@pytest.mark.parametrize(
    ("api", "expected"),
    [
        (FakeKaggleApi(error=ConnectionError("no route")), "cannot reach Kaggle to download the data of"),
        (FlakyKaggleApi(ConnectionError("no route")), "cannot reach Kaggle to check the credentials"),
    ],
)
def test_kaggle_network_errors_offer_the_manual_download(
    kaggle_env: Path, tmp_path: Path, api: FakeKaggleApi, expected: str
) -> None:
    dest = tmp_path / "raw"
    with pytest.raises(DataError) as err:
        kaggle_download(SLUG, dest, api_factory=lambda: api)
    message = str(err.value)
    assert expected in message and "ConnectionError" in message and "check the network" in message
    assert f"by hand from https://www.kaggle.com/competitions/{SLUG}/data into {dest}" in message


def test_kaggle_http_error_while_signing_in_is_not_a_credentials_error(
    kaggle_env: Path, tmp_path: Path
) -> None:
    with pytest.raises(DataError) as err:
        kaggle_download(SLUG, tmp_path / "raw", api_factory=lambda: FlakyKaggleApi(http_error(503)))
    message = str(err.value)
    assert "HTTP 503 while signing in" in message and "credentials" not in message
    assert SECRET not in message


def test_kaggle_client_not_installed_or_failing_at_import(
    kaggle_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "raw"
    monkeypatch.setitem(sys.modules, "kaggle.api.kaggle_api_extended", None)  # the import fails
    with pytest.raises(DataError) as err:
        kaggle_download(SLUG, dest)
    message = str(err.value)
    assert "the Kaggle client is not installed" in message and "pip install kaggle six" in message
    assert f"by hand from https://www.kaggle.com/competitions/{SLUG}/data into {dest}" in message

    def exits(name: str) -> Any:  # kaggle < 2: the import-time sign-in prints its help and exits
        print("Could not find kaggle.json. Make sure it's located in ...")
        raise SystemExit(1)

    broken = types.ModuleType("kaggle.api.kaggle_api_extended")
    broken.__getattr__ = exits  # type: ignore[method-assign]
    monkeypatch.setitem(sys.modules, "kaggle.api.kaggle_api_extended", broken)
    with pytest.raises(DataError) as err:
        kaggle_download(SLUG, dest)
    message = str(err.value)
    assert "the Kaggle client failed to start (SystemExit)" in message
    for hint in ("kaggle.com/settings", "~/.kaggle/kaggle.json", "chmod 600", "KAGGLE_USERNAME"):
        assert hint in message
    assert "Could not find kaggle.json" not in capsys.readouterr().out  # the client's output is discarded


def test_kaggle_module_hook(kaggle_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch_kaggle, "KAGGLE_API_FACTORY", lambda: FakeKaggleApi(credentials=False))
    with pytest.raises(DataError, match="no Kaggle credentials"):
        kaggle_download(SLUG, tmp_path / "raw")
    with pytest.raises(ConfigError, match="slug"):
        kaggle_download("../x", tmp_path / "raw")


@pytest.fixture
def real_kaggle(kaggle_env: Path, server: Server, monkeypatch: pytest.MonkeyPatch) -> type:
    """The real client class, with its endpoint moved to the local server and no credentials."""
    pytest.importorskip("kagglesdk")
    api_class = fetch_kaggle.client_class()
    from kagglesdk import kaggle_env as env_module

    monkeypatch.setitem(env_module._env_to_endpoint, env_module.KaggleEnv.PROD, server.base)
    config_dir = kaggle_env / ".kaggle"
    monkeypatch.setattr(api_class, "config_dir", str(config_dir))
    monkeypatch.setattr(api_class, "config", str(config_dir / "kaggle.json"))
    monkeypatch.setattr(api_class, "args", [])
    return api_class


def test_real_kaggle_client_against_the_local_server(
    real_kaggle: type,
    server: Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(DataError, match="no Kaggle credentials found"):
        kaggle_download(SLUG, tmp_path / "raw", api_factory=real_kaggle)
    assert server.state.log == []  # nothing to send without credentials

    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    monkeypatch.setenv("KAGGLE_KEY", SECRET)
    server.state.kaggle = (
        403,
        "You must accept this competition's rules before you'll be able to download files.",
    )
    with caplog.at_level(logging.DEBUG), pytest.raises(DataError, match=f"competitions/{SLUG}/rules"):
        kaggle_download(SLUG, tmp_path / "raw", api_factory=real_kaggle)
    assert server.state.log[-1][:2] == ("POST", "/v1/competitions.CompetitionApiService/DownloadDataFiles")

    archive = io.BytesIO()
    write_zip(tmp_path / "served.zip", {"train.csv": b"fname,label\n", "audio_test/x.wav": b"RIFF"})
    archive.write((tmp_path / "served.zip").read_bytes())
    server.state.files[f"{SLUG}.zip"] = archive.getvalue()
    server.state.kaggle = (302, f"{SLUG}.zip")
    dest = kaggle_download(SLUG, tmp_path / "raw", api_factory=real_kaggle)
    assert (dest / "audio_test" / "x.wav").read_bytes() == b"RIFF" and (dest / f"{SLUG}.zip").is_file()
    out, errs = capsys.readouterr()
    for text in (caplog.text, out, errs):
        assert SECRET not in text
