"""The import-linter contract in pyproject.toml holds, and catches an import that points up."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]
LINT = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT.is_file(), reason="import-linter is not installed (dev dependency)")


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(root / "src"), "PATH": str(LINT.parent), "HOME": str(root)}
    return subprocess.run(
        [str(LINT), "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_layers_contract_holds() -> None:
    result = lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "audiotag layers: imports point down KEPT" in result.stdout
    assert "stages stand side by side: no stage imports another KEPT" in result.stdout
    assert " kept, 0 broken" in result.stdout


def test_an_upward_import_breaks_it(tmp_path: Path) -> None:
    skip = shutil.ignore_patterns("*.egg-info", "__pycache__")
    shutil.copytree(REPO / "src", tmp_path / "src", ignore=skip)
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    config = tmp_path / "src/audiotag/config/schema.py"
    config.write_text(config.read_text() + "\nfrom audiotag.models import registry  # noqa\n")
    result = lint(tmp_path)
    assert result.returncode != 0
    assert "audiotag.config is not allowed to import audiotag.models" in result.stdout
