"""Atomic file writes: write to a temporary file in the same folder, then rename.

A killed process leaves either the old file or the new one, never half of one. The file gets the
mode a plain ``open(target, "w")`` gives a new file, ``0o666`` less the umask (``0o644`` under the usual
``0o022``), not the ``0o600`` of the temporary file ``mkstemp`` makes, which would hide submissions,
reports, checkpoints and packages from the other users of a shared machine. (A file left ``0o600`` by
an earlier version gets the plain mode when it is written again.)

The temporary file's name carries its writer (a hash of the host name and the process id): a write of
the same target removes the temporary files of writers on this host that are gone (a SIGKILL mid-write
leaves one; a checkpoint's can be hundreds of MB), never those of a live process or another machine
sharing the folder.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from audiotag.core.errors import DataError


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` if the block succeeds.

    ``suffix`` keeps an extension on the temporary name for writers that infer the format from it.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.name}.{writer_tag()}.", suffix=suffix + ".tmp", dir=target.parent
    )
    try:
        os.fchmod(fd, plain_mode())
    finally:
        os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, target)
        fsync_dir(target.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def _host_id() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def writer_tag(pid: int | None = None) -> str:
    """``<host hash>-<pid>``: who writes a temporary file (no dots, so the name parses back)."""
    return f"{_host_id()}-{os.getpid() if pid is None else pid}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temps(target: Path) -> list[Path]:
    """Remove the temporary files of ``target`` whose writer ran on this host and is gone; return them.

    Names of an earlier version (no writer tag) and of other hosts are left alone: whether their
    writer still runs cannot be told from here."""
    prefix = f".{target.name}."
    host = _host_id()
    removed = []
    for path in target.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        tag = path.name[len(prefix) :].split(".", 1)[0]
        tag_host, _, pid = tag.partition("-")
        if tag_host != host or not pid.isdigit() or _alive(int(pid)):  # this process is alive too
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: set and restore (the only portable way to read it)
    os.umask(mask)
    return mask


def plain_mode() -> int:
    """The permission bits ``open(path, "w")`` gives a new file: 0o666 less the umask."""
    return 0o666 & ~current_umask()


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_json(target: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(target, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when the file is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable (best effort: not every filesystem allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def load_json_object(path: Path, remedy: str) -> dict[str, Any]:
    """The JSON object in ``path``, which must be there; a DataError naming the file, what is wrong with
    it (missing, unreadable, cut short, not an object) and ``remedy`` (what to do) otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: not found; {remedy}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc}); {remedy}") from None
    except ValueError as exc:  # JSONDecodeError (a file cut short) and UnicodeDecodeError
        raise DataError(f"{path}: damaged, not valid JSON ({exc}); {remedy}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: damaged, a JSON {type(data).__name__} where an object belongs; {remedy}")
    return data
