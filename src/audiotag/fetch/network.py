"""The one network gate: every download, Kaggle API call, Hugging Face hub call and remote tracker
asks :func:`require_network` before it opens a connection.

Offline mode (``AUDIOTAG_OFFLINE=1``/true/yes/on, or ``offline=True`` where a function takes it)
makes the gate raise :class:`OfflineError`, naming what needed the network and what to do instead,
before any socket is opened (the Kaggle client is not even imported: importing it signs in, which
sends an access token to Kaggle). :func:`urlopen` is urllib's behind the gate. Offline mode also
sets ``HF_HUB_OFFLINE=1`` for the process (:func:`share_offline_mode`), so code of other packages
that reads the Hugging Face hub (timm's) stays offline as well.
"""

from __future__ import annotations

import os
import urllib.request
from typing import Any

from audiotag.core.errors import DataError

OFFLINE_ENV = "AUDIOTAG_OFFLINE"
TRUE_VALUES = {"1", "true", "yes", "on"}


class OfflineError(DataError):
    """Something needed the network while offline mode is on; nothing was sent."""


def is_offline(offline: bool | None = None) -> bool:
    """True when asked, or when ``AUDIOTAG_OFFLINE`` is set to 1/true/yes/on."""
    return bool(offline) or os.environ.get(OFFLINE_ENV, "").strip().lower() in TRUE_VALUES


def share_offline_mode() -> None:
    """Offline mode for the Hugging Face hub's own readers too (``HF_HUB_OFFLINE=1``), when ours is on."""
    if is_offline():
        os.environ["HF_HUB_OFFLINE"] = "1"


def require_network(what: str, instead: str = "", offline: bool | None = None) -> None:
    """Raise :class:`OfflineError` when offline mode is on: ``what`` needs the network (e.g. "downloading
    x from URL"); ``instead``: how to do without it (e.g. "put the file at PATH")."""
    if is_offline(offline):
        share_offline_mode()
        also = f"; {instead}" if instead else ""
        raise OfflineError(
            f"{what} needs the network, but offline mode is on ({OFFLINE_ENV}=1 or offline=True), so nothing "
            f"was sent{also}; or run without offline mode (unset {OFFLINE_ENV})"
        )


def urlopen(request: urllib.request.Request, *, timeout: float, what: str, instead: str = "") -> Any:
    """``urllib.request.urlopen`` behind the gate."""
    require_network(what, instead)
    return urllib.request.urlopen(request, timeout=timeout)
