"""The embedding cache of a prepared competition: what ``embed`` writes and a linear probe reads."""

from __future__ import annotations

import torch

from audiotag.config.schema import FeatureConfig
from audiotag.data.cache_reader import FeatureCache
from audiotag.models.embedding_cache import (
    EmbeddingCache,
    embeddings_root,
    ensure_embeddings,
    plan_embeddings,
)
from audiotag.models.representation import EmbeddingConfig, LayerSpec
from audiotag.runs.prepare import Prepared


def embed_prepared(
    prepared: Prepared,
    cfg: EmbeddingConfig,
    features: FeatureConfig,
    device: torch.device,
    layers: LayerSpec | None = None,
) -> tuple[EmbeddingCache, list[str]]:
    """The embedding cache of a prepared competition (built or resumed when missing) and the layer
    names ``layers`` (default: ``cfg.layers``) resolve to."""
    cache = FeatureCache(prepared.cache_dir)
    train_ids = prepared.competition.training_clips(prepared.table)["clip_id"].astype(str).tolist()
    plan = plan_embeddings(cfg, features, cache, train_ids)
    names = plan.layers(layers)
    folder = ensure_embeddings(plan, names, cache, embeddings_root(prepared.competition.dir), device)
    return EmbeddingCache(folder), names
