"""The command table: ``audiotag --help`` lists every command, grouped; stages chain, commands do not."""

from __future__ import annotations

import pytest

from audiotag import cli


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


@pytest.mark.slow  # calls audiotag.cli.main (fails fast, but the rule is simple)
def test_a_command_is_not_a_stage(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["prepare", "package"]) == 2
    assert "package is a command of its own" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a command's own parser: `weights` needs an action
        cli.main(["weights"])
    assert "audiotag weights" in capsys.readouterr().err


def test_set_values_go_to_the_experiment_or_with_their_prefix_to_the_ensemble() -> None:
    from audiotag.cli import split_overrides

    experiment, ensemble = split_overrides(["train.epochs=3", "ensemble.method=geometric", "model=cnn14"])
    assert experiment == ["train.epochs=3", "model=cnn14"]
    assert ensemble == ["method=geometric"]
