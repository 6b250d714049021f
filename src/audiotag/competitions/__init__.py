"""Competition modules and the lookup from a config's ``name`` (or ``kind``) to its class.

Every module of this package that declares ``COMPETITIONS = (SomeCompetition, ...)`` registers those
classes: a class with a ``kind`` (``table``, ``folders``) serves every config of that kind, the others
the config whose ``name`` is theirs. Adding a competition is adding its module (and its YAML under
``configs/competitions/``).
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from pathlib import Path

from audiotag.competitions.base import Competition
from audiotag.config.schema import CompetitionConfig
from audiotag.core.errors import ConfigError


@cache
def _registry() -> dict[str | None, dict[str, type[Competition]]]:
    """``{kind: {name: class}}``: the named competitions under None, a kind's class under its kind."""
    found: dict[str | None, dict[str, type[Competition]]] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for cls in getattr(module, "COMPETITIONS", ()):
            by_name = found.setdefault(cls.kind, {})
            if cls.name in by_name:
                raise RuntimeError(f"competition {cls.name!r} is declared twice ({module.__name__})")
            by_name[cls.name] = cls
    return found


def competition_names() -> list[str]:
    return sorted(_registry().get(None, {}))


def get_competition(cfg: CompetitionConfig, root: Path | None = None) -> Competition:
    registry = _registry().get(None, {})
    if cfg.kind is not None:
        if cfg.name in registry:  # its workspace (clip table, folds, runs) is the built-in one's
            raise ConfigError(
                f"competition.name: {cfg.name!r} is a built-in competition's name, and a kind: {cfg.kind} "
                f"YAML would overwrite its workspace competition/{cfg.name}/; give yours another name"
            )
        (cls,) = _registry()[cfg.kind].values()
        return cls(cfg, root)
    if cfg.name not in registry:
        raise ConfigError(
            f"competition.name: unknown competition {cfg.name!r}; known: {', '.join(sorted(registry))}"
        )
    return registry[cfg.name](cfg, root)
