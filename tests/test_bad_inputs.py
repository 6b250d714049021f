"""Bad inputs get the written rules or one clear message: clip names that leave the audio folder,
unusable audio files in the clip-table probe, a header-only train.csv, misleading messages, submit
with --data-dir, and the fold file written by two processes at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audiotag.cli.main import main
from audiotag.competitions import file_formats
from audiotag.competitions.demo import CLASSES as DEMO_CLASSES
from audiotag.competitions.folds import assign_folds, load_folds
from audiotag.competitions.fsd2018 import CLASSES as CLASSES_2018
from audiotag.config.files import configs_root
from audiotag.core.errors import ConfigError, DataError
from audiotag.data import audio
from audiotag.data.audio import UnusableAudio, decode
from audiotag.fetch import kaggle as fetch_kaggle
from audiotag.train.experiment import load_experiment
from tests.conftest import REPO
from tests.test_competitions_real import (
    TEST_2018,
    TRAIN_2018,
    fake_fsd2018_kaggle,
    fake_fsd2019_kaggle,
    make,
    wav,
    write_csv,
)
from tests.test_submit import SLUG, FakeApi

DEMO = configs_root() / "experiments" / "demo" / "cnn_small.yaml"


def set_fname(csv_path: Path, row: int, fname: str) -> None:
    df = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    df.loc[row, "fname"] = fname
    df.to_csv(csv_path, index=False)


def demo_of(root: Path, **fake: object):
    """The demo competition with the small fake FSDKaggle2018 layout in its raw/, labelled with the
    demo's classes (the demo reads that layout)."""
    comp = make("demo", root)
    train = [(fname, DEMO_CLASSES[i % len(DEMO_CLASSES)], v) for i, (fname, _, v) in enumerate(TRAIN_2018)]
    fake_fsd2018_kaggle(comp.raw_dir, train=train, **fake)
    return comp


