"""Several processes through ``torchrun``: data-parallel training (DDP) or one fold per process.

``./run.sh train --gpus 4`` re-launches itself with ``python -m torch.distributed.run --standalone
--nproc_per_node 4``; each process then finds its rank in the environment. Only rank 0 writes files;
the others wait at barriers. Without CUDA the processes run on the CPU with the gloo backend (slow,
meant for testing the multi-process paths).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from audiotag.core.errors import ConfigError

log = logging.getLogger(__name__)

PARALLEL_MODES = ("ddp", "folds")
BARRIER_TIMEOUT = timedelta(hours=6)


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    mode: str = "ddp"

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
    ctx = DistContext(dist.get_rank(), dist.get_world_size(), local_rank, mode)
    log.info("process %d of %d (%s, local rank %d)", ctx.rank + 1, ctx.world, mode, local_rank)
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


def relaunch_with_torchrun(n_procs: int, argv: list[str]) -> None:
    """Replace this process by ``torchrun --nproc_per_node n_procs -m audiotag ARGV`` (never returns)."""
    if not torch.cuda.is_available():
        log.warning("--gpus %d: no CUDA GPU visible; running %d CPU processes (gloo)", n_procs, n_procs)
    elif torch.cuda.device_count() < n_procs:
        raise ConfigError(f"--gpus {n_procs}: only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={n_procs}",
        "-m",
        "audiotag",
        *argv,
    ]
    log.info("launching: %s", " ".join(command))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, command)
