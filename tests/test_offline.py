"""One network gate: with ``AUDIOTAG_OFFLINE=1`` every command that would use the network (prepare of
each downloadable competition, from Kaggle and from Zenodo, a table's download, weights fetch, submit,
the leaderboard's Kaggle scores) stops with a clear message before any connection is attempted.

The socket layer is patched to record and refuse every connection and name lookup, so a command that
slips past the gate fails here even if its own error handling hides the refusal."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from audiotag.cli.main import main
from audiotag.fetch import http as fetch_http

SECRET_TOKEN = "KGAT_0123456789abcdef0123456789abcdef"


@pytest.fixture
def attempts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every connection or name lookup tried, each refused with an OSError as a dead network would."""
    tried: list[str] = []

    def refuse(what: str):
        def refused(*args: object, **kwargs: object) -> None:
            tried.append(f"{what}{args[1:2] if what.startswith('socket.') else args[:1]}")
            raise OSError(f"the test refuses {what}")

        return refused

    monkeypatch.setattr(socket.socket, "connect", refuse("socket.connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("socket.connect_ex"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    monkeypatch.setattr(fetch_http, "RETRY_WAIT_S", 0.0)
    return tried


@pytest.fixture
def offline(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Offline mode, with every kind of Kaggle credentials present (an access token is checked with
    Kaggle when the client signs in, so even building the client would connect)."""
    home = workspace / "home"
    (home / ".kaggle").mkdir(parents=True)
    kaggle_json = home / ".kaggle" / "kaggle.json"
    kaggle_json.write_text(json.dumps({"username": "tester", "key": "0123456789abcdef"}))
    kaggle_json.chmod(0o600)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(home / ".kaggle"))
    monkeypatch.setenv("KAGGLE_API_TOKEN", SECRET_TOKEN)
    monkeypatch.setenv("AUDIOTAG_OFFLINE", "1")
    monkeypatch.setenv("AUDIOTAG_CACHE", str(workspace / "weights"))
    monkeypatch.setenv("HF_HOME", str(workspace / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return workspace


def table_with_download(folder: Path) -> Path:
    path = folder / "mine.yaml"
    path.write_text(
        "name: mine\nkind: table\ntrain_csv: meta.csv\naudio_dir: audio\nmetric: accuracy\n"
        "submission: {kind: top_k_labels, k: 1}\n"
        "download: {url: 'https://example.org/mine.zip', folder: mine}\n"
    )
    return path


def table_with_submission(folder: Path) -> tuple[Path, Path]:
    """A kind: table competition used in place, with its sample submission and a valid submission."""
    data = folder / "data"
    (data / "audio").mkdir(parents=True)
    (data / "test").mkdir()
    (data / "meta.csv").write_text("fname,label\n")
    (data / "sample_submission.csv").write_text("fname,label\nt1.wav,\nt2.wav,\n")
    path = folder / "subs.yaml"
    path.write_text(
        f"name: subs\nkind: table\ndata_dir: {data}\ntrain_csv: meta.csv\naudio_dir: audio\ntest_dir: test\n"
        "sample_submission: sample_submission.csv\nmetric: accuracy\nclasses: [a, b]\n"
        "submission: {kind: top_k_labels, k: 1}\n"
    )
    csv = folder / "mine.csv"
    csv.write_text("fname,label\nt1.wav,a\nt2.wav,b\n")
    return path, csv


COMMANDS = {
    "prepare fsd2018 (Kaggle)": (["prepare", "-c", "fsd2018"], "the Kaggle API"),
    "prepare fsd2018 (Zenodo)": (
        ["prepare", "-c", "fsd2018", "--set", "competition.source=zenodo"],
        "Zenodo",
    ),
    "prepare fsd2019 (Kaggle)": (["prepare", "-c", "fsd2019"], "the Kaggle API"),
    "prepare fsd2019 (Zenodo)": (
        ["prepare", "-c", "fsd2019", "--set", "competition.source=zenodo"],
        "Zenodo",
    ),
    "prepare fsd50k": (["prepare", "-c", "fsd50k"], "Zenodo"),
    "prepare esc50": (["prepare", "-c", "esc50"], "github"),
    "prepare urbansound8k": (["prepare", "-c", "urbansound8k"], "UrbanSound8K"),
    "prepare speechcommands": (["prepare", "-c", "speechcommands"], "speech_commands"),
    "prepare audioset": (["prepare", "-c", "audioset"], "csv"),
    "prepare a table's download": (["prepare", "-c", "{table}"], "example.org/mine.zip"),
    "weights fetch (Zenodo)": (["weights", "fetch", "cnn14"], "Cnn14"),
    "weights fetch (Hugging Face)": (["weights", "fetch", "timm/test_resnet"], "test_resnet"),
}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_download_stops_at_the_gate_before_any_connection(
    name: str, offline: Path, attempts: list[str], capsys: pytest.CaptureFixture
) -> None:
    argv, names = COMMANDS[name]
    argv = [a.replace("{table}", str(table_with_download(offline))) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "needs the network, but offline mode is on (AUDIOTAG_OFFLINE=1" in err, err
    assert "nothing was sent" in err and names.lower() in err.lower(), err
    assert SECRET_TOKEN not in err
    assert attempts == []


def test_submit_stops_at_the_gate_after_checking_the_file(
    offline: Path, attempts: list[str], capsys: pytest.CaptureFixture
) -> None:
    config, csv = table_with_submission(offline)
    assert main(["submit", str(csv), "-m", "x", "-c", str(config), "--slug", "some-comp"]) == 2
    err = capsys.readouterr().err
    assert f"submitting {csv} to some-comp (the Kaggle API) needs the network" in err
    assert "the file matches the sample submission (2 rows)" in err
    assert not (offline / "submissions" / "log.jsonl").exists()
    assert attempts == []


def test_leaderboard_leaves_the_lb_blank_offline(
    offline: Path, attempts: list[str], capsys: pytest.CaptureFixture
) -> None:
    log = offline / "submissions" / "log.jsonl"
    log.parent.mkdir(parents=True)
    entry = {"time": "2026-01-01T00:00:00", "competition": "demo", "slug": "demo-slug", "file": "x.csv"}
    log.write_text(json.dumps({**entry, "sha256": "0" * 64, "message": "m"}) + "\n")
    assert main(["leaderboard", "-c", "demo"]) == 0
    out = capsys.readouterr().out
    assert "public/private LB are blank: offline mode is on (AUDIOTAG_OFFLINE=1)" in " ".join(out.split())
    assert attempts == []