def record_opens(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every audio header the clip-table probe reads."""
    opened: list[Path] = []
    real = file_formats.audio_info

    def spy(path):
        opened.append(Path(path))
        return real(path)

    monkeypatch.setattr(file_formats, "audio_info", spy)
    return opened


# ----------------------------------------------------------------------------- 1. fnames stay inside


@pytest.mark.parametrize(
    ("csv_name", "row", "fname", "line", "why"),
    [
        ("train.csv", 5, "../../x.wav", 7, "has a '..' part"),
        ("train.csv", 0, "sub/../../../../etc/passwd", 2, "has a '..' part"),
        ("sample_submission.csv", 1, "/abs/path.wav", 3, "is an absolute path"),
        ("sample_submission.csv", 0, "../../../../etc/passwd", 2, "has a '..' part"),
    ],
)
def test_fname_leaving_the_audio_folder_is_refused_before_anything_is_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, csv_name: str, row: int, fname: str, line: int, why: str
) -> None:
    comp = make("fsd2018", tmp_path / "ws")
    fake_fsd2018_kaggle(comp.raw_dir)
    wav(tmp_path / "x.wav")  # what ../../x.wav would reach from audio_train/: readable audio
    set_fname(comp.raw_dir / csv_name, row, fname)
    opened = record_opens(monkeypatch)
    folder = "audio_train" if csv_name == "train.csv" else "audio_test"
    with pytest.raises(DataError) as info:
        comp.parse_clip_table()
    assert str(info.value).startswith(
        f"{comp.raw_dir / csv_name}: line {line}: fname {fname!r} leaves the audio folder {folder}/ ({why})"
    )
    assert opened == []


def test_fname_leaving_the_folder_is_refused_in_the_demo_layout_and_with_data_dir(tmp_path: Path) -> None:
    data = fake_fsd2018_kaggle(tmp_path / "kaggle-input")
    set_fname(data / "train.csv", 2, "../audio_test/00063640.wav")  # inside the data folder, not audio_train
    comp = make("fsd2018", tmp_path / "ws", data_dir=str(data))
    with pytest.raises(DataError, match=r"train\.csv: line 4: fname '\.\./audio_test/00063640\.wav' leaves"):
        comp.parse_clip_table()
    demo = demo_of(tmp_path / "demo")
    set_fname(demo.raw_dir / "train.csv", 0, "../../x.wav")
    with pytest.raises(
        DataError, match=r"train\.csv: line 2: fname '\.\./\.\./x\.wav' leaves the audio folder"
    ):
        demo.parse_clip_table()


def test_a_symlink_placed_inside_the_folder_is_followed(tmp_path: Path) -> None:
    """The documented choice: the rule is on the name; a link named by a plain name is the user's."""
    comp = make("fsd2018", tmp_path / "ws")
    fake_fsd2018_kaggle(comp.raw_dir)
    target = comp.raw_dir / "audio_train" / "00044347.wav"
    elsewhere = wav(tmp_path / "elsewhere" / "real.wav", seconds=0.5)
    target.unlink()
    target.symlink_to(elsewhere)
    table = comp.parse_clip_table().set_index("clip_id")
    assert table.loc["00044347.wav", "duration"] == pytest.approx(0.5)
    assert table.loc["00044347.wav", "audio_issue"] == ""


# ----------------------------------------------------------------------------- 2. unusable audio


def spoil(comp_raw: Path) -> None:
    (comp_raw / "audio_train" / "001ca53d.wav").write_bytes(b"")  # 0 bytes
    (comp_raw / "audio_train" / "002d256b.wav").write_text("not audio at all\n")
    (comp_raw / "audio_test" / "0013a1db.wav").write_bytes(b"")
    (comp_raw / "audio_test" / "002bb878.wav").write_bytes(os.urandom(64))


def test_unusable_files_are_flagged_in_the_clip_table_not_fatal(tmp_path: Path, caplog) -> None:
    comp = make("fsd2018", tmp_path / "ws")
    fake_fsd2018_kaggle(comp.raw_dir)
    spoil(comp.raw_dir)
    table = comp.parse_clip_table().set_index("clip_id")
    issues = table["audio_issue"]
    assert issues["001ca53d.wav"] == "empty" and issues["0013a1db.wav"] == "empty"
    assert issues["002d256b.wav"] == "undecodable" and issues["002bb878.wav"] == "undecodable"
    assert issues["0b0427e2.wav"] == "empty"  # the known header-only test wav, as before
    assert (
        issues.drop(["001ca53d.wav", "0013a1db.wav", "002d256b.wav", "002bb878.wav", "0b0427e2.wav"])
        .eq("")
        .all()
    )
    assert table.loc["002d256b.wav", "duration"] == 0 and table.loc["002d256b.wav", "split"] == "train"
    assert "002d256b.wav" in caplog.text and "cannot be used" in caplog.text


def test_demo_layout_flags_unusable_files_too(tmp_path: Path) -> None:
    demo = demo_of(tmp_path / "demo", empty=False, test=TEST_2018[:3])
    (demo.raw_dir / "audio_train" / "001ca53d.wav").write_text("junk")
    table = demo.parse_clip_table().set_index("clip_id")
    assert table.loc["001ca53d.wav", "audio_issue"] == "undecodable"
    clean = demo_of(tmp_path / "clean", empty=False, test=TEST_2018[:3])
    assert "audio_issue" not in clean.parse_clip_table().columns  # demo unchanged


def test_prepare_skips_unusable_train_files_and_zero_fills_test_files(workspace: Path) -> None:
    from audiotag.runs.prepare import prepare

    data = fake_fsd2018_kaggle(workspace / "kaggle-input")
    spoil(data)
    cfg = load_experiment(
        REPO / "configs/experiments/fsd2018/cnn14.yaml",
        [f"competition.data_dir={data}", "competition.n_folds=2"],
    )
    prepared = prepare(cfg.competition, cfg.features, workers=1)
    assert prepared.skipped == {"001ca53d.wav", "002d256b.wav"}
    report = pd.read_csv(prepared.cache_dir / "report.csv", dtype=str, keep_default_na=False)
    report = report.set_index("clip_id")
    assert (
        report.loc["001ca53d.wav", "status"] == "skipped"
        and report.loc["001ca53d.wav", "audio_issue"] == "empty"
    )
    assert "skipped" in report.loc["002d256b.wav", "status"]
    assert report.loc["002d256b.wav", "audio_issue"] == "undecodable"
    for clip in ("0013a1db.wav", "002bb878.wav"):
        assert "zero_filled" in report.loc[clip, "status"] and report.loc[clip, "split"] == "test"


# ----------------------------------------------------------------------------- 3. header-only train.csv


def test_header_only_train_csv_is_refused_before_anything_is_written(workspace: Path) -> None:
    from audiotag.runs.prepare import prepare

    data = fake_fsd2018_kaggle(workspace / "kaggle-input")
    (data / "train.csv").write_text("fname,label,manually_verified\n")
    cfg = load_experiment(REPO / "configs/experiments/fsd2018/cnn14.yaml", [f"competition.data_dir={data}"])
    with pytest.raises(DataError, match=r"train\.csv: no training clips: the file has a header and no rows"):
        prepare(cfg.competition, cfg.features, workers=1)
    comp_dir = workspace / "competition" / "fsd2018"
    assert not (comp_dir / "meta.parquet").exists() and not (comp_dir / "folds").exists()


def test_header_only_train_csv_in_the_demo_layouts(tmp_path: Path) -> None:
    demo = demo_of(tmp_path / "demo")
    write_csv(demo.raw_dir / "train.csv", ["fname", "label", "manually_verified"], [])
    with pytest.raises(DataError, match=r"train\.csv: no training clips: the file has a header and no rows"):
        demo.parse_clip_table()
    demo2019 = make("demo2019", tmp_path / "demo2019")
    fake_fsd2019_kaggle(demo2019.raw_dir, columns=DEMO_CLASSES)
    for subset in ("curated", "noisy"):  # the demo reads both subsets
        write_csv(demo2019.raw_dir / f"train_{subset}.csv", ["fname", "labels"], [])
    with pytest.raises(
        DataError, match=r"train_curated\.csv, .*train_noisy\.csv: no training clips: the files have a header"
    ):
        demo2019.parse_clip_table()


# ----------------------------------------------------------------------------- 4. messages


def test_too_few_clips_names_the_stratum_rule_and_numbers(tmp_path: Path) -> None:
    comp = make("fsd2018", tmp_path / "ws", n_folds=5)
    labels = [CLASSES_2018[i % 10] for i in range(20)]  # 10 labels x 2 clips, all verified
    train = pd.DataFrame({"clip_id": [f"{i}.wav" for i in range(20)], "labels": [[x] for x in labels]})
    train["verified"] = True
    with pytest.raises(DataError) as info:
        assign_folds(comp, train)
    text = str(info.value)
    assert "the largest (label, verified) group must have at least 5 clips" in text
    assert "has 2 (20 training clips in 10 groups)" in text and "lower competition.n_folds to 2" in text
    assert "too few clips" not in text


def test_symlink_loop_is_not_reported_as_missing(tmp_path: Path) -> None:
    loop = tmp_path / "loop.wav"
    loop.symlink_to(loop)
    with pytest.raises(UnusableAudio) as info:
        decode(loop, 16000)
    assert info.value.kind == "undecodable" and "symbolic link loop" in str(info.value)
    assert "not found" not in str(info.value) and "replace the link" in str(info.value)
    dangling = tmp_path / "dangling.wav"
    dangling.symlink_to(tmp_path / "gone.wav")
    with pytest.raises(UnusableAudio, match=r"symbolic link to .*gone\.wav', which does not exist"):
        decode(dangling, 16000)


def test_permission_error_is_not_a_system_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = wav(tmp_path / "locked.wav")
    path.chmod(0)
    if os.geteuid() == 0:  # root reads anything: make the OS and libsndfile refuse as they do for a user
        real_open = os.open

        def refuse(p, flags, *args):
            if Path(p) == path:
                raise PermissionError(13, "Permission denied", str(p))
            return real_open(p, flags, *args)

        def sndfile_refuses(p, *args, **kwargs):
            raise RuntimeError(f"Error opening {p!r}: System error.")

        monkeypatch.setattr(audio.os, "open", refuse)
        monkeypatch.setattr(audio.sf, "SoundFile", sndfile_refuses)
        monkeypatch.setattr(audio.sf, "info", sndfile_refuses)
    try:
        for call in (lambda: decode(path, 16000), lambda: audio.audio_info(path)):
            with pytest.raises(UnusableAudio) as info:
                call()
            text = str(info.value)
            assert "permission denied" in text and "chmod a+r" in text and "System error" not in text
    finally:
        path.chmod(0o644)


def test_set_errors_name_the_override_not_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_experiment(DEMO, ["train.epochs=abc"])
    text = str(info.value)
    assert text.startswith("invalid --set override") and "(from --set train.epochs=abc)" in text
    assert f"{DEMO}: invalid configuration" not in text
    bad = tmp_path / "exp.yaml"
    bad.write_text("competition: demo\nfeatures: logmel_16k_64\nmodel: cnn_small\ntrain: {epochs: many}\n")
    with pytest.raises(ConfigError) as info:
        load_experiment(bad, ["train.lr=fast"])
    text = str(info.value)
    assert text.startswith(f"{bad}: invalid configuration")  # the file's own error still names the file
    assert "train.lr: " in text and "(from --set train.lr=fast)" in text
    epochs_line = next(line for line in text.splitlines() if "train.epochs" in line)
    assert "--set" not in epochs_line


def test_missing_audio_names_the_data_dir_not_the_workspace(tmp_path: Path) -> None:
    data = fake_fsd2018_kaggle(tmp_path / "kaggle-input")
    (data / "audio_train" / "003da8e5.wav").unlink()
    comp = make("fsd2018", tmp_path / "ws", data_dir=str(data))
    with pytest.raises(DataError) as info:
        comp.parse_clip_table()
    text = str(info.value)
    assert f"missing under --data-dir {data.resolve()}: audio_train/003da8e5.wav (file not found)" in text
    assert "--data-dir points at the complete competition folder" in text
    assert str(tmp_path / "ws") not in text


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_workers_must_be_one_or_more(value: str, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["prepare", "--workers", value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--workers" in err and "1 or more" in err


# ----------------------------------------------------------------------------- 5. submit --data-dir


def test_submit_validates_against_the_data_dir_sample(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(workspace / "no-kaggle"))
    api = FakeApi(reply={"message": "Successfully submitted", "ref": 9})
    monkeypatch.setattr(fetch_kaggle, "KAGGLE_API_FACTORY", lambda: api)
    data = workspace / "kaggle-input"
    write_csv(data / "sample_submission.csv", ["fname", "label"], [[f, ""] for f in TEST_2018])
    sub = workspace / "submissions" / "fsd2018" / "blend.csv"
    write_csv(sub, ["fname", "label"], [[f, " ".join(CLASSES_2018[:3])] for f in TEST_2018])

    assert main(["submit", str(sub), "-m", "x", "--slug", SLUG]) == 2
    err = capsys.readouterr().err
    assert "sample submission" in err and "pass the same --data-dir PATH to submit" in err
    assert api.submitted == []

    assert main(["submit", str(sub), "-m", "in place", "--slug", SLUG, "--data-dir", str(data)]) == 0
    assert api.submitted == [(str(sub), "in place", SLUG)]
    record = json.loads((workspace / "submissions" / "log.jsonl").read_text())
    assert record["competition"] == "fsd2018" and record["ref"] == "9"

    write_csv(sub, ["fname", "label"], [[f, "Not_a_class"] for f in TEST_2018])  # checked against that sample
    assert main(["submit", str(sub), "-m", "bad", "--slug", SLUG, "--data-dir", str(data)]) == 2
    assert "does not match the fsd2018 sample submission" in capsys.readouterr().err
    assert len(api.submitted) == 1


# ----------------------------------------------------------------------------- 6. one fold file, two writers

WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from audiotag.competitions import folds
    from tests.fakes import FakeSingle, make

    root, marker, me, other = map(Path, sys.argv[1:5])
    comp = make(FakeSingle, root, n_folds=3)
    table = comp.parse_clip_table()
    real = folds.assign_folds

    def slow(comp, train):  # draw slowly, so that an unlocked second process would draw too
        with open(marker, "a") as f:
            f.write("drew\\n")
        time.sleep(1.0)
        return real(comp, train)

    folds.assign_folds = slow
    me.touch()
    deadline = time.time() + 60
    while not other.exists() and time.time() < deadline:
        time.sleep(0.005)
    print(folds.ensure_folds(comp, table))
    """
)


def test_two_processes_write_the_fold_file_once(tmp_path: Path) -> None:
    marker = tmp_path / "draws.txt"
    ready = [tmp_path / "ready0", tmp_path / "ready1"]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(REPO)]))
    )
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WRITER,
                str(tmp_path / "ws"),
                str(marker),
                str(ready[i]),
                str(ready[1 - i]),
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    paths = {out.strip() for out, _ in outs}
    assert len(paths) == 1
    assert marker.read_text().splitlines() == ["drew"]  # the second waited and reused the first's file
    folds = load_folds(Path(paths.pop()))
    assert len(folds) == 100 and sorted(np.unique(folds["fold"])) == [0, 1, 2]
