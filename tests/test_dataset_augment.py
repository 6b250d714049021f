from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
import torch

from audiotag.config.files import load_group, validate
from audiotag.config.schema import FeatureConfig, SpecAugmentConfig
from audiotag.data.augment import mixup, spec_augment
from audiotag.data.dataset import CropDataset, fit_length, iter_window_batches, silence_value, window_starts
from audiotag.data.features import compute_logmel
from audiotag.train.epoch import EpochLoader
from audiotag.train.schedule import warmup_cosine


class DictCache:
    """The two methods of FeatureCache that the datasets use."""

    def __init__(self, clips: dict[str, np.ndarray]) -> None:
        self.clips = clips

    def get(self, clip_id: str) -> np.ndarray:
        return self.clips[clip_id]


def frames(n: int, mels: int = 4) -> np.ndarray:
    return np.arange(n * mels, dtype=np.float16).reshape(n, mels)


def test_fit_length_crop_wrap_and_constant() -> None:
    x = frames(5)
    np.testing.assert_array_equal(fit_length(x, 3, 2, "wrap", -100), x[2:5])
    wrapped = fit_length(x, 12, 0, "wrap", -100)
    np.testing.assert_array_equal(wrapped[5:10], x)
    np.testing.assert_array_equal(wrapped[10:], x[:2])
    padded = fit_length(x, 8, 0, "constant", -100, pad_offset=2)
    assert (padded[:2] == -100).all() and (padded[7:] == -100).all()
    np.testing.assert_array_equal(padded[2:7], x)


def test_silence_value() -> None:
    assert silence_value(FeatureConfig(scale="db", amin=1e-10)) == pytest.approx(-100.0)
    assert silence_value(FeatureConfig(scale="log", log_offset=1e-6)) == pytest.approx(np.log(1e-6))
    assert silence_value(FeatureConfig(scale="log10_1p")) == 0.0
    assert silence_value(FeatureConfig(kind="kaldi_fbank", n_mels=23)) == 0.0  # official AST zero-pads
    assert silence_value(FeatureConfig(cache="wave")) == 0.0


