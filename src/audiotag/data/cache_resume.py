"""Checking a staged feature cache before resuming its build: each line of ``clips.jsonl`` records its
clip's id, first frame and a hash of its frames, and every recorded clip is checked against the clip
list and the frames on disk, so a damaged ``.partial`` is rebuilt from the first clip that does not
match, never taken as it is (``data/cache_build.py`` builds the cache)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd

from audiotag.core.atomic import atomic_write_json
from audiotag.core.staged import PROGRESS, cut_to, read_progress, start_over
from audiotag.data.cache_reader import DTYPE, FRAMES

log = logging.getLogger("audiotag.data.cache_build")  # the build's log: one logger for one build

RECORDS = "clips.jsonl"


def resume_point(staging: Path, clips_hash: str, order: pd.DataFrame, n_mels: int) -> int:
    """Clips already in ``staging`` for this clip list, all of them checked; the files are cut back
    to that point."""
    progress = read_progress(staging)
    if progress and progress.get("order_hash") == clips_hash:
        n_done, n_bytes = int(progress.get("n_done", -1)), int(progress.get("bytes", -1))
        records_bytes = int(progress.get("records_bytes", -1))
        if cut_to(staging / RECORDS, records_bytes) and cut_to(staging / FRAMES, n_bytes):
            records = read_records(staging / RECORDS)
            if records is not None and len(records) == n_done:
                good, problem = _verified_prefix(staging, records, order, n_mels, n_bytes)
                if good == n_done:
                    return n_done
                log.warning(
                    "feature cache: %s is damaged: %s; keeping the %d clip(s) before it, rebuilding the rest",
                    staging,
                    problem,
                    good,
                )
                if good:
                    return _cut_back(staging, records[:good], n_mels)
        log.warning("feature cache: %s is inconsistent with its progress record; starting over", staging)
    elif staging.exists():
        log.info("feature cache: %s is from other clips or settings; starting over", staging)
    return start_over(staging, (FRAMES, RECORDS))


def _verified_prefix(
    staging: Path, records: list[dict[str, Any]], order: pd.DataFrame, n_mels: int, n_bytes: int
) -> tuple[int, str]:
    """How many leading records match the clip list and the frames on disk, and what fails after them."""
    row_bytes = n_mels * DTYPE.itemsize
    offset = 0
    with open(staging / FRAMES, "rb") as f:
        for i, record in enumerate(records):
            try:
                clip_id, first, n = str(record["id"]), int(record["off"]), int(record["n"])
                digest = record["h"]
            except (KeyError, TypeError, ValueError):
                return i, f"record {i} lacks its clip id, offset or hash"
            if i >= len(order) or clip_id != order["clip_id"].iat[i]:
                expected = order["clip_id"].iat[i] if i < len(order) else "nothing"
                return i, f"record {i} is clip {clip_id!r}, the clip list has {expected!r} there"
            if first != offset:
                return i, f"clip {clip_id!r} is recorded at frame {first}, its frames start at {offset}"
            size = max(n, 0) * row_bytes
            if (offset * row_bytes) + size > n_bytes:
                return i, f"clip {clip_id!r} runs past the end of {FRAMES}"
            if frames_hash(f.read(size)) != digest:
                return i, f"the frames of clip {clip_id!r} do not match their recorded hash"
            offset += max(n, 0)
    return len(records), ""


def frames_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=12).hexdigest()


def _cut_back(staging: Path, records: list[dict[str, Any]], n_mels: int) -> int:
    """Keep the first ``records`` only (files cut and progress re-recorded); their count."""
    lines = b"".join((json.dumps(r, separators=(",", ":")) + "\n").encode() for r in records)
    with open(staging / RECORDS, "r+b") as f:
        f.write(lines)
        f.truncate(len(lines))
    n_bytes = sum(max(int(r["n"]), 0) for r in records) * n_mels * DTYPE.itemsize
    os.truncate(staging / FRAMES, n_bytes)
    progress = read_progress(staging) or {}
    progress.update(n_done=len(records), bytes=n_bytes, records_bytes=len(lines))
    atomic_write_json(staging / PROGRESS, progress)
    return len(records)


def read_records(path: Path) -> list[dict[str, Any]] | None:
    try:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f]
    except (OSError, ValueError):
        return None
