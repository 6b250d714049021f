"""Competition modules and the lookup from a config's ``name`` to its class."""

from __future__ import annotations

from pathlib import Path

from audiotag.competitions.base import Competition
from audiotag.config.schema import CompetitionConfig
from audiotag.core.errors import ConfigError


def _registry() -> dict[str, type[Competition]]:
    from audiotag.competitions.audioset import AudioSet
    from audiotag.competitions.demo import Demo, Demo2019
    from audiotag.competitions.fsd50k import Fsd50k
    from audiotag.competitions.fsd2018 import Fsd2018
    from audiotag.competitions.fsd2019 import Fsd2019

    return {cls.name: cls for cls in (Demo, Demo2019, Fsd2018, Fsd2019, Fsd50k, AudioSet)}


def competition_names() -> list[str]:
    return sorted(_registry())


def get_competition(cfg: CompetitionConfig, root: Path | None = None) -> Competition:
    if cfg.kind == "table":
        from audiotag.competitions.table import TableCompetition

        return TableCompetition(cfg, root)
    if cfg.kind == "folders":
        from audiotag.competitions.folders import FoldersCompetition

        return FoldersCompetition(cfg, root)
    registry = _registry()
    if cfg.name not in registry:
        raise ConfigError(
            f"competition.name: unknown competition {cfg.name!r}; known: {', '.join(sorted(registry))}"
        )
    return registry[cfg.name](cfg, root)


__all__ = ["Competition", "competition_names", "get_competition"]
