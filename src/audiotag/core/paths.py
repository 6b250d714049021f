"""Where things live: the repository, the per-competition workspaces, the submissions folder."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]


def workspace_root() -> Path:
    """Folder holding one workspace per competition (``AUDIOTAG_WORKSPACE`` overrides it)."""
    return Path(os.environ.get("AUDIOTAG_WORKSPACE", REPO_ROOT / "competition"))


def submissions_root() -> Path:
    return Path(os.environ.get("AUDIOTAG_SUBMISSIONS", REPO_ROOT / "submissions"))


def submission_log() -> Path:
    """The JSON-lines log of every Kaggle submission (written by ``submit``, read by the leaderboard)."""
    return submissions_root() / "log.jsonl"


def competition_dir(name: str) -> Path:
    return workspace_root() / name


def runs_dir(name: str) -> Path:
    return competition_dir(name) / "runs"
