"""Building the feature cache: the log-mel of every clip, computed once per feature key.

The on-disk format, and ``FeatureCache`` that reads it, are in ``data/cache_reader.py``.

Problem audio follows the rules of ``data/audio.py``. A clip whose audio is unusable (missing, empty,
undecodable) is *skipped* when it is a training clip: it is absent from the cache and
``FeatureCache.has`` answers False, so training leaves it out. A test clip (``split == "test"``) is
never dropped: unusable audio is replaced by ``fill_seconds`` of zeros and its status is
``zero_filled``, so it still gets a submission row. No clip stops the build; only a clip list of
which no clip is usable is an error. Counts per status appear in the log too.

The cache is a staged append store (``core/staged.py``: built in ``<cache_dir>.partial/`` under
``<cache_dir>.lock``, resumable, published whole), so a second process building it at once (two
``prepare``, or two ``train --folds``) logs that it waits, then uses the finished cache. Building
streams: worker processes decode and compute clips in chunks, at most ``4 * workers`` chunks are in
flight, and the parent appends each clip's frames to ``frames.f16`` and one JSON line to
``clips.jsonl`` as they arrive, so memory does not grow with the dataset; a resumed build checks
every recorded clip first (``data/cache_resume.py``). A worker process that dies (a decoder that
crashes) is replaced (``data/cache_compute.py`` computes the clips). With ``device`` set (``prepare
--cache-device cuda|cpu``) threads of this process decode instead (``_compute_threads`` there): the
same cache, its clip-list hash independent of the device.

The clip-list hash includes a fingerprint of every audio file (``data/fingerprint.py``), computed
on every ``prepare``. A full disk stops the build with the ``DataError`` of ``core/disk_full.py``,
the space needed estimated from the clips written so far (frames x mels x 2 bytes).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from audiotag.config.schema import AudioRules, FeatureConfig
from audiotag.core.atomic import atomic_path
from audiotag.core.disk_full import disk_full_as_error, size_text
from audiotag.core.errors import ConfigError, DataError
from audiotag.core.log import progress
from audiotag.core.staged import (
    StagedWriter,
    appending,
    build_lock,
    publish,
    staging_folder,
)
from audiotag.data.audio import DEFAULT_RULES
from audiotag.data.cache_compute import (
    ClipResult,
    Task,
    _compute_here,
    _compute_parallel,
    _compute_threads,
)
from audiotag.data.cache_reader import (
    DTYPE,
    FRAMES,
    INDEX,
    OK,
    PREPARE_HINT,
    REPORT,
    REPORT_COLUMNS,
    SKIPPED,
    STATUS_ORDER,
    ZERO_FILLED,
    cache_dir_for,
    read_manifest,
    summary_text,
)
from audiotag.data.cache_resume import RECORDS, frames_hash, read_records, resume_point
from audiotag.data.fingerprint import audio_fingerprints

log = logging.getLogger(__name__)

CHECKPOINT_EVERY = 256  # clips between fsync + progress record


def build_cache(
    clips: pd.DataFrame,
    competition_dir: Path,
    cfg: FeatureConfig,
    workers: int | None = None,
    rules: AudioRules = DEFAULT_RULES,
    device: str | None = None,
) -> Path:
    """Compute the log-mel cache of ``clips`` (clip_id, path relative to ``competition_dir``).

    Optional columns: ``split`` (``"test"`` clips are zero-filled instead of skipped when their audio
    is unusable; a table without it is treated as training clips), ``audio_issue`` (a known
    problem, copied into the report) and ``start``/``end`` (seconds: the clip is that segment of its
    file, decoded alone; NaN or absent: the whole file). Returns the cache folder at once when it is
    complete for exactly these clips and rules; otherwise builds it, resuming an interrupted build of
    the same clips. ``device``: None, or ``"cuda"``/``"cpu"`` for the threads design (module docstring).
    """
    device = check_cache_device(device)
    order = _clip_order(clips)
    final = cache_dir_for(competition_dir, cfg)
    clips_hash = _order_hash(order, cfg, rules, Path(competition_dir))
    if _is_up_to_date(final, clips_hash):
        _log_up_to_date(final, "up to date")
        return final
    waiting = f"feature cache: {final} is being built by another process"
    with build_lock(final, f"building {final.name}", waiting) as died:
        if _is_up_to_date(final, clips_hash):  # the process we waited for built it
            _log_up_to_date(final, "built by another process meanwhile; using it")
            return final
        if died:
            log.info("feature cache: the build by pid %s stopped without finishing", died.get("pid", "?"))
        start = time.monotonic()
        staging = staging_folder(final)
        n_done = resume_point(staging, clips_hash, order, cfg.cache_width)
        workers = _n_workers(workers, len(order) - n_done)
        how = (
            f"{workers} worker process(es)"
            if device is None
            else f"{workers} decoding thread(s), {_device_work(cfg, device)} (no crash isolation)"
        )
        if device is not None and device.startswith("cuda") and cfg.resampler == "soxr_hq":
            log.info(
                "feature cache: soxr resamples on the CPU in the decoding threads; with --set "
                "features.resampler=sinc the GPU resamples too (a cache of its own, within 0.1 dB)"
            )
        log.info(
            "feature cache: %d clips, %s, %s -> %s",
            len(order),
            how,
            f"resuming after {n_done} clips" if n_done else "from scratch",
            final,
        )
        _fill(staging, order, n_done, Path(competition_dir), cfg, rules, workers, clips_hash, device)
        with disk_full_as_error(staging, "the feature cache", _cache_bytes_needed(staging, order, cfg)):
            _finish(staging, final, order, cfg, rules, clips_hash)
    manifest = read_manifest(final)
    log.info("feature cache: wrote %s in %.1f s", final, time.monotonic() - start)
    log.log(_summary_level(manifest), "feature cache: %s", summary_text(final, manifest))
    return final


def _device_work(cfg: FeatureConfig, device: str) -> str:
    """What the threads design computes on ``device`` in this process, for the log."""
    if cfg.resampler == "sinc":
        return f"resampling{' and log-mel' if cfg.cache == 'logmel' else ''} on {device} in this process"
    if cfg.cache == "wave":
        return "the float16 wave in the threads"
    return f"log-mel on {device} in this process"


def check_cache_device(device: str | None) -> str | None:
    """``device`` checked for the threads design (``--cache-device``): None, ``cpu``, ``cuda[:N]``."""
    if device is None:
        return None
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"--cache-device {device!r}: expected cpu or cuda (or cuda:N)") from None
    if parsed.type not in ("cpu", "cuda"):
        raise ConfigError(f"--cache-device {device!r}: expected cpu or cuda (or cuda:N)")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"--cache-device {device}: no CUDA GPU is available to this process; use "
                "--cache-device cpu, or leave the option out to build the cache in worker processes"
            )
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ConfigError(
                f"--cache-device {device}: there are only {torch.cuda.device_count()} CUDA device(s)"
            )
    return str(parsed)


def _log_up_to_date(final: Path, what: str) -> None:
    manifest = read_manifest(final)
    log.log(_summary_level(manifest), "feature cache: %s %s: %s", final, what, summary_text(final, manifest))


def _cache_bytes_needed(staging: Path, order: pd.DataFrame, cfg: FeatureConfig) -> Callable[[], str | None]:
    """The cache's size, estimated from the clips written so far: frames x mels x 2 bytes."""

    def estimate() -> str | None:
        records = read_records(staging / RECORDS) or []
        frames = [max(int(r.get("n", -1)), 0) for r in records]
        return _estimate_text(sum(frames), len(frames), len(order), cfg.cache_width)

    return estimate


