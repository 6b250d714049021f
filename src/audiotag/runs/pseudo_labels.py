"""Pseudo-labels for the unverified (noisy) training clips, from a teacher run's fold models.

``train.pseudo_labels: {from_run: TEACHER, mode, threshold}`` relabels the unverified clips a fold
trains on (FSDKaggle2019's noisy subset) from the predictions of a finished run, the teacher (e.g. one
trained on the curated clips only). Before fold k trains, :func:`write_pseudo_labels` scores those
clips with the teacher's fold-k model (its ``best.pt``, through the sliding windows of evaluation) and
keeps the scores in ``fold<k>/pseudo_labels.parquet``, with what produced them in
``fold<k>/pseudo_labels.json`` (reused while the teacher's fold and the clips are the same);
:func:`with_pseudo_labels` turns them into the fold's targets:

- ``soft``: the teacher's scores are the targets;
- ``replace``: the teacher's labels: scores >= ``threshold`` (none passing: its top class; a
  single-label competition always takes the top class);
- ``filter``: the given labels the teacher scores >= ``threshold`` are kept, the others dropped, and
  a clip left without a label leaves training.

Fold safety. Fold k's CV score must not see a model that trained on fold k's validation clips. The
noisy clips are never scored, but the teacher's labels for them carry what the teacher learnt: had
its model trained on fold k's validation clips, fold k's student would learn their labels second
hand. So fold k takes the teacher's fold-k model only, and :func:`check_fold_safe` refuses it when
the teacher's fold file puts any of this fold's validation clips in another fold (teacher fold k may
have trained on them); a teacher on the same competition settings (``competition.subsets``,
``n_folds``, ``fold_seed``) shares this run's fold file and passes. A curated-only teacher on that
file: ``train.subset_weights: {noisy: 0}`` (weight 0 leaves a subset out of training). Teacher fold k
chose its best epoch on fold k's validation clips, as the student's own early stopping does.

What the 2019 solutions did (read from their code): OUMed (Akiyama & Sato, DCASE2019 Task 2 report,
github.com/OsciiArt/Freesound-Audio-Tagging-2019) relabel the noisy set from trained models: its
``src/get_pseudo_label.py`` predicts the noisy clips with every fold's model, and
``src/train_model2.py`` averages them over all folds (``mean(axis=(0, 1))``) and sharpens them before
each fold trains on them, so each fold learns from teacher models that trained on its validation
clips; here fold k uses teacher fold k only. Eric Bouteillon's "warm-up pipeline"
(github.com/ebouteillon/freesound-audio-tagging-2019, README) keeps the noisy clips that earlier
models classify (almost) correctly, which ``filter`` resembles.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from audiotag.competitions.folds import load_folds
from audiotag.config.schema import PseudoLabelConfig
from audiotag.core.atomic import atomic_write_json
from audiotag.core.digests import file_sha256
from audiotag.core.errors import ConfigError, DataError
from audiotag.data.cache_reader import FeatureCache
from audiotag.kaggle.inference import predict_member
from audiotag.models.probe import PROBE
from audiotag.runs.prepare import Prepared, prepare
from audiotag.scoring.predictions import read_predictions, write_predictions
from audiotag.train.experiment import ExperimentConfig, load_experiment
from audiotag.train.loop import FoldData

log = logging.getLogger(__name__)

SCORES_FILE = "pseudo_labels.parquet"
RECORD_FILE = "pseudo_labels.json"
REMEDY = (
    "train the teacher on this run's competition settings (the same competition.subsets, n_folds and "
    "fold_seed share one fold file), e.g. on the curated clips only with train.subset_weights: {noisy: 0}"
)


@dataclass(frozen=True)
class Teacher:
    name: str
    dir: Path
    folds_file: Path
    folds: pd.DataFrame  # clip_id, fold: the fold file the teacher trained with


def open_teacher(runs_dir: Path, name: str) -> Teacher:
    """The teacher run ``runs_dir/name`` and its fold file (checked against the SHA-256 it recorded)."""
    run_dir = runs_dir / name
    info_path = run_dir / "run.json"
    if not info_path.is_file():
        raise ConfigError(
            f"train.pseudo_labels.from_run: {run_dir} is not a run (no run.json); train the teacher first "
            f"(./run.sh train --config TEACHER.yaml --run-name {name})"
        )
    info = json.loads(info_path.read_text())
    folds_file = Path(info["folds_file"])
    if not folds_file.is_file():
        raise DataError(
            f"{info_path}: the teacher's fold file {folds_file} is gone, so its folds cannot be checked "
            "against this run's; run `./run.sh prepare` with the teacher's competition settings, or "
            "retrain it"
        )
    if file_sha256(folds_file) != info.get("folds_sha256"):
        raise DataError(
            f"{folds_file} changed since the teacher {name!r} was trained (its SHA-256 differs from the "
            f"one in {info_path}); its folds are no longer known: retrain the teacher"
        )
    return Teacher(name, run_dir, folds_file, load_folds(folds_file))


def leaked_clips(val_ids: Iterable[str], teacher_folds: pd.DataFrame, fold: int) -> list[str]:
    """The validation clips of ``fold`` that the teacher's fold-``fold`` model may have trained on: those
    its fold file puts in another fold (a clip outside its fold file it never saw)."""
    elsewhere = set(teacher_folds.loc[teacher_folds["fold"] != fold, "clip_id"].astype(str))
    return [clip for clip in val_ids if clip in elsewhere]


def check_fold_safe(teacher: Teacher, fold: int, val_ids: list[str], folds_file: Path) -> None:
    """Refuse teacher fold ``fold`` when it may have trained on this fold's validation clips."""
    if fold not in set(teacher.folds["fold"].tolist()):
        raise ConfigError(f"train.pseudo_labels: the teacher {teacher.name!r} has no fold {fold}; {REMEDY}")
    leaked = leaked_clips(val_ids, teacher.folds, fold)
    if leaked:
        raise ConfigError(
            f"train.pseudo_labels: the teacher {teacher.name!r} fold {fold} may have trained on "
            f"{len(leaked)} of this fold's {len(val_ids)} validation clips (e.g. {leaked[:3]}): its fold "
            f"file {teacher.folds_file} differs from this run's {folds_file}, and its pseudo-labels would "
            f"leak those clips into fold {fold}'s CV score; {REMEDY}"
        )


