"""Safe zip extraction: :func:`extract_zip` refuses entries that would land outside the target folder
before it writes anything, extracts into a hidden folder beside the target and moves the result into
place, and records a finished extraction so a second call returns at once.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path

from audiotag.atomic import atomic_write_json, fsync_dir
from audiotag.errors import DataError
from audiotag.fetch.http import CHUNK, check_free_space, file_id, locked, progress_bar, read_stamp

log = logging.getLogger(__name__)


def _unsafe_reason(info: zipfile.ZipInfo, root: str) -> str | None:
    """Why writing this entry under the folder ``root`` would be unsafe (None when it is fine).

    The check is lexical: the archive's own names must stay inside ``root``; folders the user has
    already symlinked inside the target are theirs to decide.
    """
    name = info.filename
    if info.create_system == 3 and stat.S_ISLNK(info.external_attr >> 16):
        return "it is a symbolic link"
    if "\x00" in name:
        return "its name holds a NUL byte"
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        return "it is an absolute path"
    if ".." in norm.split("/"):
        return "it climbs out of the folder with '..'"
    target = os.path.normpath(os.path.join(root, norm))
    if target != root and not target.startswith(root.rstrip(os.sep) + os.sep):
        return f"it would be written to {target}"
    if info.flag_bits & 0x1:
        return "it is encrypted"
    return None


def _move_into(src: Path, dst: Path) -> None:
    """Move ``src`` onto ``dst``: one rename when ``dst`` is absent, else a merge file by file."""
    if not os.path.lexists(dst):
        os.replace(src, dst)
        return
    if src.is_dir() and dst.is_dir():
        for child in sorted(src.iterdir()):
            _move_into(child, dst / child.name)
        return
    if src.is_dir() or dst.is_dir():
        kind = "folder" if src.is_dir() else "file"
        raise DataError(
            f"{dst} is in the way of an extracted {kind} of the same name; move it away and run again"
        )
    os.replace(src, dst)


def _extraction_done(marker: Path, archive: Path, wanted: list[str], files: list[Path]) -> bool:
    stamp = read_stamp(marker)
    if not stamp or stamp.get("archive") != file_id(archive):
        return False
    members = stamp.get("members")
    if members != "all" and not set(wanted) <= set(members or []):
        return False
    return all(p.exists() for p in files)


def extract_zip(archive: Path, dest_dir: Path, *, members: list[str] | None = None) -> list[Path]:
    """Extract ``archive`` (or only ``members``) into ``dest_dir`` and return the extracted files.

    Safe: every selected entry is checked before anything is written; an entry whose path would leave
    ``dest_dir`` (``..``, an absolute path) or that is a symbolic link is refused by name. Atomic per
    top-level item: entries are extracted into a hidden folder inside ``dest_dir`` and each top-level
    file or folder is renamed into place (merged file by file only where it already exists), so a
    killed extraction leaves no half folder behind. Idempotent: a finished extraction is recorded in
    ``dest_dir/.<archive>.extracted`` (with the archive's size and time) and skipped next time while
    the extracted files are still there. A CRC error names the entry.
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    if not archive.is_file():
        raise DataError(f"{archive} does not exist; download it first")
    marker = dest_dir / f".{archive.name}.extracted"
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{archive} is not a readable zip archive ({exc}); download it again") from None
    with zf:
        infos = _select(zf, archive, members)
        files = [dest_dir / i.filename.replace("\\", "/") for i in infos if not i.is_dir()]
        wanted = sorted(i.filename for i in infos)
        if _extraction_done(marker, archive, wanted, files):
            log.info("%s is already extracted into %s; skipping", archive.name, dest_dir)
            return files
        root = os.path.abspath(dest_dir)
        for info in infos:
            reason = _unsafe_reason(info, root)
            if reason is not None:
                raise DataError(
                    f"{archive}: refusing to extract entry {info.filename!r} into {dest_dir}: {reason}. "
                    "Nothing was extracted; the archive is damaged or malicious: get it from the official "
                    "source"
                )
        check_free_space(dest_dir, sum(i.file_size for i in infos), f"extracting {archive.name}")
        with locked(
            dest_dir / f".{archive.name}.extract.lock", f"waiting for another extraction of {archive.name}"
        ):
            if _extraction_done(marker, archive, wanted, files):  # done by another process meanwhile
                return files
            for stale in dest_dir.glob(f".{archive.name}.extracting-*"):
                shutil.rmtree(stale, ignore_errors=True)  # left by a killed extraction
            tmp = Path(tempfile.mkdtemp(prefix=f".{archive.name}.extracting-", dir=dest_dir))
            try:
                _extract_all(zf, archive, infos, tmp)
                for child in sorted(tmp.iterdir()):
                    _move_into(child, dest_dir / child.name)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            fsync_dir(dest_dir)
            recorded: str | list[str] = "all" if members is None else wanted
            previous = read_stamp(marker)
            if members is not None and previous and previous.get("archive") == file_id(archive):
                before = previous.get("members")
                recorded = "all" if before == "all" else sorted(set(wanted) | set(before or []))
            atomic_write_json(marker, {"archive": file_id(archive), "members": recorded})
    log.info("extracted %d file(s) from %s into %s", len(files), archive.name, dest_dir)
    return files


def _select(zf: zipfile.ZipFile, archive: Path, members: list[str] | None) -> list[zipfile.ZipInfo]:
    infos = zf.infolist()
    if members is None:
        return infos
    by_name = {i.filename: i for i in infos}
    missing = [m for m in members if m not in by_name]
    if missing:
        head = ", ".join(repr(m) for m in missing[:5])
        raise DataError(
            f"{archive} has no entr{'y' if len(missing) == 1 else 'ies'} {head}"
            f"{' ...' if len(missing) > 5 else ''}; check the member names"
        )
    return [by_name[m] for m in dict.fromkeys(members)]


def _extract_all(zf: zipfile.ZipFile, archive: Path, infos: list[zipfile.ZipInfo], tmp: Path) -> None:
    with progress_bar(len(infos), f"extracting {archive.name}", unit="file") as bar:
        for info in infos:
            target = tmp / info.filename.replace("\\", "/")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    with zf.open(info) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst, CHUNK)
                except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
                    raise DataError(
                        f"{archive}: entry {info.filename!r} is corrupted ({exc}); nothing was extracted; "
                        "download the archive again"
                    ) from None
            bar.update(1)
