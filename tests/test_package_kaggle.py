"""The bundle's Kaggle metadata: the commands of the bundle's README run through the pinned ``kaggle``
client's own command line (its parser, its metadata readers and checks, its folder upload), with only
the calls that would reach Kaggle replaced, and a socket layer that refuses any connection."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from audiotag.cli.main import main
from audiotag.core.errors import ConfigError
from audiotag.kaggle import metadata
from tests import demo_workspace

COMMAND = re.compile(r"^ {4}(kaggle .+?)\s*$", re.M)


@pytest.fixture
def kaggle_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The real client with legacy credentials of user ``tester``; what it would have sent to Kaggle
    lands in the returned dict (uploads: name -> the files inside; requests: the create/save calls)."""
    home = tmp_path / "kaggle-home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(home))
    monkeypatch.setenv("KAGGLE_USERNAME", "tester")
    monkeypatch.setenv("KAGGLE_KEY", "0123456789abcdef")
    monkeypatch.delenv("KAGGLE_API_TOKEN", raising=False)
    with contextlib.redirect_stdout(io.StringIO()):
        import kaggle.cli
        from kaggle.api.kaggle_api_extended import KaggleApi
    from kagglesdk.datasets.types.dataset_api_service import ApiCreateDatasetResponse
    from kagglesdk.kernels.types.kernels_api_service import ApiSaveKernelResponse
    from requests import HTTPError

    monkeypatch.setattr(KaggleApi, "config_dir", str(home))
    monkeypatch.setattr(KaggleApi, "config", str(home / "kaggle.json"))
    sent: dict[str, Any] = {"uploads": {}, "requests": []}

    def upload(self: KaggleApi, name: str, path: str, *args: Any) -> SimpleNamespace:
        inside = zipfile.ZipFile(path).namelist() if name.endswith(".zip") else []
        sent["uploads"][name] = inside
        return SimpleNamespace(token=f"token-{name}", description=None, columns=None)

    def not_found(self: KaggleApi, ref: str) -> None:
        raise HTTPError("404: no such dataset yet")

    def create(request: Any) -> ApiCreateDatasetResponse:
        sent["requests"].append(("create_dataset", request))
        response = ApiCreateDatasetResponse()
        response.status, response.url = "ok", "https://www.kaggle.com/datasets/x"
        return response

    def save(request: Any) -> ApiSaveKernelResponse:
        sent["requests"].append(("save_kernel", request))
        response = ApiSaveKernelResponse()
        response.url, response.version_number = "https://www.kaggle.com/code/x", 1
        return response

    @contextlib.contextmanager
    def client(self: KaggleApi):
        yield SimpleNamespace(
            datasets=SimpleNamespace(dataset_api_client=SimpleNamespace(create_dataset=create)),
            kernels=SimpleNamespace(kernels_api_client=SimpleNamespace(save_kernel=save)),
        )

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a connection was attempted: {args[1:2]}")

    monkeypatch.setattr(KaggleApi, "_upload_file", upload)
    monkeypatch.setattr(KaggleApi, "dataset_status", not_found)
    monkeypatch.setattr(KaggleApi, "build_kaggle_client", client)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    api = KaggleApi()
    api.authenticate()
    monkeypatch.setattr(kaggle.cli, "api", api)
    sent["main"] = kaggle.cli.main
    return sent


