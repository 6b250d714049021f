"""Append-only JSON-lines files (the submission log): one record a line, safe against crashes and
concurrent writers."""

from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


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


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every record, oldest first; a torn last line (a crash mid-write) is skipped."""
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
