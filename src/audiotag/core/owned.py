"""Output folders a command replaces as a whole (``package OUT``): it deletes only the files it wrote.

The one rule for "is this folder ours": the folder holds a manifest, ``.audiotag-files.json``, naming
the writer and every file it wrote with its size, and every entry of the folder is one of them (or lies
in the writer's staging folder, which the manifest names while a write is under way). Anything else
(a file the manifest does not list, or listed with another size, an empty folder of someone else's, a
manifest written by another command, an ``{}``) is not ours: the folder is refused unless the user says
``--force``, and even then those entries are kept and never overwritten.

A write goes: :meth:`OwnedFolder.claim` (refuse, or take the folder, recording the staging folder in
the manifest first), build into :attr:`OwnedFolder.staging`, then :meth:`OwnedFolder.publish` (list old
and new files, move the new ones in, drop the old ones the new write does not have) or
:meth:`OwnedFolder.abandon`. At every step the manifest lists every file the writer has put there, so
a kill anywhere leaves a folder the rerun can prove is its own.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from audiotag.core.atomic import atomic_write_json, fsync_dir, read_json_object
from audiotag.core.errors import ConfigError

MANIFEST = ".audiotag-files.json"
STAGING = ".audiotag-staging"
Files = dict[str, list[int]]  # relative POSIX path -> the sizes it may have (two while a write is published)


def _manifest_temp(rel: str) -> bool:
    """A temporary file of the manifest's atomic write, left by a kill."""
    return "/" not in rel and rel.startswith(f".{MANIFEST}.") and rel.endswith(".tmp")


def _entries(folder: Path) -> tuple[dict[str, int], list[str]]:
    """Every file (or link) under ``folder`` with its size, and every empty folder, as relative paths."""
    files: dict[str, int] = {}
    empty: list[str] = []
    for root, dirs, names in os.walk(folder):
        here = Path(root)
        links = [d for d in dirs if (here / d).is_symlink()]
        for name in [*names, *links]:
            files[(here / name).relative_to(folder).as_posix()] = (here / name).lstat().st_size
        if not dirs and not names and here != folder:
            empty.append(here.relative_to(folder).as_posix())
    return files, empty


class OwnedFolder:
    """``folder``, written as a whole by ``writer`` (e.g. "audiotag package")."""

    def __init__(self, folder: Path, writer: str) -> None:
        self.folder, self.writer = Path(folder), writer
        self.staging = self.folder / STAGING
        self.old: Files = {}

    def recorded(self) -> tuple[Files, bool] | None:
        """The files the manifest lists and whether a write is under way (its staging folder is ours);
        None when there is no manifest of this writer."""
        data = read_json_object(self.folder / MANIFEST)
        files = (data or {}).get("files")
        if not data or data.get("writer") != self.writer or not isinstance(files, dict):
            return None
        listed = {
            str(rel): [int(s) for s in sizes] for rel, sizes in files.items() if isinstance(sizes, list)
        }
        return listed, data.get("staging") == STAGING

    def foreign(self) -> list[str]:
        """The entries of the folder that it cannot prove are the writer's ([]: all ours, or no folder)."""
        if not self.folder.exists():
            return []
        if not self.folder.is_dir():
            return ["."]
        files, empty = _entries(self.folder)
        recorded = self.recorded()
        if recorded is None:
            return sorted([*files, *empty])
        listed, writing = recorded
        parents = {p.as_posix() for rel in listed for p in Path(rel).parents}

        def staged(rel: str) -> bool:
            return writing and (rel == STAGING or rel.startswith(STAGING + "/"))

        out = [rel for rel, size in files.items() if size not in listed.get(rel, [])]
        out = [rel for rel in out if rel != MANIFEST and not _manifest_temp(rel) and not staged(rel)]
        return sorted(out + [rel for rel in empty if rel not in parents and not staged(rel)])

    def claim(self, force: bool, option: str = "--force") -> list[str]:
        """Take the folder for a new write (refused, naming ``option``, when it holds entries that are not
        ours, unless ``force``); the entries kept as not ours. Creates :attr:`staging`, empty."""
        foreign = self.foreign()
        if foreign == ["."]:
            raise ConfigError(f"{self.folder}: exists and is not a folder; choose another path")
        if foreign and not force:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise ConfigError(
                f"{self.folder}: holds files {self.writer} did not write ({shown}); it never deletes "
                f"those: choose a new or empty folder, or pass {option} to write beside them (they are kept)"
            )
        self.old = (self.recorded() or ({}, False))[0]
        self.folder.mkdir(parents=True, exist_ok=True)
        self._write(self.old, staging=True)
        shutil.rmtree(self.staging, ignore_errors=True)  # ours: a killed write's staging
        self.staging.mkdir()
        return foreign

    def publish(self) -> None:
        """Move the staged files into the folder and forget the old ones the new write does not have."""
        new = {rel: [size] for rel, size in _entries(self.staging)[0].items()}
        blocked = [rel for rel in new if self._taken(rel)]
        if blocked:
            raise ConfigError(
                f"{self.folder}: {blocked[0]} exists and {self.writer} did not write it; it is never "
                "overwritten: move it away, or choose another folder"
            )
        both = {rel: sorted({*self.old.get(rel, []), *new.get(rel, [])}) for rel in {*self.old, *new}}
        self._write(both, staging=True)
        for rel in new:
            (self.folder / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.staging / rel, self.folder / rel)
        for rel in sorted(set(self.old) - set(new)):
            self._remove_ours(rel, self.old[rel])
        shutil.rmtree(self.staging, ignore_errors=True)
        self._write(new, staging=False)
        fsync_dir(self.folder)

    def abandon(self) -> None:
        """Drop the staged files; the folder keeps what it held (a folder made for nothing is removed)."""
        shutil.rmtree(self.staging, ignore_errors=True)
        if not self.old and not [e for e in self.folder.iterdir() if e.name != MANIFEST]:
            with contextlib.suppress(OSError):
                (self.folder / MANIFEST).unlink()
                self.folder.rmdir()
            return
        self._write(self.old, staging=False)

    def _taken(self, rel: str) -> bool:
        """Whether ``rel`` (or a folder on its way) is an entry that is not ours."""
        path = self.folder / rel
        for parent in reversed(Path(rel).parents[:-1]):
            if (self.folder / parent).is_symlink() or (self.folder / parent).is_file():
                return True
        return os.path.lexists(path) and path.lstat().st_size not in self.old.get(rel, [])

    def _remove_ours(self, rel: str, sizes: list[int]) -> None:
        path = self.folder / rel
        if os.path.lexists(path) and path.lstat().st_size in sizes:
            path.unlink()
        for parent in Path(rel).parents[:-1]:  # folders left empty by it
            with contextlib.suppress(OSError):
                (self.folder / parent).rmdir()

    def _write(self, files: Files, staging: bool) -> None:
        record = {"writer": self.writer, "files": dict(sorted(files.items()))}
        atomic_write_json(self.folder / MANIFEST, record | ({"staging": STAGING} if staging else {}))
