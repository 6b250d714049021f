"""The embedding cache (audiotag/models/embedding_cache.py): contents, key, reuse, kill and resume.

A small hand-written feature cache (clips of 5 to 70 frames) and a tiny random CNN keep it fast.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import audiotag.models.embedding_cache as ec
import audiotag.models.embedding_plan as ep
from audiotag.config.schema import FeatureConfig
from audiotag.core.errors import DataError
from audiotag.data.cache_reader import FeatureCache
from audiotag.models.representation import EmbeddingConfig, Representation

FEATURES = FeatureConfig(sample_rate=16000, hop_length=320, n_mels=16, fmin=50.0)  # 50 frames/s
TINY = {"name": "cnn", "channels": [4, 8], "embedding_dim": None, "bn0": True, "global_pool": "mean+max"}
LENGTHS = [3, 12, 40, 70, 33, 48, 9, 61]  # window 1 s = 50 frames: 70 and 61 take two windows


def write_feature_cache(folder: Path, lengths: list[int] = LENGTHS, seed: int = 0) -> FeatureCache:
    """A complete feature cache in the reader's format (frames.f16, index.parquet, manifest.json)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    frames = [rng.normal(-30, 10, (n, FEATURES.n_mels)).astype("<f2") for n in lengths]
    data = np.concatenate(frames)
    data.tofile(folder / "frames.f16")
    lengths_arr = np.array(lengths, dtype=np.int64)
    pd.DataFrame(
        {
            "clip_id": [f"clip{i:02d}" for i in range(len(lengths))],
            "offset": np.cumsum(lengths_arr) - lengths_arr,
            "n_frames": lengths_arr,
            "status": "ok",
        }
    ).to_parquet(folder / "index.parquet", index=False)
    manifest = {
        "features": FEATURES.model_dump(mode="json"),
        "n_mels": FEATURES.n_mels,
        "bytes": data.nbytes,
        "clips_hash": f"hash-{seed}-{lengths}",
        "complete": True,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return FeatureCache(folder)


def config(**changes) -> EmbeddingConfig:
    return EmbeddingConfig(
        **{"model": TINY, "layers": "all", "window_seconds": 1.0, "batch_size": 4, **changes}
    )


def plan_for(cache: FeatureCache, **changes) -> ep.EmbeddingPlan:
    return ep.plan_embeddings(config(**changes), FEATURES, cache, cache.clip_ids)


@pytest.fixture
def cache(tmp_path: Path) -> FeatureCache:
    return write_feature_cache(tmp_path / "features")


def build(cache: FeatureCache, root: Path, **changes) -> ec.EmbeddingCache:
    plan = plan_for(cache, **changes)
    return ec.EmbeddingCache(ec.ensure_embeddings(plan, plan.layers(), cache, root))


def test_vectors_are_the_clip_or_the_mean_of_its_evaluation_windows(
    cache: FeatureCache, tmp_path: Path
) -> None:
    built = build(cache, tmp_path / "emb")
    assert built.layers == ["1", "2", "embedding"] and built.clip_ids == cache.clip_ids
    rep = Representation(config(), FEATURES)  # the same seeded random weights
    for clip_id in ("clip02", "clip03"):  # 40 frames (one pass, whole clip) and 70 (two windows)
        frames = torch.from_numpy(cache.get(clip_id).astype(np.float32))
        n = frames.shape[0]
        starts = sorted({*range(0, n - 50 + 1, 25), n - 50}) if n > 50 else [0]  # the last ends the clip
        outs = [rep.encode(frames[s : s + min(n, 50)].unsqueeze(0), ["1", "2", "embedding"]) for s in starts]
        for layer in ("1", "2", "embedding"):
            expected = np.mean([o[layer][0] for o in outs], axis=0)
            got = built.matrix([layer], [clip_id])[0]
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert starts == [0, 20]  # 70 frames, window 50, hop 25: the second window ends the clip
    fused = built.matrix(["1", "2"], ["clip03", "clip00"])
    assert fused.shape == (2, built.dims["1"] + built.dims["2"])
    np.testing.assert_array_equal(fused[0, : built.dims["1"]], built.matrix(["1"], ["clip03"])[0])
    with pytest.raises(DataError, match="no embedding"):
        built.matrix(["1"], ["unknown"])


def test_short_clips_are_wrap_padded_to_the_model_minimum(cache: FeatureCache, tmp_path: Path) -> None:
    model = {**TINY, "pool_last": True}  # pools 2 after both blocks: 4 frames at least
    built = build(cache, tmp_path / "emb", model=model)
    rep = Representation(config(model=model), FEATURES)
    assert rep.min_frames == 4
    frames = cache.get("clip00").astype(np.float32)  # 3 frames
    wrapped = np.concatenate([frames, frames[:1]])  # 0, 1, 2, 0
    expected = rep.encode(torch.from_numpy(wrapped).unsqueeze(0), ["1", "2"])
    for layer in ("1", "2"):
        np.testing.assert_allclose(
            built.matrix([layer], ["clip00"])[0], expected[layer][0], rtol=1e-5, atol=1e-6
        )


def test_the_key_changes_with_model_weights_layers_front_end_and_data(
    cache: FeatureCache, tmp_path: Path
) -> None:
    base = plan_for(cache)
    layers = base.layers()
    same = plan_for(cache)
    assert same.folder_name(layers) == base.folder_name(layers)
    assert base.folder_name(["1"]) != base.folder_name(layers)  # layers
    assert plan_for(cache, model={**TINY, "channels": [4, 16]}).base_key != base.base_key  # model
    assert plan_for(cache, seed=1).base_key != base.base_key  # (random) weights
    assert plan_for(cache, window_seconds=2.0).base_key != base.base_key
    other_front = FEATURES.model_copy(update={"fmin": 60.0})
    assert ep.plan_embeddings(config(), other_front, cache, cache.clip_ids).base_key != base.base_key
    other_data = write_feature_cache(tmp_path / "other", seed=1)
    assert plan_for(other_data).base_key != base.base_key
    # weights files: keyed by content, not by name
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    state = {k: v for k, v in Representation(config(), FEATURES).tagger.state_dict().items()}
    torch.save(state, a)
    state["backbone.conv_block1.conv1.weight"] = state["backbone.conv_block1.conv1.weight"] + 1
    torch.save(state, b)
    key_a, key_b = (plan_for(cache, weights=str(p)).identity["weights"] for p in (a, b))
    assert key_a != key_b and len(key_a) == 64


def test_a_cache_with_more_layers_serves_fewer(
    cache: FeatureCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "emb"
    full = build(cache, root)
    plan = plan_for(cache, layers=[2])

    def refuse(*args, **kwargs):
        raise AssertionError("rebuilt although a cache with every layer exists")

    monkeypatch.setattr(ec, "frozen_representation", refuse)
    assert ec.ensure_embeddings(plan, ["2"], cache, root) == full.folder
    assert plan.folder_name(["2"]) != full.folder.name


def test_a_subset_of_clips_is_a_cache_of_its_own_with_the_same_vectors(
    cache: FeatureCache, tmp_path: Path
) -> None:
    """``train.max_clips`` runs embed only their clips: a folder of its own (the full cache is neither
    found for it nor replaced by it), holding the full cache's vectors of those clips."""
    root = tmp_path / "emb"
    full = build(cache, root)
    wanted = ["clip05", "clip01", "clip03"]
    plan = ep.plan_embeddings(config(), FEATURES, cache, cache.clip_ids, subset=wanted)
    assert plan.base_key != plan_for(cache).base_key and plan.clip_ids == ("clip01", "clip03", "clip05")
    subset = ec.EmbeddingCache(ec.ensure_embeddings(plan, plan.layers(), cache, root))
    assert subset.folder != full.folder and subset.clip_ids == ["clip01", "clip03", "clip05"]
    for layer in full.layers:
        np.testing.assert_allclose(subset.matrix([layer], wanted), full.matrix([layer], wanted), rtol=1e-5)
    assert ec.find_embeddings(root, plan_for(cache), plan.layers()) == full.folder


def interrupted_build(cache: FeatureCache, root: Path, monkeypatch: pytest.MonkeyPatch, after: int) -> None:
    """A build killed (KeyboardInterrupt) in the ``after``-th forward pass."""
    real = Representation.encode
    calls = {"n": 0}

    def encode(self, windows, layers):
        calls["n"] += 1
        if calls["n"] == after:
            raise KeyboardInterrupt
        return real(self, windows, layers)

    with monkeypatch.context() as patch:
        patch.setattr(Representation, "encode", encode)
        with pytest.raises(KeyboardInterrupt):
            build(cache, root)


def counted_build(
    cache: FeatureCache, root: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[ec.EmbeddingCache, int]:
    real = Representation.encode
    windows = {"n": 0}

    def encode(self, batch, layers):
        windows["n"] += len(batch)
        return real(self, batch, layers)

    with monkeypatch.context() as patch:
        patch.setattr(Representation, "encode", encode)
        built = build(cache, root)
    return built, windows["n"]


def same_contents(a: ec.EmbeddingCache, b: ec.EmbeddingCache) -> None:
    assert a.layers == b.layers and a.clip_ids == b.clip_ids
    for layer in a.layers:
        np.testing.assert_array_equal(np.asarray(a.layer(layer)), np.asarray(b.layer(layer)))


def test_a_killed_build_leaves_no_cache_and_resumes(
    cache: FeatureCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(ec, "CHECKPOINT_EVERY", 2)
    fresh, all_windows = counted_build(cache, tmp_path / "fresh", monkeypatch)
    root = tmp_path / "emb"
    interrupted_build(cache, root, monkeypatch, after=6)
    folder = root / plan_for(cache).folder_name(plan_for(cache).layers())
    assert not folder.exists()  # only <folder>.partial: nothing half-written is ever read as a cache
    staging = folder.with_name(folder.name + ".partial")
    progress = json.loads((staging / "progress.json").read_text())
    assert progress["n_done"] >= 2
    with caplog.at_level(logging.INFO, logger="audiotag.models.embedding_cache"):
        resumed, windows = counted_build(cache, root, monkeypatch)
    assert f"resuming after {progress['n_done']} clips" in caplog.text
    assert windows < all_windows  # the clips kept were not embedded again
    same_contents(resumed, fresh)
    assert not staging.exists()


def test_partial_files_are_cut_back_or_rebuilt(
    cache: FeatureCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(ec, "CHECKPOINT_EVERY", 2)
    fresh = build(cache, tmp_path / "fresh")
    plan = plan_for(cache)
    staging = tmp_path / "emb" / (plan.folder_name(plan.layers()) + ".partial")

    # bytes written after the last progress record (a clip cut short): cut off, the build resumes
    interrupted_build(cache, tmp_path / "emb", monkeypatch, after=6)
    with open(staging / "1.f32", "ab") as f:
        f.write(b"\x01\x02\x03")
    with caplog.at_level(logging.INFO, logger="audiotag.models.embedding_cache"):
        same_contents(build(cache, tmp_path / "emb"), fresh)
    assert "resuming after" in caplog.text

    # recorded bytes that changed (a damaged file): the record's hash no longer matches, start over
    caplog.clear()
    interrupted_build(cache, tmp_path / "emb2", monkeypatch, after=6)
    staging2 = tmp_path / "emb2" / staging.name
    data = bytearray((staging2 / "2.f32").read_bytes())
    data[0] ^= 0xFF
    (staging2 / "2.f32").write_bytes(bytes(data))
    with caplog.at_level(logging.INFO, logger="audiotag.models.embedding_cache"):
        same_contents(build(cache, tmp_path / "emb2"), fresh)
    assert "does not match its progress record; starting over" in caplog.text


def test_a_damaged_cache_is_refused(cache: FeatureCache, tmp_path: Path) -> None:
    built = build(cache, tmp_path / "emb")
    path = built.folder / "1.f32"
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(DataError, match="damaged"):
        ec.EmbeddingCache(built.folder)
    with pytest.raises(DataError, match="missing or incomplete"):
        ec.EmbeddingCache(tmp_path / "nothing")
