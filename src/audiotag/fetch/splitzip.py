"""Split zip archives joined into one zip (:func:`join_split_zip`)."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import struct
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audiotag.core.atomic import atomic_path, atomic_write_json, read_json_object
from audiotag.core.errors import DataError
from audiotag.fetch.http import CHUNK, check_free_space, file_id, human_size, progress_bar

log = logging.getLogger(__name__)

_SIG_LOCAL = b"PK\x03\x04"
_SIG_CENTRAL = b"PK\x01\x02"
_SIG_EOCD = b"PK\x05\x06"
_SIG_Z64_EOCD = b"PK\x06\x06"
_SIG_Z64_LOCATOR = b"PK\x06\x07"
_SPLIT_MARKERS = (b"PK\x07\x08", b"PK00")  # the first 4 bytes of the first part of a split archive
_EOCD = struct.Struct("<4s4H2LH")
_Z64_LOCATOR = struct.Struct("<4sLQL")
_Z64_EOCD = struct.Struct("<4sQ2H2L4Q")
_CENTRAL = struct.Struct("<4s6H3L5H2L")
_LOCAL = struct.Struct("<4s5H3L2H")
ZIP64_LIMIT = 0xFFFFFFFF  # offsets/sizes at or above need Zip64 fields (a module constant for tests)
ZIP64_COUNT_LIMIT = 0xFFFF


class _Parts:
    """The parts of a split archive read as one stream addressed by (disk, offset)."""

    def __init__(self, parts: Sequence[Path], stack: contextlib.ExitStack) -> None:
        self.paths = list(parts)
        self.sizes = [p.stat().st_size for p in self.paths]
        self.files = [stack.enter_context(p.open("rb")) for p in self.paths]
        head = self.files[0].read(4)
        self.skip = 4 if head in _SPLIT_MARKERS and len(self.paths) > 1 else 0
        self.bases = []
        total = -self.skip
        for size in self.sizes:
            self.bases.append(total)
            total += size

    def position(self, disk: int, offset: int) -> int:
        """Where byte ``offset`` of part ``disk`` lands in the joined file."""
        return self.bases[disk] + offset

    def read(self, disk: int, offset: int, n: int, what: str) -> bytes:
        if not 0 <= disk < len(self.paths):
            raise DataError(
                f"{what} is said to be on part {disk + 1} but the archive has {len(self.paths)} parts"
            )
        chunks: list[bytes] = []
        while n > 0:
            if disk >= len(self.paths):
                raise DataError(
                    f"{what} runs past the end of {self.paths[-1].name}; a part is truncated: download the "
                    "parts again"
                )
            if offset >= self.sizes[disk]:
                offset -= self.sizes[disk]
                disk += 1
                continue
            self.files[disk].seek(offset)
            chunk = self.files[disk].read(min(n, self.sizes[disk] - offset))
            chunks.append(chunk)
            n -= len(chunk)
            offset = 0
            disk += 1
        return b"".join(chunks)


@dataclass
class _Entry:
    name: str
    fixed: list[Any]  # the 17 fields of the central directory header
    name_raw: bytes
    extra: bytes
    comment: bytes
    csize: int
    usize: int
    offset: int
    disk: int


def _order_parts(parts: Sequence[Path]) -> list[Path]:
    """x.z01, x.z02, ..., x.zip in order; a gap in the numbers is reported by name."""
    paths = [Path(p) for p in parts]
    if not paths:
        raise DataError("join_split_zip: no parts given")
    lasts = [p for p in paths if p.suffix.lower() == ".zip"]
    numbered = {p: re.fullmatch(r"\.z(\d+)", p.suffix.lower()) for p in paths}
    if not lasts and all(numbered.values()):
        last = paths[0].with_suffix(".zip")
        raise DataError(
            f"split archive {last.name}: the last part {last.name} (it holds the directory) is missing from "
            f"the list; download it into {last.parent} and run again"
        )
    if len(lasts) != 1 or any(numbered[p] is None for p in paths if p not in lasts):
        return paths  # not the usual naming: trust the order given
    last = lasts[0]
    ordered = sorted((p for p in paths if p != last), key=lambda p: int(numbered[p].group(1)))  # type: ignore[union-attr]
    numbers = [int(numbered[p].group(1)) for p in ordered]  # type: ignore[union-attr]
    wanted = list(range(1, len(ordered) + 1))
    if numbers != wanted:
        top = max(numbers, default=0)
        missing = [f"{last.stem}.z{i:02d}" for i in range(1, top + 1) if i not in numbers]
        raise DataError(
            f"split archive {last.name}: part(s) {', '.join(missing)} missing from the list; download them "
            f"into {last.parent} and run again"
        )
    for p in [*ordered, last]:
        if not p.is_file():
            raise DataError(f"split archive {last.name}: part {p} is missing; download it and run again")
    return [*ordered, last]


def _find_eocd(parts: _Parts) -> tuple[int, tuple[Any, ...]]:
    last = len(parts.paths) - 1
    size = parts.sizes[last]
    n = min(size, _EOCD.size + 0xFFFF)
    tail = parts.read(last, size - n, n, f"the end of {parts.paths[last].name}")
    pos = tail.rfind(_SIG_EOCD)
    while pos >= 0 and pos + _EOCD.size > len(tail):
        pos = tail.rfind(_SIG_EOCD, 0, pos)
    if pos < 0:
        raise DataError(
            f"{parts.paths[last]}: no end-of-central-directory record; this part is truncated or is not "
            "the last part (.zip) of the archive: download it again"
        )
    return size - n + pos, _EOCD.unpack_from(tail, pos)


def _parse_zip64_extra(extra: bytes, usize: int, csize: int, offset: int, disk: int) -> tuple[int, ...]:
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<2H", extra, pos)
        if tag == 0x0001:
            data = extra[pos + 4 : pos + 4 + length]
            values = []
            i = 0
            for current, width in ((usize, 8), (csize, 8), (offset, 8), (disk, 4)):
                limit = 0xFFFF if width == 4 else 0xFFFFFFFF
                if current == limit and i + width <= len(data):
                    values.append(int.from_bytes(data[i : i + width], "little"))
                    i += width
                else:
                    values.append(current)
            return tuple(values)
        pos += 4 + length
    return usize, csize, offset, disk


def _strip_zip64_extra(extra: bytes) -> bytes:
    out, pos = b"", 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<2H", extra, pos)
        if tag != 0x0001:
            out += extra[pos : pos + 4 + length]
        pos += 4 + length
    return out + extra[pos:]


def _read_central(parts: _Parts, disk: int, offset: int, size: int, count: int) -> list[_Entry]:
    where = f"the central directory (in {parts.paths[min(disk, len(parts.paths) - 1)].name})"
    data = parts.read(disk, offset, size, where)
    entries: list[_Entry] = []
    pos = 0
    while pos < len(data) and len(entries) < count:
        if data[pos : pos + 4] != _SIG_CENTRAL or pos + _CENTRAL.size > len(data):
            raise DataError(f"{where} is damaged at entry {len(entries) + 1}: download the parts again")
        fixed = list(_CENTRAL.unpack_from(data, pos))
        nlen, xlen, clen = fixed[10], fixed[11], fixed[12]
        start = pos + _CENTRAL.size
        name_raw = data[start : start + nlen]
        extra = data[start + nlen : start + nlen + xlen]
        comment = data[start + nlen + xlen : start + nlen + xlen + clen]
        usize, csize, off, dsk = _parse_zip64_extra(extra, fixed[9], fixed[8], fixed[16], fixed[13])
        name = name_raw.decode("utf-8" if fixed[3] & 0x800 else "cp437", errors="replace")
        entries.append(_Entry(name, fixed, name_raw, extra, comment, csize, usize, off, dsk))
        pos = start + nlen + xlen + clen
    if len(entries) != count:
        raise DataError(f"{where} holds {len(entries)} entries, expected {count}: download the parts again")
    return entries


def _check_layout(parts: _Parts, entries: list[_Entry], cd_disk: int, cd_position: int) -> None:
    """Every entry starts with a file header, and its data ends where the next record begins; a part
    that is shorter or longer than the archive says is named."""
    placed: list[tuple[int, _Entry, int]] = []
    for e in entries:
        where = f"{e.name} (part {parts.paths[min(e.disk, len(parts.paths) - 1)].name}, offset {e.offset})"
        if e.disk >= len(parts.paths) or e.offset >= parts.sizes[e.disk]:
            part = parts.paths[min(e.disk, len(parts.paths) - 1)]
            raise DataError(
                f"{part}: the archive puts {e.name} at offset {e.offset} but the part is only "
                f"{parts.sizes[min(e.disk, len(parts.paths) - 1)]} bytes: it is truncated; download it again"
            )
        header = parts.read(e.disk, e.offset, _LOCAL.size, f"the header of {where}")
        fields = _LOCAL.unpack(header)
        if fields[0] != _SIG_LOCAL:
            raise DataError(
                f"{parts.paths[e.disk]}: no file header for {e.name} at offset {e.offset}; the part is "
                "corrupted or belongs to another archive: download it again"
            )
        length = _LOCAL.size + fields[9] + fields[10] + e.csize
        placed.append((parts.position(e.disk, e.offset), e, length))
    placed.sort(key=lambda t: t[0])
    for i, (pos, e, length) in enumerate(placed):
        next_pos, next_disk = (
            (placed[i + 1][0], placed[i + 1][1].disk) if i + 1 < len(placed) else (cd_position, cd_disk)
        )
        if next_disk == e.disk:
            continue  # only part boundaries tell whether a part has the right length
        gap = next_pos - (pos + length)
        allowed = (12, 16, 20, 24) if e.fixed[3] & 0x08 else (0,)
        if gap in allowed:
            continue
        part = parts.paths[e.disk]
        how = "shorter" if gap < min(allowed) else "longer"
        raise DataError(
            f"{part}: the data of {e.name} does not end where the archive says ({abs(gap - allowed[0])} "
            f"bytes off): this part is {how} than it should be (truncated or corrupted); download it again"
        )


def _central_record(e: _Entry, offset: int) -> tuple[bytes, bool]:
    """The central directory header of ``e`` for a single-disk archive with its header at ``offset``."""
    fixed = list(e.fixed)
    extra = _strip_zip64_extra(e.extra)
    z64 = b""
    big_u, big_c, big_o = e.usize >= ZIP64_LIMIT, e.csize >= ZIP64_LIMIT, offset >= ZIP64_LIMIT
    if big_u:
        z64 += struct.pack("<Q", e.usize)
    if big_c:
        z64 += struct.pack("<Q", e.csize)
    if big_o:
        z64 += struct.pack("<Q", offset)
    fixed[9] = 0xFFFFFFFF if big_u else e.usize
    fixed[8] = 0xFFFFFFFF if big_c else e.csize
    fixed[16] = 0xFFFFFFFF if big_o else offset
    fixed[13] = 0  # disk number start
    if z64:
        extra = struct.pack("<2H", 0x0001, len(z64)) + z64 + extra
        fixed[2] = max(fixed[2], 45)
    fixed[11] = len(extra)
    return _CENTRAL.pack(*fixed) + e.name_raw + extra + e.comment, bool(z64)


def join_split_zip(parts: list[Path], out: Path, *, verify_crc: bool = False) -> Path:
    """Join an Info-ZIP split archive (``x.z01 ... x.zNN, x.zip``) into the single zip ``out``.

    The equivalent of ``zip -s 0 x.zip --out out``: the parts are copied one after the other (without
    the split marker at the start of the first), and the central directory is rewritten with offsets
    into the joined file (Zip64 where they pass 4 GiB). Streaming, so memory stays small; written
    atomically; the result is opened with :mod:`zipfile` before it is renamed into place
    (``verify_crc`` also reads every entry and checks its CRC). A missing, truncated or corrupted
    part is named in the error. A join already done from the same parts (same sizes and times) is
    skipped.
    """
    ordered = _order_parts(parts)
    out = Path(out)
    stamp_file = out.with_name(f".{out.name}.joined")
    ident = [file_id(p) for p in ordered]
    stamp = read_json_object(stamp_file)
    if out.is_file() and stamp and stamp.get("parts") == ident and stamp.get("size") == out.stat().st_size:
        log.info("%s is already joined from %d parts; skipping", out, len(ordered))
        return out
    with contextlib.ExitStack() as stack:
        src = _Parts(ordered, stack)
        eocd_pos, eocd = _find_eocd(src)
        _, disk_no, cd_disk, _, n_total, cd_size, cd_off, _ = eocd
        last = len(ordered) - 1
        comment = src.read(last, eocd_pos + _EOCD.size, eocd[7], "the archive comment")
        total_disks = disk_no + 1
        if eocd_pos >= _Z64_LOCATOR.size:
            loc = _Z64_LOCATOR.unpack(
                src.read(last, eocd_pos - _Z64_LOCATOR.size, _Z64_LOCATOR.size, "zip64")
            )
            if loc[0] == _SIG_Z64_LOCATOR:
                z64_disk, z64_off, total_disks = loc[1], loc[2], loc[3]
                rec = _Z64_EOCD.unpack(src.read(z64_disk, z64_off, _Z64_EOCD.size, "the zip64 end record"))
                if rec[0] != _SIG_Z64_EOCD:
                    raise DataError(
                        f"{ordered[z64_disk]}: the zip64 end record is damaged; download it again"
                    )
                cd_disk, n_total, cd_size, cd_off = rec[5], rec[7], rec[8], rec[9]
        _check_part_count(ordered, total_disks)
        entries = _read_central(src, cd_disk, cd_off, cd_size, n_total)
        cd_position = src.position(cd_disk, cd_off)
        _check_layout(src, entries, cd_disk, cd_position)
        check_free_space(out.parent, cd_position + cd_size + 1024, f"joining {ordered[-1].name}")
        log.info("joining %d parts of %s into %s", len(ordered), ordered[-1].name, out)
        with atomic_path(out) as tmp:
            with open(tmp, "wb") as dst, progress_bar(cd_position, f"joining {ordered[-1].name}") as bar:
                for disk in range(cd_disk + 1):
                    f = src.files[disk]
                    f.seek(src.skip if disk == 0 else 0)
                    left = (cd_off if disk == cd_disk else src.sizes[disk]) - (src.skip if disk == 0 else 0)
                    while left > 0:
                        block = f.read(min(CHUNK, left))
                        if not block:
                            raise DataError(f"{ordered[disk]} ended early while joining; download it again")
                        dst.write(block)
                        left -= len(block)
                        bar.update(len(block))
                central = bytearray()
                any_z64 = False
                for e in entries:
                    record, z64 = _central_record(e, src.position(e.disk, e.offset))
                    central += record
                    any_z64 |= z64
                dst.write(central)
                _write_end(dst, cd_position, len(central), len(entries), comment, any_z64)
            _verify_joined(tmp, entries, src, verify_crc)
        atomic_write_json(stamp_file, {"parts": ident, "size": out.stat().st_size})
    log.info("joined %s (%s, %d entries)", out, human_size(out.stat().st_size), len(entries))
    return out


def _check_part_count(ordered: list[Path], total_disks: int) -> None:
    """DataError naming the missing parts (or the extra ones) when the archive has another count."""
    if total_disks == len(ordered):
        return
    last_path = ordered[-1]
    if total_disks > len(ordered):
        names = [f"{last_path.stem}.z{i:02d}" for i in range(1, total_disks)]
        given = {p.name.lower() for p in ordered}
        missing = [n for n in names if n.lower() not in given] or names[len(ordered) - 1 :]
        raise DataError(
            f"split archive {last_path.name} has {total_disks} parts but {len(ordered)} were given; "
            f"missing: {', '.join(missing)} (download into {last_path.parent} and run again)"
        )
    raise DataError(
        f"split archive {last_path.name} has {total_disks} part(s) but {len(ordered)} were given; "
        "pass only the parts of this archive"
    )


def _write_end(
    dst: io.BufferedWriter, cd_start: int, cd_size: int, count: int, comment: bytes, z64: bool
) -> None:
    need = z64 or cd_start >= ZIP64_LIMIT or cd_size >= ZIP64_LIMIT or count >= ZIP64_COUNT_LIMIT
    if need:
        z64_pos = cd_start + cd_size
        dst.write(
            _Z64_EOCD.pack(_SIG_Z64_EOCD, _Z64_EOCD.size - 12, 45, 45, 0, 0, count, count, cd_size, cd_start)
        )
        dst.write(_Z64_LOCATOR.pack(_SIG_Z64_LOCATOR, 0, z64_pos, 1))
    small_count = min(count, ZIP64_COUNT_LIMIT) if not need else ZIP64_COUNT_LIMIT
    dst.write(
        _EOCD.pack(
            _SIG_EOCD,
            0,
            0,
            small_count,
            small_count,
            0xFFFFFFFF if need else cd_size,
            0xFFFFFFFF if need else cd_start,
            len(comment),
        )
    )
    dst.write(comment)


def _verify_joined(tmp: Path, entries: list[_Entry], src: _Parts, verify_crc: bool) -> None:
    by_name = {e.name: e for e in entries}
    try:
        with zipfile.ZipFile(tmp) as zf:
            infos = zf.infolist()
            if len(infos) != len(entries):
                raise DataError(f"the joined archive lists {len(infos)} entries, expected {len(entries)}")
            if not verify_crc:
                return
            with progress_bar(len(infos), "checking CRCs", unit="file") as bar:
                for info in infos:
                    try:
                        with zf.open(info) as member:
                            while member.read(CHUNK):
                                pass
                    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
                        e = by_name.get(info.filename)
                        where = src.paths[e.disk].name if e is not None else "one of the parts"
                        raise DataError(
                            f"{info.filename} in the split archive {src.paths[-1].name} is corrupted "
                            f"({exc}); it starts in {where}: download the parts again"
                        ) from None
                    bar.update(1)
    except zipfile.BadZipFile as exc:
        raise DataError(
            f"joining {src.paths[-1].name} gave an archive zipfile cannot read ({exc}); "
            "download the parts again"
        ) from None
