"""``audiotag new-competition NAME --from DIR [-o PATH] [--force]``: a competition YAML guessed from a data
folder (:mod:`audiotag.competitions.guess`), written for the user to review, with what was guessed and why.
"""

from __future__ import annotations

import logging
from pathlib import Path

from audiotag.core.errors import ConfigError

log = logging.getLogger(__name__)


def new_competition(
    name: str, source: Path, output: Path | None = None, force: bool = False
) -> tuple[Path, list[str]]:
    """Guess the YAML of the data in ``source``, write it to ``output`` (atomically, never over an existing
    file unless ``force``) after checking it with the config loader; the path and the reasons."""
    from audiotag.competitions.guess import guess_competition, render_yaml
    from audiotag.config.files import configs_root
    from audiotag.config.schema import load_competition
    from audiotag.core.atomic import atomic_write_text
    from audiotag.core.paths import check_name

    check_name(name, "NAME (the workspace folder's name)")
    path = output if output is not None else configs_root() / "competitions" / f"{name}.yaml"
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
