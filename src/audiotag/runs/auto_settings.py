"""``train.auto`` in a run: gather the facts, derive the settings (``train/auto_recipe.py``), keep the
ones the config gives, print them and save them in the run folder.

The facts are the training clips of the clip table (durations, count, classes, labels per clip) and
the model and machine: the model is built on PyTorch's meta device (no memory, no computation) to
read its frame grid and the bytes autograd keeps for the backward pass of one crop, and the memory is
the GPU's free memory or the RAM available. A setting the experiment YAML or ``--set`` gives
(pydantic's ``model_fields_set``) always wins over a derived one.

The derived values are written once, to ``runs/<name>/auto_recipe.json``, before the run's
``config.yaml`` and ``run.json`` (which then hold them like any other setting); a resumed run reads
them back instead of deriving again, so a run keeps its recipe even if the machine or the data
changed since it started.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from pydantic import BaseModel

from audiotag.config.schema import InputNorm
from audiotag.core.atomic import atomic_write_json
from audiotag.core.errors import ConfigError
from audiotag.models.registry import build_model
from audiotag.runs.prepare import Prepared
from audiotag.train.auto_recipe import DataFacts, Derived, ModelFacts, derive
from audiotag.train.distributed import SINGLE, DistContext
from audiotag.train.experiment import ExperimentConfig

log = logging.getLogger(__name__)

AUTO_FILE = "auto_recipe.json"
MEASURE_FRAMES = 512  # a power of two: the backbone's time strides divide it


def explicit_keys(cfg: BaseModel, prefix: str = "") -> set[str]:
    """Dotted keys the config was given (YAML, ``--set``), not left to their defaults."""
    out: set[str] = set()
    for name in cfg.model_fields_set:
        value = getattr(cfg, name)
        key = prefix + name
        out |= explicit_keys(value, key + ".") if isinstance(value, BaseModel) else {key}
    return out


def data_facts(prepared: Prepared) -> DataFacts:
    comp = prepared.competition
    clips = comp.training_clips(prepared.table)
    clips = clips[~clips["clip_id"].isin(prepared.skipped)]
    if clips.empty:
        raise ConfigError("train.auto: no usable training clip to derive the settings from")
    return DataFacts(
        durations=tuple(float(d) for d in clips["duration"]),
        n_classes=len(comp.classes),
        labels_per_clip=float(np.mean([len(labels) for labels in clips["labels"]])),
        n_folds=comp.cfg.n_folds,
    )


def measure_model(cfg: ExperimentConfig, n_classes: int) -> tuple[int, float, int]:
    """(frame grid, bytes autograd keeps per input frame of one crop, parameter bytes), measured on the
    meta device with a crop of ``MEASURE_FRAMES`` frames (grid: input frames per output frame of the
    backbone, exact for poolings by powers of two; 1 for a transformer's tokens)."""
    frames = MEASURE_FRAMES
    with torch.device("meta"):
        # input_norm: dataset needs statistics of a fold; any stand-in does for the sizes
        model = build_model(cfg.model, cfg.features.n_mels, n_classes, frames, InputNorm(), None)
        # two crops: a BatchNorm over the batch (M2D's head) refuses one in training mode
        x = torch.zeros(2, frames, cfg.features.n_mels)
    model.train()
    kept = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal kept
        kept += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        seq = model.backbone(x)
        model.head(seq)
    grid = getattr(model.backbone, "frame_grid", None)  # declared where the output does not show it (BEATs)
    if grid is None:
        # one output frame from MEASURE_FRAMES input frames: pooled over time (musicnn), any length fits
        sequence = getattr(model.backbone, "output", "sequence") == "sequence" and seq.shape[1] > 1
        grid = max(1, frames // seq.shape[1]) if sequence else 1
    parameters = sum(p.numel() * p.element_size() for p in model.parameters())
    return grid, kept / (2 * frames), parameters


def device_memory(device: torch.device) -> tuple[int, str]:
    """Bytes the device offers now, and what they are (for the table)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free), f"{free / 2**30:.1f} GiB free on {torch.cuda.get_device_name(device)}"
    available = int(psutil.virtual_memory().available)
    return available, f"{available / 2**30:.1f} GiB of RAM available"


def model_facts(cfg: ExperimentConfig, n_classes: int, device: torch.device, processes: int) -> ModelFacts:
    grid, per_frame, parameters = measure_model(cfg, n_classes)
    memory, source = device_memory(device)
    return ModelFacts(
        frames_per_second=cfg.features.frames_per_second,
        frame_grid=grid,
        n_mels=cfg.features.n_mels,
        activation_bytes_per_frame=per_frame,
        parameter_bytes=parameters,
        memory_bytes=memory,
        memory_source=source,
        processes=processes,
    )


def with_values(cfg: ExperimentConfig, values: dict[str, Any]) -> ExperimentConfig:
    """``cfg`` with the dotted ``values`` set, validated again (a derived crop must fit the model)."""
    tree = cfg.model_dump(mode="json")
    for key, value in values.items():
        *parents, name = key.split(".")
        node = tree
        for part in parents:
            node = node[part]
        node[name] = value
    return ExperimentConfig.model_validate(tree)


def read_saved(path: Path) -> list[Derived]:
    try:
        saved = json.loads(path.read_text())
        return [Derived(row["key"], row["value"], row["why"]) for row in saved["derived"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"{path}: unreadable ({exc}); delete it to derive the train.auto settings again (or the run "
            "folder, to start the run over)"
        ) from None


def resolve_auto(
    cfg: ExperimentConfig,
    prepared: Prepared,
    run_dir: Path,
    device: torch.device,
    ctx: DistContext = SINGLE,
) -> ExperimentConfig:
    """``cfg`` with ``train.auto``'s values where it sets none; derived by rank 0 at the run's first
    start and saved, read back by the other ranks and by every later start (see the module docstring)."""
    path = run_dir / AUTO_FILE
    if ctx.is_main and not path.is_file():
        derived = derive(
            data_facts(prepared),
            model_facts(cfg, len(prepared.competition.classes), device, ctx.world if ctx.ddp else 1),
        )
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"derived": [vars(d) for d in derived]})
        reused = False
    else:
        reused = True
    ctx.barrier()
    derived = read_saved(path)
    given = explicit_keys(cfg)
    applied = {d.key: d.value for d in derived if d.key not in given}
    if ctx.is_main:
        log_table(derived, given, cfg, path, reused)
    return with_values(cfg, applied)


def log_table(
    derived: list[Derived], given: set[str], cfg: ExperimentConfig, path: Path, reused: bool
) -> None:
    """One line per setting: its value, and why (or that the config's own value was kept)."""
    origin = f"read back from {path}" if reused else f"saved in {path}"
    log.info("train.auto: settings derived from the data (%s); yours win where you set them:", origin)
    width = max(len(d.key) for d in derived)
    for d in derived:
        if d.key in given:
            ours = _get(cfg, d.key)
            log.info("  %-*s %-8s yours (derived: %s, %s)", width, d.key, _show(ours), _show(d.value), d.why)
        else:
            log.info("  %-*s %-8s derived: %s", width, d.key, _show(d.value), d.why)


def _get(cfg: BaseModel, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _show(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:g}"
    return str(value)
