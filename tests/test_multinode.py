"""Training on several machines: two "nodes" as two local torchrun invocations meeting at 127.0.0.1
(c10d rendezvous, gloo on the CPU, one process each), and the options' errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.conftest import PYTHON, subprocess_env

pytestmark = pytest.mark.soak  # tests/conftest.py: left out of ./run.sh test unless --soak

# Every run here: the same tiny fold, so their results compare; one thread, so they compare exactly.
SETTINGS = [
    *("competition.n_folds=3", "competition.generator.train_per_class=12"),
    *("competition.generator.test_per_class=2", "competition.generator.max_duration=3.0"),
    *("model.channels=[8,16]", "model.embedding_dim=16", "train.epochs=3", "train.batch_size=4"),
    *("train.patience=3", "train.folds=[0]", "train.threads=1", "train.checkpoint_every_steps=1"),
]

# Put on PYTHONPATH, it records every write under AUDIT_WORKSPACE with the writer's RANK (Python's
# audit hooks: open for writing, mkdir, rename/replace, remove, rmtree), in every process torchrun starts.
AUDIT_HOOK = """
import os, sys
_WS, _LOG = os.environ.get("AUDIT_WORKSPACE"), os.environ.get("AUDIT_LOG")
_WRITES = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_EVENTS = {"os.rename", "os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree", "os.truncate"}
_busy = []
def _hook(event, args):
    if _busy:
        return
    if event == "open":
        path, mode, flags = args
        if isinstance(mode, str) and not set(mode) & set("wax+"):
            return
        if mode is None and not (flags or 0) & _WRITES:
            return
    elif event in _EVENTS:
        path = args[0]
    else:
        return
    if not isinstance(path, (str, bytes, os.PathLike)):
        return
    _busy.append(1)
    try:
        where = os.path.realpath(os.fsdecode(path))
        if where.startswith(_WS + os.sep):
            with open(_LOG, "a") as log:
                log.write(os.environ.get("RANK", "-") + "\\t" + event + "\\t" + where + "\\n")
    finally:
        _busy.pop()
if _WS and _LOG:
    _WS = os.path.realpath(_WS)
    sys.addaudithook(_hook)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(run: str, *extra: str) -> list[str]:
    args = [PYTHON, "-m", "audiotag", "prepare", "train", "-c", "demo", "--workers", "1", "--run-name", run]
    for item in SETTINGS:
        args += ["--set", item]
    return [*args, *extra]


def audited_env(ws: Path) -> dict[str, str]:
    hook = ws / "hook"
    hook.mkdir(parents=True, exist_ok=True)
    (hook / "sitecustomize.py").write_text(AUDIT_HOOK)
    env = subprocess_env(ws)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(hook), env.get("PYTHONPATH", "")) if p)
    env["AUDIT_WORKSPACE"], env["AUDIT_LOG"] = str(ws / "competition"), str(ws / "writes.tsv")
    return env


def start_node(ws: Path, run: str, rank: int, port: int, tag: str = "", *extra: str) -> subprocess.Popen:
    nodes = ["--nnodes", "2", "--node-rank", str(rank), "--rdzv-endpoint", f"127.0.0.1:{port}", *extra]
    out, err = (open(ws / f"node{rank}{tag}.{kind}", "w") for kind in ("out", "err"))  # noqa: SIM115
    return subprocess.Popen(command(run, *nodes), env=audited_env(ws), stdout=out, stderr=err)


def wait_all(ws: Path, procs: dict[str, subprocess.Popen]) -> None:
    for name, proc in procs.items():
        assert proc.wait(timeout=900) == 0, (ws / f"{name}.err").read_text()[-4000:]


