"""Reading the feature cache: where it lives, its on-disk format, and ``FeatureCache``.

Layout of ``<competition>/cache/<name>-<key>/`` (written by ``data/cache_build.py``):

- ``frames.f16``: one contiguous little-endian float16 array (total_frames, n_mels), the frames of
  all cached clips one after the other in clip_id order, time-major and never padded;
- ``index.parquet``: one row per cached clip: clip_id, offset (first frame), n_frames, status
  (``"ok"`` or the audio flags, comma-separated, see ``data/audio.py``), source_rate, seconds;
- ``report.csv``: clip_id, path, split, status, reason, audio_issue for every clip that is not plain
  ``"ok"`` (flagged, zero-filled or skipped) or that the clip table marks with an ``audio_issue``;
- ``manifest.json``: the feature settings, the audio rules, the hash of the clip list, the count of
  clips per status, sizes and ``complete: true``.

Counts per status (which clips are skipped or zero-filled: ``data/cache_build.py``) are in the
manifest and ``FeatureCache.status_counts``; a clip flagged with several flags counts once per flag.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from audiotag.config.schema import FeatureConfig
from audiotag.core.atomic import read_json_object
from audiotag.core.errors import DataError
from audiotag.data.audio import FLAGS

FRAMES = "frames.f16"
INDEX = "index.parquet"
MANIFEST = "manifest.json"
REPORT = "report.csv"
DTYPE = np.dtype("<f2")
PREPARE_HINT = "run ./run.sh prepare to (re)build it"

OK, SKIPPED, ZERO_FILLED = "ok", "skipped", "zero_filled"
STATUS_ORDER = (OK, *FLAGS, ZERO_FILLED, SKIPPED)
REPORT_COLUMNS = ["clip_id", "path", "split", "status", "reason", "audio_issue"]


def cache_dir_for(competition_dir: Path, cfg: FeatureConfig) -> Path:
    return Path(competition_dir) / "cache" / cfg.cache_name()


def read_manifest(cache_dir: Path) -> dict[str, Any]:
    """The manifest of a complete cache; DataError when it is missing or the build never finished."""
    manifest = read_json_object(cache_dir / MANIFEST)
    if manifest is None:
        raise DataError(f"{cache_dir}: feature cache missing (no readable {MANIFEST}); {PREPARE_HINT}")
    if manifest.get("complete") is not True:
        raise DataError(f"{cache_dir}: feature cache is incomplete; {PREPARE_HINT}")
    return manifest


def disk_bytes(cache_dir: Path) -> int:
    """Bytes the cache folder takes on disk (its files' sizes)."""
    return sum(p.stat().st_size for p in Path(cache_dir).iterdir() if p.is_file())


def summary_text(cache_dir: Path, manifest: dict[str, Any]) -> str:
    """One line: clips per status, what happened to unusable ones, size on disk, the report's path."""
    counts = manifest.get("status_counts", {})
    parts = [f"{n} {status}" for status, n in counts.items() if status not in (ZERO_FILLED, SKIPPED)]
    if counts.get(ZERO_FILLED):
        parts.append(f"{counts[ZERO_FILLED]} test clip(s) zero-filled")
    if counts.get(SKIPPED):
        parts.append(f"{counts[SKIPPED]} train clip(s) skipped")
    listed = manifest.get("n_listed", manifest.get("n_clips", 0))
    text = f"{listed} clips: {', '.join(parts) or 'none'}; {disk_bytes(cache_dir) / 2**20:.1f} MB on disk"
    if set(counts) - {OK}:
        text += f"; details in {Path(cache_dir) / REPORT}"
    return text


class FeatureCache:
    """Read-only access to a built cache; ``get`` returns float16 views into a memory map.

    Picklable for DataLoader workers: the memory map is dropped when pickled and reopened lazily.
    """

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = Path(cache_dir)
        self.manifest = read_manifest(self.cache_dir)
        index = self._read_index()
        self._clip_ids: list[str] = index["clip_id"].astype(str).tolist()
        self._row = {clip_id: i for i, clip_id in enumerate(self._clip_ids)}
        self._offsets = index["offset"].to_numpy(np.int64)
        self._lengths = index["n_frames"].to_numpy(np.int64)
        statuses = index["status"] if "status" in index.columns else pd.Series(OK, index=index.index)
        self._status = statuses.astype(str).to_numpy()
        self._frames: np.ndarray | None = None
        self._check_size()

    def _read_index(self) -> pd.DataFrame:
        path = self.cache_dir / INDEX
        try:
            return pd.read_parquet(path)
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot read the cache index ({exc}); {PREPARE_HINT}") from None

    def _check_size(self) -> None:
        path = self.cache_dir / FRAMES
        size = path.stat().st_size if path.is_file() else -1
        expected = int(self._lengths.sum()) * self.n_mels * DTYPE.itemsize
        if size != self.manifest["bytes"] or size != expected:
            raise DataError(
                f"{path}: {size} bytes, expected {expected}; the cache is damaged — delete "
                f"{self.cache_dir} and {PREPARE_HINT}"
            )

    @property
    def frames(self) -> np.ndarray:
        """All frames, (total_frames, n_mels) float16, memory-mapped on first use."""
        if self._frames is None:
            shape = (int(self._lengths.sum()), self.n_mels)
            if shape[0] == 0:  # np.memmap cannot map an empty file
                self._frames = np.zeros(shape, dtype=DTYPE)
            else:
                self._frames = np.memmap(self.cache_dir / FRAMES, dtype=DTYPE, mode="r", shape=shape)
        return self._frames

    @property
    def clip_ids(self) -> list[str]:
        return list(self._clip_ids)

    @property
    def n_mels(self) -> int:
        return int(self.manifest["n_mels"])

    @property
    def config(self) -> FeatureConfig:
        return FeatureConfig.model_validate(self.manifest["features"])

    @property
    def status_counts(self) -> dict[str, int]:
        """Clips per status (``ok``, each audio flag, ``zero_filled``, ``skipped``) over the clip list."""
        return dict(self.manifest.get("status_counts", {}))

    def report(self) -> pd.DataFrame:
        """``report.csv``: every clip that is flagged, zero-filled, skipped or has a known audio issue."""
        path = self.cache_dir / REPORT
        if not path.is_file():
            return pd.DataFrame(columns=REPORT_COLUMNS)
        return pd.read_csv(path, dtype=str, keep_default_na=False)

    @property
    def skipped(self) -> list[str]:
        """Clips of the list that are not in the cache (unusable training audio)."""
        report = self.report()
        return report.loc[report["status"] == SKIPPED, "clip_id"].tolist()

    def has(self, clip_id: str) -> bool:
        """Whether ``clip_id`` has frames in the cache (False for a skipped or unknown clip)."""
        return clip_id in self._row

    def __contains__(self, clip_id: object) -> bool:
        return clip_id in self._row

    def __len__(self) -> int:
        return len(self._clip_ids)

    def _index_of(self, clip_id: str) -> int:
        try:
            return self._row[clip_id]
        except KeyError:
            raise KeyError(
                f"clip {clip_id!r} is not in the feature cache {self.cache_dir} (skipped clips are "
                f"listed in its {REPORT})"
            ) from None

    def status(self, clip_id: str) -> str:
        """``"ok"``, or the comma-separated flags of a cached clip (``zero_filled`` for a test clip)."""
        return str(self._status[self._index_of(clip_id)])

    def n_frames(self, clip_id: str) -> int:
        return int(self._lengths[self._index_of(clip_id)])

    def get(self, clip_id: str) -> np.ndarray:
        """(n_frames, n_mels) float16 view of one clip's log-mel."""
        i = self._index_of(clip_id)
        start = int(self._offsets[i])
        return self.frames[start : start + int(self._lengths[i])]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_frames"] = None
        return state
