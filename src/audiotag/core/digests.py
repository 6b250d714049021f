"""SHA-256 of files and bytes: one definition for every record that pins a file's content
(fold files, checkpoints in ``done.json``, submissions in the log and the ensemble report)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from audiotag.core.errors import DataError


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_recorded_file(path: Path, record: Mapping[str, Any], remedy: str) -> None:
    """Raise DataError naming ``path`` when its size or SHA-256 differs from ``record`` (the
    ``{"size", "sha256"}`` a ``done.json`` wrote when the fold finished)."""
    size = path.stat().st_size
    if size != record.get("size"):
        problem = f"{size} bytes, done.json recorded {record.get('size')}"
    elif file_sha256(path) != record["sha256"]:
        problem = "its SHA-256 differs from the one done.json recorded"
    else:
        return
    raise DataError(f"{path} is corrupt or was replaced after the fold finished ({problem}); {remedy}")
