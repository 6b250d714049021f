"""The configuration files: YAML groups under ``configs/``, composed, overridden and validated.

An experiment file names one file from each group (``competition: demo`` reads
``configs/competitions/demo.yaml``), or gives a mapping with ``base: <name>`` plus keys to change.
Command-line overrides (``--set train.epochs=3``) are applied to the composed tree before
validation, so every error names the full key path and what is allowed there, and where the value
came from: an error under a key a ``--set`` wrote names that override, not the experiment file.
The schemas the trees are validated against live in ``audiotag.config.schema`` (and the model families'
modules).
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, Tag, TypeAdapter, ValidationError
from pydantic_core import to_jsonable_python

from audiotag.core.errors import ConfigError

M = TypeVar("M", bound="BaseModel")

AUTO_FEATURES = "auto"  # `features: auto`: the pretrained checkpoint's own front-end
GROUPS = {
    "competition": "competitions",
    "features": "features",
    "model": "models",
}


Applied = tuple[tuple[tuple[str, ...], str], ...]  # (key path, override text) of each --set


class OverriddenTree(dict):  # type: ignore[type-arg]
    """A config tree that remembers the ``--set`` overrides written into it (key path, text), so a
    validation error can name the override rather than the file; :func:`resolve_groups` keeps it."""

    overrides: Applied = ()


def _with_overrides(tree: dict[str, Any], overrides: Applied) -> dict[str, Any]:
    if not overrides:
        return tree
    out = OverriddenTree(tree)
    out.overrides = overrides
    return out


def configs_root() -> Path:
    """The configs tree (overridable with AUDIOTAG_CONFIGS): the package data ``audiotag/configs``,
    which in a checkout is a link to the repository's ``configs/`` (one tree, edited in place; a
    wheel carries a copy)."""
    env = os.environ.get("AUDIOTAG_CONFIGS")
    if env:
        return Path(env)
    return Path(str(resources.files("audiotag") / "configs"))


def find_config(text: str | Path, group_dir: str | None = None) -> Path:
    """The config file a command line names. A path is read from the current folder (or is
    absolute); one that is not there but is written from a checkout's root (``configs/experiments/
    demo/cnn_small.yaml``), or a bare name under ``group_dir`` (``demo/cnn_small``), is the configs
    tree's. Unknown everywhere: an error naming the places looked in."""
    given = Path(text).expanduser()
    if given.is_file() or given.is_absolute():
        return given
    parts = given.parts
    candidates = []
    if parts and parts[0] == "configs":
        candidates.append(configs_root().joinpath(*parts[1:]))
    if group_dir is not None:
        name = str(given) if is_yaml_path(str(given)) else f"{given}.yaml"
        candidates.append(configs_root() / group_dir / name)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    where = ", ".join(str(c) for c in [Path.cwd() / given, *candidates])
    raise ConfigError(f"{text}: config file not found (looked at {where})")


class DuplicateKey(yaml.MarkedYAMLError):
    """A mapping that gives one key twice (PyYAML keeps the last silently; a config must not)."""

    def __init__(self, key: Any, line: int, first_line: int) -> None:
        super().__init__()
        self.key, self.line, self.first_line = key, line, first_line

    def __str__(self) -> str:
        return (
            f"line {self.line}: key {self.key!r} is given twice (first on line {self.first_line}); "
            "a mapping takes each key once: remove one of them"
        )


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that repeats a key (YAML merge keys still apply)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # an unhashable key: the constructor refuses it below
                continue
            if first is not key_node:
                raise DuplicateKey(key, key_node.start_mark.line + 1, first.start_mark.line + 1)
        return super().construct_mapping(node, deep)


def load_yaml_text(text: str) -> Any:
    """YAML text as data, every config's way: safe types only, no key given twice (``yaml.YAMLError``)."""
    return yaml.load(text, Loader=UniqueKeyLoader)


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    try:
        data = load_yaml_text(text)
    except DuplicateKey as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys, got {type(data).__name__}")
    return data


def available(group_dir: str, root: Path | None = None) -> list[str]:
    base = (root or configs_root()) / group_dir
    return sorted(str(p.relative_to(base).with_suffix("")) for p in base.rglob("*.yaml"))


def is_yaml_path(name: str) -> bool:
    """A group given as a file path (``-c ~/data/birds.yaml``) rather than a name under configs/."""
    return name.endswith((".yaml", ".yml"))


def load_group(group: str, name: str, root: Path | None = None) -> dict[str, Any]:
    group_dir = GROUPS[group]
    if group == "competition" and is_yaml_path(name):
        return read_yaml(find_config(name))
    path = (root or configs_root()) / group_dir / f"{name}.yaml"
    if not path.is_file():
        choices = ", ".join(available(group_dir, root)) or "(none)"
        raise ConfigError(f"{group}: no config named {name!r} in configs/{group_dir}/; available: {choices}")
    return read_yaml(path)


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def resolve_groups(raw: dict[str, Any], root: Path | None = None) -> dict[str, Any]:
    """Replace group references (``model: cnn_small`` or ``{base: cnn_small, ...}``) by their content."""
    out = _with_overrides(dict(raw), getattr(raw, "overrides", ()))
    for group in GROUPS:
        value = out.get(group)
        if group == "features" and value == AUTO_FEATURES:
            continue  # resolved from model.pretrained once overrides are applied
        if isinstance(value, str):
            out[group] = load_group(group, value, root)
        elif isinstance(value, dict) and "base" in value:
            rest = {k: v for k, v in value.items() if k != "base"}
            out[group] = deep_merge(load_group(group, str(value["base"]), root), rest)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY.PATH=VALUE, e.g. train.epochs=3")
    key, value = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override {text!r}: empty key")
    try:
        parsed = load_yaml_text(value) if value.strip() else None
    except DuplicateKey as exc:
        raise ConfigError(f"override {text!r}: {str(exc).removeprefix('line 1: ')}") from None
    except yaml.YAMLError:
        parsed = value
    return path, parsed


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """The tree with each ``KEY.PATH=VALUE`` applied; the result remembers them (``OverriddenTree``)."""
    applied = tuple(getattr(tree, "overrides", ()))
    tree = json.loads(json.dumps(tree))  # deep copy of plain data
    for text in overrides:
        path, value = parse_override(text)
        applied += ((tuple(path), text),)
        node = tree
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(path[: i + 1])
                raise ConfigError(f"override {text!r}: {where} is a value, not a section")
            node = child
        node[path[-1]] = value
    return _with_overrides(tree, applied)


