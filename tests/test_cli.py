"""The command table: ``audiotag --help`` lists every command, grouped; stages chain, commands do not."""

from __future__ import annotations

import pytest

from audiotag.cli import configs
from audiotag.cli import main as cli


def test_help_lists_every_command_with_its_line_grouped() -> None:
    text = cli.build_parser().format_help()
    headings = {group: text.find(title) for group, title in cli.GROUPS.items()}
    used = {command.section for command in cli.COMMANDS.values()}
    assert all(headings[group] >= 0 for group in used)
    for name, command in cli.COMMANDS.items():
        line = f"  {name} "
        at = text.index(line)
        assert command.help in text[at : at + 120], name
        # under its own heading: after it, before the next heading shown
        after = [h for h in headings.values() if h > headings[command.section]]
        assert headings[command.section] < at < min(after, default=len(text)), name
    assert cli.stage_names()[:3] == ["prepare", "train", "ensemble"]
    assert {"weights", "submit", "leaderboard", "package", "report"} <= set(cli.COMMANDS)
    assert cli.COMMANDS["report"].section == "results" and cli.COMMANDS["weights"].section == "data"


def test_a_command_without_a_group_is_listed_under_other_commands() -> None:
    assert cli.Command("x", cli.build_parser, print).section == "other"
    assert cli.Command("x", cli.build_parser, print, group="no such group").section == "other"
    assert cli.Command("x", cli.build_parser, print, stage=True, group="results").section == "pipeline"


