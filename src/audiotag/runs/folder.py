"""A run folder's identity and ownership: the settings that make its numbers what they are, the
record of them written before any work starts (``run.json``; ``pretrain.json`` for pretraining), the
refusal of a rerun whose settings changed, and the claim of one process on the folder.

One process trains a run folder at a time: ``claim_run`` holds it with an OS file lock on
``runs/<name>/owner.lock`` (released by the kernel when the process dies, so a killed run never
blocks the next one), which records the owner's pid, host and start time. A second ``train`` on the
same run folder is refused with those, instead of both writing the same checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import logging
import platform
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from pydantic import BaseModel
from pydantic_core import to_jsonable_python

import audiotag
from audiotag.config.files import dump_yaml
from audiotag.config.schema import PIPELINE_DEFAULT_KEYS
from audiotag.core.atomic import atomic_write_json, atomic_write_text
from audiotag.core.digests import file_sha256
from audiotag.core.errors import ConfigError, TrainingError
from audiotag.core.locks import claim_folder, describe_owner
from audiotag.core.paths import REPO_ROOT
from audiotag.experiment import ExperimentConfig
from audiotag.runs.prepare import Prepared

log = logging.getLogger(__name__)

# Settings that change how a run executes but not its results; they may differ on resume.
RUNTIME_KEYS = {
    "train.folds",
    "train.device",
    "train.num_workers",
    "train.threads",
    "train.compile",
    "train.compile_mode",
    "train.channels_last",
    "train.checkpoint_every_steps",
    "train.loggers",  # where the numbers are reported, not what they are
    "competition.data_dir",  # the same files may move
    *(f"competition.{key}" for key in PIPELINE_DEFAULT_KEYS),  # what else the pipeline runs
}


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def run_settings(cfg: BaseModel, runtime_keys: set[str]) -> dict[str, object]:
    """The dotted settings of ``cfg`` that decide a run's results (all but ``runtime_keys``)."""
    return {k: v for k, v in flatten(cfg.model_dump(mode="json")).items() if k not in runtime_keys}


def result_settings(cfg: ExperimentConfig) -> dict[str, object]:
    return run_settings(cfg, RUNTIME_KEYS)


_NO_DEFAULT = object()


def setting_default(cfg: BaseModel, key: str) -> object:
    """The JSON value of the default of the setting at the dotted ``key`` of ``cfg`` (or a sentinel)."""
    *parents, name = key.split(".")
    node: object = cfg
    for part in parents:
        node = getattr(node, part, None)
    if not isinstance(node, BaseModel):
        return _NO_DEFAULT
    field = type(node).model_fields.get(name)
    if field is None or field.is_required():
        return _NO_DEFAULT
    return to_jsonable_python(field.get_default(call_default_factory=True))


def changed_settings(
    saved: dict[str, object],
    settings: dict[str, object],
    cfg: BaseModel,
    runtime_keys: set[str] = RUNTIME_KEYS,
) -> list[str]:
    """Settings that differ between a run's saved record and ``cfg``.

    A setting the saved run lacks (one added to audiotag after the run started) counts as unchanged
    while it has its default value, which reproduces what the older code did.
    """
    changed = []
    for key in sorted(set(saved) | set(settings)):
        if key in runtime_keys:  # recorded by older code before the key stopped counting
            continue
        if key not in saved and settings[key] == setting_default(cfg, key):
            continue
        if saved.get(key) != settings.get(key):
            changed.append(key)
    return changed


def describe_changes(saved: dict[str, object], settings: dict[str, object], changed: list[str]) -> str:
    """The first few changed settings, ``key: old -> new``, for a refusal."""
    return "; ".join(f"{k}: {saved.get(k)!r} -> {settings.get(k)!r}" for k in changed[:8])


def code_version() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        if out.returncode == 0 and out.stdout.strip():
            return f"{audiotag.__version__}+{out.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    return audiotag.__version__


def check_or_write_run_info(run_dir: Path, cfg: ExperimentConfig, prepared: Prepared) -> None:
    info_path = run_dir / "run.json"
    settings = result_settings(cfg)
    if info_path.is_file():
        saved = json.loads(info_path.read_text())["settings"]
        changed = changed_settings(saved, settings, cfg)
        if changed:
            raise ConfigError(
                f"run {run_dir.name!r} in {run_dir} was started with a different config "
                f"({describe_changes(saved, settings, changed)}). "
                "Give the new config its own run with --run-name NAME, or delete the run folder to start over"
            )
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg))
    atomic_write_json(
        info_path,
        {
            "name": run_dir.name,
            "settings": settings,
            "feature_key": cfg.features.key(),
            "cache_dir": str(prepared.cache_dir),
            "folds_file": str(prepared.folds_path),
            "folds_sha256": file_sha256(prepared.folds_path),
            "code_version": code_version(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
    )


OWNER_LOCK = "owner.lock"


@contextlib.contextmanager
def claim_run(run_dir: Path) -> Iterator[None]:
    """Hold the run folder for this process; TrainingError naming the owner when another holds it."""

    def refusal(owner: str) -> TrainingError:
        return TrainingError(
            f"run {run_dir.name!r} in {run_dir} is being trained by {owner}; two processes on one run "
            "folder would overwrite each other's checkpoints. Wait for it to finish (or stop it), or give "
            "this one its own run with --run-name NAME"
        )

    with claim_folder(run_dir, f"train {run_dir.name}", refusal, OWNER_LOCK) as died:
        if died:
            log.info("train: run %s: its previous owner, %s, is gone", run_dir.name, describe_owner(died))
        yield
