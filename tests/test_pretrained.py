"""Weights table, download (resume, checksums, trust on first use), offline mode, checkpoint reading.

Downloads go to a local HTTP server on 127.0.0.1 that supports Range requests and can drop a
connection midway or ignore Range; nothing here touches the network.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import sys
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
from safetensors.torch import save_file

from audiotag.cli.main import main
from audiotag.config.schema import FeatureConfig
from audiotag.core.errors import ConfigError, DataError
from audiotag.fetch import http as fetch_http
from audiotag.fetch import hub as fetch_hub
from audiotag.fetch import weights as fetch_weights
from audiotag.fetch.weights import Checkpoint
from audiotag.models import pretrained
from audiotag.models.ast import AstConfig
from audiotag.models.cnn14 import CONVERTERS, CnnConfig, build_backbone
from audiotag.models.family import Family
from audiotag.models.pretrained import fetch, read_state_dict
from audiotag.models.registry import (
    build_model,
    check_pretrained,
    families,
    load_pretrained,
    lookup,
    resolve,
    weights_table,
)
from audiotag.models.timm_cnn import TimmConfig
from tests.http_fakes import running_server, serve_bytes

KNOWN = weights_table()


def _checkpoint_bytes() -> bytes:
    """A real (if meaningless) 300 kB torch checkpoint: a first download must read as weights."""
    buffer = io.BytesIO()
    weights = np.random.default_rng(0).standard_normal(75_000).astype(np.float32)
    torch.save({"layer.weight": torch.from_numpy(weights)}, buffer)
    return buffer.getvalue()


PAYLOAD = _checkpoint_bytes()
HF_TOKEN = "hf_test_token_0123456789"


@dataclass
class ServerState:
    content: bytes = PAYLOAD
    drop_after: int | None = None  # the next response sends this many body bytes, then closes
    ignore_range: bool = False
    ranges: list[str | None] = field(default_factory=list)  # the Range header of every request
    files: dict[str, bytes] = field(default_factory=dict)  # more paths served, e.g. a fake HF hub
    paths: list[str] = field(default_factory=list)  # the path of every GET request
    heads: list[str] = field(default_factory=list)  # the path of every HEAD request (the hub's metadata)
    private: set[str] = field(default_factory=set)  # paths served only with HF_TOKEN


class Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        state: ServerState = self.server.state  # type: ignore[attr-defined]
        data, header = state.files.get(self.path, state.content), self.headers.get("Range")
        state.ranges.append(header)
        state.paths.append(self.path)
        if self.path != "/fake.pth" and self.path not in state.files:
            self.send_error(404)
            return
        if self.path in state.private and self.headers.get("Authorization") != f"Bearer {HF_TOKEN}":
            self.send_error(401)
            return
        cut, state.drop_after = state.drop_after, None
        serve_bytes(self, data, not state.ignore_range, drop_after=cut)

    def do_HEAD(self) -> None:
        """What the Hugging Face hub answers about a file before huggingface_hub downloads it."""
        state: ServerState = self.server.state  # type: ignore[attr-defined]
        state.heads.append(self.path)
        if self.path not in state.files:
            self.send_error(404)
            return
        if self.path in state.private and self.headers.get("Authorization") != f"Bearer {HF_TOKEN}":
            self.send_response(401)
            self.send_header("X-Error-Code", "RepoNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = state.files[self.path]
        self.send_response(200)
        self.send_header("X-Repo-Commit", hashlib.sha1(data).hexdigest())
        self.send_header("ETag", f'"{sha256(data)}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()


@dataclass
class Server:
    state: ServerState
    url: str

    @property
    def base(self) -> str:
        return self.url.removesuffix("/fake.pth")


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.delenv("AUDIOTAG_OFFLINE", raising=False)
    monkeypatch.setattr(fetch_http, "RETRY_WAIT_S", 0.0)
    state = ServerState()
    with running_server(Handler, state) as url:
        yield Server(state, f"{url}/fake.pth")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fake_ckpt(url: str, **kwargs: object) -> Checkpoint:
    fields: dict[str, object] = {
        "name": "fake",
        "url": url,
        "filename": "fake.pth",
        "size": len(PAYLOAD),
        "sha256": sha256(PAYLOAD),
        "md5": hashlib.md5(PAYLOAD).hexdigest(),
        "license": "MIT",
        "layout": "panns",
        "features": "panns_32k",
        "model": "cnn14",
    }
    fields.update(kwargs)
    return Checkpoint(**fields)  # type: ignore[arg-type]


def visible(folder: Path) -> list[str]:
    """Files other than the hidden lock files."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def records(cache: Path) -> dict:
    return json.loads((cache / fetch_weights.RECORD_FILE).read_text())["files"]


