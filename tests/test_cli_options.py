"""The command line's conventions: --help without torch, --version, options before or after any
command, a bare KEY=VALUE refused with the --set hint, -c with --config (the -c competition wins, said
in the log), config paths from the current folder (then the configs tree), and where the workspace
goes for a checkout and for an installed package."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from audiotag.cli import configs
from audiotag.cli import main as cli
from audiotag.cli.args import parse, split_command
from audiotag.config.files import configs_root, find_config
from audiotag.core import paths
from audiotag.core.errors import ConfigError
from audiotag.stages.new_competition import default_output
from tests.conftest import REPO

OWN = {name for name, c in cli.COMMANDS.items() if not c.stage}


def split(argv: list[str]) -> tuple[str | None, list[str]]:
    return split_command(argv, OWN, lambda: [cli.build_parser(), *(cli.COMMANDS[n].parser() for n in OWN)])


@pytest.mark.slow  # runs python -m audiotag's main in a subprocess, once for every command's --help
def test_help_of_every_command_imports_no_torch() -> None:
    code = f"""
import sys
from audiotag.cli.main import main
for command in {sorted(OWN)!r} + [None]:
    try:
        main([command, "--help"] if command else ["--help"])
    except SystemExit:
        pass
print({{m: m in sys.modules for m in ("torch", "pandas", "audiotag.train.experiment")}}, file=sys.stderr)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines()[-1] == str(
        {"torch": False, "pandas": False, "audiotag.train.experiment": False}
    )
    assert "usage: audiotag [-h]" in done.stdout and "usage: audiotag leaderboard" in done.stdout