@pytest.mark.parametrize("preset", ["logmel_16k_64", "panns_32k", "byola_16k_64", "aisfx_44k_96"])
def test_silence_value_is_what_the_front_end_gives_for_silence(preset: str) -> None:
    """Padding with the silence value equals computing the front-end on zeros (not on another scale)."""
    cfg = validate(FeatureConfig, load_group("features", preset), preset)
    zeros = compute_logmel(np.zeros(cfg.sample_rate // 2, np.float32), cfg)
    np.testing.assert_allclose(zeros, silence_value(cfg), atol=1e-5)


@pytest.mark.parametrize("n", [1, 7, 10, 11, 33])
def test_window_starts_cover_clip(n: int) -> None:
    starts = window_starts(n, window=10, hop=5)
    covered = np.zeros(max(n, 10), bool)
    for s in starts:
        covered[s : s + 10] = True
        assert s + 10 <= max(n, 10)
    assert covered[:n].all()


def test_window_batches_keep_owner_order() -> None:
    cache = DictCache({"a": frames(25), "b": frames(3), "c": frames(10)})
    owners, windows = zip(*iter_window_batches(cache, ["a", "b", "c"], 10, 5, 2, "wrap", -100), strict=True)
    owners = np.concatenate(owners)
    assert owners.tolist() == [0, 0, 0, 0, 1, 2]
    assert all(w.shape[1:] == (10, 4) for w in windows)


def test_crop_dataset_is_reproducible_per_epoch() -> None:
    cache = DictCache({"a": frames(50), "b": frames(4)})
    ds = CropDataset(cache, ["a", "b"], np.eye(2), np.ones(2), 8, "constant", -100.0, seed=1)
    first = [ds[i][0] for i in range(2)]
    again = [ds[i][0] for i in range(2)]
    for x, y in zip(first, again, strict=True):
        assert torch.equal(x, y)
    ds.set_epoch(1)
    assert not torch.equal(ds[0][0], first[0])  # a new epoch draws new crops
    x, y, w = ds[1]
    assert x.shape == (8, 4) and (x == -100).sum() == 4 * 4
    assert y.tolist() == [0.0, 1.0] and float(w) == 1.0


def test_spec_augment_masks_bands_with_clip_mean() -> None:
    x = torch.randn(4, 50, 16)
    cfg = SpecAugmentConfig(time_masks=1, time_width=10, freq_masks=1, freq_width=4)
    out = spec_augment(x, cfg, torch.Generator().manual_seed(0))
    changed = out != x
    assert changed.any()
    for b in range(4):
        fill = x[b].mean()
        assert torch.allclose(out[b][changed[b]], fill.expand(int(changed[b].sum())))
    none = SpecAugmentConfig(time_masks=0, freq_masks=0)
    assert torch.equal(spec_augment(x, none, torch.Generator().manual_seed(0)), x)


def test_mixup_is_a_convex_combination() -> None:
    x = torch.randn(6, 5, 3)
    y = torch.eye(6)
    w = torch.ones(6)
    mx, my, mw = mixup(x, y, w, 0.4, torch.Generator().manual_seed(3))
    assert torch.allclose(my.sum(1), torch.ones(6))
    assert torch.allclose(mw, torch.ones(6))
    # With one-hot targets, row i of my is lam at i and 1 - lam at its partner: recover both.
    lam = float(my[0, 0]) if my[0, 0] > 0 else float(1 - my[0].max())
    for i in range(6):
        partner = int(torch.argmax(my[i] - lam * y[i])) if not torch.allclose(my[i], y[i]) else i
        expected = lam * x[i] + (1 - lam) * x[partner]
        assert torch.allclose(mx[i], expected, atol=1e-6)


def test_warmup_cosine_schedule() -> None:
    values = [warmup_cosine(s, 10, 110, 0.01) for s in range(111)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[10] == pytest.approx(1.0)
    assert values[110] == pytest.approx(0.01)
    assert all(a < b for a, b in itertools.pairwise(values[:10]))  # warm-up rises
    assert all(a >= b for a, b in itertools.pairwise(values[10:]))  # then the cosine only falls


def test_spec_augment_zero_fill() -> None:
    x = torch.randn(2, 30, 8) + 5
    out = spec_augment(
        x, SpecAugmentConfig(time_masks=2, time_width=10), torch.Generator().manual_seed(1), "zero"
    )
    assert ((out == x) | (out == 0)).all() and (out == 0).any()


def test_specaugment_goes_after_bn0_with_zeros_for_panns_cnns() -> None:
    """As official PANNs training: bn0, then SpecAugment filling with 0 (after_norm), by default."""
    from audiotag.core.errors import ConfigError
    from audiotag.data.augment import resolve_specaugment, spec_mask
    from audiotag.models.cnn14 import CnnConfig
    from audiotag.models.registry import build_model

    auto = SpecAugmentConfig()
    panns = build_model(CnnConfig(channels=[4, 8], embedding_dim=None), 16, 3, frames=40)
    assert resolve_specaugment(auto, panns.backbone) == ("after_norm", "zero")
    no_bn0 = build_model(CnnConfig(channels=[4, 8], bn0=False, embedding_dim=None), 16, 3, frames=40)
    assert resolve_specaugment(auto, no_bn0.backbone) == ("input", "mean")
    assert resolve_specaugment(SpecAugmentConfig(where="input", fill="zero"), panns.backbone) == (
        "input",
        "zero",
    )
    with pytest.raises(ConfigError, match=r"specaugment\.where"):
        resolve_specaugment(SpecAugmentConfig(where="after_norm"), no_bn0.backbone)

    seen = {}
    panns.backbone.conv_block1.register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0]))
    x = torch.randn(2, 40, 16) * 10 - 40
    keep = spec_mask(
        x, SpecAugmentConfig(time_masks=2, time_width=8, freq_masks=2, freq_width=4), torch.Generator()
    )
    assert not keep.all()
    panns.train()
    panns(x, spec_keep=keep)
    masked = seen["x"][:, 0]  # (batch, frames, mels) after bn0
    assert (masked[~keep] == 0).all() and (masked[keep] != 0).all()


class PidCrops(CropDataset):
    """A crop dataset whose items also say which process made them."""

    def __getitem__(self, item):  # type: ignore[override]
        x, y, w = super().__getitem__(item)
        return x, y, w, torch.tensor(os.getpid())


def test_epoch_loader_keeps_its_workers_and_gives_each_epoch_its_own_crops() -> None:
    """The fold's one DataLoader (train/epoch.py): the workers start once, and every epoch's batches
    are what the dataset gives for that epoch in this process (the workers never see set_epoch)."""
    cache = DictCache({name: frames(40 + 7 * k) for k, name in enumerate("abcdef")})
    ds = PidCrops(cache, list("abcdef"), np.eye(6), np.ones(6), 8, "constant", -100.0, seed=5)
    loader = EpochLoader(ds, 2, torch.device("cpu"), seed=0)
    batches = [[4, 1], [0, 5], [3, 2]]
    pids = set()
    try:
        for epoch, start in ((0, 0), (1, 0), (2, 1)):  # epoch 2 resumes at its second batch
            got = list(loader.epoch(epoch, batches[start:]))
            assert len(got) == len(batches) - start
            ds.set_epoch(epoch)
            for (x, _, _, pid), batch in zip(got, batches[start:], strict=True):
                assert torch.equal(x, torch.stack([ds[i][0] for i in batch]))
                pids.update(pid.tolist())
        assert len(pids) == 2 and os.getpid() not in pids  # the same two workers throughout
    finally:
        loader.close()
    with pytest.raises(RuntimeError, match="after close"):
        loader.epoch(3, batches)
    ds.set_epoch(0)
    assert torch.equal(ds[(2, 3)][0], _crop_at(ds, 2, 3))  # (epoch, i) is the epoch's crop of clip i


def _crop_at(ds: CropDataset, epoch: int, i: int) -> torch.Tensor:
    ds.set_epoch(epoch)
    try:
        return ds[i][0]
    finally:
        ds.set_epoch(0)
