"""Pretrained weights files: the record type, the cache, downloads and verification.

A :class:`Checkpoint` describes one official file (URL or PyPI package, size, hashes, licence);
:func:`fetch` downloads a file into the cache with resume, a progress bar and size/checksum checks
(the transfer itself is :mod:`audiotag.fetch.http`'s).

Verification: as :mod:`audiotag.fetch.http` checks a download. Where no SHA-256 is published, the
SHA-256 of the first good download is recorded in ``checksums.json`` beside the cached files (trust
on first use) and every later use checks the file against that record, so a file that changes after
its first fetch is refused. A first download that nothing published can check is also read by the
``read_weights`` callable the caller passes (the models layer passes its state-dict reader), so an
error page is never recorded.

Cache: ``~/.cache/audiotag``, or ``$AUDIOTAG_CACHE``, or the ``cache_dir`` argument. Offline mode
(``AUDIOTAG_OFFLINE=1`` or ``offline=True``) never opens a connection: a missing file is an error
that names the file and how to get it. Hugging Face URLs go to ``$HF_ENDPOINT`` when that is set (a
mirror, as huggingface_hub does).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from audiotag.core.atomic import atomic_write_json
from audiotag.core.errors import DataError
from audiotag.fetch import http
from audiotag.fetch.http import (
    HEX32,
    HEX64,
    RETRIES,
    Expected,
    accept_part,
    fetch_part,
    file_digests,
    human_size,
    locked,
    part_path,
)
from audiotag.fetch.network import require_network

log = logging.getLogger(__name__)

RECORD_FILE = "checksums.json"  # trust-on-first-use SHA-256 of files without a published one
PICKLE_ALLOWANCES = ("numpy",)  # named groups of globals a Checkpoint's pickle_globals may allow
HF_ENDPOINT = "https://huggingface.co"  # $HF_ENDPOINT replaces it in downloads (a mirror, or tests)

# reads a downloaded file as weights, raising DataError if it is not: (path, suffix, pickle_globals)
ReadWeights = Callable[[Path, str, tuple[str, ...]], object]


@dataclass(frozen=True)
class Checkpoint:
    """One official pretrained file and what it needs.

    ``size``, ``sha256`` and ``md5`` are published or independently confirmed values, or None where
    unknown: such a file's SHA-256 is recorded on its first fetch and checked on every later use.
    ``package`` names a PyPI requirement whose installed files hold the checkpoint (then ``url`` is
    None and ``filename`` is the path inside the package).
    """

    name: str
    url: str | None
    filename: str
    size: int | None
    sha256: str | None
    md5: str | None
    license: str
    layout: str
    features: str | None  # configs/features/<features>.yaml it was trained with; None = any front-end
    model: str  # configs/models/<model>.yaml builds the matching architecture (timm/* entries: the arch)
    note: str = ""
    package: str | None = None
    # what torch.load(weights_only=True) must allow besides tensors: "numpy" = numpy arrays and
    # scalars (PANNs' files keep the training sampler's state as numpy arrays beside the model)
    pickle_globals: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.sha256 is not None and not HEX64.fullmatch(self.sha256):
            raise ValueError(f"{self.name}: sha256 must be 64 lowercase hex digits")
        if self.md5 is not None and not HEX32.fullmatch(self.md5):
            raise ValueError(f"{self.name}: md5 must be 32 lowercase hex digits")
        if (self.url is None) == (self.package is None):
            raise ValueError(f"{self.name}: give exactly one of url and package")
        if unknown := set(self.pickle_globals) - set(PICKLE_ALLOWANCES):
            raise ValueError(
                f"{self.name}: pickle_globals {sorted(unknown)} not in {sorted(PICKLE_ALLOWANCES)}"
            )

    @property
    def front_end(self) -> str:
        return self.features or "any"

    @property
    def source(self) -> str:
        return self.url or f"PyPI package {self.package}"


# --------------------------------------------------------------------------- cache and offline mode


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The weights cache: ``cache_dir``, else ``$AUDIOTAG_CACHE``, else ``~/.cache/audiotag``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("AUDIOTAG_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "audiotag"


def hf_endpoint() -> str:
    """Where Hugging Face downloads go: ``$HF_ENDPOINT`` (a mirror) or https://huggingface.co."""
    return (os.environ.get("HF_ENDPOINT", "").strip() or HF_ENDPOINT).rstrip("/")


