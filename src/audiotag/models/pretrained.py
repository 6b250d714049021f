"""Pretrained checkpoint files: timm's catalogue, downloads, and how their tensors are read.

``read_state_dict`` reads a file's tensors without executing pickled code; :func:`fetch` is
:mod:`audiotag.fetch.weights`'s with that reader.

timm. Beyond the table, every timm architecture with pretrained weights is available by name:
``timm/<arch>.<tag>`` (``timm/<arch>`` = timm's default tag), or ``imagenet`` for the default weights
of a timm model's ``model.arch``. :func:`timm_checkpoint` builds the entry from the installed timm's
``pretrained_cfg`` (HF hub id, else its URL; licence field) without timm's hub code: the file comes
through :func:`audiotag.fetch.weights.fetch` (a hub file through huggingface_hub and its cache, a URL
found in torch.hub's cache or downloaded into ours), with its SHA-256 recorded on first use.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import io
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import torch

from audiotag.core.errors import ConfigError, DataError
from audiotag.fetch import weights
from audiotag.fetch.weights import HF_ENDPOINT, PICKLE_ALLOWANCES, Checkpoint
from audiotag.models.loading import read_npz
from audiotag.models.tf_checkpoint import is_index, is_v1_checkpoint, read_checkpoint, read_v1_checkpoint

log = logging.getLogger(__name__)

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
HF_SAFE_FILENAME = "model.safetensors"  # what timm's hub loader tries first in every HF repo
IMAGENET = "imagenet"  # model.pretrained: timm's default weights for model.arch
TIMM_PREFIX = "timm/"  # timm/<arch>[.<tag>]: the weights of one timm pretrained_cfg

# --------------------------------------------------------------------------- timm's own weights


def _split_tag(model_name: str) -> tuple[str, str]:
    """``arch.tag`` -> (arch, tag), as timm's ``split_model_name_tag``."""
    arch, _, tag = model_name.partition(".")
    return arch, tag


def timm_name(spec: str, arch: str | None = None) -> str:
    """``imagenet`` (with the configured ``model.arch``) or ``timm/<arch>[.<tag>]`` -> a timm name.

    ``arch`` (``model.arch`` of a timm model; None for other families and the CLI) must be the
    architecture the named weights belong to.
    """
    if spec == IMAGENET:
        if not arch:
            raise ConfigError(
                f"weights {IMAGENET!r} are timm's default ImageNet weights of model.arch, so they need a "
                f"timm model (model.name: timm); outside a model config name them {TIMM_PREFIX}<arch>"
            )
        return TIMM_PREFIX + arch
    model_name = spec.removeprefix(TIMM_PREFIX)
    if not model_name or not spec.startswith(TIMM_PREFIX):
        raise ConfigError(f"weights {spec!r}: expected {TIMM_PREFIX}<arch>[.<tag>], e.g. timm/resnet34")
    if arch and _split_tag(model_name)[0] != _split_tag(arch)[0]:
        raise ConfigError(
            f"model.pretrained {spec!r} are weights of timm's {_split_tag(model_name)[0]}, but model.arch is "
            f"{arch!r}; use pretrained: {IMAGENET} (the default weights of model.arch) or "
            f"{TIMM_PREFIX}{_split_tag(arch)[0]}.<tag>"
        )
    return spec


def _timm_registry() -> Any:
    """timm's model registry (names and pretrained configs only: timm's download code is never used)."""
    try:
        return importlib.import_module("timm.models")
    except ImportError as exc:
        raise ConfigError(f"timm weights need the timm package ({exc})") from None


def _has_weights(pretrained_cfg: Any) -> bool:
    return bool(pretrained_cfg is not None and (pretrained_cfg.hf_hub_id or pretrained_cfg.url))


def timm_tags(arch: str) -> list[str]:
    """The pretrained names (``<arch>.<tag>``) timm has files for, default first."""
    registry = _timm_registry()
    return [n for n, c in registry.get_arch_pretrained_cfgs(arch).items() if _has_weights(c)]


def _safe_alternative(filename: str) -> str:
    """The safetensors file timm's hub loader tries first (``pytorch_model.bin`` -> ``model.safetensors``)."""
    if filename == "pytorch_model.bin":
        return HF_SAFE_FILENAME
    if filename == "open_clip_pytorch_model.bin":
        return "open_clip_model.safetensors"
    return filename[: -len(".bin")] + ".safetensors" if filename.endswith(".bin") else filename


