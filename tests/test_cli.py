"""The command table: ``audiotag --help`` lists every command, grouped; stages chain, commands do not."""

from __future__ import annotations

import pytest

from audiotag import cli


def test_help_lists_every_command_with_its_line_grouped() -> None:
    text = cli.build_parser().format_help()
    stages_at = text.index("pipeline stages")
    others_at = text.index("other commands")
    for name, command in cli.COMMANDS.items():
        line = f"  {name} "
        at = text.index(line)
        assert command.help in text[at : at + 120], name
        assert (stages_at < at < others_at) if command.stage else (at > others_at), name
    assert cli.stage_names() == ["prepare", "train", "ensemble"]
    assert {"weights", "submit", "leaderboard", "package"} <= set(cli.COMMANDS)


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
