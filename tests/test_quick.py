"""``--quick``: every default member on a bounded subset (``train.max_clips``), through ``ensemble`` to
a submission, its runs and ensemble named apart from the full ones."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from audiotag.cli import configs
from audiotag.cli.configs import ensemble_config, experiment_config, extra_experiment_configs
from audiotag.cli.main import build_parser, main
from audiotag.runs.prepare import bounded_clips
from tests.conftest import tiny_args


def parsed(*argv: str):
    return build_parser().parse_args(list(argv))


def test_bounded_clips_are_a_fixed_random_subset() -> None:
    ids = [f"clip{i:04d}" for i in range(1000)]
    kept = bounded_clips(reversed(ids), 200)  # the order given does not matter
    assert len(kept) == 200 and kept == sorted(kept) and set(kept) <= set(ids)
    assert kept == bounded_clips(ids, 200) and kept != ids[:200]  # drawn, not the first ones
    assert bounded_clips(ids[:150], 200) == ids[:150] and bounded_clips(ids, None) == ids


def test_quick_settings_reach_every_member_and_name_runs_and_ensemble_apart() -> None:
    args = parsed("train", "ensemble", "--quick", "--set", "train.epochs=2")
    main_exp, extras = experiment_config(args), extra_experiment_configs(args)
    assert [e.name for e in extras] == ["probe_aisfx"]
    for exp in (main_exp, *extras):
        assert exp.train.folds == [0, 1] and exp.train.max_clips == 200
    assert main_exp.train.epochs == 2 and extras[0].train.epochs == 1  # --set wins, for the main one
    ens = ensemble_config(args, main_exp)
    assert ens.name == "demo_quick" and ens.members == ["cnn_small_quick", "probe_aisfx_quick"]
    assert experiment_config(parsed("train", "--quick", "--folds", "2")).train.folds == [2]
    plain = parsed("train", "ensemble")
    assert experiment_config(plain).train.max_clips is None
    assert ensemble_config(plain, None).name == "demo"


@pytest.mark.slow  # drives prepare, train (both default members) and ensemble through the CLI
def test_quick_run_blends_every_default_member_into_a_submission(
    workspace: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(configs, "QUICK_SETTINGS", ["train.epochs=1", "train.max_clips=40"])  # of 84
    args = [*tiny_args("prepare", "train", "ensemble"), "--quick"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "partial blend: folds [0, 1] only" in out and "demo_quick.csv" in out
    demo = workspace / "competition" / "demo"
    runs = sorted((demo / "runs").iterdir())
    assert [r.name for r in runs] == ["cnn_small_quick", "probe_aisfx_quick"]  # no full run touched
    folds = pd.read_csv(next((demo / "folds").glob("*.csv")))
    kept = set(bounded_clips(folds["clip_id"], 40))
    for run in runs:
        assert sorted(p.parent.name for p in run.glob("fold*/done.json")) == ["fold0", "fold1"]
        saved = yaml.safe_load((run / "config.yaml").read_text())["train"]
        epochs = 2 if run.name == "cnn_small_quick" else 1  # the tiny demo's --set wins for cnn_small
        assert (saved["max_clips"], saved["epochs"], saved["folds"]) == (40, epochs, None)
        oof = pd.read_parquet(run / "fold1" / "oof.parquet")["clip_id"]
        assert set(oof) <= kept and set(oof) <= set(folds.loc[folds["fold"] == 1, "clip_id"])

    submissions = workspace / "submissions" / "demo"
    report = json.loads((submissions / "demo_quick.json").read_text())
    assert sorted(report["members"]) == ["cnn_small_quick", "probe_aisfx_quick"]
    assert report["partial"] is True and report["folds"] == [0, 1] and report["n_folds"] == 3
    sample = pd.read_csv(demo / "raw" / "sample_submission.csv")
    assert pd.read_csv(submissions / "demo_quick.csv")["fname"].tolist() == sample["fname"].tolist()
    assert sorted(p.name for p in submissions.glob("*.csv")) == ["demo_quick.csv"]

    assert main(["ensemble", "-c", "demo"]) == 2  # the full blend wants the full runs, not the quick ones
    assert "'cnn_small': no finished fold" in capsys.readouterr().err
