"""Project-wide logging set-up (one format, INFO by default, quiet third-party loggers) and the
console results are printed to."""

from __future__ import annotations

import logging
import sys

from rich.console import Console

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each record (it may be replaced)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(verbose: bool = False) -> None:
    root = logging.getLogger()
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("matplotlib", "numba", "PIL", "urllib3", "filelock", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def output_console(width: int = 120) -> Console:
    """The console for results: piped into a file or a log, a wide table rather than a folded one."""
    console = Console(stderr=False)
    return console if console.is_terminal else Console(stderr=False, width=max(console.width, width))
