"""Submissions with another id column than ``fname`` and the ``sample_columns`` format (exactly the
sample submission's columns), built, validated and checked before a Kaggle upload."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audiotag.competitions.submission import build_submission, validate_submission, write_submission
from audiotag.core.errors import DataError
from audiotag.kaggle.submit import validate_file
from tests.fakes import FakeMulti, FakeSingle, make

IDS = ["c.wav", "a.wav", "b.wav"]
ORDER = ["Gong", "Bark", "Flute", "Chime", "Drum"]  # the sample's own column order


class SampleColumns(FakeMulti):
    submission_kind = "sample_columns"
    id_column = "clip"


class TopOne(FakeSingle):
    id_column = "clip"
    label_count = 1


def _sample(comp: FakeSingle, columns: list[str], id_first: bool = True) -> None:
    comp.raw_dir.mkdir(parents=True, exist_ok=True)
    sample = pd.DataFrame(0.0, index=range(len(IDS)), columns=columns)
    sample.insert(0 if id_first else len(columns), comp.id_column, IDS)
    sample.to_csv(comp.sample_submission_path, index=False)


def test_sample_columns_keeps_the_sample_s_header_and_order(tmp_path: Path) -> None:
    comp = make(SampleColumns, tmp_path)
    _sample(comp, ORDER, id_first=False)  # even the id column where the sample has it
    scores = np.array([[0.1, 0.2, 0.3, 0.4, 0.5], [0.5, 0.4, 0.3, 0.2, 0.1], [0.0, 0.0, 1.0, 0.0, 0.0]])
    sub = build_submission(comp, ["a.wav", "b.wav", "c.wav"], scores)  # rows in another order
    assert list(sub.columns) == [*ORDER, "clip"] and sub["clip"].tolist() == IDS
    classes = comp.classes  # Bark Chime Drum Flute Gong: the score columns' order
    for column in ORDER:
        assert sub[column].tolist() == [scores[r, classes.index(column)] for r in (2, 0, 1)]
    path = write_submission(comp, sub, tmp_path / "out.csv")
    assert path.read_text().splitlines()[0] == "Gong,Bark,Flute,Chime,Drum,clip"
    assert validate_file(comp, path)["clip"].tolist() == IDS  # the upload check reads the same id


def test_sample_columns_other_than_the_vocabulary_are_named(tmp_path: Path) -> None:
    comp = make(SampleColumns, tmp_path)
    _sample(comp, ["Gong", "Bark", "Flute", "Chime", "Kazoo"])
    with pytest.raises(DataError, match=r"missing \['Drum'\], extra \['Kazoo'\]"):
        build_submission(comp, IDS, np.zeros((3, 5)))


def test_reordered_columns_are_refused(tmp_path: Path) -> None:
    comp = make(SampleColumns, tmp_path)
    _sample(comp, ORDER)
    sub = build_submission(comp, IDS, np.full((3, 5), 0.5))
    with pytest.raises(DataError, match="differ from the sample's"):
        validate_submission(comp, sub[["clip", *sorted(ORDER)]])


def test_top_k_writes_the_sample_s_label_header_and_id(tmp_path: Path) -> None:
    comp = make(TopOne, tmp_path)
    comp.raw_dir.mkdir(parents=True)
    pd.DataFrame({"clip": IDS, "prediction": ""}).to_csv(comp.sample_submission_path, index=False)
    scores = np.eye(5)[[4, 0, 1]]  # c -> Gong, a -> Bark, b -> Chime
    sub = build_submission(comp, IDS, scores)
    assert list(sub.columns) == ["clip", "prediction"]
    assert sub["prediction"].tolist() == ["Gong", "Bark", "Chime"]
    write_submission(comp, sub, tmp_path / "top.csv")
    with pytest.raises(DataError, match=r"row 1 \(c\.wav\): bad labels 'Gong Bark'"):  # k = 1
        validate_submission(comp, sub.assign(prediction=["Gong Bark", "Bark", "Chime"]))


def test_a_sample_without_the_id_column_is_named(tmp_path: Path) -> None:
    comp = make(TopOne, tmp_path)
    comp.raw_dir.mkdir(parents=True)
    pd.DataFrame({"fname": IDS, "label": ""}).to_csv(comp.sample_submission_path, index=False)
    with pytest.raises(DataError, match=r"no id column 'clip' .*competition\.submission\.id_column"):
        build_submission(comp, IDS, np.zeros((3, 5)))
    (tmp_path / "up.csv").write_text("fname,label\nc.wav,Gong\n")
    with pytest.raises(DataError, match=r"up\.csv: no clip column; nothing was submitted"):
        validate_file(comp, tmp_path / "up.csv")
