"""``pretrain --method cola``: the loss against an explicit loop, the pair sampling (two segments of
the same clip, the other clips as negatives), the positive's noise power, exact resume after a
crash, a timm encoder's file loading back, and a tiny pretrain -> linear probe on the demo."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from audiotag.cli.main import main
from audiotag.config.files import configs_root, load_group
from audiotag.config.schema import FeatureConfig, InputNorm
from audiotag.core.errors import ConfigError
from audiotag.core.paths import REPO_ROOT
from audiotag.data.units import CacheSet, UnitDataset
from audiotag.models.byola import AudioNTT2020
from audiotag.models.cola import ColaNetwork, ColaSettings, cola_loss
from audiotag.models.encoder_file import checkpoint_state, encoder_payload, read_encoder_info
from audiotag.models.registry import build_model, load_pretrained
from audiotag.models.representation import EmbeddingConfig
from audiotag.models.timm_cnn import TimmBackbone, TimmConfig
from audiotag.stages.embed import embedding_front_end
from audiotag.stages.pretrain import load_pretrain_config, run_pretrain_stage
from audiotag.train import pretrain_loop
from audiotag.train.pretrain_methods import ColaMethod, add_noise_power, noise_shape

COLA_YAML = configs_root() / "pretrain" / "cola.yaml"
COLA_FEATURES = FeatureConfig.model_validate(load_group("features", "cola_16k_64"))
TINY = [
    "competition.n_folds=2",
    "competition.generator.train_per_class=3",
    "competition.generator.test_per_class=1",
    "competition.generator.max_duration=2.0",
    "model=byola512",
    "cola.embedding_dim=16",
    "batch_size=8",
    "epochs=2",
    "threads=1",
]


def explicit_loss(a: np.ndarray, w: np.ndarray, p: np.ndarray) -> float:
    """Mean over anchors of -log softmax(a_i^T W p_j over j)[i], one element at a time."""
    n = len(a)
    total = 0.0
    for i in range(n):
        logits = [
            sum(a[i, k] * w[k, m] * p[j, m] for k in range(a.shape[1]) for m in range(p.shape[1]))
            for j in range(n)
        ]
        top = max(logits)
        total += -(logits[i] - top - math.log(sum(math.exp(v - top) for v in logits)))
    return total / n


def test_bilinear_loss_matches_an_explicit_loop() -> None:
    torch.manual_seed(0)
    net = ColaNetwork(AudioNTT2020(64, 512), ColaSettings(embedding_dim=6))
    a, p = torch.randn(5, 6, dtype=torch.float64), torch.randn(5, 6, dtype=torch.float64)
    w = net.weight.detach().double()
    logits = a @ (w @ p.T)
    want = explicit_loss(a.numpy(), w.numpy(), p.numpy())
    assert cola_loss(logits).item() == pytest.approx(want, rel=1e-6)
    got = net.similarities(a.float(), p.float()).double()  # the network's own similarity
    torch.testing.assert_close(got, logits, rtol=1e-5, atol=1e-5)


def test_dot_similarity_is_the_cosine_over_the_temperature() -> None:
    net = ColaNetwork(AudioNTT2020(64, 512), ColaSettings(embedding_dim=4, similarity="dot", temperature=0.5))
    assert net.weight is None and net.norm is None
    a, p = torch.randn(3, 4), torch.randn(3, 4)
    cos = np.array(
        [[np.dot(x, y) / np.linalg.norm(x) / np.linalg.norm(y) for y in p.numpy()] for x in a.numpy()]
    )
    np.testing.assert_allclose(net.similarities(a, p).numpy(), cos / 0.5, rtol=1e-5)


def test_embedding_is_the_tanh_of_the_layer_norm_and_both_inputs_share_one_batch() -> None:
    torch.manual_seed(1)
    net = ColaNetwork(AudioNTT2020(64, 512), ColaSettings(embedding_dim=8)).eval()
    x = torch.randn(6, 101, 64)
    z = net.embed(x)
    assert z.shape == (6, 8) and z.abs().max() < 1
    logits = net(x[:3], x[3:])
    torch.testing.assert_close(logits, net.similarities(z[:3], z[3:]))


class ArrayCache:
    def __init__(self, clips: dict[str, np.ndarray]) -> None:
        self.clips = clips

    def get(self, clip_id: str) -> np.ndarray:
        return self.clips[clip_id]


def test_two_segments_come_from_the_same_clip_and_the_batch_holds_the_negatives() -> None:
    # each clip's frames count up from its own offset: a segment tells its clip and its start
    clips = {f"c{k}": (1000.0 * k + np.arange(400.0))[:, None] * np.ones((1, 64)) for k in range(4)}
    data = UnitDataset(CacheSet([ArrayCache(clips)]), [f"0/c{k}" for k in range(4)], COLA_FEATURES, 1.0, 7, 2)
    batch = torch.stack([data[k] for k in range(4)])  # (clips, 2 segments, mels, frames)
    assert batch.shape == (4, 2, 64, data.unit) and data.unit == 101
    starts = batch[:, :, 0, 0].numpy()
    assert ((starts // 1000) == np.arange(4)[:, None]).all()  # both segments of row k are clip k's
    assert (starts[:, 0] != starts[:, 1]).any()  # independent crops
    method = ColaMethod(
        AudioNTT2020(64, 512), ColaSettings(noise_snr_db=None), COLA_FEATURES, torch.device("cpu")
    )
    anchors, positives = method.views(batch, InputNorm(mean=0.0, std=1.0), torch.Generator())
    assert anchors.shape == positives.shape == (4, data.unit, 64)  # (batch, frames, mels) for the encoder
    torch.testing.assert_close(anchors, batch[:, 0].transpose(1, 2))
    torch.testing.assert_close(positives, batch[:, 1].transpose(1, 2))
    assert torch.equal(data[2], data[2])  # the same crops again: a resumed epoch draws them alike


def test_positive_noise_adds_white_power_at_the_snr() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(-3, 2, size=(2, 64, 20))
    shape = noise_shape(COLA_FEATURES).double()
    shape = shape / shape.sum()  # exactly 1 in float64
    assert shape.sum().item() == pytest.approx(1) and shape[-1] > shape[0] > 0  # HTK bands widen
    out = add_noise_power(torch.tensor(x), shape, 8.0).numpy()
    added = np.exp(out) - np.exp(x)  # the noise power in each bin
    for b in range(2):
        signal = np.exp(x[b]).sum(axis=0).mean()  # total mel power per frame, mean over frames
        np.testing.assert_allclose(added[b].sum(axis=0), signal * 10 ** (-0.8), rtol=1e-9)
        np.testing.assert_allclose(added[b][:, 0] / added[b][:, 0].sum(), shape.numpy(), rtol=1e-9)
    db = add_noise_power(torch.tensor(x) * 10 / math.log(10), shape, 8.0, math.log(10) / 10).numpy()
    np.testing.assert_allclose(db, out * 10 / math.log(10), rtol=1e-9)  # a dB front-end alike


def test_config_defaults_are_the_official_flags_and_refusals_name_the_key() -> None:
    cfg = load_pretrain_config(COLA_YAML, competition="demo")
    assert cfg.method == "cola" and cfg.name == "cola_efficientnet_b0"
    assert cfg.encoder_record() == {"name": "timm", "arch": "efficientnet_b0"}
    assert (cfg.batch_size, cfg.lr, cfg.epochs, cfg.unit_seconds) == (64, 1e-3, 100, 1.0)
    assert cfg.cola == ColaSettings(embedding_dim=512, similarity="bilinear", temperature=0.2, pooling="max")
    assert (cfg.features.n_mels, cfg.features.sample_rate, cfg.features.win_length) == (64, 16000, 400)
    small = load_pretrain_config(COLA_YAML, ["model=byola512"], competition="demo")
    assert small.name == "cola512" and small.encoder_record() == {"name": "byola", "dim": 512}
    with pytest.raises(ConfigError, match=r"cola\.noise_snr_db"):
        load_pretrain_config(COLA_YAML, ["features=musicnn_16k_96"], competition="demo")
    with pytest.raises(ConfigError, match=r"cola\.similarity"):
        load_pretrain_config(COLA_YAML, ["cola.similarity=cosine"], competition="demo")


def test_a_timm_encoder_file_loads_through_model_pretrained(tmp_path: Path) -> None:
    torch.manual_seed(0)
    encoder = TimmBackbone("efficientnet_b0")
    path = tmp_path / "encoder.pt"
    record = {"name": "timm", "arch": "efficientnet_b0"}
    torch.save(
        encoder_payload(checkpoint_state(encoder), record, COLA_FEATURES, InputNorm(mean=-5, std=4), {}), path
    )
    info = read_encoder_info(path)
    assert info is not None and info.model == record
    cfg = TimmConfig(arch="efficientnet_b0", pretrained=str(path))
    tagger = build_model(cfg, 64, 3, 101)
    report = load_pretrained(tagger, cfg, COLA_FEATURES)
    assert report is not None and not report.unexpected and all(k.startswith("head.") for k in report.missing)
    x = torch.randn(2, 101, 64)
    with torch.no_grad():
        torch.testing.assert_close(tagger.backbone.eval()(x), encoder.eval()(x), rtol=0, atol=0)


def test_embed_takes_the_front_end_an_encoder_file_records(tmp_path: Path) -> None:
    path = tmp_path / "encoder.pt"
    payload = encoder_payload(
        AudioNTT2020(64, 512).state_dict(), {"name": "byola", "dim": 512}, COLA_FEATURES, InputNorm(), {}
    )
    torch.save(payload, path)
    cfg = EmbeddingConfig(weights=str(path), model="byola512")
    assert embedding_front_end(cfg) == COLA_FEATURES  # not the byola512 entry's byola_16k_64
    assert embedding_front_end(cfg, "byola_16k_64").name == "byola_16k_64"  # --features still wins
    with pytest.raises(ConfigError, match="no front-end of their own"):
        embedding_front_end(EmbeddingConfig(weights=str(tmp_path / "plain.pt"), model="byola512"))


class Crash(Exception):
    pass


@pytest.mark.slow
def test_a_crashed_run_resumes_to_the_same_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIOTAG_WORKSPACE", str(tmp_path / "competition"))
    overrides = [*TINY, "epochs=3", "checkpoint_every_steps=2", "clips=[train,test]"]
    cfg = load_pretrain_config(COLA_YAML, overrides, competition="demo")
    clean = run_pretrain_stage(cfg, out=tmp_path / "clean", workers=1)

    real = pretrain_loop.make_method
    steps = {"n": 0}

    def crashing(*args, **kwargs):
        method = real(*args, **kwargs)
        after = method.after_step

        def after_step() -> None:
            steps["n"] += 1
            if steps["n"] == 9:  # mid-epoch 2 (7 steps an epoch), after the checkpoint of step 8
                raise Crash
            after()

        method.after_step = after_step
        return method

    monkeypatch.setattr(pretrain_loop, "make_method", crashing)
    with pytest.raises(Crash):
        run_pretrain_stage(cfg, out=tmp_path / "crashed", workers=1)
    assert (tmp_path / "crashed" / "last.pt").is_file()
    monkeypatch.setattr(pretrain_loop, "make_method", real)
    resumed = run_pretrain_stage(cfg, out=tmp_path / "crashed", workers=1)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in clean.history]
    want = torch.load(clean.encoder_path, weights_only=True)["state_dict"]
    got = torch.load(resumed.encoder_path, weights_only=True)["state_dict"]
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


@pytest.mark.slow
def test_cola_pretrain_then_embed_and_linear_probe_on_the_demo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUDIOTAG_WORKSPACE", str(tmp_path / "competition"))
    comp = tmp_path / "demo.yaml"  # the tiny demo as a competition YAML: embed takes no --set
    tree = yaml.safe_load((REPO_ROOT / "configs" / "competitions" / "demo.yaml").read_text())
    tree.update(n_folds=2)
    tree["generator"].update(train_per_class=3, test_per_class=1, max_duration=2.0)
    comp.write_text(yaml.safe_dump(tree))
    args = ["pretrain", "--method", "cola", "-c", str(comp), "--clips", "train,test", "--workers", "1"]
    assert main([*args, *(x for item in TINY[4:] for x in ("--set", item))]) == 0
    demo = tmp_path / "competition" / "demo"
    encoder = demo / "pretrain" / "cola512" / "encoder.pt"
    info = read_encoder_info(encoder)
    assert info is not None and info.model == {"name": "byola", "dim": 512} and info.features == COLA_FEATURES
    assert info.pretrain["method"] == "cola" and info.pretrain["sources"] == {"demo train+test": 56}

    # embed takes the encoder's recorded front-end (no --features), as features: auto does below
    embed = ["embed", "-c", str(comp), "--model", str(encoder), "--arch", "byola512", "--workers", "1"]
    assert main([*embed, "--device", "cpu"]) == 0
    (folder,) = (p for p in (demo / "embeddings").iterdir() if p.is_dir())
    assert json.loads((folder / "manifest.json").read_text())["complete"]
    probe = tmp_path / "probe_cola.yaml"
    probe.write_text(
        f"competition: {comp}\nfeatures: auto\nmodel:\n  name: linear_probe\n"
        f"  embedding: {{weights: {encoder}, model: byola512, layers: [embedding]}}\n  c_grid: [0.1, 1.0]\n"
    )
    assert main(["train", "--config", str(probe), "--workers", "1"]) == 0
    metrics = json.loads((demo / "runs" / "probe_cola" / "metrics.json").read_text())
    assert sorted(metrics["folds"]) == ["0", "1"] and 0 < metrics["mean"] <= 1
