"""Several processes through ``torchrun``: data-parallel training (DDP) or one fold per process.

``./run.sh train --gpus 4`` re-launches itself under torchrun (``train/launch.py``: one machine, or
several with ``--nnodes``); each process then finds its rank in the environment. Only rank 0 writes
files; the others wait at barriers and read what it wrote, on every machine (so on several machines
the workspace is a folder they share: ``check_shared``). Without CUDA the processes run on the CPU
with the gloo backend (slow, meant for testing the multi-process paths).
"""

from __future__ import annotations

import ctypes
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from audiotag.core.errors import ConfigError
from audiotag.core.log import tag_process

log = logging.getLogger(__name__)

PARALLEL_MODES = ("ddp", "folds")
BARRIER_TIMEOUT = timedelta(hours=6)
T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    mode: str = "ddp"
    nodes: int = 1  # machines (torchrun's node groups)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def ddp(self) -> bool:
        return self.world > 1 and self.mode == "ddp"

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (on every rank)."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def from_main(self, make: Callable[[], T]) -> T:
        """What rank 0's ``make()`` returns, on every rank; the others do not call it (so write nothing)."""
        if self.world == 1:
            return make()
        box = [make() if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]


SINGLE = DistContext()


def launched_by_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def check_parallel_mode(mode: str) -> str:
    if mode not in PARALLEL_MODES:
        raise ConfigError(f"--parallel {mode!r}: expected one of {', '.join(PARALLEL_MODES)}")
    return mode


def setup(mode: str) -> DistContext:
    """Join the process group that torchrun prepared; a single process gets ``SINGLE``."""
    if not launched_by_torchrun():
        return SINGLE
    check_parallel_mode(mode)
    local_rank = int(os.environ["LOCAL_RANK"])
    die_with_launcher()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        # Rank 0 alone builds caches and fits linear probes while the others wait at a barrier: allow
        # that hours, not the default half hour (ten minutes with NCCL).
        dist.init_process_group(backend=backend, timeout=BARRIER_TIMEOUT)
    nodes = int(os.environ.get("GROUP_WORLD_SIZE", "1"))
    ctx = DistContext(dist.get_rank(), dist.get_world_size(), local_rank, mode, nodes)
    # One voice per machine: its first process logs, the others only warn; every line says whose it is.
    tag_process(f"[rank {ctx.rank}/{ctx.world}]", quiet=local_rank != 0)
    where = f", on {socket.gethostname()}, one of {nodes} machines" if nodes > 1 else ""
    log.info("process %d of %d (%s, local rank %d%s)", ctx.rank + 1, ctx.world, mode, local_rank, where)
    return ctx


def die_with_launcher() -> bool:
    """Have the kernel kill this rank when torchrun (its parent) dies; True where that applies.

    torchrun starts each rank in a session of its own, so when the launcher is killed hard (SIGKILL,
    the OOM killer) its ranks would otherwise train on, writing to the run folder that a rerun then
    resumes from at the same time. Checkpoints are written atomically, so being killed is safe.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        prctl = ctypes.CDLL(None).prctl
    except (OSError, AttributeError):
        return False
    launcher = os.getppid()
    pr_set_pdeathsig = 1
    if prctl(pr_set_pdeathsig, signal.SIGKILL) != 0:
        return False
    if os.getppid() != launcher:  # the launcher died before the request: no signal would come
        os.kill(os.getpid(), signal.SIGKILL)
    return True


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def device_for(ctx: DistContext, choice: str, setting: str = "train.device") -> torch.device:
    """The device of ``choice`` (auto, cpu, cuda); ``setting`` names the option it came from in the error."""
    if ctx.world > 1 and torch.cuda.is_available() and choice != "cpu":
        return torch.device("cuda", ctx.local_rank)
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{setting}: cuda requested but no CUDA GPU is visible; use auto or cpu")
    return torch.device("cuda" if choice in ("auto", "cuda") and torch.cuda.is_available() else "cpu")


def check_shared(ctx: DistContext, folder: Path) -> None:
    """Refuse to go on unless every machine's ``folder`` (its own view of the run's competition folder)
    is rank 0's, at the same path, and shows the files rank 0 writes there: rank 0 alone writes the
    run, the others read it (``last.pt`` to resume from, the settings it saved) by rank 0's paths.
    Rank 0 leaves a file there, each rank looks for it, rank 0 removes it."""
    if ctx.nodes == 1:
        return
    probe = ctx.from_main(lambda: _leave_probe(folder))
    seen = ctx.gather((probe.parent == folder and _sees(probe), str(folder), socket.gethostname()))
    if ctx.is_main:
        probe.unlink(missing_ok=True)
    blind = [f"rank {r} on {host} (its folder: {own})" for r, (ok, own, host) in enumerate(seen) if not ok]
    if blind:
        raise ConfigError(
            f"{probe.parent}: the files rank 0 (on {seen[0][2]}) writes there are not seen by "
            f"{', '.join(blind)}. On several machines the workspace must be one folder they all share, "
            "at the same path (a network file system; AUDIOTAG_WORKSPACE may point at it): rank 0 alone "
            "writes the run"
        )


def _leave_probe(folder: Path) -> Path:
    probe = folder / f".shared-check-{secrets.token_hex(8)}"
    probe.write_text(probe.name)
    return probe


def _sees(probe: Path, patience: float = 10.0) -> bool:
    """Whether ``probe`` is here (a network file system may show a new file a moment later)."""
    deadline = time.monotonic() + patience
    while not probe.is_file():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True
