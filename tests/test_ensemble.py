from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from audiotag.cli import main
from audiotag.ensemble import blend
from tests.conftest import tiny_args


def test_blend_rules() -> None:
    a = np.array([[0.2, 0.8]])
    b = np.array([[0.8, 0.2]])
    np.testing.assert_allclose(blend([a, b], "mean"), [[0.5, 0.5]])
    np.testing.assert_allclose(blend([a, b], "geometric"), [[0.4, 0.4]])


def write_ensemble(path: Path, members: list[str], method: str = "mean") -> Path:
    path.write_text(f"name: {path.stem}\ncompetition: demo\nmembers: {members}\nmethod: {method}\n")
    return path


@pytest.mark.slow
def test_two_members_blend_and_mismatched_folds_are_refused(workspace: Path, capsys) -> None:
    one_epoch = ["train.epochs=1"]
    assert main([*tiny_args("prepare", "train", extra=one_epoch), "--run-name", "a"]) == 0
    assert main([*tiny_args("train", extra=[*one_epoch, "train.seed=5"]), "--run-name", "b"]) == 0
    assert main([*tiny_args("train", extra=[*one_epoch, "competition.fold_seed=7"]), "--run-name", "c"]) == 0
    capsys.readouterr()

    good = write_ensemble(workspace / "ab.yaml", ["a", "b"], "geometric")
    assert main(["ensemble", "--config", str(good)]) == 0
    out = capsys.readouterr().out
    assert "blend" in out and "a" in out and "b" in out
    report = json.loads((workspace / "submissions" / "demo" / "ab.json").read_text())
    assert set(report["members"]) == {"a", "b"} and report["method"] == "geometric"
    assert len(report["blend"]["folds"]) == 3

    bad = write_ensemble(workspace / "ac.yaml", ["a", "c"])
    assert main(["ensemble", "--config", str(bad)]) == 2
    assert "different fold files" in capsys.readouterr().err
    assert not (workspace / "submissions" / "demo" / "ac.csv").exists()

    missing = write_ensemble(workspace / "ax.yaml", ["a", "nosuchrun"])
    assert main(["ensemble", "--config", str(missing)]) == 2
    assert "nosuchrun" in capsys.readouterr().err
