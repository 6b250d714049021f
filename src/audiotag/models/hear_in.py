"""Any installed HEAR module as a frozen representation: the In side of the HEAR bridge.

The HEAR 2021 API (Turian et al., "HEAR: Holistic Evaluation of Audio Representations"; the rules
below are those ``hearvalidator`` 2021.0.2 checks): a module exposes ``load_model(model_file_path="")``
returning a model with ``sample_rate`` (one of 16000, 22050, 44100, 48000), ``scene_embedding_size``
and ``timestamp_embedding_size`` (ints); ``get_scene_embeddings(audio, model)`` -> float32
(n_sounds, scene_embedding_size) and ``get_timestamp_embeddings(audio, model)`` -> (float32
(n_sounds, n_timestamps, timestamp_embedding_size), timestamps (n_sounds, n_timestamps) in
milliseconds at regular intervals), ``audio`` being float32 (n_sounds, n_samples) in [-1, 1] at the
model's rate, on its device.

``weights: hear:<module>[:<model_file>]`` (an ``EmbeddingConfig``: ``embed --model``, a probe's
``embedding.weights``) names such a module. Why a weights name and not a model family: a family is
a log-mel backbone that training fine-tunes (checkpoint layouts, converters, a head); a HEAR module
is a black box on waves at its own rate that is only ever used frozen, so it plugs in where frozen
representations are chosen, and the embedding cache, ``embed``, the probe and the ensemble (probe runs
are members) take it as they take any other. Its front-end is a wave cache at the module's rate
(:func:`hear_features`; ``features: auto``). Layers: ``embedding`` (the default) is the scene
embedding; ``1`` the timestamp embeddings averaged over time. Every output is checked (type, dtype,
shape, sizes, finite values, timestamps); a violation is a ConfigError naming the module and the rule.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from audiotag.config.schema import FeatureConfig
from audiotag.core.digests import file_sha256
from audiotag.core.errors import AudiotagError, ConfigError
from audiotag.models.family import EMBEDDING

log = logging.getLogger(__name__)

HEAR_PREFIX = "hear:"
HEAR_RATES = (16000, 22050, 44100, 48000)  # hearvalidator's ACCEPTABLE_SAMPLE_RATE
TIMESTAMPS = "1"  # the layer of the timestamp embeddings, averaged over time
HEAR_LAYERS = [TIMESTAMPS, EMBEDDING]
MIN_SECONDS = 1.0  # shorter clips are wrap-padded to this (as embed pads to a backbone's stride)
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclass(frozen=True)
class HearSpec:
    """``hear:<module>[:<model_file>]``: an importable module and what its ``load_model`` takes."""

    module: str
    model_file: str = ""

    def __str__(self) -> str:
        return f"{HEAR_PREFIX}{self.module}" + (f":{self.model_file}" if self.model_file else "")


def hear_spec(weights: str | None) -> HearSpec | None:
    """The HEAR module a ``weights`` value names, or None for any other weights."""
    if not weights or not weights.startswith(HEAR_PREFIX):
        return None
    module, _, model_file = weights[len(HEAR_PREFIX) :].partition(":")
    if not _MODULE_NAME.match(module):
        raise ConfigError(
            f"weights {weights!r}: {module!r} is not a module name; write hear:<module>[:<model_file>], "
            "e.g. hear:hearbaseline or hear:hearbaseline:/path/to/model.pt"
        )
    return HearSpec(module, model_file)


def violation(spec: HearSpec, rule: str) -> ConfigError:
    return ConfigError(f"HEAR module {spec.module!r} ({spec}) breaks the HEAR API: {rule}")


class HearModule:
    """A loaded HEAR module, its attributes checked; :meth:`scene` and :meth:`timestamps` check what
    the module returns."""

    def __init__(self, spec: HearSpec) -> None:
        self.spec = spec
        try:
            self.module = importlib.import_module(spec.module)
        except ImportError as exc:
            raise ConfigError(
                f"weights {spec}: cannot import module {spec.module!r} ({exc}); install the package that "
                "provides it (pip install ...) or put its folder on PYTHONPATH"
            ) from None
        for name in ("load_model", "get_scene_embeddings", "get_timestamp_embeddings"):
            if not callable(getattr(self.module, name, None)):
                raise violation(spec, f"the module has no function {name}()")
        try:
            self.model = (
                self.module.load_model(spec.model_file) if spec.model_file else self.module.load_model()
            )
        except AudiotagError:
            raise
        except Exception as exc:
            raise ConfigError(f"weights {spec}: {spec.module}.load_model() failed: {exc!r}") from exc
        self.sample_rate = self._int_attribute("sample_rate")
        if self.sample_rate not in HEAR_RATES:
            log.warning(
                "HEAR module %s: sample_rate %d is not one of HEAR's %s; audiotag resamples to it anyway",
                spec.module,
                self.sample_rate,
                HEAR_RATES,
            )
        self.scene_size = self._int_attribute("scene_embedding_size")
        self.timestamp_size = self._int_attribute("timestamp_embedding_size")
        if isinstance(self.model, torch.nn.Module):
            self.model.eval()

    def _int_attribute(self, name: str) -> int:
        if not hasattr(self.model, name):
            raise violation(self.spec, f"the model load_model() returned has no attribute {name}")
        value = getattr(self.model, name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise violation(
                self.spec, f"model.{name} must be a positive int, got {value!r} ({type(value).__name__})"
            )
        return value

    @property
    def device(self) -> torch.device:
        """Where the model's tensors are (the audio goes there); the CPU for a model without any."""
        if isinstance(self.model, torch.nn.Module):
            for tensor in (*self.model.parameters(), *self.model.buffers()):
                return tensor.device
        return torch.device("cpu")

    def to(self, device: torch.device | str) -> HearModule:
        if isinstance(self.model, torch.nn.Module):
            self.model.to(device)
        return self

    def identity(self) -> dict[str, Any]:
        """What the module's embeddings depend on: its name and version, the model file's SHA-256."""
        top = self.spec.module.split(".")[0]
        try:
            version = importlib.metadata.version(top)
        except importlib.metadata.PackageNotFoundError:
            version = str(getattr(self.module, "__version__", "unknown"))
        path = Path(self.spec.model_file).expanduser()
        return {
            "hear": self.spec.module,
            "version": version,
            "model_file": self.spec.model_file,
            "model_file_sha256": file_sha256(path) if path.is_file() else None,
            "sample_rate": self.sample_rate,
            "scene_embedding_size": self.scene_size,
            "timestamp_embedding_size": self.timestamp_size,
        }

    def scene(self, audio: torch.Tensor) -> torch.Tensor:
        """(n_sounds, scene_embedding_size) float32 for float32 audio (n_sounds, n_samples)."""
        with torch.no_grad():
            out = self.module.get_scene_embeddings(audio, self.model)
        check_scene(self.spec, out, audio.shape[0], self.scene_size)
        return out

    def timestamps(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeddings (n_sounds, n_timestamps, size) float32, timestamps (n_sounds, n_timestamps) ms)."""
        with torch.no_grad():
            out = self.module.get_timestamp_embeddings(audio, self.model)
        if not isinstance(out, tuple | list) or len(out) != 2:
            raise violation(
                self.spec, f"get_timestamp_embeddings must return (embeddings, timestamps), got {type(out)}"
            )
        embeddings, stamps = out
        ms = 1000.0 * audio.shape[1] / self.sample_rate
        check_timestamps(self.spec, embeddings, stamps, audio.shape[0], self.timestamp_size, ms)
        return embeddings, stamps


def _check_tensor(spec: HearSpec, what: str, value: Any, shape: tuple[int, ...]) -> None:
    """A float32 torch tensor of ``shape`` (-1: any length) with finite values."""
    if not isinstance(value, torch.Tensor):
        raise violation(spec, f"{what} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype != torch.float32:
        raise violation(spec, f"{what} must be float32, got {value.dtype}")
    if value.ndim != len(shape) or any(s not in (-1, v) for s, v in zip(shape, value.shape, strict=True)):
        wanted = " x ".join("any" if s == -1 else str(s) for s in shape)
        raise violation(spec, f"{what} has shape {tuple(value.shape)}, expected ({wanted})")
    if not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).sum())
        raise violation(spec, f"{what} holds {bad} NaN or infinite value(s)")


def check_scene(spec: HearSpec, out: Any, n_sounds: int, size: int) -> None:
    """What ``get_scene_embeddings`` returns: float32 (n_sounds, scene_embedding_size), finite."""
    _check_tensor(spec, "get_scene_embeddings' output", out, (n_sounds, size))


def check_timestamps(
    spec: HearSpec, embeddings: Any, stamps: Any, n_sounds: int, size: int, duration_ms: float
) -> None:
    """What ``get_timestamp_embeddings`` returns: float32 (n_sounds, n_timestamps, size) and
    timestamps (n_sounds, n_timestamps), at least one each, increasing at regular intervals (within
    1 ms, hearvalidator's tolerance) and in milliseconds (within the clip; not ending before a quarter
    of it, as timestamps in seconds would)."""
    _check_tensor(spec, "get_timestamp_embeddings' embeddings", embeddings, (n_sounds, -1, size))
    n = embeddings.shape[1]
    if n < 1:
        raise violation(spec, "get_timestamp_embeddings returned no timestamp")
    if not isinstance(stamps, torch.Tensor) or not stamps.is_floating_point():
        raise violation(
            spec, f"timestamps must be a float torch.Tensor, got {getattr(stamps, 'dtype', stamps)}"
        )
    _check_tensor(spec, "get_timestamp_embeddings' timestamps", stamps.float(), (n_sounds, n))
    ts = stamps.detach().double().cpu()
    steps = torch.diff(ts, dim=1)
    if n > 1 and not bool((steps > 0).all()):
        raise violation(spec, "timestamps must increase along each sound")
    if n > 1 and not bool(((steps - steps.mean()).abs() < 1e-3 + 1e-6 * float(ts.abs().max())).all()):
        raise violation(spec, "timestamps must occur at regular intervals (a deviation over 1 ms found)")
    tolerance = max(50.0, 0.05 * duration_ms)
    if float(ts.min()) < -tolerance or float(ts.max()) > duration_ms + tolerance:
        raise violation(
            spec,
            f"timestamps span {float(ts.min()):g}..{float(ts.max()):g} ms for sounds of "
            f"{duration_ms:g} ms; they must lie within the sound, in milliseconds",
        )
    if n > 1 and float(ts.max()) < duration_ms / 4:
        raise violation(
            spec,
            f"timestamps end at {float(ts.max()):g} for sounds of {duration_ms:g} ms: in seconds? "
            "HEAR timestamps are in milliseconds",
        )


@cache
def load_hear(spec: HearSpec) -> HearModule:
    """The module loaded once per process (``features: auto`` and the embedding both ask)."""
    return HearModule(spec)


def hear_features(spec: HearSpec) -> FeatureConfig:
    """The front-end of a HEAR module: a wave cache at its sample rate (it computes its own features)."""
    rate = load_hear(spec).sample_rate
    return FeatureConfig(name=f"hear_{rate}", cache="wave", sample_rate=rate)


def check_hear_features(spec: HearSpec, features: FeatureConfig) -> None:
    rate = load_hear(spec).sample_rate
    if features.cache != "wave" or features.sample_rate != rate:
        raise ConfigError(
            f"features: {spec} takes waves at {rate} Hz, but the features {features.name!r} cache "
            f"{features.cache} at {features.sample_rate} Hz; use `features: auto` (a wave cache at {rate} Hz)"
        )


def hear_layers(spec: Any) -> list[str]:
    """Layer names of a HEAR module (``spec``: ``default``, ``all`` or a list), in network order."""
    if spec == "all":
        return list(HEAR_LAYERS)
    names = [EMBEDDING] if spec == "default" else [str(layer) for layer in spec]
    unknown = [n for n in names if n not in HEAR_LAYERS]
    if unknown:
        raise ConfigError(
            f"embedding.layers: {unknown} not offered by a HEAR module; it has {TIMESTAMPS} (the timestamp "
            f"embeddings averaged over time) and {EMBEDDING} (the scene embedding)"
        )
    return [n for n in HEAR_LAYERS if n in names]


class HearRepresentation:
    """A HEAR module with :class:`~audiotag.models.representation.Representation`'s interface: batches
    of cached wave windows (batch, samples, 1) in, one vector per window and layer out."""

    def __init__(self, spec: HearSpec, device: torch.device | str = "cpu") -> None:
        self.hear = load_hear(spec).to(device)
        self.min_rows = max(1, round(MIN_SECONDS * self.hear.sample_rate))

    def encode(self, windows: torch.Tensor, layers: list[str]) -> dict[str, np.ndarray]:
        audio = windows.squeeze(-1).float().to(self.hear.device)
        out: dict[str, torch.Tensor] = {}
        if EMBEDDING in layers:
            out[EMBEDDING] = self.hear.scene(audio)
        if TIMESTAMPS in layers:
            out[TIMESTAMPS] = self.hear.timestamps(audio)[0].mean(dim=1)
        return {name: out[name].detach().float().cpu().numpy() for name in layers}

    def layer_dims(self, layers: list[str]) -> dict[str, int]:
        """Values per layer, from one call on two seconds of quiet noise (a bad module fails here,
        before any clip is embedded)."""
        noise = 0.1 * torch.randn(2, 2 * self.hear.sample_rate, 1, generator=torch.Generator().manual_seed(0))
        return {name: int(v.shape[1]) for name, v in self.encode(noise, layers).items()}


def validate_hear(spec: HearSpec, device: torch.device | str = "cpu", seed: int = 0) -> dict[str, Any]:
    """hearvalidator's checks on a HEAR module, and batch independence: white noise in [-1, 1], 16
    sounds of 2 s for the timestamp embeddings and 8 of 3.74 s for the scene embeddings (its
    batches); the first sound embedded alone must give what it gave in the batch. ConfigError on
    the first rule broken; else what was found."""
    hear = HearModule(spec).to(device)
    if hear.sample_rate not in HEAR_RATES:
        raise violation(spec, f"model.sample_rate {hear.sample_rate} is not one of {HEAR_RATES}")
    gen = torch.Generator().manual_seed(seed)
    rate = hear.sample_rate
    audio = (torch.rand(16, 2 * rate, generator=gen) * 2 - 1).to(hear.device)
    embeddings, stamps = hear.timestamps(audio)
    if not torch.allclose(hear.timestamps(audio[:1])[0][0], embeddings[0], rtol=1e-4, atol=1e-5):
        raise violation(spec, "a sound's timestamp embeddings depend on the other sounds of its batch")
    audio = (torch.rand(8, int(3.74 * rate), generator=gen) * 2 - 1).to(hear.device)
    scene = hear.scene(audio)
    if not torch.allclose(hear.scene(audio[:1])[0], scene[0], rtol=1e-4, atol=1e-5):
        raise violation(spec, "a sound's scene embedding depends on the other sounds of its batch")
    steps = torch.diff(stamps[0].double())
    return {
        "module": spec.module,
        "model_file": spec.model_file,
        "sample_rate": rate,
        "scene_embedding_size": hear.scene_size,
        "timestamp_embedding_size": hear.timestamp_size,
        "timestamps_per_2s": int(stamps.shape[1]),
        "timestamp_interval_ms": float(steps.mean()) if len(steps) else None,
    }
