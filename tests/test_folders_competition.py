"""``kind: folders``: one sub-folder of audio per class (Speech Commands style), its lists and groups,
its bad inputs, and (slow) prepare, train and ensemble end to end with a test score."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from audiotag.cli.main import main
from audiotag.competitions import get_competition
from audiotag.competitions.folders import FoldersCompetition
from audiotag.config.schema import load_competition
from audiotag.core.errors import AudiotagError, ConfigError, DataError
from audiotag.runs.prepare import clip_table
from tests.folders_fakes import WORDS, SpeechLayout, speech_layout, wav_bytes

GROUPS = "^(.+?)_nohash_"


def write_yaml(root: Path, data: Path, **changes: object) -> Path:
    spec: dict = {
        "name": "words",
        "kind": "folders",
        "data_dir": str(data),
        "audio_dir": ".",
        "exclude": ["_background_noise_"],
        "validation_list": "validation_list.txt",
        "testing_list": "testing_list.txt",
        "group_pattern": GROUPS,
        "metric": "accuracy",
        "submission": {"kind": "scores"},
        "n_folds": 3,
    }
    path = root / "words.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in (spec | changes).items() if v is not None}))
    return path


@pytest.fixture
def layout() -> SpeechLayout:
    return speech_layout()


@pytest.fixture
def data(tmp_path: Path, layout: SpeechLayout) -> Path:
    return layout.write(tmp_path / "data")


def _comp(tmp_path: Path, data: Path, **changes: object) -> FoldersCompetition:
    comp = get_competition(load_competition(str(write_yaml(tmp_path, data, **changes))), tmp_path / "ws")
    assert isinstance(comp, FoldersCompetition)
    return comp


def test_clip_table_splits_lists_and_speakers(tmp_path: Path, data: Path, layout: SpeechLayout) -> None:
    comp = _comp(tmp_path, data)
    comp.obtain()
    table = comp.parse_clip_table()
    train, test = table[table["split"] == "train"], table[table["split"] == "test"]
    assert sorted(test["clip_id"]) == sorted(layout.testing) and test["labels"].map(len).eq(0).all()
    assert sorted(train.loc[train["subset"] == "validation", "clip_id"]) == sorted(layout.validation)
    clips = [c for c in layout.files if c.endswith(".wav") and not c.startswith("_background")]
    assert sorted(train["clip_id"]) == sorted(set(clips) - set(layout.testing))
    assert (train["labels"].map(lambda x: x[0]) == train["clip_id"].str.split("/").str[0]).all()
    assert (train["group"] == train["clip_id"].map(layout.speaker)).all()
    assert (table["duration"] == 1.0).all() and (table["sample_rate"] == 16000).all()
    assert comp.classes == sorted(WORDS)  # the folder names, sorted, fixed in vocabulary.json
    assert json.loads((tmp_path / "ws" / "vocabulary.json").read_text()) == {"classes": sorted(WORDS)}
    truth = comp.test_truth()
    assert truth is not None and sorted(truth["clip_id"]) == sorted(layout.testing)
    assert (truth["labels"].map(lambda x: x[0]) == truth["clip_id"].str.split("/").str[0]).all()
    sample = pd.read_csv(comp.sample_submission_path)
    assert list(sample.columns) == ["fname", *sorted(WORDS)] and sorted(sample["fname"]) == sorted(
        layout.testing
    )


def test_explicit_classes_keep_their_order_and_refuse_a_stray_folder(tmp_path: Path, data: Path) -> None:
    order = list(WORDS)  # not sorted
    comp = _comp(tmp_path, data, classes=order)
    comp.parse_clip_table()
    assert comp.classes == order
    (data / "_background_noise_" / "white_noise.wav").rename(data / "noise.wav")
    (data / "_background_noise_").rename(data / "stray")
    (data / "noise.wav").rename(data / "stray" / "noise.wav")
    with pytest.raises(DataError, match=r"stray/: label 'stray' is not in the classes listed"):
        _comp(tmp_path, data, classes=order).parse_clip_table()


def test_without_exclude_the_noise_folder_is_a_class(tmp_path: Path, data: Path) -> None:
    comp = _comp(tmp_path, data, exclude=None, group_pattern=None)  # the noise file names no speaker
    comp.parse_clip_table()
    assert "_background_noise_" in comp.classes


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("_background_noise_/white_noise.wav", "is not an audio file of a class folder"),
        ("zorp/nobody_nohash_0.wav", "is not an audio file of a class folder"),
        ("../zorp/00c0ffee_nohash_0.wav", "leaves ./"),
    ],
)
def test_bad_list_line_is_named(tmp_path: Path, data: Path, line: str, message: str) -> None:
    path = data / "validation_list.txt"
    path.write_text(path.read_text() + line + "\n")
    n = len(path.read_text().splitlines())
    with pytest.raises(DataError, match=rf"validation_list.txt: line {n}: .*{message}"):
        _comp(tmp_path, data).parse_clip_table()


def test_clip_in_both_lists_is_refused(tmp_path: Path, data: Path, layout: SpeechLayout) -> None:
    (data / "validation_list.txt").write_text(layout.testing[0] + "\n")
    with pytest.raises(DataError, match=r"is in both validation_list\.txt and testing_list\.txt"):
        _comp(tmp_path, data).parse_clip_table()


def test_file_name_without_a_group_is_named(tmp_path: Path, data: Path) -> None:
    (data / "zorp" / "odd.wav").write_bytes(wav_bytes(300.0, 1))
    with pytest.raises(DataError, match=r"1 file name\(s\) do not match group_pattern .*zorp/odd.wav"):
        _comp(tmp_path, data).parse_clip_table()


def test_folder_without_audio_is_named_with_the_remedy(tmp_path: Path, data: Path) -> None:
    (data / "docs").mkdir()
    (data / "docs" / "notes.txt").write_text("x")
    with pytest.raises(
        DataError, match=r"docs: a class folder without audio files .*add it to competition.exclude"
    ):
        _comp(tmp_path, data).parse_clip_table()


def test_no_lists_means_all_clips_train_and_no_test_score(tmp_path: Path, data: Path) -> None:
    comp = _comp(tmp_path, data, validation_list=None, testing_list=None, group_pattern=None)
    table = comp.parse_clip_table()
    assert (table["split"] == "train").all() and (table["subset"] == "train").all()
    assert "group" not in table.columns and comp.test_truth() is None


def test_test_dir_instead_of_testing_list(tmp_path: Path, data: Path) -> None:
    (data / "unlabelled").mkdir()
    for i in range(3):
        (data / "unlabelled" / f"t{i}.wav").write_bytes(wav_bytes(500.0, i))
    comp = _comp(tmp_path, data, testing_list=None, test_dir="unlabelled", exclude=["_background_noise_"])
    table = comp.parse_clip_table()
    assert sorted(table.loc[table["split"] == "test", "clip_id"]) == ["t0.wav", "t1.wav", "t2.wav"]
    assert "unlabelled" not in comp.classes  # test_dir inside audio_dir is no class folder
    assert comp.test_truth() is None


def test_adding_a_clip_rebuilds_the_clip_table(tmp_path: Path, data: Path, workspace: Path) -> None:
    comp = _comp(tmp_path, data)
    n = len(clip_table(comp))
    assert len(clip_table(comp)) == n  # up to date
    (data / "blip" / "99c0ffee_nohash_0.wav").write_bytes(wav_bytes(1200.0, 5))
    assert len(clip_table(comp)) == n + 1


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"train_csv": "train.csv"}, "kind: folders has no CSV"),
        ({"multi_label": True}, "gives each clip one label"),
        ({"group_pattern": "(a)(b)"}, "2 capture groups"),
        ({"group_pattern": "("}, "not a valid regex"),
        ({"test_dir": "test"}, "testing_list and test_dir both define the test split"),
        ({"metric": "map3", "submission": None}, "kind: folders needs submission"),
        ({"metric": "macro_f1@0.5"}, "single-label data uses macro_f1"),
    ],
)
def test_wrong_combinations_are_refused(tmp_path: Path, data: Path, changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _comp(tmp_path, data, **changes)


def test_folders_keys_need_kind_folders(tmp_path: Path, data: Path) -> None:
    with pytest.raises(ConfigError, match="exclude: only meaningful with kind: folders"):
        load_competition("demo", ["exclude=[x]"])
    spec = {"name": "t", "kind": "table", "train_csv": "a.csv", "audio_dir": "a", "metric": "accuracy"}
    spec |= {"submission": {"kind": "scores"}, "testing_list": "t.txt"}
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="testing_list: only meaningful with kind: folders"):
        load_competition(str(tmp_path / "t.yaml"))


@pytest.mark.slow
def test_prepare_train_ensemble_reports_cv_and_test_score(
    tmp_path: Path, data: Path, layout: SpeechLayout, workspace: Path, capsys: pytest.CaptureFixture
) -> None:
    path = write_yaml(tmp_path, data)
    tiny = ["model.channels=[8,16]", "model.embedding_dim=16", "train.epochs=1", "train.batch_size=16"]
    args = ["prepare", "train", "ensemble", "-c", str(path), "--workers", "1"]
    for item in tiny:
        args += ["--set", item]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "test accuracy of the 3-fold mean (hidden test labels):" in out
    assert "test accuracy (hidden test labels):" in out
    comp_dir = workspace / "competition" / "words"
    (fold_file,) = comp_dir.glob("folds/k3-seed42-all-grouped.csv")
    folds = pd.read_csv(fold_file)
    assert sorted(folds["clip_id"]) == sorted(set(layout.files) - set(layout.testing) - _not_clips(layout))
    speakers = folds.assign(speaker=folds["clip_id"].map(layout.speaker))
    assert (speakers.groupby("speaker")["fold"].nunique() == 1).all()  # no speaker straddles folds
    assert sorted(folds["fold"].unique()) == [0, 1, 2]
    runs = {p.parent.name: json.loads(p.read_text()) for p in comp_dir.glob("runs/*/metrics.json")}
    assert sorted(runs) == ["cnn_small", "probe_aisfx"]  # the default experiment and the extra member
    for run_metrics in runs.values():
        assert 0.0 <= run_metrics["test_score"] <= 1.0
        assert f"{run_metrics['test_score']:.4f}" in out
    (submission,) = (workspace / "submissions" / "words").glob("*.csv")
    sub = pd.read_csv(submission)
    assert list(sub.columns) == ["fname", *sorted(WORDS)] and sorted(sub["fname"]) == sorted(layout.testing)
    with pytest.raises(AudiotagError):  # the saved vocabulary is fixed: a new class folder is refused
        (data / "newword").mkdir()
        (data / "newword" / "00c0ffee_nohash_0.wav").write_bytes(wav_bytes(700.0, 3))
        get_competition(load_competition(str(path)), comp_dir).parse_clip_table()


def _not_clips(layout: SpeechLayout) -> set[str]:
    return {c for c in layout.files if not c.endswith(".wav") or c.startswith("_background_noise_")}