def _estimate_text(frames_done: int, clips_done: int, n_clips: int, width: int) -> str | None:
    if not clips_done:
        return None
    total = round(frames_done / clips_done * n_clips)
    return (
        f"about {size_text(total * width * DTYPE.itemsize)} in all ({total} frames x {width} mels x "
        f"{DTYPE.itemsize} bytes, estimated from the {clips_done} of {n_clips} clips written)"
    )


def _clip_order(clips: pd.DataFrame) -> pd.DataFrame:
    missing = {"clip_id", "path"} - set(clips.columns)
    if missing:
        raise DataError(f"clip table lacks column(s) {sorted(missing)}; re-run `./run.sh prepare`")
    order = clips[["clip_id", "path"]].astype(str)
    order["split"] = clips["split"].astype(str) if "split" in clips.columns else "train"
    issues = clips["audio_issue"] if "audio_issue" in clips.columns else pd.Series("", index=clips.index)
    order["audio_issue"] = issues.fillna("").astype(str)
    for column in ("start", "end"):
        order[column] = clips[column].astype(float) if column in clips.columns else np.nan
    order = order.sort_values("clip_id", kind="stable")
    dupes = order["clip_id"][order["clip_id"].duplicated()].unique()
    if len(dupes):
        raise DataError(f"clip table lists clip_id(s) {list(dupes[:5])} more than once; list each clip once")
    return order.reset_index(drop=True)


