"""A full disk (ENOSPC) while writing: a DataError that names the folder, the space needed and the
space free, and says that a rerun resumes.

:func:`is_disk_full` is the one test for "this failure is a full disk" (errno, and the texts torch's C++
writer gives it). :func:`disk_full_error` is the translation the command line applies to whatever
reaches it: it survives cleanup, so the message a step raised is kept when closing a file on the same
full disk fails again, and a write no step guarded still reads as a full disk, not a traceback."""

from __future__ import annotations

import contextlib
import errno
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from audiotag.core.errors import AudiotagError, DataError

# torch.save's C++ writer loses errno: these are how a full disk reads from it
TORCH_FULL_DISK = (
    "iostream error",
    "PytorchStreamWriter failed writing",
    "file write failed",
    "unexpected pos",
)


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is a write that failed for lack of space (or quota)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    if "No space left on device" in text or "Disk quota exceeded" in text:
        return True
    return isinstance(exc, RuntimeError) and any(marker in text for marker in TORCH_FULL_DISK)


def disk_full_error(exc: BaseException) -> AudiotagError | None:
    """The user-facing error for ``exc`` when it (or one it was raised while handling) is a full disk:
    the first :class:`AudiotagError` of that chain (a step's own message, which a second failure in its
    cleanup replaced), else a DataError naming the file; None for any other failure."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    if not any(is_disk_full(e) for e in chain):
        return None
    for e in chain:
        if isinstance(e, AudiotagError):
            return e
    name = next((e.filename for e in chain if isinstance(e, OSError) and e.filename), None)
    where = Path(str(name)).expanduser().absolute() if name else Path.cwd()
    return DataError(
        disk_full_message(where.parent if name else where, where.name if name else "a file", None)
    )


@contextlib.contextmanager
def disk_full_as_error(folder: Path, what: str, needed: Callable[[], int | str | None]) -> Iterator[None]:
    """``needed`` is called only when the disk is full: bytes the step needs (or a text saying so)."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        if not is_disk_full(exc):
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
