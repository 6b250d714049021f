"""The synthetic demo competitions: class synthesis, Kaggle layouts, determinism, atomicity."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from scipy import signal

from audiotag.competitions import demo_synth
from audiotag.competitions.demo_sounds import CLASSES, mix_clip, synthesize_event
from audiotag.competitions.demo_synth import (
    generate_fsd2018_files,
    generate_fsd2019_files,
    plan_fsd2018,
    plan_fsd2019,
)
from audiotag.config.competition_parts import DemoGeneratorConfig
from audiotag.core.errors import DataError

TINY = DemoGeneratorConfig(seed=7, train_per_class=3, test_per_class=2, max_duration=2.0)
FNAME = re.compile(r"^[0-9a-f]{8}\.wav$")
TONAL = [
    "Chirp_up",
    "Chirp_down",
    "AM_tone",
    "FM_vibrato",
    "Harmonic_stack",
    "Harmonic_glide",
    "Beep_train",
    "Two_tone_siren",
    "Warble",
]


def _generate(root: Path, layout: str, cfg: DemoGeneratorConfig = TINY) -> tuple[Path, Path]:
    raw, truth = root / "raw", root / "hidden" / "test_truth.csv"
    writer = generate_fsd2018_files if layout == "2018" else generate_fsd2019_files
    writer(raw, truth, cfg)
    return raw, truth


@pytest.fixture(scope="module")
def layout2018(module_tmp: Path) -> tuple[Path, Path]:
    return _generate(module_tmp / "demo2018", "2018")


@pytest.fixture(scope="module")
def layout2019(module_tmp: Path) -> tuple[Path, Path]:
    return _generate(module_tmp / "demo2019", "2019")


def _header(path: Path) -> list[str]:
    with path.open(newline="") as f:
        return next(csv.reader(f))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- synthesis


def test_classes_are_label_safe() -> None:
    assert len(CLASSES) >= 14
    assert len(set(CLASSES)) == len(CLASSES)
    assert all(re.fullmatch(r"[A-Za-z0-9_]+", c) for c in CLASSES)
    assert set(CLASSES) >= set(TONAL)


@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("duration", [0.3, 5.0])
def test_each_class_synthesises(name: str, duration: float) -> None:
    sr = 44100
    x = synthesize_event(name, duration, sr, np.random.default_rng(0))
    assert x.dtype == np.float32
    assert x.shape == (round(duration * sr),)
    assert np.isfinite(x).all()
    assert np.abs(x).max() <= 1.0
    assert np.sqrt(np.mean(x.astype(np.float64) ** 2)) > 0.01


def test_events_differ_between_draws() -> None:
    a = synthesize_event("AM_tone", 1.0, 16000, np.random.default_rng(1))
    b = synthesize_event("AM_tone", 1.0, 16000, np.random.default_rng(2))
    assert not np.allclose(a, b)


def test_unknown_class_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown demo class"):
        synthesize_event("Bark", 1.0, 16000, np.random.default_rng(0))


def test_mix_clip_length_and_peak() -> None:
    sr = 16000
    for seed, names in enumerate([["Rumble"], ["Chirp_up", "Dripping", "Noise_burst"]]):
        x = mix_clip(names, 1.7, sr, np.random.default_rng(seed))
        assert x.dtype == np.float32 and x.shape == (round(1.7 * sr),)
        assert 0.3 - 1e-6 <= np.abs(x).max() <= 0.95 + 1e-6


def test_average_spectrum_does_not_separate_tonal_classes() -> None:
    """Guards the design: the classes must need time-frequency patterns, not one pitch each."""
    sr, per_class = 16000, 20

    def spectrum(name: str, i: int) -> np.ndarray:
        rng = np.random.default_rng([11, CLASSES.index(name), i])
        _, power = signal.welch(mix_clip([name], 1.0, sr, rng), sr, nperseg=512)
        mag = np.sqrt(power)
        return mag / np.linalg.norm(mag)

    feats = np.array([[spectrum(c, i) for i in range(2 * per_class)] for c in TONAL])
    centroids = feats[:, :per_class].mean(axis=1)
    held_out = feats[:, per_class:]
    dist = ((held_out[:, :, None, :] - centroids[None, None]) ** 2).sum(-1)
    accuracy = float((dist.argmin(-1) == np.arange(len(TONAL))[:, None]).mean())
    assert accuracy < 0.6, f"average spectra separate the tonal classes ({accuracy:.0%})"


# ----------------------------------------------------------------------------- plans


@pytest.mark.parametrize("plan", [plan_fsd2018, plan_fsd2019])
def test_plan_counts_names_and_durations(plan) -> None:
    clips = plan(TINY)
    assert plan(TINY) == clips  # a pure function of the config
    assert len({c.fname for c in clips}) == len(clips)
    assert all(FNAME.match(c.fname) for c in clips)
    assert all(TINY.min_duration <= c.duration <= TINY.max_duration for c in clips)
    train = [c for c in clips if c.subset != "test"]
    test = [c for c in clips if c.subset == "test"]
    for name in CLASSES:
        assert sum(c.labels[0] == name for c in train) == TINY.train_per_class
        assert sum(c.labels[0] == name for c in test) == TINY.test_per_class


def test_negative_seed_is_accepted() -> None:
    cfg = TINY.model_copy(update={"seed": -3})
    assert plan_fsd2018(cfg) != plan_fsd2018(TINY)


def test_plan_2018_verified_and_label_noise() -> None:
    cfg = DemoGeneratorConfig(seed=3, train_per_class=10, test_per_class=1, verified_fraction=0.4)
    train = [c for c in plan_fsd2018(cfg) if c.subset == "train"]
    verified = [c for c in train if c.verified]
    unverified = [c for c in train if not c.verified]
    assert len(verified) == 4 * len(CLASSES)
    assert all(c.given == c.labels for c in verified)
    wrong = [c for c in unverified if c.given != c.labels]
    assert len(wrong) == int(cfg.label_noise * len(unverified) + 0.5)
    assert all(c.given[0] in CLASSES and c.given[0] != c.labels[0] for c in wrong)


def test_plan_2019_labels_and_noise() -> None:
    cfg = DemoGeneratorConfig(seed=3, train_per_class=20, test_per_class=2)
    clips = plan_fsd2019(cfg)
    assert {c.subset for c in clips} == {"curated", "noisy", "test"}
    assert all(1 <= len(c.labels) <= 3 and len(set(c.labels)) == len(c.labels) for c in clips)
    assert {len(c.labels) for c in clips} == {1, 2, 3}
    curated = [c for c in clips if c.subset == "curated"]
    noisy = [c for c in clips if c.subset == "noisy"]
    assert len(curated) == 10 * len(CLASSES)
    assert all(c.given == c.labels and c.verified for c in curated)
    assert all(c.given and set(c.given) <= set(CLASSES) for c in noisy)
    assert any(set(c.given) != set(c.labels) for c in noisy)


# ----------------------------------------------------------------------------- 2018 layout


def test_fsd2018_layout(layout2018: tuple[Path, Path]) -> None:
    raw, truth = layout2018
    assert sorted(p.name for p in raw.iterdir()) == [
        "audio_test",
        "audio_train",
        "sample_submission.csv",
        "train.csv",
    ]
    assert _header(raw / "train.csv") == ["fname", "label", "manually_verified"]
    assert _header(raw / "sample_submission.csv") == ["fname", "label"]
    assert _header(truth) == ["fname", "label"]
    assert not truth.is_relative_to(raw)

    train = pd.read_csv(raw / "train.csv", dtype=str)
    sample = pd.read_csv(raw / "sample_submission.csv", dtype=str)
    assert set(train["manually_verified"]) <= {"0", "1"}
    assert all(len(s.split(" ")) == 3 and set(s.split(" ")) <= set(CLASSES) for s in sample["label"])
    assert {p.name for p in (raw / "audio_train").iterdir()} == set(train["fname"])
    assert {p.name for p in (raw / "audio_test").iterdir()} == set(sample["fname"])
    assert len(train) == len(CLASSES) * TINY.train_per_class
    assert len(sample) == len(CLASSES) * TINY.test_per_class

    for path in [*(raw / "audio_train").iterdir(), *(raw / "audio_test").iterdir()]:
        info = sf.info(str(path))
        assert (info.format, info.subtype, info.channels, info.samplerate) == ("WAV", "PCM_16", 1, 44100)
        assert TINY.min_duration - 1e-3 <= info.frames / info.samplerate <= TINY.max_duration + 1e-3


def test_fsd2018_csvs_match_plan(layout2018: tuple[Path, Path]) -> None:
    raw, truth = layout2018
    plan = {c.fname: c for c in plan_fsd2018(TINY)}
    train = pd.read_csv(raw / "train.csv", dtype=str)
    for fname, label, flag in train.itertuples(index=False):
        clip = plan[fname]
        assert (label, flag == "1") == (clip.given[0], clip.verified)
        if clip.verified:
            assert label == clip.labels[0]
    assert train["label"].tolist() != sorted(train["label"])  # rows are not grouped by class
    truth_df = pd.read_csv(truth, dtype=str)
    assert {f: plan[f].labels[0] for f in truth_df["fname"]} == dict(truth_df.itertuples(index=False))
    for fname in truth_df["fname"][:3]:
        assert sf.info(str(raw / "audio_test" / fname)).frames == round(plan[fname].duration * 44100)


# ----------------------------------------------------------------------------- 2019 layout


def test_fsd2019_layout(layout2019: tuple[Path, Path]) -> None:
    raw, truth = layout2019
    assert sorted(p.name for p in raw.iterdir()) == [
        "sample_submission.csv",
        "test",
        "train_curated",
        "train_curated.csv",
        "train_noisy",
        "train_noisy.csv",
    ]
    for name in ("train_curated.csv", "train_noisy.csv"):
        assert _header(raw / name) == ["fname", "labels"]
    assert _header(truth) == ["fname", "labels"]
    sample = pd.read_csv(raw / "sample_submission.csv")
    assert sample.columns.tolist() == ["fname", *sorted(CLASSES)]
    assert (sample.drop(columns="fname") == 0).all().all()
    assert {p.name for p in (raw / "test").iterdir()} == set(sample["fname"])

    plan = {c.fname: c for c in plan_fsd2019(TINY)}
    multi_rows = 0
    for subset in ("curated", "noisy"):
        df = pd.read_csv(raw / f"train_{subset}.csv", dtype=str)
        assert {p.name for p in (raw / f"train_{subset}").iterdir()} == set(df["fname"])
        for fname, labels in df.itertuples(index=False):
            clip = plan[fname]
            assert clip.subset == subset
            assert set(labels.split(",")) == set(clip.given)
            if subset == "curated":
                assert set(labels.split(",")) == set(clip.labels)
        multi_rows += int(df["labels"].str.contains(",").sum())
    assert multi_rows > 0
    text = (raw / "train_curated.csv").read_text() + (raw / "train_noisy.csv").read_text()
    assert re.search(r'^[0-9a-f]{8}\.wav,"[A-Za-z_]+,[A-Za-z_,]+"$', text, re.MULTILINE)

    truth_df = pd.read_csv(truth, dtype=str)
    assert all(set(s.split(",")) == set(plan[f].labels) for f, s in truth_df.itertuples(index=False))
    for path in (raw / "test").iterdir():
        info = sf.info(str(path))
        assert (info.subtype, info.channels, info.samplerate) == ("PCM_16", 1, 44100)


# ----------------------------------------------------------------------------- determinism, atomicity


@pytest.mark.parametrize("layout", ["2018", "2019"])
def test_same_seed_gives_identical_files(tmp_path: Path, layout: str) -> None:
    cfg = DemoGeneratorConfig(seed=5, train_per_class=2, test_per_class=1, max_duration=1.0)
    a = _generate(tmp_path / "a", layout, cfg)
    b = _generate(tmp_path / "b", layout, cfg)
    c = _generate(tmp_path / "c", layout, cfg.model_copy(update={"seed": 6}))
    assert _files(a[0]) == _files(b[0])
    assert a[1].read_bytes() == b[1].read_bytes()
    assert _files(a[0]) != _files(c[0])
    assert a[1].read_bytes() != c[1].read_bytes()


def test_existing_raw_dir_is_left_untouched(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="exists"):
        generate_fsd2018_files(raw, tmp_path / "truth.csv", TINY)
    assert [p.name for p in raw.iterdir()] == ["keep.txt"]
    assert (raw / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "truth.csv").exists()
    assert not (tmp_path / "raw.partial").exists()


def test_leftover_partial_is_replaced_and_empty_raw_dir_accepted(tmp_path: Path) -> None:
    cfg = DemoGeneratorConfig(seed=1, train_per_class=2, test_per_class=1, max_duration=0.5)
    raw = tmp_path / "raw"
    raw.mkdir()  # empty: fine
    partial = tmp_path / "raw.partial"
    (partial / "audio_train").mkdir(parents=True)
    (partial / "audio_train" / "stale.wav").write_bytes(b"junk")
    generate_fsd2019_files(raw, tmp_path / "truth.csv", cfg)
    assert not partial.exists()
    assert not (raw / "audio_train").exists()
    assert (raw / "train_curated.csv").is_file()


def test_failure_leaves_no_partial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(demo_synth, "_write_wav", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        generate_fsd2018_files(tmp_path / "raw", tmp_path / "truth.csv", TINY)
    assert not (tmp_path / "raw").exists()
    assert not (tmp_path / "raw.partial").exists()
