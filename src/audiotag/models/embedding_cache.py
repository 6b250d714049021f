"""The embedding cache: clip embeddings of a frozen model, computed once, beside the feature cache.

Layout of ``competition/<name>/embeddings/<label>-<key>/`` (``label`` is the weights' name):

- ``<layer>.f32``: one little-endian float32 array (n_clips, dim) per layer (``1`` .. ``N``,
  ``embedding``; see ``models/representation.py``), clips in ``index.parquet`` order;
- ``index.parquet``: the clip ids, sorted, every clip of the feature cache (train and test), or
  the clips a run bounded by ``train.max_clips`` uses (its training clips and every test clip);
- ``manifest.json``: what the vectors depend on (``identity``: the model's settings, the SHA-256 of
  the weights file or the seed of random ones, the feature key, the input normalisation, the window
  and hop in cached rows, and the feature cache's clip-list hash, with a hash of the clips when they
  are such a subset), the layers and their widths, ``complete: true``.

The folder's key hashes the identity and the layers, so changing the model, its weights, the
front-end, the windows, the data or the layers never reads a stale cache. A cache that holds more
layers than asked for serves them too (``./run.sh embed --layers all`` once, then any fusion): it is
found by its identity alone (``base_key`` in the manifest).

Atomic and resumable, like the feature cache: both are staged append stores (``core/staged.py``).
Every ``CHECKPOINT_EVERY`` clips the progress record keeps a hash of each layer file's contents so
far; a file that no longer matches its hash on resume starts the build over.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from audiotag.config.schema import FeatureConfig, InputNorm
from audiotag.core.atomic import atomic_path, read_json_object
from audiotag.core.digests import file_sha256
from audiotag.core.errors import DataError
from audiotag.core.log import progress
from audiotag.core.staged import (
    MANIFEST,
    StagedWriter,
    appending,
    build_lock,
    cut_to,
    publish,
    read_progress,
    running_hash,
    staging_folder,
    start_over,
)
from audiotag.data.cache_reader import FeatureCache
from audiotag.data.dataset import fit_length, window_starts
from audiotag.data.norm_stats import dataset_norm
from audiotag.models.hear_in import check_hear_features, hear_layers, hear_spec, load_hear
from audiotag.models.representation import (
    EmbeddingConfig,
    FrozenRepresentation,
    LayerSpec,
    frozen_representation,
    model_config,
    resolve_layers,
)

log = logging.getLogger(__name__)

EMBED_FORMAT = 1  # bump when the computation of the vectors changes, so old caches are not reused
DTYPE = np.dtype("<f4")
INDEX = "index.parquet"
CHECKPOINT_EVERY = 64  # clips between fsync + progress record
EMBED_HINT = "run ./run.sh embed (or the probe's train) to (re)build it"


def embeddings_root(competition_dir: Path) -> Path:
    return Path(competition_dir) / "embeddings"


def layer_file(folder: Path, layer: str) -> Path:
    return folder / f"{layer}.f32"


# ----------------------------------------------------------------------------- what the vectors depend on


_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def weights_sha256(path: Path) -> str:
    """SHA-256 of a weights file, remembered per (path, size, mtime) within the process."""
    st = path.stat()
    memo = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _SHA_MEMO:
        _SHA_MEMO[memo] = file_sha256(path)
    return _SHA_MEMO[memo]


def weights_identity(cfg: EmbeddingConfig, arch: str | None = None) -> str:
    """The SHA-256 of the weights file (a table name is fetched and verified first), or the seed."""
    if cfg.weights is None:
        return f"random-seed{cfg.seed}"
    from audiotag.models.registry import resolve

    path, _ = resolve(cfg.weights, arch=arch)
    return weights_sha256(path)


@dataclass(frozen=True)
class EmbeddingPlan:
    """Everything an embedding cache depends on, resolved: the config, the front-end, the input
    normalisation, the windows (in cached rows) and the identity that keys the cache."""

    cfg: EmbeddingConfig
    features: FeatureConfig
    input_norm: InputNorm | None
    window_rows: int
    hop_rows: int
    identity: dict[str, Any]
    clip_ids: tuple[str, ...] | None = None  # sorted; None: every clip of the feature cache

    @property
    def base_key(self) -> str:
        blob = json.dumps(self.identity, sort_keys=True).encode()
        return hashlib.sha1(blob).hexdigest()

    @property
    def label(self) -> str:
        name = self.cfg.weights or f"random-{self.identity['model'].get('name', 'model')}"
        hear = hear_spec(self.cfg.weights)
        if hear is not None:
            name = f"hear-{hear.module}"
        elif self.cfg.weights and Path(name).suffix:
            name = Path(name).stem
        return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name).strip("._") or "model"

    def folder_name(self, layers: Sequence[str]) -> str:
        digest = hashlib.sha1(f"{self.base_key}|{','.join(layers)}".encode()).hexdigest()[:10]
        return f"{self.label}-{digest}"

    def layers(self, spec: LayerSpec | None = None) -> list[str]:
        if hear_spec(self.cfg.weights) is not None:
            return hear_layers(self.cfg.layers if spec is None else spec)
        return resolve_layers(model_config(self.cfg), self.cfg.layers if spec is None else spec)


def plan_embeddings(
    cfg: EmbeddingConfig,
    features: FeatureConfig,
    cache: FeatureCache,
    train_ids: Sequence[str],
    subset: Sequence[str] | None = None,
) -> EmbeddingPlan:
    """Resolve what the cache depends on. ``input_norm: dataset`` models (BYOL-A) get one scalar mean
    and std over the training clips' log-mel (no labels; the same for every fold). A HEAR module
    (``hear:<module>``) is known by its name, version and model file. ``subset``: embed only these
    clips of the feature cache (a cache of its own), else all of them."""
    spec = hear_spec(cfg.weights)
    norm = None
    if spec is not None:
        check_hear_features(spec, features)
        model = load_hear(spec).identity()
        weights = model["model_file_sha256"] or str(spec)
    else:
        from audiotag.models.registry import weights_arch

        model_cfg = model_config(cfg)
        if model_cfg.input_norm == "dataset":
            train = [c for c in train_ids if c in cache]
            norm = dataset_norm(cache, train, features, model_cfg.norm_stats)
        model = model_cfg.model_dump(mode="json", exclude={"pretrained"})
        weights = weights_identity(cfg, weights_arch(model_cfg))
    window = max(1, round(cfg.window_seconds * features.cache_rate))
    hop = max(1, round(window * cfg.hop_fraction))
    identity = {
        "format": EMBED_FORMAT,
        "model": model,
        "weights": weights,
        "features": features.key(),
        "input_norm": None if norm is None else [norm.mean, norm.std],
        "window_rows": window,
        "hop_rows": hop,
        "clips": cache.manifest.get("clips_hash"),
    }
    clip_ids = None if subset is None else tuple(sorted(set(subset)))
    if clip_ids is not None:
        digest = hashlib.sha1("\n".join(clip_ids).encode()).hexdigest()[:16]
        identity["clips"] = f"{identity['clips']}/subset-{len(clip_ids)}-{digest}"
    return EmbeddingPlan(cfg, features, norm, window, hop, identity, clip_ids)


def recorded_plan(cfg: EmbeddingConfig, features: FeatureConfig, identity: dict[str, Any]) -> EmbeddingPlan:
    """The plan of a cache whose manifest recorded ``identity`` (a linear probe's ``probe.npz``
    keeps it): the model's settings, input normalisation and windows come from the record, so no
    training clip, weights lookup or ``configs/`` folder is needed (a package's inference)."""
    if identity.get("format") != EMBED_FORMAT:
        raise DataError(
            f"the embeddings were computed by embedding format {identity.get('format')!r}, this code "
            f"computes format {EMBED_FORMAT}; train the probe again"
        )
    if identity.get("features") != features.key():
        raise DataError(
            f"the embeddings were computed on features {identity.get('features')!r}, not on the "
            f"configured front-end {features.name!r} ({features.key()})"
        )
    norm = identity.get("input_norm")
    input_norm = None if norm is None else InputNorm(mean=float(norm[0]), std=float(norm[1]))
    resolved = cfg.model_copy(update={"model": dict(identity["model"])})  # the settings, not a name
    return EmbeddingPlan(
        resolved, features, input_norm, int(identity["window_rows"]), int(identity["hop_rows"]), identity
    )


def embed_clips(
    plan: EmbeddingPlan,
    layers: Sequence[str],
    cache: FeatureCache,
    clip_ids: Sequence[str],
    device: torch.device | str = "cpu",
    weights_file: Path | None = None,
) -> np.ndarray:
    """(n_clips, dim) float32: the clips' vectors as an embedding cache holds them (``clip_vectors``),
    the layers concatenated in the given order as :meth:`EmbeddingCache.matrix` does; computed now,
    nothing written. ``weights_file``: a checked copy of the weights (a package's)."""
    rep = frozen_representation(plan.cfg, plan.features, plan.input_norm, device, weights_file)
    layers = list(layers)
    rows = [
        np.concatenate([vectors[name] for name in layers])
        for vectors in clip_vectors(cache, clip_ids, rep, layers, plan)
    ]
    if not rows:
        return np.zeros((0, sum(rep.layer_dims(layers).values())), dtype=DTYPE)
    return np.stack(rows).astype(DTYPE, copy=False)


# ----------------------------------------------------------------------------- reading


class EmbeddingCache:
    """A complete embedding cache: its clips and, per layer, a (n_clips, dim) float32 memory map."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        manifest = read_json_object(self.folder / MANIFEST)
        if manifest is None or manifest.get("complete") is not True:
            raise DataError(f"{self.folder}: embedding cache missing or incomplete; {EMBED_HINT}")
        self.manifest = manifest
        try:
            self.clip_ids: list[str] = pd.read_parquet(self.folder / INDEX)["clip_id"].astype(str).tolist()
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"{self.folder / INDEX}: unreadable ({exc}); {EMBED_HINT}") from None
        self._row = {clip_id: i for i, clip_id in enumerate(self.clip_ids)}
        self.dims: dict[str, int] = {str(k): int(v) for k, v in manifest["dims"].items()}
        for layer, dim in self.dims.items():
            path = layer_file(self.folder, layer)
            expected = len(self.clip_ids) * dim * DTYPE.itemsize
            size = path.stat().st_size if path.is_file() else -1
            if size != expected:
                raise DataError(
                    f"{path}: {size} bytes, expected {expected}; the embedding cache is damaged — delete "
                    f"{self.folder} and {EMBED_HINT}"
                )

    @property
    def layers(self) -> list[str]:
        return list(self.dims)

    def layer(self, name: str) -> np.ndarray:
        """(n_clips, dim) float32, memory-mapped."""
        if name not in self.dims:
            raise DataError(f"{self.folder}: no layer {name!r} (it holds {', '.join(self.dims)})")
        shape = (len(self.clip_ids), self.dims[name])
        if shape[0] == 0:
            return np.zeros(shape, dtype=DTYPE)
        return np.memmap(layer_file(self.folder, name), dtype=DTYPE, mode="r", shape=shape)

    def matrix(self, layers: Sequence[str], clip_ids: Sequence[str]) -> np.ndarray:
        """The fused embeddings of ``clip_ids``: the layers' vectors concatenated in the given order."""
        missing = [c for c in clip_ids if c not in self._row]
        if missing:
            raise DataError(
                f"{self.folder}: {len(missing)} clip(s) have no embedding (e.g. {missing[:3]}); the "
                f"feature cache changed since it was built; {EMBED_HINT}"
            )
        rows = np.fromiter((self._row[c] for c in clip_ids), dtype=np.int64, count=len(clip_ids))
        return np.concatenate([np.asarray(self.layer(name)[rows]) for name in layers], axis=1)


def find_embeddings(root: Path, plan: EmbeddingPlan, layers: Sequence[str]) -> Path | None:
    """A complete cache of this plan holding every one of ``layers``: its own folder, else any other
    folder built for the same identity with more layers (e.g. by ``--layers all``)."""
    own = root / plan.folder_name(layers)
    candidates = [own, *sorted(p for p in root.glob(f"{plan.label}-*") if p != own and p.is_dir())]
    for folder in candidates:
        manifest = read_json_object(folder / MANIFEST)
        if (
            manifest
            and manifest.get("complete") is True
            and manifest.get("base_key") == plan.base_key
            and set(layers) <= set(manifest.get("dims", {}))
        ):
            return folder
    return None


# ----------------------------------------------------------------------------- building


def ensure_embeddings(
    plan: EmbeddingPlan,
    layers: Sequence[str],
    cache: FeatureCache,
    root: Path,
    device: torch.device | str = "cpu",
) -> Path:
    """The folder of a complete embedding cache with ``layers`` for every clip of ``cache`` (or of
    the plan's subset); built (or resumed) when there is none."""
    layers = list(layers)
    found = find_embeddings(root, plan, layers)
    if found is not None:
        log.info("embeddings: %s up to date (layers %s)", found, ", ".join(layers))
        return found
    final = root / plan.folder_name(layers)
    waiting = f"embeddings: {final} is being built by another process"
    with build_lock(final, f"embedding {final.name}", waiting):
        found = find_embeddings(root, plan, layers)
        if found is not None:
            log.info("embeddings: %s built by another process meanwhile; using it", found)
            return found
        start = time.monotonic()
        rep = frozen_representation(plan.cfg, plan.features, plan.input_norm, device)
        dims = rep.layer_dims(layers)
        staging = staging_folder(final)
        key = final.name
        clip_ids = cache.clip_ids if plan.clip_ids is None else list(plan.clip_ids)
        n_done = _resume_point(staging, key, dims)
        log.info(
            "embeddings: %d clips, layers %s (%s values), %s -> %s",
            len(clip_ids),
            ", ".join(layers),
            " + ".join(str(dims[name]) for name in layers),
            f"resuming after {n_done} clips" if n_done else "from scratch",
            final,
        )
        _fill(staging, key, dims, clip_ids, n_done, cache, rep, plan)
        _finish(staging, final, plan, dims, clip_ids)
        log.info("embeddings: wrote %s in %.1f s", final, time.monotonic() - start)
    return final


def _resume_point(staging: Path, key: str, dims: dict[str, int]) -> int:
    """Clips already in ``staging`` for this key (the layer files are cut back to them), else 0
    with a fresh staging folder."""
    progress = read_progress(staging)
    if progress and progress.get("key") == key and progress.get("dims") == dims:
        n_done = int(progress.get("n_done", -1))
        hashes = progress.get("hashes") or {}
        good = n_done >= 0
        for layer, dim in dims.items():
            path, size = layer_file(staging, layer), n_done * dim * DTYPE.itemsize
            if not good or not cut_to(path, size):
                good = False
                break
            if running_hash(path, size).hexdigest() != hashes.get(layer):
                good = False
        if good:
            return n_done
        log.warning("embeddings: %s does not match its progress record; starting over", staging)
    elif staging.exists():
        log.info("embeddings: %s is from another build; starting over", staging)
    return start_over(staging, (layer_file(staging, layer).name for layer in dims))


class _Writer(StagedWriter):
    """Appends clip vectors to the layer files; fsyncs and records progress now and then."""

    def __init__(self, staging: Path, key: str, dims: dict[str, int], n_done: int) -> None:
        super().__init__(staging, (layer_file(staging, layer).name for layer in dims))
        self.key, self.dims, self.n_done = key, dims, n_done
        self.layers = dict(zip(dims, self.files.values(), strict=True))
        # the running hashes continue from the contents kept (those of a resumed build)
        self.hashes = {layer: running_hash(layer_file(staging, layer)) for layer in dims}

    def append(self, vectors: dict[str, np.ndarray]) -> None:
        """One clip's vectors; the hashes and count move only once every file has them (bytes of a
        clip cut short by an interrupt are cut off on resume)."""
        data = {layer: np.ascontiguousarray(vectors[layer], dtype=DTYPE).tobytes() for layer in self.layers}
        for layer, f in self.layers.items():
            f.write(data[layer])
        for layer, digest in self.hashes.items():
            digest.update(data[layer])
        self.n_done += 1
        if self.n_done % CHECKPOINT_EVERY == 0:
            self.checkpoint()

    def progress(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "n_done": self.n_done,
            "dims": self.dims,
            "hashes": {layer: h.hexdigest() for layer, h in self.hashes.items()},
        }


def _fill(
    staging: Path,
    key: str,
    dims: dict[str, int],
    clip_ids: list[str],
    n_done: int,
    cache: FeatureCache,
    rep: FrozenRepresentation,
    plan: EmbeddingPlan,
) -> None:
    writer = _Writer(staging, key, dims, n_done)
    vectors = clip_vectors(cache, clip_ids[n_done:], rep, list(dims), plan)
    with (
        appending(writer),
        progress(total=len(clip_ids), initial=n_done, unit="clip", desc="embeddings") as bar,
    ):
        for clip in vectors:
            writer.append(clip)
            bar.update()


def clip_windows(frames: np.ndarray, plan: EmbeddingPlan, min_rows: int) -> list[np.ndarray]:
    """A clip's inputs: the whole clip when it fits one window (wrap-padded to ``min_rows`` if it is
    shorter), else the evaluation's sliding windows (``window_starts``: the last one ends the clip)."""
    n = frames.shape[0]
    if n <= plan.window_rows:
        length = max(n, min_rows)
        return [fit_length(frames, length, 0, "wrap", 0.0)]
    starts = window_starts(n, plan.window_rows, plan.hop_rows)
    return [fit_length(frames, plan.window_rows, s, "wrap", 0.0) for s in starts]


def clip_vectors(
    cache: FeatureCache,
    clip_ids: Sequence[str],
    rep: FrozenRepresentation,
    layers: list[str],
    plan: EmbeddingPlan,
) -> Iterator[dict[str, np.ndarray]]:
    """Each clip's vector per layer, in order: its windows encoded (windows of one length share a
    forward pass, up to ``batch_size``) and averaged."""
    pending: list[tuple[int, np.ndarray]] = []  # (clip position, window), all of one length
    sums: dict[int, dict[str, np.ndarray]] = {}
    left: dict[int, int] = {}  # windows of a clip not encoded yet
    counts: dict[int, int] = {}
    next_out = 0

    def run_batch() -> None:
        out = rep.encode(torch.from_numpy(np.stack([w for _, w in pending])), layers)
        for row, (pos, _) in enumerate(pending):
            acc = sums.setdefault(pos, {})
            for layer in layers:
                value = out[layer][row].astype(np.float64)
                acc[layer] = acc[layer] + value if layer in acc else value
            left[pos] -= 1
        pending.clear()

    def finished() -> Iterator[dict[str, np.ndarray]]:
        nonlocal next_out
        while next_out in left and left[next_out] == 0:
            acc, count = sums.pop(next_out), counts.pop(next_out)
            del left[next_out]
            yield {layer: (acc[layer] / count).astype(np.float32) for layer in layers}
            next_out += 1

    for pos, clip_id in enumerate(clip_ids):
        windows = clip_windows(cache.get(clip_id), plan, rep.min_rows)
        left[pos] = counts[pos] = len(windows)
        for window in windows:
            if pending and (pending[0][1].shape != window.shape or len(pending) >= plan.cfg.batch_size):
                run_batch()
                yield from finished()
            pending.append((pos, window))
    if pending:
        run_batch()
    yield from finished()


def _finish(
    staging: Path, final: Path, plan: EmbeddingPlan, dims: dict[str, int], clip_ids: list[str]
) -> None:
    for layer, dim in dims.items():
        size = layer_file(staging, layer).stat().st_size
        if size != len(clip_ids) * dim * DTYPE.itemsize:
            raise DataError(f"{staging}: layer {layer} has {size} bytes for {len(clip_ids)} clips; rerun")
    with atomic_path(staging / INDEX, suffix=".parquet") as tmp:
        pd.DataFrame({"clip_id": clip_ids}).to_parquet(tmp, index=False)
    manifest = {
        "format": EMBED_FORMAT,
        "weights": plan.cfg.weights,
        "base_key": plan.base_key,
        "identity": plan.identity,
        "layers": list(dims),
        "dims": dims,
        "n_clips": len(clip_ids),
        "dtype": "float32",
        "byteorder": "little",
        "layout": "<layer>.f32 is (n_clips, dim), clips in index.parquet order",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "complete": True,
    }
    publish(staging, final, manifest)
