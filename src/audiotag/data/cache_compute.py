"""Computing the log-mel of clips for the feature cache: one clip, or many in worker processes.

``compute_clip`` decodes one file (or a segment of it) under the audio rules (``data/audio.py``) and
returns its frames or why it cannot be used. ``_compute_parallel`` runs chunks of clips in a pool of
worker processes (forkserver), at most ``CHUNKS_PER_WORKER`` chunks per worker in flight, and yields
the results in order. A worker process that dies (a decoder that crashes) is replaced; the clips it
held are retried one at a time in a fresh process, and a clip that kills that one too is treated as
undecodable. Workers keep freed memory (``keep_freed_memory``): page faults were half the log-mel time.

``_compute_threads`` is the opt-in alternative (``build_cache(..., device=...)``): threads of this
process decode and resample (soundfile and soxr release the GIL) and the calling thread computes the
log-mel on ``device`` (a GPU, or the CPU), so no wave crosses a process boundary. With
``features.resampler: sinc`` the threads only decode: the calling thread resamples on ``device`` too.
The results are the same as the pool's (byte-equal on the CPU), but a decoder that crashes kills the
whole process (a rerun resumes from the last progress record).
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import multiprocessing as mp
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, NamedTuple

import numpy as np
import torch

from audiotag.config.schema import AudioRules, FeatureConfig
from audiotag.core.errors import DataError
from audiotag.data.audio import DEFAULT_RULES, UNDECODABLE, Decoded, UnusableAudio, decode
from audiotag.data.cache_reader import (
    DTYPE,
    SKIPPED,
    ZERO_FILLED,
)
from audiotag.data.features import compute_logmel, make_extractor
from audiotag.data.resample import resample

log = logging.getLogger(__name__)

CHUNKS_PER_WORKER = 4  # chunks in flight per worker: keeps workers busy, bounds the parent's memory
CLIPS_PER_THREAD = 4  # decoded clips in flight per decoding thread (threads design)


class Task(NamedTuple):
    """One clip to compute; a plain ``(path, is_test)`` tuple is a whole file (``Task(*t)`` reads both)."""

    path: str  # absolute
    is_test: bool
    start: float | None = None  # the segment of the file, in seconds (None: its beginning / its end)
    end: float | None = None


class ClipResult(NamedTuple):
    """What the cache stores for one clip; ``frames`` is None for a skipped clip."""

    frames: np.ndarray | None  # (n_frames, n_mels) float16
    status: str
    reason: str
    source_rate: int
    seconds: float

    def record(self) -> dict[str, Any]:
        n = -1 if self.frames is None else int(self.frames.shape[0])
        return {
            "n": n,
            "status": self.status,
            "reason": self.reason,
            "sr": self.source_rate,
            "sec": self.seconds,
        }


def compute_clip(
    path: str,
    is_test: bool,
    cfg: FeatureConfig,
    extractor: torch.nn.Module,
    rules: AudioRules = DEFAULT_RULES,
    start: float | None = None,
    end: float | None = None,
) -> ClipResult:
    """Decode one file (or its segment ``start``-``end`` seconds) and compute its float16 log-mel,
    applying the audio rules; never raises.

    This is the function the cache's workers run (one thread each: see ``_compute_here``); the threads
    design (``_compute_threads``) runs its two halves, ``decode_clip`` and ``clip_result``, in two threads.
    """
    return clip_result(decode_clip(path, cfg, rules, start, end), path, is_test, cfg, extractor, rules)


class Failure(NamedTuple):
    """Why a clip cannot be used: ``kind`` (missing, empty, undecodable) and the detail."""

    kind: str
    detail: str


def decode_clip(
    path: str, cfg: FeatureConfig, rules: AudioRules, start: float | None = None, end: float | None = None
) -> Decoded | Failure:
    """The first half of ``compute_clip``: the decoded clip, or why it is unusable; never raises."""
    try:
        return decode(path, cfg.sample_rate, rules, start, end, resample=cfg.resampler == "soxr_hq")
    except Exception as exc:
        return _failure(exc)


def clip_result(
    decoded: Decoded | Failure,
    path: str,
    is_test: bool,
    cfg: FeatureConfig,
    extractor: torch.nn.Module,
    rules: AudioRules,
) -> ClipResult:
    """The second half of ``compute_clip``: the clip's frames (on the extractor's device) or the
    result of unusable audio; never raises."""
    if not isinstance(decoded, Failure):
        try:
            frames = _features(decoded.wave, decoded.rate, path, cfg, extractor)
            return ClipResult(
                frames, decoded.status, decoded.reason, decoded.source_rate, round(decoded.seconds, 4)
            )
        except Exception as exc:
            decoded = _failure(exc)
    return unusable_result(is_test, decoded.kind, decoded.detail, cfg, extractor, rules)


def _failure(exc: Exception) -> Failure:
    if isinstance(exc, UnusableAudio):
        return Failure(exc.kind, exc.detail)
    # a decoder or front-end failure on odd input: the same rule as undecodable
    return Failure(UNDECODABLE, f"feature extraction failed ({type(exc).__name__}: {exc})")


def unusable_result(
    is_test: bool, kind: str, detail: str, cfg: FeatureConfig, extractor: torch.nn.Module, rules: AudioRules
) -> ClipResult:
    """A training clip is skipped; a test clip becomes ``rules.fill_seconds`` of zeros."""
    reason = f"{kind}: {detail}"
    if not is_test:
        return ClipResult(None, SKIPPED, reason, 0, 0.0)
    zeros = np.zeros(max(1, round(rules.fill_seconds * cfg.sample_rate)), dtype=np.float32)
    frames = _features(zeros, cfg.sample_rate, "zeros", cfg, extractor)
    return ClipResult(frames, ZERO_FILLED, reason, 0, 0.0)


def _features(
    wave: np.ndarray, rate: int, path: str, cfg: FeatureConfig, extractor: torch.nn.Module
) -> np.ndarray:
    if rate != cfg.sample_rate:  # features.resampler: sinc, on the extractor's device
        with torch.inference_mode():
            device = next(iter(extractor.buffers())).device
            resampled = resample(torch.from_numpy(wave).to(device), rate, cfg.sample_rate)
            out = resampled[:, None] if cfg.cache == "wave" else extractor(resampled[None])[0]
            frames = out.to(torch.float16).cpu().numpy()
    elif cfg.cache == "wave":  # the model's front-end computes the log-mel on the training device
        frames = np.asarray(wave, dtype=DTYPE)[:, None]
    else:
        frames = compute_logmel(wave, cfg, extractor).astype(DTYPE)
    if not np.isfinite(frames).all():  # e.g. float samples so large that their power overflows
        peak = float(np.max(np.abs(wave))) if wave.size else 0.0
        raise UnusableAudio(path, UNDECODABLE, f"log-mel is not finite (sample peak {peak:.3g})")
    return frames


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed buffers of up to 32 MB for reuse; True where it applies.

    By default glibc hands large freed blocks back to the kernel, so the next clip's equally large
    buffers (a 44.1 kHz STFT is about 5 MB) are page-faulted and zeroed again: measured, that was
    over half of a clip's log-mel time. Kept memory is bounded by the largest clip's working set.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 256 << 20))


def prepare_compute_process() -> None:
    """One torch thread (one clip's STFT is far too small for intra-op threads, which only add
    overhead, a lot of it when the cores are busy) and ``keep_freed_memory``."""
    torch.set_num_threads(1)
    keep_freed_memory()


def _compute_here(tasks: Iterable[Task], cfg: FeatureConfig, rules: AudioRules) -> Iterator[ClipResult]:
    threads = torch.get_num_threads()  # restored afterwards: this is the caller's own process
    prepare_compute_process()
    try:
        extractor = make_extractor(cfg)
        yield from (_run(Task(*task), cfg, extractor, rules) for task in tasks)
    finally:
        torch.set_num_threads(threads)


def _compute_threads(
    tasks: Iterable[Task], cfg: FeatureConfig, rules: AudioRules, threads: int, device: str | torch.device
) -> Iterator[ClipResult]:
    """Results in task order: ``threads`` threads decode (at most ``CLIPS_PER_THREAD`` clips each in
    flight), and this thread computes each clip's log-mel with an extractor on ``device``.

    A wave cache needs no log-mel: its float16 samples are made in the decoding threads (unless this
    thread resamples: ``features.resampler: sinc``). On the CPU this thread computes with one torch
    thread, as a pool worker does (the caller's count is restored).
    """
    torch_threads = torch.get_num_threads()
    prepare_compute_process()
    pool = ThreadPoolExecutor(threads, thread_name_prefix="audiotag-decode")
    try:
        extractor = make_extractor(cfg).to(device)
        wave = cfg.cache == "wave" and cfg.resampler == "soxr_hq"
        remaining = (Task(*task) for task in tasks)
        ahead = threads * CLIPS_PER_THREAD
        pending: deque[tuple[Task, Future[Decoded | Failure | ClipResult]]] = deque()
        while True:
            for task in itertools.islice(remaining, ahead - len(pending)):
                if wave:
                    future = pool.submit(_run, task, cfg, extractor, rules)
                else:
                    future = pool.submit(decode_clip, task.path, cfg, rules, task.start, task.end)
                pending.append((task, future))
            if not pending:
                return
            task, future = pending.popleft()
            done = future.result()  # never raises: decode_clip and _run catch everything
            if isinstance(done, ClipResult):
                yield done
            else:
                yield clip_result(done, task.path, task.is_test, cfg, extractor, rules)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(torch_threads)


def _pool(workers: int, init_args: tuple[str, dict[str, Any]]) -> ProcessPoolExecutor:
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        # Workers fork from a server that has imported torch and this module once, so a pool starts in
        # a fraction of a second instead of each worker importing torch (seconds on a busy machine).
        ctx.set_forkserver_preload(["__main__", __name__])
    else:
        ctx = mp.get_context("spawn")
    return ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=init_args)


def _compute_parallel(
    tasks: Iterable[Task],
    cfg: FeatureConfig,
    rules: AudioRules,
    workers: int,
    run_chunk: Callable[[list[Task]], list[ClipResult]] | None = None,
    n_tasks: int | None = None,
) -> Iterator[ClipResult]:
    """Results in task order from a process pool with a bounded number of chunks in flight.

    ``n_tasks`` sizes the chunks when ``tasks`` is an iterator; ``run_chunk`` replaces the worker
    function (tests use it to kill a worker).
    """
    run_chunk = run_chunk or _worker_chunk
    init_args = (cfg.model_dump_json(), rules.model_dump())
    if n_tasks is None:
        tasks = list(tasks)
        n_tasks = len(tasks)
    chunksize = max(1, min(16, n_tasks // (workers * 8)))
    remaining = iter(tasks)
    chunks = iter(lambda: list(itertools.islice(remaining, chunksize)), [])
    ahead = workers * CHUNKS_PER_WORKER
    pool = _pool(workers, init_args)
    pending: deque[tuple[list[Task], Future[list[ClipResult]]]] = deque()
    try:
        while True:
            for chunk in itertools.islice(chunks, ahead - len(pending)):
                pending.append((chunk, pool.submit(run_chunk, chunk)))
            if not pending:
                return
            chunk, future = pending.popleft()
            try:
                results = future.result()
            except BrokenProcessPool:
                log.warning("feature cache: a worker process died; retrying its clips one at a time")
                pool.shutdown(wait=True, cancel_futures=True)
                check_workers_start(init_args)  # a pool that cannot work at all must not blame the clips
                lost: list[Task] = []  # tasks of failed chunks, run together in one process
                pending.appendleft((chunk, future))
                for tried, outcome in pending:
                    if outcome.done() and not outcome.cancelled() and outcome.exception() is None:
                        yield from _isolated(lost, cfg, rules, run_chunk, init_args)
                        lost = []
                        yield from outcome.result()
                    else:
                        lost += tried
                yield from _isolated(lost, cfg, rules, run_chunk, init_args)
                pending.clear()
                pool = _pool(workers, init_args)
            else:
                yield from results
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _canary() -> bool:
    return True


def check_workers_start(init_args: tuple[str, dict[str, Any]]) -> None:
    """Raise when fresh worker processes die before doing any work (then no clip is to blame)."""
    pool = _pool(1, init_args)
    try:
        pool.submit(_canary).result()
    except BrokenProcessPool:
        raise DataError(
            "feature cache: worker processes die before doing any work, so no clip can be blamed. If "
            "you call audiotag from a script of your own, put that code under `if __name__ == "
            "'__main__':` (worker processes import your script), or build with one process (--workers 1)"
        ) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _isolated(
    tasks: list[Task],
    cfg: FeatureConfig,
    rules: AudioRules,
    run_chunk: Callable[[list[Task]], list[ClipResult]],
    init_args: tuple[str, dict[str, Any]],
) -> Iterator[ClipResult]:
    """The tasks in turn in one fresh process; a task that kills it counts as undecodable."""
    i = 0
    while i < len(tasks):
        pool = _pool(1, init_args)
        try:
            futures = [pool.submit(run_chunk, [task]) for task in tasks[i:]]
            for future in futures:
                path, is_test = tasks[i][:2]
                i += 1
                try:
                    yield future.result()[0]
                except BrokenProcessPool:
                    log.warning("feature cache: %s crashed the worker process; treated as undecodable", path)
                    detail = "decoding it crashed the worker process"
                    yield unusable_result(is_test, UNDECODABLE, detail, cfg, make_extractor(cfg), rules)
                    break
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


_worker_state: dict[str, Any] = {}


def _init_worker(cfg_json: str, rules: dict[str, Any]) -> None:
    prepare_compute_process()
    cfg = FeatureConfig.model_validate_json(cfg_json)
    _worker_state.update(cfg=cfg, extractor=make_extractor(cfg), rules=AudioRules(**rules))


def _worker_chunk(tasks: list[Task]) -> list[ClipResult]:
    state = _worker_state
    return [_run(Task(*task), state["cfg"], state["extractor"], state["rules"]) for task in tasks]


def _run(task: Task, cfg: FeatureConfig, extractor: torch.nn.Module, rules: AudioRules) -> ClipResult:
    return compute_clip(task.path, task.is_test, cfg, extractor, rules, task.start, task.end)
