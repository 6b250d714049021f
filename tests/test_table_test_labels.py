"""``kind: table`` with ``test_labels``: the test clips' labels from a CSV, so runs report a test score."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from audiotag.cli.main import main
from audiotag.competitions import get_competition
from audiotag.config.schema import load_competition
from audiotag.core.errors import AudiotagError, ConfigError, DataError
from audiotag.runs.prepare import table_fingerprint
from audiotag.scoring.predictions import read_predictions
from tests.test_table_competition import CLASSES, args, make_dataset

TEST_FILES = [f"t{i}.wav" for i in range(6)]  # make_dataset's test clips: class i % 3


def _with_labels(path: Path, truth: pd.DataFrame | None, where: str = "truth/test.csv", **changes: object):
    """The competition of ``path`` with ``test_labels: where`` (``truth`` written there, under the data
    folder, unless None) and ``changes``."""
    spec = yaml.safe_load(path.read_text()) | {"test_labels": where} | changes
    if truth is not None:
        target = Path(spec["data_dir"]) / where
        target.parent.mkdir(parents=True, exist_ok=True)
        truth.to_csv(target, index=False)
    path.write_text(yaml.safe_dump(spec))
    return get_competition(load_competition(str(path)))


def _truth(multi: bool) -> pd.DataFrame:
    labels = [CLASSES[i % 3] + (f";{CLASSES[(i + 1) % 3]}" if multi and i % 2 else "") for i in range(6)]
    return pd.DataFrame({"file": TEST_FILES, "tags": labels, "usage": ["Public", "Private"] * 3})


@pytest.fixture
def data(tmp_path: Path, workspace: Path) -> Path:
    return tmp_path / "data"


def test_single_label_truth_is_read_and_scores_the_test_clips(data: Path) -> None:
    comp = _with_labels(make_dataset(data, multi=False), _truth(False))
    comp.parse_clip_table()  # fixes the vocabulary
    truth = comp.test_truth()
    assert truth is not None
    assert truth["clip_id"].tolist() == TEST_FILES
    assert [list(x) for x in truth["labels"]] == [[CLASSES[i % 3]] for i in range(6)]
    assert truth["usage"].tolist() == ["Public", "Private"] * 3
    # MAP@3 by hand: the true class first for t0..t2 (1 each), second for t3..t5 (1/2 each) -> 0.75
    classes = comp.classes
    scores = np.zeros((6, 3))
    for i in range(6):
        true = classes.index(CLASSES[i % 3])
        scores[i, true] = 0.9 if i < 3 else 0.5
        scores[i, (true + 1) % 3] = 0.1 if i < 3 else 0.8
    assert comp.score_test(TEST_FILES, scores) == pytest.approx(0.75)


def test_multi_label_truth_and_an_absolute_path(data: Path, tmp_path: Path) -> None:
    truth_file = tmp_path / "elsewhere" / "truth.csv"
    truth_file.parent.mkdir()
    _truth(True).to_csv(truth_file, index=False)
    comp = _with_labels(make_dataset(data, multi=True), None, where=str(truth_file))
    comp.parse_clip_table()
    truth = comp.test_truth()
    assert truth is not None and comp.truth_path() == truth_file
    assert [sorted(x) for x in truth["labels"]][:2] == [["zorp"], sorted(["blip", "whirr"])]


def test_the_submission_id_column_names_the_clips_when_the_file_column_is_absent(data: Path) -> None:
    truth = _truth(False).rename(columns={"file": "fname"})
    comp = _with_labels(make_dataset(data, multi=False), truth)
    comp.parse_clip_table()
    assert comp.test_truth()["clip_id"].tolist() == TEST_FILES  # type: ignore[index]


def test_a_missing_file_is_named_with_the_setting(data: Path) -> None:
    comp = _with_labels(make_dataset(data, multi=False), None, where="nowhere.csv")
    with pytest.raises(DataError, match=r"nowhere\.csv: file not found; competition\.test_labels"):
        comp.test_truth()


def test_a_label_outside_the_vocabulary_names_its_line(data: Path) -> None:
    truth = _truth(False)
    truth.loc[4, "tags"] = "fizz"
    comp = _with_labels(make_dataset(data, multi=False), truth)
    comp.parse_clip_table()
    with pytest.raises(AudiotagError, match=r"test\.csv: line 6: label 'fizz'"):
        comp.test_truth()


def test_a_file_without_the_clip_column_is_refused(data: Path) -> None:
    truth = _truth(False).rename(columns={"file": "clip"})
    comp = _with_labels(make_dataset(data, multi=False), truth)
    comp.parse_clip_table()
    with pytest.raises(DataError, match=r"no column 'file' \(file_column\) or 'fname'"):
        comp.test_truth()


def test_prepare_refuses_labels_that_lack_a_test_clip(data: Path, capsys: pytest.CaptureFixture) -> None:
    path = make_dataset(data, multi=False)
    _with_labels(path, _truth(False).iloc[:4])
    assert main(["prepare", "-c", str(path), "--workers", "1", "--set", "competition.n_folds=3"]) != 0
    err = capsys.readouterr().err
    assert "test.csv: no labels for 2 of the 6 test clips, e.g. ['t4.wav', 't5.wav']" in err


def test_needs_a_test_dir_and_kind_table(data: Path) -> None:
    path = make_dataset(data, multi=False)
    with pytest.raises(ConfigError, match="test_labels: labels of test clips need the test audio folder"):
        _with_labels(path, None, test_dir=None, sample_submission=None)
    with pytest.raises(ConfigError, match="test_labels: only meaningful with kind: table"):
        load_competition("demo", ["test_labels=x.csv"])


def test_adding_test_labels_keeps_the_clip_table(data: Path) -> None:
    path = make_dataset(data, multi=False)
    before = table_fingerprint(get_competition(load_competition(str(path))))
    assert table_fingerprint(_with_labels(path, _truth(False))) == before


@pytest.mark.slow
def test_train_and_ensemble_report_the_test_score(
    data: Path, workspace: Path, capsys: pytest.CaptureFixture
) -> None:
    path = make_dataset(data, multi=False)
    comp = _with_labels(path, _truth(False))
    assert main(args(path, "prepare", "train", "ensemble")) == 0
    out = capsys.readouterr().out
    assert "test map3 of the 3-fold mean (hidden test labels):" in out
    assert sorted(p.name for p in (comp.dir / "runs").iterdir()) == ["cnn_small", "probe_aisfx"]
    run_dir = comp.dir / "runs" / "cnn_small"
    run_metrics = json.loads((run_dir / "metrics.json").read_text())
    # the run's score, recomputed here from its fold-mean test predictions by MAP@3's definition
    ids, scores = read_predictions(run_dir / "test.parquet", comp.classes)
    truth = dict(zip(TEST_FILES, (CLASSES[i % 3] for i in range(6)), strict=True))
    ranked = [[comp.classes[j] for j in np.argsort(-row)[:3]] for row in scores]
    expected = np.mean(
        [
            1.0 / (top.index(truth[i]) + 1) if truth[i] in top else 0.0
            for i, top in zip(ids, ranked, strict=True)
        ]
    )
    assert run_metrics["test_score"] == pytest.approx(expected)
    assert f"{expected:.4f}" in out
    # the blend's: its top-2 submission plus the one class left is its full ranking of the 3 classes
    report = json.loads((workspace / "submissions" / comp.name / "table.json").read_text())
    sub = pd.read_csv(workspace / "submissions" / comp.name / "table.csv", dtype=str)
    label_column = next(c for c in sub.columns if c != sub.columns[0])
    blended = []
    for clip, text in zip(sub.iloc[:, 0], sub[label_column], strict=True):
        top = text.split()
        top += [c for c in comp.classes if c not in top]
        blended.append(1.0 / (top.index(truth[clip]) + 1))
    assert report["test_score"] == pytest.approx(np.mean(blended))
    assert f"{report['test_score']:.4f}" in out
