"""``kind: table``: your own dataset described by a competition YAML alone, end to end and its bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml

from audiotag.cli.main import main
from audiotag.competitions import get_competition
from audiotag.config.competition_parts import TABLE_METRICS
from audiotag.config.schema import load_competition
from audiotag.core.errors import AudiotagError, ConfigError

CLASSES = ["zorp", "blip", "whirr"]  # made up, deliberately not sorted
RATE = 16000
TINY = [
    "competition.n_folds=3",
    "model.channels=[8,16]",
    "model.embedding_dim=16",
    "train.epochs=2",
    "train.batch_size=16",
    "train.patience=2",
]


def _clip(path: Path, freqs: list[float], seed: int) -> None:
    rng = np.random.default_rng(seed)
    t = np.arange(int(RATE * 1.0)) / RATE
    wave = sum(np.sin(2 * np.pi * f * t) for f in freqs) * 0.2 + 0.02 * rng.standard_normal(t.size)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave.astype(np.float32), RATE)


def make_dataset(root: Path, multi: bool) -> Path:
    """8 training clips per class in audio/ (pairs share a group), 6 test clips in test/; the YAML path."""
    freqs = {"zorp": 300.0, "blip": 1200.0, "whirr": 3000.0}
    rows = []
    for c, name in enumerate(CLASSES):
        for i in range(8):
            fname = f"{name}_{i}.wav"
            labels = [name, CLASSES[(c + 1) % 3]] if multi and i % 2 else [name]
            _clip(root / "audio" / fname, [freqs[x] for x in labels], seed=c * 10 + i)
            rows.append(
                {"file": fname, "tags": ";".join(labels), "session": f"{name}-s{i // 2}", "ok": i % 2}
            )
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    test = [f"t{i}.wav" for i in range(6)]
    for i, fname in enumerate(test):
        _clip(root / "test" / fname, [freqs[CLASSES[i % 3]]], seed=100 + i)
    spec: dict = {
        "name": "bytest_multi" if multi else "bytest",
        "kind": "table",
        "data_dir": str(root),
        "train_csv": "train.csv",
        "audio_dir": "audio",
        "test_dir": "test",
        "file_column": "file",
        "label_column": "tags",
    }
    if multi:
        spec |= {
            "multi_label": True,
            "label_separator": ";",
            "metric": "lwlrap",
            "submission": {"kind": "scores"},
        }
    else:
        pd.DataFrame({"fname": test, "label": ""}).to_csv(root / "sample_submission.csv", index=False)
        spec |= {
            "group_column": "session",
            "verified_column": "ok",
            "metric": "map3",
            "submission": {"kind": "top_k_labels", "k": 2},
            "sample_submission": "sample_submission.csv",
        }
    path = root / "comp.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def args(yaml_path: Path, *stages: str) -> list[str]:
    out = [*stages, "-c", str(yaml_path), "--workers", "1"]
    for item in TINY:
        out += ["--set", item]
    return out


@pytest.fixture
def data(tmp_path: Path, workspace: Path) -> Path:
    return tmp_path / "data"


@pytest.mark.slow
def test_single_label_with_groups_end_to_end(data: Path, workspace: Path) -> None:
    path = make_dataset(data, multi=False)
    assert main(args(path, "prepare", "train", "ensemble")) == 0
    comp_dir = workspace / "competition" / "bytest"
    assert json.loads((comp_dir / "vocabulary.json").read_text()) == {"classes": sorted(CLASSES)}
    sub = pd.read_csv(workspace / "submissions" / "bytest" / "table.csv")
    assert list(sub.columns) == ["fname", "label"]
    assert sub["fname"].tolist() == [f"t{i}.wav" for i in range(6)]
    assert all(len(x.split(" ")) == 2 and set(x.split(" ")) <= set(CLASSES) for x in sub["label"])
    meta = pd.read_parquet(comp_dir / "meta.parquet")
    train = meta[meta["split"] == "train"]
    assert not train["verified"].all() and train["verified"].any()
    (fold_file,) = comp_dir.glob("folds/*grouped.csv")
    folds = pd.read_csv(fold_file).merge(train[["clip_id", "group"]], on="clip_id")
    assert len(folds) == 24 and (folds.groupby("group")["fold"].nunique() == 1).all()
    # the vocabulary is reused; a label seen later is refused, naming the row
    before = (comp_dir / "vocabulary.json").stat().st_mtime_ns
    train_csv = pd.read_csv(data / "train.csv")
    train_csv.loc[5, "tags"] = "fizz"
    train_csv.to_csv(data / "train.csv", index=False)
    with pytest.raises(
        AudiotagError, match=r"train\.csv: line 7: label 'fizz' is not in the vocabulary saved"
    ):
        get_competition(load_competition(str(path))).parse_clip_table()
    assert (comp_dir / "vocabulary.json").stat().st_mtime_ns == before


@pytest.mark.slow
def test_multi_label_scores_end_to_end(data: Path, workspace: Path) -> None:
    path = make_dataset(data, multi=True)
    assert main(args(path, "prepare", "train", "ensemble")) == 0
    comp_dir = workspace / "competition" / "bytest_multi"
    sub = pd.read_csv(workspace / "submissions" / "bytest_multi" / "table.csv")
    assert list(sub.columns) == ["fname", *sorted(CLASSES)]
    assert sub["fname"].tolist() == [f"t{i}.wav" for i in range(6)]  # every file of test_dir
    values = sub.drop(columns="fname").to_numpy()
    assert np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1
    meta = pd.read_parquet(comp_dir / "meta.parquet")
    assert max(len(x) for x in meta["labels"]) == 2
    # a second prepare reuses the vocabulary file as it is
    before = (comp_dir / "vocabulary.json").stat().st_mtime_ns
    assert main(args(path, "prepare")) == 0
    assert (comp_dir / "vocabulary.json").stat().st_mtime_ns == before


# ----------------------------------------------------------------------------- bad input, no training


def _comp(path: Path, **changes: object):
    spec = yaml.safe_load(path.read_text()) | changes
    path.write_text(yaml.safe_dump(spec))
    return get_competition(load_competition(str(path)))


def test_unknown_label_with_explicit_classes(data: Path) -> None:
    comp = _comp(make_dataset(data, multi=True), classes=["zorp", "blip"])
    with pytest.raises(
        AudiotagError, match=r"train\.csv: line 11: label 'whirr' is not in the classes listed"
    ):
        comp.parse_clip_table()


def test_explicit_classes_keep_their_order(data: Path, workspace: Path) -> None:
    comp = _comp(make_dataset(data, multi=False), classes=CLASSES)
    table = comp.parse_clip_table()
    assert comp.classes == CLASSES and not (comp.dir / "vocabulary.json").exists()
    assert len(table) == 30


def test_missing_column_is_named_with_the_columns_present(data: Path) -> None:
    comp = _comp(make_dataset(data, multi=False), group_column="speaker")
    with pytest.raises(AudiotagError, match=r"missing column\(s\) \['speaker'\]; found \['file', 'tags'"):
        comp.parse_clip_table()


def test_listed_file_that_is_absent(data: Path) -> None:
    comp = _comp(make_dataset(data, multi=False))
    (data / "audio" / "blip_3.wav").unlink()
    with pytest.raises(AudiotagError, match=r"missing under --data-dir .*audio/blip_3\.wav"):
        comp.parse_clip_table()


def test_name_leaving_the_audio_folder_is_refused(data: Path) -> None:
    path = make_dataset(data, multi=False)
    train = pd.read_csv(data / "train.csv")
    train.loc[0, "file"] = "../comp.yaml"
    train.to_csv(data / "train.csv", index=False)
    with pytest.raises(AudiotagError, match=r"line 2: fname '\.\./comp\.yaml' leaves the audio folder"):
        _comp(path).parse_clip_table()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"metric": "map3"}, "multi_label data needs lwlrap or map"),
        ({"metric": "accuracy"}, "metric accuracy scores one true label per clip"),
        ({"metric": "f1"}, "metric"),
        ({"submission": None}, "kind: table needs submission"),
        ({"classes": ["a", "a"]}, "repeated"),
        ({"label_separator": "|"}, "label_separator"),
    ],
)
def test_wrong_combinations_are_refused(data: Path, changes: dict, message: str) -> None:
    path = make_dataset(data, multi=True)
    with pytest.raises(ConfigError, match=message):
        _comp(path, **changes)


def test_table_keys_need_kind_table() -> None:
    with pytest.raises(ConfigError, match="train_csv: only meaningful with kind: table"):
        load_competition("demo", ["train_csv=x.csv"])


def test_table_metrics_are_the_metrics_module_s() -> None:
    from audiotag.scoring.metrics import METRICS

    assert set(TABLE_METRICS) == set(METRICS)


@pytest.mark.slow
def test_no_test_set_end_to_end(data: Path, workspace: Path, caplog: pytest.LogCaptureFixture) -> None:
    """test_dir left out: prepare and train report CV per fold; the ensemble reports CV, writes no CSV."""
    path = make_dataset(data, multi=False)
    spec = yaml.safe_load(path.read_text())
    for key in ("test_dir", "sample_submission"):
        spec.pop(key)
    spec |= {"name": "bytest_notest", "metric": "accuracy"}
    path.write_text(yaml.safe_dump(spec))
    caplog.set_level("INFO")
    assert main(args(path, "prepare", "train", "ensemble")) == 0
    meta = pd.read_parquet(workspace / "competition" / "bytest_notest" / "meta.parquet")
    assert (meta["split"] == "train").all() and len(meta) == 24
    out = workspace / "submissions" / "bytest_notest"
    assert not list(out.glob("*.csv"))
    report = json.loads((out / "table.json").read_text())
    assert report["submission"] is None and report["test_score"] is None
    assert set(report["cv"]["folds"]) == {"0", "1", "2"} and 0 <= report["cv"]["mean"] <= 1
    assert report["metric"] == "accuracy" and report["submission_sha256"] is None
    assert "no test set" in caplog.text and "no submission written" in caplog.text


def test_a_label_written_twice_in_a_row_is_kept_once_with_a_warning(
    data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = make_dataset(data, multi=True)
    train = pd.read_csv(data / "train.csv")
    train.loc[3, "tags"] = "blip;zorp;blip"
    train.to_csv(data / "train.csv", index=False)
    comp = _comp(path)
    with caplog.at_level("WARNING"):
        table = comp.parse_clip_table()
    assert list(table.loc[table["clip_id"] == train.loc[3, "file"], "labels"].iloc[0]) == ["blip", "zorp"]
    assert "1 row(s) name a label twice (first: line 5)" in caplog.text
