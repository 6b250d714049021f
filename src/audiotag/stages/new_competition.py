"""``audiotag new-competition NAME --from DIR [-o PATH] [--force]``: a competition YAML guessed from a data
folder (:mod:`audiotag.competitions.guess`), written for the user to review, with what was guessed and why.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from audiotag.core.errors import ConfigError

if TYPE_CHECKING:
    from audiotag.competitions.guess import Guess

log = logging.getLogger(__name__)


def new_competition(
    name: str, source: Path, output: Path | None = None, force: bool = False
) -> tuple[Path, list[str]]:
    """Guess the YAML of the data in ``source``, write it to ``output`` (atomically, never over an existing
    file unless ``force``) after checking it with the config loader; the path and the reasons."""
    from audiotag.competitions.guess import guess_competition
    from audiotag.config.schema import load_competition
    from audiotag.core.atomic import atomic_write_text
    from audiotag.core.paths import check_name

    check_name(name, "NAME (the workspace folder's name)")
    path = output if output is not None else default_output(name)
    path = path.expanduser()
    if path.suffix not in (".yaml", ".yml"):
        raise ConfigError(
            f"-o {path}: end the name in .yaml (-c tells a competition YAML from a name by that suffix)"
        )
    if path.exists() and not force:
        raise ConfigError(f"{path} exists; pass --force to overwrite it, or -o another path")
    guess = guess_competition(name, source)
    command = f"audiotag new-competition {name} --from {source}"
    text = render_yaml(guess, command)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    try:
        load_competition(str(path.resolve()))
    except ConfigError as exc:  # a guess the schema refuses: keep the file, say what to fix
        raise ConfigError(f"{path}: written, but the guess needs a fix: {exc}") from None
    log.info("new-competition: wrote %s", path)
    return path, guess.reasons


def default_output(name: str) -> Path:
    """``configs/competitions/NAME.yaml`` of a checkout (or of ``AUDIOTAG_CONFIGS``), where ``-c NAME``
    finds it; an installed package's configs are not the user's to write: ``NAME.yaml`` here."""
    import os

    from audiotag.config.files import configs_root
    from audiotag.core.paths import checkout_root

    if checkout_root() is None and not os.environ.get("AUDIOTAG_CONFIGS"):
        return Path(f"{name}.yaml")
    return configs_root() / "competitions" / f"{name}.yaml"


def run_new_competition(name: str, source: Path, output: Path | None = None, force: bool = False) -> None:
    """``audiotag new-competition``: write the guessed YAML and say what was guessed and why."""
    from audiotag.core.log import output_console

    path, reasons = new_competition(name, source, output, force)
    console = output_console()
    console.print(f"guessed from {source}:", soft_wrap=True)
    for reason in reasons:
        console.print(f"  {reason}", soft_wrap=True, markup=False)
    console.print(
        f"wrote {path}: review it (every guess has a comment), then\n"
        f"  ./run.sh prepare train ensemble -c {path}",
        soft_wrap=True,
        markup=False,
    )


class _OneLineDumper(yaml.SafeDumper):
    """Flow style on one line: a string holding a line break or another unprintable character (a CSV
    header cell, a file name) is written double-quoted with escapes, so it stays one value."""


def _represent_str(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = None if text.isprintable() else '"'
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_OneLineDumper.add_representer(str, _represent_str)


def _flow(value: Any) -> str:
    text = yaml.dump(
        value, Dumper=_OneLineDumper, default_flow_style=True, width=float("inf"), allow_unicode=True
    )
    return text.strip().removesuffix("\n...").removesuffix("...").strip()


def _comment(text: str) -> str:
    """``text`` as the rest of one comment line: line breaks and unprintable characters escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def render_yaml(guess: Guess, command: str) -> str:
    """The YAML text: a header saying how it was made, then each key with its reason as a comment. Data
    from the folder (CSV headers, file names) can only be a value or a comment, never a key."""
    lines = [
        f"# Written by `{_comment(command)}`: guessed from the folder's files; review every line, then run",
        "#   ./run.sh prepare train ensemble -c <this file>",
        "# (README, 'Your own dataset', lists every key.)",
    ]
    for key, value in guess.spec.items():
        line = f"{key}: {_flow(value)}"
        comment = guess.comments.get(key)
        lines.append(f"{line}  # {_comment(comment)}" if comment else line)
    return "\n".join(lines) + "\n"