def download_url(ckpt: Checkpoint) -> str | None:
    """The URL a download actually uses: Hugging Face URLs moved to :func:`hf_endpoint`."""
    url = ckpt.url
    if url is not None and url.startswith(HF_ENDPOINT + "/"):
        return hf_endpoint() + url[len(HF_ENDPOINT) :]
    return url


def cached_path(ckpt: Checkpoint, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the checkpoint lives once fetched (for package entries: inside the installed package)."""
    if ckpt.package is not None:
        return _package_file(ckpt)
    return cache_root(cache_dir) / ckpt.filename


def cache_status(ckpt: Checkpoint, cache_dir: str | os.PathLike[str] | None = None) -> str:
    """A cheap one-word answer for listings (no hashing): yes, no, partial, installed, not installed."""
    if ckpt.package is not None:
        try:
            _package_file(ckpt)
        except DataError:
            return "missing"
        return "installed"
    path = cache_root(cache_dir) / ckpt.filename
    if path.is_file():
        return "yes" if ckpt.size is None or path.stat().st_size == ckpt.size else "wrong size"
    return "partial" if part_path(path).exists() else "no"


def _package_file(ckpt: Checkpoint) -> Path:
    """The checkpoint inside an installed package, found without importing the package."""
    assert ckpt.package is not None
    module = ckpt.package.split("==")[0].strip()
    hint = f"pip install {ckpt.package} --no-deps"
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"weights {ckpt.name!r} ship inside the PyPI package {ckpt.package}, which is not installed; "
            f"install it with `{hint}` (./run.sh installs it from requirements-nodeps.lock)"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / ckpt.filename
        if path.is_file():
            return path
    raise DataError(
        f"weights {ckpt.name!r}: the installed package {module} has no {ckpt.filename}; "
        f"reinstall it with `{hint} --force-reinstall`"
    )


# --------------------------------------------------------------------------- checksums


def _records_path(cache: Path) -> Path:
    return cache / RECORD_FILE


def _read_records(cache: Path) -> dict[str, dict[str, Any]]:
    path = _records_path(cache)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(
            f"{path}: cannot read the recorded checksums ({exc}); fix or delete it (files without a "
            "published checksum are then trusted again on their next use)"
        ) from None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        raise DataError(
            f"{path}: expected {{'files': {{filename: {{sha256, size, ...}}}}}}; fix or delete it"
        )
    return files


def _write_record(cache: Path, ckpt: Checkpoint, size: int, sha256: str) -> None:
    with locked(cache / ".checksums.lock"):
        files = _read_records(cache)
        files[ckpt.filename] = {
            "name": ckpt.name,
            "sha256": sha256,
            "size": size,
            "url": download_url(ckpt),
            "recorded": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        atomic_write_json(_records_path(cache), {"version": 1, "files": files})
    log.info(
        "recorded SHA-256 %s of %s in %s (trust on first use)", sha256, ckpt.filename, cache / RECORD_FILE
    )


def _expected_sha256(ckpt: Checkpoint, cache: Path) -> tuple[str | None, str]:
    """The SHA-256 a file must have and where that value comes from, or (None, '') on first use."""
    if ckpt.sha256 is not None:
        return ckpt.sha256, "the weights table"
    record = _read_records(cache).get(ckpt.filename)
    if record is None:
        return None, ""
    origin = f"the SHA-256 recorded on first fetch ({record.get('recorded', '?')}) in {cache / RECORD_FILE}"
    return str(record.get("sha256")), origin


def verify(ckpt: Checkpoint, path: Path, cache_dir: str | os.PathLike[str] | None = None) -> None:
    """Check a cached (or installed) file against the table and the first-use record.

    A file without a published SHA-256 and without a record is trusted now and recorded.
    """
    path = Path(path)
    cache = cache_root(cache_dir)
    if ckpt.package is not None:
        fix = f"reinstall the package: pip install {ckpt.package} --no-deps --force-reinstall"
    else:
        fix = f"delete it and run `./run.sh weights fetch {ckpt.name}`"
    size, sha256, md5 = file_digests(path, md5=ckpt.md5 is not None)
    if ckpt.size is not None and size != ckpt.size:
        raise DataError(f"{path}: {size} bytes, expected {ckpt.size} ({ckpt.name}); {fix}")
    if ckpt.md5 is not None and md5 != ckpt.md5:
        raise DataError(f"{path}: MD5 {md5}, expected {ckpt.md5} (published for {ckpt.name}); {fix}")
    if ckpt.package is not None:
        expected, origin = ckpt.sha256, f"the RECORD of {ckpt.package}"
    else:
        expected, origin = _expected_sha256(ckpt, cache)
    if expected is None:
        log.warning("%s has no published checksum and no record yet: trusting it now", path)
        _write_record(cache, ckpt, size, sha256)
    elif sha256 != expected:
        also = ""
        if ckpt.sha256 is None and ckpt.package is None:
            also = f" (if the upstream file really changed, also delete its entry in {cache / RECORD_FILE})"
        raise DataError(
            f"{path}: SHA-256 {sha256}, expected {expected} (from {origin}): the file changed after it "
            f"was checked; {fix}{also}"
        )


# --------------------------------------------------------------------------- download


def _missing_hint(ckpt: Checkpoint) -> str:
    return (
        f"get it with `./run.sh weights fetch {ckpt.name}` on a machine with internet access (then copy "
        f"the cache folder), or download {download_url(ckpt)} yourself and pass the file with "
        "--weights PATH (in a config: --set model.pretrained=PATH)"
    )


def fetch(
    ckpt: Checkpoint,
    cache_dir: str | os.PathLike[str] | None = None,
    offline: bool | None = None,
    *,
    force: bool = False,
    retries: int | None = None,
    read_weights: ReadWeights | None = None,
) -> Path:
    """The local path of a checkpoint, downloading and verifying it first when it is not cached.

    ``force`` downloads again even when a cached copy exists; the cached copy is replaced only when
    the new one passes every check. ``retries``: reconnections after a dropped transfer (each
    resumes where the last stopped); default ``RETRIES``. ``read_weights``: see the module docstring.
    """
    if ckpt.package is not None:
        path = _package_file(ckpt)
        verify(ckpt, path, cache_dir)
        return path
    assert ckpt.url is not None
    cache = cache_root(cache_dir)
    final = cache / ckpt.filename
    if final.is_file() and not force:
        verify(ckpt, final, cache)
        return final
    require_network(
        f"weights {ckpt.name!r}: {final} is not in the cache; downloading it from {download_url(ckpt)}",
        _missing_hint(ckpt),
        offline,
    )
    waiting = f"waiting for another process that is downloading {ckpt.filename}"
    with locked(cache / f".{ckpt.filename}.lock", waiting):
        if final.is_file() and not force:  # another process fetched it while this one waited
            verify(ckpt, final, cache)
            return final
        _download(ckpt, final, cache, RETRIES if retries is None else retries, read_weights)
    return final


def _download(
    ckpt: Checkpoint, final: Path, cache: Path, retries: int, read_weights: ReadWeights | None
) -> None:
    """Transfer (with resume and reconnections), verify against the table and the first-use record,
    rename into place; the generic parts live in :mod:`audiotag.fetch.http`."""
    url = download_url(ckpt)
    assert url is not None
    part = part_path(final)
    size = human_size(ckpt.size) if ckpt.size is not None else "size not published"
    log.info("downloading %s (%s, licence %s) from %s", ckpt.filename, size, ckpt.license, url)
    fetch_part(
        url,
        part,
        size=ckpt.size,
        label=ckpt.filename,
        size_from="the weights table",
        retries=retries,
        retry_wait=http.RETRY_WAIT_S,
        hint=_missing_hint(ckpt),
    )
    expected_sha, origin = _expected_sha256(ckpt, cache)
    expected = Expected(
        size=ckpt.size,
        md5=ckpt.md5,
        sha256=expected_sha,
        size_from="the weights table",
        md5_from="the published MD5",
        sha256_from=origin,
    )
    unknown = expected_sha is None and ckpt.md5 is None  # nothing to check the bytes against
    suffix = Path(ckpt.filename).suffix
    check: Callable[[Path], None] | None = None
    if unknown and read_weights is not None:
        read = read_weights

        def check_weights(path: Path) -> None:
            read(path, suffix, ckpt.pickle_globals)

        check = check_weights
    got = accept_part(part, final, expected, url=url, label=ckpt.filename, check=check)
    if expected_sha is None:
        _write_record(cache, ckpt, got.size, got.sha256)
