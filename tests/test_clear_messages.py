"""Messages, not tracebacks (issue 26, item 7): a full disk reads as one whichever write or cleanup hits
it (core/disk_full.py), and settings a command validates itself are named one per line."""

from __future__ import annotations

import errno
import math
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from audiotag.cli.main import main
from audiotag.core.disk_full import disk_full_as_error, disk_full_error
from audiotag.core.errors import DataError, TrainingError
from audiotag.core.staged import StagedWriter, appending
from audiotag.models.representation import EmbeddingConfig
from audiotag.stages import embed as stages_embed
from audiotag.stages import report
from audiotag.train import checkpoint


def enospc(filename: str | None = None) -> OSError:
    return OSError(errno.ENOSPC, "No space left on device", filename)


class FullWriter(StagedWriter):
    """A staged writer on a full disk: recording progress and closing (flushing) fail too."""

    def progress(self) -> dict:
        return {}

    def record_progress(self) -> None:
        raise enospc()

    def close(self) -> None:
        super().close()
        raise enospc()


def test_the_step_s_message_survives_a_second_enospc_in_the_cleanup(tmp_path: Path) -> None:
    full = r"the disk is full: .* the feature cache in"
    with (
        pytest.raises(DataError, match=full),
        appending(FullWriter(tmp_path, ["frames"])) as writer,
        disk_full_as_error(tmp_path, "the feature cache", lambda: 10),
    ):
        writer.files["frames"].write(b"x")
        raise enospc()


def test_the_top_level_finds_the_message_behind_a_cleanup_failure(tmp_path: Path) -> None:
    try:
        try:
            with disk_full_as_error(tmp_path, "the clip table", lambda: None):
                raise enospc()
        finally:
            raise enospc()  # a cleanup on the same full disk, outside any guard
    except OSError as exc:
        error = disk_full_error(exc)
    assert isinstance(error, DataError) and "while writing the clip table in" in str(error)
    unguarded = disk_full_error(enospc(str(tmp_path / "run.json")))
    assert f"while writing run.json in {tmp_path}" in str(unguarded)
    assert disk_full_error(RuntimeError("something else")) is None


@pytest.mark.parametrize(
    "text", ["basic_ios::clear: iostream error", "[enforce fail] unexpected pos 1856 vs 1752"]
)
def test_torch_s_full_disk_texts_are_a_full_disk(tmp_path: Path, monkeypatch, text: str) -> None:
    def full(obj, f, *args, **kwargs):
        raise RuntimeError(text)

    monkeypatch.setattr(checkpoint.torch, "save", full)
    with pytest.raises(TrainingError, match="the disk is full"):
        checkpoint.save_checkpoint(tmp_path / "last.pt", {"w": torch.zeros(3)})
    assert isinstance(disk_full_error(RuntimeError(text)), DataError)


def test_report_on_a_full_disk_says_so(workspace: Path, monkeypatch, capsys) -> None:
    def no_room(path, text):
        raise enospc()

    monkeypatch.setattr(report, "atomic_write_text", no_room)
    out = workspace / "r" / "page.html"
    assert main(["report", "-c", "demo", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert (
        f"the disk is full: no space left on the device while writing the report page.html in {out.parent}"
        in err
    )
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--window-seconds", "0"),
        ("--window-seconds", "-5"),
        ("--window-seconds", "nan"),
        ("--batch-size", "0"),
    ],
)
def test_embed_options_out_of_range_are_named(option: str, value: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["embed", "-m", "aisfx", option, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: expected" in err and repr(value) in err


@pytest.mark.parametrize("command", ["pretrain", "tune", "embed"])
def test_workers_below_one_are_refused_by_one_rule(command: str, capsys) -> None:
    """--workers of every command that builds a feature cache: cli/args.worker_count."""
    with pytest.raises(SystemExit) as exc:
        main([command, "--workers", "0"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --workers: 0 is not allowed: the feature cache needs 1 or more processes" in err


def test_a_validation_error_reaching_the_top_is_one_line_per_setting(monkeypatch, capsys) -> None:
    def embed(options):
        EmbeddingConfig(window_seconds=math.nan, batch_size=0)

    monkeypatch.setattr(stages_embed, "run_embed", embed)  # the command imports the stage when it runs
    assert main(["embed", "-m", "aisfx"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: EmbeddingConfig settings: invalid configuration\n")
    assert "  window_seconds: Input should be a finite number (got nan)" in err
    assert "  batch_size: Input should be greater than or equal to 1 (got 0)" in err
    assert "Traceback" not in err and ValidationError.__name__ not in err


class Stop(Exception):
    """Ends the command once it has what the test checks."""


def test_embed_takes_data_dir_like_the_other_commands(tmp_path: Path, monkeypatch, workspace) -> None:
    from audiotag.stages import embed

    seen = {}

    def prepare(competition, features, workers=None):
        seen["data_dir"] = competition.data_dir
        raise Stop

    monkeypatch.setattr(embed, "prepare", prepare)
    with pytest.raises(Stop):
        main(["embed", "-m", "aisfx", "-c", "demo", "--data-dir", str(tmp_path), "--device", "cpu"])
    assert seen["data_dir"] == str(tmp_path.resolve())
    assert main(["embed", "-m", "aisfx", "--data-dir", str(tmp_path / "absent")]) == 2
