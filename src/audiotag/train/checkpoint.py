"""Checkpoints written atomically, so a run killed at any moment resumes from the last whole one.

Checkpoints are read with ``torch.load(weights_only=True)``: a pickle can run code when it is loaded,
and ``last.pt``/``best.pt`` come from run folders and packages that others may have touched. What
training saves is tensors (weights, optimiser moments, the CPU/GPU/augmentation RNG states as
ByteTensors) and plain Python numbers, strings, lists and dicts (progress, history, the schedule's
and the grad scaler's state), all of which the weights-only unpickler accepts as they are, so
:data:`RESUME_GLOBALS` (what it allows beyond that) is empty; anything else in the pickle is refused
with a :class:`DataError` naming the file.

:func:`verify_best` checks ``best.pt`` against its ``done.json`` record wherever a finished fold's
weights are used: a rerun that skips the fold, ``package``, and the package's inference.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from audiotag.core.atomic import atomic_path
from audiotag.core.digests import check_recorded_file, file_sha256
from audiotag.core.disk_full import is_disk_full
from audiotag.core.errors import DataError, TrainingError

log = logging.getLogger(__name__)

# Globals the weights-only unpickler may build besides tensors and plain Python values: none is needed
# by what ``resume_state`` and ``best.pt`` hold (see the module docstring).
RESUME_GLOBALS: list[Any] = []

RESTART = "delete it to restart this fold"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with disk_full_guard(path, lambda: state_bytes(state)), atomic_path(path, suffix=".pt") as tmp:
        torch.save(state, tmp)


def load_checkpoint(
    path: Path, map_location: str | torch.device = "cpu", remedy: str = RESTART
) -> dict[str, Any]:
    """The checkpoint at ``path``, read weights-only; ``remedy`` ends the error message."""
    try:
        with torch.serialization.safe_globals(RESUME_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" in str(exc) or "Weights only load failed" in str(exc):
            raise DataError(
                f"{path}: refused to load: the checkpoint holds {_unsafe_globals(path)}, which a "
                "checkpoint written by audiotag train never holds and which could run code when loaded "
                f"(the file was altered or comes from elsewhere); {remedy}"
            ) from None
        raise DataError(f"{path}: checkpoint cannot be read ({exc}); {remedy}") from None
    except Exception as exc:
        raise DataError(f"{path}: checkpoint cannot be read ({exc}); {remedy}") from None


def _unsafe_globals(path: Path) -> str:
    """The globals the pickle would build that are not allowed, for the message."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        names = []
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in RESUME_GLOBALS}
    names = [n for n in names if n not in allowed]
    return (
        f"objects other than tensors and plain values ({', '.join(names[:5])})"
        if names
        else ("objects other than tensors and plain values")
    )


# --------------------------------------------------------------------------- best.pt of a finished fold


def file_record(path: Path) -> dict[str, Any]:
    """What ``done.json`` keeps of ``best.pt``: its size and SHA-256."""
    return {"size": path.stat().st_size, "sha256": file_sha256(path)}


def verify_best(best: Path, done: dict[str, Any], remedy: str | None = None) -> None:
    """Check ``best`` against the record in its fold's ``done.json`` (``done["best_pt"]``); a
    :class:`DataError` naming the file when it is missing or differs. A done.json from before the
    record was kept is accepted with a warning."""
    fold_dir = best.parent
    remedy = remedy or f"delete the fold folder {fold_dir} to retrain the fold"
    if not best.is_file():
        raise DataError(
            f"{best} is missing although {fold_dir / 'done.json'} says the fold is done; {remedy}"
        )
    record = done.get("best_pt")
    if not isinstance(record, dict) or "sha256" not in record:
        log.warning(
            "%s: done.json records no size or SHA-256 of best.pt (written by an older version); the "
            "weights are used unchecked",
            fold_dir,
        )
        return
    check_recorded_file(best, record, remedy)


# --------------------------------------------------------------------------- a full disk


def state_bytes(obj: Any) -> int:
    """Roughly what ``torch.save`` writes for ``obj``: the bytes of its tensors."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(state_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(state_bytes(v) for v in obj)
    return 0


def _megabytes(n: float) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.0f} kB"


@contextlib.contextmanager
def disk_full_guard(path: Path, needed: Any = None) -> Iterator[None]:
    """Turn a full disk while writing ``path`` into a :class:`TrainingError` saying where and about how
    much is needed (``needed``: bytes, or a callable giving them, called only then)."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        if not is_disk_full(exc):
            raise
        size = needed() if callable(needed) else needed
        need = f" (it needs about {_megabytes(size)})" if size else ""
        try:
            free = f", {_megabytes(shutil.disk_usage(path.parent).free)} free there"
        except OSError:
            free = ""
        raise TrainingError(
            f"the disk is full: {path} could not be written{need}{free}; the previous file is kept "
            f"(the last good checkpoint too). Free space on the disk of {path.parent} and run train "
            "again: it resumes from the last checkpoint"
        ) from None
