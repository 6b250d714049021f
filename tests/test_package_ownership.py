"""``package OUT`` deletes only what a package wrote (issue 26, item 1): core/owned.py's one rule for "is
this folder ours", a manifest of the files written, kept right through a kill."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from audiotag.cli.main import main
from audiotag.core.errors import ConfigError
from audiotag.core.owned import MANIFEST, STAGING, OwnedFolder
from tests import demo_workspace

WRITER = "audiotag package"


def write(folder: OwnedFolder, files: dict[str, str], force: bool = False) -> list[str]:
    kept = folder.claim(force)
    for rel, text in files.items():
        (folder.staging / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder.staging / rel).write_text(text)
    folder.publish()
    return kept


def test_a_folder_is_ours_only_when_the_manifest_lists_every_entry(tmp_path: Path) -> None:
    out = OwnedFolder(tmp_path / "out", WRITER)
    assert out.foreign() == []  # no folder yet
    write(out, {"bundle.json": "{}", "members/a/best.pt": "w"})
    assert out.foreign() == [] and not (out.folder / STAGING).exists()
    (out.folder / "keep.txt").write_text("mine")
    (out.folder / "sub").mkdir()
    (out.folder / "members" / "a" / "best.pt").write_text("changed size")
    assert out.foreign() == ["keep.txt", "members/a/best.pt", "sub"]
    assert OwnedFolder(out.folder, "audiotag report").foreign()  # another writer's manifest proves nothing


@pytest.mark.parametrize("manifest", ["{}", '{"writer": "audiotag package"}', "not json"])
def test_a_bundle_json_or_a_bare_manifest_is_not_proof(tmp_path: Path, manifest: str) -> None:
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "bundle.json").write_text("{}")
    (out / "keep.txt").write_text("mine")
    (out / MANIFEST).write_text(manifest)
    with pytest.raises(ConfigError, match=r"did not write .*--force"):
        OwnedFolder(out, WRITER).claim(force=False)
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST, "bundle.json", "keep.txt", "sub"])


def test_a_rewrite_replaces_its_own_files_and_force_keeps_the_others(tmp_path: Path) -> None:
    out = OwnedFolder(tmp_path / "out", WRITER)
    write(out, {"a.txt": "1", "old/only.txt": "2"})
    write(out, {"a.txt": "11", "new.txt": "3"})
    assert sorted(p.relative_to(out.folder).as_posix() for p in out.folder.rglob("*")) == [
        MANIFEST,
        "a.txt",
        "new.txt",
    ]
    (out.folder / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"keep\.txt.*--force"):
        out.claim(force=False)
    assert write(out, {"a.txt": "111"}, force=True) == ["keep.txt"]
    assert (out.folder / "keep.txt").read_text() == "mine" and not (out.folder / "new.txt").exists()
    assert out.foreign() == ["keep.txt"]  # still not ours: the next write without --force is refused
    out.claim(force=True)
    (out.staging / "keep.txt").write_text("package's")
    with pytest.raises(ConfigError, match=r"keep\.txt exists .* never overwritten"):
        out.publish()
    out.abandon()
    assert (out.folder / "keep.txt").read_text() == "mine" and (out.folder / "a.txt").read_text() == "111"


def test_a_kill_at_any_step_leaves_a_folder_the_rerun_proves_is_ours(tmp_path: Path, monkeypatch) -> None:
    """Stop ``publish`` before each of its file moves and removals: the manifest always covers it all."""
    old, new = {"a.txt": "1", "gone.txt": "2"}, {"a.txt": "11", "b/c.txt": "3"}
    calls = {"n": 0}
    for stop in range(1, 20):
        out = OwnedFolder(tmp_path / f"out{stop}", WRITER)
        write(out, old)
        calls["n"] = 0

        def counting(real, stop=stop):
            def step(*args):
                calls["n"] += 1
                if calls["n"] == stop:
                    raise KeyboardInterrupt  # a kill, as far as the folder can tell
                return real(*args)

            return step

        with monkeypatch.context() as m:
            m.setattr(os, "replace", counting(os.replace))
            m.setattr(Path, "unlink", counting(Path.unlink))
            try:
                write(out, new)
            except KeyboardInterrupt:
                pass
            else:
                break  # the write had fewer steps than ``stop``: every one was tried
        fresh = OwnedFolder(out.folder, WRITER)
        assert fresh.foreign() == [], f"stopped at step {stop}"
        write(fresh, new)
        assert sorted(p.name for p in out.folder.rglob("*.txt")) == ["a.txt", "c.txt"], stop
    assert stop >= 6, "publish took fewer steps than expected: the test no longer stops it everywhere"


def test_package_refuses_a_folder_with_a_stray_bundle_json_before_any_work(workspace: Path, capsys) -> None:
    out = workspace / "out"
    (out / "sub").mkdir(parents=True)
    (out / "bundle.json").write_text("{}")
    (out / "keep.txt").write_text("mine")
    assert main(["package", str(out)]) == 2
    err = capsys.readouterr().err
    assert "did not write (bundle.json, keep.txt, sub)" in err and "--force" in err
    assert sorted(p.name for p in out.iterdir()) == ["bundle.json", "keep.txt", "sub"]


@pytest.mark.slow
def test_package_keeps_a_sibling_partial_folder_and_copies_code_with_the_umask(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    demo = demo_workspace.copy_to(demo_workspace.trained_base(tmp_path_factory), tmp_path / "ws", monkeypatch)
    out = demo / "bundle"
    (demo / "bundle.partial").mkdir()
    (demo / "bundle.partial" / "notes.txt").write_text("mine")
    old_mask = os.umask(0o077)
    try:
        assert main(["package", str(out)]) == 0
    finally:
        os.umask(old_mask)
    assert (demo / "bundle.partial" / "notes.txt").read_text() == "mine"
    code = out / "code" / "audiotag" / "__init__.py"
    assert stat.S_IMODE(code.stat().st_mode) == 0o600  # the umask's, not the checkout's 0o644
    assert OwnedFolder(out, WRITER).foreign() == []
    (out / "keep.txt").write_text("mine")
    assert main(["package", str(out)]) == 2
    assert main(["package", str(out), "--force"]) == 0
    assert (out / "keep.txt").read_text() == "mine" and (out / "bundle.json").is_file()
