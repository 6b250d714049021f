"""``train.auto`` in a run (runs/auto_settings.py): facts from the data and the model, the user's
settings kept, the derived ones saved in the run folder and read back when the run starts again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from audiotag.cli.main import main
from audiotag.config.schema import load_competition
from audiotag.models.registry import build_model
from audiotag.runs import auto_settings
from audiotag.runs.auto_settings import AUTO_FILE, explicit_keys, measure_model, resolve_auto
from audiotag.runs.prepare import prepare
from audiotag.train.experiment import load_experiment
from tests.test_table_competition import args, make_dataset

TABLE_RECIPE = "configs/experiments/table/cnn_small_fixed.yaml"
AUTO_RECIPE = "configs/experiments/table/cnn_small.yaml"


@pytest.fixture
def data(tmp_path: Path, workspace: Path) -> Path:
    return tmp_path / "data"


def auto_experiment(tmp_path: Path, competition: Path, overrides: list[str]):
    """An experiment with train.auto and only lr of its own, on ``competition``."""
    path = tmp_path / "auto.yaml"
    spec = {"competition": str(competition), "features": "logmel_16k_64", "model": "cnn_small"}
    path.write_text(yaml.safe_dump(spec | {"train": {"auto": True, "lr": 0.003}}))
    return load_experiment(path, overrides)


def test_explicit_keys_are_what_the_yaml_and_set_give() -> None:
    cfg = load_experiment(TABLE_RECIPE, ["train.specaugment.where=input", "train.seed=3"])
    keys = explicit_keys(cfg)
    assert {"train.epochs", "train.crop_seconds", "train.specaugment.time_width", "train.seed"} <= keys
    assert "train.specaugment.where" in keys and "model.channels" in keys
    assert "train.ema_decay" not in keys and "train.auto" not in keys


def test_model_grid_and_sizes_are_measured_on_the_meta_device() -> None:
    cfg = load_experiment(TABLE_RECIPE)
    grid, per_frame, parameters = measure_model(cfg, n_classes=7)
    assert grid == 16  # four 2x poolings of time (cnn_small, pool_last)
    real = build_model(cfg.model, 64, 7, 100)
    assert parameters == sum(p.numel() * 4 for p in real.parameters())
    # autograd keeps at least the input of the first convolution's ReLU: 16 channels x 64 mels (fp32)
    assert per_frame > 16 * 64 * 4
    byola = load_experiment(TABLE_RECIPE, ["model=byola512"])
    assert measure_model(byola, n_classes=7)[0] == 8  # BYOL-A's encoder pools time by 8


def test_a_backbone_pooled_over_time_has_no_grid() -> None:
    """musicnn puts out one frame whatever the crop: grid 1, so the crop stays at the derived length
    (before, 512 // 1 made every crop a multiple of 512 frames: 8.2 s instead of 2 s, 6.7x the cost)."""
    from audiotag.train.auto_recipe import DataFacts, ModelFacts, crop_frames

    musicnn = load_experiment(TABLE_RECIPE, ["model=musicnn", "features=musicnn_16k_96"])
    grid = measure_model(musicnn, n_classes=7)[0]
    assert grid == 1
    data = DataFacts(durations=(4.77,) * 10, n_classes=7, labels_per_clip=1.0, n_folds=5)
    model = ModelFacts(
        frames_per_second=62.5,
        frame_grid=grid,
        n_mels=96,
        activation_bytes_per_frame=1.0,
        parameter_bytes=1,
        memory_bytes=1 << 30,
        memory_source="test",
    )
    assert crop_frames(data, model)[0] == 125  # 2 s, the longest crop train.auto derives


def test_derived_values_fill_what_the_config_leaves_and_are_read_back(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    competition = make_dataset(data, multi=False)
    cfg = auto_experiment(tmp_path, competition, ["competition.n_folds=3", "train.epochs=2"])
    prepared = prepare(cfg.competition, cfg.features, workers=1)
    run_dir = tmp_path / "run"
    caplog.set_level("INFO")
    resolved = resolve_auto(cfg, prepared, run_dir, torch.device("cpu"))
    # 24 clips of 1 s: p90 1 s = 50 frames -> 48 on cnn_small's grid of 16; 16 clips a fold -> batch 1
    assert resolved.train.crop_seconds == pytest.approx(0.96) and resolved.train.batch_size == 1
    assert resolved.train.epochs == 2 and resolved.train.lr == 0.003  # the config's own values
    assert resolved.train.head_bias == "prior" and resolved.train.mixup_prob == 0.0
    saved = json.loads((run_dir / AUTO_FILE).read_text())["derived"]
    epochs = next(row for row in saved if row["key"] == "train.epochs")
    assert epochs["value"] == 63  # ceil(1000 steps / 16 per epoch), kept in the file, not applied
    assert "train.epochs                 2        yours (derived: 63" in caplog.text
    assert "train.crop_seconds           0.96     derived: p90 of 24 clip durations 1.00 s" in caplog.text
    # a later start reads the file back: nothing is derived again, even if the data or machine changed
    monkeypatch.setattr(auto_settings, "derive", lambda *a: pytest.fail("derived again"))
    again = resolve_auto(cfg, prepared, run_dir, torch.device("cpu"))
    assert again == resolved and "read back from" in caplog.text


def test_an_unreadable_saved_file_names_the_remedy(data: Path, tmp_path: Path) -> None:
    cfg = auto_experiment(tmp_path, make_dataset(data, multi=False), ["competition.n_folds=3"])
    prepared = prepare(cfg.competition, cfg.features, workers=1)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / AUTO_FILE).write_text("{not json")
    with pytest.raises(Exception, match=r"auto_recipe\.json: unreadable .* delete it"):
        resolve_auto(cfg, prepared, tmp_path / "run", torch.device("cpu"))


@pytest.mark.slow
def test_train_with_auto_saves_the_resolved_recipe(data: Path, workspace: Path) -> None:
    path = make_dataset(data, multi=False)
    recipe = yaml.safe_load(Path(AUTO_RECIPE).read_text()) | {"competition": str(path)}
    (data / "cnn_small_auto.yaml").write_text(yaml.safe_dump(recipe))  # -c is ignored beside --config
    run = ["--config", str(data / "cnn_small_auto.yaml"), "--set", "train.mixup_prob=0.25"]
    assert main([*args(path, "prepare", "train"), *run]) == 0
    comp_dir = workspace / "competition" / load_competition(str(path)).name
    run_dir = comp_dir / "runs" / "cnn_small_auto"
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())["train"]
    # derived: the crop (1 s clips -> 48 frames on the grid of 4 of the 2-block test model) and more;
    # given by args(): epochs, batch_size, patience; given here: mixup_prob
    assert saved["crop_seconds"] == pytest.approx(0.96) and saved["head_bias"] == "prior"
    assert (saved["epochs"], saved["batch_size"], saved["mixup_prob"]) == (2, 16, 0.25)
    settings = json.loads((run_dir / "run.json").read_text())["settings"]
    assert settings["train.crop_seconds"] == pytest.approx(0.96)
    assert (run_dir / AUTO_FILE).is_file()
    # the same command again: the run is complete and its settings match (nothing derived anew)
    assert main([*args(path, "train"), *run]) == 0
