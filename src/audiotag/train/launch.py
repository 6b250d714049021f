"""How one command becomes several training processes: it re-launches itself under ``torchrun``.

One machine (``--gpus N``): ``torchrun --standalone --nproc_per_node N``. Several machines
(``--nnodes N --node-rank R --rdzv-endpoint HOST:PORT``, the same command on each machine but for
``--node-rank``): torchrun's c10d rendezvous, whose store node 0's torchrun hosts at HOST:PORT
(``is_host``, rather than torchrun's guess from the host name, which containers often defeat); the
others wait for it to answer first, so an address that is wrong or blocked is named in a clear error
instead of torchrun's. torchrun numbers the processes itself (``--node_rank`` is only read by its
static rendezvous, so it is not passed). ``--max-restarts K``: torchrun restarts the processes of
every machine up to K times after one fails or a machine drops out (and comes back: a job restarted
on it), and each fold resumes from its ``last.pt``. What a process does once launched:
``train/distributed.py``.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from dataclasses import dataclass

import torch

from audiotag.core.errors import ConfigError

log = logging.getLogger(__name__)

RDZV_ID = "audiotag"  # one job per endpoint: node 0's torchrun hosts the store, which ends with the job
RDZV_TIMEOUT = 600.0  # torchrun's own default for waiting for every machine to join


@dataclass(frozen=True)
class Nodes:
    """The machines of one job: ``count`` of them, this one numbered ``rank``, meeting at ``endpoint``."""

    count: int = 1
    rank: int = 0
    endpoint: str | None = None  # HOST:PORT; None: one machine (torchrun --standalone)
    max_restarts: int = 0
    timeout: float = RDZV_TIMEOUT  # seconds to wait for the rendezvous (every machine joining)

    @property
    def address(self) -> tuple[str, int]:
        assert self.endpoint is not None
        host, _, port = self.endpoint.rpartition(":")
        return host.strip("[]"), int(port)


ONE_MACHINE = Nodes()


def check_nodes(
    nnodes: int | None,
    node_rank: int | None,
    endpoint: str | None,
    max_restarts: int = 0,
    timeout: float = RDZV_TIMEOUT,
) -> Nodes:
    """The machines the options describe; a ConfigError naming the option that is missing or wrong."""
    needs = "--nnodes N (how many machines), --node-rank R (this one's number) and --rdzv-endpoint HOST:PORT"
    if max_restarts < 0:
        raise ConfigError(f"--max-restarts {max_restarts}: expected 0 or more")
    if timeout <= 0:
        raise ConfigError(f"--rdzv-timeout {timeout:g}: expected a number of seconds above 0")
    if nnodes is None:
        given = [f"--node-rank {node_rank}"] if node_rank is not None else []
        given += [f"--rdzv-endpoint {endpoint}"] if endpoint is not None else []
        if given:
            raise ConfigError(
                f"{' and '.join(given)} without --nnodes: training on several machines takes {needs}"
            )
        return Nodes(max_restarts=max_restarts, timeout=timeout)
    if nnodes < 1:
        raise ConfigError(f"--nnodes {nnodes}: expected 1 or more machines")
    if endpoint is None:
        raise ConfigError(
            f"--nnodes {nnodes} needs --rdzv-endpoint HOST:PORT: the address of machine 0 (--node-rank 0) "
            "and a free port, reachable from every machine, e.g. --rdzv-endpoint node0.cluster:29500"
        )
    if node_rank is None:
        raise ConfigError(
            f"--nnodes {nnodes} needs --node-rank R, this machine's number from 0 to {nnodes - 1} "
            "(0: the machine at --rdzv-endpoint, which hosts the rendezvous)"
        )
    if not 0 <= node_rank < nnodes:
        raise ConfigError(
            f"--node-rank {node_rank}: out of range for --nnodes {nnodes}; the machines are numbered "
            f"0 to {nnodes - 1}"
        )
    host, _, port = endpoint.rpartition(":")
    if not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"--rdzv-endpoint {endpoint!r}: expected HOST:PORT, machine 0's name or address and a free "
            "port, e.g. node0.cluster:29500 or 10.0.0.5:29500"
        )
    return Nodes(nnodes, node_rank, endpoint, max_restarts, timeout)


def launch(n_procs: int, argv: list[str], nodes: Nodes = ONE_MACHINE) -> None:
    """Replace this process by torchrun running ``audiotag ARGV`` in ``n_procs`` processes on each of
    ``nodes`` (never returns); return at once when one process is asked for, or when this process is
    one of torchrun's already."""
    if n_procs < 1:
        raise ConfigError(f"--gpus {n_procs}: expected 1 or more")
    if "LOCAL_RANK" in os.environ or (n_procs == 1 and nodes.endpoint is None and not nodes.max_restarts):
        return
    if not torch.cuda.is_available():
        log.warning("--gpus %d: no CUDA GPU visible; running %d CPU processes (gloo)", n_procs, n_procs)
    elif torch.cuda.device_count() < n_procs:
        raise ConfigError(f"--gpus {n_procs}: only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    if nodes.endpoint is not None:
        if nodes.rank == 0:
            log.info(
                "machine 0 of %d: hosting the rendezvous at %s; waiting up to %g s for the others",
                nodes.count,
                nodes.endpoint,
                nodes.timeout,
            )
        else:
            wait_for_endpoint(nodes)
        # torchrun's default, the training processes sharing the rendezvous store, breaks a restart
        # with a machine that came back: its new torchrun waits for the address of a store that node 0's
        # keeps from the round before, which it never republishes (pytorch#135712; seen with 2.14).
        os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    command = torchrun_command(n_procs, argv, nodes)
    log.info("launching: %s", " ".join(command))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, command)


