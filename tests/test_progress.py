"""Progress bars (``audiotag.core.log.progress``): on a terminal only, never under ``--quiet``; the fold's
ETA in the epoch log line."""

from __future__ import annotations

import os

import pytest

from audiotag.cli.main import main
from audiotag.core import log as audiotag_log
from audiotag.core.log import human_duration, progress, set_quiet
from audiotag.train.loop import FoldState, fold_eta


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("AUDIOTAG_QUIET", "TQDM_DISABLE"):
        monkeypatch.delenv(variable, raising=False)


def test_bars_follow_the_terminal_unless_quiet() -> None:
    assert progress(range(3), disable=False).disable is False  # as if on a terminal
    assert progress(range(3)).disable is True  # pytest's stderr is not a terminal: hidden
    set_quiet()
    assert os.environ["TQDM_DISABLE"] == "1" and audiotag_log.is_quiet()
    assert progress(range(3), disable=False).disable is True
    set_quiet(False)
    assert not audiotag_log.is_quiet() and "TQDM_DISABLE" not in os.environ


@pytest.mark.slow  # drives the CLI
def test_quiet_is_a_global_option(workspace) -> None:
    assert main(["leaderboard", "--no-lb", "--quiet", "-c", "demo"]) == 0
    assert audiotag_log.is_quiet()


def test_the_fold_eta_counts_the_remaining_epochs_at_the_mean_epoch_time() -> None:
    state = FoldState(epoch=2, history=[{"seconds": 10.0}, {"seconds": 20.0}])
    assert fold_eta(state, 10) == "; fold ETA <= 2m00s"  # 8 epochs x 15 s
    assert fold_eta(FoldState(epoch=10, history=[{"seconds": 1.0}]), 10) == ""
    assert [human_duration(s) for s in (0.4, 59, 61, 3600 * 2 + 301)] == ["0s", "59s", "1m01s", "2h05m"]
