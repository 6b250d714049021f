"""A run's results: the fold scores it has, and when every fold is done the run-level files
(``oof.parquet``, ``test.parquet``, ``metrics.json``) that ``ensemble`` and ``leaderboard`` read."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audiotag.core.atomic import atomic_write_json
from audiotag.runs.prepare import Prepared
from audiotag.scoring import metrics
from audiotag.scoring.fold_scores import FoldScores
from audiotag.scoring.predictions import read_predictions, write_predictions

log = logging.getLogger(__name__)


@dataclass
class RunResult(FoldScores):
    name: str
    dir: Path
    metric: str
    fold_scores: dict[int, float]
    complete: bool
    test_score: float | None = None  # fold-mean test predictions on known test labels (demo only)


def collect_run(
    run_dir: Path, classes: list[str], metric: str, n_folds: int, prepared: Prepared
) -> RunResult:
    """Gather fold results; when every fold is done, write run-level OOF, test and metrics files."""
    scores: dict[int, float] = {}
    for fold in range(n_folds):
        done = run_dir / f"fold{fold}" / "done.json"
        if done.is_file():
            scores[fold] = json.loads(done.read_text())["score"]
    complete = len(scores) == n_folds
    comp = prepared.competition
    result = RunResult(run_dir.name, run_dir, metric, scores, complete)
    test_files = [run_dir / f"fold{f}" / "test.parquet" for f in sorted(scores)]
    if test_files and all(p.is_file() for p in test_files):
        parts = [read_predictions(p, classes) for p in test_files]
        test_ids, fold_mean = parts[0][0], np.mean([part[1] for part in parts], axis=0)
        result.test_score = comp.score_test(test_ids, fold_mean)
    if not complete:
        log.info(
            "train: %d of %d folds done; run the remaining folds to get OOF and test files",
            len(scores),
            n_folds,
        )
        return result
    oof_ids: list[str] = []
    oof_parts, test_parts = [], []
    test_ids: list[str] | None = None
    for fold in range(n_folds):
        ids, scores_fold = read_predictions(run_dir / f"fold{fold}" / "oof.parquet", classes)
        oof_ids += ids
        oof_parts.append(scores_fold)
        test_path = run_dir / f"fold{fold}" / "test.parquet"
        if test_path.is_file():
            test_ids, test_fold = read_predictions(test_path, classes)
            test_parts.append(test_fold)
    oof = np.concatenate(oof_parts)
    write_predictions(run_dir / "oof.parquet", oof_ids, classes, oof)
    if test_parts and test_ids is not None:
        write_predictions(run_dir / "test.parquet", test_ids, classes, np.mean(test_parts, axis=0))
    table = prepared.table.set_index("clip_id").loc[oof_ids]
    truth = comp.label_matrix(table["labels"])
    verified = table["verified"].to_numpy()
    pooled = metrics.score(metric, truth[verified], oof[verified]) if verified.any() else float("nan")
    atomic_write_json(
        run_dir / "metrics.json",
        {
            "metric": metric,
            "folds": {str(k): v for k, v in scores.items()},
            "mean": result.mean,
            "std": result.std,
            "oof_pooled": pooled,
            "n_oof": len(oof_ids),
            "test_score": result.test_score,
        },
    )
    return result
