"""``kind: table`` layouts beyond one CSV (subsets, file templates, segments, clip and submission ids)
and the refusals that go with them: each bad input names its file, row or setting and the remedy.
The datasets are those of tests/own_data_layouts.py; nothing here trains."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest
import yaml

from audiotag.cli.main import main
from audiotag.competitions import get_competition
from audiotag.competitions.folds import ensure_folds, load_folds
from audiotag.competitions.table import TableCompetition
from audiotag.config.schema import load_competition
from audiotag.core.errors import ConfigError, DataError
from audiotag.runs.prepare import clip_table
from tests.http_fakes import ArchiveHandler, running_server
from tests.own_data_layouts import (
    CLASSES,
    SAMPLE_ORDER,
    curated_noisy,
    grouped_single_label,
    segments_table,
    urbansound8k_folder,
    urbansound8k_tar_gz,
)


def comp_of(path: Path, root: Path | None = None, **changes: object) -> TableCompetition:
    """The competition of the YAML at ``path`` with ``changes`` written into it (None removes a key)."""
    spec = yaml.safe_load(path.read_text()) | changes
    path.write_text(yaml.safe_dump({k: v for k, v in spec.items() if v is not None}))
    comp = get_competition(load_competition(str(path)), root or path.parent / "ws")
    assert isinstance(comp, TableCompetition)
    return comp


def edit_csv(path: Path, row: int, **values: object) -> None:
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    for column, value in values.items():
        df.loc[row, column] = value
    df.to_csv(path, index=False)


def us8k(tmp_path: Path, *overrides: str) -> TableCompetition:
    data = urbansound8k_folder(tmp_path / "data", n_folds=3)
    cfg = load_competition("urbansound8k", [f"data_dir={data}", "n_folds=3", *overrides])
    comp = get_competition(cfg, tmp_path / "ws")
    assert isinstance(comp, TableCompetition)
    return comp


# ----------------------------------------------------------------------------- refused combinations


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"start_column": "start"}, "start_column and end_column go together"),
        ({"audio_dir": {"curated": "a"}}, r"audio_dir: its subsets \['curated'\] differ from train_csv's"),
        ({"noisy_subsets": ["loud"]}, r"noisy_subsets: \['loud'\]; the subsets of train_csv are"),
        (
            {"subsets": ["clean"]},
            r"subsets: \['clean'\]; the subsets of train_csv are \['curated', 'noisy'\]",
        ),
        ({"subsets": []}, "subsets: empty"),
        ({"train_csv": {"test": "t.csv"}, "audio_dir": "a"}, "not 'test'"),
        ({"sample_submission": None}, "sample_columns writes the columns of sample_submission"),
        ({"file_template": "{}.wav"}, r"plain \{column\} fields"),
        ({"file_template": "fold{fold:02d}/{fname}"}, r"plain \{column\} fields"),
        ({"file_template": "fold{fold"}, "file_template 'fold{fold'"),
        ({"metric": "map3"}, "multi_label data needs lwlrap"),
        ({"metric": "accuracy"}, "metric accuracy scores one true label per clip"),
    ],
)
def test_wrong_combinations_are_refused_with_the_reason(tmp_path: Path, changes: dict, message: str) -> None:
    path = curated_noisy(tmp_path / "data")
    with pytest.raises(ConfigError, match=message):
        comp_of(path, **changes)


def test_table_layout_keys_need_kind_table(tmp_path: Path) -> None:
    for key in ("id_column=x", "file_template=x{a}", "noisy_subsets=[n]", "start_column=s"):
        with pytest.raises(ConfigError, match="only meaningful with kind: table"):
            load_competition("demo", [key])
    with pytest.raises(ConfigError, match=r"audio_dir: a mapping \{subset: folder\} needs train_csv"):
        comp_of(grouped_single_label(tmp_path / "data"), audio_dir={"train": "audio"})


@pytest.mark.parametrize("metric", ["lwlrap", "map"])
def test_ranking_metrics_are_allowed_on_single_label_data(tmp_path: Path, metric: str) -> None:
    """lwlrap on one label per clip is the mean of 1/rank of the true class, mAP the mean over classes
    of their AP (REFERENCE.md's definitions): both are defined, so both are allowed."""
    comp = comp_of(grouped_single_label(tmp_path / "data"), metric=metric)
    assert comp.task == "single_label" and comp.metric == metric
    assert len(comp.parse_clip_table()) == 22


def test_top_k_above_the_learned_vocabulary_is_refused(tmp_path: Path) -> None:
    comp = comp_of(grouped_single_label(tmp_path / "data"), submission={"kind": "top_k_labels", "k": 4})
    with pytest.raises(DataError, match=r"competition\.submission\.k 4 exceeds the 3 classes; lower it"):
        comp.parse_clip_table()


# ----------------------------------------------------------------------------- subsets


def test_curated_and_noisy_subsets(tmp_path: Path) -> None:
    comp = comp_of(curated_noisy(tmp_path / "data"))
    assert comp.expected_files("table") == [
        "train_curated.csv", "train_curated/", "train_noisy.csv", "train_noisy/", "test/",
        "sample_submission.csv",
    ]  # fmt: skip
    table = comp.parse_clip_table()
    train = table[table["split"] == "train"]
    assert train["subset"].tolist() == ["curated"] * 12 + ["noisy"] * 9
    assert train["verified"].tolist() == [True] * 12 + [False] * 9
    assert train["path"].iloc[0].endswith("data/train_curated/c00.wav")
    assert train["path"].iloc[12].endswith("data/train_noisy/n00.wav")
    assert train["labels"].iloc[1] == ["zorp", "blip"]


def test_subsets_choose_the_csvs_read(tmp_path: Path) -> None:
    path = curated_noisy(tmp_path / "data")
    (tmp_path / "data" / "train_noisy.csv").unlink()  # not chosen: never read
    comp = comp_of(path, subsets=["curated"])
    assert "train_noisy.csv" not in comp.expected_files("table")
    table = comp.parse_clip_table()
    assert set(table["subset"]) == {"curated", "test"}


def test_verified_column_decides_where_a_csv_has_it(tmp_path: Path) -> None:
    path = curated_noisy(tmp_path / "data")
    noisy = tmp_path / "data" / "train_noisy.csv"
    df = pd.read_csv(noisy)
    df["checked"] = [1] + [0] * (len(df) - 1)
    df.to_csv(noisy, index=False)
    train = comp_of(path, verified_column="checked").parse_clip_table().query("split == 'train'")
    assert train["verified"].tolist() == [True] * 12 + [True] + [False] * 8  # curated: no column, trusted
    df.drop(columns="checked").to_csv(noisy, index=False)
    with pytest.raises(DataError, match=r"none of the training CSVs .* has the verified_column 'checked'"):
        comp_of(path, verified_column="checked").parse_clip_table()


def test_unknown_label_names_the_subset_csv_and_line(tmp_path: Path) -> None:
    path = curated_noisy(tmp_path / "data")
    edit_csv(tmp_path / "data" / "train_noisy.csv", 1, labels="zorp,fizz")
    with pytest.raises(
        DataError, match=r"train_noisy\.csv: line 3: label 'fizz' is not in the classes listed"
    ):
        comp_of(path, classes=CLASSES).parse_clip_table()


def test_missing_column_names_the_csv_and_the_columns_found(tmp_path: Path) -> None:
    path = curated_noisy(tmp_path / "data")
    curated = tmp_path / "data" / "train_curated.csv"
    pd.read_csv(curated).assign(source="s").to_csv(curated, index=False)
    with pytest.raises(
        DataError, match=r"train_noisy\.csv: missing column\(s\) \['source'\]; found \['fname', 'labels'\]"
    ):
        comp_of(path, group_column="source").parse_clip_table()


def test_a_clip_in_two_subsets_is_named_with_both_rows(tmp_path: Path) -> None:
    path = curated_noisy(tmp_path / "data")
    edit_csv(tmp_path / "data" / "train_noisy.csv", 2, fname="c00.wav")
    with pytest.raises(
        DataError,
        match=r"train_noisy\.csv: line 4: file 'c00\.wav' listed twice "
        r"\(also .*train_curated\.csv: line 2\); a clip belongs to one subset",
    ):
        comp_of(path).parse_clip_table()


# ----------------------------------------------------------------------------- file template (UrbanSound8K)


def test_file_template_builds_paths_and_keeps_the_file_as_clip_id(tmp_path: Path) -> None:
    comp = us8k(tmp_path)
    table = comp.parse_clip_table()
    assert table["clip_id"].iloc[0] == "1000-3-0-0.wav"
    assert table["path"].iloc[0].endswith("UrbanSound8K/audio/fold1/1000-3-0-0.wav")
    assert "start" not in table.columns and (table["duration"].round(3) == 0.5).all()
    assert table["group"].iloc[0] == "1000" and table["fold"].iloc[0] == "1"


def test_file_listed_but_absent_names_its_templated_path(tmp_path: Path) -> None:
    comp = us8k(tmp_path)
    (comp.raw_dir / "audio" / "fold2" / "2001-8-0-1.wav").unlink()
    with pytest.raises(DataError, match=r"missing under --data-dir .*: audio/fold2/2001-8-0-1\.wav"):
        comp.parse_clip_table()


def test_templated_name_leaving_the_audio_folder_is_refused(tmp_path: Path) -> None:
    comp = us8k(tmp_path)
    edit_csv(comp.raw_dir / "metadata" / "UrbanSound8K.csv", 0, fold="/../../x")
    with pytest.raises(DataError, match=r"UrbanSound8K\.csv: line 2: fname 'fold/\.\./\.\./x/.*leaves"):
        comp.parse_clip_table()


def test_given_folds_other_than_n_folds_are_named(tmp_path: Path) -> None:
    comp = us8k(tmp_path, "n_folds=5")
    table = comp.parse_clip_table()
    with pytest.raises(
        DataError, match=r"the data defines 3 folds \(1, 2, 3\) but competition.n_folds is 5; set competition"
    ):
        ensure_folds(comp, table)


def test_a_changed_csv_in_a_subfolder_rebuilds_the_clip_table(tmp_path: Path, workspace: Path) -> None:
    comp = us8k(tmp_path)
    assert comp.raw_dir / "metadata" / "UrbanSound8K.csv" in comp.table_sources()
    assert clip_table(comp)["labels"].iloc[0] == ["dog_bark"]
    edit_csv(comp.raw_dir / "metadata" / "UrbanSound8K.csv", 0, **{"class": "siren"})
    assert clip_table(comp)["labels"].iloc[0] == ["siren"]


# ----------------------------------------------------------------------------- segments


def test_segments_get_ids_and_their_own_duration(tmp_path: Path) -> None:
    table = comp_of(segments_table(tmp_path / "data")).parse_clip_table()
    train = table[table["split"] == "train"]
    assert train["clip_id"].tolist()[:3] == ["rec0.wav@0.0-0.8", "rec0.wav@0.8-1.6", "rec0.wav@1.6-2.4"]
    assert train["path"].nunique() == 6 and (train["duration"].round(6) == 0.8).all()
    assert train["start"].tolist()[:3] == [0.0, 0.8, 1.6] and train["end"].tolist()[:3] == [0.8, 1.6, 2.4]
    assert table.loc[table["split"] == "test", ["start", "end"]].isna().all().all()


def test_id_column_names_the_segments(tmp_path: Path) -> None:
    path = segments_table(tmp_path / "data")
    csv = tmp_path / "data" / "segments.csv"
    pd.read_csv(csv).assign(event=lambda d: [f"ev{i}" for i in range(len(d))]).to_csv(csv, index=False)
    table = comp_of(path, id_column="event").parse_clip_table()
    assert table["clip_id"].tolist()[:2] == ["ev0", "ev1"]
    edit_csv(csv, 5, event="ev1")
    with pytest.raises(DataError, match=r"segments\.csv: line 7: event 'ev1' listed twice \(also .*line 3\)"):
        comp_of(path).parse_clip_table()


@pytest.mark.parametrize(
    ("row", "values", "message"),
    [
        (1, {"start": "1.6", "end": "0.8"}, r"line 3: segment 1\.6-0\.8 s is empty or reversed"),
        (1, {"start": "-1", "end": "0.8"}, r"line 3: segment -1-0\.8 s is empty or reversed"),
        (2, {"end": "soon"}, r"line 4: end 'soon' is not a number of seconds"),
        (2, {"start": "0.0", "end": "0.8"}, r"line 4: segment 'rec0\.wav@0\.0-0\.8' listed twice"),
        (
            2,
            {"end": "3.5"},
            r"1 segment\(s\) end past their audio file's end: .*segments\.csv: line 4: segment 1\.6-3\.5 s "
            r"runs past the end of recordings/rec0\.wav \(2\.400 s long\); fix start/end",
        ),
    ],
)
def test_bad_segments_name_the_row(tmp_path: Path, row: int, values: dict, message: str) -> None:
    path = segments_table(tmp_path / "data")
    edit_csv(tmp_path / "data" / "segments.csv", row, **values)
    with pytest.raises(DataError, match=message):
        comp_of(path).parse_clip_table()


# ----------------------------------------------------------------------------- the sample submission


def test_sample_columns_must_be_the_vocabulary(tmp_path: Path) -> None:
    path = curated_noisy(tmp_path / "data")
    sample = tmp_path / "data" / "sample_submission.csv"
    pd.read_csv(sample).rename(columns={"zorp": "zorb"}).assign(extra=0).to_csv(sample, index=False)
    with pytest.raises(
        DataError,
        match=r"sample_submission\.csv: line 1: the class columns must be the 3 classes of the vocabulary, "
        r"in any order; missing \['zorp'\], extra \['zorb', 'extra'\]",
    ):
        comp_of(path).parse_clip_table()


def test_scores_need_the_vocabulary_order_and_point_to_sample_columns(tmp_path: Path) -> None:
    path = curated_noisy(tmp_path / "data")
    with pytest.raises(DataError, match=r"kind scores writes one column per class in vocabulary order.*"
                       "use submission.kind sample_columns"):  # fmt: skip
        comp_of(path, submission={"kind": "scores"}).parse_clip_table()
    assert sorted(CLASSES) != SAMPLE_ORDER


def test_sample_header_problems_are_named(tmp_path: Path) -> None:
    path = grouped_single_label(tmp_path / "data")
    with pytest.raises(DataError, match=r"sample_submission\.csv: missing column\(s\) \['fname'\]; found"):
        comp_of(path, submission={"kind": "top_k_labels", "k": 1}).parse_clip_table()
    sample = tmp_path / "data" / "sample_submission.csv"
    pd.read_csv(sample).assign(other="").to_csv(sample, index=False)
    with pytest.raises(DataError, match=r"top_k_labels writes clip and one label column, the sample has"):
        comp_of(path, submission={"kind": "top_k_labels", "k": 1, "id_column": "clip"}).parse_clip_table()


# ----------------------------------------------------------------------------- folds of these tables


def test_one_group_only_is_refused(tmp_path: Path) -> None:
    path = grouped_single_label(tmp_path / "data")
    csv = tmp_path / "data" / "train.csv"
    pd.read_csv(csv).assign(session="all").to_csv(csv, index=False)
    comp = comp_of(path)
    with pytest.raises(
        DataError, match=r"every training clip is in the one group 'all', so no fold can be held"
    ):
        ensure_folds(comp, comp.parse_clip_table())


def test_classes_with_fewer_clips_than_folds_are_refused_or_with_warn_named_in_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = grouped_single_label(tmp_path / "data")
    csv = tmp_path / "data" / "train.csv"
    df = pd.read_csv(csv)
    df[~df["clip"].isin(["whirr_2.wav", "whirr_3.wav", "whirr_4.wav", "whirr_5.wav"])].to_csv(
        csv, index=False
    )
    comp = comp_of(path, group_column=None, n_folds=3)
    with pytest.raises(DataError, match=r"1 class\(es\) have fewer training clips than the 3 folds: whirr "):
        ensure_folds(comp, comp.parse_clip_table())
    comp = comp_of(path, group_column=None, n_folds=3, rare_classes="warn")
    with caplog.at_level(logging.WARNING):
        folds = load_folds(ensure_folds(comp, comp.parse_clip_table()))
    assert "1 class(es) have fewer training clips than the 3 folds" in caplog.text
    assert "whirr (2 clips)" in caplog.text and "lower competition.n_folds to 2 or less" in caplog.text
    assert "least populated class" not in caplog.text and len(folds) == 14


# ----------------------------------------------------------------------------- UrbanSound8K's own config


def test_urbansound8k_config_is_ten_given_folds_grouped_by_recording() -> None:
    cfg = load_competition("urbansound8k")
    assert (cfg.kind, cfg.metric, cfg.multi_label, cfg.test_dir, cfg.n_folds) == (
        "table", "accuracy", False, None, 10,
    )  # fmt: skip
    assert (cfg.fold_column, cfg.group_column, cfg.file_template) == (
        "fold",
        "fsID",
        "fold{fold}/{slice_file_name}",
    )
    assert cfg.start_column is None and cfg.end_column is None  # the CSV's start/end are not segments
    assert cfg.download is not None and cfg.download.folder == "UrbanSound8K"
    assert cfg.download.url == "https://zenodo.org/records/1203745/files/UrbanSound8K.tar.gz"


def test_urbansound8k_downloads_and_extracts_its_tar_gz(workspace: Path) -> None:
    state = {"data": urbansound8k_tar_gz(), "hits": 0}
    with running_server(ArchiveHandler, state) as base:
        args = ["prepare", "-c", "urbansound8k", "--workers", "1"]
        args += ["--set", f"competition.download.url={base}/records/1203745/files/UrbanSound8K.tar.gz"]
        assert main(args) == 0
        assert main(args) == 0  # files present: no second download
    assert state["hits"] == 1
    comp_dir = workspace / "competition" / "urbansound8k"
    assert (comp_dir / "raw" / "UrbanSound8K" / "metadata" / "UrbanSound8K.csv").is_file()
    table = pd.read_parquet(comp_dir / "meta.parquet")
    assert len(table) == 60 and table["path"].str.startswith("raw/UrbanSound8K/audio/fold").all()
    folds = pd.read_csv(next(comp_dir.glob("folds/k10-predefined-all.csv")))
    assert sorted(folds["fold"].unique()) == list(range(10))


def test_a_test_clip_that_is_also_a_training_clip_is_named(tmp_path: Path) -> None:
    path = grouped_single_label(tmp_path / "data")
    edit_csv(tmp_path / "data" / "sample_submission.csv", 0, clip="zorp_0.wav")
    with pytest.raises(
        DataError, match=r"train\.csv: line 2: 'zorp_0\.wav' is also a test clip \(.*sample_submission\.csv\)"
    ):
        comp_of(path).parse_clip_table()