def timm_checkpoint(name: str, curated: Collection[Checkpoint] = ()) -> Checkpoint:
    """The entry for ``timm/<arch>[.<tag>]``, built from the installed timm's ``pretrained_cfg``.

    Source: the HF hub repo ``hf_hub_id`` (its ``hf_hub_filename``, else ``model.safetensors``;
    a ``.bin`` name is replaced by its safetensors alternative, which timm also tries first), else
    the cfg's ``url``. The size and SHA-256 are not published: the first download's SHA-256 is
    recorded. A ``curated`` (weights-table) entry for the same file is returned instead.
    """
    registry = _timm_registry()
    version = getattr(importlib.import_module("timm"), "__version__", "?")
    arch, tag = _split_tag(name.removeprefix(TIMM_PREFIX))
    if not registry.is_model(arch):
        close = difflib.get_close_matches(arch, registry.list_models(), n=4, cutoff=0.75)
        also = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"weights {name!r}: timm {version} has no architecture {arch!r}{also}")
    tags = timm_tags(arch)
    try:
        pretrained_cfg = registry.get_pretrained_cfg(f"{arch}.{tag}" if tag else arch)
    except RuntimeError:  # timm: "Invalid pretrained tag (...) for <arch>."
        raise ConfigError(
            f"weights {name!r}: timm {version} has no pretrained tag {tag!r} for {arch}; its weights: "
            + (", ".join(TIMM_PREFIX + t for t in tags) or "none")
        ) from None
    if not _has_weights(pretrained_cfg):
        other = f"; its weights: {', '.join(TIMM_PREFIX + t for t in tags)}" if tags else ""
        raise ConfigError(
            f"weights {name!r}: timm {version} has no pretrained weights for {arch}"
            f"{' tag ' + repr(tag) if tag and tags else ''}{other}. Use pretrained: null (random "
            "initialisation), a file of your own (--weights PATH), or an arch that has weights "
            "(`./run.sh weights list --timm 'PATTERN'`)"
        )
    tagged = f"{arch}.{pretrained_cfg.tag}"
    if pretrained_cfg.custom_load:
        raise ConfigError(
            f"weights {TIMM_PREFIX}{tagged}: timm reads this file with model-specific code (custom_load, "
            f"{pretrained_cfg.url or pretrained_cfg.hf_hub_id}); convert it to a state dict yourself and "
            "pass it with --weights PATH"
        )
    revision = ""
    if pretrained_cfg.hf_hub_id:
        repo, _, revision = pretrained_cfg.hf_hub_id.partition("@")
        remote = _safe_alternative(pretrained_cfg.hf_hub_filename or HF_SAFE_FILENAME)
        url = f"{HF_ENDPOINT}/{repo}/resolve/{revision or 'main'}/{remote}"
        where = f"HF hub {pretrained_cfg.hf_hub_id}, {remote}"
    else:
        url = str(pretrained_cfg.url)
        remote = url.split("?", 1)[0].rsplit("/", 1)[-1]
        where = url
    if remote.endswith(".safetensors"):
        suffix = ".safetensors"
    elif remote.endswith((*TORCH_SUFFIXES, ".tar")):
        suffix = ".pth"
    else:
        raise ConfigError(
            f"weights {TIMM_PREFIX}{tagged}: {where} is not a PyTorch or safetensors file; convert it to a "
            "state dict yourself and pass it with --weights PATH"
        )
    filename = f"{tagged}{'@' + revision[:12] if revision else ''}{suffix}"
    for known in curated:
        if known.layout == "timm" and known.filename == filename:
            return known
    licence = pretrained_cfg.license or "unknown"
    origin = f", origin {pretrained_cfg.origin_url}" if pretrained_cfg.origin_url else ""
    return Checkpoint(
        name=TIMM_PREFIX + tagged,
        url=url,
        filename=filename,
        size=None,
        sha256=None,
        md5=None,
        license=f"{licence}*",
        layout="timm",
        features=None,
        model=arch,
        note=f"{tagged}: timm {version} pretrained_cfg ({where}; licence field {licence}; "
        f"{pretrained_cfg.num_classes} classes{origin}). timm's code is Apache-2.0; licences of "
        "ImageNet-trained weights vary by model and the ImageNet terms of use are non-commercial. "
        "No published SHA-256: the first download's is recorded and checked on every later use.",
    )


