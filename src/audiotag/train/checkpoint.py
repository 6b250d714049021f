"""Checkpoints written atomically, so a run killed at any moment resumes from the last whole one."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from audiotag.atomic import atomic_path
from audiotag.errors import DataError

log = logging.getLogger(__name__)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:
        raise DataError(
            f"{path}: checkpoint cannot be read ({exc}); delete it to restart this fold"
        ) from None
