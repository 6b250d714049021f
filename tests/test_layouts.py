"""The Kaggle layout readers: the demo's own files parse, and bad rows are named by file and line."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from audiotag.competitions import get_competition
from audiotag.config.competition import NamedCompetitionConfig
from audiotag.config.competition_parts import DemoGeneratorConfig
from audiotag.core.errors import DataError

TINY = DemoGeneratorConfig(train_per_class=3, test_per_class=1, max_duration=1.0)


@pytest.fixture(scope="module")
def demo(module_tmp: Path):
    comp = get_competition(NamedCompetitionConfig(name="demo", generator=TINY), module_tmp / "demo")
    comp.obtain()
    return comp


@pytest.fixture(scope="module")
def demo2019(module_tmp: Path):
    comp = get_competition(NamedCompetitionConfig(name="demo2019", generator=TINY), module_tmp / "d19")
    comp.obtain()
    return comp


def test_fsd2018_layout_table(demo) -> None:
    table = demo.parse_clip_table()
    train, test = table[table["split"] == "train"], table[table["split"] == "test"]
    assert len(train) == 3 * len(demo.classes) and len(test) == len(demo.classes)
    assert all(len(labels) == 1 for labels in train["labels"])
    assert train["verified"].any() and not train["verified"].all()
    assert (table["sample_rate"] == 44100).all() and (table["duration"] > 0).all()
    assert all((demo.dir / p).is_file() for p in table["path"])
    truth = demo.test_truth()
    assert set(truth["clip_id"]) == set(test["clip_id"])


def test_fsd2019_layout_table(demo2019) -> None:
    table = demo2019.parse_clip_table()
    assert set(table["subset"]) == {"curated", "noisy", "test"}
    assert table.loc[table["subset"] == "curated", "verified"].all()
    assert not table.loc[table["subset"] == "noisy", "verified"].any()
    assert any(len(labels) > 1 for labels in table["labels"])


def corrupt_copy(comp, tmp_path: Path, csv: str, edit) -> object:
    import shutil

    copy = type(comp)(comp.cfg, tmp_path / "copy")
    shutil.copytree(comp.raw_dir, copy.raw_dir)
    df = pd.read_csv(copy.raw_dir / csv, dtype=str, keep_default_na=False)
    edit(df).to_csv(copy.raw_dir / csv, index=False)
    return copy


def test_unknown_label_names_file_and_line(demo, tmp_path: Path) -> None:
    def edit(df):
        df.loc[4, "label"] = "Kazoo"
        return df

    with pytest.raises(DataError, match=r"train\.csv: line 6: label 'Kazoo' is not in the 14 demo classes"):
        corrupt_copy(demo, tmp_path, "train.csv", edit).parse_clip_table()


def test_bad_verified_flag_and_duplicates(demo, tmp_path: Path) -> None:
    def flag(df):
        df.loc[0, "manually_verified"] = "maybe"
        return df

    with pytest.raises(DataError, match="line 2: manually_verified must be 0/1 or true/false, got 'maybe'"):
        corrupt_copy(demo, tmp_path / "a", "train.csv", flag).parse_clip_table()

    def duplicate(df):
        return pd.concat([df, df.iloc[[0]]])

    with pytest.raises(DataError, match=r"line \d+: file '.*' listed twice \(also .*train\.csv: line 2\)"):
        corrupt_copy(demo, tmp_path / "b", "train.csv", duplicate).parse_clip_table()


def test_missing_column_and_missing_audio(demo, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing column\(s\) \['manually_verified'\]"):
        corrupt_copy(
            demo, tmp_path / "a", "train.csv", lambda df: df.drop(columns="manually_verified")
        ).parse_clip_table()
    copy = corrupt_copy(demo, tmp_path / "b", "train.csv", lambda df: df)
    victim = sorted((copy.raw_dir / "audio_train").iterdir())[0]
    victim.unlink()
    with pytest.raises(DataError, match=f"1 audio file.*{victim.name}"):
        copy.parse_clip_table()