def _order_hash(order: pd.DataFrame, cfg: FeatureConfig, rules: AudioRules, root: Path) -> str:
    """Everything that decides the cached tensors: settings, rules, and each clip's id, path, split,
    audio fingerprint and segment (only where it has one, so whole-file clips hash as they always did)."""
    digest = hashlib.sha1(cfg.key().encode())
    digest.update(json.dumps(rules.model_dump(), sort_keys=True).encode())
    prints = audio_fingerprints([root / rel for rel in order["path"]])
    rows = zip(order["clip_id"], order["path"], order["split"], prints, _segments(order), strict=True)
    for clip_id, path, split, fp, (start, end) in rows:
        segment = "" if start is None and end is None else f"\t{start!r}\t{end!r}"
        digest.update(f"\n{clip_id}\t{path}\t{int(split == 'test')}\t{fp}{segment}".encode())
    return digest.hexdigest()


def _segments(order: pd.DataFrame) -> list[tuple[float | None, float | None]]:
    """Each clip's (start, end) in seconds, None where it has none."""
    return [
        (None if np.isnan(a) else float(a), None if np.isnan(b) else float(b))
        for a, b in zip(order["start"], order["end"], strict=True)
    ]


def _is_up_to_date(cache_dir: Path, clips_hash: str) -> bool:
    try:
        manifest = read_manifest(cache_dir)
        size = (cache_dir / FRAMES).stat().st_size
    except (DataError, OSError):
        return False
    return (
        manifest.get("clips_hash") == clips_hash
        and size == manifest["bytes"]
        and (cache_dir / INDEX).is_file()
    )


def _n_workers(workers: int | None, n_todo: int) -> int:
    if workers is None:
        workers = os.cpu_count() or 1
    return max(1, min(workers, n_todo))


class _Writer(StagedWriter):
    """Appends clips to the staging files and records progress after an fsync. Each record carries
    what a resumed build checks (``data/cache_resume.py``); a full disk raises DataError."""

    def __init__(self, staging: Path, clips_hash: str, n_done: int, order: pd.DataFrame, width: int) -> None:
        super().__init__(staging, (FRAMES, RECORDS))
        self.clips_hash = clips_hash
        self.n_done = n_done
        self.clip_ids = order["clip_id"]
        self.width = width
        self.bytes = os.path.getsize(staging / FRAMES)
        self.n_frames = self.bytes // (width * DTYPE.itemsize)
        self.frames_done_here, self.clips_done_here = 0, 0  # for the size estimate of a full disk
        self.records_bytes = os.path.getsize(staging / RECORDS)
        self.frames, self.records = self.files[FRAMES], self.files[RECORDS]

    def append(self, result: ClipResult) -> None:
        n = 0 if result.frames is None else int(result.frames.shape[0])
        with disk_full_as_error(self.staging, "the feature cache", lambda: self._estimate(n)):
            frames = result.frames
            data = b"" if frames is None else np.ascontiguousarray(frames, dtype=DTYPE).tobytes()
            record = {
                "id": str(self.clip_ids.iat[self.n_done]),
                "off": self.n_frames,
                "h": frames_hash(data),
                **result.record(),
            }
            line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
            if data:
                self.frames.write(data)
            self.records.write(line)
        self.bytes += len(data)
        self.n_frames += n
        self.frames_done_here += n
        self.clips_done_here += 1
        self.records_bytes += len(line)
        self.n_done += 1
        if self.n_done % CHECKPOINT_EVERY == 0:
            self.checkpoint()

    def _estimate(self, pending_frames: int) -> str | None:
        clips = self.clips_done_here + (1 if pending_frames else 0)
        return _estimate_text(self.frames_done_here + pending_frames, clips, len(self.clip_ids), self.width)

    def checkpoint(self) -> None:
        with disk_full_as_error(self.staging, "the feature cache", lambda: self._estimate(0)):
            self.record_progress()

    def progress(self) -> dict[str, Any]:
        return {
            "order_hash": self.clips_hash,
            "n_done": self.n_done,
            "bytes": self.bytes,
            "records_bytes": self.records_bytes,
        }


