"""run.sh refuses an environment (AUDIOTAG_VENV) whose audiotag package is another checkout's.

Each test builds a fake environment: ``bin/python`` is a shell script that answers run.sh's package
check with a chosen folder, records pip calls instead of running them, and otherwise runs the real
interpreter; the install stamp is current, so run.sh installs nothing. Offline, well under a second each.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

FAKE_PYTHON = """#!/bin/sh
# the package check: run.sh's `python -c '...find_spec("audiotag")...'`
if [ "$1" = "-c" ]; then
  case "$2" in *audiotag*) [ -f "{venv}/package" ] && cat "{venv}/package"; exit 0 ;; esac
fi
# pip: recorded; `pip install -e .` installs the current folder's package
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then
  echo "$*" >>"{venv}/pip.log"
  case "$*" in *"-e ."*) echo "$(pwd -P)/src/audiotag" >"{venv}/package" ;; esac
  exit 0
fi
# the pipeline: where it runs, and the installer it is given
if [ "$1" = "-m" ] && [ "$2" = "audiotag" ]; then
  echo "cwd=$(pwd -P) run_sh=$AUDIOTAG_RUN_SH args=$*"
  exit 0
fi
exec "{python}" "$@"
"""


def stamp(extra: str | None = None) -> str:
    """What run.sh writes to ``$VENV/.audiotag-installed`` once the environment is installed (and to
    ``.audiotag-installed-EXTRA`` once an optional set is)."""
    names = [*REPO_INPUTS, *([f"requirements-{extra}.lock"] if extra else [])]
    text = b"".join((REPO / name).read_bytes() for name in names)
    return hashlib.sha256(text).hexdigest()[:16]


REPO_INPUTS = ("requirements.lock", "requirements-nodeps.lock", "pyproject.toml")
EXTRAS = ("augment", "dev")


def write_stamps(venv: Path, current: bool = True) -> None:
    """The stamps of a venv with every set installed (``current`` False: from other locks)."""
    for extra in (None, *EXTRAS):
        name = ".audiotag-installed" + (f"-{extra}" if extra else "")
        (venv / name).write_text((stamp(extra) if current else "0" * 16) + "\n")


HERE = (REPO / "src" / "audiotag").resolve()


def fake_venv(root: Path, package: Path | None, current_stamp: bool = True) -> Path:
    venv = root / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(FAKE_PYTHON.format(venv=venv, python=sys.executable))
    python.chmod(0o755)
    write_stamps(venv, current_stamp)
    if package is not None:
        (venv / "package").write_text(f"{package}\n")
    return venv


def run_sh(
    venv: Path, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AUDIOTAG_VENV": str(venv), **(env or {})}
    return subprocess.run(
        ["bash", str(REPO / "run.sh"), *args], env=env, capture_output=True, text=True, timeout=60, cwd=cwd
    )


def pip_calls(venv: Path) -> list[str]:
    log = venv / "pip.log"
    return log.read_text().splitlines() if log.is_file() else []


@pytest.mark.parametrize("current_stamp", [True, False], ids=["installed", "stale-stamp"])
def test_another_checkouts_environment_is_refused(tmp_path: Path, current_stamp: bool) -> None:
    other = tmp_path / "other-clone" / "src" / "audiotag"
    venv = fake_venv(tmp_path, other, current_stamp)
    result = run_sh(venv, "test", "--version")
    assert result.returncode == 2
    assert "pytest" not in result.stdout  # nothing ran
    err = result.stderr
    assert f"the environment {venv} runs another checkout's code" in err
    assert str(other) in err and str(HERE) in err
    assert f'"{venv}/bin/python" -m pip install --no-deps -e "{REPO.resolve()}"' in err
    assert "AUDIOTAG_VENV" in err
    assert pip_calls(venv) == []  # refused before installing anything into the other clone's venv


def test_this_checkouts_environment_runs(tmp_path: Path) -> None:
    venv = fake_venv(tmp_path, HERE)
    result = run_sh(venv, "test", "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("pytest ")
    assert result.stderr == ""
    assert pip_calls(venv) == []


def test_an_environment_without_audiotag_gets_this_checkout(tmp_path: Path) -> None:
    venv = fake_venv(tmp_path, None)
    result = run_sh(venv, "test", "--version")
    assert result.returncode == 0, result.stderr
    assert "has no audiotag package; installing this checkout" in result.stderr
    assert result.stdout.startswith("pytest ")
    assert len(pip_calls(venv)) == 1 and pip_calls(venv)[0].endswith("--no-deps -e .")


@pytest.mark.parametrize("elsewhere", [True, False], ids=["other-clone-first", "this-checkout"])
def test_the_check_itself_with_the_real_interpreter(tmp_path: Path, elsewhere: bool) -> None:
    """run.sh's own package check, run by the real interpreter: PYTHONPATH puts another clone's
    audiotag first, or nothing does and the editable install of this checkout answers."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    write_stamps(venv)
    other = tmp_path / "other-clone" / "src"
    (other / "audiotag").mkdir(parents=True)
    (other / "audiotag" / "__init__.py").write_text("raise SystemExit('the other clone ran')\n")
    env = {**os.environ, "AUDIOTAG_VENV": str(venv)}
    env.pop("PYTHONPATH", None)
    if elsewhere:
        env["PYTHONPATH"] = str(other)
    result = subprocess.run(
        ["bash", str(REPO / "run.sh"), "test", "--version"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if elsewhere:
        assert result.returncode == 2
        assert (
            f"its audiotag package is\n  {(other / 'audiotag').resolve()}\nnot this checkout's"
            in result.stderr
        )
        assert "the other clone ran" not in result.stderr  # located, not imported
    else:
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("pytest ")


def test_commands_run_in_the_callers_folder_and_may_install_an_extra(tmp_path: Path) -> None:
    """A relative path on the command line is the caller's (run.sh no longer moves into the checkout
    for the pipeline), and the pipeline is told how to install an optional set (AUDIOTAG_RUN_SH)."""
    venv = fake_venv(tmp_path, HERE)
    caller = tmp_path / "elsewhere"
    caller.mkdir()
    result = run_sh(venv, "train", "--config", "my.yaml", cwd=caller)
    assert result.returncode == 0, result.stderr
    assert f"cwd={caller.resolve()} run_sh={REPO.resolve() / 'run.sh'}" in result.stdout
    assert result.stdout.rstrip().endswith("-m audiotag train --config my.yaml")


def remove_extra_stamps(venv: Path) -> None:
    for extra in EXTRAS:
        (venv / f".audiotag-installed-{extra}").unlink()


def test_an_extra_is_installed_once_from_its_lock(tmp_path: Path) -> None:
    venv = fake_venv(tmp_path, HERE)
    remove_extra_stamps(venv)
    result = run_sh(venv, "install", "augment")
    assert result.returncode == 0, result.stderr
    assert "installing the optional 'augment' packages from requirements-augment.lock" in result.stderr
    (call,) = pip_calls(venv)
    assert call.endswith("-r requirements.lock -r requirements-augment.lock")
    assert (venv / ".audiotag-installed-augment").read_text().strip() == stamp("augment")
    assert run_sh(venv, "install", "augment").returncode == 0
    assert len(pip_calls(venv)) == 1  # installed: not again


def test_the_tests_install_the_dev_set_with_augment_and_the_pipeline_neither(tmp_path: Path) -> None:
    venv = fake_venv(tmp_path, HERE)
    remove_extra_stamps(venv)
    assert run_sh(venv, "prepare").returncode == 0
    assert pip_calls(venv) == []  # the runtime set is all the pipeline needs
    result = run_sh(venv, "test", "--version")
    assert result.returncode == 0, result.stderr
    assert [c.rsplit(" ", 1)[-1] for c in pip_calls(venv)] == [
        "requirements-augment.lock",
        "requirements-dev.lock",
    ]
    assert result.stdout.startswith("pytest ")


def test_offline_mode_installs_no_extra(tmp_path: Path) -> None:
    venv = fake_venv(tmp_path, HERE)
    remove_extra_stamps(venv)
    result = run_sh(venv, "install", "augment", env={"AUDIOTAG_OFFLINE": "1"})
    assert result.returncode == 2
    assert "offline mode (AUDIOTAG_OFFLINE) is on: not installing requirements-augment.lock" in result.stderr
    assert pip_calls(venv) == []
