"""End to end on the tiny demo: a fine-tuned run, ``embed`` (every layer in one pass, from a checkpoint
file), a ``linear_probe`` run that reuses those embeddings, and an ensemble of the two.

The frozen model is a small CNN whose weights are written as an official PANNs checkpoint, so the
test needs no download and runs in seconds; ``tests/test_representation.py`` checks the real
models' layers (aisfx's real weights included).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from audiotag.cli.main import main
from audiotag.config.files import load_group, validate
from audiotag.config.schema import FeatureConfig
from audiotag.core.paths import REPO_ROOT
from audiotag.models.cnn14 import CnnConfig
from audiotag.models.registry import build_model
from audiotag.reports.leaderboard import run_row
from tests import demo_workspace
from tests.conftest import TINY_DEMO

pytestmark = pytest.mark.slow

COMPETITION = [s for s in TINY_DEMO if s.startswith("competition.")]
FRONT_END = "logmel_16k_64"  # the fine-tuned member's front-end: one feature cache serves both


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


def panns_checkpoint(path: Path) -> Path:
    """A seeded ``cnn_small`` backbone saved as PANNs ships its files: {"model": bn0.*, conv_block*}."""
    torch.manual_seed(0)
    cfg = validate(CnnConfig, load_group("model", "cnn_small"), "cnn_small")
    features = validate(FeatureConfig, load_group("features", FRONT_END), FRONT_END)
    tagger = build_model(cfg, features.n_mels, 1, 100)
    torch.save({"model": tagger.backbone.state_dict()}, path)
    return path


def test_embed_probe_and_ensemble_with_a_fine_tuned_member(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the tiny demo with a fine-tuned member, cnn_small (built once per test session, copied here)
    workspace = demo_workspace.copy_to(
        demo_workspace.trained_base(tmp_path_factory), tmp_path / "ws", monkeypatch
    )
    weights = panns_checkpoint(tmp_path / "frozen_cnn.pth")
    comp_yaml = tiny_competition_yaml(tmp_path)
    embed = ["embed", "-c", str(comp_yaml), "--model", str(weights), "--arch", "cnn_small"]
    demo = workspace / "competition" / "demo"
    before = {p.name for p in (demo / "embeddings").iterdir() if p.is_dir()}  # the default probe's
    assert (
        main([*embed, "--features", FRONT_END, "--layers", "all", "--workers", "1", "--device", "cpu"]) == 0
    )
    (folder,) = (p for p in (demo / "embeddings").iterdir() if p.is_dir() and p.name not in before)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["complete"] and manifest["layers"] == ["1", "2", "3", "4", "embedding"]
    assert manifest["dims"] == {"1": 16 * 32, "2": 32 * 16, "3": 64 * 8, "4": 128 * 4, "embedding": 128}
    assert manifest["n_clips"] == 14 * (6 + 2)  # every clip, train and test

    probe = tmp_path / "probe_frozen.yaml"
    probe.write_text(
        f"competition: demo\nfeatures: {FRONT_END}\n"
        "model:\n  name: linear_probe\n"
        f"  embedding: {{weights: {weights}, model: cnn_small, layers: [2, 4]}}\n"
        "  c_grid: [0.01, 1.0]\n"
    )
    args = ["train", "--config", str(probe), "--workers", "1"]
    for item in COMPETITION:
        args += ["--set", item]
    assert main(args) == 0
    assert {p.name for p in (demo / "embeddings").iterdir() if p.is_dir()} == before | {folder.name}  # reused
    run = demo / "runs" / "probe_frozen"
    metrics = json.loads((run / "metrics.json").read_text())
    assert sorted(metrics["folds"]) == ["0", "1", "2"] and 0 < metrics["mean"] <= 1
    assert metrics["test_score"] is not None
    assert len(pd.read_parquet(run / "oof.parquet")) == metrics["n_oof"] == 14 * 6
    done = json.loads((run / "fold0" / "done.json").read_text())
    assert done["layers"] == ["2", "4"] and done["dims"] == 1024 and done["probe"]["c"] in (0.01, 1.0)
    row = run_row(run)
    assert row["model"] == "linear_probe" and row["folds"] == "3/3" and row["features"] == FRONT_END

    assert main(args) == 0  # done: every fold is skipped, the same files come back
    assert json.loads((run / "metrics.json").read_text()) == metrics

    ensemble = tmp_path / "blend.yaml"
    ensemble.write_text(
        "competition: demo\nmembers: [cnn_small, probe_frozen]\nmethod: mean\nweights: search\n"
    )
    overrides = [x for s in COMPETITION for x in ("--set", "ensemble." + s)]
    assert main(["ensemble", "--config", str(ensemble), *overrides]) == 0
    report = json.loads((workspace / "submissions" / "demo" / "blend.json").read_text())
    assert set(report["members"]) == {"cnn_small", "probe_frozen"}