def fold_result(run_dir: Path) -> tuple[list[float], pd.DataFrame]:
    history = json.loads((run_dir / "fold0" / "done.json").read_text())["history"]
    return [h["loss"] for h in history], pd.read_parquet(run_dir / "fold0" / "oof.parquet")


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One workspace: a run by two nodes, and the same run by one node with two processes."""
    ws = tmp_path_factory.mktemp("multinode")
    port = free_port()
    wait_all(ws, {"node0": start_node(ws, "nodes", 0, port), "node1": start_node(ws, "nodes", 1, port)})
    single = subprocess.run(
        command("single", "--gpus", "2"), env=subprocess_env(ws), capture_output=True, text=True
    )
    assert single.returncode == 0, single.stderr[-4000:]
    return ws


@pytest.mark.slow
def test_two_nodes_write_one_run_equal_to_two_processes_on_one(two_nodes: Path) -> None:
    runs = two_nodes / "competition" / "demo" / "runs"
    writes = [line.split("\t") for line in (two_nodes / "writes.tsv").read_text().splitlines()]
    others = [w for w in writes if w[0] not in ("0", "-")]
    assert not others, others  # global rank 1 (local rank 0 of its node) wrote nothing at all
    assert any(w[0] == "0" and "/runs/nodes/" in w[2] for w in writes)
    files = sorted(
        p.relative_to(runs / "nodes").as_posix() for p in (runs / "nodes").rglob("*") if p.is_file()
    )
    assert [f for f in files if "tfevents" not in f] == [
        "config.yaml", "fold0/best.pt", "fold0/done.json", "fold0/oof.parquet", "fold0/test.parquet",
        "owner.lock", "run.json",
    ]  # fmt: skip
    assert len([f for f in files if "tfevents" in f]) == 1
    assert not list((runs.parent).glob(".shared-check-*"))
    outs = [(two_nodes / f"node{r}.out").read_text() for r in (0, 1)]
    assert sum(out.count("run nodes: CV") for out in outs) == 1  # one report, by global rank 0
    for rank in (0, 1):  # each node's lines say whose they are
        assert f"[rank {rank}/2] INFO" in (two_nodes / f"node{rank}.err").read_text()
    (loss_n, oof_n), (loss_s, oof_s) = fold_result(runs / "nodes"), fold_result(runs / "single")
    assert json.loads((runs / "nodes" / "fold0" / "done.json").read_text())["processes"] == 2
    assert loss_n == pytest.approx(loss_s, rel=1e-6)
    pd.testing.assert_frame_equal(oof_n, oof_s, rtol=1e-5)


@pytest.mark.slow
def test_a_killed_node_restarted_resumes_the_fold(two_nodes: Path) -> None:
    """SIGKILL node 1 once rank 0 wrote a mid-epoch checkpoint; node 0's torchrun (--max-restarts 1)
    waits for it, node 1's command started again rejoins, and the fold resumes from last.pt and ends
    where the uninterrupted two-node run ended."""
    ws, port, restarts = two_nodes, free_port(), ("--max-restarts", "1")
    last = ws / "competition" / "demo" / "runs" / "killed" / "fold0" / "last.pt"
    node0 = start_node(ws, "killed", 0, port, "k", *restarts)
    node1 = start_node(ws, "killed", 1, port, "k", *restarts)
    deadline, seen = time.time() + 600, 0
    while True:
        assert node0.poll() is None and node1.poll() is None, (ws / "node1k.err").read_text()[-3000:]
        assert time.time() < deadline, "no mid-epoch checkpoint appeared"
        mtime = last.stat().st_mtime_ns if last.exists() else 0
        if mtime != seen:
            seen = mtime
            try:
                partial = torch.load(last, weights_only=True)["state"].get("partial")
            except Exception:  # a checkpoint being replaced: read the next one
                partial = None
            if partial:
                break
        time.sleep(0.05)
    node1.kill()  # its torchrun: its rank dies with it
    node1.wait()
    node1 = start_node(ws, "killed", 1, port, "b", *restarts)
    wait_all(ws, {"node0k": node0, "node1b": node1})
    assert "fold 0: resuming from" in (ws / "node0k.err").read_text()
    runs = ws / "competition" / "demo" / "runs"
    (loss_k, oof_k), (loss_n, oof_n) = fold_result(runs / "killed"), fold_result(runs / "nodes")
    assert loss_k == pytest.approx(loss_n, rel=1e-5)
    pd.testing.assert_frame_equal(oof_k, oof_n, rtol=1e-4)


def test_node_options_are_checked() -> None:
    from audiotag.core.errors import ConfigError
    from audiotag.train.launch import check_nodes

    cases = [
        ((None, 1, None), "--node-rank 1 without --nnodes"),
        ((None, None, "h:29500"), "--rdzv-endpoint h:29500 without --nnodes"),
        ((2, 2, "h:29500"), "--node-rank 2: out of range for --nnodes 2; the machines are numbered 0 to 1"),
        ((2, -1, "h:29500"), "--node-rank -1: out of range"),
        ((2, None, "h:29500"), "--nnodes 2 needs --node-rank R"),
        ((2, 0, None), "--nnodes 2 needs --rdzv-endpoint HOST:PORT"),
        ((2, 0, "h"), "--rdzv-endpoint 'h': expected HOST:PORT"),
        ((2, 0, "h:99999"), "expected HOST:PORT"),
        ((0, 0, "h:1"), "--nnodes 0: expected 1 or more"),
    ]
    for given, message in cases:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
            check_nodes(*given)
    nodes = check_nodes(2, 1, "[::1]:29500", max_restarts=2)
    assert nodes.address == ("::1", 29500) and nodes.max_restarts == 2


def test_torchrun_command_is_a_c10d_rendezvous_hosted_by_node_0() -> None:
    from audiotag.train.launch import Nodes, torchrun_command

    one = torchrun_command(2, ["train"])
    assert "--standalone" in one and "--nproc_per_node=2" in one
    host = torchrun_command(1, ["train"], Nodes(3, 0, "n0:29500", max_restarts=2))
    other = torchrun_command(1, ["train"], Nodes(3, 2, "n0:29500"))
    for cmd in (host, other):
        assert "--standalone" not in cmd
        assert {"--nnodes=3", "--rdzv_backend=c10d", "--rdzv_endpoint=n0:29500"} <= set(cmd)
        assert cmd[-3:] == ["-m", "audiotag", "train"]
    assert "--rdzv_conf=is_host=1,join_timeout=600" in host and "--max_restarts=2" in host
    assert "--rdzv_conf=is_host=0,join_timeout=600" in other


def test_an_endpoint_nobody_answers_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Machine 1 waits for machine 0 at the endpoint, then stops with an error naming it."""
    from audiotag.cli.main import main

    port = free_port()
    started = time.monotonic()
    args = ["train", "-c", "demo", "--run-name", "x", "--nnodes", "2", "--node-rank", "1"]
    code = main([*args, "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-timeout", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"--rdzv-endpoint 127.0.0.1:{port}: nothing answered there within 1 s" in err
    assert "Start machine 0 (--node-rank 0) on 127.0.0.1" in err
    assert time.monotonic() - started < 60


def test_node_rank_without_nnodes_fails_before_anything_runs(capsys: pytest.CaptureFixture[str]) -> None:
    from audiotag.cli.main import main

    assert main(["train", "-c", "demo", "--node-rank", "1"]) == 2
    assert "--node-rank 1 without --nnodes" in capsys.readouterr().err


@pytest.mark.slow
def test_machines_that_do_not_share_the_workspace_are_refused(tmp_path: Path) -> None:
    """Node 1 has a workspace of its own: both stop, naming the folder, before any training."""
    port = free_port()
    procs = {}
    for rank in (0, 1):
        ws = tmp_path / f"ws{rank}"
        ws.mkdir()
        procs[rank] = start_node(ws, "apart", rank, port)
    for proc in procs.values():
        assert proc.wait(timeout=900) != 0
    err = "".join((tmp_path / f"ws{r}" / f"node{r}.err").read_text() for r in (0, 1))
    assert "are not seen by rank 1" in err and "must be one folder they all share" in err, err[-3000:]
    assert not list(tmp_path.glob("ws*/competition/demo/runs/apart/fold0"))
