"""The demo competitions through the real CLI: prepare, train, ensemble, resume after SIGKILL."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from audiotag.cli.main import main
from tests.conftest import PYTHON, TINY_DEMO, subprocess_env, tiny_args


def run_cli(args: list[str]) -> int:
    return main(args)


@pytest.mark.slow
def test_demo_end_to_end(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(tiny_args("prepare", "train", "ensemble")) == 0
    out = capsys.readouterr().out
    comp_dir = workspace / "competition" / "demo"
    # prepare: Kaggle 2018 layout, clip table, folds, cache
    for name in ("train.csv", "sample_submission.csv", "audio_train", "audio_test"):
        assert (comp_dir / "raw" / name).exists()
    meta = pd.read_parquet(comp_dir / "meta.parquet")
    assert set(meta["split"]) == {"train", "test"}
    caches = sorted(p.parent.name.split("-")[0] for p in (comp_dir / "cache").glob("*/manifest.json"))
    assert caches == ["aisfx_44k_96", "logmel_16k_64"]  # the CNN's front-end and the probe's
    # train: every fold done, run-level files written
    run = comp_dir / "runs" / "cnn_small"
    metrics = json.loads((run / "metrics.json").read_text())
    assert sorted(metrics["folds"]) == ["0", "1", "2"]
    assert (run / "config.yaml").is_file() and (run / "run.json").is_file()
    oof = pd.read_parquet(run / "oof.parquet")
    assert set(oof["clip_id"]) == set(meta.loc[meta["split"] == "train", "clip_id"])
    report = json.loads((workspace / "submissions" / "demo" / "demo.json").read_text())
    # ensemble: submission in sample order with the printed summary
    sub = pd.read_csv(workspace / "submissions" / "demo" / "demo.csv")
    sample = pd.read_csv(comp_dir / "raw" / "sample_submission.csv")
    assert sub["fname"].tolist() == sample["fname"].tolist()
    assert list(sub.columns) == ["fname", "label"]
    assert all(len(label.split(" ")) == 3 for label in sub["label"])
    for text in ("fold", "mean ± std", "submission:", "test map3 (hidden", "test map3 of the 3-fold mean"):
        assert text in out
    # the default ensemble: the CNN and the probe on aisfx's frozen embedding, blended
    assert sorted(report["members"]) == ["cnn_small", "probe_aisfx"]
    probe = json.loads((comp_dir / "runs" / "probe_aisfx" / "metrics.json").read_text())
    assert sorted(probe["folds"]) == ["0", "1", "2"]
    assert "over the best member" in out
    assert 0.0 <= report["test_score"] <= 1.0


@pytest.mark.slow
def test_second_prepare_does_nothing(workspace: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert run_cli(tiny_args("prepare")) == 0
    comp_dir = workspace / "competition" / "demo"
    watched = [comp_dir / "meta.parquet", *comp_dir.glob("folds/*.csv"), *comp_dir.glob("cache/*/frames.f16")]
    before = {p: p.stat().st_mtime_ns for p in watched}
    caplog.clear()
    assert run_cli(tiny_args("prepare")) == 0
    assert {p: p.stat().st_mtime_ns for p in watched} == before
    assert "up to date" in caplog.text


@pytest.mark.slow
def test_multilabel_demo_end_to_end(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(tiny_args("prepare", "train", "ensemble", competition="demo2019")) == 0
    out = capsys.readouterr().out
    assert "test lwlrap" in out
    sub = pd.read_csv(workspace / "submissions" / "demo2019" / "demo2019.csv")
    sample = pd.read_csv(workspace / "competition" / "demo2019" / "raw" / "sample_submission.csv")
    assert list(sub.columns) == list(sample.columns)
    values = sub.drop(columns="fname").to_numpy()
    assert np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1


@pytest.mark.slow
def test_changed_config_is_refused_for_an_existing_run(workspace: Path, capsys) -> None:
    assert run_cli(tiny_args("train", extra=["train.epochs=1"])) == 0
    assert run_cli(tiny_args("train", extra=["train.epochs=1", "train.lr=0.1"])) == 2
    err = capsys.readouterr().err
    assert "different config" in err and "train.lr" in err and "--run-name" in err
    # a different run name is fine, and train.folds is not part of what must match
    assert run_cli([*tiny_args("train", extra=["train.epochs=1", "train.lr=0.1"]), "--run-name", "lr01"]) == 0
    assert run_cli([*tiny_args("train", extra=["train.epochs=1"]), "--folds", "0"]) == 0


def test_a_setting_added_after_a_run_started_counts_as_unchanged_at_its_default() -> None:
    from audiotag.config.files import configs_root
    from audiotag.runs.folder import changed_settings, result_settings
    from audiotag.train.experiment import load_experiment

    path = configs_root() / "experiments" / "demo" / "cnn_small.yaml"
    cfg = load_experiment(path)
    new_keys = {"competition.audio_rules.max_seconds", "train.ema_decay"}
    saved = {k: v for k, v in result_settings(cfg).items() if k not in new_keys}  # an older run.json
    assert changed_settings(saved, result_settings(cfg), cfg) == []
    changed = load_experiment(path, ["competition.audio_rules.max_seconds=30"])
    assert changed_settings(saved, result_settings(changed), changed) == [
        "competition.audio_rules.max_seconds"
    ]
    # a setting the code no longer has, or a saved value that differs, still counts
    assert changed_settings({**saved, "train.gone": 1}, result_settings(cfg), cfg) == ["train.gone"]
    assert changed_settings({**saved, "train.lr": 1.0}, result_settings(cfg), cfg) == ["train.lr"]


def test_what_else_the_pipeline_runs_is_not_part_of_a_run_s_config() -> None:
    """A demo run made before the demo had extra members (its run.json records the default experiment
    and ensemble, not the extras), or with the extras switched off, stays the same run."""
    from audiotag.config.files import configs_root
    from audiotag.runs.folder import changed_settings, result_settings
    from audiotag.train.experiment import load_experiment

    cfg = load_experiment(configs_root() / "experiments" / "demo" / "cnn_small.yaml")
    assert cfg.competition.default_extra_experiments == ["demo/probe_aisfx"]
    settings = result_settings(cfg)
    assert not any(k.startswith("competition.default_") for k in settings)
    older = {
        **settings,
        "competition.default_experiment": "demo/cnn_small",
        "competition.default_ensemble": "demo",
    }
    assert changed_settings(older, settings, cfg) == []
    alone = load_experiment(
        configs_root() / "experiments" / "demo" / "cnn_small.yaml",
        ["competition.default_extra_experiments=[]"],
    )
    assert changed_settings(settings, result_settings(alone), alone) == []
    assert changed_settings({**settings, "train.lr": 1.0}, settings, cfg) == ["train.lr"]


@pytest.mark.slow
def test_bad_input_gives_clear_errors(workspace: Path, capsys) -> None:
    assert run_cli(["train", "--set", "train.epoch=3"]) == 2
    assert "train.epoch: unknown key" in capsys.readouterr().err
    assert run_cli(["prepare", "-c", "nosuch"]) == 2
    assert "nosuch" in capsys.readouterr().err
    assert run_cli(["fly"]) == 2
    assert "unknown stage" in capsys.readouterr().err
    assert run_cli(tiny_args("ensemble")) == 2  # experiment --set values mean nothing to `ensemble` alone
    assert "the ensemble stage alone reads no experiment" in capsys.readouterr().err
    assert run_cli(["ensemble", "--set", "ensemble.nosuch=1"]) == 2  # ensemble.KEY: the ensemble config
    assert "nosuch: unknown key" in capsys.readouterr().err
    assert run_cli(["ensemble", "-c", "demo"]) == 2  # nothing trained yet
    err = capsys.readouterr().err
    assert "'cnn_small'" in err and "./run.sh train" in err


@pytest.mark.soak
@pytest.mark.slow
def test_killed_run_resumes_and_matches_uninterrupted(tmp_path: Path) -> None:
    """SIGKILL during fold 0, run again: it resumes from the checkpoint and ends where a clean run ends."""
    extra = ["train.epochs=4", "train.patience=4", "train.folds=[0]"]
    args = [PYTHON, "-m", "audiotag", *tiny_args("prepare", "train", extra=extra)]
    killed_ws, clean_ws = tmp_path / "killed", tmp_path / "clean"
    run_dir = killed_ws / "competition" / "demo" / "runs" / "cnn_small" / "fold0"

    proc = subprocess.Popen(
        args, env=subprocess_env(killed_ws), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + 300
    while not (run_dir / "last.pt").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "done.json").exists()
    stopped_at = len(torch.load(run_dir / "last.pt", weights_only=True)["state"]["history"])
    assert stopped_at < 4

    resumed = subprocess.run(args, env=subprocess_env(killed_ws), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr
    clean = subprocess.run(args, env=subprocess_env(clean_ws), capture_output=True, text=True)
    assert clean.returncode == 0, clean.stderr[-3000:]

    def fold_result(ws: Path) -> tuple[dict, pd.DataFrame]:
        fold = ws / "competition" / "demo" / "runs" / "cnn_small" / "fold0"
        done = json.loads((fold / "done.json").read_text())
        return done, pd.read_parquet(fold / "oof.parquet")

    (done_a, oof_a), (done_b, oof_b) = fold_result(killed_ws), fold_result(clean_ws)
    assert done_a["epochs_run"] == done_b["epochs_run"] == 4
    assert [h["loss"] for h in done_a["history"]] == pytest.approx(
        [h["loss"] for h in done_b["history"]], rel=1e-5
    )
    pd.testing.assert_frame_equal(oof_a, oof_b, rtol=1e-4)


@pytest.mark.slow
def test_unusable_train_audio_is_left_out_of_training(workspace: Path, caplog) -> None:
    import shutil

    assert run_cli(tiny_args("prepare")) == 0
    comp_dir = workspace / "competition" / "demo"
    meta = pd.read_parquet(comp_dir / "meta.parquet")
    victim = meta[meta["split"] == "train"].iloc[0]
    (comp_dir / victim["path"]).write_bytes(b"RIFF not really a wave file")
    shutil.rmtree(comp_dir / "cache")
    caplog.set_level("INFO")
    assert run_cli(tiny_args("prepare", "train", extra=["train.epochs=1", "train.folds=[0]"])) == 0
    assert "leaving out 1 train clip(s) with unusable audio" in caplog.text
    oof = pd.read_parquet(comp_dir / "runs" / "cnn_small" / "fold0" / "oof.parquet")
    assert victim["clip_id"] not in set(oof["clip_id"])
    report = pd.read_csv(next((comp_dir / "cache").glob("*/report.csv")))
    assert victim["clip_id"] in set(report["clip_id"])


@pytest.mark.slow
def test_clip_table_follows_the_competition_settings(workspace: Path, caplog) -> None:
    from audiotag.competitions import get_competition
    from audiotag.config.schema import load_competition
    from audiotag.runs.prepare import clip_table, table_fingerprint

    assert run_cli(tiny_args("prepare")) == 0
    tiny = [t.removeprefix("competition.") for t in TINY_DEMO if t.startswith("competition.")]
    base = get_competition(load_competition("demo", tiny))
    assert table_fingerprint(base) == table_fingerprint(
        get_competition(load_competition("demo", [*tiny, "n_folds=4"]))
    )
    changed = get_competition(load_competition("demo", [*tiny, "subsets=[verified]"]))
    assert table_fingerprint(changed) != table_fingerprint(base)
    caplog.set_level("INFO")
    clip_table(base)
    assert "up to date" in caplog.text
    caplog.clear()
    clip_table(changed)
    assert "competition settings changed" in caplog.text
