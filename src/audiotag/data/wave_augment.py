"""Waveform augmentation of training crops with audiomentations (``train.wave_augment``).

Each entry names an audiomentations transform and passes its parameters through, applied in order
to every training crop of a wave cache (``features.cache: wave``; the model then computes the log-mel
of the augmented crop on its device):

    wave_augment:
      - {name: Gain, min_gain_db: -6, max_gain_db: 6, p: 0.5}
      - {name: PitchShift, min_semitones: -2, max_semitones: 2, p: 0.3}
      - {name: AddBackgroundNoise, source: competition, min_snr_db: 5, max_snr_db: 20, p: 0.5}
      - {name: ApplyImpulseResponse, ir_path: ~/irs, p: 0.3}

``AddBackgroundNoise`` takes ``source``: ``competition`` (other training clips of the fold being
trained, never a validation clip nor the clip itself, read from the wave cache: see
``data/cache_noise.py``), ``noisy`` (those of them with unverified labels, e.g. FSDKaggle2019's noisy
subset when ``competition.subsets`` has it), or a file or folder of your own sounds (the library's
transform, which decodes a file per call). ``ir_path`` and ``sounds_path`` must exist.

Every entry is constructed and run once on a short wave when the config is loaded, so an unknown
class or parameter, or a value the library refuses (at construction or at the experiment's sample
rate), stops the load naming the entry. audiomentations draws from the global ``random`` and
``numpy.random`` generators: each crop's call runs with both seeded from (run seed, fold, epoch,
clip index) and restored afterwards, so a run is reproducible and a resumed one identical, whatever
the number of DataLoader workers. A transform that changes the length (``TimeStretch`` with
``leave_length_unchanged: false``) is cut or zero-padded back to the crop.
"""

from __future__ import annotations

import contextlib
import functools
import random
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from audiotag.core.errors import ConfigError
from audiotag.core.extras import import_extra
from audiotag.data.augment_specs import (
    check_parameters,
    construct,
    entry_name,
    init_parameters,
    transform_class,
)
from audiotag.data.spec_augment_lib import check_spec_augment_lib

KEY = "train.wave_augment"
NOISE_SOURCES = ("competition", "noisy")
PATH_PARAMETERS = ("sounds_path", "ir_path")
NOT_OFFERED = {"Lambda"}  # takes Python code, which a YAML file cannot give
CHECK_SECONDS = 0.25  # the wave each entry is tried on when the config is loaded


@contextlib.contextmanager
def seeded_globals(entropy: Sequence[int]) -> Iterator[None]:
    """Run the block with ``random`` and ``numpy.random`` seeded from ``entropy``; restore them after."""
    saved_py, saved_np = random.getstate(), np.random.get_state()
    words = np.random.SeedSequence([int(e) % 2**32 for e in entropy]).generate_state(2)
    random.seed(int(words[0]))
    np.random.seed(int(words[1]))
    try:
        yield
    finally:
        random.setstate(saved_py)
        np.random.set_state(saved_np)


def library_classes() -> dict[str, type]:
    """audiomentations' waveform transforms by class name."""
    audiomentations = import_extra("audiomentations", "augment", KEY)
    from audiomentations.core.transforms_interface import BaseWaveformTransform

    return {
        name: obj
        for name, obj in vars(audiomentations).items()
        if isinstance(obj, type) and issubclass(obj, BaseWaveformTransform) and name not in NOT_OFFERED
    }


