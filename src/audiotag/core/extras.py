"""Optional packages (a pyproject extra, e.g. ``augment``: audiomentations and albumentations, with
opencv, numba and librosa under them): imported when a setting needs them, installed on that first
use when ``./run.sh`` manages the environment, else refused with the command that installs them."""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys
from types import ModuleType

from audiotag.core.errors import ConfigError

log = logging.getLogger(__name__)

RUN_SH = "AUDIOTAG_RUN_SH"  # set by run.sh: the script whose `install EXTRA` installs an extra's lock


def import_extra(module: str, extra: str, needed_for: str) -> ModuleType:
    """``module``, from the optional packages ``extra``, which ``needed_for`` (a setting) needs.

    Not installed: under ``./run.sh`` (``AUDIOTAG_RUN_SH``) ``run.sh install EXTRA`` installs the
    extra's pinned lock once, saying so; otherwise, or when that fails (offline), a ConfigError names
    the command to run.
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        pass
    run_sh = os.environ.get(RUN_SH)
    if run_sh:
        log.warning(
            "%s needs %s, one of the optional %r packages, not installed yet: installing them now "
            "(first use only; ./run.sh install %s)",
            needed_for,
            module,
            extra,
            extra,
        )
        if subprocess.run(["bash", run_sh, "install", extra], check=False).returncode == 0:
            importlib.invalidate_caches()
            try:
                return importlib.import_module(module)
            except ImportError:
                pass
    pip = f"{sys.executable} -m pip install 'audiotag[{extra}]'"
    command = f"./run.sh install {extra}" if run_sh else pip
    raise ConfigError(
        f"{needed_for} needs {module}, one of the optional {extra!r} packages, which is not installed: "
        f"install them with `{command}` (or leave {needed_for} out)"
    )
