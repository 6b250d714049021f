"""Several processes on one workspace: the cache build and the clip table take turns (file locks), a
damaged ``.partial`` is rebuilt rather than resumed, and one run folder is trained by one process."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audiotag.cli.main import main
from audiotag.core.errors import TrainingError
from audiotag.data import cache_build as cache_mod
from audiotag.data import cache_compute
from audiotag.data.cache_build import build_cache
from audiotag.data.cache_reader import FeatureCache, cache_dir_for
from audiotag.runs.folder import OWNER_LOCK, claim_run
from tests.conftest import PYTHON, TINY_DEMO, subprocess_env, tiny_args
from tests.test_cache import CFG, N_CLIPS, expected, write_clips

# Builds the cache of the clips in argv[1] once the file argv[2] exists (so that two processes start
# building together), a little slowly so that the second certainly arrives while the first builds.
RACING_BUILD = """
    import logging, sys, time
    from pathlib import Path
    import pandas as pd
    from audiotag.config.schema import FeatureConfig
    from audiotag.data import cache_build as cache

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    append = cache._Writer.append

    def slow_append(self, result):
        time.sleep(0.1)
        append(self, result)

    cache._Writer.append = slow_append
    root, go = Path(sys.argv[1]), Path(sys.argv[2])
    clips = pd.read_parquet(root / "clips.parquet")
    while not go.exists():
        time.sleep(0.01)
    print("built", cache.build_cache(clips, root, FeatureConfig(), workers=1), flush=True)
"""


@pytest.mark.soak
def test_two_processes_build_one_cache(tmp_path: Path) -> None:
    root = tmp_path / "comp"
    clips = write_clips(root)
    clips.to_parquet(root / "clips.parquet")
    script = tmp_path / "racing_build.py"
    script.write_text(textwrap.dedent(RACING_BUILD))
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [PYTHON, str(script), str(root), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=subprocess_env(tmp_path),
        )
        for _ in range(2)
    ]
    time.sleep(0.5)
    go.touch()
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out[-3000:]
    both = "\n".join(outputs)
    # one built it, the other waited for it (saying so) and then used its result
    assert both.count("from scratch") == 1, both
    assert both.count("is being built by another process") == 1, both
    assert both.count("built by another process meanwhile; using it") == 1, both
    assert "damaged" not in both and "resuming" not in both

    final = cache_dir_for(root, CFG)
    reference = write_clips_to(tmp_path / "single")
    for name in ("frames.f16", "index.parquet"):
        assert (final / name).read_bytes() == (reference / name).read_bytes(), name
    cache = FeatureCache(final)
    assert len(cache) == N_CLIPS
    for clip_id, rel in zip(clips["clip_id"], clips["path"], strict=True):
        np.testing.assert_array_equal(cache.get(clip_id), expected(root, rel))
    assert not final.with_name(final.name + ".partial").exists()


def write_clips_to(folder: Path) -> Path:
    """A separate copy of the clips, built by one process: the reference."""
    clips = write_clips(folder)
    return build_cache(clips, folder, CFG, workers=1)


def interrupted_partial(
    root: Path, monkeypatch: pytest.MonkeyPatch, stop_at: int = 8
) -> tuple[Path, pd.DataFrame]:
    clips = write_clips(root)
    append = cache_mod._Writer.append

    def append_then_stop(self: cache_mod._Writer, result: cache_compute.ClipResult) -> None:
        if self.n_done == stop_at:
            raise KeyboardInterrupt
        append(self, result)

    monkeypatch.setattr(cache_mod._Writer, "append", append_then_stop)
    with pytest.raises(KeyboardInterrupt):
        build_cache(clips, root, CFG, workers=1)
    monkeypatch.setattr(cache_mod._Writer, "append", append)
    final = cache_dir_for(root, CFG)
    return final.with_name(final.name + ".partial"), clips


def test_tampered_partial_is_detected_and_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "comp"
    staging, clips = interrupted_partial(root, monkeypatch)
    records = [json.loads(line) for line in (staging / "clips.jsonl").read_text().splitlines()]
    assert len(records) == 8 and [r["id"] for r in records] == [f"clip{i:02d}" for i in range(8)]
    # overwrite the frames of clip03 with those of clip02 (what two writers on one file did)
    row = CFG.n_mels * 2
    frames = bytearray((staging / "frames.f16").read_bytes())
    src, dst = records[2], records[3]
    n = min(src["n"], dst["n"])
    frames[dst["off"] * row : (dst["off"] + n) * row] = frames[src["off"] * row : (src["off"] + n) * row]
    (staging / "frames.f16").write_bytes(bytes(frames))

    with caplog.at_level(logging.INFO, logger="audiotag.data.cache_build"):
        final = build_cache(clips, root, CFG, workers=1)
    assert "the frames of clip 'clip03' do not match their recorded hash" in caplog.text
    assert "keeping the 3 clip(s) before it" in caplog.text and "resuming after 3 clips" in caplog.text
    cache = FeatureCache(final)
    for clip_id, rel in zip(clips["clip_id"], clips["path"], strict=True):
        np.testing.assert_array_equal(cache.get(clip_id), expected(root, rel))
    reference = write_clips_to(tmp_path / "single")
    assert (final / "frames.f16").read_bytes() == (reference / "frames.f16").read_bytes()


def test_partial_of_shifted_records_is_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Records that do not follow the clip list (another process's lines) are not resumed from."""
    root = tmp_path / "comp"
    staging, clips = interrupted_partial(root, monkeypatch, stop_at=4)
    lines = (staging / "clips.jsonl").read_text().splitlines()
    record = json.loads(lines[0])
    record["id"] = "clip05"
    lines[0] = json.dumps(record, separators=(",", ":"))
    text = "\n".join(lines) + "\n"
    (staging / "clips.jsonl").write_text(text)
    progress = json.loads((staging / "progress.json").read_text())
    (staging / "progress.json").write_text(json.dumps({**progress, "records_bytes": len(text)}))
    with caplog.at_level(logging.INFO, logger="audiotag.data.cache_build"):
        final = build_cache(clips, root, CFG, workers=1)
    assert "record 0 is clip 'clip05', the clip list has 'clip00' there" in caplog.text
    assert "from scratch" in caplog.text
    reference = write_clips_to(tmp_path / "single")
    assert (final / "frames.f16").read_bytes() == (reference / "frames.f16").read_bytes()