def timm_catalogue(pattern: str, curated: Collection[Checkpoint] = ()) -> list[tuple[Checkpoint, bool]]:
    """timm's pretrained weights whose ``<arch>.<tag>`` matches the glob ``pattern`` (with or without
    ``timm/``), as entries, each with whether it is its arch's default; unusable ones are skipped.
    ``curated``: as :func:`timm_checkpoint`'s."""
    registry = _timm_registry()
    names = registry.list_pretrained(pattern.removeprefix(TIMM_PREFIX))
    defaults: dict[str, str] = {}
    out: list[tuple[Checkpoint, bool]] = []
    for model_name in names:
        arch, tag = _split_tag(model_name)
        if arch not in defaults:
            cfg = registry.get_pretrained_cfg(arch)
            defaults[arch] = cfg.tag if cfg is not None else ""
        try:
            out.append((timm_checkpoint(TIMM_PREFIX + model_name, curated), tag == defaults[arch]))
        except ConfigError:
            continue
    return out


def fetch(
    ckpt: Checkpoint,
    cache_dir: str | os.PathLike[str] | None = None,
    offline: bool | None = None,
    *,
    force: bool = False,
    retries: int | None = None,
) -> Path:
    """:func:`audiotag.fetch.weights.fetch`, with a first download that nothing published can check
    read by :func:`read_state_dict`."""
    return weights.fetch(ckpt, cache_dir, offline, force=force, retries=retries, read_weights=read_state_dict)


# --------------------------------------------------------------------------- read


def _numpy_safe_globals() -> list[Any]:
    """NumPy arrays, scalars and dtypes: plain data that training checkpoints often carry (PANNs'
    sampler state, aisfx's dataset table). Listed under both module names (numpy 1 and 2)."""
    try:
        numpy = importlib.import_module("numpy")
    except ImportError:
        return []
    try:
        multiarray = importlib.import_module("numpy._core.multiarray")
    except ImportError:
        multiarray = importlib.import_module("numpy.core.multiarray")
    allowed: list[Any] = [numpy.ndarray, numpy.dtype]
    with contextlib.suppress(ImportError):
        dtypes = importlib.import_module("numpy.dtypes")
        allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    for fn in (multiarray._reconstruct, multiarray.scalar):
        allowed += [
            (fn, f"{module}.{fn.__name__}") for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        ]
    return allowed


