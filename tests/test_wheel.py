"""`pip install .` gives a working tool: the wheel carries the configs tree (package data), and the
installed package, run outside any checkout, prepares the demo into the current folder.

The wheel is built offline from a copy of the sources (this environment's setuptools, no build
isolation: torch requires setuptools >= 77, which reads pyproject's license expression) and installed
with --no-deps into a fresh venv whose .pth file points at this
environment's site-packages (torch and the rest are not downloaded again)."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY_DEMO


def clean_env() -> dict[str, str]:
    """The environment without PYTHONPATH (a checkout's src/ on it would be "already installed") and
    without the AUDIOTAG_ settings (the defaults are what is tested)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("AUDIOTAG_", "PYTHONPATH"))}


def pip(*args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet", *args],
        check=True,
        env=clean_env(),
        timeout=300,
    )


def build_wheel(tmp_path: Path) -> Path:
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(REPO / "src", source / "src", symlinks=True, ignore=ignore)  # configs: a link
    shutil.copytree(REPO / "configs", source / "configs")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp_path / "dist"), str(source))
    (wheel,) = (tmp_path / "dist").glob("audiotag-*.whl")
    return wheel


def fresh_venv(tmp_path: Path, wheel: Path) -> Path:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    pip("--python", str(python), "install", "--no-deps", "--no-index", str(wheel))
    (own,) = (venv / "lib").glob("python3*/site-packages")
    (own / "borrowed.pth").write_text("\n".join(site.getsitepackages()) + "\n")  # after its own
    return python


@pytest.mark.slow  # builds and installs a wheel, then prepares the tiny demo (about 30 s on 2 cores)
def test_the_installed_wheel_prepares_the_demo_in_the_current_folder(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    yaml_files = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "configs").rglob("*.yaml"))
    assert sorted(n.removeprefix("audiotag/") for n in names if n.endswith(".yaml")) == yaml_files
    python = fresh_venv(tmp_path, wheel)
    project = tmp_path / "project"  # outside the checkout, no configs/ here
    project.mkdir()
    env = clean_env()
    where = subprocess.run(
        [str(python), "-c", "import audiotag; print(audiotag.__file__)"],
        cwd=project, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert where.stdout.startswith(str(tmp_path / "venv")), where.stdout
    # the README's command, its --config path written from a checkout's root: the installed tree's
    config = "configs/experiments/demo/cnn_small.yaml"
    command = ["prepare", "-c", "demo", "--config", config, "--workers", "1"]
    for setting in TINY_DEMO:
        command += ["--set", setting]
    result = subprocess.run(
        [str(python), "-m", "audiotag", *command, "--quiet"],
        cwd=project, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (project / "competition" / "demo" / "meta.parquet").is_file()
    version = subprocess.run(
        [str(python), "-m", "audiotag", "--version"], cwd=project, env=env, capture_output=True, text=True
    )
    assert version.stdout.startswith("audiotag ") and str(tmp_path / "venv") in version.stdout
