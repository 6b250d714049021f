"""Where things live: the per-competition workspaces and the submissions folder.

They default to ``competition/`` and ``submissions/`` under a base folder: the source checkout the
package runs from (``<checkout>/src/audiotag``, so ``./run.sh``, the notebooks and the tests find the
same workspace from any folder), else, for an installed package (a wheel), the current folder.
``AUDIOTAG_WORKSPACE`` and ``AUDIOTAG_SUBMISSIONS`` override them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from audiotag.core.errors import ConfigError

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
