"""A fold's inputs: the clips it trains and validates on, their targets and loss weights, read from
what ``prepare`` made (the fold file is the truth; clips with unusable audio are left out)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from audiotag.competitions.folds import load_folds
from audiotag.config.schema import TrainConfig
from audiotag.core.errors import ConfigError
from audiotag.experiment import ExperimentConfig
from audiotag.runs.prepare import Prepared
from audiotag.train.loop import FoldData

log = logging.getLogger(__name__)


def fold_data(prepared: Prepared, cfg: ExperimentConfig, fold: int) -> FoldData:
    comp = prepared.competition
    clips = comp.training_clips(prepared.table)
    # the fold file is the truth: a clip table's own "fold" column (predefined folds, as given) goes
    clips = clips.drop(columns="fold", errors="ignore")
    train = clips.merge(load_folds(prepared.folds_path), on="clip_id")
    if prepared.skipped:
        dropped = train["clip_id"].isin(prepared.skipped)
        if dropped.any():
            log.warning(
                "fold %d: leaving out %d train clip(s) with unusable audio (see %s)",
                fold,
                int(dropped.sum()),
                prepared.cache_dir / "report.csv",
            )
            train = train[~dropped].reset_index(drop=True)
    targets = comp.label_matrix(train["labels"])
    weights = clip_weights(train, cfg.train)
    is_val = (train["fold"] == fold).to_numpy()
    in_training = ~is_val & (weights > 0)  # weight 0: out of training, still validated
    scored = train["verified"].to_numpy()[is_val]
    if not scored.any():
        log.warning("fold %d: no verified clip in validation, scoring on all of them", fold)
        scored = np.ones_like(scored)
    test = prepared.table[prepared.table["split"] == "test"]
    return FoldData(
        fold=fold,
        classes=comp.classes,
        metric=comp.metric,
        train_ids=train["clip_id"][in_training].tolist(),
        train_targets=targets[in_training],
        train_weights=weights[in_training],
        val_ids=train["clip_id"][is_val].tolist(),
        val_targets=targets[is_val],
        val_scored=scored.astype(bool),
        test_ids=test["clip_id"].tolist(),
        train_verified=train["verified"].to_numpy(bool)[in_training],
    )


def clip_weights(train: pd.DataFrame, tc: TrainConfig) -> np.ndarray:
    """Each clip's loss weight: its subset's in ``train.subset_weights``, else 1 for a verified clip and
    ``train.unverified_weight`` for the others. A name that is no subset of the clips is refused."""
    known = sorted(train["subset"].unique())
    unknown = sorted(set(tc.subset_weights) - set(known))
    if unknown:
        raise ConfigError(
            f"train.subset_weights: {unknown} not among the subsets of this run's training clips {known}; "
            "name only those (competition.subsets chooses which subsets are read)"
        )
    weights = np.where(train["verified"], 1.0, tc.unverified_weight)
    for subset, weight in tc.subset_weights.items():
        weights = np.where(train["subset"] == subset, weight, weights)
    if not (weights > 0).any():
        raise ConfigError("train.subset_weights / train.unverified_weight: every training clip weighs 0")
    return weights
