"""Project-wide logging set-up (one format, INFO by default, quiet third-party loggers), the
console results are printed to, and the progress bars of long steps.

Progress bars (:func:`progress`, tqdm) show an ETA on a terminal and stay out of logs: they are
hidden when stderr is not a terminal, and everywhere after :func:`set_quiet` (``--quiet`` or
``AUDIOTAG_QUIET=1``). Log lines are written above an active bar instead of through it. ``--quiet``
keeps the INFO log: one line per step or epoch (with the fold's ETA) is what a CI log needs.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable
from typing import Any

from rich.console import Console
from tqdm import tqdm

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each record (it may be replaced)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass

    def emit(self, record: logging.LogRecord) -> None:
        if not getattr(tqdm, "_instances", None):  # no progress bar on screen
            super().emit(record)
            return
        try:
            tqdm.write(self.format(record), file=sys.stderr)  # above the bars, which are redrawn
        except Exception:
            self.handleError(record)


def setup_logging(verbose: bool = False) -> None:
    root = logging.getLogger()
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("matplotlib", "numba", "PIL", "urllib3", "filelock", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def tag_process(tag: str, quiet: bool = False) -> None:
    """Begin this process's log lines with ``tag`` (e.g. ``[rank 1/4]``: one of several processes,
    whose lines may end up in one log); ``quiet``: warnings and errors only."""
    fmt = FORMAT.replace("%(levelname)", f"{tag.replace('%', '%%')} %(levelname)")
    for handler in logging.getLogger().handlers:
        if isinstance(handler, _StderrHandler):
            handler.setFormatter(logging.Formatter(fmt, datefmt="%H:%M:%S"))
    if quiet:
        logging.getLogger().setLevel(logging.WARNING)


QUIET_ENV = "AUDIOTAG_QUIET"


def set_quiet(quiet: bool = True) -> None:
    """No progress bars from here on, in this process and the processes it starts (torchrun ranks,
    cache workers), including third-party tqdm bars (``TQDM_DISABLE``)."""
    if quiet:
        os.environ[QUIET_ENV] = "1"
        os.environ["TQDM_DISABLE"] = "1"
    else:
        os.environ.pop(QUIET_ENV, None)
        os.environ.pop("TQDM_DISABLE", None)


def is_quiet() -> bool:
    return os.environ.get(QUIET_ENV, "") not in ("", "0")


def progress(iterable: Iterable[Any] | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr with ETA, gone when done (``leave=False``); hidden when stderr is not a
    terminal or under ``--quiet``. Keyword arguments go to tqdm (``total``, ``desc``, ``unit``...)."""
    kwargs.setdefault("leave", False)
    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs["disable"] = True if is_quiet() else kwargs.get("disable")
    return tqdm(iterable, **kwargs)


def human_duration(seconds: float) -> str:
    """``42s``, ``3m07s``, ``2h05m``."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def output_console(width: int = 120) -> Console:
    """The console for results: piped into a file or a log, a wide table rather than a folded one."""
    console = Console(stderr=False)
    return console if console.is_terminal else Console(stderr=False, width=max(console.width, width))
