"""Safety of what training, the ensemble and the Kaggle client leave behind: checkpoints never run code
when loaded, a finished fold's best.pt is checked against its done.json, a full disk is a clear error,
the submission CSV and its report are checked as a pair, atomic files get the plain file mode, and
Kaggle credentials never show, in any form."""

from __future__ import annotations

import base64
import errno
import json
import logging
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from audiotag.cli.main import main
from audiotag.config.schema import TrainConfig
from audiotag.core import atomic
from audiotag.core.errors import DataError, TrainingError
from audiotag.train import checkpoint, loop
from audiotag.train.checkpoint import file_record, load_checkpoint, save_checkpoint
from audiotag.train.engine import StepEngine
from audiotag.train.epoch import rank_progress
from audiotag.train.schedule import make_scheduler
from tests import demo_workspace
from tests.conftest import tiny_args
from tests.test_submit import SECRET, SLUG, KaggleStub, kaggle, submission  # noqa: F401 (fixtures)

CPU = torch.device("cpu")


@pytest.fixture
def demo(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return demo_workspace.copy_to(demo_workspace.trained_base(tmp_path_factory), tmp_path / "ws", monkeypatch)


# --------------------------------------------------------------------------- 1. checkpoints never run code


class RunsACommand:
    """A pickle that runs a shell command when it is loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def malicious_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"model": {"w": torch.zeros(2)}, "state": RunsACommand(marker)}, path)
    return path


def test_a_checkpoint_whose_pickle_runs_a_command_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = malicious_checkpoint(tmp_path / "last.pt", marker)
    with pytest.raises(DataError) as refused:
        load_checkpoint(path)
    message = str(refused.value)
    assert str(path) in message and "refused to load" in message and "could run code" in message
    assert "system" in message  # the global it wanted
    assert not marker.exists()


def test_resume_refuses_a_malicious_last_pt_naming_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    fold_dir = tmp_path / "fold0"
    fold_dir.mkdir()
    malicious_checkpoint(fold_dir / "last.pt", marker)
    run = SimpleNamespace(last_path=fold_dir / "last.pt", device=CPU)
    with pytest.raises(DataError, match=r"last\.pt: refused to load.*delete it to restart this fold"):
        loop.resume(run)  # type: ignore[arg-type]
    assert not marker.exists()


def test_the_whole_resume_state_loads_weights_only(tmp_path: Path) -> None:
    """What ``last.pt`` holds (weights, AdamW, the schedule, the engine with EMA and grad scaler,
    progress with a mid-epoch partial and its RNG states) passes the weights-only unpickler unchanged."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    scheduler = make_scheduler(optimizer, warmup_steps=2, total_steps=10, min_ratio=0.1)
    engine = StepEngine(model, optimizer, scheduler, TrainConfig(ema_decay=0.9), CPU)
    engine.backward(model(torch.randn(5, 4)).pow(2).mean())
    state = loop.FoldState(epoch=1, best_score=0.5, best_epoch=0, history=[{"epoch": 0, "loss": 0.3}])
    aug = torch.Generator().manual_seed(3)
    partial = {"epoch": 1, "batch": 2, "ranks": [rank_progress(1.5, 8, aug, CPU)]}
    parts = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "engine": engine}
    payload = state.resume_payload(parts, partial)
    save_checkpoint(tmp_path / "last.pt", payload)
    loaded = load_checkpoint(tmp_path / "last.pt")
    assert loaded["state"]["partial"]["ranks"][0]["count"] == 8
    assert torch.equal(loaded["state"]["partial"]["ranks"][0]["aug_state"], aug.get_state())
    assert loaded["state"]["best_score"] == 0.5 and loaded["scheduler"] == scheduler.state_dict()
    torch.testing.assert_close(loaded["model"], model.state_dict())
    fresh = loop.FoldState(best_score=-float("inf"))
    assert load_checkpoint(save_path(tmp_path, fresh))["state"]["best_score"] == -float("inf")


def save_path(tmp_path: Path, state: loop.FoldState) -> Path:
    save_checkpoint(tmp_path / "fresh.pt", {"state": state.as_checkpoint()})
    return tmp_path / "fresh.pt"


# --------------------------------------------------------------------------- 2. best.pt of a finished fold


def finished_fold(tmp_path: Path, record: bool = True) -> Path:
    fold_dir = tmp_path / "runs" / "r" / "fold0"
    fold_dir.mkdir(parents=True)
    save_checkpoint(fold_dir / "best.pt", {"model": {"w": torch.arange(100.0)}, "epoch": 1, "score": 0.5})
    done = {"fold": 0, "metric": "map3", "score": 0.5}
    if record:
        done["best_pt"] = file_record(fold_dir / "best.pt")
    (fold_dir / "done.json").write_text(json.dumps(done))
    return fold_dir


def corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def skip_done(fold_dir: Path) -> dict:
    """The rerun of a finished fold: ``train_fold`` returns before it needs any input."""
    return loop.train_fold(None, None, SimpleNamespace(fold=0, metric="map3"), fold_dir, CPU)  # type: ignore[arg-type]


def test_a_rerun_checks_the_best_pt_of_a_done_fold(tmp_path: Path) -> None:
    fold_dir = finished_fold(tmp_path)
    assert skip_done(fold_dir)["score"] == 0.5
    corrupt(fold_dir / "best.pt")
    with pytest.raises(DataError) as bad:
        skip_done(fold_dir)
    message = str(bad.value)
    assert str(fold_dir / "best.pt") in message and "SHA-256" in message
    assert f"delete the fold folder {fold_dir} to retrain the fold" in message
    (fold_dir / "best.pt").write_bytes(b"short")
    with pytest.raises(DataError, match=r"5 bytes, done\.json recorded"):
        skip_done(fold_dir)


def test_a_done_json_without_the_record_is_accepted_with_a_warning(tmp_path: Path, caplog) -> None:
    fold_dir = finished_fold(tmp_path, record=False)
    with caplog.at_level(logging.WARNING):
        assert skip_done(fold_dir)["score"] == 0.5
    assert "records no size or SHA-256 of best.pt" in caplog.text


@pytest.mark.slow
def test_package_and_inference_refuse_a_corrupt_best_pt(demo: Path, capsys) -> None:
    from audiotag.kaggle.inference import run_inference

    fold1 = demo / "competition" / "demo" / "runs" / "cnn_small" / "fold1"
    assert (
        json.loads((fold1 / "done.json").read_text())["best_pt"]["size"] == (fold1 / "best.pt").stat().st_size
    )
    good = (fold1 / "best.pt").read_bytes()
    corrupt(fold1 / "best.pt")
    assert main(["package", str(demo / "bundle")]) == 2
    err = capsys.readouterr().err
    assert f"{fold1 / 'best.pt'} is corrupt" in err and "delete the fold folder" in err
    assert not (demo / "bundle").exists()

    (fold1 / "best.pt").write_bytes(good)
    assert main(["package", str(demo / "bundle")]) == 0
    packaged = demo / "bundle" / "members" / "cnn_small" / "fold1" / "best.pt"
    corrupt(packaged)
    raw = demo / "competition" / "demo" / "raw"
    with pytest.raises(DataError, match=r"fold1/best\.pt is corrupt.*build the package again"):
        run_inference(demo / "bundle", raw, demo / "sub.csv", workers=1, device="cpu")


# --------------------------------------------------------------------------- 3. a full disk


FULL_DISK = [
    RuntimeError("basic_ios::clear: iostream error"),
    RuntimeError(
        "[enforce fail at inline_container.cc:858] . PytorchStreamWriter failed writing file data/3"
    ),
    OSError(errno.ENOSPC, "No space left on device"),
]


