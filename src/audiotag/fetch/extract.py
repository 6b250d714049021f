"""Safe archive extraction: :func:`extract_zip` and :func:`extract_tar` (plain, gzip, bzip2, xz) refuse
entries that would land outside the target folder (and links, devices) before anything reaches it,
extract into a hidden folder beside the target and move the result into place, and record a finished
extraction so a second call returns at once. :func:`extract_archive` picks one by the file's suffix.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path

from audiotag.core.atomic import atomic_write_json, fsync_dir, read_json_object
from audiotag.core.errors import DataError
from audiotag.fetch.http import CHUNK, check_free_space, file_id, locked, progress_bar

log = logging.getLogger(__name__)


def _unsafe_path(raw: str, name: str, root: str) -> str | None:
    """Why the archive path ``raw`` (``name`` once normalised) may not be written under ``root``, by
    a lexical check (folders the user has symlinked inside the target are theirs to decide)."""
    if "\x00" in raw:
        return "its name holds a NUL byte"
    norm = raw.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        return "it is an absolute path"
    if ".." in norm.split("/"):
        return "it climbs out of the folder with '..'"
    target = os.path.normpath(os.path.join(root, name))
    if target != root and not target.startswith(root.rstrip(os.sep) + os.sep):
        return f"it would be written to {target}"
    return None


def _unsafe_reason(info: zipfile.ZipInfo, root: str) -> str | None:
    """Why writing this entry under the folder ``root`` would be unsafe (None when it is fine)."""
    if info.create_system == 3 and stat.S_ISLNK(info.external_attr >> 16):
        return "it is a symbolic link"
    reason = _unsafe_path(info.filename, info.filename.replace("\\", "/"), root)
    if reason is None and info.flag_bits & 0x1:
        return "it is encrypted"
    return reason


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
    stamp = read_json_object(marker)
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
            previous = read_json_object(marker)
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


# --------------------------------------------------------------------------- tar archives

TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar")
ARCHIVE_SUFFIXES = (".zip", *TAR_SUFFIXES)


def archive_format(name: str) -> str | None:
    """ "zip" or "tar" from a file name's suffix (``.zip``; ``.tar``, ``.tar.gz``/``.tgz``, ``.tar.bz2``,
    ``.tar.xz``), else None."""
    lower = name.lower()
    if lower.endswith(".zip"):
        return "zip"
    return "tar" if lower.endswith(TAR_SUFFIXES) else None


def extract_archive(archive: Path, dest_dir: Path) -> list[Path]:
    """:func:`extract_zip` or :func:`extract_tar`, chosen by the archive's suffix."""
    kind = archive_format(Path(archive).name)
    if kind == "zip":
        return extract_zip(archive, dest_dir)
    if kind == "tar":
        return extract_tar(archive, dest_dir)
    raise DataError(
        f"{archive}: not an archive this tool extracts (by its name: {', '.join(ARCHIVE_SUFFIXES)})"
    )


def _tar_name(member: tarfile.TarInfo) -> str:
    """The member's path with ``./`` prefixes and trailing slashes removed ("" for the root itself)."""
    parts = [p for p in member.name.replace("\\", "/").split("/") if p not in ("", ".")]
    name = "/".join(parts)
    return "/" + name if member.name.startswith("/") else name


def _tar_unsafe_reason(member: tarfile.TarInfo, name: str, root: str, files: set[str]) -> str | None:
    """Why writing this member under ``root`` would be unsafe (None when it is fine). ``files`` holds
    the regular files met so far, the only targets a hard link may name."""
    reason = _unsafe_path(member.name, name, root)
    if reason is not None:
        return reason
    if member.issym():
        return f"it is a symbolic link (to {member.linkname!r})"
    if member.islnk():
        link = _tar_name(tarfile.TarInfo(member.linkname))
        if link not in files:
            return f"it is a hard link to {member.linkname!r}, which is not a file extracted before it"
        return None
    if member.ischr() or member.isblk() or member.isfifo():
        return "it is a device or FIFO, not a file"
    if not (member.isreg() or member.isdir()):
        return f"it is of an unsupported tar type {member.type!r}"
    return None


def _tar_done(marker: Path, archive: Path, dest_dir: Path) -> list[Path] | None:
    stamp = read_json_object(marker)
    if not stamp or stamp.get("archive") != file_id(archive) or not isinstance(stamp.get("files"), list):
        return None
    files = [dest_dir / name for name in stamp["files"]]
    return files if all(p.exists() for p in files) else None


