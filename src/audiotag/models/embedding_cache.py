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

import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from audiotag.core.atomic import atomic_path, read_json_object
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
from audiotag.models.embedding_plan import DTYPE, EMBED_FORMAT, EmbeddingPlan, clip_vectors
from audiotag.models.representation import FrozenRepresentation, frozen_representation

log = logging.getLogger(__name__)

INDEX = "index.parquet"
CHECKPOINT_EVERY = 64  # clips between fsync + progress record
EMBED_HINT = "run ./run.sh embed (or the probe's train) to (re)build it"


def embeddings_root(competition_dir: Path) -> Path:
    return Path(competition_dir) / "embeddings"


def layer_file(folder: Path, layer: str) -> Path:
    return folder / f"{layer}.f32"


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
