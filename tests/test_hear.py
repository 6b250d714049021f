"""The HEAR bridge both ways: a HEAR module as a frozen representation (models/hear_in.py), and
audiotag models as a HEAR module (audiotag/hear/ over models/hear_out.py).

The HEAR modules are written by the tests into tmp_path (a tiny seeded projection of frame
statistics, and broken variants of it); no download. hearvalidator itself imports TensorFlow, so
``validate_hear`` checks its rules (and batch independence) here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import audiotag.models.embedding_cache as ec
import audiotag.models.embedding_plan as ep
from audiotag.config.schema import FeatureConfig
from audiotag.core.errors import ConfigError
from audiotag.data.cache_reader import FeatureCache
from audiotag.models import hear_in
from audiotag.models.hear_in import HearSpec, hear_features, hear_spec, load_hear, validate_hear
from audiotag.models.representation import EmbeddingConfig

TINY_HEAR = """
import torch

HOP = 400  # 25 ms at 16 kHz


class Model(torch.nn.Module):
    sample_rate = 16000
    scene_embedding_size = 6
    timestamp_embedding_size = 3

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 3)


def load_model(model_file_path=""):
    torch.manual_seed(0)
    model = Model()
    if model_file_path:
        model.load_state_dict(torch.load(model_file_path))
    return model


def get_timestamp_embeddings(audio, model):
    n = audio.shape[1] // HOP
    x = audio[:, : n * HOP].reshape(audio.shape[0], n, HOP)
    stats = torch.stack([x.mean(-1), x.std(-1), x.abs().amax(-1), (x * x).mean(-1)], dim=-1)
    stamps = (torch.arange(n, dtype=torch.float32) + 0.5) * 25.0
    return model.proj(stats), stamps.expand(audio.shape[0], n)


def get_scene_embeddings(audio, model):
    emb, _ = get_timestamp_embeddings(audio, model)
    return torch.cat([emb.mean(1), emb.amax(1)], dim=1)
"""

# (name, what to replace in TINY_HEAR, what the error says)
BROKEN = [
    ("rate_str", ("rate = 16000", 'rate = "16000"'), "sample_rate must be a positive int"),
    ("no_size", ("    scene_embedding_size = 6\n", ""), "no attribute scene_embedding_size"),
    ("no_function", ("def get_scene_embeddings(", "def _scene("), "no function get_scene_embeddings"),
    ("wrong_size", ("scene_embedding_size = 6", "scene_embedding_size = 7"), r"\(2, 6\), expected \(2 x 7\)"),
    ("float64", ("], dim=1)", "], dim=1).double()"), "must be float32"),
    ("nan", ("return model.proj(stats)", "return model.proj(stats) * float('nan')"), "NaN or infinite"),
    ("seconds", ("* 25.0", "* 0.025"), "in seconds"),
    ("irregular", ("* 25.0", "** 1.5 * 25.0"), "regular intervals"),
    (
        "flat_stamps",
        ("stamps.expand(audio.shape[0], n)", "stamps"),
        r"stamps has shape \(80,\), expected \(2 x 80\)",
    ),
    (
        "raises",
        ("    torch.manual_seed(0)\n", "    raise RuntimeError('no weights')\n"),
        "load_model.. failed",
    ),
]


@pytest.fixture
def hear_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder on sys.path with tiny_hear.py and its broken variants; modules and loads forgotten after."""
    folder = tmp_path / "hearmods"
    folder.mkdir()
    (folder / "tiny_hear.py").write_text(TINY_HEAR)
    for name, (old, new), _ in BROKEN:
        assert old in TINY_HEAR, name
        (folder / f"bad_{name}.py").write_text(TINY_HEAR.replace(old, new))
    monkeypatch.syspath_prepend(str(folder))
    load_hear.cache_clear()
    yield folder
    load_hear.cache_clear()
    for name in [m for m in sys.modules if m == "tiny_hear" or m.startswith("bad_")]:
        del sys.modules[name]


