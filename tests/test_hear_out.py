"""audiotag models as a HEAR module (``audiotag.hear``, ``models/hear_out.py``), on tiny models whose
weights the tests write: an encoder file as ``pretrain`` writes it (BYOL-A, 512-d) and a fine-tuned
run's fold (a two-block CNN). ``validate_hear`` checks hearvalidator's rules and batch independence
through the In side's loader, so a module that passes can also be read back as ``hear:audiotag.hear``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import audiotag.hear as hear
from audiotag.config.files import load_group, validate
from audiotag.config.schema import FeatureConfig, InputNorm
from audiotag.core.errors import ConfigError
from audiotag.models.encoder_file import encoder_payload
from audiotag.models.heads import pool_time
from audiotag.models.hear_in import HearSpec, load_hear, validate_hear
from audiotag.models.hear_out import hear_rate
from audiotag.models.registry import build_model, family_of

RUN_CONFIG = """name: tiny
competition: demo
features: logmel_16k_64
model: {name: cnn, channels: [4, 8], embedding_dim: null, pool_last: true, global_pool: mean+max}
"""


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 512-d BYOL-A encoder file in pretrain's format (seeded weights, recorded normalisation)."""
    features = validate(FeatureConfig, load_group("features", "byola_16k_64"), "byola_16k_64")
    model = {"name": "byola", "dim": 512}
    torch.manual_seed(0)
    tagger = build_model(
        validate(family_of("byola").config, model, "byola"), 64, 1, 96, InputNorm(), features
    )
    path = tmp_path_factory.mktemp("encoder") / "encoder.pt"
    torch.save(
        encoder_payload(tagger.backbone.state_dict(), model, features, InputNorm(mean=-6.0, std=3.0), {}),
        path,
    )
    return path


def write_run(run: Path, features: str = "logmel_16k_64") -> Path:
    """A fine-tuned run's folder: config.yaml, fold0/best.pt and the done.json that records it."""
    from audiotag.train.checkpoint import file_record
    from audiotag.train.experiment import load_experiment
    from audiotag.train.loop import crop_frames

    (run / "fold0").mkdir(parents=True)
    (run / "config.yaml").write_text(RUN_CONFIG.replace("logmel_16k_64", features))
    cfg = load_experiment(run / "config.yaml")
    torch.manual_seed(1)
    tagger = build_model(cfg.model, cfg.features.n_mels, 5, crop_frames(cfg), None, cfg.features)
    torch.save({"model": tagger.state_dict()}, run / "fold0" / "best.pt")
    done = {"input_norm": {"mean": 0.0, "std": 1.0}, "best_pt": file_record(run / "fold0" / "best.pt")}
    (run / "fold0" / "done.json").write_text(json.dumps(done))
    return run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_run(tmp_path_factory.mktemp("runs") / "tiny")


def noise(seconds: float, n: int = 3, rate: int = 16000) -> torch.Tensor:
    return torch.rand(n, int(seconds * rate), generator=torch.Generator().manual_seed(3)) * 2 - 1


def test_an_encoder_file_passes_the_hear_rules(encoder_file: Path) -> None:
    report = validate_hear(HearSpec("audiotag.hear", str(encoder_file)))
    assert report["sample_rate"] == 16000
    assert report["scene_embedding_size"] == report["timestamp_embedding_size"] == 512
    # BYOL-A's layer 5: one frame per 8 log-mel frames of 10 ms
    assert report["timestamp_interval_ms"] == pytest.approx(80.0)
    load_hear.cache_clear()


def test_scene_embeddings_are_the_pooled_timestamp_frames_and_embed_s_vectors(encoder_file: Path) -> None:
    model = hear.load_model(str(encoder_file))
    assert model.layers == ["5"] and model.tagger.norm_mean == -6.0
    audio = noise(1.5)
    emb, stamps = hear.get_timestamp_embeddings(audio, model)
    scene = hear.get_scene_embeddings(audio, model)
    assert emb.dtype == scene.dtype == torch.float32 and emb.shape[:2] == stamps.shape
    n_frames = model.logmel(audio).shape[1]
    assert emb.shape[1] == n_frames // 8
    np.testing.assert_allclose(stamps[0].numpy(), (np.arange(emb.shape[1]) * 8 + 3.5) * 10.0, rtol=1e-6)
    # one window (1.5 s < 10 s): embed's vector is the max + mean over time of the same frames
    torch.testing.assert_close(scene, pool_time(emb, "mean+max"), rtol=1e-4, atol=1e-5)
    logmel = model.logmel(audio)
    direct = model.rep.encode(logmel, ["5"])["5"]
    np.testing.assert_allclose(scene.numpy(), direct, rtol=1e-5, atol=1e-6)