@pytest.mark.parametrize("failure", FULL_DISK, ids=["iostream", "stream-writer", "enospc"])
def test_a_full_disk_while_saving_a_checkpoint_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: Exception
) -> None:
    path = tmp_path / "fold0" / "last.pt"
    save_checkpoint(path, {"epoch": 1})
    before = path.read_bytes()

    def full(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half a checkpoint")
        raise failure

    monkeypatch.setattr(checkpoint.torch, "save", full)
    with pytest.raises(TrainingError) as stopped:
        save_checkpoint(path, {"epoch": 2, "model": {"w": torch.zeros(1_000_000)}})
    message = str(stopped.value)
    assert message.startswith("the disk is full: ") and str(path) in message
    assert "needs about 4.0 MB" in message and "the last good checkpoint too" in message
    assert path.read_bytes() == before  # the previous checkpoint is kept
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no temporary file left


def test_other_write_failures_are_not_called_a_full_disk(tmp_path: Path, monkeypatch) -> None:
    def broken(obj, f, *args, **kwargs):
        raise RuntimeError("something else")

    monkeypatch.setattr(checkpoint.torch, "save", broken)
    with pytest.raises(RuntimeError, match="something else"):
        save_checkpoint(tmp_path / "last.pt", {})


@pytest.mark.slow
def test_a_full_disk_in_train_stops_with_a_message_and_keeps_the_last_checkpoint(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    real_save, saves = torch.save, []

    def fills_up(obj, f, *args, **kwargs):
        saves.append(Path(f).name)
        if len(saves) > 2:  # epoch 1's best.pt and last.pt are written, then the disk is full
            raise RuntimeError("basic_ios::clear: iostream error")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", fills_up)
    assert main(tiny_args("prepare", "train", extra=["train.folds=[0]"])) == 2
    err = capsys.readouterr().err
    fold = workspace / "competition" / "demo" / "runs" / "cnn_small" / "fold0"
    assert "the disk is full" in err and str(fold) in err and "Traceback" not in err
    assert load_checkpoint(fold / "last.pt")["state"]["epoch"] == 1

    def no_room(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    monkeypatch.setattr(loop, "write_predictions", no_room)
    assert main(tiny_args("train", extra=["train.folds=[0]"])) == 2
    err = capsys.readouterr().err
    assert "the disk is full" in err and str(fold / "oof.parquet") in err
    assert not (fold / "done.json").exists()


# --------------------------------------------------------------------------- 4. the CSV and its report


class Killed(BaseException):
    """Stands in for SIGKILL between the two renames."""


@pytest.mark.slow
def test_a_kill_between_the_report_and_the_csv_is_detected_by_every_reader(
    demo: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from audiotag.competitions.submission import report_mismatch, sha256_hex
    from audiotag.ensemble import runner as ensemble
    from audiotag.reports.leaderboard import build_leaderboard

    subs = demo / "submissions" / "demo"
    report = json.loads((subs / "pair_stack.json").read_text())
    assert report["submission_sha256"] == sha256_hex((subs / "pair_stack.csv").read_bytes())
    old_csv = (subs / "pair_stack.csv").read_bytes()

    config = demo_workspace.ensemble_path(demo, "pair_stack")  # the same ensemble, now a weighted blend
    config.write_text("competition: demo\nmembers: [cnn_small, cnn_seed1]\nmethod: mean\nweights: search\n")
    # other settings under the same name are refused unless the old blend's report is deleted (its CSV
    # stays until the new one replaces it): what the refusal tells the user to do
    (subs / "pair_stack.json").unlink()

    def killed(*args, **kwargs):
        raise Killed

    real_write = ensemble.write_submission_bytes
    monkeypatch.setattr(ensemble, "write_submission_bytes", killed)
    with pytest.raises(Killed):
        main(["ensemble", "--config", str(config)])
    monkeypatch.setattr(ensemble, "write_submission_bytes", real_write)
    assert (subs / "pair_stack.csv").read_bytes() == old_csv  # the old CSV beside the new report
    new_report = json.loads((subs / "pair_stack.json").read_text())
    assert new_report["stacking"] is None and new_report["submission_sha256"] != sha256_hex(old_csv)

    problem = report_mismatch(subs / "pair_stack.csv", new_report)
    assert problem is not None and "interrupted" in problem
    board = build_leaderboard("demo", with_lb=False)
    assert "pair_stack" not in set(board.rows["name"]) and any("pair_stack.json" in n for n in board.notes)
    assert main(["package", "--ensemble", str(config), str(demo / "bundle")]) == 2
    err = capsys.readouterr().err
    assert "is not the submission its report" in err and "run ./run.sh ensemble again" in err

    assert main(["ensemble", "--config", str(config)]) == 0  # a whole run writes a matching pair
    assert (
        report_mismatch(subs / "pair_stack.csv", json.loads((subs / "pair_stack.json").read_text())) is None
    )


def test_a_report_without_a_hash_is_used_as_before(tmp_path: Path) -> None:
    from audiotag.competitions.submission import check_report, report_mismatch

    csv = tmp_path / "a.csv"
    csv.write_text("fname,label\n")
    assert report_mismatch(csv, {"name": "a"}) is None
    with pytest.raises(DataError, match=r"missing\.csv, the submission its report describes, is missing"):
        check_report(tmp_path / "missing.csv", {"submission_sha256": "0" * 64})


# --------------------------------------------------------------------------- 5. file modes


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_files_get_the_mode_of_a_plain_open(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        atomic.atomic_write_text(tmp_path / "sub.csv", "fname,label\n")
        atomic.atomic_write_json(tmp_path / "report.json", {"a": 1})
        save_checkpoint(tmp_path / "best.pt", {"w": torch.zeros(2)})
        with open(tmp_path / "plain.txt", "w") as f:
            f.write("x")
        atomic.atomic_write_text(tmp_path / "sub.csv", "fname,label\nagain\n")  # rewritten
    finally:
        os.umask(old)
    for name in ("sub.csv", "report.json", "best.pt", "plain.txt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


KILLED_MID_WRITE = """
import sys, time
from audiotag.core.atomic import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"half a checkpoint")
    print(tmp, flush=True)
    time.sleep(60)
"""


def test_a_write_removes_what_a_killed_writer_left_and_nothing_else(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    target = tmp_path / "last.pt"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_MID_WRITE, str(target)], stdout=subprocess.PIPE, text=True
    )
    left = Path(proc.stdout.readline().strip())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert left.read_bytes() == b"half a checkpoint" and not target.exists()
    live = tmp_path / f".last.pt.{atomic.writer_tag(os.getppid())}.abc.tmp"  # a writer that still runs
    other_host = tmp_path / f".last.pt.0000beef-{proc.pid}.abc.tmp"
    untagged = tmp_path / ".last.pt.k2j3h4.tmp"  # an earlier version's name: its writer is unknown
    other_target = tmp_path / f".last.pt.bak.{atomic.writer_tag(proc.pid)}.abc.tmp"
    for path in (live, other_host, untagged, other_target):
        path.write_bytes(b"x")
    atomic.atomic_write_text(target, "new")
    assert target.read_text() == "new" and not left.exists()
    assert all(p.exists() for p in (live, other_host, untagged, other_target))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (target, live, other_host, untagged, other_target)
    )


# --------------------------------------------------------------------------- 6. Kaggle credentials


def echo_headers(stub: KaggleStub):
    """The server's error echoes the request's headers, Authorization included, on one line."""

    def answer(name: str, body: dict) -> tuple[int, dict]:
        auth = stub.calls[-1][2]
        return 400, {
            "code": 400,
            "message": f"bad request {name}; headers: Authorization: {auth}; Accept: */*",
        }

    return answer


@pytest.mark.slow
def test_an_echoed_basic_authorization_header_is_scrubbed(
    kaggle: KaggleStub,  # noqa: F811
    submission: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    capsys,
    caplog,
) -> None:
    monkeypatch.setattr(kaggle, "answer", echo_headers(kaggle))
    assert main(["submit", str(submission), "-m", "x", "--slug", SLUG]) == 2
    out, err = capsys.readouterr()
    sent = kaggle.calls[0][2]
    encoded = base64.b64encode(f"tester:{SECRET}".encode()).decode()
    assert sent == f"Basic {encoded}"  # what the client really sent, and the server echoed
    assert "HTTP 400" in err and "Authorization: Basic ***" in err
    for text in (out, err, caplog.text):
        assert SECRET not in text and encoded not in text and encoded[:12] not in text


@pytest.mark.slow
def test_an_echoed_bearer_token_from_the_token_file_is_scrubbed(
    kaggle: KaggleStub,  # noqa: F811
    submission: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys,
) -> None:
    token = "KGAT_0123456789abcdef0123456789abcdef"
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(name)
    folder = Path(os.environ["KAGGLE_CONFIG_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "access_token").write_text(token + "\n")
    monkeypatch.setattr(kaggle, "answer", echo_headers(kaggle))
    assert main(["submit", str(submission), "-m", "x", "--slug", SLUG]) == 2
    out, err = capsys.readouterr()
    assert kaggle.calls[0][2] == f"Bearer {token}"  # the client read the token file and sent it
    assert token not in out + err and token[:16] not in out + err


@pytest.mark.slow
@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"username": "tester", "key": ', "is not valid JSON (Expecting value at line 1, column 31)"),
        ('{"username": "tester"}', "has no 'key'"),
        ("[1, 2]", "does not hold a JSON object"),
    ],
)
def test_a_malformed_kaggle_json_says_what_is_wrong_with_it(
    kaggle: KaggleStub,  # noqa: F811
    submission: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    capsys,
    content: str,
    expected: str,
) -> None:
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(name)
    path = Path(os.environ["KAGGLE_CONFIG_DIR"]) / "kaggle.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    path.chmod(0o600)
    assert main(["submit", str(submission), "-m", "x", "--slug", SLUG]) == 2
    err = capsys.readouterr().err
    assert f"{path} {expected}" in err and "nothing was sent to Kaggle" in err
    assert "did not accept" not in err
    assert kaggle.calls == []


def test_redact_removes_every_form_of_the_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from audiotag.fetch.kaggle import redact, secrets_of

    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path))
    monkeypatch.setenv("KAGGLE_USERNAME", "tester")
    monkeypatch.setenv("KAGGLE_KEY", SECRET)
    encoded = base64.b64encode(f"tester:{SECRET}".encode()).decode()
    text = f"key {SECRET}; basic {encoded}; header Authorization: Bearer abcdefgh.ijkl; basic_ios::clear"
    clean = redact(text, secrets_of())
    assert SECRET not in clean and encoded not in clean and "abcdefgh" not in clean
    assert "basic_ios::clear" in clean