def torchrun_command(n_procs: int, argv: list[str], nodes: Nodes = ONE_MACHINE) -> list[str]:
    """``python -m torch.distributed.run ... -m audiotag ARGV`` for ``n_procs`` processes per machine."""
    command = [sys.executable, "-m", "torch.distributed.run"]
    if nodes.endpoint is None:
        command.append("--standalone")
    else:
        command += [
            f"--nnodes={nodes.count}",
            "--rdzv_backend=c10d",
            f"--rdzv_endpoint={nodes.endpoint}",
            f"--rdzv_id={RDZV_ID}",
            f"--rdzv_conf=is_host={int(nodes.rank == 0)},join_timeout={round(nodes.timeout)}",
        ]
    if nodes.max_restarts:
        command.append(f"--max_restarts={nodes.max_restarts}")
    return [*command, f"--nproc_per_node={n_procs}", "-m", "audiotag", *argv]


def wait_for_endpoint(nodes: Nodes) -> None:
    """Return once machine 0's rendezvous answers at ``nodes.endpoint``; a ConfigError naming it when
    nothing has within ``nodes.timeout`` seconds (machine 0 may start after this one)."""
    host, port = nodes.address
    deadline = time.monotonic() + nodes.timeout
    waiting = False
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(5.0, left))):
                return
        except OSError as exc:
            error = exc
        if left <= 0:
            raise ConfigError(
                f"--rdzv-endpoint {nodes.endpoint}: nothing answered there within {nodes.timeout:g} s "
                f"({error}). Start machine 0 (--node-rank 0) on {host} with the same --rdzv-endpoint; "
                f"check that {host} names it from this machine and that port {port} is open between the "
                "machines (--rdzv-timeout SECONDS waits longer)"
            )
        if not waiting:
            log.info(
                "machine %d of %d: waiting for the rendezvous at %s", nodes.rank, nodes.count, nodes.endpoint
            )
            waiting = True
        time.sleep(max(0.0, min(1.0, deadline - time.monotonic())))
