"""The pinned sets: requirements.lock (the pipeline), requirements-augment.lock and
requirements-dev.lock (on top of it) are each closed under their packages' requirements, as installed
here (markers evaluated), and every third-party module that ``src/`` imports comes from the set that
needs it. Offline: reads the installed packages' metadata."""

from __future__ import annotations

import ast
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO

SRC = REPO / "src" / "audiotag"
EXTRA_MODULES = {"audiomentations": "augment", "albumentations": "augment"}  # core/extras.import_extra
COME_WITH_THE_VENV = {"setuptools", "pip"}  # pip freeze leaves them out


def pins(name: str) -> set[str]:
    lines = (REPO / name).read_text().splitlines()
    return {canonicalize_name(line.split("==")[0]) for line in lines if line and not line.startswith("#")}


def closure(requirements: list[str]) -> set[str]:
    """The installed distributions that ``requirements`` need, transitively (their extras followed)."""
    seen: set[tuple[str, str]] = set()
    todo = [(Requirement(r), "") for r in requirements]
    names: set[str] = set()
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(req.name)
        for wanted in ["", *sorted(req.extras)]:
            if (name, wanted) in seen:
                continue
            seen.add((name, wanted))
            names.add(name)
            try:
                requires = metadata.requires(name) or []
            except metadata.PackageNotFoundError:
                pytest.skip(f"{name} is not installed here: the locks are checked in the dev environment")
            todo += [(Requirement(r), wanted) for r in requires]
    return names


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_each_lock_is_its_sets_closure() -> None:
    extras = project()["optional-dependencies"]
    runtime = closure(project()["dependencies"])
    augment = closure(extras["augment"]) - runtime
    dev = closure([r for r in extras["dev"] if not r.startswith("audiotag")]) - runtime - augment
    for lock, wanted in [
        ("requirements.lock", runtime),
        ("requirements-augment.lock", augment),
        ("requirements-dev.lock", dev),
    ]:
        got = pins(lock)
        assert not (wanted - got - COME_WITH_THE_VENV), f"{lock} lacks {sorted(wanted - got)}"
        assert not (got - wanted), f"{lock} pins {sorted(got - wanted)}, which its set does not need"


def imported_modules(folder: Path) -> set[str]:
    names: set[str] = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def test_every_module_src_imports_comes_from_the_set_that_needs_it() -> None:
    runtime = closure(project()["dependencies"]) | pins("requirements-nodeps.lock")
    providers = metadata.packages_distributions()
    for module in sorted(imported_modules(SRC) - {"audiotag"}):
        dists = {canonicalize_name(d) for d in providers.get(module, [])}
        if not dists:
            continue  # the standard library
        if module in EXTRA_MODULES:
            assert dists & pins(f"requirements-{EXTRA_MODULES[module]}.lock"), module
            assert not dists & runtime, f"{module} is optional but in requirements.lock"
        else:
            assert dists & runtime, f"src imports {module} ({sorted(dists)}), not in requirements.lock"