def _torch_load(path: Path, allow: tuple[str, ...] = PICKLE_ALLOWANCES, data: bytes | None = None) -> Any:
    """``path``'s pickle read weights-only; ``data``: its bytes, already read (a file inside an archive)."""
    allowed = _numpy_safe_globals() if "numpy" in allow else []
    try:
        with torch.serialization.safe_globals(allowed):
            source = io.BytesIO(data) if data is not None else path
            return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        globals_ = re.findall(r"GLOBAL ([\w.]+)", str(exc))
        with contextlib.suppress(Exception):  # zip-format files: every offending global at once
            inner = io.BytesIO(data) if data is not None else path
            globals_ = torch.serialization.get_unsafe_globals_in_checkpoint(inner) or globals_
        if globals_:
            raise DataError(
                f"{path}: cannot be read safely (torch.load weights_only=True): it holds Python objects "
                f"({', '.join(globals_[:8])}). Save the model's state_dict() instead, or convert the file "
                "to .safetensors"
            ) from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+?)\n", str(exc))
        raise DataError(
            f"{path}: not a readable PyTorch checkpoint (truncated, or another format?)"
            + (f": {detail.group(1)}" if detail else "")
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise DataError(
            f"{path}: not a readable PyTorch checkpoint (truncated or another format?): {exc}"
        ) from None


def _archived_checkpoint(path: Path) -> tuple[str, bytes]:
    """The one PyTorch checkpoint inside a release archive (``.zip``, as M2D's GitHub releases ship
    their weights: a folder holding one ``.pth``), as (its name, its bytes); read in memory."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [
                n
                for n in archive.namelist()
                if n.lower().endswith(TORCH_SUFFIXES) and not n.startswith("__MACOSX/")
            ]
            if len(names) != 1:
                found = ", ".join(names) if names else "none"
                raise DataError(
                    f"{path}: a weights archive must hold exactly one checkpoint file "
                    f"({', '.join(TORCH_SUFFIXES)}); found {found}. Extract the one you want and pass it "
                    "with --weights PATH"
                )
            return names[0], archive.read(names[0])
    except (zipfile.BadZipFile, OSError, RuntimeError) as exc:
        raise DataError(f"{path}: not a readable zip archive (truncated or another format?): {exc}") from None


def _unwrap(obj: Any) -> Any:
    """The state dict inside common wrappers: {"model": sd}, {"state_dict": sd}, (sd, extra)."""
    for _ in range(4):
        if isinstance(obj, tuple | list) and obj and isinstance(obj[0], Mapping):
            obj = obj[0]
            continue
        if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next(
                (
                    obj[k]
                    for k in ("model", "state_dict", "model_state_dict")
                    if isinstance(obj.get(k), Mapping)
                ),
                None,
            )
            if inner is not None:
                obj = inner
                continue
        break
    return obj


def _beside_weights(obj: Any) -> dict[str, Any]:
    """A wrapper's entries that hold no tensors, e.g. {"cfg": {...}, "model": sd} -> {"cfg": {...}}."""
    if not isinstance(obj, Mapping) or any(isinstance(v, torch.Tensor) for v in obj.values()):
        return {}

    def holds_tensors(value: Any) -> bool:
        return isinstance(value, Mapping) and any(isinstance(v, torch.Tensor) for v in value.values())

    return {str(k): v for k, v in obj.items() if not holds_tensors(v)}


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        keys = [str(k) for k in list(obj)[:8]]
        return f"a dict with keys {keys}" if keys else "an empty dict"
    return f"a {type(obj).__name__}"


def read_weights_file(
    path: str | os.PathLike[str], suffix: str | None = None, allow: tuple[str, ...] = PICKLE_ALLOWANCES
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors of a checkpoint file (.safetensors, .pth/.pt/.bin/.ckpt read weights-only, a .zip
    release archive holding one such .pth, a TensorFlow checkpoint named by its .index, a TensorFlow
    V1 checkpoint (one file, whatever its suffix: VGGish's is .ckpt), or a NumPy .npz of arrays (no
    pickles)), and the entries without tensors beside its weights (a BEATs file's ``cfg`` and
    ``label_dict``; ``{}`` for a plain state dict);
    ``suffix`` gives the format of a file named otherwise (a download's ``.part``); ``allow``: the
    groups of non-tensor globals the pickle may hold (a table entry's ``pickle_globals``; files
    named by path allow numpy arrays)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint file not found")
    # musicnn's checkpoints are named ".index": a dot file, whose Path.suffix is empty
    suffix = (suffix or (".index" if is_index(path) else path.suffix)).lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise DataError(f"{path}: not a readable safetensors file: {exc}") from None
    elif suffix != ".index" and is_v1_checkpoint(path):  # told apart by its table footer
        obj = {k: torch.from_numpy(v) for k, v in read_v1_checkpoint(path).items()}
    elif suffix == ".npz":
        obj = {k: torch.from_numpy(v) for k, v in read_npz(path).items() if v.dtype.kind in "biuf"}
    elif suffix in TORCH_SUFFIXES:
        obj = _torch_load(path, allow)
    elif suffix == ".zip":
        member, data = _archived_checkpoint(path)
        obj = _torch_load(path / member, allow, data)  # messages name the file inside the archive
    elif suffix == ".index":  # a TensorFlow checkpoint (musicnn's), read without TensorFlow
        obj = {k: torch.from_numpy(v) for k, v in read_checkpoint(path).items()}
    else:
        raise DataError(
            f"{path}: unknown checkpoint format {suffix or '(no suffix)'!r}; expected .safetensors, "
            "a TensorFlow checkpoint's .index, .npz, a .zip holding one checkpoint, or one of "
            f"{', '.join(TORCH_SUFFIXES)}"
        )
    beside = _beside_weights(obj)
    state = _unwrap(obj)
    tensors = (
        {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
        if isinstance(state, Mapping)
        else {}
    )
    if not tensors:
        raise DataError(f"{path}: holds no tensors ({_describe(state)}); is it a model checkpoint?")
    if len(tensors) < len(state):
        log.debug("%s: ignored %d non-tensor entries", path, len(state) - len(tensors))
    return tensors, beside


def read_state_dict(
    path: str | os.PathLike[str], suffix: str | None = None, allow: tuple[str, ...] = PICKLE_ALLOWANCES
) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file (:func:`read_weights_file` without the entries beside them)."""
    return read_weights_file(path, suffix, allow)[0]
