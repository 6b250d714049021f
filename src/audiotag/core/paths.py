"""Where things live: the per-competition workspaces and the submissions folder.

They default to ``competition/`` and ``submissions/`` under a base folder: the source checkout the
package runs from (``<checkout>/src/audiotag``, so ``./run.sh``, the notebooks and the tests find the
same workspace from any folder), else, for an installed package (a wheel), the current folder.
``AUDIOTAG_WORKSPACE`` and ``AUDIOTAG_SUBMISSIONS`` override them.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = PACKAGE_DIR.parents[1]  # the checkout's root when checkout_root() is not None


def checkout_root() -> Path | None:
    """The source checkout this package runs from (``src/audiotag`` beside ``pyproject.toml``), or
    None for an installed package."""
    if PACKAGE_DIR.parent.name == "src" and (REPO_ROOT / "pyproject.toml").is_file():
        return REPO_ROOT
    return None


def base_dir() -> Path:
    """The folder holding ``competition/`` and ``submissions/`` by default: the checkout, else the
    current folder."""
    return checkout_root() or Path.cwd()


def workspace_root() -> Path:
    """Folder holding one workspace per competition (``AUDIOTAG_WORKSPACE`` overrides it)."""
    return Path(os.environ.get("AUDIOTAG_WORKSPACE") or base_dir() / "competition")


def submissions_root() -> Path:
    return Path(os.environ.get("AUDIOTAG_SUBMISSIONS") or base_dir() / "submissions")


def submission_log() -> Path:
    """The JSON-lines log of every Kaggle submission (written by ``submit``, read by the leaderboard)."""
    return submissions_root() / "log.jsonl"


def competition_dir(name: str) -> Path:
    return workspace_root() / name


def runs_dir(name: str) -> Path:
    return competition_dir(name) / "runs"
