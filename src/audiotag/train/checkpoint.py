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
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from audiotag.core.atomic import atomic_path
from audiotag.core.digests import check_fold_file, file_sha256
from audiotag.core.disk_full import is_disk_full
from audiotag.core.errors import DataError, TrainingError

log = logging.getLogger(__name__)

# Globals the weights-only unpickler may build besides tensors and plain Python values: none is needed
# by what ``resume_state`` and ``best.pt`` hold (see the module docstring).
RESUME_GLOBALS: list[Any] = []

RESTART = "delete it to restart this fold"


@dataclass
class EpochProgress:
    """A training's progress, kept in ``last.pt`` under ``"state"`` as the dict ``as_checkpoint`` makes."""

    epoch: int = 0  # epochs completed
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per completed epoch
    partial: dict[str, Any] | None = None  # a mid-epoch checkpoint's progress: epoch, batch, ranks

    def take_partial(self) -> dict[str, Any] | None:
        """The mid-epoch progress to resume the current epoch from; used once."""
        partial, self.partial = self.partial, None
        return partial if partial and partial["epoch"] == self.epoch else None

    def as_checkpoint(self, partial: dict[str, Any] | None = None) -> dict[str, Any]:
        """The saved dict: the fields, with ``partial`` only when saved within an epoch."""
        saved = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "partial"}
        return {**saved, "partial": partial} if partial else saved

    def resume_payload(self, parts: dict[str, Any], partial: dict[str, Any] | None) -> dict[str, Any]:
        """What ``last.pt`` holds: each part's state dict (weights, optimizer, schedule...), the progress."""
        return {
            **{name: part.state_dict() for name, part in parts.items()},
            "state": self.as_checkpoint(partial),
        }

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any]) -> Any:
        kept = {f.name: saved[f.name] for f in fields(cls) if f.name != "partial"}
        return cls(**kept, partial=saved.get("partial"))


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
    done.json from before the record was kept is accepted with a warning."""
    remedy = remedy or f"delete the fold folder {best.parent} to retrain the fold"
    check_fold_file(best, done, "best_pt", remedy, unrecorded_ok=True)


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
