"""``audiotag submit``: validation, the Kaggle API (the real client against a local HTTP server on
127.0.0.1, and a fake client injected through ``API_FACTORY``), the submission log, and credentials
never showing up anywhere."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from audiotag.cli.main import main
from audiotag.competitions.demo_sounds import CLASSES
from audiotag.core import jsonl
from audiotag.fetch import kaggle as fetch_kaggle
from audiotag.kaggle import submit as kaggle_submit
from tests.http_fakes import running_server

SECRET = "s3cr3t-kaggle-key-0123456789"
SLUG = "demo-slug"
CLASS_NAMES = sorted(CLASSES)
SERVICE = "/api/v1/competitions.CompetitionApiService/"


# --------------------------------------------------------------------------- a local Kaggle


@dataclass
class KaggleStub:
    """Answers the competition API's calls; ``errors`` maps a call name to (HTTP status, message)."""

    url: str = ""
    calls: list[tuple[str, dict[str, Any], str | None]] = field(default_factory=list)
    uploads: list[bytes] = field(default_factory=list)
    errors: dict[str, tuple[int, str]] = field(default_factory=dict)
    submissions: list[dict[str, Any]] = field(default_factory=list)

    def answer(self, name: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if name in self.errors:
            status, message = self.errors[name]
            return status, {"code": status, "message": message}
        if name == "StartSubmissionUpload":
            return 200, {"token": "blob-token-1", "createUrl": f"{self.url}/upload/blob-token-1"}
        if name == "CreateSubmission":
            return 200, {"message": f"Successfully submitted to {body['competitionName']}", "ref": 4242}
        if name == "ListSubmissions":
            return 200, {"submissions": self.submissions}
        return 404, {"code": 404, "message": f"no such call {name}"}


def make_handler(stub: KaggleStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def do_POST(self) -> None:
            name = self.path.removeprefix(SERVICE)
            body = json.loads(self._body() or b"{}")
            stub.calls.append((name, body, self.headers.get("Authorization")))
            status, payload = stub.answer(name, body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_PUT(self) -> None:
            stub.uploads.append(self._body())
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


@pytest.fixture
def kaggle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[KaggleStub]:
    """The real ``kaggle`` client, pointed at a server on 127.0.0.1 with legacy credentials in env."""
    stub = KaggleStub()
    with running_server(make_handler(stub)) as url:
        stub.url = url
        home = tmp_path / "home"
        home.mkdir()
        monkeypatch.setenv("HOME", str(home))
        monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(home / ".kaggle"))
        monkeypatch.setenv("KAGGLE_USERNAME", "tester")
        monkeypatch.setenv("KAGGLE_KEY", SECRET)
        monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "LOCALHOST")  # the client then calls http://localhost
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
        for name in ("KAGGLE_API_TOKEN", "VERBOSE", "VERBOSE_OUTPUT", "HTTP_PROXY", "http_proxy"):
            monkeypatch.delenv(name, raising=False)
        with contextlib.redirect_stdout(io.StringIO()):
            from kaggle.api.kaggle_api_extended import KaggleApi
        from kagglesdk import kaggle_env

        # KAGGLE_API_ENVIRONMENT is read when the module is first imported; localhost means port 80 there,
        # so the LOCALHOST endpoint is moved to this server's port
        monkeypatch.setattr(KaggleApi, "args", ["--local"])
        # the config file path is fixed when the module is first imported: keep any real one out of reach
        monkeypatch.setattr(KaggleApi, "config_dir", str(home / ".kaggle"))
        monkeypatch.setattr(KaggleApi, "config", str(home / ".kaggle" / "kaggle.json"))
        monkeypatch.setitem(kaggle_env._env_to_endpoint, kaggle_env.KaggleEnv.LOCAL, stub.url)
        monkeypatch.setattr(fetch_kaggle, "KAGGLE_API_FACTORY", fetch_kaggle.default_api)
        yield stub


# --------------------------------------------------------------------------- a demo submission


@pytest.fixture
def submission(workspace: Path) -> Path:
    """A valid demo submission with its ensemble report, and the demo's sample submission."""
    raw = workspace / "competition" / "demo" / "raw"
    raw.mkdir(parents=True)
    fnames = ["b1.wav", "a2.wav", "c3.wav"]
    (raw / "sample_submission.csv").write_text("fname,label\n" + "".join(f"{f},\n" for f in fnames))
    sub = workspace / "submissions" / "demo" / "blend_ab.csv"
    sub.parent.mkdir(parents=True)
    sub.write_text(
        "fname,label\n" + "".join(f"{f},{' '.join(CLASS_NAMES[i : i + 3])}\n" for i, f in enumerate(fnames))
    )
    report = {
        "name": "blend_ab",
        "competition": "demo",
        "metric": "map3",
        "method": "mean",
        "members": {"run_b": {"mean": 0.7}, "run_a": {"mean": 0.75}},
        "blend": {"folds": {"0": 0.8, "1": 0.82}, "mean": 0.81, "std": 0.01},
        "cv": {"folds": {"0": 0.8, "1": 0.8246}, "mean": 0.8123, "std": 0.0123},
        "submission": str(sub),
    }
    sub.with_suffix(".json").write_text(json.dumps(report))
    return sub


def log_file(workspace: Path) -> Path:
    return workspace / "submissions" / "log.jsonl"


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text


# --------------------------------------------------------------------------- through the real client


@pytest.mark.slow
def test_submit_through_the_kaggle_client_logs_hash_cv_members_and_reply(
    kaggle: KaggleStub, submission: Path, workspace: Path, capsys, caplog
) -> None:
    assert main(["submit", str(submission), "-m", "cnn + ast, mean", "--slug", SLUG, "-v"]) == 0
    out, err = capsys.readouterr()
    assert "submitted" in out and "ref 4242" in out and "CV map3 0.8123" in out and "run_a + run_b" in out
    # what Kaggle received: the upload request, the file's bytes, the submission with our message
    names = [name for name, _, _ in kaggle.calls]
    assert names == ["StartSubmissionUpload", "CreateSubmission"]
    start, create = kaggle.calls[0][1], kaggle.calls[1][1]
    assert start["competitionName"] == SLUG and start["fileName"] == "blend_ab.csv"
    assert kaggle.uploads == [submission.read_bytes()]
    assert create["submissionDescription"] == "cnn + ast, mean" and create["blobFileTokens"] == "blob-token-1"
    assert all(auth and auth.startswith("Basic ") for _, _, auth in kaggle.calls)
    # the log line
    lines = log_file(workspace).read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["sha256"] == hashlib.sha256(submission.read_bytes()).hexdigest()
    assert record["cv"] == pytest.approx(0.8123) and record["cv_std"] == pytest.approx(0.0123)
    assert record["members"] == ["run_a", "run_b"] and record["ensemble"] == "blend_ab"
    assert record["message"] == "cnn + ast, mean" and record["ref"] == "4242"
    assert record["reply"] == f"Successfully submitted to {SLUG}"
    assert record["competition"] == "demo" and record["slug"] == SLUG
    assert record["file"] == str(submission.resolve()) and record["time"]
    assert_no_secret(out, err, caplog.text, log_file(workspace).read_text())

    # a second submission appends
    assert main(["submit", str(submission), "-m", "again", "--slug", SLUG]) == 0
    assert [json.loads(x)["message"] for x in log_file(workspace).read_text().splitlines()] == [
        "cnn + ast, mean",
        "again",
    ]


ERRORS = [
    (
        "StartSubmissionUpload",
        403,
        "You must accept this competition's rules before you'll be able to submit",
        ["rules are not accepted", f"https://www.kaggle.com/competitions/{SLUG}/rules"],
    ),
    ("CreateSubmission", 429, "Too Many Requests", ["daily submission limit", "00:00 UTC"]),
    (
        "CreateSubmission",
        400,
        "Submission not allowed: Your team has used its daily Submission allowance (5) today",
        ["daily submission limit", "allowance (5)"],
    ),
    ("StartSubmissionUpload", 404, "Not Found", [f"no competition {SLUG!r}", "--slug"]),
    ("StartSubmissionUpload", 401, "Unauthorized", ["rejected the credentials", "KAGGLE_KEY"]),
    ("CreateSubmission", 500, "oops", ["HTTP 500", "Kaggle's side"]),
]


@pytest.mark.slow
@pytest.mark.parametrize(("call", "status", "message", "expected"), ERRORS)
def test_kaggle_refusals_become_clear_errors_and_nothing_is_logged(
    kaggle: KaggleStub, submission: Path, workspace: Path, capsys, caplog, call, status, message, expected
) -> None:
    kaggle.errors[call] = (status, message)
    assert main(["submit", str(submission), "-m", "x", "--slug", SLUG]) == 2
    out, err = capsys.readouterr()
    for text in expected:
        assert text in err
    assert "Traceback" not in err
    assert not log_file(workspace).exists()
    assert_no_secret(out, err, caplog.text)


@pytest.mark.slow
def test_missing_credentials(
    kaggle: KaggleStub, submission: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    assert main(["submit", str(submission), "-m", "x", "--slug", SLUG]) == 2
    out, err = capsys.readouterr()
    assert "no Kaggle credentials found" in err and "KAGGLE_API_TOKEN" in err and "kaggle.json" in err
    assert "Authentication required" not in out + err  # the client's own help text is not shown
    assert kaggle.calls == [] and not log_file(workspace).exists()


@pytest.mark.slow
def test_a_file_that_does_not_match_the_sample_is_refused_before_any_upload(
    kaggle: KaggleStub, submission: Path, workspace: Path, capsys
) -> None:
    lines = submission.read_text().splitlines()
    lines[2] = "a2.wav,Not_a_class Rumble Warble"
    submission.write_text("\n".join(lines) + "\n")
    assert main(["submit", str(submission), "-m", "x", "--slug", SLUG]) == 2
    err = capsys.readouterr().err
    assert "does not match the demo sample submission" in err and "Not_a_class" in err
    assert "nothing was submitted" in err
    assert kaggle.calls == [] and not log_file(workspace).exists()
    # rows in another order than the sample's
    submission.write_text("fname,label\n" + "\n".join([lines[2], lines[1], lines[3]]) + "\n")
    assert main(["submit", str(submission), "-m", "x", "--slug", SLUG]) == 2
    assert "order differ" in capsys.readouterr().err


@pytest.mark.slow
def test_usage_errors(kaggle: KaggleStub, submission: Path, workspace: Path, capsys) -> None:
    assert main(["submit", str(submission), "-m", "x"]) == 2  # the demo is not on Kaggle
    assert "pass --slug SLUG" in capsys.readouterr().err
    assert main(["submit", str(workspace / "nope.csv"), "-m", "x", "-c", "demo"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["submit", str(submission), "-m", "  ", "--slug", SLUG]) == 2
    assert "description" in capsys.readouterr().err
    orphan = workspace / "elsewhere" / "x.csv"
    orphan.parent.mkdir()
    orphan.write_text(submission.read_text())
    assert main(["submit", str(orphan), "-m", "x", "--slug", SLUG]) == 2
    assert "pass -c COMPETITION" in capsys.readouterr().err
    assert kaggle.calls == []


def test_scores_are_read_back_through_the_client(kaggle: KaggleStub, caplog) -> None:
    kaggle.submissions = [
        {
            "ref": 4242,
            "fileName": "blend_ab.csv",
            "description": "cnn",
            "publicScore": "0.81234",
            "privateScore": "0.79",
            "status": "COMPLETE",
            "date": "2026-01-02T03:04:05Z",
        },
        {"ref": 4243, "fileName": "b.csv", "description": "pending", "status": "PENDING"},
    ]
    scores = fetch_kaggle.fetch_scores(SLUG)
    assert [(s.ref, s.public, s.private, s.status) for s in scores] == [
        ("4242", pytest.approx(0.81234), pytest.approx(0.79), "COMPLETE"),
        ("4243", None, None, "PENDING"),
    ]
    assert kaggle.calls[0][0] == "ListSubmissions" and kaggle.calls[0][1]["competitionName"] == SLUG
    kaggle.errors["ListSubmissions"] = (403, "Forbidden")
    with pytest.raises(fetch_kaggle.RulesNotAccepted, match="list the submissions of"):
        fetch_kaggle.fetch_scores(SLUG)
    kaggle.errors["ListSubmissions"] = (429, "Too Many Requests")  # rate-limited, not the daily cap
    with pytest.raises(fetch_kaggle.KaggleError, match="rate-limiting") as info:
        fetch_kaggle.fetch_scores(SLUG)
    assert not isinstance(info.value, kaggle_submit.SubmissionLimit)
    assert_no_secret(caplog.text)


# --------------------------------------------------------------------------- at the client boundary


class HTTPFailure(Exception):
    """Shaped like requests.HTTPError: the status code sits on ``response``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.response = type("Response", (), {"status_code": status})()


class FakeApi:
    """A recorded stand-in for ``KaggleApi`` with canned replies."""

    def __init__(self, reply: Any = None, error: BaseException | None = None, authenticated: bool = True):
        self.reply, self.error, self.authenticated = reply, error, authenticated
        self.config_values = {"username": "tester", "key": SECRET}
        self.submitted: list[tuple[str, str, str]] = []

    def authenticate(self) -> None:
        if not self.authenticated:
            print("Authentication required to call the Kaggle API. " + SECRET)
            raise SystemExit(1)

    def competition_submit(self, file_name: str, message: str, competition: str, quiet: bool = False) -> Any:
        self.submitted.append((file_name, message, competition))
        if self.error is not None:
            raise self.error
        return self.reply


def test_fake_client_success_and_errors(
    submission: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch, capsys, caplog
) -> None:
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(workspace / "no-kaggle"))
    api = FakeApi(reply={"message": "Successfully submitted", "ref": 7})
    monkeypatch.setattr(fetch_kaggle, "KAGGLE_API_FACTORY", lambda: api)
    record = kaggle_submit.submit_file(submission, "fake", slug=SLUG)
    assert api.submitted == [(str(submission), "fake", SLUG)]
    assert record.ref == "7" and record.cv == pytest.approx(0.8123)
    assert json.loads(log_file(workspace).read_text())["ref"] == "7"

    cases = [
        (FakeApi(error=HTTPFailure(403, "rules")), fetch_kaggle.RulesNotAccepted),
        (FakeApi(error=HTTPFailure(404, "nope")), fetch_kaggle.CompetitionNotFound),
        (FakeApi(error=HTTPFailure(429, "slow down")), kaggle_submit.SubmissionLimit),
        (
            FakeApi(error=HTTPFailure(400, f"daily submission limit; key {SECRET}")),
            kaggle_submit.SubmissionLimit,
        ),
        (FakeApi(reply={"message": "Could not submit to competition"}), fetch_kaggle.KaggleError),
        (FakeApi(authenticated=False), fetch_kaggle.MissingCredentials),
    ]
    for fake, error in cases:
        monkeypatch.setattr(fetch_kaggle, "KAGGLE_API_FACTORY", lambda fake=fake: fake)
        with pytest.raises(error) as info:
            kaggle_submit.submit_file(submission, "fake", slug=SLUG)
        assert_no_secret(str(info.value))
    assert len(log_file(workspace).read_text().splitlines()) == 1  # failures are not logged
    out, err = capsys.readouterr()
    assert_no_secret(out, err, caplog.text)


def test_log_appends_are_whole_lines_under_concurrency(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"

    def writer(worker: int) -> None:
        for i in range(25):
            jsonl.append_jsonl(path, {"worker": worker, "i": i, "pad": "x" * 2000})

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = jsonl.read_jsonl(path)
    assert len(records) == 150 and all(r["pad"] == "x" * 2000 for r in records)
    # a torn last line (a crash mid-write) is skipped, not fatal
    with open(path, "a") as f:
        f.write('{"worker": 9, "i"')
    assert len(jsonl.read_jsonl(path)) == 150
    jsonl.append_jsonl(path, {"worker": 10, "i": 0})
    assert jsonl.read_jsonl(path)[-1] == {"worker": 10, "i": 0}


def test_a_report_that_does_not_describe_the_csv_is_not_logged_with_it(tmp_path: Path, caplog) -> None:
    """An ensemble run killed between its report and its CSV leaves a pair that disagrees: the CV in
    the report is not this CSV's, so the submission is logged without it."""
    import hashlib
    import json as json_mod
    import logging

    from audiotag.kaggle.submit import read_report

    csv = tmp_path / "demo.csv"
    csv.write_text("fname,label\na.wav,x\n")
    report = {"cv": 0.9, "submission_sha256": hashlib.sha256(b"another csv").hexdigest()}
    csv.with_suffix(".json").write_text(json_mod.dumps(report))
    with caplog.at_level(logging.WARNING):
        assert read_report(csv) is None
    assert "is not the submission its report" in caplog.text
    report["submission_sha256"] = hashlib.sha256(csv.read_bytes()).hexdigest()
    csv.with_suffix(".json").write_text(json_mod.dumps(report))
    assert read_report(csv) == report


# --------------------------------------------------------------------------- --dry-run, kernels-only


def test_dry_run_checks_only_and_gives_the_counts_that_differ(
    kaggle: KaggleStub, submission: Path, workspace: Path, capsys
) -> None:
    assert main(["submit", str(submission), "--dry-run", "--slug", SLUG]) == 0  # no -m needed
    out = " ".join(capsys.readouterr().out.split())
    assert "3 rows match the demo sample submission" in out and "nothing was sent" in out
    assert f"sends it to {SLUG}" in out
    assert kaggle.calls == [] and not log_file(workspace).exists()
    # a short file: the counts and the missing ids
    lines = submission.read_text().splitlines()
    submission.write_text("\n".join(lines[:3]) + "\n")
    assert main(["submit", str(submission), "--dry-run", "--slug", SLUG]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert (
        "the submission has 2 rows, the sample submission 3; 1 sample id(s) missing (e.g. ['c3.wav'])" in err
    )
    # an extra and a repeated row
    submission.write_text("\n".join([*lines, lines[1], "zz.wav,Bark"]) + "\n")
    assert main(["submit", str(submission), "--dry-run", "--slug", SLUG]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert (
        "has 5 rows, the sample submission 3; 1 id(s) not in the sample (e.g. ['zz.wav']), 1 repeated" in err
    )
    assert main(["submit", str(submission), "--slug", SLUG]) == 2  # without --dry-run: -m is needed
    assert "-m MESSAGE" in capsys.readouterr().err
    assert kaggle.calls == []


def test_kernels_only_competitions_are_refused_and_point_at_the_kernel_bundle(
    kaggle: KaggleStub, workspace: Path, capsys
) -> None:
    from audiotag.competitions import get_competition
    from audiotag.config.schema import load_competition

    comp = get_competition(load_competition("fsd2019"))
    assert comp.cfg.kernels_only  # configs/competitions/fsd2019.yaml: a fact of the competition
    ids = ["t1.wav", "t2.wav"]
    comp.raw_dir.mkdir(parents=True)
    header = ",".join(["fname", *comp.classes])
    comp.sample_submission_path.write_text(header + "\n" + "".join(f"{i}{',0' * 80}\n" for i in ids))
    sub = workspace / "sub.csv"
    sub.write_text(header + "\n" + "".join(f"{i}{',0.5' * 80}\n" for i in ids))
    assert main(["submit", str(sub), "-c", "fsd2019", "--dry-run"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "2 rows match the fsd2019 sample submission" in out
    assert "fsd2019 (freesound-audio-tagging-2019) is a kernels-only competition" in out
    assert "./run.sh package OUT -c fsd2019 --kaggle-id USER/DATASET" in out and "kaggle kernels push" in out
    assert main(["submit", str(sub), "-c", "fsd2019", "-m", "x"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "is a kernels-only competition" in err and "nothing was submitted" in err
    assert kaggle.calls == [] and not log_file(workspace).exists()
