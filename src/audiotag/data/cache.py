"""The feature cache: log-mel of every clip, computed once per feature key, read through a memory map.

Layout of ``<competition>/cache/<name>-<key>/``:

- ``frames.f16``: one contiguous little-endian float16 array (total_frames, n_mels), the frames of
  all clips one after the other in clip_id order, time-major and never padded;
- ``index.parquet``: clip_id, offset (first frame), n_frames;
- ``manifest.json``: the feature settings, sizes and ``complete: true``.

It is built in ``<cache_dir>.partial/`` and renamed into place when complete. While building, the
parent appends each clip's frames (and its frame count to ``lengths.i64``) and now and then records
``progress.json`` after an fsync, so a killed build resumes from the last record.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from audiotag.atomic import atomic_path, atomic_write_json
from audiotag.config import FeatureConfig
from audiotag.data.audio import load_audio
from audiotag.data.features import compute_logmel, make_extractor
from audiotag.errors import DataError

log = logging.getLogger(__name__)

FRAMES = "frames.f16"
INDEX = "index.parquet"
MANIFEST = "manifest.json"
PROGRESS = "progress.json"
LENGTHS = "lengths.i64"
DTYPE = np.dtype("<f2")
CHECKPOINT_EVERY = 256  # clips between fsync + progress record
PREPARE_HINT = "run ./run.sh prepare to (re)build it"


def cache_dir_for(competition_dir: Path, cfg: FeatureConfig) -> Path:
    return Path(competition_dir) / "cache" / cfg.cache_name()


# ----------------------------------------------------------------------------- building


def build_cache(
    clips: pd.DataFrame, competition_dir: Path, cfg: FeatureConfig, workers: int | None = None
) -> Path:
    """Compute the log-mel cache of ``clips`` (clip_id, path relative to ``competition_dir``).

    Returns the cache folder at once when it is complete for exactly these clip_ids; otherwise
    builds it, resuming an interrupted build of the same clips and settings.
    """
    order = _clip_order(clips)
    final = cache_dir_for(competition_dir, cfg)
    if _is_up_to_date(final, order["clip_id"].tolist()):
        log.info("feature cache: %s up to date (%d clips)", final, len(order))
        return final
    start = time.monotonic()
    staging = final.with_name(final.name + ".partial")
    n_done = _resume_point(staging, _order_hash(order, cfg), cfg.n_mels)
    workers = _n_workers(workers, len(order) - n_done)
    log.info(
        "feature cache: %d clips, %d worker(s), %s -> %s",
        len(order),
        workers,
        f"resuming after {n_done} clips" if n_done else "from scratch",
        final,
    )
    _fill(staging, order, n_done, Path(competition_dir), cfg, workers)
    _finish(staging, final, order["clip_id"].tolist(), cfg)
    size_mb = sum(p.stat().st_size for p in final.iterdir()) / 2**20
    log.info("feature cache: wrote %s (%.1f MB) in %.1f s", final, size_mb, time.monotonic() - start)
    return final


def _clip_order(clips: pd.DataFrame) -> pd.DataFrame:
    missing = {"clip_id", "path"} - set(clips.columns)
    if missing:
        raise DataError(f"clip table lacks column(s) {sorted(missing)}; re-run `./run.sh prepare`")
    order = clips[["clip_id", "path"]].astype(str).sort_values("clip_id", kind="stable")
    dupes = order["clip_id"][order["clip_id"].duplicated()].unique()
    if len(dupes):
        raise DataError(f"clip table lists clip_id(s) {list(dupes[:5])} more than once; list each clip once")
    return order.reset_index(drop=True)


def _order_hash(order: pd.DataFrame, cfg: FeatureConfig) -> str:
    digest = hashlib.sha1(cfg.key().encode())
    for clip_id, path in zip(order["clip_id"], order["path"], strict=True):
        digest.update(f"\n{clip_id}\t{path}".encode())
    return digest.hexdigest()


def _is_up_to_date(cache_dir: Path, clip_ids: list[str]) -> bool:
    try:
        manifest = _read_manifest(cache_dir)
        index_ids = pd.read_parquet(cache_dir / INDEX, columns=["clip_id"])["clip_id"].tolist()
        size = (cache_dir / FRAMES).stat().st_size
    except (DataError, OSError, ValueError):
        return False
    return index_ids == clip_ids and size == manifest["bytes"]


def _n_workers(workers: int | None, n_todo: int) -> int:
    if workers is None:
        workers = os.cpu_count() or 1
    return max(1, min(workers, n_todo))


def _resume_point(staging: Path, order_hash: str, n_mels: int) -> int:
    """Clips already in ``staging`` for this clip order; the files are cut back to that point."""
    progress = _read_json(staging / PROGRESS)
    if progress and progress.get("order_hash") == order_hash:
        n_done, n_bytes = int(progress["n_done"]), int(progress["bytes"])
        if _truncate(staging / LENGTHS, n_done * 8) and _truncate(staging / FRAMES, n_bytes):
            lengths = np.fromfile(staging / LENGTHS, dtype="<i8")
            if int(lengths.sum()) * n_mels * DTYPE.itemsize == n_bytes:
                return n_done
        log.warning("feature cache: %s is inconsistent with its progress record; starting over", staging)
    elif staging.exists():
        log.info("feature cache: %s is from other clips or settings; starting over", staging)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    (staging / FRAMES).touch()
    (staging / LENGTHS).touch()
    return 0


def _truncate(path: Path, size: int) -> bool:
    if not path.is_file() or path.stat().st_size < size:
        return False
    os.truncate(path, size)
    return True


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class _Writer:
    """Appends clips to the staging files and records progress after an fsync."""

    def __init__(self, staging: Path, order_hash: str, n_done: int) -> None:
        self.staging = staging
        self.order_hash = order_hash
        self.n_done = n_done
        self.bytes = os.path.getsize(staging / FRAMES)
        self.frames = open(staging / FRAMES, "ab")  # noqa: SIM115 - closed in close()
        self.lengths = open(staging / LENGTHS, "ab")  # noqa: SIM115

    def append(self, frames: np.ndarray) -> None:
        data = np.ascontiguousarray(frames, dtype=DTYPE)
        self.frames.write(data.tobytes())
        self.lengths.write(np.asarray([data.shape[0]], dtype="<i8").tobytes())
        self.n_done += 1
        self.bytes += data.nbytes
        if self.n_done % CHECKPOINT_EVERY == 0:
            self.checkpoint()

    def checkpoint(self) -> None:
        for f in (self.frames, self.lengths):
            f.flush()
            os.fsync(f.fileno())
        progress = {"order_hash": self.order_hash, "n_done": self.n_done, "bytes": self.bytes}
        atomic_write_json(self.staging / PROGRESS, progress)

    def close(self) -> None:
        self.frames.close()
        self.lengths.close()


def _fill(
    staging: Path, order: pd.DataFrame, n_done: int, root: Path, cfg: FeatureConfig, workers: int
) -> None:
    writer = _Writer(staging, _order_hash(order, cfg), n_done)
    todo = list(zip(order["clip_id"][n_done:], order["path"][n_done:], strict=True))
    results = _compute(todo, root, cfg, workers)
    try:
        with tqdm(total=len(order), initial=n_done, unit="clip", desc="log-mel cache") as bar:
            for (clip_id, _), result in zip(todo, results, strict=True):
                if isinstance(result, str):
                    raise DataError(
                        f"{result}\n(clip {clip_id}; the partial cache in {staging} is kept and "
                        "`./run.sh prepare` resumes from it once the file is fixed or removed from the list)"
                    )
                writer.append(result)
                bar.update()
        writer.checkpoint()
    except BaseException:
        _checkpoint_quietly(writer)
        raise
    finally:
        results.close()  # stops the worker pool at once on error
        writer.close()


def _checkpoint_quietly(writer: _Writer) -> None:
    try:
        writer.checkpoint()
    except OSError as exc:
        log.warning("feature cache: could not record progress (%s); a rerun resumes from further back", exc)


def _compute(
    todo: list[tuple[str, str]], root: Path, cfg: FeatureConfig, workers: int
) -> Iterator[np.ndarray | str]:
    """Log-mel (float16) of each clip in order, or the error message of a clip that failed."""
    paths = [str(root / rel) for _, rel in todo]
    if workers <= 1:
        yield from _compute_here(paths, cfg)
        return
    ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
    chunksize = max(1, min(16, len(paths) // (workers * 8)))
    with ctx.Pool(workers, initializer=_init_worker, initargs=(cfg.model_dump_json(),)) as pool:
        yield from pool.imap(_worker_task, paths, chunksize=chunksize)


def _compute_here(paths: list[str], cfg: FeatureConfig) -> Iterator[np.ndarray | str]:
    threads = torch.get_num_threads()
    # One clip's STFT is far too small for intra-op threads, which only add overhead (a lot of it when
    # the cores are busy), so compute on one thread and restore the setting afterwards.
    torch.set_num_threads(1)
    try:
        extractor = make_extractor(cfg)
        yield from (_clip_features(path, cfg, extractor) for path in paths)
    finally:
        torch.set_num_threads(threads)


_worker_state: dict[str, Any] = {}


def _init_worker(cfg_json: str) -> None:
    torch.set_num_threads(1)  # one process per core, and see _compute_here
    cfg = FeatureConfig.model_validate_json(cfg_json)
    _worker_state.update(cfg=cfg, extractor=make_extractor(cfg))


def _worker_task(path: str) -> np.ndarray | str:
    return _clip_features(path, _worker_state["cfg"], _worker_state["extractor"])


def _clip_features(path: str, cfg: FeatureConfig, extractor: torch.nn.Module) -> np.ndarray | str:
    # Errors travel back as messages so the parent raises one DataError naming the file.
    try:
        wave = load_audio(Path(path), cfg.sample_rate)
        return compute_logmel(wave, cfg, extractor).astype(DTYPE)
    except DataError as exc:
        return str(exc)
    except Exception as exc:
        return f"{path}: feature extraction failed ({type(exc).__name__}: {exc})"


def _finish(staging: Path, final: Path, clip_ids: list[str], cfg: FeatureConfig) -> None:
    lengths = np.fromfile(staging / LENGTHS, dtype="<i8")
    offsets = (np.cumsum(lengths) - lengths).astype(np.int64)
    index = pd.DataFrame({"clip_id": clip_ids, "offset": offsets, "n_frames": lengths})
    with atomic_path(staging / INDEX, suffix=".parquet") as tmp:
        index.to_parquet(tmp, index=False)
    total = int(lengths.sum())
    manifest = {
        "features": cfg.model_dump(mode="json"),
        "key": cfg.key(),
        "name": cfg.cache_name(),
        "n_clips": len(clip_ids),
        "total_frames": total,
        "n_mels": cfg.n_mels,
        "dtype": "float16",
        "byteorder": "little",
        "layout": "frames.f16 is (total_frames, n_mels), clips in index order",
        "bytes": total * cfg.n_mels * DTYPE.itemsize,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "complete": True,
    }
    atomic_write_json(staging / MANIFEST, manifest)
    (staging / PROGRESS).unlink()
    (staging / LENGTHS).unlink()
    if final.exists():
        shutil.rmtree(final)  # incomplete, or built for another clip list
    os.replace(staging, final)


# ----------------------------------------------------------------------------- reading


def _read_manifest(cache_dir: Path) -> dict[str, Any]:
    manifest = _read_json(cache_dir / MANIFEST)
    if manifest is None:
        raise DataError(f"{cache_dir}: feature cache missing (no readable {MANIFEST}); {PREPARE_HINT}")
    if manifest.get("complete") is not True:
        raise DataError(f"{cache_dir}: feature cache is incomplete; {PREPARE_HINT}")
    return manifest


class FeatureCache:
    """Read-only access to a built cache; ``get`` returns float16 views into a memory map.

    Picklable for DataLoader workers: the memory map is dropped when pickled and reopened lazily.
    """

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = Path(cache_dir)
        self.manifest = _read_manifest(self.cache_dir)
        index = self._read_index()
        self._clip_ids: list[str] = index["clip_id"].astype(str).tolist()
        self._row = {clip_id: i for i, clip_id in enumerate(self._clip_ids)}
        self._offsets = index["offset"].to_numpy(np.int64)
        self._lengths = index["n_frames"].to_numpy(np.int64)
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

    def __contains__(self, clip_id: object) -> bool:
        return clip_id in self._row

    def __len__(self) -> int:
        return len(self._clip_ids)

    def _index_of(self, clip_id: str) -> int:
        try:
            return self._row[clip_id]
        except KeyError:
            raise KeyError(f"clip {clip_id!r} is not in the feature cache {self.cache_dir}") from None

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
