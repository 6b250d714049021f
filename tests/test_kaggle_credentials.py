"""Signing in to Kaggle with the real client: a ``kaggle.json`` other users can read is warned about
(``chmod 600``), and a rejected access token is reported as sent and rejected, not as "nothing was
sent to Kaggle". No connection: the client's token check is replaced by one that records the token."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path

import pytest

from audiotag.fetch import kaggle as fetch_kaggle

TOKEN = "KGAT_rejected_0123456789abcdef0123456789"


@pytest.fixture
def kaggle_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    (home / ".kaggle").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(home / ".kaggle"))
    for name in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY", "AUDIOTAG_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    with contextlib.redirect_stdout(io.StringIO()):
        from kaggle.api.kaggle_api_extended import KaggleApi
    # the config file path is fixed when the module is first imported: point it at this home
    monkeypatch.setattr(KaggleApi, "config_dir", str(home / ".kaggle"))
    monkeypatch.setattr(KaggleApi, "config", str(home / ".kaggle" / "kaggle.json"))
    return home / ".kaggle"


def test_a_kaggle_json_others_can_read_is_warned_about(
    kaggle_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = kaggle_home / "kaggle.json"
    path.write_text(json.dumps({"username": "tester", "key": "0123456789abcdef"}))
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="audiotag.fetch.kaggle"):
        api = fetch_kaggle.authenticated_api(fetch_kaggle.default_api)
    assert api.config_values["username"] == "tester"
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == [
        f"{path} can be read by other users of this machine (mode 0o644): your Kaggle key is "
        f"exposed; run `chmod 600 {path}`"
    ]
    assert "0123456789abcdef" not in caplog.text
    caplog.clear()
    path.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="audiotag.fetch.kaggle"):
        fetch_kaggle.authenticated_api(fetch_kaggle.default_api)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_a_rejected_access_token_is_reported_as_sent_and_rejected(
    kaggle_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kaggle.api.kaggle_api_extended import KaggleApi

    checked: list[str] = []

    def introspect(self: KaggleApi, token: str) -> None:  # Kaggle answers: not an active token
        checked.append(token)

    monkeypatch.setattr(KaggleApi, "_introspect_token", introspect)
    monkeypatch.setenv("KAGGLE_API_TOKEN", TOKEN)
    with pytest.raises(fetch_kaggle.MissingCredentials) as err:
        fetch_kaggle.authenticated_api(fetch_kaggle.default_api)
    message = str(err.value)
    assert checked == [TOKEN]  # the token did go to Kaggle
    assert "Kaggle did not accept the access token in KAGGLE_API_TOKEN" in message
    assert "sent to Kaggle to be checked" in message and "nothing was sent" not in message
    assert TOKEN not in message
    # credentials the client never sends anywhere (a username without a key): nothing was sent
    monkeypatch.delenv("KAGGLE_API_TOKEN")
    monkeypatch.setenv("KAGGLE_USERNAME", "tester")
    with pytest.raises(fetch_kaggle.MissingCredentials, match=r"nothing was sent to Kaggle"):
        fetch_kaggle.authenticated_api(fetch_kaggle.default_api)
    assert checked == [TOKEN]