def test_long_sounds_average_embed_s_windows(encoder_file: Path) -> None:
    model = hear.load_model(str(encoder_file))
    model.window, model.hop = 100, 50  # 1 s windows every 0.5 s
    audio = noise(1.6, n=2)  # 161 frames: windows at 0, 50 and 61 (the last one ends the sound)
    logmel = model.logmel(audio)
    windows = [model.rep.encode(logmel[:, s : s + 100], ["5"])["5"] for s in (0, 50, 61)]
    np.testing.assert_allclose(
        hear.get_scene_embeddings(audio, model).numpy(), np.mean(windows, axis=0), rtol=1e-5
    )


def test_a_fine_tuned_run_s_fold_is_a_hear_module(run_dir: Path) -> None:
    report = validate_hear(HearSpec("audiotag.hear", str(run_dir)))  # the run folder: its first fold
    load_hear.cache_clear()
    assert report["scene_embedding_size"] == report["timestamp_embedding_size"] == 8
    model = hear.load_model(str(run_dir / "fold0" / "best.pt"))
    saved = torch.load(run_dir / "fold0" / "best.pt")["model"]
    for key, value in model.tagger.state_dict().items():
        torch.testing.assert_close(value, saved[key])
    assert model.layers == ["embedding"]  # two blocks: the model's own embedding, its backbone frames
    audio = noise(2.0)
    emb, stamps = hear.get_timestamp_embeddings(audio, model)
    stride = model.rep.min_frames  # 2 x 2 time pooling: 4 frames of 20 ms
    assert stride == 4
    np.testing.assert_allclose(stamps[1].numpy(), (np.arange(emb.shape[1]) * 4 + 1.5) * 20.0, rtol=1e-6)
    torch.testing.assert_close(hear.get_scene_embeddings(audio, model), pool_time(emb, "mean+max"))
    # a sound shorter than the stride is wrap-padded: one frame, at the middle of the sound
    emb, stamps = hear.get_timestamp_embeddings(noise(0.05), model)
    assert emb.shape[1] == 1 and stamps[0, 0] == pytest.approx(25.0)


def test_what_cannot_be_exposed_is_refused(tmp_path: Path, run_dir: Path, encoder_file: Path) -> None:
    with pytest.raises(ConfigError, match="name a model"):
        hear.load_model()
    with pytest.raises(ConfigError, match="unknown weights 'nope'"):
        hear.load_model("nope")
    with pytest.raises(ConfigError, match="input_norm: dataset"):
        hear.load_model("byola512")
    other = tmp_path / "other.pt"
    torch.save({"w": torch.zeros(1)}, other)
    with pytest.raises(ConfigError, match="not an encoder written by pretrain"):
        hear.load_model(str(other))
    with pytest.raises(ConfigError, match="not a run folder with a finished fold"):
        hear.load_model(str(tmp_path))


def test_a_model_rate_hear_does_not_take_is_declared_as_the_next_one(tmp_path: Path) -> None:
    assert [hear_rate(r) for r in (16000, 32000, 44100, 8000)] == [16000, 44100, 44100, 16000]
    run = write_run(tmp_path / "tiny32k", "panns_32k")
    report = validate_hear(HearSpec("audiotag.hear", str(run)))
    load_hear.cache_clear()
    assert report["sample_rate"] == 44100
    model = hear.load_model(str(run))
    one_second = noise(1.0, n=1, rate=44100)
    assert model.logmel(one_second).shape[1] == 101  # resampled to 32 kHz: 100 frames of 10 ms, centred


def test_python_m_audiotag_hear_checks_a_model(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert hear.main([str(run_dir)]) == 0
    assert json.loads(capsys.readouterr().out)["sample_rate"] == 16000
    assert hear.main(["nope"]) == 1
    load_hear.cache_clear()