def write_wave_cache(folder: Path, waves: list[np.ndarray], features: FeatureConfig) -> FeatureCache:
    """A complete wave cache in the reader's format: (samples, 1) float16 rows per clip."""
    folder.mkdir(parents=True)
    np.concatenate(waves).astype("<f2").tofile(folder / "frames.f16")
    lengths = np.array([len(w) for w in waves], dtype=np.int64)
    pd.DataFrame(
        {
            "clip_id": [f"clip{i}" for i in range(len(waves))],
            "offset": np.cumsum(lengths) - lengths,
            "n_frames": lengths,
            "status": "ok",
        }
    ).to_parquet(folder / "index.parquet", index=False)
    manifest = {
        "features": features.model_dump(mode="json"),
        "n_mels": 1,
        "bytes": int(lengths.sum()) * 2,
        "clips_hash": "h",
        "complete": True,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return FeatureCache(folder)


# ----------------------------------------------------------------------------- In: a HEAR module


def test_a_hear_module_is_a_frozen_representation_for_the_embedding_cache(
    hear_dir: Path, tmp_path: Path
) -> None:
    spec = hear_spec("hear:tiny_hear")
    assert spec == HearSpec("tiny_hear")
    features = hear_features(spec)
    assert (features.cache, features.sample_rate) == ("wave", 16000)
    rng = np.random.default_rng(0)
    waves = [rng.uniform(-0.5, 0.5, n).astype(np.float32) for n in (8000, 24000, 40000)]  # 0.5, 1.5, 2.5 s
    cache = write_wave_cache(tmp_path / "waves", waves, features)
    cfg = EmbeddingConfig(weights="hear:tiny_hear", layers="all", window_seconds=2.0, hop_fraction=0.5)
    plan = ep.plan_embeddings(cfg, features, cache, cache.clip_ids)
    assert plan.layers() == ["1", "embedding"] and plan.label == "hear-tiny_hear"
    assert ep.plan_embeddings(cfg.model_copy(update={"layers": "default"}), features, cache, []).layers() == [
        "embedding"
    ]
    built = ec.EmbeddingCache(ec.ensure_embeddings(plan, plan.layers(), cache, tmp_path / "emb"))
    assert built.dims == {"1": 3, "embedding": 6}
    module = sys.modules["tiny_hear"]
    model = module.load_model()

    def expected(wave: np.ndarray) -> dict[str, np.ndarray]:
        audio = torch.from_numpy(wave.astype(np.float16).astype(np.float32))[None]
        with torch.no_grad():
            return {
                "1": module.get_timestamp_embeddings(audio, model)[0].mean(1)[0].numpy(),
                "embedding": module.get_scene_embeddings(audio, model)[0].numpy(),
            }

    short = np.concatenate([waves[0], waves[0]])  # 0.5 s wrap-padded to the 1 s minimum
    for layer in ("1", "embedding"):
        np.testing.assert_allclose(
            built.matrix([layer], ["clip0"])[0], expected(short)[layer], rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(
            built.matrix([layer], ["clip1"])[0], expected(waves[1])[layer], rtol=1e-5, atol=1e-6
        )
        # 2.5 s in 2 s windows every 1 s: starts 0 and 0.5 s (the last one ends the clip), averaged
        two = [expected(waves[2][s : s + 32000])[layer] for s in (0, 8000)]
        np.testing.assert_allclose(
            built.matrix([layer], ["clip2"])[0], np.mean(two, axis=0), rtol=1e-5, atol=1e-6
        )
    assert plan.identity["model"]["hear"] == "tiny_hear"
    assert plan.identity["weights"] == "hear:tiny_hear"


def test_a_model_file_enters_the_identity(hear_dir: Path, tmp_path: Path) -> None:
    weights = tmp_path / "w.pt"
    torch.save({"proj.weight": torch.ones(3, 4), "proj.bias": torch.zeros(3)}, weights)
    spec = hear_spec(f"hear:tiny_hear:{weights}")
    assert spec == HearSpec("tiny_hear", str(weights))
    loaded = load_hear(spec)
    assert torch.equal(loaded.model.proj.weight, torch.ones(3, 4))
    identity = loaded.identity()
    assert identity["model_file_sha256"] and identity["model_file"] == str(weights)


def test_the_front_end_must_be_a_wave_cache_at_the_module_rate(hear_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"takes waves at 16000 Hz.*features: auto"):
        hear_in.check_hear_features(HearSpec("tiny_hear"), FeatureConfig(sample_rate=16000))
    with pytest.raises(ConfigError, match="not offered by a HEAR module"):
        hear_in.hear_layers([3])
    with pytest.raises(ConfigError, match="not a module name"):
        hear_spec("hear:not a module")


def test_auto_features_and_embed_take_the_module_rate(hear_dir: Path) -> None:
    from audiotag.stages.embed import embedding_front_end
    from audiotag.train.experiment import auto_features

    model = {"name": "linear_probe", "embedding": {"weights": "hear:tiny_hear"}}
    assert auto_features(model)["cache"] == "wave" and auto_features(model)["sample_rate"] == 16000
    assert embedding_front_end(EmbeddingConfig(weights="hear:tiny_hear")).sample_rate == 16000


@pytest.mark.parametrize(("name", "message"), [(name, message) for name, _, message in BROKEN])
def test_a_bad_module_is_named_with_the_rule_it_breaks(hear_dir: Path, name: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:  # loading, or the first call (layer_dims)
        hear_in.HearRepresentation(HearSpec(f"bad_{name}")).layer_dims(["1", "embedding"])
    assert f"bad_{name}" in str(caught.value)


def test_a_module_that_is_not_installed_says_so(hear_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot import module 'no_such_hear'.*install"):
        load_hear(HearSpec("no_such_hear"))


def test_the_validator_passes_the_tiny_module_and_catches_batch_dependence(hear_dir: Path) -> None:
    report = validate_hear(HearSpec("tiny_hear"))
    assert report["timestamps_per_2s"] == 80 and report["timestamp_interval_ms"] == pytest.approx(25.0)
    (hear_dir / "batchy.py").write_text(
        TINY_HEAR.replace("return model.proj(stats)", "return model.proj(stats - stats.mean(0))")
    )
    with pytest.raises(ConfigError, match="depend on the other sounds"):
        validate_hear(HearSpec("batchy"))
    del sys.modules["batchy"]
