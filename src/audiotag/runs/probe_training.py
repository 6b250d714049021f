"""The training task of ``model: {name: linear_probe, ...}``: linear evaluation, fold by fold.

Like any run, each fold writes ``oof.parquet``, ``test.parquet``, ``probe.npz`` (the fitted probe,
which ``package`` ships) and ``done.json`` (skipped when done); the run's ``oof.parquet``,
``test.parquet`` and ``metrics.json`` follow (``collect_run``), so that ``ensemble`` and
``leaderboard`` take it as any other member. The embeddings come from the embedding cache, built
first when missing (``embed_prepared``, which ``embed`` runs too); the classifier is
``audiotag.train.probe``'s.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from audiotag.competitions.base import warn_about_rules
from audiotag.config.schema import FeatureConfig
from audiotag.core.errors import ConfigError
from audiotag.data.cache_reader import FeatureCache
from audiotag.models.embedding_cache import EmbeddingCache, embeddings_root, ensure_embeddings
from audiotag.models.embedding_plan import plan_embeddings
from audiotag.models.probe import LinearProbeConfig
from audiotag.models.probe_head import PROBE_FILE, PROBE_RECORD, verify_probe
from audiotag.models.representation import EmbeddingConfig, LayerSpec
from audiotag.runs.folder import RunResult, check_or_write_run_info, claim_run, collect_run
from audiotag.runs.prepare import Prepared, fold_data, prepare, run_clips, run_folds
from audiotag.runs.task import RunRequest
from audiotag.train.distributed import SINGLE, device_for
from audiotag.train.experiment import ExperimentConfig
from audiotag.train.loop import FoldData, fold_score
from audiotag.train.probe import ProbeFold, fit_fold, read_done, write_fold

log = logging.getLogger(__name__)


def embed_prepared(
    prepared: Prepared,
    cfg: EmbeddingConfig,
    features: FeatureConfig,
    device: torch.device,
    layers: LayerSpec | None = None,
    clip_ids: list[str] | None = None,
) -> tuple[EmbeddingCache, list[str]]:
    """The embedding cache of a prepared competition (built or resumed when missing) and the layer
    names ``layers`` (default: ``cfg.layers``) resolve to; ``clip_ids``: of these clips only (a run
    bounded by ``train.max_clips``: ``run_clips``), else of every clip."""
    cache = FeatureCache(prepared.cache_dir)
    train_ids = prepared.competition.training_clips(prepared.table)["clip_id"].astype(str).tolist()
    subset = None if clip_ids is None else [c for c in clip_ids if c in cache]
    if subset is not None:
        kept = set(subset)
        train_ids = [c for c in train_ids if c in kept]
    plan = plan_embeddings(cfg, features, cache, train_ids, subset)
    names = plan.layers(layers)
    folder = ensure_embeddings(plan, names, cache, embeddings_root(prepared.competition.dir), device)
    return EmbeddingCache(folder), names


class ProbeTraining:
    """The ``TrainingTask`` of a linear probe: the run's ``run_dir`` and ``on_epoch`` do not apply
    (it lives in ``runs/<name>``; it has no epochs)."""

    def train(self, cfg: ExperimentConfig, request: RunRequest) -> RunResult:
        tc = cfg.train
        if tc.loss.name != "bce" or tc.noisy_loss is not None or tc.pseudo_labels is not None:
            raise ConfigError(
                "model linear_probe fits a logistic regression: train.loss, train.noisy_loss and "
                "train.pseudo_labels do not apply to it; leave them out (train.subset_weights does apply)"
            )
        run_name, workers, ctx = request.run_name, request.workers, request.ctx
        probe = cfg.model
        assert isinstance(probe, LinearProbeConfig)
        if ctx.world > 1:  # under --gpus N (e.g. a default extra member): one process fits, the others wait
            return ctx.from_main(lambda: self.train(cfg, RunRequest(run_name, workers)))
        warn_about_rules(cfg.competition, probe.pretrained)
        prepared = prepare(cfg.competition, cfg.features, workers=workers)
        comp = prepared.competition
        run_dir = comp.dir / "runs" / (run_name or cfg.name)
        n_folds = comp.cfg.n_folds
        folds = run_folds(cfg, n_folds)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        with claim_run(run_dir):
            check_or_write_run_info(run_dir, cfg, prepared)
            device = device_for(SINGLE, cfg.train.device)
            clip_ids = run_clips(prepared, cfg.train)
            embeddings, layers = embed_prepared(
                prepared, probe.embedding, cfg.features, device, clip_ids=clip_ids
            )
            log.info(
                "train: linear probe %s on %s (%s values a clip), folds %s",
                run_dir,
                ", ".join(f"layer {n}" for n in layers),
                sum(embeddings.dims[n] for n in layers),
                folds,
            )
            for fold in folds:
                data = fold_data(prepared, cfg, fold)
                probe_one_fold(cfg, prepared, embeddings, layers, data, run_dir / f"fold{fold}")
            return collect_run(run_dir, comp.classes, comp.metric, n_folds, prepared)


def probe_one_fold(
    cfg: ExperimentConfig,
    prepared: Prepared,
    embeddings: EmbeddingCache,
    layers: list[str],
    data: FoldData,
    fold_dir: Path,
) -> dict:
    done = read_done(fold_dir)
    if done is not None:
        log.info("fold %d: already done (%s %.4f), skipping", data.fold, data.metric, done["score"])
        if PROBE_RECORD in done:  # a corrupt probe.npz surfaces here, not when packaged
            verify_probe(fold_dir / PROBE_FILE, done)
        else:
            log.warning(
                "fold %d: finished before probe runs saved their fitted classifier (no %s), so `package` "
                "cannot ship this run; delete %s and train again to refit it",
                data.fold,
                PROBE_FILE,
                fold_dir,
            )
        return done
    probe = cfg.model
    assert isinstance(probe, LinearProbeConfig)
    started = time.time()
    table = prepared.table.set_index("clip_id")
    train_rows = table.loc[data.train_ids]
    groups = None
    if "group" in table.columns and train_rows["group"].notna().any():
        own = train_rows.index.to_series(index=train_rows.index)  # a clip without a group is its own
        groups = train_rows["group"].astype(str).where(train_rows["group"].notna(), own).to_numpy()
    fold = ProbeFold(
        fold=data.fold,
        x_train=embeddings.matrix(layers, data.train_ids),
        y_train=data.train_targets.astype(np.float64),
        w_train=np.asarray(data.train_weights, dtype=np.float64),
        verified_train=train_rows["verified"].to_numpy(bool),
        groups_train=groups,
        x_val=embeddings.matrix(layers, data.val_ids),
        x_test=embeddings.matrix(layers, data.test_ids),
    )
    single = prepared.competition.task != "multi_label"
    outcome = fit_fold(probe, fold, data.metric, single, cfg.train.seed)
    score = fold_score(data, outcome.val_scores)
    summary = {
        "fold": data.fold,
        "metric": data.metric,
        "score": score,
        "n_train": len(data.train_ids),
        "n_val": len(data.val_ids),
        "n_val_scored": int(data.val_scored.sum()),
        "seed": cfg.train.seed,
        "device": "cpu",
        "gpu": None,
        "seconds": round(time.time() - started, 1),
        "embeddings": str(embeddings.folder),
        "layers": layers,
        "dims": sum(embeddings.dims[n] for n in layers),
    }
    embedding = {
        "config": probe.embedding.model_dump(mode="json"),
        "identity": embeddings.manifest["identity"],  # what the vectors depend on (embedding_cache.py)
        "layers": layers,
        "dims": {name: embeddings.dims[name] for name in layers},
    }
    summary = write_fold(
        fold_dir, outcome, summary, data.val_ids, data.test_ids, data.classes, embedding=embedding
    )
    log.info(
        "fold %d: done, %s %.4f (C=%g chosen on the training clips; inner CV %s)",
        data.fold,
        data.metric,
        score,
        outcome.c,
        ", ".join(f"{c:g}: {s:.4f}" for c, s in outcome.inner_scores.items()) or "-",
    )
    return summary
