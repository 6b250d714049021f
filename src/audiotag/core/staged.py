"""A staged append store: a folder built by appending to files, resumable, published whole.

The folder ``final`` is built in ``<final>.partial/`` under an OS file lock (``<final>.lock``), so two
processes never build it at once. Its files only grow; now and then they are fsync'ed and then
``progress.json`` records how far they are good (``StagedWriter.record_progress``), so a killed build
resumes from the last record: the files are cut back to it and the store's owner checks the prefix
kept (a verified prefix) before appending the rest. When complete, the manifest is written and the
staging folder is renamed onto ``final`` in one step (``publish``): a reader sees the old folder or
the whole new one, never half of one. The feature cache (``data/cache_build.py``) and the embedding
cache (``models/embedding_cache.py``) are such stores.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from audiotag.core.atomic import atomic_write_json, read_json_object
from audiotag.core.locks import file_lock

log = logging.getLogger(__name__)

PROGRESS = "progress.json"
MANIFEST = "manifest.json"


def staging_folder(final: Path) -> Path:
    return final.with_name(final.name + ".partial")


@contextlib.contextmanager
def build_lock(final: Path, what: str, waiting: str) -> Iterator[dict[str, Any]]:
    """Hold the lock of building ``final``; yield the owner record a holder that died left (if any)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(final.with_name(final.name + ".lock"), what, waiting) as died:
        yield died


def read_progress(staging: Path) -> dict[str, Any] | None:
    return read_json_object(staging / PROGRESS)


def start_over(staging: Path, names: Iterable[str]) -> int:
    """A fresh, empty staging folder with the (empty) files ``names``; 0 clips done."""
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in names:
        (staging / name).touch()
    return 0


def cut_to(path: Path, size: int) -> bool:
    """Cut ``path`` back to ``size`` bytes; False (nothing cut) when it is missing or shorter."""
    if size < 0 or not path.is_file() or path.stat().st_size < size:
        return False
    os.truncate(path, size)
    return True


def running_hash(path: Path, n_bytes: int | None = None) -> Any:
    """A blake2b hash object fed with the first ``n_bytes`` of ``path`` (all of it by default)."""
    digest = hashlib.blake2b(digest_size=12)
    remaining = path.stat().st_size if n_bytes is None else n_bytes
    with open(path, "rb") as f:
        while remaining > 0:
            block = f.read(min(1 << 20, remaining))
            if not block:
                break
            digest.update(block)
            remaining -= len(block)
    return digest


class StagedWriter:
    """Appends to files of a staging folder; ``record_progress`` fsyncs them, then records progress.

    A subclass appends (``self.files[name].write``) and says what the record holds (``progress``).
    """

    def __init__(self, staging: Path, names: Iterable[str]) -> None:
        self.staging = staging
        self.files: dict[str, IO[bytes]] = {name: open(staging / name, "ab") for name in names}  # noqa: SIM115

    def progress(self) -> dict[str, Any]:
        raise NotImplementedError

    def record_progress(self) -> None:
        for f in self.files.values():
            f.flush()
            os.fsync(f.fileno())
        atomic_write_json(self.staging / PROGRESS, self.progress())

    def checkpoint(self) -> None:
        self.record_progress()

    def close(self) -> None:
        for f in self.files.values():
            f.close()


@contextlib.contextmanager
def appending(
    writer: StagedWriter, label: str | None = None, logger: logging.Logger = log
) -> Iterator[StagedWriter]:
    """Close ``writer`` after the block: with a last checkpoint if it succeeds, else a best-effort
    progress record (what was appended is whole, so a rerun resumes after it), logged under ``label``
    when that fails too."""
    try:
        yield writer
        writer.checkpoint()
    except BaseException:
        try:
            writer.record_progress()
        except (OSError, ValueError) as exc:  # ValueError: a file closed by a failed flush
            if label:
                logger.warning(
                    "%s: could not record progress (%s); a rerun resumes from further back", label, exc
                )
        with contextlib.suppress(OSError):  # closing fails again on a full disk: keep the first error
            writer.close()
        raise
    writer.close()


def publish(staging: Path, final: Path, manifest: dict[str, Any], scratch: Iterable[str] = ()) -> None:
    """Write the manifest, drop the progress record and the ``scratch`` files, and rename the staging
    folder onto ``final`` (replacing what was there: incomplete, or built for other inputs)."""
    atomic_write_json(staging / MANIFEST, manifest)
    for name in (PROGRESS, *scratch):
        (staging / name).unlink(missing_ok=True)
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
