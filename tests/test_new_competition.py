"""``audiotag new-competition NAME --from DIR``: the layout guessed from synthetic ESC-50, UrbanSound8K,
FSDKaggle2019 and Speech Commands folders, checked by loading the written YAML with the real loader."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from audiotag.cli.main import main
from audiotag.config.schema import CompetitionConfig, load_competition
from tests.folders_fakes import speech_layout

AUDIO = b"RIFF....WAVE"  # the guesser reads names, not audio


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(AUDIO)


def esc50_like(root: Path) -> Path:
    rows = []
    for fold in range(1, 6):
        for target, category in enumerate(["dog", "rain", "siren"]):
            src = f"{fold}{target}00"
            for take in "AB":
                name = f"{fold}-{src}-{take}-{target}.wav"
                _touch(root / "audio" / name)
                rows.append([name, fold, target, category, category == "dog", src, take])
    columns = ["filename", "fold", "target", "category", "esc10", "src_file", "take"]
    (root / "meta").mkdir(parents=True)
    pd.DataFrame(rows, columns=columns).to_csv(root / "meta" / "esc50.csv", index=False)
    (root / "README.md").write_text("made up\n")
    return root


def urbansound_like(root: Path) -> Path:
    rows = []
    classes = ["dog_bark", "siren", "drilling"]
    for fold in range(1, 4):
        for class_id, name in enumerate(classes):
            for fs_id in (100 * fold + class_id, 100 * fold + class_id + 50):
                for part in range(2):
                    file = f"{fs_id}-{class_id}-0-{part}.wav"
                    _touch(root / "audio" / f"fold{fold}" / file)
                    rows.append([file, fs_id, part * 4.0, part * 4.0 + 4, 1, fold, class_id, name])
    columns = ["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"]
    (root / "metadata").mkdir(parents=True)
    pd.DataFrame(rows, columns=columns).to_csv(root / "metadata" / "UrbanSound8K.csv", index=False)
    return root


CLASSES_2019 = ["Bark", "Bus", "Cheering", "Walk_and_footsteps"]


def fsd2019_like(root: Path) -> Path:
    for subset, n in (("curated", 12), ("noisy", 16)):
        rows = []
        for i in range(n):
            fname = f"{subset[0]}{i:04d}.wav"
            labels = [CLASSES_2019[i % 4]] + ([CLASSES_2019[(i + 1) % 4]] if i % 3 == 0 else [])
            _touch(root / f"train_{subset}" / fname)
            rows.append({"fname": fname, "labels": ",".join(labels)})
        pd.DataFrame(rows).to_csv(root / f"train_{subset}.csv", index=False)
    test = [f"t{i:04d}.wav" for i in range(5)]
    for name in test:
        _touch(root / "test" / name)
    sample = pd.DataFrame(0.0, index=range(len(test)), columns=CLASSES_2019)
    sample.insert(0, "fname", test)
    sample.to_csv(root / "sample_submission.csv", index=False)
    return root


def _new(name: str, source: Path, out: Path, *extra: str) -> int:
    return main(["new-competition", name, "--from", str(source), "-o", str(out), *extra])


def _load(path: Path) -> CompetitionConfig:
    return load_competition(str(path))


def test_esc50_like_table(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = esc50_like(tmp_path / "ESC-50-master")
    out = tmp_path / "esc.yaml"
    assert _new("myesc", data, out) == 0
    cfg = _load(out)
    assert (cfg.name, cfg.kind, cfg.data_dir) == ("myesc", "table", str(data.resolve()))
    assert (cfg.train_csv, cfg.audio_dir, cfg.file_column, cfg.label_column) == (
        "meta/esc50.csv",
        "audio",
        "filename",
        "category",
    )
    assert (cfg.multi_label, cfg.group_column, cfg.fold_column, cfg.n_folds) == (False, "src_file", "fold", 5)
    assert (cfg.metric, cfg.test_dir, cfg.file_template) == ("accuracy", None, None)
    assert cfg.submission is not None and cfg.submission.kind == "top_k_labels"
    printed = capsys.readouterr().out
    assert "label column: category (3 distinct labels over 30 rows, one label per row)" in printed
    assert "group column: src_file (15 groups over 30 rows, 2.0 clips per group)" in printed
    assert "fold column: fold (predefined folds [1, 2, 3, 4, 5])" in printed
    assert "# category (3 distinct labels" in out.read_text()  # the reason beside the key


def test_urbansound_like_table_with_fold_folders(tmp_path: Path) -> None:
    data = urbansound_like(tmp_path / "UrbanSound8K")
    out = tmp_path / "us.yaml"
    assert _new("myus", data, out) == 0
    cfg = _load(out)
    assert (cfg.train_csv, cfg.audio_dir) == ("metadata/UrbanSound8K.csv", "audio")
    assert (cfg.file_column, cfg.file_template) == ("slice_file_name", "fold{fold}/{slice_file_name}")
    assert (cfg.label_column, cfg.group_column, cfg.fold_column, cfg.n_folds) == ("class", "fsID", "fold", 3)
    assert (
        cfg.start_column is None
    )  # UrbanSound8K's start/end are times in the source recording, not the slice


def test_fsd2019_like_multi_label_with_subsets_and_a_test_set(tmp_path: Path) -> None:
    data = fsd2019_like(tmp_path / "fsd2019")
    out = tmp_path / "f19.yaml"
    assert _new("my2019", data, out) == 0
    cfg = _load(out)
    assert cfg.train_csv == {"curated": "train_curated.csv", "noisy": "train_noisy.csv"}
    assert cfg.audio_dir == {"curated": "train_curated", "noisy": "train_noisy"}
    assert cfg.noisy_subsets == ["noisy"]
    assert (cfg.file_column, cfg.label_column, cfg.multi_label, cfg.label_separator) == (
        "fname",
        "labels",
        True,
        ",",
    )
    assert (cfg.test_dir, cfg.sample_submission, cfg.metric) == ("test", "sample_submission.csv", "lwlrap")
    assert cfg.submission is not None and cfg.submission.kind == "scores"


def test_speech_commands_like_folders(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    layout = speech_layout()
    data = layout.write(tmp_path / "sc")
    out = tmp_path / "sc.yaml"
    assert _new("mysc", data, out) == 0
    cfg = _load(out)
    assert (cfg.kind, cfg.audio_dir, cfg.exclude) == ("folders", ".", ["_background_noise_"])
    assert (cfg.validation_list, cfg.testing_list) == ("validation_list.txt", "testing_list.txt")
    assert (cfg.group_pattern, cfg.test_dir, cfg.classes, cfg.metric) == (
        "^(.+?)_nohash_",
        None,
        None,
        "accuracy",
    )
    printed = capsys.readouterr().out
    assert "group pattern: ^(.+?)_nohash_ (6 speakers over 36 clips" in printed
    assert "testing list: testing_list.txt (6 clips: the test split, scored)" in printed


def test_existing_file_needs_force_and_the_default_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    data = esc50_like(tmp_path / "esc")
    out = tmp_path / "esc.yaml"
    out.write_text("mine\n")
    assert _new("myesc", data, out) == 2
    assert "exists; pass --force" in capsys.readouterr().err and out.read_text() == "mine\n"
    assert _new("myesc", data, out, "--force") == 0
    assert yaml.safe_load(out.read_text())["kind"] == "table"
    monkeypatch.setenv("AUDIOTAG_CONFIGS", str(tmp_path / "configs"))
    assert main(["new-competition", "other", "--from", str(data)]) == 0
    assert _load(tmp_path / "configs" / "competitions" / "other.yaml").name == "other"


def test_a_folder_with_nothing_to_guess_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "flat").mkdir()
    _touch(tmp_path / "flat" / "a.wav")
    assert _new("x", tmp_path / "flat", tmp_path / "x.yaml") == 2
    assert "no CSV naming audio files and no class folders" in capsys.readouterr().err
    assert _new("x", tmp_path / "absent", tmp_path / "x.yaml") == 2
    assert not (tmp_path / "x.yaml").exists()


def fsd2018_like(root: Path, labels_per_row: int = 3) -> Path:
    classes = ["Bark", "Flute", "Hi-Hat", "Laughter"]
    rows = []
    for i in range(16):
        fname = f"{i:08x}.wav"
        _touch(root / "audio_train" / fname)
        rows.append({"fname": fname, "label": classes[i % 4], "manually_verified": i % 2})
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    test = [f"t{i:07x}.wav" for i in range(5)]
    for name in test:
        _touch(root / "audio_test" / name)
    ranked = " ".join(classes[:labels_per_row])
    pd.DataFrame({"fname": test, "label": ranked}).to_csv(root / "sample_submission.csv", index=False)
    return root


@pytest.mark.parametrize(
    ("labels_per_row", "metric"), [(3, "map3"), (1, "accuracy"), (2, "map3")], ids=["map3", "one", "two"]
)
def test_fsd2018_like_sample_with_ranked_labels_sets_top_k(
    tmp_path: Path, capsys: pytest.CaptureFixture, labels_per_row: int, metric: str
) -> None:
    """FSDKaggle2018's sample submission holds three labels per row (MAP@3): the guess reads that k."""
    data = fsd2018_like(tmp_path / "fsd2018", labels_per_row)
    out = tmp_path / "f18.yaml"
    assert _new("my2018", data, out) == 0
    cfg = _load(out)
    assert (cfg.label_column, cfg.multi_label, cfg.test_dir) == ("label", False, "audio_test")
    assert cfg.metric == metric
    assert cfg.submission is not None and cfg.submission.kind == "top_k_labels"
    assert cfg.submission.k == labels_per_row
    if labels_per_row > 1:
        assert f"{labels_per_row} ranked labels per sample row" in capsys.readouterr().out