def format_validation_error(
    exc: ValidationError, model: type[BaseModel], source: str, overrides: Applied = ()
) -> str:
    """One line per error with its key path; an error under a key that a ``--set`` override wrote
    (or over one, for a check of a whole section) names the override instead of ``source``."""
    lines = []
    from_file = False
    for err in exc.errors():
        shown, _ = _walk(model, [str(p) for p in err["loc"]])
        where = ".".join(shown) or "(top level)"
        if err["type"] == "extra_forbidden":
            _, parent = _walk(model, [str(p) for p in err["loc"]][:-1])
            allowed = sorted(getattr(parent, "model_fields", {}))
            hint = f"unknown key; allowed keys here: {', '.join(allowed)}" if allowed else "unknown key"
            line = f"  {where}: {hint}"
        else:
            got = err.get("input")
            got_text = "" if isinstance(got, dict) else f" (got {got!r})"
            line = f"  {where}: {err['msg']}{got_text}"
        blamed = _overrides_at(tuple(shown), overrides)
        if blamed:
            line += " (from " + ", ".join(f"--set {text}" for text in blamed) + ")"
        else:
            from_file = True
        lines.append(line)
    header = f"{source}: invalid configuration" if from_file else f"invalid --set override (over {source})"
    return "\n".join([header, *lines])


def _overrides_at(shown: tuple[str, ...], overrides: Applied) -> list[str]:
    """The override texts that wrote the key at ``shown``, a key inside it, or the section holding it."""
    if not shown:
        return []
    return [text for path, text in overrides if path[: len(shown)] == shown or shown[: len(path)] == path]


def _walk(model: type[BaseModel], loc: list[str]) -> tuple[list[str], Any]:
    """Follow an error location through the config models: (path to show, model reached or None).

    Pydantic puts the tag of a union member into the location (``model.cnn.channels``); the tag is
    followed but not shown, since it is not a key the user wrote.
    """
    shown: list[str] = []
    current: Any = _model_of(model)  # a model, or a union of them (the competition kinds)
    for part in loc:
        if current is None or part.isdigit():
            shown.append(part)
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is not None:
            shown.append(part)
            current = _model_of(field.annotation)
            continue
        member = _union_members(current).get(part)
        if member is not None:
            current = member
            continue
        shown.append(part)
        current = None
    return shown, current


def _union_members(annotation: Any) -> dict[str | None, type[BaseModel]]:
    """The config models of a union by the tag pydantic puts in an error's location: a member's own
    ``Tag`` (the competition kinds), else its ``name`` default (the model families)."""
    members: dict[str | None, type[BaseModel]] = {}
    for arg in getattr(annotation, "__args__", ()) or ():
        member = getattr(arg, "__origin__", arg)
        if isinstance(member, type) and issubclass(member, BaseModel):
            tags = [m.tag for m in getattr(arg, "__metadata__", ()) if isinstance(m, Tag)]
            members[tags[0] if tags else _name_default(member)] = member
    return members


def _name_default(member: type[BaseModel]) -> str | None:
    field = member.model_fields.get("name")
    return field.default if field is not None and isinstance(field.default, str) else None


def _model_of(annotation: Any) -> Any:
    """The config model (or union of models) a field holds, else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    metadata_origin = getattr(annotation, "__origin__", None)
    if metadata_origin is not None and getattr(annotation, "__metadata__", None) is not None:
        return _model_of(metadata_origin)  # Annotated[Union[...], Field(discriminator=...)]
    members = _union_members(annotation)
    if len(members) > 1:
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def validate(model: type[M] | Any, tree: dict[str, Any], source: str) -> M:
    """``tree`` validated as ``model``: a config model or a union of them (the competition kinds)."""
    try:
        return TypeAdapter(model).validate_python(tree)
    except ValidationError as exc:
        overrides = getattr(tree, "overrides", ())
        raise ConfigError(format_validation_error(exc, model, source, overrides)) from None


def dump_yaml(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


MISSING = object()  # schema_default's answer for a key without a default


def schema_default(cfg: BaseModel, key: str) -> Any:
    """The JSON value of the schema default of the dotted ``key`` in ``cfg`` (``MISSING`` if none)."""
    *parents, name = key.split(".")
    node: Any = cfg
    for part in parents:
        node = getattr(node, part, None)
    field_info = type(node).model_fields.get(name) if isinstance(node, BaseModel) else None
    if field_info is None and isinstance(node, BaseModel):  # written at its default: another kind's key
        return node.model_dump(mode="json").get(name, MISSING)
    if field_info is None or field_info.is_required():
        return MISSING
    return to_jsonable_python(field_info.get_default(call_default_factory=True))


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train.lr": 0.003, ...}``: a config tree's dotted keys; lists stay values, empty dicts vanish."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
