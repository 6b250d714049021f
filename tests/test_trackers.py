"""Experiment tracking (``train.loggers``): TensorBoard event files of a real tiny run read back with
TensorBoard's own reader; MLflow and W&B driven through fake modules that record the calls (the real
packages are optional and heavy); a missing package named with its install command; DDP rank 0 only."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score

from audiotag.config.files import configs_root
from audiotag.core.errors import ConfigError
from audiotag.train.distributed import SINGLE, DistContext
from audiotag.train.experiment import load_experiment
from audiotag.train.trackers import Trackers, open_trackers
from tests import demo_workspace

CNN_SMALL = configs_root() / "experiments" / "demo" / "cnn_small.yaml"


def experiment(loggers: str):
    return load_experiment(CNN_SMALL, [f"train.loggers={loggers}"])


@pytest.mark.slow  # the trained tiny-demo workspace drives the CLI once per session
def test_tensorboard_event_files_hold_every_epoch_and_the_best_epochs_per_class_ap(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = demo_workspace.trained_base(tmp_path_factory) / "competition" / "demo" / "runs" / "cnn_small"
    meta = pd.read_parquet(run_dir.parents[1] / "meta.parquet").set_index("clip_id")
    for fold in range(3):
        done = json.loads((run_dir / f"fold{fold}" / "done.json").read_text())
        events = EventAccumulator(str(run_dir / "tensorboard" / f"fold{fold}"), size_guidance={"scalars": 0})
        events.Reload()
        tags = events.Tags()
        history = done["history"]

        def series(tag: str, events=events) -> tuple[list[int], list[float]]:
            points = events.Scalars(tag)
            return [p.step for p in points], [p.value for p in points]

        assert series("val/map3") == (
            [h["epoch"] + 1 for h in history],
            pytest.approx([h["score"] for h in history]),
        )
        assert series("train/loss")[1] == pytest.approx([h["loss"] for h in history], rel=1e-6)
        assert series("lr")[1] == pytest.approx([h["lr"] for h in history], rel=1e-6)
        assert series("best/map3")[1] == pytest.approx(np.maximum.accumulate([h["score"] for h in history]))
        (config,) = events.Tensors("config/text_summary")  # the resolved config as text
        assert "    epochs: 2\n" in config.tensor_proto.string_val[0].decode()

        # per-class AP at the best epoch, on the fold's scored (verified) OOF clips, against sklearn
        oof = pd.read_parquet(run_dir / f"fold{fold}" / "oof.parquet").set_index("clip_id")
        scored = meta.loc[oof.index, "verified"].to_numpy(dtype=bool)
        labels = meta.loc[oof.index, "labels"]
        checked = 0
        for name in oof.columns:
            truth = np.array([name in list(ls) for ls in labels])[scored]
            tag = f"per_class_ap/{name}"
            if not truth.any():
                assert tag not in tags["scalars"]
                continue
            (point,) = events.Scalars(tag)
            assert point.step == done["best_epoch"] + 1
            assert point.value == pytest.approx(
                average_precision_score(truth, oof[name].to_numpy()[scored]), abs=1e-6
            )
            checked += 1
        assert checked >= 5


class Recorder:
    """A fake module (``mlflow``, ``wandb``) that records every call made on it."""

    def __init__(self, name: str) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.module = ModuleType(name)

    def record(self, name: str, result: Any = None):
        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args, kwargs))
            return result

        setattr(self.module, name, call)
        return call

    def named(self, name: str) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
        return [(a, k) for n, a, k in self.calls if n == name]


@pytest.fixture
def fake_mlflow(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    fake = Recorder("mlflow")
    for name in ("set_tracking_uri", "set_experiment", "log_params", "log_text", "log_metrics", "end_run"):
        fake.record(name)
    fake.record("start_run", SimpleNamespace(info="run"))
    monkeypatch.setitem(sys.modules, "mlflow", fake.module)
    return fake


@pytest.fixture
def fake_wandb(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    fake = Recorder("wandb")
    run = Recorder("run")
    run.record("log")
    run.record("finish")
    run.module.summary = {}  # type: ignore[attr-defined]
    fake.record("init", run.module)
    fake.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", fake.module)
    return fake


def fold_dir(root: Path) -> Path:
    return root / "competition" / "demo" / "runs" / "quick" / "fold1"


def test_mlflow_and_wandb_get_the_config_every_epoch_and_the_per_class_ap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_mlflow: Recorder, fake_wandb: Recorder
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: not logged in to W&B
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    cfg = experiment("[mlflow,wandb]")
    trackers = open_trackers(cfg, fold_dir(tmp_path), 1, SINGLE)
    assert len(trackers.trackers) == 2
    trackers.log_epoch(1, {"train/loss": 0.5, "val/map3": 0.25})
    truth = np.array([[1, 0], [0, 1], [1, 0], [0, 0]])
    scores = np.array([[0.9, 0.2], [0.1, 0.3], [0.4, 0.8], [0.2, 0.1]])
    ap = trackers.log_per_class(3, ["a b", "c"], truth, scores)
    trackers.close()
    assert ap == pytest.approx({"a b": 1.0, "c": average_precision_score(truth[:, 1], scores[:, 1])})

    mlruns = (tmp_path / "competition" / "demo" / "mlruns").resolve().as_uri()
    assert fake_mlflow.named("set_tracking_uri") == [((mlruns,), {})]
    assert fake_mlflow.named("set_experiment") == [(("demo",), {})]
    assert fake_mlflow.named("start_run") == [((), {"run_name": "quick/fold1"})]
    (((params,), _),) = fake_mlflow.named("log_params")
    assert params["train.loggers"] == "['mlflow', 'wandb']" and params["train.epochs"] == "12"
    (((text, artifact), _),) = fake_mlflow.named("log_text")
    assert artifact == "config.yaml" and "epochs: 12" in text
    assert fake_mlflow.named("log_metrics") == [
        (({"train/loss": 0.5, "val/map3": 0.25},), {"step": 1}),
        (({"per_class_ap/a b": 1.0, "per_class_ap/c": ap["c"]},), {"step": 3}),
    ]
    assert len(fake_mlflow.named("end_run")) == 1

    (((), init),) = fake_wandb.named("init")
    assert init["mode"] == "offline" and init["project"] == "demo" and init["group"] == "quick"
    assert init["name"] == "quick-fold1" and init["config"]["train"]["epochs"] == 12
    run = fake_wandb.run  # type: ignore[attr-defined]
    assert run.named("log") == [(({"train/loss": 0.5, "val/map3": 0.25},), {"step": 1})]
    assert run.module.summary == {"per_class_ap/a b": 1.0, "per_class_ap/c": ap["c"]}
    assert len(run.named("finish")) == 1


def test_an_mlflow_uri_and_a_wandb_login_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_mlflow: Recorder, fake_wandb: Recorder
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    open_trackers(experiment("[mlflow,wandb]"), fold_dir(tmp_path), 1, SINGLE).close()
    assert fake_mlflow.named("set_tracking_uri") == [(("http://tracking.example:5000",), {})]
    assert fake_wandb.named("init")[0][1]["mode"] == "online"


def test_a_missing_tracker_package_is_named_with_its_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(ConfigError, match=r"train.loggers: 'wandb'.*pip install 'wandb>=0.16'"):
        open_trackers(experiment("[tensorboard,wandb]"), fold_dir(tmp_path), 0, SINGLE)
    # the tensorboard writer opened before the failure was closed, not left behind half-written
    assert list((fold_dir(tmp_path).parent / "tensorboard" / "fold0").glob("events.out.tfevents.*"))


def test_only_rank_0_tracks_and_an_empty_list_tracks_nothing(tmp_path: Path, fake_mlflow: Recorder) -> None:
    other_rank = DistContext(rank=1, world=2)
    assert open_trackers(experiment("[mlflow]"), fold_dir(tmp_path), 0, other_rank).trackers == []
    assert open_trackers(experiment("[]"), fold_dir(tmp_path), 0, SINGLE).trackers == []
    assert fake_mlflow.calls == []
    assert Trackers().log_per_class(1, ["a"], np.ones((2, 1)), np.ones((2, 1))) == {}
    assert experiment("[]").train.loggers == [] and load_experiment(CNN_SMALL).train.loggers == [
        "tensorboard"
    ]
