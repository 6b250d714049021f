from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audiotag.competitions.submission import build_submission, validate_submission, write_submission
from audiotag.core.errors import DataError
from tests.fakes import FakeMulti, FakeSingle, make, write_sample

IDS = ["c.wav", "a.wav", "b.wav"]


def test_top3_labels_in_sample_order(tmp_path: Path) -> None:
    comp = make(FakeSingle, tmp_path)
    write_sample(comp, IDS)
    # predictions given in another order than the sample's
    scores = np.array(
        [
            [0.9, 0.8, 0.1, 0.0, 0.7],  # a.wav -> Bark Chime Gong
            [0.1, 0.2, 0.3, 0.4, 0.5],  # b.wav -> Gong Flute Drum
            [0.5, 0.5, 0.5, 0.0, 0.0],  # c.wav: ties go to the lower class index
        ]
    )
    sub = build_submission(comp, ["a.wav", "b.wav", "c.wav"], scores)
    assert sub["fname"].tolist() == IDS
    assert sub["label"].tolist() == ["Bark Chime Drum", "Bark Chime Gong", "Gong Flute Drum"]
    out = write_submission(comp, sub, tmp_path / "subs" / "x.csv")
    text = out.read_text().splitlines()
    assert text[0] == "fname,label" and text[1] == "c.wav,Bark Chime Drum"


def test_scores_table_uses_sample_column_order(tmp_path: Path) -> None:
    comp = make(FakeMulti, tmp_path)
    write_sample(comp, IDS)
    scores = np.tile(np.linspace(0.1, 0.5, 5), (3, 1))
    sub = build_submission(comp, IDS, scores)
    assert list(sub.columns) == ["fname", *sorted(comp.classes)]
    assert sub.loc[0, "Gong"] == pytest.approx(0.5)
    path = write_submission(comp, sub, tmp_path / "s.csv")
    back = pd.read_csv(path)
    np.testing.assert_allclose(
        back.drop(columns="fname").to_numpy(), sub.drop(columns="fname").to_numpy(), atol=1e-6
    )


def test_missing_prediction_is_refused(tmp_path: Path) -> None:
    comp = make(FakeSingle, tmp_path)
    write_sample(comp, IDS)
    with pytest.raises(DataError, match="1 clip"):
        build_submission(comp, ["a.wav", "b.wav"], np.zeros((2, 5)))


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda s: s.assign(label=["Bark", "Bark Bark", "Gong"]), "bad labels"),
        (lambda s: s.assign(label=["Bark", "Meow", "Gong"]), "bad labels"),
        (lambda s: s.iloc[::-1].reset_index(drop=True), "order"),
        (lambda s: s.rename(columns={"label": "labels"}), "columns"),
    ],
)
def test_invalid_top3_submission_is_not_written(tmp_path: Path, corrupt, message: str) -> None:
    comp = make(FakeSingle, tmp_path)
    write_sample(comp, IDS)
    sub = build_submission(comp, IDS, np.random.default_rng(0).random((3, 5)))
    target = tmp_path / "out.csv"
    target.write_text("previous submission\n")
    with pytest.raises(DataError, match=message):
        write_submission(comp, corrupt(sub), target)
    assert target.read_text() == "previous submission\n"  # the old file is untouched
    assert not list(tmp_path.glob(".out.csv*"))  # no temp file left behind


@pytest.mark.parametrize("value, message", [(np.nan, "NaN"), (1.5, "outside")])
def test_invalid_scores_are_refused(tmp_path: Path, value: float, message: str) -> None:
    comp = make(FakeMulti, tmp_path)
    write_sample(comp, IDS)
    sub = build_submission(comp, IDS, np.full((3, 5), 0.5))
    sub.loc[1, "Drum"] = value
    with pytest.raises(DataError, match=message):
        validate_submission(comp, sub)
