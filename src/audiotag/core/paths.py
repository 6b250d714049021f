"""Where things live: the repository, the per-competition workspaces, the submissions folder."""

from __future__ import annotations

import os
import re
from pathlib import Path

from audiotag.core.errors import ConfigError

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


_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")


def inside_problem(path: str) -> str | None:
    """Why ``path``, written in a config or a CSV row, would leave the folder it is relative to (None:
    it stays inside): an absolute path (or a Windows drive) or a ``..`` part. The rule is on the text as
    written: a symbolic link placed inside the folder is the user's choice and is followed."""
    if path.startswith(("/", "\\")) or _WINDOWS_DRIVE.match(path):
        return "is an absolute path"
    if ".." in re.split(r"[\\/]", path):
        return "has a '..' part"
    return None


# A name that becomes a file or folder name (a run, an ensemble, a competition's workspace, a tune study,
# a pretrain output, a Kaggle slug): one path component, so it can never leave its folder or make one.
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
PLAIN_NAME_RULE = "letters, digits, '_', '-' or '.', starting with a letter or digit, at most 128"


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot name a file or folder (None: it can)."""
    if not isinstance(name, str) or not PLAIN_NAME.fullmatch(name):
        return f"{name!r} is not a plain name ({PLAIN_NAME_RULE}): it becomes a file or folder name"
    return None


def check_name(name: str, what: str) -> str:
    """``name`` if it is a plain name, else a ConfigError naming ``what`` (e.g. "--run-name")."""
    problem = name_problem(name)
    if problem is not None:
        raise ConfigError(f"{what} {problem}; choose another")
    return name
