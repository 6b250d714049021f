"""BYOL-A pretraining parts: augmentations, mixup memory, BYOL loss and EMA, units, the encoder file.

Numerics are checked against numpy and hand computations; the end-to-end runs (resume after SIGKILL,
loading the encoder back) are in test_pretrain.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from audiotag.config.files import load_group
from audiotag.config.schema import FeatureConfig, InputNorm
from audiotag.core.errors import ConfigError
from audiotag.data.byola_augment import (
    EPS,
    ByolaAugment,
    ByolaAugmentConfig,
    MixupMemory,
    log_mixup_exp,
    normalize_batch,
    random_linear_fader,
    random_resize_crop,
)
from audiotag.data.units import CacheSet, UnitDataset, unit_frames
from audiotag.models.byol import OnlineNetwork, byol_loss, ema_update, make_target, regression_loss
from audiotag.models.byola import AudioNTT2020
from audiotag.models.encoder_file import check_recorded_frontend, encoder_payload, read_encoder_info

BYOLA_FEATURES = FeatureConfig.model_validate(load_group("features", "byola_16k_64"))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_log_mixup_exp_is_the_log_of_the_mixed_powers() -> None:
    rng = np.random.default_rng(0)
    x, z = rng.normal(size=(3, 4, 5)), rng.normal(size=(3, 4, 5))
    alpha = np.array([0.0, 0.1, 0.4])[:, None, None]
    want = np.log((1 - alpha) * np.exp(x) + alpha * np.exp(z) + np.finfo(np.float32).eps)
    got = log_mixup_exp(torch.tensor(x), torch.tensor(z), torch.tensor(alpha))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)


def test_memory_mixes_nothing_until_it_holds_units_then_keeps_the_newest() -> None:
    memory = MixupMemory(size=3)
    x = torch.randn(2, 4, 6)
    assert torch.equal(memory.mix(x, 0.4, gen(), log_exp=True), x)  # empty: the official first sample
    batches = [torch.full((2, 4, 6), float(v)) for v in range(4)]
    for b in batches:
        memory.push(b)
    assert memory.count == 3
    held = sorted(float(u[0, 0]) for u in memory.bank)  # 8 units pushed, the newest 3 kept
    assert held == [2.0, 3.0, 3.0]


def test_mixup_draws_alpha_below_the_ratio_and_a_remembered_background() -> None:
    memory = MixupMemory(size=8)
    background = torch.zeros(8, 2, 3)
    memory.push(background)
    x = torch.full((64, 2, 3), 2.0)
    mixed = memory.mix(x, 0.4, gen(1), log_exp=True)
    # log((1 - a) e^2 + a e^0) for a in [0, 0.4): between the values at a = 0.4 and a = 0
    low = np.log(0.6 * np.e**2 + 0.4 + float(EPS))
    assert float(mixed.min()) >= low - 1e-6 and float(mixed.max()) <= 2.0 + 1e-6
    assert float(mixed.std()) > 0  # every unit draws its own alpha
    linear = memory.mix(x, 0.4, gen(1), log_exp=False)
    alpha = (2.0 - linear[:, 0, 0]) / 2.0  # (1 - a) * 2 + a * 0
    assert float(alpha.min()) >= 0 and float(alpha.max()) < 0.4


def test_memory_state_round_trip_continues_the_same_draws() -> None:
    memory = MixupMemory(size=5)
    memory.push(torch.randn(7, 2, 3))
    restored = MixupMemory(size=5)
    restored.load_state_dict(memory.state_dict())
    x = torch.randn(4, 2, 3)
    assert torch.equal(memory.mix(x, 0.3, gen(5), True), restored.mix(x, 0.3, gen(5), True))
    memory.push(x)
    restored.push(x)
    assert torch.equal(memory.bank, restored.bank) and memory.position == restored.position
    with pytest.raises(ValueError, match="5 units saved"):
        MixupMemory(size=4).load_state_dict(memory.state_dict())


def test_rrc_of_the_whole_unit_is_the_unit() -> None:
    x = torch.randn(3, 8, 12, dtype=torch.float64)
    out = random_resize_crop(x, gen(), (1.0, 1.0), (1.0, 1.0), (1.0, 1.0))
    torch.testing.assert_close(out, x, rtol=0, atol=1e-12)


def keys_cubic(t: float, a: float = -0.75) -> np.ndarray:
    """Weights of the 4 neighbours (offsets -1, 0, 1, 2) at fraction ``t`` (Keys, PyTorch's a = -0.75)."""

    def w(d: float) -> float:
        d = abs(d)
        if d <= 1:
            return (a + 2) * d**3 - (a + 3) * d**2 + 1
        return a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a if d < 2 else 0.0

    return np.array([w(t + 1), w(t), w(1 - t), w(2 - t)])


def bicubic_resize_1d(crop: np.ndarray, size: int) -> np.ndarray:
    """Hand bicubic resampling of ``crop`` to ``size`` points, align_corners=True, edges clamped."""
    n = len(crop)
    out = np.empty(size)
    for b in range(size):
        s = b * (n - 1) / (size - 1)
        i = min(int(np.floor(s)), n - 1)
        idx = np.clip(np.arange(i - 1, i + 3), 0, n - 1)
        out[b] = keys_cubic(s - i) @ crop[idx]
    return out


def test_rrc_matches_a_hand_bicubic_resize_of_the_drawn_crop() -> None:
    """A ramp over time reveals each crop (output ends sample the crop's first and last frames
    exactly); the whole output must equal a hand bicubic resize of that crop, within the ranges."""
    frames, mels = 40, 8
    rng = np.random.default_rng(0)
    signal = np.cumsum(rng.uniform(0.5, 1.5, frames))  # increasing: a value names its frame
    x = torch.tensor(signal).repeat(3, mels, 1)
    out = random_resize_crop(x, gen(3), (1.0, 1.0), (1.0, 1.0), (0.6, 0.9))
    for unit in out.numpy():
        first, last = (int(np.flatnonzero(np.isclose(signal, v))[0]) for v in (unit[0, 0], unit[0, -1]))
        width = last - first + 1
        assert int(0.6 * frames) <= width <= int(0.9 * frames)
        np.testing.assert_allclose(unit[0], bicubic_resize_1d(signal[first : last + 1], frames), atol=1e-9)
        np.testing.assert_allclose(unit[1:], np.repeat(unit[:1], mels - 1, axis=0))  # mels untouched


def test_rrc_canvas_pads_with_zeros_and_keeps_shapes() -> None:
    x = torch.full((16, 8, 10), 5.0)
    out = random_resize_crop(x, gen(2), (1.0, 1.5), (1.0, 1.0), (1.5, 1.5))  # the whole canvas: 15 frames
    assert out.shape == x.shape
    # canvas columns 0-1 and 12-14 are zeros; output column 0 samples canvas column 0 exactly
    assert torch.all(out[:, :, 0] == 0) and torch.all(out[:, :, -1] == 0)
    torch.testing.assert_close(out[:, :, 4:6], torch.full((16, 8, 2), 5.0), atol=0.2, rtol=0)


def test_linear_fader_adds_a_ramp_within_the_gain() -> None:
    x = torch.randn(32, 4, 10, dtype=torch.float64)
    out = random_linear_fader(x, gen(4), gain=1.0)
    diff = (out - x).numpy()
    assert np.allclose(diff, diff[:, :1, :])  # the same for every mel
    heads, tails = diff[:, 0, 0], diff[:, 0, -1]
    want = heads[:, None] + (tails - heads)[:, None] * np.linspace(0, 1, 10)[None, :]
    np.testing.assert_allclose(diff[:, 0, :], want, atol=1e-12)
    assert np.all(np.abs(heads) <= 1) and np.all(np.abs(tails) <= 1) and heads.std() > 0.2
    assert torch.equal(random_linear_fader(x, gen(4), gain=0.0), x)


def test_post_normalisation_uses_one_mean_and_unbiased_std() -> None:
    x = torch.randn(6, 4, 5, dtype=torch.float64) * 3 + 2
    got = normalize_batch(x).numpy()
    flat = x.numpy().ravel()
    np.testing.assert_allclose(got, (x.numpy() - flat.mean()) / flat.std(ddof=1), atol=1e-12)


def test_views_differ_are_post_normalised_and_remember_the_batch() -> None:
    augment = ByolaAugment(ByolaAugmentConfig(memory_units=4))
    x = torch.randn(3, 8, 12)
    first, second = augment.views(x, gen(0))
    both = torch.cat([first, second])
    assert abs(float(both.mean())) < 1e-5 and abs(float(both.std()) - 1) < 1e-5
    assert not torch.allclose(first, second)
    assert augment.memory.count == 3 and torch.equal(augment.memory.bank[:3], x)


def test_augment_config_refuses_a_canvas_smaller_than_the_unit() -> None:
    with pytest.raises(ValueError, match="virtual_crop_scale"):
        ByolaAugmentConfig(virtual_crop_scale=(0.9, 1.5))


def test_regression_loss_is_two_minus_two_cosines() -> None:
    rng = np.random.default_rng(1)
    p, z = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))
    cos = (p * z).sum(1) / np.linalg.norm(p, axis=1) / np.linalg.norm(z, axis=1)
    np.testing.assert_allclose(regression_loss(torch.tensor(p), torch.tensor(z)).numpy(), 2 - 2 * cos)
    # view 1's prediction against view 2's projection and back: p1 = p vs z2 = z, p2 = z vs z1 = p
    total = byol_loss((torch.tensor(p), torch.tensor(z)), (torch.tensor(p), torch.tensor(z)))
    assert float(total) == pytest.approx(float(np.mean(2 * (2 - 2 * cos))))


