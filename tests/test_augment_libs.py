"""train.wave_augment (audiomentations) and train.spec_augment_lib (albumentations): config checks,
seeded determinism, the dB meaning of the log-mel image, and background noise that never comes from
the clip itself or from a validation clip."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from audiotag.cli.main import main
from audiotag.config.schema import FeatureConfig
from audiotag.core.errors import ConfigError
from audiotag.data.dataset import CropDataset
from audiotag.data.spec_augment_lib import IMAGE_DB, SpecAugmentLib, image_scale
from audiotag.data.wave_augment import WaveAugment, fold_wave_augment, seeded_globals
from audiotag.train.experiment import load_experiment
from tests.conftest import REPO, tiny_args

DEMO = REPO / "configs" / "experiments" / "demo" / "cnn_small.yaml"
SR = 16000


class WaveCache:
    """What the datasets and the noise pool read of FeatureCache: ``get`` -> (samples, 1) float16."""

    def __init__(self, clips: dict[str, np.ndarray]) -> None:
        self.clips = {k: v.astype(np.float16).reshape(-1, 1) for k, v in clips.items()}

    def get(self, clip_id: str) -> np.ndarray:
        return self.clips[clip_id]


def tone(freq: float, seconds: float = 0.5, level: float = 0.3) -> np.ndarray:
    t = np.arange(round(seconds * SR)) / SR
    return (level * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


# ----------------------------------------------------------------------------- config checks


def load(*overrides: str):
    return load_experiment(DEMO, list(overrides))


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "train.wave_augment=[{name: Gian}]",
            r"wave_augment\[0\]: 'Gian' is not a transform.*did you mean Gain",
        ),
        (
            "train.wave_augment=[{name: Gain}, {name: PitchShift, semitones: 2}]",
            r"wave_augment\[1\] \(PitchShift\): unknown parameter\(s\) semitones; PitchShift takes "
            r"min_semitones, max_semitones",
        ),
        (
            "train.wave_augment=[{name: Gain, min_gain_db: 6, max_gain_db: -6}]",
            r"wave_augment\[0\] \(Gain\): min_gain_db cannot be greater than max_gain_db",
        ),
        ("train.wave_augment=[{name: Gain, p: 1.5}]", r"wave_augment\[0\] \(Gain\): p is the probability"),
        (
            "train.wave_augment=[{name: BandPassFilter, min_center_freq: 9000, max_center_freq: 10000}]",
            r"wave_augment\[0\] \(BandPassFilter\): min_center_freq 9000, max_center_freq 10000 Hz above "
            r"the Nyquist frequency 8000",
        ),
        (
            "train.wave_augment=[{name: AddBackgroundNoise}]",
            r"wave_augment\[0\] \(AddBackgroundNoise\): source",
        ),
        (
            "train.wave_augment=[{name: AddBackgroundNoise, source: /no/such/folder}]",
            r"source /no/such/folder: no such file or folder",
        ),
        ("train.wave_augment=[Gain]", r"train.wave_augment.0: Input should be a valid dictionary"),
        (
            "train.spec_augment_lib=[{name: CoarseDropout, holes: 3}]",
            r"spec_augment_lib\[0\] \(CoarseDropout\): unknown parameter\(s\) holes; CoarseDropout takes "
            r"num_holes_range",
        ),
        (
            "train.spec_augment_lib=[{name: CoarseDropout, num_holes_range: [5, 1]}]",
            r"spec_augment_lib\[0\] \(CoarseDropout\): .*num_holes_range",
        ),
        (
            "train.spec_augment_lib=[{name: Affine}, {name: RandomCrop, height: 32, width: 32}]",
            r"spec_augment_lib\[1\] \(RandomCrop\): changes the log-mel image from \(64, 100\) to \(32, 32\)",
        ),
    ],
)
def test_bad_entries_are_refused_at_load_naming_entry_and_parameter(override: str, expected: str) -> None:
    wave = "features.cache=wave"
    with pytest.raises(ConfigError, match=expected):
        load(wave, override)


def test_wave_augment_needs_the_wave_cache() -> None:
    with pytest.raises(ConfigError, match=r"wave_augment: .*needs features.cache: wave"):
        load("train.wave_augment=[{name: Gain}]")
    cfg = load("train.spec_augment_lib=[{name: CoarseDropout}]")  # log-mel cache: fine
    assert cfg.train.spec_augment_lib == [{"name": "CoarseDropout"}] and cfg.train.wave_augment == []


# ----------------------------------------------------------------------------- waves


def test_gain_matches_its_formula_and_the_global_generators_are_left_alone() -> None:
    augment = WaveAugment([{"name": "Gain", "min_gain_db": 6, "max_gain_db": 6, "p": 1.0}], SR, {})
    wave = tone(440)
    random.seed(5)
    np.random.seed(5)
    expected_py, expected_np = random.random(), np.random.random()
    random.seed(5)
    np.random.seed(5)
    out = augment(wave, [1, 2, 3])
    assert (random.random(), np.random.random()) == (expected_py, expected_np)
    np.testing.assert_allclose(out, wave * 10 ** (6 / 20), rtol=1e-6)


def noise_bank() -> tuple[WaveCache, list[str], list[str]]:
    rng = np.random.default_rng(0)
    clips = {f"c{i}": rng.normal(0, 0.05 * (i + 1), SR // 2 + 997 * i).astype(np.float32) for i in range(8)}
    return WaveCache(clips), [f"c{i}" for i in range(5)], [f"c{i}" for i in range(5, 8)]  # train, val


CHAIN = [
    {"name": "Gain", "min_gain_db": -6, "max_gain_db": 6, "p": 0.8},
    {"name": "AddBackgroundNoise", "source": "competition", "min_snr_db": 3, "max_snr_db": 20, "p": 0.8},
    {"name": "TimeStretch", "min_rate": 0.8, "max_rate": 1.25, "leave_length_unchanged": False, "p": 0.5},
    {"name": "BandPassFilter", "p": 0.5},
]


def wave_dataset(seed: int = 3) -> CropDataset:
    cache, train_ids, _ = noise_bank()
    augment = fold_wave_augment(CHAIN, SR, cache, train_ids, None, fold=0)
    n = len(train_ids)
    return CropDataset(
        cache, train_ids, np.eye(n), np.ones(n), SR // 4, "wrap", 0.0, seed=seed, wave_augment=augment
    )


def test_augmented_crops_are_reproducible_whatever_the_order_and_differ_across_epochs() -> None:
    a, b = wave_dataset(), wave_dataset()
    first = [a[i][0] for i in range(5)]
    backwards = [b[i][0] for i in reversed(range(5))][::-1]  # another worker split, another order
    for x, y in zip(first, backwards, strict=True):
        assert x.shape == (SR // 4, 1) and x.dtype == torch.float32
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    a.set_epoch(1)
    assert not all(torch.equal(x, a[i][0]) for i, x in enumerate(first))
    plain = CropDataset(a.cache, a.clip_ids, np.eye(5), np.ones(5), SR // 4, "wrap", 0.0, seed=3)
    assert not all(torch.equal(x, plain[i][0]) for i, x in enumerate(first))  # it did augment


def test_background_noise_never_comes_from_the_clip_itself_or_a_validation_clip() -> None:
    cache, train_ids, val_ids = noise_bank()
    spec = {
        "name": "AddBackgroundNoise",
        "source": "competition",
        "min_snr_db": 10,
        "max_snr_db": 10,
        "p": 1.0,
    }
    augment = fold_wave_augment([spec], SR, cache, train_ids, None, fold=0)
    signal = tone(300)
    picked: dict[str, set[str]] = {clip: set() for clip in train_ids}
    for trial in range(200):
        clip = train_ids[trial % len(train_ids)]
        out = augment(signal, [trial], clip)
        params = augment._noise[0].parameters
        picked[clip].add(params["noise_clip_id"])
        added = out - signal
        assert 20 * np.log10(rms(signal) / rms(added)) == pytest.approx(10.0, abs=1e-3)  # the SNR asked
    for clip, sources in picked.items():
        assert sources == set(train_ids) - {clip}  # every other training clip, never itself
        assert not sources & set(val_ids)


def test_noisy_source_draws_only_unverified_training_clips() -> None:
    cache, train_ids, _ = noise_bank()
    spec = {"name": "AddBackgroundNoise", "source": "noisy", "p": 1.0}
    verified = np.array([True, False, True, False, False])
    augment = fold_wave_augment([spec], SR, cache, train_ids, verified, fold=2)
    drawn = set()
    for trial in range(60):
        augment(tone(300), [trial], "c1")
        drawn.add(augment._noise[0].parameters["noise_clip_id"])
    assert drawn == {"c3", "c4"}
    with pytest.raises(ConfigError, match=r"source noisy: fold 2 has no training clip.*competition.subsets"):
        fold_wave_augment([spec], SR, cache, train_ids, np.ones(5, bool), fold=2)


def test_seeded_globals_restores_on_error() -> None:
    state = random.getstate()
    with pytest.raises(RuntimeError), seeded_globals([1]):
        random.random()
        raise RuntimeError
    assert random.getstate() == state


# ----------------------------------------------------------------------------- log-mel images


def test_brightness_is_a_gain_in_db_and_dropout_fills_with_the_floor() -> None:
    db = FeatureConfig(scale="db", amin=1e-10)
    floor, unit = image_scale(db)
    assert (floor, unit) == (pytest.approx(-100.0), IMAGE_DB)
    logmel = np.random.default_rng(1).uniform(-90, 20, (100, 64)).astype(np.float32)
    brighter = SpecAugmentLib(
        [{"name": "RandomBrightnessContrast", "brightness_limit": [0.03, 0.03], "contrast_limit": 0, "p": 1}],
        db,
    )(logmel, [0])
    np.testing.assert_allclose(brighter, logmel + 6.0, atol=1e-3)  # 0.03 of 200 dB
    log_scale = FeatureConfig(scale="log", log_offset=1e-6)
    natural = np.clip(logmel, -55, None) * np.log(10) / 10  # levels above its -60 dB floor, on the ln scale
    out = SpecAugmentLib(
        [{"name": "RandomBrightnessContrast", "brightness_limit": [0.03, 0.03], "contrast_limit": 0, "p": 1}],
        log_scale,
    )(natural, [0])
    np.testing.assert_allclose(out, natural + 6.0 * np.log(10) / 10, atol=1e-4)
    dropped = SpecAugmentLib(
        [{"name": "CoarseDropout", "num_holes_range": [1, 1], "hole_height_range": [64, 64],
          "hole_width_range": [10, 10], "fill": 0, "p": 1}],
        db,
    )(logmel, [0])  # fmt: skip
    changed = ~np.isclose(dropped, logmel, atol=1e-3).all(axis=1)
    assert changed.sum() == 10 and np.allclose(dropped[changed], -100.0)  # ten frames of silence


def test_spec_batches_are_reproducible_per_clip_entropy() -> None:
    chain = [
        {"name": "CoarseDropout", "num_holes_range": [1, 3], "hole_height_range": [4, 12],
         "hole_width_range": [8, 30], "p": 0.7},
        {"name": "Affine", "translate_px": {"x": [-20, 20], "y": [-2, 2]}, "border_mode": 3, "p": 0.7},
    ]  # fmt: skip
    augment = SpecAugmentLib(chain, FeatureConfig())
    x = torch.from_numpy(np.random.default_rng(2).uniform(-80, 10, (6, 100, 64)).astype(np.float32))
    entropies = [[0, 0, 5, 1, i] for i in range(6)]
    a = augment.batch(x, entropies)
    b = SpecAugmentLib(chain, FeatureConfig()).batch(x.flip(0), entropies[::-1]).flip(0)
    assert a.shape == x.shape and a.dtype == x.dtype
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    c = augment.batch(x, [[0, 0, 5, 2, i] for i in range(6)])  # the next epoch
    assert not torch.equal(a, c) and not torch.equal(a, x)


# ----------------------------------------------------------------------------- resume


@pytest.mark.soak
@pytest.mark.slow
def test_resume_after_kills_with_both_libraries_gives_the_uninterrupted_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed at the end of epoch 1, then in the middle of epoch 2, and resumed each time: the same
    losses and weights as one uninterrupted run (which also reads its crops in a DataLoader worker)."""
    from audiotag.train import loop

    extra = [
        "features.cache=wave",
        "train.folds=[0]",
        "train.epochs=2",
        "train.checkpoint_every_steps=1",
        "train.wave_augment=[{name: Gain, p: 0.5}, {name: AddBackgroundNoise, source: competition, p: 0.5}]",
        "train.spec_augment_lib=[{name: CoarseDropout, p: 0.5}, {name: RandomBrightnessContrast, p: 0.5}]",
    ]
    real_save = loop.save_checkpoint

    class Killed(BaseException):
        pass

    def save_then_die_at(epoch: int, batch: int | None):
        def save(path: Path, payload: dict) -> None:
            real_save(path, payload)
            state = payload.get("state", {})
            partial = state.get("partial")
            if path.name == "last.pt" and state["epoch"] == epoch and (partial or {}).get("batch") == batch:
                raise Killed

        return save

    calls = {"wave": 0, "spec": 0}
    real_wave, real_spec = WaveAugment.__call__, SpecAugmentLib.batch

    def counted_wave(self, *args, **kwargs):
        calls["wave"] += 1
        return real_wave(self, *args, **kwargs)

    def counted_spec(self, *args, **kwargs):
        calls["spec"] += 1
        return real_spec(self, *args, **kwargs)

    def workspace(name: str) -> Path:
        monkeypatch.setenv("AUDIOTAG_WORKSPACE", str(tmp_path / name / "competition"))
        monkeypatch.setenv("AUDIOTAG_SUBMISSIONS", str(tmp_path / name / "submissions"))
        return tmp_path / name / "competition" / "demo" / "runs" / "cnn_small" / "fold0"

    monkeypatch.setattr(WaveAugment, "__call__", counted_wave)
    monkeypatch.setattr(SpecAugmentLib, "batch", counted_spec)
    killed = workspace("killed")
    for epoch, batch in ((1, None), (1, 1)):  # the epoch boundary, then mid-epoch
        monkeypatch.setattr(loop, "save_checkpoint", save_then_die_at(epoch, batch))
        with pytest.raises(Killed):
            main(tiny_args("prepare", "train", extra=extra))
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    assert main(tiny_args("prepare", "train", extra=extra)) == 0
    assert calls["wave"] > 0 and calls["spec"] > 0  # both ran (in this process: no DataLoader worker)
    clean = workspace("clean")
    assert main(tiny_args("prepare", "train", extra=[*extra, "train.num_workers=1"])) == 0

    a, b = (json.loads((f / "done.json").read_text())["history"] for f in (killed, clean))
    assert [h["loss"] for h in a] == [h["loss"] for h in b]
    weights_a, weights_b = (torch.load(f / "best.pt", weights_only=True)["model"] for f in (killed, clean))
    for name, tensor in weights_a.items():
        torch.testing.assert_close(tensor, weights_b[name], rtol=0, atol=0, msg=name)