# --------------------------------------------------------------------------- the table


def test_weights_table_is_consistent() -> None:
    filenames = [c.filename for c in KNOWN.values()]
    assert len(set(filenames)) == len(filenames)
    layouts = {layout for family in families().values() for layout in family.converters}
    assert len(KNOWN) == sum(len(f.checkpoints) for f in families().values())  # every family's rows
    for name, c in KNOWN.items():
        assert c.name == name and c.layout in layouts and c.model and c.license
        assert (c.url is None) != (c.package is None)
        assert c.url is None or c.url.startswith("https://")
    assert {KNOWN[n].layout for n in ("cnn14", "cnn14_16k", "cnn10", "cnn6")} == {"panns"}
    assert KNOWN["cnn14_16k"].features == "panns_16k" and KNOWN["cnn14"].features == "panns_32k"
    assert KNOWN["deit_base_384"].features is None and KNOWN["deit_base_384"].model == "ast_base"
    assert KNOWN["aisfx"].package == "aisfx==0.1.2"


def test_checkpoint_refuses_malformed_entries() -> None:
    with pytest.raises(ValueError, match="sha256"):
        fake_ckpt("https://x/y", sha256="ABC")
    with pytest.raises(ValueError, match="layout 'resnet'"):  # a row its family cannot convert
        Family(
            CnnConfig, build_backbone, CONVERTERS, checkpoints=(fake_ckpt("https://x/y", layout="resnet"),)
        )
    with pytest.raises(ValueError, match="url and package"):
        fake_ckpt(None)


# --------------------------------------------------------------------------- fetch


def test_fresh_fetch_checks_size_md5_sha256(server: Server, tmp_path: Path) -> None:
    path = fetch(fake_ckpt(server.url), tmp_path)
    assert path == tmp_path / "fake.pth" and path.read_bytes() == PAYLOAD
    assert not (tmp_path / "fake.pth.part").exists()
    assert not (tmp_path / fetch_weights.RECORD_FILE).exists()  # a published SHA-256 needs no record
    assert server.state.ranges == [None]
    assert fetch(fake_ckpt(server.url), tmp_path) == path  # cached: verified, not downloaded again
    assert len(server.state.ranges) == 1


def test_dropped_connection_is_resumed(server: Server, tmp_path: Path) -> None:
    half = len(PAYLOAD) // 2
    server.state.drop_after = half
    assert fetch(fake_ckpt(server.url), tmp_path, retries=1).read_bytes() == PAYLOAD
    assert server.state.ranges == [None, f"bytes={half}-"]


def test_interrupted_download_resumes_on_the_next_call(server: Server, tmp_path: Path) -> None:
    half = len(PAYLOAD) // 2
    server.state.drop_after = half
    with pytest.raises(DataError, match="resume"):
        fetch(fake_ckpt(server.url), tmp_path, retries=0)
    part = tmp_path / "fake.pth.part"
    assert part.read_bytes() == PAYLOAD[:half] and not (tmp_path / "fake.pth").exists()
    assert fetch(fake_ckpt(server.url), tmp_path, retries=0).read_bytes() == PAYLOAD
    assert server.state.ranges[-1] == f"bytes={half}-" and not part.exists()


def test_server_ignoring_range_restarts_from_zero(server: Server, tmp_path: Path) -> None:
    server.state.ignore_range = True
    (tmp_path / "fake.pth.part").write_bytes(b"x" * 1000)  # stale bytes that must not survive
    assert fetch(fake_ckpt(server.url), tmp_path).read_bytes() == PAYLOAD
    assert server.state.ranges == ["bytes=1000-"]


def test_complete_part_file_is_accepted_after_416(server: Server, tmp_path: Path) -> None:
    # killed after the last byte but before the rename; the size is not in the table
    (tmp_path / "fake.pth.part").write_bytes(PAYLOAD)
    assert fetch(fake_ckpt(server.url, size=None), tmp_path).read_bytes() == PAYLOAD
    assert server.state.ranges == [f"bytes={len(PAYLOAD)}-"]