def test_online_network_shapes_and_target_ema() -> None:
    torch.manual_seed(0)
    online = OnlineNetwork(AudioNTT2020(64, 512), projection_dim=32, projection_hidden=48)
    assert [m.out_features for m in online.branch.projector if hasattr(m, "out_features")] == [48, 32]
    target = make_target(online)
    assert all(not p.requires_grad for p in target.parameters())
    p1, p2 = online(torch.randn(4, 96, 64), torch.randn(4, 96, 64))
    assert p1.shape == p2.shape == (4, 32)
    before = [t.clone() for t in target.parameters()]
    with torch.no_grad():
        for param in online.parameters():
            param.add_(1.0)
    ema_update(target, online.branch, decay=0.99)
    for old, new, cur in zip(before, target.parameters(), online.branch.parameters(), strict=True):
        torch.testing.assert_close(new, 0.99 * old + 0.01 * cur)


class ArrayCache:
    def __init__(self, clips: dict[str, np.ndarray]) -> None:
        self.clips = clips

    def get(self, clip_id: str) -> np.ndarray:
        return self.clips[clip_id]


def test_units_crop_long_clips_pad_short_ones_and_repeat_per_epoch() -> None:
    frames, samples = unit_frames(BYOLA_FEATURES, 0.95)
    assert (frames, samples) == (96, 15200)  # BYOL-A's 64 x 96 input
    rng = np.random.default_rng(0)
    long, short = rng.normal(-5, 1, size=(300, 64)), rng.normal(-5, 1, size=(40, 64))
    caches = CacheSet([ArrayCache({"a": long}), ArrayCache({"b": short})])
    assert np.array_equal(caches.get("0/a"), long)
    data = UnitDataset(caches, ["0/a", "1/b"], BYOLA_FEATURES, 0.95, seed=3)
    unit = data[0].numpy().T  # (frames, mels)
    start = next(s for s in range(300 - 95) if np.allclose(long[s : s + 96], unit, atol=1e-5))
    assert 0 <= start <= 204
    padded = data[1].numpy().T
    silence = np.log(BYOLA_FEATURES.log_offset)
    assert padded.shape == (96, 64) and np.allclose(padded[:5], silence, atol=1e-3)  # zero-padded edges
    assert torch.equal(data[0], data[0])
    data.set_epoch(1)
    assert not torch.equal(data[0], UnitDataset(caches, ["0/a"], BYOLA_FEATURES, 0.95, seed=3)[0])


