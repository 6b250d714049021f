"""Names that become paths, and paths a config names, stay inside their folders (issue 26, items 5
and 6): one rule for names (core/paths.py), one for the YAML's own paths (config/competition.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from audiotag.cli.main import main
from audiotag.config.schema import load_competition
from audiotag.core.errors import ConfigError
from audiotag.core.paths import check_name, name_problem

BAD_NAMES = ["../../x", "a/b", "/abs", "..", ".hidden", "", "a\nb", "a\\b", "x" * 129]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_name_that_would_leave_its_folder_is_refused(name: str) -> None:
    assert name_problem(name) is not None
    with pytest.raises(ConfigError, match=r"--run-name .*not a plain name"):
        check_name(name, "--run-name")


@pytest.mark.parametrize("name", ["cnn_small", "trial-0001", "fsd2018", "a.b", "X9"])
def test_plain_names_pass(name: str) -> None:
    assert check_name(name, "x") == name


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--run-name", "../../x"],
        ["tune", "--name", "a/b"],
        ["pretrain", "--name", "../up"],
        ["new-competition", "../evil", "--from", "."],
        ["report", "--ensemble", "../../x"],
        ["package", "out", "--slug", 'a"b'],
    ],
)
def test_name_options_are_refused_before_anything_runs(argv: list[str], workspace: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "not a plain name" in capsys.readouterr().err
    assert not (workspace / "competition").exists()


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("name: ../../x\ncompetition: demo\nmembers: [cnn_small]\n", "name"),
        ("name: sub/x\ncompetition: demo\nmembers: [cnn_small]\n", "name"),
        ("competition: demo\nmembers: [../../../etc]\n", "members.0"),
    ],
)
def test_an_ensemble_name_or_member_that_leaves_its_folder_is_refused(
    text: str, key: str, workspace: Path, capsys
) -> None:
    path = workspace / "ens.yaml"
    path.write_text(text)
    assert main(["ensemble", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{key}: Value error, " in err and "not a plain name" in err
    assert not (workspace / "submissions").exists() and not (workspace / "x.csv").exists()


def test_an_experiment_or_teacher_name_that_leaves_its_folder_is_refused(workspace: Path, capsys) -> None:
    path = workspace / "exp.yaml"
    path.write_text("name: ../../x\ncompetition: demo\n")
    assert main(["train", "--config", str(path)]) == 2
    assert "name: Value error" in capsys.readouterr().err
    overrides = ["--set", "train.pseudo_labels.from_run=../../x"]
    assert main(["train", *overrides]) == 2
    assert "train.pseudo_labels.from_run: Value error" in capsys.readouterr().err


def test_a_table_competition_name_that_leaves_the_workspace_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"name: ../../x\nkind: table\ndata_dir: {tmp_path}\ntrain_csv: t.csv\naudio_dir: a\n")
    with pytest.raises(ConfigError, match=r"name: Value error.*not a plain name"):
        load_competition(str(path))


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("audio_dir", "../elsewhere", "has a '..' part"),
        ("audio_dir", "/etc", "is an absolute path"),
        ("audio_dir", {"train": "a", "noisy": "../../b"}, "has a '..' part"),
        ("train_csv", "/tmp/other/train.csv", "is an absolute path"),
        ("train_csv", "a/../../train.csv", "has a '..' part"),
        ("test_dir", "..", "has a '..' part"),
        ("sample_submission", "C:/x.csv", "is an absolute path"),
        ("file_template", "../{fname}", "has a '..' part"),
    ],
)
def test_a_table_yaml_path_that_leaves_data_dir_is_refused(
    tmp_path: Path, key: str, value: object, why: str
) -> None:
    spec = {"name": "mine", "kind": "table", "data_dir": str(tmp_path), "train_csv": "train.csv"}
    spec |= {"audio_dir": "audio", key: value}
    if isinstance(value, dict):
        spec["train_csv"] = {"train": "t.csv", "noisy": "n.csv"}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=f"{key}.*{why}: a path a config names is relative"):
        load_competition(str(path))


def test_a_folders_yaml_list_file_that_leaves_data_dir_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"name: mine\nkind: folders\ndata_dir: {tmp_path}\naudio_dir: .\ntesting_list: /etc/x\n")
    with pytest.raises(ConfigError, match=r"testing_list.*is an absolute path"):
        load_competition(str(path))
    path.write_text(f"name: mine\nkind: folders\ndata_dir: {tmp_path}\naudio_dir: .\nexclude: [../x]\n")
    with pytest.raises(ConfigError, match=r"exclude\.0.*has a '\.\.' part"):
        load_competition(str(path))


@pytest.mark.parametrize("builtin", ["demo", "fsd2018"])
def test_a_table_yaml_may_not_take_a_built_in_competition_s_name(
    tmp_path: Path, workspace: Path, capsys, builtin: str
) -> None:
    path = tmp_path / "c.yaml"
    spec = {"name": builtin, "kind": "table", "data_dir": str(tmp_path), "train_csv": "t.csv"}
    spec |= {"audio_dir": "a", "metric": "accuracy", "submission": {"kind": "top_k_labels", "k": 1}}
    path.write_text(yaml.safe_dump(spec))
    assert main(["prepare", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{builtin!r} is a built-in competition's name" in err and "another name" in err
    assert not (workspace / "competition" / builtin).exists()