def _fill(
    staging: Path,
    order: pd.DataFrame,
    n_done: int,
    root: Path,
    cfg: FeatureConfig,
    rules: AudioRules,
    workers: int,
    clips_hash: str,
    device: str | None = None,
) -> None:
    writer = _Writer(staging, clips_hash, n_done, order, cfg.cache_width)
    # made one at a time as the workers take them: the task list is never held in memory whole
    rest = order.iloc[n_done:]
    tasks = (
        Task(str(root / rel), split == "test", start, end)
        for rel, split, (start, end) in zip(rest["path"], rest["split"], _segments(rest), strict=True)
    )
    results = _compute(tasks, len(order) - n_done, cfg, rules, workers, device)
    counts: Counter[str] = Counter()
    # closing(results) stops the worker pool at once on error, after the last progress record
    with (
        contextlib.closing(results),
        appending(writer, "feature cache", log),
        progress(total=len(order), initial=n_done, unit="clip", desc="log-mel cache") as bar,
    ):
        for result in results:
            writer.append(result)
            if result.status != OK:
                counts.update(result.status.split(","))
                bar.set_postfix({k: counts[k] for k in STATUS_ORDER if counts[k]}, refresh=False)
            bar.update()


def _compute(
    tasks: Iterable[Task],
    n_tasks: int,
    cfg: FeatureConfig,
    rules: AudioRules,
    workers: int,
    device: str | None = None,
) -> Iterator[ClipResult]:
    """The result of each task, in order: in ``workers`` processes, or with ``device`` set in
    ``workers`` decoding threads and the log-mel on that device (``_compute_threads``)."""
    if device is not None:
        yield from _compute_threads(tasks, cfg, rules, workers, device)
    elif workers <= 1:
        yield from _compute_here(tasks, cfg, rules)
    else:
        yield from _compute_parallel(tasks, cfg, rules, workers, n_tasks=n_tasks)


def _finish(
    staging: Path, final: Path, order: pd.DataFrame, cfg: FeatureConfig, rules: AudioRules, clips_hash: str
) -> None:
    records = read_records(staging / RECORDS)
    if (
        records is None
        or len(records) != len(order)
        or [str(r.get("id")) for r in records] != order["clip_id"].tolist()
    ):
        raise DataError(f"{staging}: the clip records are damaged; delete the folder and {PREPARE_HINT}")
    table = order.assign(
        n_frames=[int(r["n"]) for r in records],
        status=[str(r["status"]) for r in records],
        reason=[str(r["reason"]) for r in records],
        source_rate=[int(r["sr"]) for r in records],
        seconds=[float(r["sec"]) for r in records],
    )
    usable = ~table["status"].isin([SKIPPED, ZERO_FILLED])
    if len(table) and not usable.any():
        shutil.rmtree(staging, ignore_errors=True)  # nothing worth resuming from
        examples = "; ".join(f"{p}: {r}" for p, r in zip(table["path"][:3], table["reason"][:3], strict=True))
        raise DataError(
            f"none of the {len(table)} clips has usable audio (e.g. {examples}); check the data folder "
            "and re-download (`./run.sh prepare`)"
        )
    kept = table[table["n_frames"] >= 0]
    lengths = kept["n_frames"].to_numpy(np.int64)
    index = pd.DataFrame(
        {
            "clip_id": kept["clip_id"].to_numpy(),
            "offset": (np.cumsum(lengths) - lengths).astype(np.int64),
            "n_frames": lengths,
            "status": kept["status"].to_numpy(),
            "source_rate": kept["source_rate"].to_numpy(np.int32),
            "seconds": kept["seconds"].to_numpy(np.float32),
        }
    )
    with atomic_path(staging / INDEX, suffix=".parquet") as tmp:
        index.to_parquet(tmp, index=False)
    report = table[(table["status"] != OK) | (table["audio_issue"] != "")]
    with atomic_path(staging / REPORT, suffix=".csv") as tmp:
        report[REPORT_COLUMNS].to_csv(tmp, index=False)
    counts: Counter[str] = Counter()
    for status in table["status"]:
        counts.update(status.split(","))
    total = int(lengths.sum())
    manifest = {
        "features": cfg.model_dump(mode="json"),
        "key": cfg.key(),
        "name": cfg.cache_name(),
        "audio_rules": rules.model_dump(),
        "clips_hash": clips_hash,
        "n_listed": len(table),
        "n_clips": len(index),
        "status_counts": {k: counts[k] for k in STATUS_ORDER if counts[k]},
        "total_frames": total,
        "n_mels": cfg.cache_width,
        "dtype": "float16",
        "byteorder": "little",
        "layout": "frames.f16 is (total_frames, n_mels), clips in index order"
        + (" (wave cache: one sample per row, n_mels 1)" if cfg.cache == "wave" else ""),
        "bytes": total * cfg.cache_width * DTYPE.itemsize,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "complete": True,
    }
    publish(staging, final, manifest, scratch=(RECORDS,))


def _summary_level(manifest: dict[str, Any]) -> int:
    counts = manifest.get("status_counts", {})
    return logging.WARNING if counts.get(SKIPPED) or counts.get(ZERO_FILLED) else logging.INFO
