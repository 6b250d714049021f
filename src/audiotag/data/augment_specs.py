"""Transforms of an augmentation library named in the config: ``{name: <class>, <parameter>: value}``.

``train.wave_augment`` (audiomentations) and ``train.spec_augment_lib`` (albumentations) are lists of
such entries. Each is checked here when the config is loaded, by constructing it: an unknown class or
parameter, or a value the library refuses, is a ``ValueError`` naming the entry (``key[i] (Class)``),
the parameter and what is allowed.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping
from typing import Any


def entry_name(key: str, index: int, spec: Any) -> str:
    """The class an entry names; ValueError naming the entry when it is not ``{name: Class, ...}``."""
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str) or not spec["name"]:
        raise ValueError(
            f"{key}[{index}]: each entry is a mapping {{name: <transform class>, <parameter>: value, ...}}; "
            f"got {spec!r}"
        )
    return str(spec["name"])


def transform_class(key: str, index: int, name: str, classes: Mapping[str, type], library: str) -> type:
    """``classes[name]``, or a ValueError naming the entry, the closest names and the library."""
    if name in classes:
        return classes[name]
    close = difflib.get_close_matches(name, list(classes), n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ValueError(
        f"{key}[{index}]: {name!r} is not a transform of {library} this option takes; {hint}"
        f"one of: {', '.join(sorted(classes))}"
    )


def init_parameters(cls: type) -> list[str]:
    """The keyword parameters of ``cls.__init__`` (its documented signature)."""
    params = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in params if p.name != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD]


def check_parameters(key: str, index: int, name: str, params: Mapping[str, Any], allowed: list[str]) -> None:
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(
            f"{key}[{index}] ({name}): unknown parameter(s) {', '.join(unknown)}; "
            f"{name} takes {', '.join(allowed) or 'none'}"
        )


def construct(key: str, index: int, name: str, factory: Callable[..., Any], params: dict[str, Any]) -> Any:
    """``factory(**params)``; what the library raises becomes a ValueError naming the entry."""
    p = params.get("p", 0.5)
    if not isinstance(p, int | float) or not 0 <= p <= 1:
        raise ValueError(
            f"{key}[{index}] ({name}): p is the probability of applying it, in [0, 1]; got {p!r}"
        )
    try:
        return factory(**params)
    except (TypeError, ValueError, AssertionError) as exc:
        lines = [line for line in str(exc).splitlines() if "errors.pydantic.dev" not in line]
        text = " ".join(" ".join(lines).split()) or f"a parameter is out of range ({params})"
        raise ValueError(f"{key}[{index}] ({name}): {text}") from None