def noisy_train_ids(data: FoldData) -> list[str]:
    """The fold's unverified training clips: the ones pseudo-labels replace."""
    if data.train_verified is None:
        return []
    return [c for c, ok in zip(data.train_ids, data.train_verified, strict=True) if not ok]


def teacher_done(teacher: Teacher, fold: int) -> dict:
    done = teacher.dir / f"fold{fold}" / "done.json"
    if not done.is_file():
        raise ConfigError(
            f"train.pseudo_labels: the teacher {teacher.name!r} has not finished fold {fold} ({done} "
            f"missing); train it first (./run.sh train ... --run-name {teacher.name} --folds {fold})"
        )
    return json.loads(done.read_text())


Predictor = Callable[[Teacher, int, list[str]], np.ndarray]


def model_predictor(cfg: ExperimentConfig, prepared: Prepared, device: torch.device) -> Predictor:
    """Scores of clips by a teacher's fold model, over the feature cache of the teacher's front-end."""

    def predict(teacher: Teacher, fold: int, ids: list[str]) -> np.ndarray:
        teacher_cfg = load_experiment(teacher.dir / "config.yaml")
        if teacher_cfg.model.name == PROBE:
            raise ConfigError(
                f"train.pseudo_labels: the teacher {teacher.name!r} is a linear probe; take a trained model"
            )
        cache_dir = prepared.cache_dir
        if teacher_cfg.features.key() != cfg.features.key():  # the teacher's front-end: its own cache
            cache_dir = prepare(cfg.competition, teacher_cfg.features).cache_dir
        n_classes = len(prepared.competition.classes)
        return predict_member(teacher.dir, [fold], FeatureCache(cache_dir), ids, n_classes, device)[0]

    return predict


def pending(run_dir: Path, folds: list[FoldData]) -> list[FoldData]:
    """The folds still to train (a finished fold keeps the pseudo-labels it trained with)."""
    return [data for data in folds if not (run_dir / f"fold{data.fold}" / "done.json").is_file()]


def check_teacher(
    spec: PseudoLabelConfig, prepared: Prepared, run_dir: Path, folds: list[FoldData]
) -> Teacher:
    """The teacher, once every fold still to train can take pseudo-labels from its own fold safely;
    called before the run is recorded, so that a refused setting can be corrected in place."""
    teacher = open_teacher(prepared.competition.dir / "runs", spec.from_run)
    if teacher.dir.resolve() == run_dir.resolve():
        raise ConfigError(f"train.pseudo_labels.from_run: {spec.from_run!r} is this run; name another run")
    for data in pending(run_dir, folds):
        if not noisy_train_ids(data):
            raise ConfigError(
                f"train.pseudo_labels: fold {data.fold} trains on no unverified clip to relabel; add the "
                "noisy subset to competition.subsets (and give it a train.subset_weights weight above 0)"
            )
        check_fold_safe(teacher, data.fold, data.val_ids, prepared.folds_path)
        teacher_done(teacher, data.fold)
    return teacher