def test_checksum_mismatch_deletes_download_and_keeps_good_file(server: Server, tmp_path: Path) -> None:
    ckpt = fake_ckpt(server.url, size=None, md5=None)
    good = fetch(ckpt, tmp_path)
    server.state.content = (
        PAYLOAD[:1000] + bytes([PAYLOAD[1000] ^ 0xFF]) + PAYLOAD[1001:]
    )  # other bytes upstream
    with pytest.raises(DataError) as err:
        fetch(ckpt, tmp_path, force=True)
    message = str(err.value)
    assert "fake.pth" in message and sha256(PAYLOAD) in message and sha256(server.state.content) in message
    assert "left as it was" in message
    assert not (tmp_path / "fake.pth.part").exists()
    assert good.read_bytes() == PAYLOAD


def test_md5_mismatch_refused_without_cached_copy(server: Server, tmp_path: Path) -> None:
    ckpt = fake_ckpt(server.url, sha256=None, md5="0" * 32)
    with pytest.raises(DataError, match=f"MD5 is {hashlib.md5(PAYLOAD).hexdigest()}, expected 0{{32}}"):
        fetch(ckpt, tmp_path)
    assert visible(tmp_path) == []


def test_size_mismatch_refused(server: Server, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"serves {len(PAYLOAD)} bytes, expected {len(PAYLOAD) + 1}"):
        fetch(fake_ckpt(server.url, size=len(PAYLOAD) + 1), tmp_path)
    assert not (tmp_path / "fake.pth").exists() and not (tmp_path / "fake.pth.part").exists()


def test_trust_on_first_use_then_tampered_file_refused(server: Server, tmp_path: Path) -> None:
    ckpt = fake_ckpt(server.url, size=None, sha256=None, md5=None)
    path = fetch(ckpt, tmp_path)
    record = records(tmp_path)["fake.pth"]
    assert record["sha256"] == sha256(PAYLOAD) and record["size"] == len(PAYLOAD) and record["name"] == "fake"
    assert fetch(ckpt, tmp_path) == path  # matches the record
    path.write_bytes(b"tampered" + PAYLOAD[8:])
    with pytest.raises(DataError, match="changed after it was checked") as err:
        fetch(ckpt, tmp_path)
    assert sha256(PAYLOAD) in str(err.value) and "weights fetch fake" in str(err.value)
    assert path.exists()  # refused, not deleted behind the user's back


def test_upstream_change_refused_against_the_record(server: Server, tmp_path: Path) -> None:
    ckpt = fake_ckpt(server.url, size=None, sha256=None, md5=None)
    fetch(ckpt, tmp_path)
    server.state.content = b"new release" + PAYLOAD
    with pytest.raises(DataError, match="recorded on first fetch"):
        fetch(ckpt, tmp_path, force=True)
    assert (tmp_path / "fake.pth").read_bytes() == PAYLOAD
    assert records(tmp_path)["fake.pth"]["sha256"] == sha256(PAYLOAD)


def test_concurrent_fetches_download_once(server: Server, tmp_path: Path) -> None:
    ckpt = fake_ckpt(server.url, size=None, sha256=None, md5=None)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(fetch(ckpt, tmp_path))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [tmp_path / "fake.pth"] * 3 and server.state.ranges == [None]
    assert visible(tmp_path) == ["checksums.json", "fake.pth"]


def test_http_error_is_reported(server: Server, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="HTTP 404"):
        fetch(fake_ckpt(server.url.replace("fake.pth", "gone.pth")), tmp_path)
    assert visible(tmp_path) == []


