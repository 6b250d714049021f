"""features.cache: wave — the cache holds waveforms and the model computes the log-mel on its device."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from audiotag.cli.main import main
from audiotag.config.schema import FeatureConfig
from audiotag.data.cache_reader import FeatureCache
from audiotag.data.features import compute_logmel
from audiotag.models.cnn14 import CnnConfig
from audiotag.models.registry import build_model
from tests.conftest import tiny_args


@torch.no_grad()
def test_tagger_on_waves_equals_tagger_on_their_logmel() -> None:
    torch.manual_seed(0)
    features = FeatureConfig(cache="wave")
    on_wave = build_model(CnnConfig(channels=[4, 8], embedding_dim=8), 64, 5, 100, features=features).eval()
    on_logmel = build_model(CnnConfig(channels=[4, 8], embedding_dim=8), 64, 5, 100).eval()
    on_logmel.load_state_dict(on_wave.state_dict())  # the front-end adds no saved tensors
    waves = torch.randn(3, 32000) * 0.1
    logmel = torch.from_numpy(np.stack([compute_logmel(w.numpy(), features) for w in waves]))
    torch.testing.assert_close(on_wave(waves[..., None]), on_logmel(logmel), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(on_wave(logmel), on_logmel(logmel))  # log-mel input passes through


@pytest.mark.slow
def test_training_from_a_wave_cache(workspace: Path) -> None:
    extra = ["features.cache=wave", "train.folds=[0]"]
    assert main(tiny_args("prepare", "train", extra=extra)) == 0
    comp = workspace / "competition" / "demo"
    cache_dir = next(d for d in (comp / "cache").iterdir() if (d / "manifest.json").is_file())
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    assert manifest["n_mels"] == 1 and manifest["features"]["cache"] == "wave"
    cache = FeatureCache(cache_dir)
    meta = pd.read_parquet(comp / "meta.parquet")
    row = meta.iloc[0]
    assert cache.get(row["clip_id"]).shape == (round(row["duration"] * 16000), 1)
    done = json.loads((comp / "runs" / "cnn_small" / "fold0" / "done.json").read_text())
    assert done["epochs_run"] == 2 and np.isfinite(done["score"])