def existing_path(index: int, name: str, parameter: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{KEY}[{index}] ({name}): {parameter} must be a file or folder path; got {value!r}")
    path = Path(value).expanduser()
    if not path.exists():
        raise ValueError(f"{KEY}[{index}] ({name}): {parameter} {path}: no such file or folder")
    return str(path)


def background_noise(index: int, params: dict[str, Any], pools: Mapping[str, Any] | None) -> Any:
    """``AddBackgroundNoise`` from ``source``: a cache pool (competition, noisy) or the library's on files."""
    from audiomentations import AddBackgroundNoise

    from audiotag.data.cache_noise import CacheBackgroundNoise, NoisePool

    name = "AddBackgroundNoise"
    source = params.pop("source", None)
    if source is not None and "sounds_path" in params:
        raise ValueError(f"{KEY}[{index}] ({name}): give source or sounds_path, not both")
    if source is None and "sounds_path" not in params:
        raise ValueError(
            f"{KEY}[{index}] ({name}): source missing: competition (the fold's other training clips), "
            "noisy (those with unverified labels) or the path of a file or folder of sounds"
        )
    if source in NOISE_SOURCES:
        allowed = [p for p in init_parameters(CacheBackgroundNoise) if p != "pool"]
        check_parameters(KEY, index, name, params, ["source", *allowed])
        pool = pools[source] if pools is not None else NoisePool(None, [])
        return construct(KEY, index, name, functools.partial(CacheBackgroundNoise, pool), params)
    if source is not None:
        params["sounds_path"] = source
    params["sounds_path"] = existing_path(index, name, "source", params["sounds_path"])
    check_parameters(KEY, index, name, params, ["source", *init_parameters(AddBackgroundNoise)])
    return construct(KEY, index, name, AddBackgroundNoise, params)


def build_transforms(specs: Sequence[Any], pools: Mapping[str, Any] | None = None) -> list[Any]:
    """The configured transforms, in order; ``pools`` None (when checking a config): empty noise pools."""
    classes = library_classes()
    transforms = []
    for index, spec in enumerate(specs):
        name = entry_name(KEY, index, spec)
        transform_class(KEY, index, name, classes, "audiomentations")
        params = {k: v for k, v in spec.items() if k != "name"}
        if name == "AddBackgroundNoise":
            transforms.append(background_noise(index, params, pools))
            continue
        for parameter in PATH_PARAMETERS:
            if parameter in params:
                params[parameter] = existing_path(index, name, parameter, params[parameter])
        check_parameters(KEY, index, name, params, init_parameters(classes[name]))
        transforms.append(construct(KEY, index, name, classes[name], params))
    return transforms


def check_wave_augment(specs: Sequence[Any], sample_rate: int) -> None:
    """Construct every entry, then run each (forced on) once on a short noise at ``sample_rate``; a
    ValueError naming the entry when the library refuses it."""
    build_transforms(specs)
    nyquist = sample_rate / 2
    for index, spec in enumerate(specs):
        high = {
            k: v
            for k, v in spec.items()
            if k.endswith("_freq") and isinstance(v, int | float) and v > nyquist
        }
        if high:
            listed = ", ".join(f"{k} {v:g}" for k, v in high.items())
            raise ValueError(
                f"{KEY}[{index}] ({spec['name']}): {listed} Hz above the Nyquist frequency {nyquist:g} Hz "
                f"of features.sample_rate {sample_rate}"
            )
    wave = np.random.default_rng(0).normal(0, 0.1, round(CHECK_SECONDS * sample_rate)).astype(np.float32)
    for index, spec in enumerate(specs):
        (transform,) = build_transforms([{**spec, "p": 1.0}])
        try:
            with seeded_globals([index]):
                out = transform(wave, sample_rate)
        except Exception as exc:  # the library's own checks at call time, e.g. a band above Nyquist
            text = " ".join(str(exc).split()) or type(exc).__name__
            raise ValueError(f"{KEY}[{index}] ({spec['name']}): at {sample_rate} Hz: {text}") from None
        if not np.all(np.isfinite(out)):
            raise ValueError(f"{KEY}[{index}] ({spec['name']}): gives non-finite samples")


def needed_sources(specs: Sequence[Any]) -> set[str]:
    """The cache noise sources (competition, noisy) the entries use."""
    return {
        str(spec.get("source"))
        for spec in specs
        if isinstance(spec, Mapping) and spec.get("name") == "AddBackgroundNoise"
        if spec.get("source") in NOISE_SOURCES
    }


class WaveAugment:
    """The configured chain, called per crop: ``augment(wave, entropy, clip_id)``.

    Built lazily in the process that uses it (DataLoader workers included) and dropped when pickled.
    """

    def __init__(self, specs: Sequence[Any], sample_rate: int, pools: Mapping[str, Any]) -> None:
        self.specs = list(specs)
        self.sample_rate = sample_rate
        self.pools = dict(pools)
        self._chain: Any = None
        self._noise: list[Any] = []

    def _build(self) -> Any:
        from audiomentations import Compose

        from audiotag.data.cache_noise import CacheBackgroundNoise

        transforms = build_transforms(self.specs, self.pools)
        self._noise = [t for t in transforms if isinstance(t, CacheBackgroundNoise)]
        return Compose(transforms, p=1.0)

    def __call__(self, wave: np.ndarray, entropy: Sequence[int], clip_id: str | None = None) -> np.ndarray:
        """``wave`` (samples,) float32 augmented, same length; draws seeded by ``entropy``."""
        if self._chain is None:
            self._chain = self._build()
        for transform in self._noise:
            transform.exclude = clip_id
        with seeded_globals(entropy):
            out = np.asarray(
                self._chain(samples=np.ascontiguousarray(wave, np.float32), sample_rate=self.sample_rate)
            )
        n = len(wave)
        if len(out) != n:
            out = np.pad(out[:n], (0, max(0, n - len(out))))
        return out.astype(np.float32, copy=False)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_chain"], state["_noise"] = None, []
        return state


def fold_wave_augment(
    specs: Sequence[Any],
    sample_rate: int,
    cache: Any,
    train_ids: Sequence[str],
    train_verified: np.ndarray | None,
    fold: int,
) -> WaveAugment | None:
    """The chain for one fold's training crops, its noise pools made of that fold's training clips
    (``competition``) or of those of them with unverified labels (``noisy``); None without entries."""
    if not specs:
        return None
    from audiotag.data.cache_noise import NoisePool

    pools: dict[str, Any] = {}
    for source in needed_sources(specs):
        ids = list(train_ids)
        if source == "noisy":
            verified = np.ones(len(ids), bool) if train_verified is None else np.asarray(train_verified, bool)
            ids = [clip_id for clip_id, ok in zip(ids, verified, strict=True) if not ok]
        if not ids:
            raise ConfigError(
                f"{KEY}: AddBackgroundNoise source {source}: fold {fold} has no training clip to draw "
                "noise from (the fold's validation clips are never used)"
                + (
                    "; noisy needs training clips with unverified labels: add the noisy subset to "
                    "competition.subsets (with a loss weight above 0), or use source: competition"
                    if source == "noisy"
                    else ""
                )
            )
        pools[source] = NoisePool(cache, ids)
    return WaveAugment(specs, sample_rate, pools)


def check_augmentations(
    wave_augment: list[Any], spec_augment_lib: list[Any], features: Any, crop_seconds: float
) -> None:
    """``train.wave_augment`` and ``train.spec_augment_lib`` against the experiment's front-end when
    the config is loaded: each entry constructed and tried once (``data/spec_augment_lib.py``)."""
    if wave_augment:
        if features.cache != "wave":
            raise ValueError(
                "wave_augment: transforms the training crops' waves, so it needs features.cache: wave (the "
                "cache then holds waves and the log-mel is computed from the augmented crop on the "
                "training device); this experiment caches log-mel. Set features.cache: wave, or use "
                "train.spec_augment_lib on the log-mel"
            )
        check_wave_augment(wave_augment, features.sample_rate)
    if spec_augment_lib:
        crop_frames = max(1, round(crop_seconds * features.frames_per_second))
        check_spec_augment_lib(spec_augment_lib, features, crop_frames)
