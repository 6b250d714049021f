"""A full disk (ENOSPC) while writing: a DataError that names the folder, the space needed and the
space free, and says that a rerun resumes."""

from __future__ import annotations

import contextlib
import errno
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from audiotag.core.errors import DataError


@contextlib.contextmanager
def disk_full_as_error(folder: Path, what: str, needed: Callable[[], int | str | None]) -> Iterator[None]:
    """``needed`` is called only when the disk is full: bytes the step needs (or a text saying so)."""
    try:
        yield
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        raise DataError(disk_full_message(folder, what, needed())) from None


def disk_full_message(folder: Path, what: str, needed: int | str | None) -> str:
    free = ""
    with contextlib.suppress(OSError):
        free = f"; {size_text(shutil.disk_usage(_existing(folder)).free)} free now"
    if isinstance(needed, int):
        needed = f"about {size_text(needed)}"
    need = f"; it needs {needed}" if needed else ""
    return (
        f"the disk is full: no space left on the device while writing {what} in {folder}{need}{free}. "
        "Free some space there (or point AUDIOTAG_WORKSPACE at a bigger disk) and run the same command "
        "again: what was written is kept and the step resumes"
    )


def _existing(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def size_text(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"
