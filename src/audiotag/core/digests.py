"""SHA-256 of files and bytes: one definition for every record that pins a file's content
(fold files, checkpoints in ``done.json``, submissions in the log and the ensemble report)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from audiotag.core.errors import DataError

log = logging.getLogger(__name__)


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_fold_file(path: Path, done: Mapping[str, Any], key: str, remedy: str, unrecorded_ok: bool) -> None:
    """Check a finished fold's file against the ``{"size", "sha256"}`` its ``done.json`` recorded
    (``done[key]``); DataError naming the file when it is missing or differs. A done.json without the
    record (written by an older version) is accepted with a warning when ``unrecorded_ok``, else refused."""
    done_json = path.parent / "done.json"
    if not path.is_file():
        raise DataError(f"{path} is missing although {done_json} says the fold is done; {remedy}")
    record = done.get(key)
    if not isinstance(record, Mapping) or "sha256" not in record:
        if not unrecorded_ok:
            raise DataError(
                f"{done_json} records no size or SHA-256 of {path.name}, so {path} cannot be "
                f"trusted; {remedy}"
            )
        log.warning(
            "%s: done.json records no size or SHA-256 of %s (written by an older version); the weights "
            "are used unchecked",
            path.parent,
            path.name,
        )
        return
    size = path.stat().st_size
    if size != record.get("size"):
        problem = f"{size} bytes, done.json recorded {record.get('size')}"
    elif file_sha256(path) != record["sha256"]:
        problem = "its SHA-256 differs from the one done.json recorded"
    else:
        return
    raise DataError(f"{path} is corrupt or was replaced after the fold finished ({problem}); {remedy}")
