"""End to end on the tiny demo: a fine-tuned run, ``embed`` (aisfx's real weights, every layer in one
pass), a ``linear_probe`` run that reuses those embeddings, and an ensemble of the two."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from audiotag.cli import main
from audiotag.leaderboard import run_row
from audiotag.paths import REPO_ROOT
from tests.conftest import TINY_DEMO, tiny_args

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("aisfx") is None, reason="aisfx is not installed"),
]

COMPETITION = [s for s in TINY_DEMO if s.startswith("competition.")]


def tiny_competition_yaml(folder: Path) -> Path:
    """The tiny demo's competition settings as a competition YAML (``embed -c`` takes one)."""
    tree = yaml.safe_load((REPO_ROOT / "configs" / "competitions" / "demo.yaml").read_text())
    for item in COMPETITION:
        key, value = item.removeprefix("competition.").split("=")
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    path = folder / "demo.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_embed_probe_and_ensemble_with_a_fine_tuned_member(workspace: Path, tmp_path: Path) -> None:
    assert main(tiny_args("prepare", "train")) == 0  # the fine-tuned member: cnn_small
    comp_yaml = tiny_competition_yaml(tmp_path)
    embed = ["embed", "-c", str(comp_yaml), "--model", "aisfx", "--layers", "all", "--workers", "1"]
    assert main([*embed, "--device", "cpu"]) == 0
    demo = workspace / "competition" / "demo"
    (folder,) = (p for p in (demo / "embeddings").iterdir() if p.is_dir())
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["complete"] and manifest["layers"] == ["1", "2", "3", "4", "embedding"]
    assert manifest["dims"] == {"1": 3072, "2": 3072, "3": 3072, "4": 6144, "embedding": 512}

    probe = REPO_ROOT / "configs" / "experiments" / "demo" / "probe_aisfx_fusion.yaml"
    sets = [*COMPETITION, "model.c_grid=[0.01,1.0]"]
    args = ["train", "--config", str(probe), "--workers", "1"]
    for item in sets:
        args += ["--set", item]
    assert main(args) == 0
    assert [p.name for p in (demo / "embeddings").iterdir() if p.is_dir()] == [folder.name]  # reused
    run = demo / "runs" / "probe_aisfx_fusion"
    metrics = json.loads((run / "metrics.json").read_text())
    assert sorted(metrics["folds"]) == ["0", "1", "2"] and 0 < metrics["mean"] <= 1
    assert metrics["test_score"] is not None
    oof = pd.read_parquet(run / "oof.parquet")
    assert len(oof) == metrics["n_oof"]
    done = json.loads((run / "fold0" / "done.json").read_text())
    assert done["layers"] == ["2", "4"] and done["dims"] == 9216 and done["probe"]["c"] in (0.01, 1.0)
    row = run_row(run)
    assert row["model"] == "linear_probe" and row["folds"] == "3/3" and row["features"] == "aisfx_44k_96"

    ensemble = tmp_path / "blend.yaml"
    ensemble.write_text(
        "competition: demo\nmembers: [cnn_small, probe_aisfx_fusion]\nmethod: mean\nweights: search\n"
    )
    assert (
        main(
            [
                "ensemble",
                "--config",
                str(ensemble),
                *[x for s in COMPETITION for x in ("--set", "ensemble." + s)],
            ]
        )
        == 0
    )
    report = json.loads((workspace / "submissions" / "demo" / "blend.json").read_text())
    assert set(report["members"]) == {"cnn_small", "probe_aisfx_fusion"}
