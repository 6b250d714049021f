"""One trained tiny-demo workspace per test session, copied into each test that needs one.

Built once (about 25 s on 2 cores): prepare, train the demo's default members ``cnn_small`` (3 folds,
2 epochs) and ``probe_aisfx`` (a linear probe on aisfx's frozen embedding), train a second CNN
``cnn_seed1`` (1 epoch, another seed), and run three ensembles: the demo's default (the two default members),
``pair_rank`` (both members, rank blend with searched weights) and ``pair_stack`` (a logreg stacker).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from audiotag.cli.main import main
from tests.conftest import tiny_args

ENSEMBLES = {
    "pair_rank": "competition: demo\nmembers: [cnn_small, cnn_seed1]\nmethod: rank\nweights: search\n",
    "pair_stack": "competition: demo\nmembers: [cnn_small, cnn_seed1]\nmethod: mean\nstacking: logreg\n",
}
DONE = ".built"


def ensemble_path(root: Path, name: str) -> Path:
    return root / "ensembles" / f"{name}.yaml"


def build(root: Path) -> Path:
    """The trained workspace under ``root`` (competition/, submissions/, ensembles/), built once."""
    if (root / DONE).is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUDIOTAG_WORKSPACE", str(root / "competition"))
        mp.setenv("AUDIOTAG_SUBMISSIONS", str(root / "submissions"))
        assert main(tiny_args("prepare", "train", "ensemble")) == 0
        second = tiny_args("train", extra=["train.seed=1", "train.epochs=1"])
        assert main([*second, "--run-name", "cnn_seed1"]) == 0
        for name, text in ENSEMBLES.items():
            path = ensemble_path(root, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            assert main(["ensemble", "--config", str(path)]) == 0
    (root / DONE).touch()
    return root


def copy_to(base: Path, dest: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the built workspace at ``dest``, with the environment pointing at it."""
    shutil.copytree(base, dest, symlinks=True)
    for path in dest.rglob("*.json"):  # run.json and the reports hold absolute paths
        text = path.read_text()
        if str(base) in text:
            path.write_text(text.replace(str(base), str(dest)))
    monkeypatch.setenv("AUDIOTAG_WORKSPACE", str(dest / "competition"))
    monkeypatch.setenv("AUDIOTAG_SUBMISSIONS", str(dest / "submissions"))
    return dest


def trained_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.getbasetemp() / "trained_demo")
