from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# A demo small enough to prepare, train and ensemble in seconds on 2 cores.
TINY_DEMO = [
    "competition.n_folds=3",
    "competition.generator.train_per_class=6",
    "competition.generator.test_per_class=2",
    "competition.generator.max_duration=3.0",
    "model.channels=[8,16]",
    "model.embedding_dim=16",
    "train.epochs=2",
    "train.batch_size=16",
    "train.patience=2",
]


def tiny_args(*stages: str, competition: str = "demo", extra: list[str] | None = None) -> list[str]:
    args = [*stages, "-c", competition, "--workers", "1"]
    for item in [*TINY_DEMO, *(extra or [])]:
        args += ["--set", item]
    return args


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the workspace and submissions folders at a temporary directory."""
    monkeypatch.setenv("AUDIOTAG_WORKSPACE", str(tmp_path / "competition"))
    monkeypatch.setenv("AUDIOTAG_SUBMISSIONS", str(tmp_path / "submissions"))
    return tmp_path


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A folder for one test module's shared files, removed once the module's tests are done.

    With ``tmp_path_retention_policy = "failed"`` (pyproject) this keeps the suite's disk use near its
    largest module's rather than the sum of all of them: several write full-size checkpoints (300+ MB).
    """
    folder = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def subprocess_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["AUDIOTAG_WORKSPACE"] = str(tmp_path / "competition")
    env["AUDIOTAG_SUBMISSIONS"] = str(tmp_path / "submissions")
    env["PYTHONUNBUFFERED"] = "1"
    return env


PYTHON = sys.executable


# ----------------------------------------------------------------------------- the soak tier
# Tests marked ``soak`` (pyproject.toml) start several processes and kill them at random moments, or
# train with DDP / on several "machines": minutes each. ``./run.sh test`` leaves them out unless
# ``--soak`` is given or their file or id is named; CI runs them after the suite (.ci/run).
SOAK_OPTION = "--soak"
SOAK_LEFT_OUT = pytest.StashKey[int]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        SOAK_OPTION,
        action="store_true",
        help="also run the soak tests (multi-process kills, DDP, several machines); -m soak: only them",
    )


def named_on_the_command_line(item: pytest.Item, config: pytest.Config) -> bool:
    for arg in config.args:
        path, _, rest = arg.partition("::")
        target = Path(path) if Path(path).is_absolute() else config.invocation_params.dir / path
        if target.resolve() == item.path.resolve() and (not rest or item.nodeid.endswith(f"::{rest}")):
            return True
    return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption(SOAK_OPTION):
        return
    left_out = [
        item
        for item in items
        if item.get_closest_marker("soak") is not None and not named_on_the_command_line(item, config)
    ]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        ids = {id(item) for item in left_out}
        items[:] = [item for item in items if id(item) not in ids]
    config.stash[SOAK_LEFT_OUT] = len(left_out)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    left = config.stash.get(SOAK_LEFT_OUT, 0)
    if left:
        terminalreporter.write_line(
            f"{left} soak tests left out (multi-process kills, DDP, several machines): "
            "./run.sh test --soak -m soak runs them, as CI does"
        )
