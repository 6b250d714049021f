"""The ensemble stage: blend the members' fold-averaged predictions, score the blend on OOF, write
the submission. Members must share clips, classes and fold file; anything else is refused."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from audiotag import metrics
from audiotag.atomic import atomic_write_json
from audiotag.competitions import Competition, get_competition
from audiotag.config import EnsembleConfig
from audiotag.data.folds import load_folds
from audiotag.errors import DataError
from audiotag.paths import submissions_root
from audiotag.predictions import read_predictions
from audiotag.prepare import read_clip_table
from audiotag.submission import build_submission, write_submission

log = logging.getLogger(__name__)


@dataclass
class Member:
    name: str
    fold_scores: dict[int, float]
    folds_file: str
    folds_sha256: str
    oof_ids: list[str]
    oof: np.ndarray
    test_ids: list[str]
    test: np.ndarray


@dataclass
class EnsembleResult:
    metric: str
    members: list[Member]
    fold_scores: dict[int, float]
    submission: Path
    test_score: float | None = None
    report: dict = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return float(np.mean(list(self.fold_scores.values())))

    @property
    def std(self) -> float:
        return float(np.std(list(self.fold_scores.values())))


def load_member(comp: Competition, name: str) -> Member:
    run_dir = comp.dir / "runs" / name
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise DataError(
            f"ensemble member {name!r}: {metrics_path} not found; the run is missing or has unfinished folds "
            f"(train it with ./run.sh train, run name {name!r})"
        )
    info = json.loads((run_dir / "run.json").read_text())
    fold_scores = {int(k): v for k, v in json.loads(metrics_path.read_text())["folds"].items()}
    oof_ids, oof = read_predictions(run_dir / "oof.parquet", comp.classes)
    test_ids, test = read_predictions(run_dir / "test.parquet", comp.classes)
    return Member(name, fold_scores, info["folds_file"], info["folds_sha256"], oof_ids, oof, test_ids, test)


def align(members: list[Member]) -> tuple[list[str], list[str], list[np.ndarray], list[np.ndarray]]:
    """Sort every member's rows by clip id; refuse members whose clips or fold file differ."""
    first = members[0]
    for other in members[1:]:
        if other.folds_sha256 != first.folds_sha256:
            raise DataError(
                f"ensemble members {first.name!r} and {other.name!r} used different fold files "
                f"({first.folds_file} vs {other.folds_file}); their OOF scores are not comparable"
            )
        for kind in ("oof_ids", "test_ids"):
            if set(getattr(other, kind)) != set(getattr(first, kind)):
                raise DataError(f"ensemble members {first.name!r} and {other.name!r} predict different clips")
    oof_ids, test_ids = sorted(first.oof_ids), sorted(first.test_ids)
    oofs, tests = [], []
    for m in members:
        oof_pos = {c: i for i, c in enumerate(m.oof_ids)}
        test_pos = {c: i for i, c in enumerate(m.test_ids)}
        oofs.append(m.oof[[oof_pos[c] for c in oof_ids]])
        tests.append(m.test[[test_pos[c] for c in test_ids]])
    return oof_ids, test_ids, oofs, tests


def blend(predictions: list[np.ndarray], method: str) -> np.ndarray:
    stack = np.stack(predictions)
    if method == "geometric":
        return np.exp(np.log(np.clip(stack, 1e-7, 1.0)).mean(axis=0))
    return stack.mean(axis=0)


def score_by_fold(
    comp: Competition, table: pd.DataFrame, folds: pd.DataFrame, clip_ids: list[str], scores: np.ndarray
) -> dict[int, float]:
    rows = table.set_index("clip_id").loc[clip_ids]
    fold_of = folds.set_index("clip_id")["fold"].loc[clip_ids].to_numpy()
    truth = comp.label_matrix(rows["labels"])
    verified = rows["verified"].to_numpy()
    out = {}
    for fold in sorted(set(fold_of.tolist())):
        mask = (fold_of == fold) & verified
        if not mask.any():
            mask = fold_of == fold
        out[int(fold)] = metrics.score(comp.metric, truth[mask], scores[mask])
    return out


def run_ensemble(cfg: EnsembleConfig) -> EnsembleResult:
    comp = get_competition(cfg.competition)
    members = [load_member(comp, name) for name in cfg.members]
    table = read_clip_table(comp.meta_path)
    oof_ids, test_ids, oofs, tests = align(members)
    folds = load_folds(Path(members[0].folds_file))
    blended_oof = blend(oofs, cfg.method)
    blended_test = blend(tests, cfg.method)
    fold_scores = score_by_fold(comp, table, folds, oof_ids, blended_oof)
    path = submissions_root() / comp.name / f"{cfg.name}.csv"
    write_submission(comp, build_submission(comp, test_ids, blended_test), path)
    result = EnsembleResult(comp.metric, members, fold_scores, path, comp.score_test(test_ids, blended_test))
    result.report = {
        "name": cfg.name,
        "competition": comp.name,
        "metric": comp.metric,
        "method": cfg.method,
        "members": {
            m.name: {"folds": m.fold_scores, "mean": float(np.mean(list(m.fold_scores.values())))}
            for m in members
        },
        "blend": {"folds": fold_scores, "mean": result.mean, "std": result.std},
        "test_score": result.test_score,
        "submission": str(path),
    }
    atomic_write_json(path.with_suffix(".json"), result.report)
    return result
