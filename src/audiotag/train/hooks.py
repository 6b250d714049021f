"""What a fold's training tells an observer after each epoch, without knowing who listens.

``train_fold(..., on_epoch=hook)`` calls ``hook(EpochResult(...))`` once per completed epoch, after
the epoch's validation score is known and ``last.pt`` is saved. A fold that resumes (from ``last.pt``,
or already done) first replays the epochs it had completed, in order, so the observer sees every
epoch of the fold whatever the process that trained it. A hook stops the training by raising: the
exception leaves ``train_fold`` (and the run) as it is, with the fold's ``last.pt`` in place. The
search's pruner listens this way (``train/tune_study.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EpochResult:
    fold: int
    epoch: int  # 0-based index of the completed epoch
    epochs: int  # the schedule's length (train.epochs)
    score: float  # this epoch's validation score (the competition metric)
    best_score: float  # the fold's best validation score so far, this epoch included


EpochHook = Callable[[EpochResult], None]


def replay_history(
    hook: EpochHook | None, fold: int, epochs: int, history: Iterable[Mapping[str, Any]]
) -> None:
    """Call ``hook`` for each recorded epoch (``FoldState.history`` / ``done.json`` entries)."""
    if hook is None:
        return
    best = -math.inf
    for entry in history:
        score = float(entry["score"])
        best = max(best, score)
        hook(EpochResult(fold, int(entry["epoch"]), epochs, score, best))