@pytest.mark.slow  # calls audiotag.cli.main.main
@pytest.mark.parametrize("argv", [["--version"], ["leaderboard", "--version"], ["--quiet", "--version"]])
def test_version_anywhere(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    import audiotag

    assert cli.main(argv) == 0
    assert capsys.readouterr().out.startswith(f"audiotag {audiotag.__version__} (")


def test_a_command_of_its_own_may_come_after_the_options() -> None:
    assert split(["-c", "demo", "leaderboard", "--no-lb"]) == ("leaderboard", ["-c", "demo", "--no-lb"])
    assert split(["leaderboard", "-c", "demo"]) == ("leaderboard", ["-c", "demo"])
    assert split(["-v", "--competition=demo", "weights", "list"]) == (
        "weights",
        ["-v", "--competition=demo", "list"],
    )
    # a value that happens to be a command's name is a value; a stage first is the pipeline
    assert split(["--run-name", "report", "train"]) == (None, ["--run-name", "report", "train"])
    assert split(["train", "report"]) == (None, ["train", "report"])
    assert split(["-c", "demo", "prepare", "train"]) == (None, ["-c", "demo", "prepare", "train"])


def test_the_pipeline_takes_options_between_its_stages() -> None:
    args = parse(cli.build_parser(), ["prepare", "-c", "demo2019", "train", "--folds", "0"], pipeline=True)
    assert args.stages == ["prepare", "train"] and args.competition == "demo2019" and args.folds == "0"


def test_a_bare_setting_after_a_command_is_refused_with_the_set_hint(capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        parse(cli.build_leaderboard_parser(), ["-c", "demo", "train.epochs=1"], pipeline=False)
    assert caught.value.code == 2
    assert "a setting is given as --set train.epochs=1" in capsys.readouterr().err


@pytest.mark.slow  # calls audiotag.cli.main.main (fails before any experiment is loaded)
def test_a_bare_setting_among_the_stages_gets_the_set_hint(capsys) -> None:
    assert cli.main(["train", "train.epochs=1"]) == 2
    err = capsys.readouterr().err
    assert "'train.epochs=1' is not a stage or an argument: a setting is given as --set train.epochs=1" in err


@pytest.mark.slow  # calls audiotag.cli.main.main (the leaderboard of an empty workspace)
def test_options_before_a_command_of_its_own(workspace: Path, capsys) -> None:
    assert cli.main(["-c", "demo2019", "leaderboard", "--no-lb"]) == 0
    assert "demo2019" in capsys.readouterr().out


def pipeline_args(*argv: str):
    args = cli.build_parser().parse_args(list(argv))
    if args.config is not None:
        args.config = find_config(args.config)
    return args


DEMO_EXPERIMENT = "configs/experiments/demo/cnn_small.yaml"


def test_c_wins_over_the_competition_of_a_config_file_and_says_so(caplog) -> None:
    with caplog.at_level(logging.INFO):
        exp = configs.experiment_config(pipeline_args("train", "-c", "demo2019", "--config", DEMO_EXPERIMENT))
    assert exp.competition.name == "demo2019"
    record = next(r for r in caplog.records if "replaces the competition" in r.getMessage())
    assert record.levelno == logging.WARNING
    assert "-c demo2019 replaces the competition 'demo' that" in record.getMessage()
    # without -c the file's own competition, silently as before
    assert (
        configs.experiment_config(pipeline_args("train", "--config", DEMO_EXPERIMENT)).competition.name
        == "demo"
    )


def test_the_same_competition_keeps_the_files_settings_of_it(tmp_path: Path, caplog) -> None:
    path = tmp_path / "mine.yaml"
    text = (configs_root() / "experiments/demo/cnn_small.yaml").read_text()
    path.write_text(text.replace("competition: demo", "competition: {base: demo, n_folds: 3}"))
    with caplog.at_level(logging.INFO):
        exp = configs.experiment_config(pipeline_args("train", "-c", "demo", "--config", str(path)))
    assert exp.competition.name == "demo" and exp.competition.n_folds == 3
    assert "replaces" not in caplog.text


def test_c_puts_a_table_competition_into_a_config_file(tmp_path: Path, caplog) -> None:
    from tests.test_table_competition import make_dataset

    table = make_dataset(tmp_path, multi=False)
    fixed = "configs/experiments/table/cnn_small_fixed.yaml"
    with caplog.at_level(logging.INFO):
        exp = configs.experiment_config(pipeline_args("train", "-c", str(table), "--config", fixed))
    assert exp.competition.kind == "table" and exp.competition.name != "demo"
    record = next(r for r in caplog.records if "replaces the competition" in r.getMessage())
    assert record.levelno == logging.INFO  # a table file's competition: the documented placeholder


def test_c_wins_over_the_competition_of_an_ensemble_file(caplog) -> None:
    args = pipeline_args("ensemble", "-c", "demo2019", "--config", "configs/ensembles/demo.yaml")
    with caplog.at_level(logging.INFO):
        cfg = configs.ensemble_config(args, None)
    assert cfg.competition.name == "demo2019"
    assert "-c demo2019 replaces the competition 'demo'" in caplog.text


def test_config_paths_resolve_from_the_current_folder_then_the_configs_tree(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    # not here: the configs tree's, for a path written from a checkout's root and for a bare name
    assert find_config(DEMO_EXPERIMENT) == configs_root() / "experiments" / "demo" / "cnn_small.yaml"
    assert find_config("demo/cnn_small", "experiments") == find_config(DEMO_EXPERIMENT)
    # here: the current folder's, even when the configs tree has a file of that path
    own = tmp_path / DEMO_EXPERIMENT
    own.parent.mkdir(parents=True)
    own.write_text("competition: demo2019\nfeatures: logmel_16k_64\nmodel: cnn_small\n")
    assert find_config(DEMO_EXPERIMENT) == Path(DEMO_EXPERIMENT)
    exp = configs.experiment_config(pipeline_args("train", "--config", DEMO_EXPERIMENT))
    assert exp.competition.name == "demo2019"
    with pytest.raises(
        ConfigError, match=r"nothing\.yaml: config file not found \(looked at .*nothing\.yaml"
    ):
        find_config("nothing.yaml")


def test_the_pipeline_reads_a_relative_config_from_the_current_folder(tmp_path, monkeypatch) -> None:
    seen: list[str] = []
    monkeypatch.setitem(
        cli.COMMANDS, "train", replace(cli.COMMANDS["train"], run=lambda p: seen.append(p.exp.name))
    )
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.yaml").write_text((configs_root() / "experiments/demo/cnn_small.yaml").read_text())
    args = cli.build_parser().parse_args(["train", "--config", "mine.yaml"])
    args.argv = []
    cli.run(args)
    assert seen == ["mine"]


def test_the_workspace_is_the_checkouts_else_the_current_folders(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("AUDIOTAG_WORKSPACE", raising=False)
    monkeypatch.delenv("AUDIOTAG_SUBMISSIONS", raising=False)
    monkeypatch.chdir(tmp_path)
    assert paths.checkout_root() == REPO.resolve()
    assert default_output("birds") == configs_root() / "competitions" / "birds.yaml"
    assert paths.workspace_root() == REPO.resolve() / "competition"
    installed = tmp_path / "venv" / "lib" / "python3.11" / "site-packages" / "audiotag"
    monkeypatch.setattr(paths, "PACKAGE_DIR", installed)
    monkeypatch.setattr(paths, "REPO_ROOT", installed.parents[1])
    assert paths.checkout_root() is None
    assert paths.workspace_root() == tmp_path / "competition"
    assert default_output("birds") == Path("birds.yaml")  # not into the installed package's configs
    assert paths.submissions_root() == tmp_path / "submissions"
    monkeypatch.setenv("AUDIOTAG_WORKSPACE", str(tmp_path / "ws"))
    assert paths.workspace_root() == tmp_path / "ws"
    assert json.dumps(str(paths.submission_log())).endswith('submissions/log.jsonl"')
