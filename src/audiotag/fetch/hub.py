"""The caches other tools already fill, and files hosted on the Hugging Face hub.

Hugging Face files (``https://huggingface.co/<repo>/resolve/<revision>/<file>``, timm's weights among
them) go through ``huggingface_hub``: its cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub``), its offline mode
(``HF_HUB_OFFLINE``, and ours: :mod:`audiotag.fetch.network`), its token (``HF_TOKEN`` or ``hf auth
login``: gated and private repos) and ``$HF_ENDPOINT`` (a mirror), each read when a file is asked
for. Other URLs may already lie in torch.hub's cache (``$TORCH_HOME/hub/checkpoints/<name in the
URL>``, ``$TORCH_HOME`` defaulting to ``$XDG_CACHE_HOME/torch``), where timm and torchvision put them.
"""

from __future__ import annotations

import logging
import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from audiotag.core.errors import DataError
from audiotag.fetch.network import TRUE_VALUES, is_offline, require_network

log = logging.getLogger(__name__)

HF_ENDPOINT = "https://huggingface.co"  # the hub's address in the weights table; $HF_ENDPOINT replaces it
HF_URL = re.compile(
    r"https://huggingface\.co/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<file>[^?]+)"
)


def xdg_cache() -> Path:
    """``$XDG_CACHE_HOME``, else ``~/.cache``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()


def torch_hub_checkpoint(url: str) -> Path:
    """Where torch.hub (``load_state_dict_from_url``, as timm and torchvision use it) keeps ``url``."""
    home = Path(os.environ.get("TORCH_HOME") or xdg_cache() / "torch").expanduser()
    return home / "hub" / "checkpoints" / os.path.basename(urllib.parse.urlparse(url).path)


def hub_endpoint() -> str:
    """Where Hugging Face downloads go: ``$HF_ENDPOINT`` (a mirror) or https://huggingface.co."""
    return (os.environ.get("HF_ENDPOINT", "").strip() or HF_ENDPOINT).rstrip("/")


def hub_cache() -> Path:
    """huggingface_hub's cache folder, as it finds it."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or xdg_cache() / "huggingface"
    return Path(home).expanduser() / "hub"


@dataclass(frozen=True)
class HubFile:
    repo: str
    revision: str
    filename: str

    @property
    def url(self) -> str:
        return f"{hub_endpoint()}/{self.repo}/resolve/{self.revision}/{self.filename}"


def hub_file(url: str | None) -> HubFile | None:
    """The hub repo, revision and file of a huggingface.co ``resolve`` URL (None for other URLs)."""
    match = HF_URL.fullmatch(url or "")
    if match is None:
        return None
    return HubFile(
        match["repo"], urllib.parse.unquote(match["revision"]), urllib.parse.unquote(match["file"])
    )


def cached_hub_file(file: HubFile) -> Path | None:
    """The file in huggingface_hub's cache, found without any connection (None when not there)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(file.repo, file.filename, cache_dir=hub_cache(), revision=file.revision)
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def hub_download(
    file: HubFile, *, what: str, hint: str, offline: bool | None = None, force: bool = False
) -> Path:
    """Download ``file`` into huggingface_hub's cache (or find it there) and return its path.

    Offline (ours or ``HF_HUB_OFFLINE``) nothing is sent: a file not in the cache is an
    :class:`~audiotag.fetch.network.OfflineError` saying ``hint``; hub errors are :class:`DataError`."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    theirs = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in TRUE_VALUES
    where = f"{file.filename} of {file.repo} (revision {file.revision}) from {file.url}"
    require_network(f"{what}: downloading {where} into the Hugging Face cache {hub_cache()}", hint, offline)
    if theirs and not is_offline(offline):
        raise DataError(f"{what}: {where} is not in {hub_cache()} and HF_HUB_OFFLINE is set; {hint}")
    token = "set HF_TOKEN (or run `hf auth login`) with a token of an account that may read it"
    gated = f"{what}: {file.repo} is gated: accept its terms on its hub page and {token}"
    private = f"{what}: {hub_endpoint()} has no repo {file.repo}, or it is private: {token}"
    try:
        path = hf_hub_download(
            file.repo,
            file.filename,
            revision=file.revision,
            cache_dir=hub_cache(),
            endpoint=hub_endpoint(),
            force_download=force,
        )
    except GatedRepoError:
        raise DataError(gated) from None
    except RepositoryNotFoundError:
        raise DataError(private) from None
    except HfHubHTTPError as exc:
        raise DataError(f"{what}: {where} failed: {str(exc).splitlines()[0]}; {hint}") from None
    except (OSError, ValueError) as exc:  # connections, timeouts, a full disk
        raise DataError(f"{what}: {where} failed ({type(exc).__name__}: {exc}); {hint}") from None
    return Path(path)


def discard_hub_file(path: Path) -> None:
    """Delete a file this process just downloaded into the hub cache (its snapshot link and blob)."""
    blob = path.resolve()
    path.unlink(missing_ok=True)
    if blob != path:
        blob.unlink(missing_ok=True)