def test_offline_mode_names_the_file_and_never_connects(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("offline mode opened a connection")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    ckpt = fake_ckpt(server.url)
    with pytest.raises(DataError) as err:
        fetch(ckpt, tmp_path, offline=True)
    message = str(err.value)
    assert str(tmp_path / "fake.pth") in message and "./run.sh weights fetch fake" in message
    assert "--weights PATH" in message and server.url in message
    monkeypatch.setenv("AUDIOTAG_OFFLINE", "1")
    with pytest.raises(DataError, match="offline"):
        fetch(ckpt, tmp_path)
    (tmp_path / "fake.pth").write_bytes(PAYLOAD)  # a cached file is verified and used offline
    assert fetch(ckpt, tmp_path) == tmp_path / "fake.pth"
    assert server.state.ranges == []


def test_cache_dir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AUDIOTAG_CACHE", str(tmp_path / "c"))
    assert fetch_weights.cache_root() == tmp_path / "c"
    assert fetch_weights.cache_root(tmp_path / "d") == tmp_path / "d"
    monkeypatch.delenv("AUDIOTAG_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert fetch_weights.cache_root() == Path.home() / ".cache" / "audiotag"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert fetch_weights.cache_root() == tmp_path / "xdg" / "audiotag"


# --------------------------------------------------------------------------- resolve


def test_resolve_file_path_and_unknown_name(tmp_path: Path) -> None:
    file = tmp_path / "mine.pth"
    file.write_bytes(b"x")
    assert resolve(str(file)) == (file, None)
    with pytest.raises(ConfigError, match=r"known names: .*cnn14"):
        resolve("cnn15")
    with pytest.raises(ConfigError, match="folder"):
        resolve(str(tmp_path))


def test_resolve_known_name_fetches(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = fake_ckpt(server.url)
    monkeypatch.setitem(KNOWN, "fake", ckpt)
    assert resolve("fake", tmp_path) == (tmp_path / "fake.pth", ckpt)


def test_package_checkpoint_found_without_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "site" / "fakepkg_at"
    (package / "models").mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    (package / "models" / "checkpoint.pth").write_bytes(PAYLOAD)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    ckpt = fake_ckpt(None, md5=None, filename="models/checkpoint.pth", package="fakepkg_at==1.0")
    assert fetch(ckpt, tmp_path / "cache") == package / "models" / "checkpoint.pth"
    assert "fakepkg_at" not in sys.modules
    with pytest.raises(DataError, match=r"pip install nosuchpkg_at==0\.1"):
        fetch(replace(ckpt, package="nosuchpkg_at==0.1"), tmp_path / "cache")
    (package / "models" / "checkpoint.pth").write_bytes(PAYLOAD[:-1])
    with pytest.raises(DataError, match="bytes, expected"):
        fetch(ckpt, tmp_path / "cache")


@pytest.mark.skipif(importlib.util.find_spec("aisfx") is None, reason="aisfx is not installed")
def test_resolve_aisfx_from_installed_package() -> None:
    path, ckpt = resolve("aisfx")
    assert ckpt is KNOWN["aisfx"] and path.name == "checkpoint.pth" and path.parent.name == "models"
    state = read_state_dict(path)
    assert "embedding_net.conv_block1.conv1.weight" in state and any(k.startswith("fc.8.") for k in state)


# --------------------------------------------------------------------------- read_state_dict


def small_state() -> dict[str, torch.Tensor]:
    return {"conv.weight": torch.randn(4, 1, 3, 3), "conv.bias": torch.zeros(4)}


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"model": sd, "iteration": 7},
        lambda sd: {"state_dict": sd, "epoch": 3},
        # PANNs-style training state with NumPy arrays and scalars beside the weights
        lambda sd: {
            "iteration": 1,
            "model": sd,
            "sampler": {"random_state": np.random.RandomState(0).get_state(), "indexes": [np.arange(3)]},
        },
        # aisfx: (state_dict, datasets) with NumPy scalars in the second element
        lambda sd: (sd, {"prosfx": (np.int64(0), 78)}),
    ],
    ids=["plain", "model", "state_dict", "numpy-extras", "aisfx-tuple"],
)
def test_read_state_dict_unwraps_pth(tmp_path: Path, wrap) -> None:
    state = small_state()
    torch.save(wrap(state), tmp_path / "c.pth")
    loaded = read_state_dict(tmp_path / "c.pth")
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)


def test_read_state_dict_safetensors(tmp_path: Path) -> None:
    state = small_state()
    save_file(state, str(tmp_path / "c.safetensors"))
    loaded = read_state_dict(tmp_path / "c.safetensors")
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_read_state_dict_refuses_what_is_not_weights(tmp_path: Path) -> None:
    torch.save({"epoch": 3, "note": "no tensors"}, tmp_path / "empty.pth")
    with pytest.raises(DataError, match="holds no tensors"):
        read_state_dict(tmp_path / "empty.pth")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pth")  # a pickled module, not a state dict
    with pytest.raises(DataError, match="cannot be read safely"):
        read_state_dict(tmp_path / "module.pth")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="not a readable"):
        read_state_dict(tmp_path / "junk.pt")
    (tmp_path / "w.h5").write_bytes(b"x")
    with pytest.raises(DataError, match="unknown checkpoint format"):
        read_state_dict(tmp_path / "w.h5")
    with pytest.raises(DataError, match="not found"):
        read_state_dict(tmp_path / "absent.pth")


# --------------------------------------------------------------------------- CLI