def run_readme(bundle: Path, cli: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Run every command of the bundle's README in the bundle folder, as the kaggle command line;
    their output. A command the client refuses (exit 1, "Metadata file not found", ...) fails here."""
    commands = COMMAND.findall((bundle / "README.md").read_text())
    monkeypatch.chdir(bundle)
    outputs = []
    for command in commands:
        monkeypatch.setattr(sys, "argv", shlex.split(command))
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                cli["main"]()
            except SystemExit as exc:
                raise AssertionError(f"{command}: exit {exc.code}: {out.getvalue()}") from None
        outputs.append(out.getvalue())
    return outputs


def fake_bundle(
    folder: Path, competition: str = "fsd2019", slug: str = "freesound-audio-tagging-2019"
) -> dict:
    (folder / "code" / "audiotag").mkdir(parents=True)
    (folder / "code" / "audiotag" / "__init__.py").write_text("")
    (folder / "members" / "cnn" / "fold0").mkdir(parents=True)
    (folder / "members" / "cnn" / "fold0" / "best.pt").write_bytes(b"weights")
    (folder / "inference.py").write_text("print('inference')\n")
    manifest = {"competition": competition, "slug": slug, "ensemble": {"name": "fsd2019"}}
    (folder / "bundle.json").write_text(json.dumps(manifest))
    return manifest


def test_a_kernels_only_bundle_uploads_and_pushes_with_the_real_client(
    tmp_path: Path, kaggle_cli: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = tmp_path / "bundle"
    manifest = fake_bundle(bundle)
    ids = metadata.write_kaggle_metadata(bundle, manifest, None, kernels_only=True)
    assert ids == {
        "dataset": "tester/audiotag-fsd2019-fsd2019",
        "kernel": "tester/audiotag-fsd2019-fsd2019-submission",
    }
    (bundle / "README.md").write_text(metadata.upload_steps({**manifest, "kaggle": ids}))
    outputs = run_readme(bundle, kaggle_cli, monkeypatch)
    assert len(outputs) == 2 and "Your private Dataset is being created" in outputs[0]
    assert "does not resolve to the specified id" not in outputs[1]  # title and slug agree
    # the folders went up (as zips), the metadata files did not
    assert kaggle_cli["uploads"]["code.zip"] == ["audiotag/__init__.py"]
    assert kaggle_cli["uploads"]["members.zip"] == ["cnn/fold0/best.pt"]
    assert "bundle.json" in kaggle_cli["uploads"] and "dataset-metadata.json" not in kaggle_cli["uploads"]
    (_, dataset), (_, kernel) = kaggle_cli["requests"]
    assert (dataset.owner_slug, dataset.slug, dataset.is_private) == (
        "tester",
        "audiotag-fsd2019-fsd2019",
        True,
    )
    assert kernel.dataset_data_sources == ["tester/audiotag-fsd2019-fsd2019"]
    assert kernel.competition_data_sources == ["freesound-audio-tagging-2019"]
    assert (kernel.enable_internet, kernel.kernel_type, kernel.language) == (False, "notebook", "python")

    # the notebook finds both inputs under /kaggle/input and runs the bundle's inference.py
    source = json.loads(kernel.text)["cells"][0]["source"]
    inputs = tmp_path / "input"
    shutil.copytree(bundle, inputs / "audiotag-fsd2019-fsd2019")
    (inputs / "competitions" / "freesound-audio-tagging-2019").mkdir(parents=True)
    (inputs / "competitions" / "freesound-audio-tagging-2019" / "sample_submission.csv").write_text("fname\n")
    ran: list[list[str]] = []
    monkeypatch.setattr(subprocess, "run", lambda command, check: ran.append(command))
    exec(source.replace('"/kaggle/input"', repr(str(inputs))), {"__name__": "__main__"})
    assert ran == [
        [
            sys.executable,
            str(inputs / "audiotag-fsd2019-fsd2019" / "inference.py"),
            "--input",
            str(inputs / "competitions" / "freesound-audio-tagging-2019"),
            "--output",
            "/kaggle/working/submission.csv",
        ]
    ]


def test_kaggle_ids_follow_the_clients_rules(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path))
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    assert metadata.dataset_id(None, "demo", "demo") is None  # no owner known: nothing is written
    assert metadata.dataset_id("me/my-bundle", "demo", "demo") == "me/my-bundle"
    (tmp_path / "kaggle.json").write_text(json.dumps({"username": "fromfile", "key": "k"}))
    assert metadata.dataset_id("my-bundle", "demo", "demo") == "fromfile/my-bundle"
    long = metadata.dataset_id(None, "a" * 40, "b" * 40)
    assert long is not None and 6 <= len(long.split("/")[1]) <= 50 and not long.endswith("-")
    for bad in ("Me/My_Bundle", "me/x", "me/"):
        with pytest.raises(ConfigError, match="--kaggle-id"):
            metadata.dataset_id(bad, "demo", "demo")


@pytest.mark.slow
def test_the_demo_bundle_uploads_with_its_readme_commands(
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    kaggle_cli: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    demo = demo_workspace.copy_to(demo_workspace.trained_base(tmp_path_factory), tmp_path / "ws", monkeypatch)
    out = demo / "bundle"
    assert main(["package", "-c", "demo", str(out), "--kaggle-id", "tester/demo-bundle"]) == 0
    capsys.readouterr()
    assert json.loads((out / "bundle.json").read_text())["kaggle"] == {
        "dataset": "tester/demo-bundle",
        "kernel": None,
    }
    assert not (out / "kernel-metadata.json").exists()  # the demo is no kernels-only competition
    outputs = run_readme(out, kaggle_cli, monkeypatch)
    assert len(outputs) == 1 and "Your private Dataset is being created" in outputs[0]
    assert {"code.zip", "members.zip", "inference.py", "bundle.json"} <= set(kaggle_cli["uploads"])
    assert "audiotag/kaggle/inference.py" in kaggle_cli["uploads"]["code.zip"]