@pytest.mark.slow  # parses every command's --help through main(), as the shell would
@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_command_has_its_own_help(
    name: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in ("AUDIOTAG_QUIET", "TQDM_DISABLE"):  # what --quiet sets, restored afterwards
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(SystemExit) as exit_:
        cli.main([name, "--help", "--quiet"])  # --quiet is global: any command takes it
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: audiotag") and (cli.COMMANDS[name].stage or f"audiotag {name}" in out)


@pytest.mark.slow  # calls audiotag.cli.main.main (fails fast, but the rule is simple)
def test_a_command_is_not_a_stage(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["prepare", "package"]) == 2
    assert "package is a command of its own" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a command's own parser: `weights` needs an action
        cli.main(["weights"])
    assert "audiotag weights" in capsys.readouterr().err


@pytest.mark.slow  # calls audiotag.cli.main.main (fails before any cache is built)
def test_embed_without_cuda_names_its_own_device_option(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.main(["embed", "-m", "aisfx", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "--device: cuda requested but no CUDA GPU is visible" in err and "train.device" not in err


def test_set_values_go_to_the_experiment_or_with_their_prefix_to_the_ensemble() -> None:
    from audiotag.cli.args import split_overrides

    experiment, ensemble = split_overrides(["train.epochs=3", "ensemble.method=geometric", "model=cnn14"])
    assert experiment == ["train.epochs=3", "model=cnn14"]
    assert ensemble == ["method=geometric"]


def use_competition_file(monkeypatch: pytest.MonkeyPatch, path) -> None:
    """``load_competition`` of any name, as the command line's configs resolve it, reads ``path``
    instead (command-line settings still apply)."""
    from audiotag.config.schema import load_competition

    def load(_: str, overrides: list[str] | None = None):
        return load_competition(str(path), overrides)

    from audiotag.cli import configs as cli_configs

    monkeypatch.setattr(cli_configs, "load_competition", load)


def demo_with_extras(tmp_path, extras: list[str]):
    import yaml

    from audiotag.config.files import configs_root

    raw = yaml.safe_load((configs_root() / "competitions" / "demo.yaml").read_text())
    raw["default_extra_experiments"] = extras
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_default_extra_experiments_follow_the_default_one_with_the_shared_settings_only(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --config the pipeline also runs the competition's extra experiments: --folds and
    competition.* settings reach them, an experiment --set does not (it may not even exist there)."""

    path = demo_with_extras(tmp_path, ["demo/probe_aisfx"])
    use_competition_file(monkeypatch, path)
    argv = ["train", "-c", "demo", "--folds", "0,2", "--set", "train.epochs=2"]
    argv += ["--set", "competition.n_folds=4"]
    args = cli.build_parser().parse_args(argv)
    extras = configs.extra_experiment_configs(args)
    assert [e.name for e in extras] == ["probe_aisfx"]
    assert extras[0].train.folds == [0, 2] and extras[0].competition.n_folds == 4
    assert extras[0].model.name == "linear_probe"
    main = configs.experiment_config(args)
    assert main.train.epochs == 2 and main.train.folds == [0, 2]
    assert extras[0].train.epochs != 2
    config = "configs/experiments/demo/cnn_small.yaml"
    with_config = cli.build_parser().parse_args([*argv, "--config", config])
    assert configs.extra_experiment_configs(with_config) == []


def test_an_empty_extra_list_on_the_command_line_trains_the_default_experiment_alone(tmp_path) -> None:
    """The demo's own extras and the table default (TABLE_EXTRA_EXPERIMENTS) both yield to
    ``--set competition.default_extra_experiments=[]``; the main experiment still loads with it."""
    from tests.test_table_competition import make_dataset

    off = ["--set", "competition.default_extra_experiments=[]"]
    demo = cli.build_parser().parse_args(["train", "-c", "demo"])
    assert [e.name for e in configs.extra_experiment_configs(demo)] == ["probe_aisfx"]
    demo_off = cli.build_parser().parse_args(["train", "-c", "demo", *off])
    assert configs.extra_experiment_configs(demo_off) == []
    assert configs.experiment_config(demo_off).competition.default_extra_experiments == []
    table = str(make_dataset(tmp_path, multi=False))
    on = cli.build_parser().parse_args(["train", "-c", table])
    assert [e.name for e in configs.extra_experiment_configs(on)] == ["probe_aisfx"]
    assert configs.extra_experiment_configs(cli.build_parser().parse_args(["train", "-c", table, *off])) == []


def test_a_missing_extra_experiment_is_named(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from audiotag.core.errors import ConfigError

    path = demo_with_extras(tmp_path, ["demo/no_such_probe"])
    use_competition_file(monkeypatch, path)
    args = cli.build_parser().parse_args(["train", "-c", "demo"])
    with pytest.raises(ConfigError, match="no_such_probe"):
        configs.extra_experiment_configs(args)


def test_the_pipeline_runs_each_experiment_stage_for_every_experiment_then_the_ensemble_once(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataclasses import replace

    path = demo_with_extras(tmp_path, ["demo/probe_aisfx"])
    use_competition_file(monkeypatch, path)
    calls: list[tuple[str, str | None, str | None]] = []

    def recorder(stage: str):
        def record(pipe) -> None:
            run_name = pipe.args.run_name if pipe.exp is pipe.main_exp else None
            calls.append((stage, pipe.exp.name if pipe.exp else None, run_name))

        return record

    for stage in ("prepare", "train", "ensemble"):
        monkeypatch.setitem(cli.COMMANDS, stage, replace(cli.COMMANDS[stage], run=recorder(stage)))
    args = cli.build_parser().parse_args(["prepare", "train", "ensemble", "-c", "demo"])
    args.argv = []
    cli.run(args)
    assert calls == [
        ("prepare", "cnn_small", None),
        ("prepare", "probe_aisfx", None),
        ("train", "cnn_small", None),
        ("train", "probe_aisfx", None),
        ("ensemble", "cnn_small", None),
    ]
    calls.clear()  # a run of one's own (--run-name) is the default experiment alone
    args = cli.build_parser().parse_args(["prepare", "train", "-c", "demo", "--run-name", "mine"])
    args.argv = []
    cli.run(args)
    assert calls == [("prepare", "cnn_small", "mine"), ("train", "cnn_small", "mine")]