@pytest.mark.soak
@pytest.mark.slow
def test_two_prepare_commands_on_a_fresh_workspace(tmp_path: Path) -> None:
    """Two ``prepare`` processes started together: both succeed and every clip holds its own frames."""
    args = [PYTHON, "-m", "audiotag", "prepare", "-c", "demo", "--workers", "1"]
    for item in TINY_DEMO:
        args += ["--set", item]
    env = subprocess_env(tmp_path)
    procs = [
        subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=180)[0] for p in procs]
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out[-3000:]
    both = "\n".join(outputs)
    assert both.count("synthesising the demo competition") == 1, both
    assert both.count("clip table: wrote") == 1 and both.count("folds: wrote") == 1, both
    comp = tmp_path / "competition" / "demo"
    table = pd.read_parquet(comp / "meta.parquet")
    # The demo's default members read two caches (the CNN's log-mel and aisfx's front end).
    cache_dirs = sorted(p for p in (comp / "cache").iterdir() if p.is_dir())
    assert len(cache_dirs) == 2, cache_dirs
    assert both.count("feature cache: wrote") == len(cache_dirs), both
    for cache_dir in cache_dirs:
        assert both.count(f"feature cache: wrote {cache_dir} ") == 1, both
        cache = FeatureCache(cache_dir)
        assert len(cache) == len(table)
        for clip_id, rel in zip(table["clip_id"], table["path"], strict=True):
            np.testing.assert_array_equal(cache.get(clip_id), expected(comp, rel, cache.config))


# Claims the run folder argv[1] as ``train`` does (the same lock file and owner record; this imports
# no torch, so it starts fast), says so, and holds it until killed.
RUN_HOLDER = """
    import sys, time
    from pathlib import Path
    from audiotag.core.locks import file_lock

    run_dir = Path(sys.argv[1])
    with file_lock(run_dir / "owner.lock", f"train {run_dir.name}", wait=False):
        print("claimed", flush=True)
        time.sleep(120)
"""