def write_pseudo_labels(
    spec: PseudoLabelConfig, prepared: Prepared, run_dir: Path, folds: list[FoldData], predict: Predictor
) -> None:
    """Teacher fold k's scores of fold k's unverified training clips, for every fold not done yet."""
    teacher = check_teacher(spec, prepared, run_dir, folds)
    for data in pending(run_dir, folds):
        fold_dir = run_dir / f"fold{data.fold}"
        ids = noisy_train_ids(data)
        record = {
            "teacher": teacher.name,
            "teacher_fold": data.fold,
            "teacher_best_pt": teacher_done(teacher, data.fold).get("best_pt"),
            "teacher_folds_file": str(teacher.folds_file),
            "n_clips": len(ids),
            "clips_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
        }
        record_path, scores_path = fold_dir / RECORD_FILE, fold_dir / SCORES_FILE
        if scores_path.is_file() and record_path.is_file():
            if json.loads(record_path.read_text()) == record:
                log.info("fold %d: pseudo-labels from %s already written", data.fold, teacher.name)
                continue
            if (fold_dir / "last.pt").is_file():
                raise ConfigError(
                    f"{record_path}: the teacher {teacher.name!r} fold {data.fold} (or the fold's noisy "
                    f"clips) changed since this fold started on its pseudo-labels; delete {fold_dir} "
                    "to train the fold again on the new ones"
                )
        log.info(
            "fold %d: scoring %d unverified training clips with the teacher %s, fold %d",
            data.fold,
            len(ids),
            teacher.name,
            data.fold,
        )
        scores = predict(teacher, data.fold, ids)
        fold_dir.mkdir(parents=True, exist_ok=True)
        write_predictions(scores_path, ids, data.classes, scores)
        atomic_write_json(record_path, record)


def refine_targets(
    mode: str, threshold: float, given: np.ndarray, scores: np.ndarray, single_label: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(new targets, which clips stay in training) for clips with labels ``given`` and teacher
    ``scores`` (both (n, C)); see the module docstring for the modes."""
    keep = np.ones(len(given), dtype=bool)
    if mode == "soft":
        return scores.astype(np.float32), keep
    top = np.zeros_like(given, dtype=np.float32)
    top[np.arange(len(scores)), scores.argmax(axis=1)] = 1.0
    if mode == "replace":
        if single_label:
            return top, keep
        hard = (scores >= threshold).astype(np.float32)
        bare = hard.sum(axis=1) == 0
        hard[bare] = top[bare]
        return hard, keep
    if mode == "filter":
        kept = (given * (scores >= threshold)).astype(np.float32)
        return kept, kept.sum(axis=1) > 0
    raise ValueError(f"train.pseudo_labels.mode: unknown mode {mode!r}")


def with_pseudo_labels(
    data: FoldData, spec: PseudoLabelConfig, fold_dir: Path, single_label: bool
) -> FoldData:
    """The fold's inputs with its unverified training clips relabelled from ``fold_dir``'s teacher scores."""
    ids, scores = read_predictions(fold_dir / SCORES_FILE, data.classes)
    position = {clip: i for i, clip in enumerate(data.train_ids)}
    if set(ids) != set(noisy_train_ids(data)) or len(ids) != len(set(ids)):
        raise DataError(
            f"{fold_dir / SCORES_FILE}: its clips are not fold {data.fold}'s unverified training clips; "
            f"delete it and {fold_dir / RECORD_FILE} to score them again"
        )
    rows = np.array([position[clip] for clip in ids], dtype=np.int64)
    targets = data.train_targets.copy()
    keep = np.ones(len(data.train_ids), dtype=bool)
    new, kept = refine_targets(spec.mode, spec.threshold, targets[rows], scores, single_label)
    changed = int((np.abs(new - targets[rows]).max(axis=1) > 1e-6).sum())
    targets[rows], keep[rows] = new, kept
    log.info(
        "fold %d: pseudo-labels (%s) from %s: %d of %d unverified clips relabelled, %d dropped",
        data.fold,
        spec.mode,
        spec.from_run,
        changed,
        len(ids),
        int((~kept).sum()),
    )
    assert data.train_verified is not None  # there are unverified clips
    return dataclasses.replace(
        data,
        train_ids=[clip for clip, k in zip(data.train_ids, keep, strict=True) if k],
        train_targets=targets[keep],
        train_weights=data.train_weights[keep],
        train_verified=data.train_verified[keep],
    )
