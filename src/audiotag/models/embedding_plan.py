"""What an embedding cache's vectors depend on (``EmbeddingPlan``: the model, its weights, the
front-end, the input normalisation and the windows, hashed into the identity that keys a cache) and
how a clip's vectors are computed: its windows encoded and averaged (``clip_vectors``). The cache
on disk that stores them is ``embedding_cache.py``."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from audiotag.config.schema import FeatureConfig, InputNorm
from audiotag.core.digests import file_sha256
from audiotag.core.errors import DataError
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

EMBED_FORMAT = 1  # bump when the computation of the vectors changes, so old caches are not reused
DTYPE = np.dtype("<f4")


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