def hold_run(run_dir: Path, tmp_path: Path) -> subprocess.Popen[str]:
    script = tmp_path / "hold_run.py"
    script.write_text(textwrap.dedent(RUN_HOLDER))
    holder = subprocess.Popen([PYTHON, str(script), str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "claimed"
    return holder


def kill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def test_second_train_on_one_run_folder_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run_dir = tmp_path / "runs" / "cnn_small"
    holder = hold_run(run_dir, tmp_path)
    try:
        owner = json.loads((run_dir / OWNER_LOCK).read_text())
        assert owner["pid"] == holder.pid and owner["host"] and owner["started"]
        with pytest.raises(TrainingError) as err, claim_run(run_dir):
            pytest.fail("claimed a run folder another process holds")
        message = str(err.value)
        assert f"run 'cnn_small' in {run_dir} is being trained by process {holder.pid} on host " in message
        assert f"(started {owner['started']}, train cnn_small)" in message and "--run-name" in message
    finally:
        kill(holder)
    # the holder died without releasing: its owner record is left, and does not block
    assert json.loads((run_dir / OWNER_LOCK).read_text())["pid"] == holder.pid
    with caplog.at_level(logging.INFO, logger="audiotag.runs.folder"), claim_run(run_dir):
        assert json.loads((run_dir / OWNER_LOCK).read_text())["pid"] == os.getpid()
    assert f"its previous owner, process {holder.pid} on host" in caplog.text and "is gone" in caplog.text
    assert (run_dir / OWNER_LOCK).read_text() == ""  # released: no owner recorded


@pytest.mark.slow
def test_train_command_refuses_a_run_folder_in_use(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``train`` claims the run folder: it names the other process and trains nothing."""
    run_dir = workspace / "competition" / "demo" / "runs" / "cnn_small"
    holder = hold_run(run_dir, workspace)
    try:
        assert main([*tiny_args("train"), "--folds", "0"]) != 0
    finally:
        kill(holder)
    err = capsys.readouterr().err
    assert f"run 'cnn_small' in {run_dir} is being trained by process {holder.pid} on host" in err
    assert not (run_dir / "fold0").exists() and not (run_dir / "run.json").exists()


def test_claim_folder_refuses_a_second_holder_and_leaves_the_block_s_own_errors_alone(tmp_path: Path) -> None:
    from audiotag.core.locks import Busy, claim_folder, file_lock

    def refusal(owner: str) -> Exception:
        return TrainingError(f"held by {owner}")

    folder = tmp_path / "study"
    with claim_folder(folder, "tune study", refusal):
        assert (folder / "owner.lock").is_file()
        held = rf"held by process {os.getpid()} on host .*tune study"
        with pytest.raises(TrainingError, match=held), claim_folder(folder, "tune study", refusal):
            pass
        # a Busy from another lock inside the block is that lock's, not a refusal of this folder
        with (
            file_lock(tmp_path / "other.lock", "other"),
            pytest.raises(Busy),
            claim_folder(tmp_path / "free", "x", refusal),
            file_lock(tmp_path / "other.lock", "other", wait=False),
        ):
            pass
    with claim_folder(folder, "tune study", refusal):  # released: claimed again
        pass


# Claims the run folder, then forks a child that outlives it (as a DataLoader worker outlives a
# training process killed by SIGKILL, for a few seconds): the child shares the lock.
RUN_HOLDER_WITH_WORKER = """
    import os, sys, time
    from pathlib import Path
    from audiotag.core.locks import file_lock

    run_dir, linger = Path(sys.argv[1]), float(sys.argv[2])
    with file_lock(run_dir / "owner.lock", f"train {run_dir.name}", wait=False):
        if os.fork() == 0:
            time.sleep(linger)
            os._exit(0)
        print("claimed", flush=True)
        time.sleep(120)
"""


def hold_run_with_worker(run_dir: Path, tmp_path: Path, linger: float) -> subprocess.Popen[str]:
    script = tmp_path / "hold_run_with_worker.py"
    script.write_text(textwrap.dedent(RUN_HOLDER_WITH_WORKER))
    holder = subprocess.Popen(
        [PYTHON, str(script), str(run_dir), str(linger)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "claimed"
    return holder


def test_a_killed_run_whose_worker_lingers_is_waited_for_not_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGKILL a run whose forked worker still holds the lock: the rerun waits for the worker, then
    claims the folder and hears that the previous owner is gone (seen on an H100 machine, where the
    rerun was refused in the name of the dead process)."""
    run_dir = tmp_path / "runs" / "cnn_small"
    holder = hold_run_with_worker(run_dir, tmp_path, linger=1.5)
    kill(holder)
    started = time.monotonic()
    with caplog.at_level(logging.INFO), claim_run(run_dir):
        assert json.loads((run_dir / OWNER_LOCK).read_text())["pid"] == os.getpid()
    assert time.monotonic() - started > 0.5  # it did wait for the worker
    assert f"its owner, process {holder.pid} (train cnn_small), has exited; waiting up to" in caplog.text
    assert f"its previous owner, process {holder.pid} on host" in caplog.text


def test_a_dead_run_s_worker_that_stays_is_named_in_the_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from audiotag.core import locks

    monkeypatch.setattr(locks, "HEIRS_WAIT_SECONDS", 0.3)
    run_dir = tmp_path / "runs" / "cnn_small"
    holder = hold_run_with_worker(run_dir, tmp_path, linger=20)
    kill(holder)
    try:
        with pytest.raises(TrainingError) as err, claim_run(run_dir):
            pytest.fail("claimed a run folder that a live worker still locks")
        assert f"process {holder.pid} on host" in str(err.value)
        assert "that process has exited, but processes it started still hold the lock" in str(err.value)
    finally:
        # the worker is the only other process holding the lock file open
        for pid in [int(p) for p in os.listdir("/proc") if p.isdigit()]:
            with contextlib.suppress(OSError):
                if (
                    str(run_dir / OWNER_LOCK)
                    in {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
                    and pid != os.getpid()
                ):
                    os.kill(pid, signal.SIGKILL)
