"""The real competitions (fsd2018, fsd2019, fsd50k, audioset) on tiny fake datasets shaped like the real
ones: same file and folder names, CSV columns and quoting, short WAVs. Offline: the fetch modules are
replaced by a fake that records what it was asked for."""

from __future__ import annotations

import csv
import logging
import types
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from audiotag.cli.main import main
from audiotag.competitions import file_formats, get_competition
from audiotag.competitions.audioset import candidate_stems
from audiotag.competitions.base import warn_about_rules
from audiotag.competitions.folds import ensure_folds, load_folds
from audiotag.competitions.fsd2018 import CLASSES as CLASSES_2018
from audiotag.competitions.fsd2019 import CLASSES as CLASSES_2019
from audiotag.config.competition import NamedCompetitionConfig
from audiotag.core.errors import ConfigError, DataError
from audiotag.train.experiment import load_experiment

REPO = Path(__file__).resolve().parents[1]
SR = 44100


def wav(path: Path, seconds: float = 0.25, sr: int = SR, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(str(path), (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), sr, format=fmt)
    return path


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def make(name: str, root: Path, **cfg: object):
    return get_competition(NamedCompetitionConfig(name=name, **cfg), root)


# ----------------------------------------------------------------------------- fake datasets

TRAIN_2018 = [
    ("00044347.wav", "Hi-hat", "0"),
    ("001ca53d.wav", "Saxophone", "1"),
    ("002d256b.wav", "Trumpet", "0"),
    ("0033e230.wav", "Glockenspiel", "1"),
    ("00353774.wav", "Cello", "1"),
    ("003b91e8.wav", "Cello", "0"),
    ("003da8e5.wav", "Knock", "1"),
    ("0048fd00.wav", "Gunshot_or_gunfire", "1"),
    ("004ad66f.wav", "Clarinet", "0"),
    ("0063ab88.wav", "Cello", "1"),
]
TEST_2018 = ["00063640.wav", "0013a1db.wav", "002bb878.wav", "0b0427e2.wav"]
SCORED_2018 = [("00063640.wav", "Shatter", "Private"), ("0013a1db.wav", "Flute", "Public")]


def fake_fsd2018_kaggle(root: Path, empty: bool = True, train=TRAIN_2018, test=TEST_2018) -> Path:
    """Kaggle's freesound-audio-tagging layout, plus Zenodo's meta folder with the test labels."""
    write_csv(root / "train.csv", ["fname", "label", "manually_verified"], [list(r) for r in train])
    write_csv(
        root / "sample_submission.csv", ["fname", "label"], [[f, "Laughter Hi-hat Flute"] for f in test]
    )
    for fname, *_ in train:
        wav(root / "audio_train" / fname)
    for fname in test:
        if fname == "0b0427e2.wav":
            if empty:
                (root / "audio_test").mkdir(parents=True, exist_ok=True)
                sf.write(str(root / "audio_test" / fname), np.zeros(0, np.float32), SR, subtype="PCM_16")
            continue
        wav(root / "audio_test" / fname)
    write_csv(
        root / "FSDKaggle2018.meta" / "test_post_competition_scoring_clips.csv",
        ["fname", "label", "usage", "freesound_id", "license"],
        [[f, label, usage, 1000 + i, "Attribution"] for i, (f, label, usage) in enumerate(SCORED_2018)],
    )
    return root


def fake_fsd2018_zenodo(root: Path, freesound_ids: list[int] | None = None) -> Path:
    meta = root / "FSDKaggle2018.meta"
    ids = freesound_ids or [2000 + i for i in range(len(TRAIN_2018))]
    write_csv(
        meta / "train_post_competition.csv",
        ["fname", "label", "manually_verified", "freesound_id", "license"],
        [[*r, ids[i], "Creative Commons 0"] for i, r in enumerate(TRAIN_2018)],
    )
    write_csv(
        meta / "test_post_competition_scoring_clips.csv",
        ["fname", "label", "usage", "freesound_id", "license"],
        [[f, label, usage, 1000 + i, "Attribution"] for i, (f, label, usage) in enumerate(SCORED_2018)],
    )
    for fname, *_ in TRAIN_2018:
        wav(root / "FSDKaggle2018.audio_train" / fname)
    for fname, *_ in SCORED_2018:
        wav(root / "FSDKaggle2018.audio_test" / fname)
    return root


CURATED_2019 = [
    ("0006ae4e.wav", "Bark"),
    ("0019ef41.wav", "Raindrop"),
    ("001ec0ad.wav", "Finger_snapping"),
    ("0026c7cb.wav", "Run"),
    ("0026f116.wav", "Finger_snapping"),
    ("003be5db.wav", "Walk_and_footsteps,Slam"),
    ("1d44b0bd.wav", "Gong"),
]
NOISY_2019 = [("00097e21.wav", "Bathtub_(filling_or_washing)"), ("000b6cfb.wav", "Motorcycle,Bus")]
TEST_2019 = ["000ccb97.wav", "0012633b.wav"]


def fake_fsd2019_kaggle(root: Path, columns: list[str] | None = None) -> Path:
    write_csv(root / "train_curated.csv", ["fname", "labels"], [list(r) for r in CURATED_2019])
    write_csv(root / "train_noisy.csv", ["fname", "labels"], [list(r) for r in NOISY_2019])
    columns = columns or list(CLASSES_2019)
    write_csv(
        root / "sample_submission.csv", ["fname", *columns], [[f] + [0] * len(columns) for f in TEST_2019]
    )
    for fname, _ in CURATED_2019:
        wav(root / "train_curated" / fname)
    for fname, _ in NOISY_2019:
        wav(root / "train_noisy" / fname)
    for fname in TEST_2019:
        wav(root / "test" / fname)
    return root


VOCAB_50K = [
    (0, "Accelerating_and_revving_and_vroom", "/m/07q2z82"),
    (1, "Electric_guitar", "/m/02sgy"),
    (2, "Guitar", "/m/0342h"),
    (3, "Music", "/m/04rlf"),
    (4, "Bark", "/m/05tny_"),
]
DEV_50K = [
    ("64760", "Electric_guitar,Guitar,Music", "/m/02sgy,/m/0342h,/m/04rlf", "train"),
    ("16399", "Bark", "/m/05tny_", "train"),
    ("345111", "Guitar,Music", "/m/0342h,/m/04rlf", "val"),
    ("5312", "Accelerating_and_revving_and_vroom", "/m/07q2z82", "train"),
]
EVAL_50K = [
    ("37199", "Electric_guitar,Guitar,Music", "/m/02sgy,/m/0342h,/m/04rlf"),
    ("1277", "Bark", "/m/05tny_"),
]


def fake_fsd50k(root: Path, dev=DEV_50K) -> Path:
    gt = root / "FSD50K.ground_truth"
    gt.mkdir(parents=True, exist_ok=True)
    # vocabulary.csv has no header; written out of index order to check the sorting
    with (gt / "vocabulary.csv").open("w", newline="") as f:
        csv.writer(f).writerows([VOCAB_50K[3], *VOCAB_50K[:3], VOCAB_50K[4]])
    write_csv(gt / "dev.csv", ["fname", "labels", "mids", "split"], [list(r) for r in dev])
    write_csv(gt / "eval.csv", ["fname", "labels", "mids"], [list(r) for r in EVAL_50K])
    for fname, *_ in dev:
        wav(root / "FSD50K.dev_audio" / f"{fname}.wav")
    for fname, *_ in EVAL_50K:
        wav(root / "FSD50K.eval_audio" / f"{fname}.wav")
    return root


AUDIOSET_LABELS = [
    (0, "/m/09x0r", "Speech"),
    (1, "/m/05zppz", "Male speech, man speaking"),
    (2, "/t/dd00088", "Gush"),
    (3, "/m/012xff", "Toothbrush"),
]


def segments_csv(path: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    """The AudioSet segments format: three comment lines, ", "-separated fields, quoted MID list."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Segments csv created Sun Mar  5 10:54:31 2017",
        f"# num_ytids={len(rows)}, num_segs={len(rows)}, num_unique_labels=4, num_positive_labels=9",
        "# YTID, start_seconds, end_seconds, positive_labels",
        *(f'{y}, {s}, {e}, "{m}"' for y, s, e, m in rows),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


BALANCED = [
    ("--PJHxphWEs", "30.000", "40.000", "/m/09x0r,/t/dd00088"),  # <ytid>_<start>.wav
    ("--ZhevVpy1s", "50.000", "60.000", "/m/012xff"),  # Y<ytid>.flac in a sub-folder
    ("--aE2O5G5WE", "0.000", "10.000", "/m/05zppz,/m/09x0r"),  # <ytid>_<start>_<end>.ogg, whole seconds
    ("--aO5cdqSAg", "30.000", "40.000", "/m/09x0r"),  # missing
    ("--aaILOrkII", "200.000", "210.000", "/m/012xff"),  # .m4a: unsupported
    ("--cB2ZVjpnA", "30.000", "40.000", "/m/05zppz"),  # corrupt wav
]
EVAL = [("--4gqARaEJE", "0.000", "10.000", "/m/09x0r"), ("--BfvyPmVMo", "20.000", "30.000", "/t/dd00088")]


def fake_audioset(root: Path) -> tuple[Path, Path]:
    """(label CSV folder, audio folder), PANNs-style: <root>/metadata and <root>/audios."""
    meta = root / "metadata"
    write_csv(
        meta / "class_labels_indices.csv",
        ["index", "mid", "display_name"],
        [list(r) for r in AUDIOSET_LABELS],
    )
    segments_csv(meta / "balanced_train_segments.csv", BALANCED)
    segments_csv(meta / "eval_segments.csv", EVAL)
    audio = root / "audios"
    wav(audio / "balanced_train_segments" / "--PJHxphWEs_30.000.wav", sr=32000)
    wav(audio / "balanced_train_segments" / "part00" / "Y--ZhevVpy1s.flac", sr=32000)
    wav(audio / "balanced_train_segments" / "--aE2O5G5WE_0_10.ogg", sr=32000, fmt="OGG")
    (audio / "balanced_train_segments" / "--aaILOrkII.m4a").write_bytes(b"\x00\x00\x00\x20ftypM4A ")
    (audio / "balanced_train_segments" / "--cB2ZVjpnA_30.000_40.000.wav").write_bytes(b"RIFF junk")
    wav(audio / "eval_segments" / "Y--4gqARaEJE.wav", sr=32000)
    return meta, root


# ----------------------------------------------------------------------------- fake fetch modules


@dataclass(frozen=True)
class FakeRemote:
    url: str
    filename: str
    size: int | None = None
    md5: str | None = None
    sha256: str | None = None


class FakeDownloads:
    """Stands in for the audiotag.fetch modules; records calls; ``content[filename](path)`` writes files."""

    def __init__(
        self, content: dict[str, Callable[[Path], None]] | None = None, listing: list[str] = ()
    ) -> None:
        self.content = content or {}
        self.listing = list(listing)
        self.calls: list[tuple[object, ...]] = []

    def module(self) -> types.ModuleType:
        mod = types.ModuleType("audiotag.fetch (fake)")
        mod.RemoteFile = FakeRemote
        mod.download = self.download
        mod.zenodo_files = self.zenodo_files
        mod.join_split_zip = self.join_split_zip
        mod.extract_zip = self.extract_zip
        mod.kaggle_download = self.kaggle_download
        return mod

    def zenodo_files(self, record_id):
        self.calls.append(("zenodo_files", record_id))
        url = f"https://zenodo.org/records/{record_id}/files/"
        return [FakeRemote(url + name, name, md5="0" * 32) for name in self.listing]

    def download(self, remote, dest_dir, *, offline=False):
        self.calls.append(("download", remote.filename, remote.url))
        path = Path(dest_dir) / remote.filename
        self.content.get(remote.filename, lambda p: p.write_bytes(b"part"))(path)
        return path

    def join_split_zip(self, parts, out):
        self.calls.append(("join_split_zip", [Path(p).name for p in parts], Path(out).name))
        self.content[Path(parts[-1]).name + ":joined"](Path(out))
        return Path(out)

    def extract_zip(self, archive, dest_dir, members=None):
        self.calls.append(("extract_zip", Path(archive).name, Path(dest_dir)))
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(dest_dir)
            return [Path(dest_dir) / n for n in zf.namelist() if not n.endswith("/")]

    def kaggle_download(self, slug, dest_dir):
        self.calls.append(("kaggle_download", slug))
        self.content[slug](Path(dest_dir))
        return Path(dest_dir)

    def names(self, kind: str) -> list[object]:
        return [c[1] for c in self.calls if c[0] == kind]


@pytest.fixture
def fake_downloads(monkeypatch: pytest.MonkeyPatch):
    def install(fake: FakeDownloads) -> FakeDownloads:
        module = fake.module()
        monkeypatch.setattr(file_formats, "FETCH_API", module)
        return fake

    return install


def zip_of(files: dict[str, bytes]) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in files.items():
                zf.writestr(name, data)

    return write


def folder_zip(folder: Path, prefix: str = "") -> dict[str, bytes]:
    """Every file under ``folder`` as zip members, under ``prefix``."""
    return {
        prefix + p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# ----------------------------------------------------------------------------- fsd2018


def test_fsd2018_kaggle_table_flags_empty_test_wavs(tmp_path: Path, caplog) -> None:
    comp = make("fsd2018", tmp_path / "ws")
    fake_fsd2018_kaggle(comp.raw_dir)
    assert comp.source_found() == "kaggle"
    with caplog.at_level(logging.WARNING):
        table = comp.parse_clip_table()
    assert list(table.columns[:8]) == [
        "clip_id",
        "path",
        "split",
        "subset",
        "labels",
        "verified",
        "duration",
        "sample_rate",
    ]
    train, test = table[table["split"] == "train"], table[table["split"] == "test"]
    assert len(train) == len(TRAIN_2018) and test["clip_id"].tolist() == TEST_2018
    assert train["labels"].tolist() == [[label] for _, label, _ in TRAIN_2018]
    assert train["verified"].tolist() == [v == "1" for *_, v in TRAIN_2018]
    assert train["path"].iloc[0] == "raw/audio_train/00044347.wav"
    empty = table.set_index("clip_id").loc["0b0427e2.wav"]
    assert empty["audio_issue"] == "empty" and empty["duration"] == 0 and empty["split"] == "test"
    assert (table.loc[table["clip_id"] != "0b0427e2.wav", "audio_issue"] == "").all()
    assert "0b0427e2.wav" in caplog.text
    assert comp.sample_submission_path == comp.raw_dir / "sample_submission.csv"
    assert comp.classes == sorted(CLASSES_2018) and len(comp.classes) == 41


def test_fsd2018_truth_scores_only_the_scored_clips(tmp_path: Path) -> None:
    comp = make("fsd2018", tmp_path / "ws")
    fake_fsd2018_kaggle(comp.raw_dir)
    truth = comp.test_truth()
    assert truth["clip_id"].tolist() == [f for f, *_ in SCORED_2018]
    assert truth["labels"].tolist() == [["Shatter"], ["Flute"]] and truth["usage"].tolist() == [
        "Private",
        "Public",
    ]
    scores = np.zeros((len(TEST_2018), 41), np.float32)
    scores[0, comp.classes.index("Shatter")] = 1  # right at rank 1
    scores[1, comp.classes.index("Cello")], scores[1, comp.classes.index("Flute")] = 1, 0.5  # rank 2
    assert comp.score_test(TEST_2018, scores) == pytest.approx((1 + 0.5) / 2)


def test_fsd2018_zenodo_layout(tmp_path: Path) -> None:
    comp = make("fsd2018", tmp_path / "ws", source="zenodo")
    fake_fsd2018_zenodo(comp.raw_dir)
    table = comp.parse_clip_table()
    test = table[table["split"] == "test"]
    assert test["clip_id"].tolist() == [f for f, *_ in SCORED_2018]
    assert test["path"].iloc[0] == "raw/FSDKaggle2018.audio_test/00063640.wav"
    sample = pd.read_csv(comp.sample_submission_path)
    assert comp.sample_submission_path == comp.dir / "sample_submission.csv"
    assert list(sample.columns) == ["fname", "label"] and sample["fname"].tolist() == test["clip_id"].tolist()


# Clips cut from one Freesound recording share its freesound_id: 7 recordings for the 10 clips.
SHARED_IDS_2018 = [2000, 2000, 2001, 2002, 2002, 2002, 2003, 2004, 2005, 2006]


def test_fsd2018_zenodo_groups_by_freesound_id(tmp_path: Path, caplog) -> None:
    comp = make("fsd2018", tmp_path / "ws", source="zenodo", n_folds=2)
    fake_fsd2018_zenodo(comp.raw_dir, SHARED_IDS_2018)
    with caplog.at_level(logging.INFO):
        table = comp.parse_clip_table()
    train, test = table[table["split"] == "train"], table[table["split"] == "test"]
    assert train["group"].tolist() == [str(i) for i in SHARED_IDS_2018]
    assert test["group"].isna().all()
    assert "grouped by freesound_id: 7 groups; 5 clip(s) share a group with another clip; the largest, " in (
        caplog.text
    )
    assert "'2002', has 3 clip(s)" in caplog.text
    table.to_parquet(tmp_path / "meta.parquet", index=False)  # the column survives the clip table file
    table = pd.read_parquet(tmp_path / "meta.parquet")
    path = ensure_folds(comp, table)
    assert path.name == "k2-seed42-all-grouped.csv"
    folds = load_folds(path).merge(train, on="clip_id")
    assert (folds.groupby("group")["fold"].nunique() == 1).all()
    assert sorted(folds["fold"].unique()) == [0, 1]


def test_fsd2018_kaggle_layout_has_no_groups(tmp_path: Path, caplog) -> None:
    comp = make("fsd2018", tmp_path / "ws", n_folds=2)
    fake_fsd2018_kaggle(comp.raw_dir)
    with caplog.at_level(logging.INFO):
        table = comp.parse_clip_table()
    assert "group" not in table.columns
    assert "train.csv has no freesound_id column, so the folds are not grouped" in caplog.text
    assert ensure_folds(comp, table).name == "k2-seed42-all.csv"


def test_fsd2018_zenodo_empty_freesound_id_is_named(tmp_path: Path) -> None:
    comp = make("fsd2018", tmp_path / "ws", source="zenodo")
    fake_fsd2018_zenodo(comp.raw_dir)
    path = comp.raw_dir / "FSDKaggle2018.meta" / "train_post_competition.csv"
    df = pd.read_csv(path, dtype=str)
    df.loc[4, "freesound_id"] = ""
    df.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"train_post_competition\.csv: line 6: empty freesound_id"):
        comp.parse_clip_table()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda df: df.assign(label=df["label"].where(df.index != 3, "Kazoo")),
            r"train\.csv: line 5: label 'Kazoo' is not in the 41 FSDKaggle2018 classes",
        ),
        (
            lambda df: pd.concat([df, df.iloc[[1]]]),
            r"train\.csv: line 12: file '001ca53d\.wav' listed twice \(also .*train\.csv: line 3\)",
        ),
        (
            lambda df: df.drop(columns="manually_verified"),
            r"train\.csv: missing column\(s\) \['manually_verified'\]; found .*; restore the published file",
        ),
        (
            lambda df: df.assign(manually_verified="2"),  # 0/1 (or true/false, yes/no: the table rules)
            r"train\.csv: line 2: manually_verified must be 0/1 or true/false, got '2'",
        ),
    ],
)
def test_fsd2018_bad_rows_name_file_and_line(tmp_path: Path, edit, message: str) -> None:
    comp = make("fsd2018", tmp_path / "ws")
    fake_fsd2018_kaggle(comp.raw_dir)
    path = comp.raw_dir / "train.csv"
    edit(pd.read_csv(path, dtype=str)).to_csv(path, index=False)
    with pytest.raises(DataError, match=message):
        comp.parse_clip_table()


def test_fsd2018_missing_audio_is_named(tmp_path: Path) -> None:
    comp = make("fsd2018", tmp_path / "ws")
    fake_fsd2018_kaggle(comp.raw_dir)
    (comp.raw_dir / "audio_train" / "003da8e5.wav").unlink()
    with pytest.raises(DataError, match=r"1 audio file.*003da8e5\.wav \(file not found\)"):
        comp.parse_clip_table()


def test_data_dir_is_used_in_place_and_checked(tmp_path: Path, fake_downloads) -> None:
    fake = fake_downloads(FakeDownloads())
    data = fake_fsd2018_kaggle(tmp_path / "kaggle-input")
    comp = make("fsd2018", tmp_path / "ws", data_dir=str(data))
    comp.obtain()
    assert fake.calls == []  # nothing downloaded, nothing copied
    assert not (tmp_path / "ws" / "raw").exists()
    table = comp.parse_clip_table()
    assert table["path"].iloc[0] == str((data / "audio_train" / "00044347.wav").resolve())
    assert comp.sample_submission_path == data / "sample_submission.csv"
    assert comp.test_truth() is not None

    (data / "sample_submission.csv").unlink()
    import shutil

    shutil.rmtree(data / "audio_test")
    with pytest.raises(DataError) as err:
        comp.obtain()
    text = str(err.value)
    assert "the kaggle files lack audio_test/, sample_submission.csv" in text
    assert "the zenodo files lack FSDKaggle2018.meta/train_post_competition.csv" in text
    assert "--data-dir" in text and fake.calls == []


def test_fsd2018_obtain_from_kaggle(tmp_path: Path, fake_downloads) -> None:
    source = fake_fsd2018_kaggle(tmp_path / "source")

    def kaggle(dest: Path) -> None:  # the competition archive, as kaggle_download leaves it: extracted
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("train.csv", "sample_submission.csv"):
            (dest / name).write_bytes((source / name).read_bytes())
        for folder in ("audio_train", "audio_test"):  # Kaggle's inner zips hold loose wavs
            zip_of(folder_zip(source / folder))(dest / f"{folder}.zip")

    meta = zip_of(folder_zip(source / "FSDKaggle2018.meta", "FSDKaggle2018.meta/"))
    fake = fake_downloads(
        FakeDownloads(
            {"freesound-audio-tagging": kaggle, "FSDKaggle2018.meta.zip": meta},
            listing=[
                "FSDKaggle2018.audio_test.zip",
                "FSDKaggle2018.audio_train.zip",
                "FSDKaggle2018.meta.zip",
            ],
        )
    )
    comp = make("fsd2018", tmp_path / "ws")
    comp.obtain()
    assert fake.names("kaggle_download") == ["freesound-audio-tagging"]
    assert fake.names("zenodo_files") == [2552860]
    assert fake.names("download") == ["FSDKaggle2018.meta.zip"]  # the test labels only, not the audio
    assert (comp.raw_dir / "audio_train" / "00044347.wav").is_file()
    assert comp.test_truth() is not None and len(comp.parse_clip_table()) == len(TRAIN_2018) + len(TEST_2018)
    calls = len(fake.calls)
    comp.obtain()  # complete: nothing more to do
    assert len(fake.calls) == calls


def test_fsd2018_obtain_from_zenodo(tmp_path: Path, fake_downloads) -> None:
    source = fake_fsd2018_zenodo(tmp_path / "source")
    names = ["FSDKaggle2018.audio_train", "FSDKaggle2018.audio_test", "FSDKaggle2018.meta"]
    content = {f"{n}.zip": zip_of(folder_zip(source / n, f"{n}/")) for n in names}
    fake = fake_downloads(FakeDownloads(content, listing=[*content, "FSDKaggle2018.doc.zip"]))
    comp = make("fsd2018", tmp_path / "ws", source="zenodo")
    comp.obtain()
    assert fake.names("zenodo_files") == [2552860] and fake.names("kaggle_download") == []
    assert sorted(fake.names("download")) == sorted(content)
    assert all(
        url.startswith("https://zenodo.org/records/2552860/")
        for *_, url in (c for c in fake.calls if c[0] == "download")
    )
    assert comp.source_found() == "zenodo"
    assert len(comp.parse_clip_table()) == len(TRAIN_2018) + len(SCORED_2018)


def test_source_must_be_one_the_competition_has(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fsd50k is published on zenodo, not 'kaggle'"):
        make("fsd50k", tmp_path / "ws", source="kaggle").obtain()
    with pytest.raises(ConfigError, match="leave source unset"):
        make("audioset", tmp_path / "ws", source="zenodo").obtain()


# ----------------------------------------------------------------------------- fsd2019


def test_fsd2019_subsets_labels_and_flags(tmp_path: Path) -> None:
    comp = make("fsd2019", tmp_path / "ws", subsets=["curated"])
    fake_fsd2019_kaggle(comp.raw_dir)
    table = comp.parse_clip_table()
    assert set(table["subset"]) == {"curated", "test"}  # noisy not read unless asked for
    curated = table[table["subset"] == "curated"].set_index("clip_id")
    assert curated.loc["003be5db.wav", "labels"] == ["Walk_and_footsteps", "Slam"]
    assert curated["verified"].all()
    assert curated.loc["1d44b0bd.wav", "audio_issue"] == "silent"
    assert table["path"].iloc[0] == "raw/train_curated/0006ae4e.wav"

    both = make("fsd2019", tmp_path / "ws", subsets=["curated", "noisy"]).parse_clip_table()
    noisy = both[both["subset"] == "noisy"]
    assert noisy["labels"].tolist() == [["Bathtub_(filling_or_washing)"], ["Motorcycle", "Bus"]]
    assert not noisy["verified"].any()
    assert (
        comp.classes == list(CLASSES_2019)
        and comp.classes == sorted(comp.classes)
        and len(comp.classes) == 80
    )
    with pytest.raises(ConfigError, match="choose from"):
        make("fsd2019", tmp_path / "ws", subsets=["clean"]).parse_clip_table()


def test_fsd2019_vocabulary_order_is_checked(tmp_path: Path) -> None:
    comp = make("fsd2019", tmp_path / "ws", subsets=["curated"])
    swapped = list(CLASSES_2019)
    swapped[0], swapped[1] = swapped[1], swapped[0]
    fake_fsd2019_kaggle(comp.raw_dir, columns=swapped)
    with pytest.raises(
        DataError, match=r"sample_submission\.csv: line 1: the class columns are in another order"
    ):
        comp.parse_clip_table()


def test_fsd2019_bad_rows(tmp_path: Path) -> None:
    comp = make("fsd2019", tmp_path / "ws", subsets=["curated", "noisy"])
    fake_fsd2019_kaggle(comp.raw_dir)
    path = comp.raw_dir / "train_noisy.csv"
    write_csv(path, ["fname", "labels"], [["00097e21.wav", "Bark"], ["000b6cfb.wav", "Motorcycle,Kazoo"]])
    with pytest.raises(
        DataError, match=r"train_noisy\.csv: line 3: label 'Kazoo' is not in the 80 FSDKaggle2019 classes"
    ):
        comp.parse_clip_table()
    write_csv(path, ["fname", "labels"], [["0006ae4e.wav", "Bark"]])
    with pytest.raises(
        DataError,
        match=r"train_noisy\.csv: line 2: file '0006ae4e\.wav' listed twice "
        r"\(also .*train_curated\.csv: line 2\); a clip belongs to one subset",
    ):
        comp.parse_clip_table()


def test_fsd2019_pretrained_warning(caplog) -> None:
    banned = load_experiment(REPO / "configs/experiments/fsd2019/cnn10_scratch.yaml")
    assert (
        banned.model.pretrained is None
        and warn_about_rules(banned.competition, banned.model.pretrained) == []
    )
    with caplog.at_level(logging.WARNING):
        cheating = load_experiment(
            REPO / "configs/experiments/fsd2019/cnn10_scratch.yaml",
            ["model.pretrained=cnn10", "features=panns_32k"],
        )
        warnings = warn_about_rules(cheating.competition, cheating.model.pretrained)
    assert len(warnings) == 1 and "banned pretrained models and external data" in warnings[0]
    assert "model.pretrained is 'cnn10'" in caplog.text
    allowed = load_experiment(REPO / "configs/experiments/fsd2018/cnn14.yaml")
    assert (
        allowed.model.pretrained == "cnn14"
        and warn_about_rules(allowed.competition, allowed.model.pretrained) == []
    )


def test_fsd2019_obtain_from_zenodo_joins_the_noisy_parts(tmp_path: Path, fake_downloads) -> None:
    src = tmp_path / "source"
    wav(src / "FSDKaggle2019.audio_train_noisy" / "00097e21.wav")
    noisy = [f"FSDKaggle2019.audio_train_noisy.z0{i}" for i in range(1, 7)] + [
        "FSDKaggle2019.audio_train_noisy.zip"
    ]
    listing = [
        "FSDKaggle2019.audio_test.zip",
        "FSDKaggle2019.audio_train_curated.zip",
        *noisy,
        "FSDKaggle2019.doc.zip",
        "FSDKaggle2019.meta.zip",
    ]
    content = {
        "FSDKaggle2019.audio_train_noisy.zip:joined": zip_of(
            folder_zip(src / "FSDKaggle2019.audio_train_noisy", "FSDKaggle2019.audio_train_noisy/")
        )
    }
    for name in ("FSDKaggle2019.audio_test", "FSDKaggle2019.audio_train_curated"):
        content[f"{name}.zip"] = zip_of({f"{name}/x.wav": b""})
    content["FSDKaggle2019.meta.zip"] = zip_of(
        {
            f"FSDKaggle2019.meta/{n}": b"fname,labels\n"
            for n in (
                "train_curated_post_competition.csv",
                "train_noisy_post_competition.csv",
                "test_post_competition.csv",
                "vocabulary.csv",
            )
        }
    )
    fake = fake_downloads(FakeDownloads(content, listing=listing))
    comp = make("fsd2019", tmp_path / "ws", subsets=["curated", "noisy"], source="zenodo")
    comp.obtain()
    assert fake.names("zenodo_files") == [3612637]
    assert sorted(fake.names("download")) == sorted(n for n in listing if n != "FSDKaggle2019.doc.zip")
    assert fake.names("join_split_zip") == [noisy]
    assert (comp.raw_dir / "FSDKaggle2019.audio_train_noisy" / "00097e21.wav").is_file()
    assert not (
        comp.raw_dir / "FSDKaggle2019.audio_train_noisy.joined.zip"
    ).exists()  # removed after extraction

    curated_only = FakeDownloads(content, listing=listing)
    fake_downloads(curated_only)
    make("fsd2019", tmp_path / "ws2", subsets=["curated"], source="zenodo").obtain()
    assert not any("noisy" in name for name in curated_only.names("download"))


def test_fsd2019_obtain_from_kaggle_unpacks_inner_zips(tmp_path: Path, fake_downloads) -> None:
    source = fake_fsd2019_kaggle(tmp_path / "source")

    def kaggle(dest: Path) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("train_curated.csv", "train_noisy.csv", "sample_submission.csv"):
            zip_of({name: (source / name).read_bytes()})(dest / f"{name}.zip")  # the older per-file zips
        for folder in ("train_curated", "train_noisy", "test"):
            zip_of(folder_zip(source / folder))(dest / f"{folder}.zip")

    fake = fake_downloads(FakeDownloads({"freesound-audio-tagging-2019": kaggle}, listing=[]))
    comp = make("fsd2019", tmp_path / "ws", subsets=["curated"])
    with pytest.raises(
        DataError, match="Zenodo record 3612637"
    ):  # no test labels: a warning, not an error ...
        comp.zenodo_fetch(3612637, lambda name: name == "FSDKaggle2019.meta.zip")
    comp.obtain()  # ... so obtain goes through
    assert fake.names("kaggle_download") == ["freesound-audio-tagging-2019"]
    assert (comp.raw_dir / "train_curated.csv").is_file() and (
        comp.raw_dir / "test" / "000ccb97.wav"
    ).is_file()
    assert comp.test_truth() is None and len(comp.parse_clip_table()) == len(CURATED_2019) + len(TEST_2019)


# ----------------------------------------------------------------------------- fsd50k


def test_fsd50k_table_truth_and_vocabulary(tmp_path: Path) -> None:
    comp = make("fsd50k", tmp_path / "ws")
    fake_fsd50k(comp.raw_dir)
    assert comp.classes == [name for _, name, _ in VOCAB_50K]  # index order, not file order
    table = comp.parse_clip_table()
    dev = table[table["split"] == "train"].set_index("clip_id")
    assert dev["subset"].to_dict() == {f: s for f, *_, s in DEV_50K}
    assert dev.loc["64760", "labels"] == ["Electric_guitar", "Guitar", "Music"]
    assert dev.loc["64760", "path"] == "raw/FSD50K.dev_audio/64760.wav" and table["verified"].all()
    test = table[table["split"] == "test"]
    assert test["clip_id"].tolist() == ["37199", "1277"] and set(test["subset"]) == {"eval"}
    truth = comp.test_truth()
    assert truth["labels"].tolist() == [["Electric_guitar", "Guitar", "Music"], ["Bark"]]
    sample = pd.read_csv(comp.sample_submission_path, dtype={"fname": str})
    assert list(sample.columns) == ["fname", *comp.classes] and sample["fname"].tolist() == ["37199", "1277"]
    assert comp.metric == "map" and comp.submission_kind == "scores"
    only_train = make("fsd50k", tmp_path / "ws", subsets=["train"])
    assert set(only_train.training_clips(table)["subset"]) == {"train"}


def test_fsd50k_bad_rows(tmp_path: Path) -> None:
    comp = make("fsd50k", tmp_path / "ws")
    fake_fsd50k(comp.raw_dir, dev=[*DEV_50K[:2], ("345111", "Guitar", "/m/0342h", "validation")])
    with pytest.raises(DataError, match=r"dev\.csv: line 4: split must be train or val, got 'validation'"):
        comp.parse_clip_table()
    comp = make("fsd50k", tmp_path / "ws2")
    fake_fsd50k(comp.raw_dir, dev=[*DEV_50K[:2], ("345111", "Guitar,Banjo", "/m/0342h,/m/018j2", "val")])
    with pytest.raises(DataError, match=r"dev\.csv: line 4: unknown label\(s\) \['Banjo'\]"):
        comp.parse_clip_table()
    with (comp.raw_dir / "FSD50K.ground_truth" / "vocabulary.csv").open("a") as f:
        f.write("seven,Banjo,/m/018j2\n")
    comp._classes = None
    with pytest.raises(DataError, match=r"vocabulary\.csv: line 6: expected index,label"):
        _ = comp.classes


def test_fsd50k_obtain_joins_split_zips(tmp_path: Path, fake_downloads) -> None:
    source = fake_fsd50k(tmp_path / "source")
    dev_parts = [f"FSD50K.dev_audio.z0{i}" for i in range(1, 6)] + ["FSD50K.dev_audio.zip"]
    eval_parts = ["FSD50K.eval_audio.z01", "FSD50K.eval_audio.zip"]
    listing = [*dev_parts, *eval_parts, "FSD50K.doc.zip", "FSD50K.ground_truth.zip", "FSD50K.metadata.zip"]
    content = {
        "FSD50K.dev_audio.zip:joined": zip_of(folder_zip(source / "FSD50K.dev_audio", "FSD50K.dev_audio/")),
        "FSD50K.eval_audio.zip:joined": zip_of(
            folder_zip(source / "FSD50K.eval_audio", "FSD50K.eval_audio/")
        ),
        "FSD50K.ground_truth.zip": zip_of(folder_zip(source / "FSD50K.ground_truth", "FSD50K.ground_truth/")),
    }
    fake = fake_downloads(FakeDownloads(content, listing=listing))
    comp = make("fsd50k", tmp_path / "ws")
    comp.obtain()
    assert fake.names("zenodo_files") == [4060432]
    assert sorted(fake.names("download")) == sorted([*dev_parts, *eval_parts, "FSD50K.ground_truth.zip"])
    assert sorted(fake.names("join_split_zip")) == sorted([dev_parts, eval_parts])
    assert len(comp.parse_clip_table()) == len(DEV_50K) + len(EVAL_50K)


# ----------------------------------------------------------------------------- audioset


def test_audioset_candidate_names() -> None:
    stems = candidate_stems("--PJHxphWEs", "30.000", "40.000")
    for name in ("--PJHxphWEs", "Y--PJHxphWEs", "--PJHxphWEs_30.000", "--PJHxphWEs_30", "--PJHxphWEs_30.0",
                 "--PJHxphWEs_30_40", "--PJHxphWEs_30000_40000", "Y--PJHxphWEs_30.000_40.000"):  # fmt: skip
        assert name in stems
    assert (
        stems.index("--PJHxphWEs_30.000_40.000")
        < stems.index("--PJHxphWEs_30.000")
        < stems.index("--PJHxphWEs")
    )


def test_audioset_counts_and_reports_missing_clips(tmp_path: Path, caplog) -> None:
    meta, audio = fake_audioset(tmp_path / "dataset")
    comp = make("audioset", tmp_path / "ws", data_dir=str(audio), subsets=["balanced"])
    assert comp.raw_dir == meta
    comp.obtain()  # CSVs found in data_dir/metadata: nothing to download
    assert comp.classes == [name for *_, name in AUDIOSET_LABELS]
    with caplog.at_level(logging.INFO):
        table = comp.parse_clip_table()
    by_id = table.set_index("clip_id")
    assert sorted(by_id.index) == [
        "--4gqARaEJE_0.000",
        "--PJHxphWEs_30.000",
        "--ZhevVpy1s_50.000",
        "--aE2O5G5WE_0.000",
    ]
    assert by_id.loc["--PJHxphWEs_30.000", "labels"] == ["Speech", "Gush"]
    assert by_id.loc["--aE2O5G5WE_0.000", "labels"] == ["Male speech, man speaking", "Speech"]
    assert (
        by_id.loc["--4gqARaEJE_0.000", "split"] == "test"
        and by_id.loc["--4gqARaEJE_0.000", "subset"] == "eval"
    )
    assert by_id.loc["--ZhevVpy1s_50.000", "path"].endswith("part00/Y--ZhevVpy1s.flac")
    assert (by_id["sample_rate"] == 32000).all()
    report = pd.read_csv(comp.dir / "missing_clips.csv", dtype=str).set_index("clip_id")
    assert report["reason"].to_dict() == {
        "--aO5cdqSAg_30.000": "not found",
        "--aaILOrkII_200.000": "unsupported format .m4a (convert it to flac or wav)",
        "--BfvyPmVMo_20.000": "not found",
        "--cB2ZVjpnA_30.000": report.loc["--cB2ZVjpnA_30.000", "reason"],
    }
    assert report.loc["--cB2ZVjpnA_30.000", "reason"].startswith("unreadable")
    assert (
        report.loc["--aO5cdqSAg_30.000", "ytid"] == "--aO5cdqSAg"
        and report.loc["--aO5cdqSAg_30.000", "end_seconds"] == "40.000"
    )
    assert "balanced 3/6, eval 1/2; 4 missing" in caplog.text
    truth = comp.test_truth()
    assert truth.set_index("clip_id").loc["--BfvyPmVMo_20.000", "labels"] == ["Gush"]
    sample = pd.read_csv(comp.sample_submission_path)
    assert list(sample.columns) == ["fname", *comp.classes] and sample["fname"].tolist() == [
        "--4gqARaEJE_0.000"
    ]


def test_audioset_unknown_mid_names_file_and_line(tmp_path: Path) -> None:
    meta, audio = fake_audioset(tmp_path / "dataset")
    segments_csv(
        meta / "balanced_train_segments.csv", [BALANCED[0], ("--ZhevVpy1s", "50.000", "60.000", "/m/0bogus")]
    )
    comp = make("audioset", tmp_path / "ws", data_dir=str(audio), subsets=["balanced"])
    with pytest.raises(
        DataError, match=r"balanced_train_segments\.csv: line 5: unknown label MID\(s\) \['/m/0bogus'\]"
    ):
        comp.parse_clip_table()


def test_audioset_no_clip_at_all_is_a_clear_error(tmp_path: Path) -> None:
    meta, _ = fake_audioset(tmp_path / "dataset")
    empty = tmp_path / "my-audio"
    empty.mkdir()
    for name in ("class_labels_indices.csv", "balanced_train_segments.csv", "eval_segments.csv"):
        (empty / name).write_bytes((meta / name).read_bytes())
    comp = make("audioset", tmp_path / "ws", data_dir=str(empty), subsets=["balanced"])
    with pytest.raises(DataError, match=r"none of the 6 training segments \(balanced\) has a clip"):
        comp.parse_clip_table()
    assert len(pd.read_csv(comp.dir / "missing_clips.csv")) == len(BALANCED) + len(EVAL)


def test_audioset_obtain_downloads_only_the_label_csvs(tmp_path: Path, fake_downloads) -> None:
    meta, _ = fake_audioset(tmp_path / "dataset")
    content = {p.name: (lambda src: lambda dst: dst.write_bytes(src.read_bytes()))(p) for p in meta.iterdir()}
    fake = fake_downloads(FakeDownloads(content))
    comp = make("audioset", tmp_path / "ws", subsets=["balanced"])
    with pytest.raises(DataError, match=r"AudioSet's audio is not distributed.*--data-dir"):
        comp.obtain()
    urls = [c[2] for c in fake.calls if c[0] == "download"]
    assert sorted(fake.names("download")) == [
        "balanced_train_segments.csv",
        "class_labels_indices.csv",
        "eval_segments.csv",
    ]
    assert all(
        u.startswith("https://storage.googleapis.com/us_audioset/youtube_corpus/v1/csv/") for u in urls
    )
    assert fake.names("kaggle_download") == [] and fake.names("zenodo_files") == []


# ----------------------------------------------------------------------------- CLI


@pytest.mark.slow
def test_cli_data_dir_must_exist(workspace: Path, capsys) -> None:
    assert main(["prepare", "-c", "fsd2018", "--data-dir", str(workspace / "nowhere")]) == 2
    assert "--data-dir" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_prepare_fsd2018_from_data_dir(workspace: Path, fake_downloads) -> None:
    fake = fake_downloads(FakeDownloads())
    data = fake_fsd2018_kaggle(workspace / "kaggle-input", empty=False, test=TEST_2018[:3])
    args = [
        "prepare",
        "-c",
        "fsd2018",
        "--data-dir",
        str(data),
        "--workers",
        "1",
        "--set",
        "competition.n_folds=2",
    ]
    assert main(args) == 0
    comp_dir = workspace / "competition" / "fsd2018"
    meta = pd.read_parquet(comp_dir / "meta.parquet")
    assert len(meta) == len(TRAIN_2018) + 3 and meta["path"].map(lambda p: Path(p).is_absolute()).all()
    assert not (comp_dir / "raw").exists() and fake.calls == []
    assert len(list((comp_dir / "cache").glob("*/manifest.json"))) == 1
    assert len(list((comp_dir / "folds").glob("*.csv"))) == 1


def test_prepare_with_empty_test_wavs_zero_fills_them(workspace: Path) -> None:
    from audiotag.runs.prepare import prepare

    data = fake_fsd2018_kaggle(workspace / "kaggle-input", test=TEST_2018[2:])
    cfg = load_experiment(
        REPO / "configs/experiments/fsd2018/cnn14.yaml",
        [f"competition.data_dir={data}", "competition.n_folds=2"],
    )
    prepared = prepare(cfg.competition, cfg.features, workers=1)
    report = pd.read_csv(prepared.cache_dir / "report.csv", dtype=str, keep_default_na=False)
    row = report.set_index("clip_id").loc["0b0427e2.wav"]
    assert row["audio_issue"] == "empty" and "zero_filled" in row["status"] and row["split"] == "test"
