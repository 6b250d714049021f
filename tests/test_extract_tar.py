"""Safe tar extraction (:func:`extract_tar`, :func:`extract_archive`): layouts with and without a top
folder, refused members (nothing lands), idempotence, a killed extraction redone, broken archives."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from audiotag.core.errors import DataError
from audiotag.fetch.extract import archive_format, extract_archive, extract_tar


def _tar(path: Path, members: list[tuple[str, bytes | None]], mode: str = "w:gz", **links: str) -> Path:
    """A tar with regular files (bytes) and folders (None); ``links`` maps a member name to
    ``"sym:TARGET"`` or ``"hard:TARGET"`` (written after the files)."""
    with tarfile.open(path, mode) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        for name, spec in links.items():
            kind, target = spec.split(":", 1)
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE if kind == "sym" else tarfile.LNKTYPE
            info.linkname = target
            tf.addfile(info)
    return path


def _names(folder: Path) -> list[str]:
    """The files under ``folder``, less the extraction's own hidden lock and marker files."""
    rels = [p.relative_to(folder) for p in folder.rglob("*") if p.is_file()]
    return sorted(r.as_posix() for r in rels if not r.parts[0].startswith("."))


@pytest.mark.parametrize("suffix", [".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz"])
def test_every_tar_flavour_extracts_with_its_top_folder(tmp_path: Path, suffix: str) -> None:
    mode = {".tar.gz": "w:gz", ".tgz": "w:gz", ".tar": "w", ".tar.bz2": "w:bz2", ".tar.xz": "w:xz"}[suffix]
    archive = _tar(
        tmp_path / f"data{suffix}", [("top/", None), ("top/a/x.wav", b"x"), ("top/b.txt", b"b")], mode
    )
    dest = tmp_path / "raw"
    files = extract_archive(archive, dest)
    assert sorted(p.relative_to(dest).as_posix() for p in files) == ["top/a/x.wav", "top/b.txt"]
    assert (dest / "top" / "a" / "x.wav").read_bytes() == b"x"
    assert not [p for p in dest.iterdir() if p.name.startswith(".") and "extracting" in p.name]


def test_archive_without_top_folder_and_dot_slash_names(tmp_path: Path) -> None:
    archive = _tar(
        tmp_path / "sc.tar.gz", [("./", None), ("./yes/a_nohash_0.wav", b"1"), ("./testing_list.txt", b"t")]
    )
    dest = tmp_path / "raw"
    files = extract_tar(archive, dest)
    assert sorted(p.relative_to(dest).as_posix() for p in files) == ["testing_list.txt", "yes/a_nohash_0.wav"]
    assert _names(dest) == ["testing_list.txt", "yes/a_nohash_0.wav"]


def test_second_call_is_a_no_op_and_a_changed_archive_is_extracted_again(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "d.tar.gz", [("d/x.wav", b"one")])
    dest = tmp_path / "raw"
    extract_tar(archive, dest)
    target = dest / "d" / "x.wav"
    os.utime(target, (1, 1))
    assert extract_tar(archive, dest) == [target]
    assert target.stat().st_mtime == 1  # not written again
    _tar(archive, [("d/x.wav", b"two")])  # a new download of the archive
    extract_tar(archive, dest)
    assert target.read_bytes() == b"two"
    target.unlink()  # a file removed by hand is restored
    extract_tar(archive, dest)
    assert target.read_bytes() == b"two"


def test_killed_extraction_is_redone(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "d.tar.gz", [("d/x.wav", b"x"), ("d/y.wav", b"y")])
    dest = tmp_path / "raw"
    stale = dest / ".d.tar.gz.extracting-abc123" / "d"
    stale.mkdir(parents=True)
    (stale / "x.wav").write_bytes(b"half")
    (dest / "d").mkdir()
    (dest / "d" / "x.wav").write_bytes(b"half")  # killed while moving into place: no marker yet
    extract_tar(archive, dest)
    assert (dest / "d" / "x.wav").read_bytes() == b"x" and (dest / "d" / "y.wav").read_bytes() == b"y"
    assert not (dest / ".d.tar.gz.extracting-abc123").exists()


@pytest.mark.parametrize(
    ("members", "links", "reason"),
    [
        ([("ok.txt", b"ok"), ("../evil.txt", b"x")], {}, "climbs out of the folder"),
        ([("ok.txt", b"ok"), ("/tmp/evil.txt", b"x")], {}, "absolute path"),
        ([("ok.txt", b"ok")], {"link": "sym:/etc/passwd"}, "symbolic link"),
        ([("ok.txt", b"ok")], {"inside": "sym:ok.txt"}, "symbolic link"),
        ([("ok.txt", b"ok")], {"hard": "hard:../../etc/passwd"}, "hard link"),
        ([("ok.txt", b"ok")], {"hard": "hard:missing.txt"}, "not a file extracted before it"),
    ],
)
def test_unsafe_member_is_refused_and_nothing_lands(
    tmp_path: Path, members: list, links: dict, reason: str
) -> None:
    archive = _tar(tmp_path / "bad.tar.gz", members, **links)
    dest = tmp_path / "raw"
    with pytest.raises(DataError, match=f"refusing to extract entry .*{reason}"):
        extract_tar(archive, dest)
    assert _names(dest) == []  # not even ok.txt, which came first
    assert not (tmp_path / "evil.txt").exists()


def test_device_member_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dev.tar"
    with tarfile.open(path, "w") as tf:
        info = tarfile.TarInfo("fifo")
        info.type = tarfile.FIFOTYPE
        tf.addfile(info)
    with pytest.raises(DataError, match="device or FIFO"):
        extract_tar(path, tmp_path / "raw")


def test_hard_link_to_an_earlier_file_becomes_a_copy(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "h.tar", [("a/x.wav", b"data")], "w", **{"a/y.wav": "hard:a/x.wav"})
    dest = tmp_path / "raw"
    extract_tar(archive, dest)
    x, y = dest / "a" / "x.wav", dest / "a" / "y.wav"
    assert y.read_bytes() == b"data" and not y.is_symlink() and x.stat().st_ino != y.stat().st_ino


def test_truncated_and_non_tar_archives_are_named(tmp_path: Path) -> None:
    good = _tar(tmp_path / "g.tar.gz", [(f"d/{i}.bin", os.urandom(50_000)) for i in range(4)])
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError, match=r"cut.tar.gz.*(truncated or corrupted|not a readable tar)"):
        extract_tar(cut, tmp_path / "raw")
    assert _names(tmp_path / "raw") == []
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"this is no archive")
    with pytest.raises(DataError, match=r"junk\.tar\.gz is not a readable tar archive"):
        extract_tar(junk, tmp_path / "raw")
    with pytest.raises(DataError, match="does not exist"):
        extract_tar(tmp_path / "absent.tar.gz", tmp_path / "raw")


def test_archive_format_and_dispatch(tmp_path: Path) -> None:
    assert [archive_format(n) for n in ("a.zip", "A.TGZ", "b.tar.xz", "c.tar", "d.gz", "e.7z")] == [
        "zip",
        "tar",
        "tar",
        "tar",
        None,
        None,
    ]
    with zipfile.ZipFile(tmp_path / "z.zip", "w") as zf:
        zf.writestr("top/x.txt", "x")
    assert [p.name for p in extract_archive(tmp_path / "z.zip", tmp_path / "raw")] == ["x.txt"]
    (tmp_path / "e.7z").write_bytes(b"")
    with pytest.raises(DataError, match="not an archive this tool extracts"):
        extract_archive(tmp_path / "e.7z", tmp_path / "raw")