def test_encoder_file_records_and_refuses_another_front_end(tmp_path: Path) -> None:
    encoder = AudioNTT2020(64, 512)
    path = tmp_path / "encoder.pt"
    payload = encoder_payload(
        encoder.state_dict(), {"name": "byola", "dim": 512}, BYOLA_FEATURES, InputNorm(mean=-4, std=5), {}
    )
    torch.save(payload, path)
    info = read_encoder_info(path)
    assert info is not None and info.features == BYOLA_FEATURES and info.input_norm.mean == -4
    assert check_recorded_frontend(path, BYOLA_FEATURES) is not None
    other = BYOLA_FEATURES.model_copy(update={"fmax": 8000.0})
    with pytest.raises(ConfigError, match=re.escape("fmax: 8000.0 (encoder: 7800.0)")):
        check_recorded_frontend(path, other)
    sinc = BYOLA_FEATURES.model_copy(update={"resampler": "sinc"})  # within 0.1 dB: accepted
    assert check_recorded_frontend(path, sinc) is not None
    with pytest.raises(ConfigError, match=r"\(fmax: 8000\.0 \(encoder: 7800\.0\)\)"):  # only fmax named
        check_recorded_frontend(path, other.model_copy(update={"resampler": "sinc"}))
    plain = tmp_path / "plain.pt"
    torch.save(encoder.state_dict(), plain)
    assert read_encoder_info(plain) is None and check_recorded_frontend(plain, other) is None


def test_pretrain_config_defaults_are_the_official_recipe_and_errors_name_the_key() -> None:
    from audiotag.config.files import configs_root
    from audiotag.stages.pretrain import load_pretrain_config

    path = configs_root() / "pretrain" / "byola.yaml"
    cfg = load_pretrain_config(path, competition="demo")
    assert cfg.name == "byola2048" and cfg.features == BYOLA_FEATURES  # name: <method><dim>
    official = {"projection_dim": 256, "projection_hidden": 4096, "ema_decay": 0.99, "batch_size": 256}
    assert {k: getattr(cfg, k) for k in official} == official and (cfg.lr, cfg.epochs) == (3e-4, 100)
    assert (cfg.augment.mixup_ratio, cfg.augment.fader_gain, cfg.unit_seconds) == (0.2, 1.0, 0.95)
    with pytest.raises(ConfigError, match="nothing to pretrain on"):
        load_pretrain_config(path)
    with pytest.raises(ConfigError, match=r"features.cache: pretraining reads log-mel"):
        load_pretrain_config(path, ["features.cache=wave"], competition="demo")
    with pytest.raises(ConfigError, match=r"model.dim.*--set model.dim=500"):
        load_pretrain_config(path, ["model.dim=500"], competition="demo")
