"""What ``pretrain`` reads: a competition's cached clips and any audio folders, as one set of units.

A competition (``-c COMP --clips train,test``) is prepared as ``prepare`` does it, with the
pretraining front-end, and its feature cache is read as it is: the clips of the chosen splits that
the cache holds (skipped training clips are absent; zero-filled test clips, which hold no audio, are
left out). Audio folders (``--audio DIR ...``: every audio file under them, at any depth) get a
feature cache of their own, built by the same machinery (``data/cache_build.py``: parallel,
resumable, problem audio reported) in ``<workspace>/_audio/<hash of the folders>/cache/``, so every
pretraining run over the same folders shares it.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from audiotag.competitions.file_formats import AUDIO_SUFFIXES
from audiotag.config.schema import AudioRules
from audiotag.core.atomic import atomic_write_json
from audiotag.core.errors import ConfigError, DataError
from audiotag.core.paths import workspace_root
from audiotag.data.audio import DEFAULT_RULES
from audiotag.data.cache_build import build_cache
from audiotag.data.cache_reader import ZERO_FILLED, FeatureCache
from audiotag.data.units import CacheSet
from audiotag.runs.prepare import prepare
from audiotag.train.pretrain_config import PretrainConfig

log = logging.getLogger(__name__)

AUDIO_WORKSPACE = "_audio"


@dataclass
class Sources:
    """The caches and the clip keys (``"<cache number>/<clip_id>"``) a run pretrains on."""

    caches: CacheSet
    keys: list[str]
    counts: dict[str, int] = field(default_factory=dict)  # clips per source, for the record

    def describe(self) -> str:
        return ", ".join(f"{n} clips from {name}" for name, n in self.counts.items())

    def fingerprint(self) -> str:
        """SHA-1 of the clip list and each cache's clip-list hash (its audio files and settings)."""
        digest = hashlib.sha1("\n".join(self.keys).encode())
        for cache in self.caches.caches:
            digest.update(str(cache.manifest.get("clips_hash", "")).encode())
        return digest.hexdigest()


def competition_clips(cfg: PretrainConfig, workers: int | None) -> tuple[FeatureCache, list[str], str]:
    """The competition's cache (prepared first) and its clips of the configured splits."""
    assert cfg.competition is not None
    prepared = prepare(cfg.competition, cfg.features, workers=workers)
    cache = FeatureCache(prepared.cache_dir)
    table = prepared.table
    chosen = table[table["split"].isin(cfg.clips)]["clip_id"].astype(str)
    ids = [c for c in chosen if cache.has(c) and cache.status(c) != ZERO_FILLED]
    if not ids:
        which = "/".join(cfg.clips)
        raise DataError(
            f"competition {cfg.competition.name}: no usable {which} clips in {prepared.cache_dir}"
        )
    return cache, ids, f"{cfg.competition.name} {'+'.join(cfg.clips)}"


def audio_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ConfigError(f"--audio {folder}: no such folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise DataError(f"--audio {folder}: no audio files ({', '.join(AUDIO_SUFFIXES)}) under it")
    return files


def folders_workspace(folders: list[Path]) -> Path:
    digest = hashlib.sha1("\n".join(str(f) for f in folders).encode()).hexdigest()[:12]
    return workspace_root() / AUDIO_WORKSPACE / digest


def folder_clips(
    folders: list[Path], cfg: PretrainConfig, rules: AudioRules, workers: int | None
) -> tuple[FeatureCache, list[str]]:
    """The feature cache of every audio file under ``folders`` (built or resumed), and its clips."""
    rows = []
    for k, folder in enumerate(folders):
        for path in audio_files(folder):
            rows.append({"clip_id": f"d{k}/{path.relative_to(folder).as_posix()}", "path": str(path)})
    table = pd.DataFrame(rows)
    table["split"] = "train"  # unusable audio is skipped, never zero-filled
    workspace = folders_workspace(folders)
    workspace.mkdir(parents=True, exist_ok=True)
    atomic_write_json(workspace / "folders.json", {"folders": [str(f) for f in folders], "files": len(table)})
    cache_dir = build_cache(table, workspace, cfg.features, workers=workers, rules=rules)
    cache = FeatureCache(cache_dir)
    ids = [c for c in table["clip_id"] if cache.has(c)]
    if not ids:
        raise DataError(f"--audio: none of the {len(table)} files has usable audio (see {cache_dir})")
    return cache, ids


def gather_sources(cfg: PretrainConfig, workers: int | None = None) -> Sources:
    """Prepare every source (caches built where missing) and list the clips to pretrain on."""
    caches: list[FeatureCache] = []
    keys: list[str] = []
    counts: dict[str, int] = {}
    if cfg.competition is not None and cfg.clips:
        cache, ids, name = competition_clips(cfg, workers)
        keys += [CacheSet.key(len(caches), c) for c in ids]
        caches.append(cache)
        counts[name] = len(ids)
    if cfg.audio:
        folders = [Path(f).expanduser().resolve() for f in cfg.audio]
        rules = cfg.competition.audio_rules if cfg.competition is not None else DEFAULT_RULES
        cache, ids = folder_clips(folders, cfg, rules, workers)
        keys += [CacheSet.key(len(caches), c) for c in ids]
        caches.append(cache)
        counts[" + ".join(str(f) for f in folders)] = len(ids)
    sources = Sources(CacheSet(caches), keys, counts)
    log.info("pretrain: %s", sources.describe())
    return sources
