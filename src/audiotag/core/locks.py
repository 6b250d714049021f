"""Inter-process locks on files: an OS lock (POSIX ``flock``) that dies with its process.

The kernel releases a ``flock`` when the process that holds it exits, however it exits (SIGKILL
included), so a lock is never left stale. While held, the lock file records its owner (pid, host,
start time) as one JSON object, so another process can say whom it waits for or why it refuses.
A lock file is never deleted (deleting one that another process is about to lock would let two
processes hold "the" lock); it is emptied when released.

A ``flock`` belongs to the open file, which forked children share: a data-loader worker forked by a
training run holds the run's lock too, and outlives a parent killed by SIGKILL (or the OOM killer)
by a few seconds. Measured on an H100 machine: the rerun that followed at once was refused, naming
the dead process. So when the recorded owner has exited, the lock is waited for (up to
``HEIRS_WAIT_SECONDS``) instead of refused.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

try:
    import fcntl
except ImportError:  # not POSIX: no locking
    fcntl = None  # type: ignore[assignment]


HEIRS_WAIT_SECONDS = 60.0  # how long the children of a dead owner may keep its lock


class Busy(Exception):
    """The lock is held by another process; ``owner`` is what it recorded (may be empty)."""

    def __init__(self, path: Path, owner: dict[str, Any]) -> None:
        super().__init__(f"{path} is locked by {describe_owner(owner)}")
        self.path = path
        self.owner = owner


def read_owner(path: Path) -> dict[str, Any]:
    """The owner recorded in a lock file; {} when none is recorded (or the file is unreadable)."""
    try:
        data = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def describe_owner(owner: dict[str, Any]) -> str:
    if not owner:
        return "another process"
    gone = (
        "; that process has exited, but processes it started still hold the lock: stop them"
        if owner_is_gone(owner)
        else ""
    )
    return (
        f"process {owner.get('pid', '?')} on host {owner.get('host', '?')} "
        f"(started {owner.get('started', '?')}{', ' + str(owner['what']) if owner.get('what') else ''}{gone})"
    )


def owner_is_gone(owner: dict[str, Any]) -> bool:
    """Whether the recorded owner ran on this host and has exited (a zombie counts as exited)."""
    pid = owner.get("pid")
    if owner.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # e.g. another user's process: alive
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state == "Z"


def _wait_for_heirs(handle: IO[str], path: Path, owner: dict[str, Any], waiting: str) -> bool:
    """Take the lock once the dead owner's children let it go; False after ``HEIRS_WAIT_SECONDS``."""
    log.info(
        "%s: its owner, %s, has exited; waiting up to %.0f s for the processes it started (e.g. "
        "data-loader workers) to exit",
        waiting or f"{path} is locked",
        f"process {owner.get('pid')} ({owner.get('what') or 'no activity recorded'})",
        HEIRS_WAIT_SECONDS,
    )
    deadline = time.monotonic() + HEIRS_WAIT_SECONDS
    while time.monotonic() < deadline:
        time.sleep(0.1)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue
        return True
    return False


def _record_owner(handle: IO[str], what: str) -> dict[str, Any]:
    owner = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "what": what,
    }
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(owner) + "\n")
    handle.flush()
    return owner


def _release(handle: IO[str]) -> None:
    with contextlib.suppress(OSError):
        handle.seek(0)
        handle.truncate()
        handle.flush()
    fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def file_lock(path: Path, what: str = "", waiting: str = "", wait: bool = True) -> Iterator[dict[str, Any]]:
    """Hold an exclusive lock on ``path`` for the block; yield the owner the previous holder left.

    When another process holds it: with ``wait``, log ``waiting`` followed by that owner and block
    until it is released; without, raise ``Busy``. ``what`` is recorded as the owner's activity. The
    yielded dict is the owner record left by a holder that died without releasing (empty otherwise):
    its lock is gone with it, and the caller may mention it.
    """
    if fcntl is None:
        yield {}
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = read_owner(path)
            if owner_is_gone(owner) and _wait_for_heirs(handle, path, owner, waiting):
                pass
            elif not wait:
                raise Busy(path, owner) from None
            else:
                log.info(
                    "%s: held by %s; waiting for it", waiting or f"{path} is locked", describe_owner(owner)
                )
                fcntl.flock(handle, fcntl.LOCK_EX)
        left = read_owner(path)  # non-empty only when the previous holder died holding it
        _record_owner(handle, what)
        try:
            yield left
        finally:
            _release(handle)


@contextlib.contextmanager
def claim_folder(
    folder: Path, what: str, refusal: Callable[[str], Exception], lock_name: str = "owner.lock"
) -> Iterator[dict[str, Any]]:
    """Hold ``folder`` for this process (``folder/owner.lock``, created with the folder); yield the
    owner record a dead previous holder left. When another process holds it, raise
    ``refusal(description of that owner)``. Only taking the lock is guarded: a ``Busy`` raised by the
    block itself is not mistaken for this folder's."""
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        try:
            left = stack.enter_context(file_lock(folder / lock_name, what, wait=False))
        except Busy as busy:
            raise refusal(describe_owner(busy.owner)) from None
        yield left
