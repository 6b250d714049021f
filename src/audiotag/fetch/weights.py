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

Caches: ours is ``$AUDIOTAG_CACHE``, else ``$XDG_CACHE_HOME/audiotag`` (``~/.cache/audiotag``), or
the ``cache_dir`` argument. A file already in another tool's cache is used where it lies
(:mod:`audiotag.fetch.hub`): Hugging Face files in huggingface_hub's cache (and downloaded there, with
its token, endpoint and offline mode), other URLs in torch.hub's (``$TORCH_HOME``). Offline mode
(``AUDIOTAG_OFFLINE=1`` or ``offline=True``) never opens a connection
(:mod:`audiotag.fetch.network`): a missing file is an error that names the file and how to get it.
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
from audiotag.fetch.hub import (
    HF_ENDPOINT,
    cached_hub_file,
    discard_hub_file,
    hub_download,
    hub_endpoint,
    hub_file,
    torch_hub_checkpoint,
    xdg_cache,
)
from audiotag.fetch.network import require_network

log = logging.getLogger(__name__)

RECORD_FILE = "checksums.json"  # trust-on-first-use SHA-256 of files without a published one
PICKLE_ALLOWANCES = ("numpy",)  # named groups of globals a Checkpoint's pickle_globals may allow

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
    """The weights cache: ``cache_dir``, else ``$AUDIOTAG_CACHE``, else ``$XDG_CACHE_HOME/audiotag``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("AUDIOTAG_CACHE")
    return Path(env).expanduser() if env else xdg_cache() / "audiotag"


def download_url(ckpt: Checkpoint) -> str | None:
    """The URL a download actually uses: Hugging Face URLs moved to ``$HF_ENDPOINT``."""
    url = ckpt.url
    if url is not None and url.startswith(HF_ENDPOINT + "/"):
        return hub_endpoint() + url[len(HF_ENDPOINT) :]
    return url


def find_cached(ckpt: Checkpoint, cache_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """A copy already on disk, without any connection: in our cache, else in huggingface_hub's (a hub
    file) or torch.hub's (another URL); None when there is none."""
    ours = cache_root(cache_dir) / ckpt.filename
    if ours.is_file() or ckpt.url is None:
        return ours if ours.is_file() else None
    hub = hub_file(ckpt.url)
    if hub is not None:
        return cached_hub_file(hub)
    theirs = torch_hub_checkpoint(ckpt.url)
    return theirs if theirs.is_file() else None


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
    path = find_cached(ckpt, cache_dir)
    if path is not None:
        return "yes" if ckpt.size is None or path.stat().st_size == ckpt.size else "wrong size"
    return "partial" if part_path(cache_root(cache_dir) / ckpt.filename).exists() else "no"


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


def verify(
    ckpt: Checkpoint,
    path: Path,
    cache_dir: str | os.PathLike[str] | None = None,
    read_weights: ReadWeights | None = None,
) -> None:
    """Check a cached (or installed) file against the table and the first-use record.

    A file without a published SHA-256 and without a record is read by ``read_weights`` (when given)
    and, if it reads as weights, trusted now and recorded.
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
        if read_weights is not None:
            read_weights(path, Path(ckpt.filename).suffix, ckpt.pickle_globals)
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
    found = None if force else find_cached(ckpt, cache)
    if found is not None:
        if found != final:
            log.info("weights %s: using %s (already downloaded by another tool)", ckpt.name, found)
        verify(ckpt, found, cache, read_weights)
        return found
    hub = hub_file(ckpt.url)
    if hub is not None:
        return _hub_fetch(ckpt, hub, cache, offline, force, read_weights)
    require_network(
        f"weights {ckpt.name!r}: {final} is not in the cache (nor in torch.hub's); downloading it from "
        f"{download_url(ckpt)}",
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


def _hub_fetch(
    ckpt: Checkpoint,
    hub: Any,
    cache: Path,
    offline: bool | None,
    force: bool,
    read_weights: ReadWeights | None,
) -> Path:
    """A Hugging Face file through huggingface_hub (its cache, token, endpoint and offline mode),
    checked like our own downloads; a fresh download that does not read as weights is deleted."""
    what = f"weights {ckpt.name!r} (not in {cache / ckpt.filename} nor in the Hugging Face cache)"
    path = hub_download(hub, what=what, hint=_missing_hint(ckpt), offline=offline, force=force)
    try:
        verify(ckpt, path, cache, read_weights)
    except DataError as exc:
        if _expected_sha256(ckpt, cache)[0] is None:  # a first download that is not weights
            discard_hub_file(path)
            raise DataError(
                f"download of {ckpt.filename} from {hub.url} refused: {exc}. The download was deleted and "
                "nothing was recorded. Check the URL (a proxy or mirror may have answered with an error "
                "page), or use a file of your own"
            ) from None
        raise
    return path


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
