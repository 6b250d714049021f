"""The prepare stage: raw data -> clip table -> folds -> feature cache. Each step is skipped when
its output is already up to date, so ``prepare`` can be re-run at any time.

The cache applies the audio rules of ``data/audio.py``, with the limits of ``competition.audio_rules``:
training clips with unusable audio are skipped (``Prepared.skipped``; training must leave them out),
test clips are zero-filled and kept.
The cache logs its summary (clips per status, size on disk) every time ``prepare`` runs.

"Up to date" is decided by content, not by modification times (``cp -p``, ``rsync -a`` and ``tar``
keep old mtimes): the clip table's stamp holds the SHA-256 of every raw CSV file, and the cache's
clip-list hash a fingerprint of every audio file (``data/cache_build.py``). Two processes preparing
one competition at once take turns: the raw data, the clip table and the folds are made under a file lock
(``<competition>/prepare.lock``), the cache under its own; the second process waits for the first
(and says so) and then finds everything up to date. A full disk stops with a ``DataError`` naming
the folder and the space the step needs; a rerun resumes.

What a run reads of it: ``Prepared``, and each fold's inputs (``fold_data``: its clips, targets and
loss weights; the fold file is the truth, clips with unusable audio are left out, and ``train.max_clips``
bounds the training clips for a smoke run: ``bounded_clips``)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from audiotag.competitions import Competition, get_competition
from audiotag.competitions.folds import ensure_folds, load_folds
from audiotag.competitions.table import TableCompetition, check_test_labels
from audiotag.config.competition import keys_not_affecting
from audiotag.config.schema import CompetitionConfig, FeatureConfig, TrainConfig
from audiotag.core.atomic import atomic_path, atomic_write_json, read_json_object
from audiotag.core.disk_full import disk_full_as_error
from audiotag.core.errors import ConfigError
from audiotag.core.locks import file_lock
from audiotag.data.cache_build import build_cache, check_cache_device
from audiotag.data.cache_reader import REPORT, FeatureCache
from audiotag.data.fingerprint import audio_digest
from audiotag.data.meta import read_meta, write_meta
from audiotag.train.experiment import ExperimentConfig
from audiotag.train.loop import FoldData

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    competition: Competition
    table: pd.DataFrame
    folds_path: Path
    cache_dir: Path
    skipped: frozenset[str] = field(default_factory=frozenset)  # train clips absent from the cache


# Competition settings that do not change which clips the table holds or how they are labelled (each
# key's Scope in config/competition.py says what it affects): e.g. ``audio_rules`` enter the feature
# cache's clip-list hash, ``test_labels`` are read when a run is scored, never into the table.
TABLE_NEUTRAL = keys_not_affecting("table")


# Bump when the parsing rules change what a table holds (2: CSV names confined to the audio folder,
# unusable files kept with their audio_issue; 3: FSDKaggle2018's freesound_id as the clips' group),
# so tables built by older code are rebuilt.
TABLE_FORMAT = 3


def table_fingerprint(comp: Competition) -> str:
    settings = comp.cfg.model_dump(mode="json", exclude=TABLE_NEUTRAL)
    if comp.cfg.kind is None:  # the other kinds' keys, absent before they existed: same fingerprint as then
        settings = {key: value for key, value in settings.items() if key in type(comp.cfg).model_fields}
    settings["table_format"] = TABLE_FORMAT
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def sources_fingerprint(sources: list[Path]) -> str:
    """SHA-256 over the names and contents of the raw CSV files (their mtimes do not count)."""
    digest = hashlib.sha256()
    for path in sorted(sources, key=lambda p: (p.name, str(p))):
        digest.update(f"\n{path.name}\t".encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _audio_sha256(comp: Competition, table: pd.DataFrame) -> str:
    """The fingerprints of the table's audio files (data/fingerprint.py, as the feature cache's)."""
    return audio_digest([comp.dir / rel for rel in table["path"]])


def clip_table(comp: Competition) -> pd.DataFrame:
    """Read ``meta.parquet``, rebuilding it when missing, when the raw CSV files' contents changed
    (whatever their mtimes), when an audio file it describes changed (the fingerprint the feature
    cache uses: a file replaced in place with its old mtime too), or when built under other
    competition settings (e.g. ``subsets`` now includes the noisy set)."""
    sources = comp.table_sources()
    stamp_path = comp.meta_path.with_suffix(".json")
    fingerprint = table_fingerprint(comp)
    csv_hash = sources_fingerprint(sources)
    if comp.meta_path.is_file():
        stamp = read_json_object(stamp_path) or {}
        if stamp.get("fingerprint") == fingerprint and stamp.get("sources_sha256") == csv_hash:
            table = read_meta(comp.meta_path)
            if stamp.get("audio_sha256") == _audio_sha256(comp, table):
                log.info("clip table: %s up to date", comp.meta_path)
                return table
            log.info("clip table: audio files changed since %s was built; rebuilding", comp.meta_path)
        elif stamp.get("fingerprint") != fingerprint:
            log.info(
                "clip table: competition settings changed since %s was built; rebuilding", comp.meta_path
            )
        else:
            log.info(
                "clip table: the contents of the raw CSV files changed since %s was built; rebuilding",
                comp.meta_path,
            )
    table = comp.parse_clip_table()
    with disk_full_as_error(comp.meta_path.parent, "the clip table", lambda: _table_bytes(table)):
        with atomic_path(comp.meta_path, suffix=".parquet") as tmp:
            write_meta(table, tmp)
        stamp = {"fingerprint": fingerprint, "sources_sha256": csv_hash, "clips": len(table)}
        stamp["audio_sha256"] = _audio_sha256(comp, table)
        atomic_write_json(stamp_path, stamp)
    counts = table.groupby(["split", "subset"]).size().to_dict()
    log.info(
        "clip table: wrote %s (%s)", comp.meta_path, ", ".join(f"{k[1]}: {v}" for k, v in counts.items())
    )
    return table


def prepare(
    competition: CompetitionConfig,
    features: FeatureConfig,
    workers: int | None = None,
    cache_device: str | None = None,
) -> Prepared:
    """Raw data, clip table, folds and feature cache; ``cache_device`` (``--cache-device``): build the
    cache with decoding threads and the log-mel on that device (``build_cache``'s ``device``)."""
    check_cache_device(cache_device)  # before the raw data: a wrong option fails at once
    comp = get_competition(competition)
    log.info("prepare: competition %s in %s", comp.name, comp.dir)
    waiting = f"prepare: {comp.dir} is being prepared by another process (raw data, clip table, folds)"
    with file_lock(comp.dir / "prepare.lock", "preparing the raw data, clip table and folds", waiting):
        comp.obtain()
        table = clip_table(comp)
        with disk_full_as_error(comp.dir, "the fold file", lambda: _table_bytes(table[["clip_id"]])):
            folds = ensure_folds(comp, table)
        if isinstance(comp, TableCompetition) and competition.test_labels:
            check_test_labels(comp, table)  # before any training: a run is scored on them at its end
    cache_columns = ("clip_id", "path", "split", "audio_issue", "start", "end")  # start/end: segments
    columns = [c for c in cache_columns if c in table.columns]
    cache_dir = build_cache(
        table[columns],
        comp.dir,
        features,
        workers=workers,
        rules=competition.audio_rules,
        device=cache_device,
    )
    skipped = report_cache(cache_dir)
    return Prepared(comp, table, folds, cache_dir, skipped)


def _table_bytes(table: pd.DataFrame) -> int:
    """A generous estimate of the bytes a table takes written out (its size in memory, twice)."""
    return 2 * int(table.memory_usage(deep=True).sum())


def report_cache(cache_dir: Path) -> frozenset[str]:
    """The training clips the cache skipped (unusable audio); its summary is logged by ``build_cache``."""
    skipped = frozenset(FeatureCache(cache_dir).skipped)
    if skipped:
        log.warning(
            "prepare: %d train clip(s) with unusable audio are left out of training (see %s)",
            len(skipped),
            cache_dir / REPORT,
        )
    return skipped


def bounded_clips(clip_ids: Iterable[str], max_clips: int | None) -> list[str]:
    """``train.max_clips``: at most ``max_clips`` of ``clip_ids`` (all when None or no more than
    that), sorted. Drawn at random with a fixed seed from the sorted ids, so every fold, seed and
    member of a run bounded alike gets the same clips (and a blend of them the same OOF clips)."""
    ids = sorted({str(c) for c in clip_ids})
    if max_clips is None or len(ids) <= max_clips:
        return ids
    chosen = np.random.default_rng(0).choice(len(ids), size=max_clips, replace=False)
    return [ids[i] for i in sorted(chosen)]


def run_clips(prepared: Prepared, tc: TrainConfig) -> list[str] | None:
    """The clips a run bounded by ``train.max_clips`` reads: its training clips (drawn from the fold
    file's, before unusable ones are left out, so members on other caches draw the same) and every
    test clip; None when the run is not bounded."""
    if tc.max_clips is None:
        return None
    kept = bounded_clips(load_folds(prepared.folds_path)["clip_id"], tc.max_clips)
    test = prepared.table.loc[prepared.table["split"] == "test", "clip_id"].astype(str)
    return sorted({*kept, *test})


def fold_data(prepared: Prepared, cfg: ExperimentConfig, fold: int) -> FoldData:
    comp = prepared.competition
    clips = comp.training_clips(prepared.table)
    # the fold file is the truth: a clip table's own "fold" column (predefined folds, as given) goes
    clips = clips.drop(columns="fold", errors="ignore")
    train = clips.merge(load_folds(prepared.folds_path), on="clip_id")
    if cfg.train.max_clips is not None:
        kept = bounded_clips(load_folds(prepared.folds_path)["clip_id"], cfg.train.max_clips)
        train = train[train["clip_id"].astype(str).isin(set(kept))].reset_index(drop=True)
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


def run_folds(cfg: ExperimentConfig, n_folds: int) -> list[int]:
    """The folds ``train.folds`` names (default: all); a ConfigError for one the competition lacks."""
    folds = cfg.train.folds if cfg.train.folds is not None else list(range(n_folds))
    bad = [f for f in folds if not 0 <= f < n_folds]
    if bad:
        raise ConfigError(f"train.folds: {bad} out of range; this competition has folds 0..{n_folds - 1}")
    return folds