def extract_tar(archive: Path, dest_dir: Path) -> list[Path]:
    """Extract a tar archive (plain, gzip, bzip2 or xz) into ``dest_dir``; return the extracted files.

    The guarantees of :func:`extract_zip`, in one streaming pass (a ``.tar.gz`` cannot be listed
    without decompressing it): every member is checked as it comes, and one refused (also a device, a
    FIFO, or a hard link to anything but a file extracted before it) leaves nothing in ``dest_dir``.
    File modes and owners of the archive are not applied (plain files, created with the umask); the
    record of a finished extraction also lists the files.
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    if not archive.is_file():
        raise DataError(f"{archive} does not exist; download it first")
    marker = dest_dir / f".{archive.name}.extracted"
    done = _tar_done(marker, archive, dest_dir)
    if done is not None:
        log.info("%s is already extracted into %s; skipping", archive.name, dest_dir)
        return done
    dest_dir.mkdir(parents=True, exist_ok=True)
    with locked(
        dest_dir / f".{archive.name}.extract.lock", f"waiting for another extraction of {archive.name}"
    ):
        done = _tar_done(marker, archive, dest_dir)  # done by another process meanwhile
        if done is not None:
            return done
        for stale in dest_dir.glob(f".{archive.name}.extracting-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a killed extraction
        tmp = Path(tempfile.mkdtemp(prefix=f".{archive.name}.extracting-", dir=dest_dir))
        try:
            names = _extract_tar_members(archive, dest_dir, tmp)
            for child in sorted(tmp.iterdir()):
                _move_into(child, dest_dir / child.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        fsync_dir(dest_dir)
        atomic_write_json(marker, {"archive": file_id(archive), "files": names})
    log.info("extracted %d file(s) from %s into %s", len(names), archive.name, dest_dir)
    return [dest_dir / name for name in names]


def _extract_tar_members(archive: Path, dest_dir: Path, tmp: Path) -> list[str]:
    """Check and write every member into ``tmp``; the regular files' names, in archive order."""
    root = os.path.abspath(dest_dir)
    files: dict[str, None] = {}  # an ordered set
    with (
        open(archive, "rb") as raw,
        progress_bar(archive.stat().st_size, f"extracting {archive.name}") as bar,
    ):
        try:
            with tarfile.open(fileobj=raw, mode="r:*") as tf:
                for member in tf:
                    _extract_tar_member(tf, member, archive, dest_dir, root, tmp, files)
                    bar.update(raw.tell() - bar.n)
        except tarfile.ReadError as exc:
            if not files:
                raise DataError(
                    f"{archive} is not a readable tar archive ({exc}); download it again"
                ) from None
            raise _corrupted(archive, exc) from None
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                raise DataError(
                    f"extracting {archive.name} into {dest_dir}: the disk is full; nothing was "
                    "extracted; free some space or point the workspace elsewhere (AUDIOTAG_WORKSPACE)"
                ) from None
            raise _corrupted(archive, exc) from None
    return list(files)


def _corrupted(archive: Path, exc: BaseException) -> DataError:
    return DataError(
        f"{archive}: the archive is truncated or corrupted ({type(exc).__name__}: {exc}); nothing was "
        "extracted; delete it and download it again"
    )


def _extract_tar_member(
    tf: tarfile.TarFile,
    member: tarfile.TarInfo,
    archive: Path,
    dest_dir: Path,
    root: str,
    tmp: Path,
    files: dict[str, None],
) -> None:
    name = _tar_name(member)
    reason = _tar_unsafe_reason(member, name, root, set(files) if member.islnk() else set())
    if reason is not None:
        raise DataError(
            f"{archive}: refusing to extract entry {member.name!r} into {dest_dir}: {reason}. Nothing was "
            "extracted; the archive is damaged or malicious: get it from the official source"
        )
    if not name:  # the archive's root folder itself ("./")
        return
    target = tmp / name
    if member.isdir():
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    if member.islnk():  # a second name for a file already extracted: a copy, never a link
        shutil.copyfile(tmp / _tar_name(tarfile.TarInfo(member.linkname)), target)
    else:
        source = tf.extractfile(member)
        if source is None:  # pragma: no cover - isreg() members always have data
            raise _corrupted(archive, ValueError(f"no data for {member.name!r}"))
        with source, open(target, "wb") as out:
            shutil.copyfileobj(source, out, CHUNK)
    files[name] = None