@pytest.mark.slow
def test_cli_weights_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("AUDIOTAG_CACHE", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "160")
    (tmp_path / KNOWN["cnn10"].filename).write_bytes(b"x" * KNOWN["cnn10"].size)  # type: ignore[operator]
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    for name in KNOWN:
        assert name in out
    row = next(line for line in out.splitlines() if line.split()[:1] == ["cnn10"])
    assert row.split()[-1] == "yes"
    assert str(tmp_path) in out
    assert "hear:<module>[:<model_file>]" in out and "audiotag.hear" in out  # the HEAR bridge, both ways


@pytest.mark.slow
def test_cli_weights_fetch(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setitem(KNOWN, "fake", fake_ckpt(server.url))
    assert main(["weights", "fetch", "fake", "--weights-dir", str(tmp_path)]) == 0
    assert (tmp_path / "fake.pth").read_bytes() == PAYLOAD
    assert str(tmp_path / "fake.pth") in capsys.readouterr().out
    assert main(["weights", "fetch", "fake", "nonesuch", "--weights-dir", str(tmp_path)]) == 2
    assert "unknown weights 'nonesuch'" in capsys.readouterr().err
    monkeypatch.setenv("AUDIOTAG_OFFLINE", "1")
    os.remove(tmp_path / "fake.pth")
    assert main(["weights", "fetch", "fake", "--weights-dir", str(tmp_path)]) == 2
    assert "offline" in capsys.readouterr().err


# --------------------------------------------------------------------------- any timm arch by name

TIMM_ARCH = "test_resnet"  # timm's tiny test ResNet (0.5 M parameters), which has timm/test_resnet.r160_in1k
TIMM_TAGGED = f"{TIMM_ARCH}.r160_in1k"
TIMM_FILE = f"{TIMM_TAGGED}.safetensors"
TIMM_PATH = f"/timm/{TIMM_TAGGED}/resolve/main/model.safetensors"  # as on huggingface.co


@pytest.fixture(scope="module")
def timm_weights() -> tuple[dict[str, torch.Tensor], bytes]:
    """Random weights laid out like timm's own file for TIMM_ARCH (RGB stem, 1000-class fc)."""
    torch.manual_seed(0)
    model = timm.create_model(TIMM_ARCH, pretrained=False)
    state = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    return state, safetensors.torch.save(state)


@pytest.fixture
def hub(
    server: Server,
    timm_weights: tuple[dict[str, torch.Tensor], bytes],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path_factory: pytest.TempPathFactory,
) -> Server:
    """The local server as the Hugging Face hub ($HF_ENDPOINT), holding TIMM_ARCH's model.safetensors;
    huggingface_hub's cache in a folder of its own ($HF_HOME)."""
    server.state.files[TIMM_PATH] = timm_weights[1]
    monkeypatch.setenv("HF_ENDPOINT", server.base)
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf_home")))
    for name in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return server


def in_hub_cache(path: str = TIMM_PATH) -> Path:
    """Where huggingface_hub keeps the file the hub serves at ``path`` (``/repo/resolve/rev/file``)."""
    repo, rest = path.strip("/").split("/resolve/")
    revision, filename = rest.split("/", 1)
    found = fetch_hub.cached_hub_file(fetch_hub.HubFile(repo, revision, filename))
    assert found is not None, f"{path} is not in the Hugging Face cache"
    return found


def first_pretrained_name(keep) -> str | None:
    return next((n for n in timm.list_pretrained() if keep(timm.models.get_pretrained_cfg(n))), None)


def test_timm_names_follow_timms_pretrained_cfg() -> None:
    ckpt = lookup(f"timm/{TIMM_ARCH}")  # no tag: timm's default
    assert ckpt.name == f"timm/{TIMM_TAGGED}" and ckpt.filename == TIMM_FILE
    assert ckpt.url == f"https://huggingface.co{TIMM_PATH}" and ckpt.layout == "timm"
    assert ckpt.license == "apache-2.0*" and "licence field apache-2.0" in ckpt.note and ckpt.sha256 is None
    assert lookup("imagenet", TIMM_ARCH) == ckpt == lookup(f"timm/{TIMM_TAGGED}", TIMM_ARCH)
    # a tag in model.arch is what imagenet takes
    assert lookup("imagenet", "tf_efficientnet_b0.ap_in1k").name == "timm/tf_efficientnet_b0.ap_in1k"
    assert lookup("timm/tf_efficientnet_b0").name == "timm/tf_efficientnet_b0.ns_jft_in1k"
    # the curated entry stays the one for its file
    assert lookup("imagenet", "efficientnet_b0") is KNOWN["efficientnet_b0"]
    assert lookup("timm/efficientnet_b0.ra_in1k") is KNOWN["efficientnet_b0"]
    # weights that only have a URL (no HF hub repo) come from that URL
    url_only = first_pretrained_name(lambda c: not c.hf_hub_id and c.url and not c.custom_load)
    if url_only is not None:
        ckpt = lookup(f"timm/{url_only}")
        assert ckpt.url == timm.models.get_pretrained_cfg(url_only).url and ckpt.filename == f"{url_only}.pth"


def test_hf_endpoint_redirects_every_hugging_face_download(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert fetch_weights.download_url(KNOWN["efficientnet_b0"]) == KNOWN["efficientnet_b0"].url
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9/")
    assert fetch_weights.download_url(KNOWN["efficientnet_b0"]) == (
        "http://127.0.0.1:9/timm/efficientnet_b0.ra_in1k/resolve/main/model.safetensors"
    )
    assert fetch_weights.download_url(KNOWN["cnn14"]) == KNOWN["cnn14"].url  # Zenodo: unchanged


def test_timm_names_refused_with_clear_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"no architecture 'efficientnetb0'; did you mean efficientnet_b0"):
        lookup("timm/efficientnetb0")
    with pytest.raises(
        ConfigError, match=r"no pretrained tag 'nope' for test_resnet; its weights: timm/test_resnet"
    ):
        lookup("timm/test_resnet.nope")
    untrained = next(a for a in timm.list_models() if not pretrained.timm_tags(a))
    with pytest.raises(ConfigError, match=rf"no pretrained weights for {untrained}\b.*--weights PATH"):
        lookup("imagenet", untrained)
    with pytest.raises(ConfigError, match="need a timm model"):
        lookup("imagenet")
    with pytest.raises(ConfigError, match=r"weights of timm's resnet34, but model.arch is 'test_resnet'"):
        lookup("timm/resnet34", TIMM_ARCH)
    with pytest.raises(ConfigError, match=r"expected timm/<arch>"):
        lookup("timm/")
    custom = first_pretrained_name(lambda c: c.custom_load)
    if custom is not None:
        with pytest.raises(ConfigError, match="model-specific code"):
            lookup(f"timm/{custom}")
    with pytest.raises(ConfigError, match=r"unknown weights 'resnet34'.*timm/<arch>"):
        lookup("resnet34")


def test_imagenet_weights_download_record_and_load(
    hub: Server,
    timm_weights: tuple[dict[str, torch.Tensor], bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state, blob = timm_weights
    monkeypatch.setenv("AUDIOTAG_CACHE", str(tmp_path))
    cfg, features = TimmConfig(arch=TIMM_ARCH, pretrained="imagenet"), FeatureConfig()
    check_pretrained(cfg, features)  # before a run starts: downloads and records
    assert hub.state.paths == [TIMM_PATH] and in_hub_cache().read_bytes() == blob  # huggingface_hub's cache
    assert not (tmp_path / TIMM_FILE).exists()
    record = records(tmp_path)[TIMM_FILE]
    assert record["sha256"] == sha256(blob) and record["size"] == len(blob)
    assert record["name"] == f"timm/{TIMM_TAGGED}" and record["url"] == hub.base + TIMM_PATH

    model = build_model(cfg, n_mels=64, n_classes=5, frames=100)
    report = load_pretrained(model, cfg, features)  # second use: the record is checked, no download
    assert report is not None and hub.state.paths == [TIMM_PATH]
    assert sorted(report.ignored) == ["fc.bias", "fc.weight"]
    assert report.adapted == ["backbone.model.conv1.0.weight (16, 3, 3, 3)->(16, 1, 3, 3)"]
    ours = model.state_dict()
    assert torch.equal(ours["backbone.model.layer4.0.conv2.weight"], state["layer4.0.conv2.weight"])
    assert torch.equal(ours["backbone.model.conv1.0.weight"], state["conv1.0.weight"].sum(1, keepdim=True))

    # an explicit timm/ name is the same file
    explicit = TimmConfig(arch=TIMM_ARCH, pretrained=f"timm/{TIMM_ARCH}")
    assert load_pretrained(build_model(explicit, 64, 5, 100), explicit, features) is not None
    assert hub.state.paths == [TIMM_PATH]

    # a file that changed after its first use is refused, and kept
    in_hub_cache().write_bytes(blob[:-4] + b"\0\0\0\0")
    with pytest.raises(DataError, match="changed after it was checked") as err:
        load_pretrained(build_model(cfg, 64, 5, 100), cfg, features)
    assert sha256(blob) in str(err.value) and f"./run.sh weights fetch timm/{TIMM_TAGGED}" in str(err.value)
    assert in_hub_cache().exists() and hub.state.paths == [TIMM_PATH]

    # offline without the file: names the file, the URL and --weights PATH; never connects
    fetch_hub.discard_hub_file(in_hub_cache())
    monkeypatch.setenv("AUDIOTAG_OFFLINE", "1")
    with pytest.raises(DataError, match="offline") as err:
        check_pretrained(cfg, features)
    message = str(err.value)
    assert str(tmp_path / TIMM_FILE) in message and hub.base + TIMM_PATH in message
    assert "--weights PATH" in message and f"weights fetch timm/{TIMM_TAGGED}" in message
    assert hub.state.paths == [TIMM_PATH]


def test_a_first_download_that_is_not_weights_is_refused_and_not_recorded(
    hub: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing is published to check a first download against, so it must at least read as weights
    before its hash is recorded: an error page or a broken file is deleted and leaves no record."""
    monkeypatch.setenv("AUDIOTAG_CACHE", str(tmp_path))
    good = hub.state.files[TIMM_PATH]
    cfg = TimmConfig(arch=TIMM_ARCH, pretrained="imagenet")
    for bad in (b"\x08\0\0\0\0\0\0\0{broken", b"<html><body>Proxy error</body></html>"):
        hub.state.files[TIMM_PATH] = bad
        with pytest.raises(
            DataError, match=f"download of {TIMM_FILE} from .* refused: .*not a readable"
        ) as err:
            load_pretrained(build_model(cfg, 64, 5, 100), cfg, FeatureConfig())
        assert "nothing was recorded" in str(err.value)
        assert not (tmp_path / TIMM_FILE).exists() and not (tmp_path / "checksums.json").exists()
        assert not list(tmp_path.glob("*.part"))
    hub.state.files[TIMM_PATH] = good  # the source is fixed: the next try downloads and records it
    load_pretrained(build_model(cfg, 64, 5, 100), cfg, FeatureConfig())
    assert records(tmp_path)[TIMM_FILE]["sha256"] == sha256(good)


def test_imagenet_needs_a_timm_model_and_a_matching_arch() -> None:
    with pytest.raises(ConfigError, match="need a timm model"):
        check_pretrained(AstConfig(pretrained="imagenet"), FeatureConfig())
    with pytest.raises(ConfigError, match=r"but model\.arch is 'efficientnet_b0'"):
        check_pretrained(TimmConfig(pretrained="timm/resnet34"), FeatureConfig())


def test_resolve_prefers_an_existing_file_named_like_timm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "timm").mkdir()
    (tmp_path / "timm" / "mine.pth").write_bytes(b"x")
    assert resolve("timm/mine.pth") == (Path("timm/mine.pth"), None)


@pytest.mark.slow
def test_cli_weights_fetch_and_list_timm(
    hub: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["weights", "fetch", f"timm/{TIMM_ARCH}", "--weights-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"timm/{TIMM_TAGGED}" in out and "apache-2.0" in out
    assert str(in_hub_cache()) in out  # huggingface_hub's cache, not ours
    assert records(tmp_path)[TIMM_FILE]["sha256"] == sha256(hub.state.files[TIMM_PATH])
    assert main(["weights", "fetch", "imagenet", "--weights-dir", str(tmp_path)]) == 2
    assert "timm/<arch>" in capsys.readouterr().err

    assert main(["weights", "list", "--weights-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "efficientnet_b0" in out and "pretrained: imagenet" in out and "--timm" in out
    assert main(["weights", "list", "--timm", f"{TIMM_ARCH}*", "--weights-dir", str(tmp_path)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if f"timm/{TIMM_TAGGED}" in line)
    assert row.split()[1:3] == ["yes", "apache-2.0*"] and row.split()[-1] == "yes"
    assert main(["weights", "list", "--timm", "no_such_arch*"]) == 2
    assert "no timm weights match" in capsys.readouterr().err


def test_pickle_globals_are_allowed_per_table_entry(tmp_path: Path) -> None:
    """torch.load stays weights-only; numpy arrays only where the entry (or a plain path) allows them."""
    state = small_state()
    panns_like = tmp_path / "panns.pth"
    torch.save({"model": state, "sampler": {"indexes": np.arange(4), "pointer": np.int64(2)}}, panns_like)
    assert read_state_dict(panns_like).keys() == state.keys()  # a path: numpy allowed
    assert read_state_dict(panns_like, allow=KNOWN["cnn14"].pickle_globals).keys() == state.keys()
    with pytest.raises(DataError, match=r"numpy\.") as refused:
        read_state_dict(panns_like, allow=KNOWN["byola512"].pickle_globals)  # a plain state dict's entry
    assert "weights_only=True" in str(refused.value)
    for name, ckpt in KNOWN.items():
        expect = ("numpy",) if ckpt.layout in ("panns", "aisfx") else ()
        assert ckpt.pickle_globals == expect, name
    with pytest.raises(ValueError, match="pickle_globals"):
        replace(KNOWN["cnn14"], pickle_globals=("builtins",))


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_a_pickle_that_runs_code_is_refused_whatever_is_allowed(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"model": small_state(), "extra": _RunsCode()}, path)
    with pytest.raises(DataError, match="Python objects"):
        read_state_dict(path, allow=("numpy",))


# --------------------------------------------------------------------------- the ecosystem's caches


def _prefill_hub_cache(home: Path, path: str, data: bytes) -> Path:
    """Put ``data`` into a Hugging Face cache under ``home`` as huggingface_hub lays it out."""
    repo, rest = path.strip("/").split("/resolve/")
    revision, filename = rest.split("/", 1)
    folder = home / "hub" / f"models--{repo.replace('/', '--')}"
    commit = hashlib.sha1(data).hexdigest()
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / revision).write_text(commit)
    target = folder / "snapshots" / commit / filename
    target.parent.mkdir(parents=True)
    target.write_bytes(data)
    return target


def test_weights_already_in_the_hugging_face_cache_are_used_without_a_request(
    hub: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("AUDIOTAG_CACHE", str(tmp_path / "ours"))
    cached = _prefill_hub_cache(home, TIMM_PATH, hub.state.files[TIMM_PATH])
    ckpt = lookup(f"timm/{TIMM_ARCH}")
    assert fetch(ckpt) == cached and fetch_weights.cache_status(ckpt) == "yes"
    assert hub.state.heads == [] and hub.state.paths == []  # not even a metadata request
    assert records(tmp_path / "ours")[TIMM_FILE]["sha256"] == sha256(hub.state.files[TIMM_PATH])
    monkeypatch.setenv("AUDIOTAG_OFFLINE", "1")
    assert fetch(ckpt) == cached
    # $HF_HUB_CACHE names the cache itself; $XDG_CACHE_HOME moves the default one
    monkeypatch.delenv("HF_HOME")
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    assert fetch(ckpt) == cached
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    (tmp_path / "xdg").mkdir()
    (home).rename(tmp_path / "xdg" / "huggingface")
    assert fetch(ckpt) == tmp_path / "xdg" / "huggingface" / cached.relative_to(home)
    assert hub.state.heads == [] and hub.state.paths == []


def test_a_private_hub_repo_needs_hf_token_and_hf_hub_offline_is_honoured(
    hub: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUDIOTAG_CACHE", str(tmp_path / "ours"))
    ckpt = lookup(f"timm/{TIMM_ARCH}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # huggingface_hub's own offline mode: nothing sent either
    with pytest.raises(DataError, match="HF_HUB_OFFLINE is set"):
        fetch(ckpt)
    assert hub.state.heads == []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    hub.state.private.add(TIMM_PATH)
    with pytest.raises(
        DataError, match=r"has no repo timm/test_resnet.r160_in1k, or it is private: set HF_TOKEN"
    ):
        fetch(ckpt)
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    assert fetch(ckpt) == in_hub_cache() and hub.state.paths == [TIMM_PATH]


def test_a_url_already_in_torch_hubs_cache_is_used(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    theirs = tmp_path / "torch" / "hub" / "checkpoints" / "fake.pth"
    theirs.parent.mkdir(parents=True)
    theirs.write_bytes(PAYLOAD)
    ckpt = fake_ckpt(server.url, filename="Fake_mAP=0.5.pth")  # our name differs from the URL's
    assert (
        fetch(ckpt, tmp_path / "ours") == theirs
        and fetch_weights.cache_status(ckpt, tmp_path / "ours") == "yes"
    )
    assert server.state.ranges == []
    monkeypatch.delenv("TORCH_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # TORCH_HOME's default: $XDG_CACHE_HOME/torch
    assert fetch(ckpt, tmp_path / "ours") == theirs and server.state.ranges == []
