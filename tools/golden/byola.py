"""Golden fixtures for BYOL-A: the official code's outputs, written to ``tests/golden/byola*.npz``.

Official code: https://github.com/nttcslab/byol-a at commit 3e65c9283498d06915e6dbcff3445307d8d3e930
(``byol_a/models.py`` AudioNTT2020, ``byol_a/dataset.py`` WaveInLMSOutDataset with its default
torchaudio MelSpectrogram, ``byol_a/augmentations.py`` PrecomputedNorm, ``evaluate.py``
calc_norm_stats, ``config.yaml``). The official code is imported from an extracted copy and run; no
line of it is copied here. Its weights licence forbids redistribution: the real 512-d file is only
read from the extracted copy, never written into this repository.

Set-up (outside the repository; the mirror lacks the 1024/2048 weight blobs, so extract file by
file instead of ``git archive``)::

    G=/path/to/byol-a.git   # a clone or bare mirror at the commit above
    mkdir -p /tmp/official/byola
    git --git-dir=$G ls-tree -r HEAD | while read -r mode type sha path; do
        git --git-dir=$G cat-file -e "$sha" 2>/dev/null || continue
        mkdir -p "/tmp/official/byola/$(dirname "$path")"
        git --git-dir=$G cat-file blob "$sha" > "/tmp/official/byola/$path"
    done
    python3 -m venv /work/golden-env
    /work/golden-env/bin/pip install torch==2.9.1 torchaudio==2.9.1 librosa soundfile scikit-learn \
        pyyaml easydict tqdm

Run from the repository root::

    /work/golden-env/bin/python tools/golden/byola.py --official /tmp/official/byola

Shims (only for imports the computed paths never use, and for file reading): pytorch_lightning,
pandas and the external ``utils/torch_mlp_clf.py`` (downloaded and patched by the official README)
are empty stand-ins when not installed; ``torchaudio.set_audio_backend`` (gone in torchaudio 2.x) is
a no-op; ``torchaudio.load`` (torchcodec-only in torchaudio 2.9) reads with soundfile, which gives
the same float32 samples for the float WAV files written here.

Fixtures:

- ``byola{512,1024,2048}.npz``: AudioNTT2020(n_mels=64, d) with seeded weights
  (``tests/golden_weights.py``), in eval mode, on a seeded 1.5 s two-clip batch. ``logmel`` is
  WaveInLMSOutDataset's output (unit_sec = the clip length, so no padding or crop), ``embedding`` the
  model's (max + mean over time), ``frame_features`` the per-frame sequence before pooling
  (AudioNTT2020Task6.forward), after PrecomputedNorm((norm_mean, norm_std)).
- ``byola512_real.npz``: the same input through the real AudioNTT2020-BYOLA-64x96d512.pth.
- ``byola_norm_stats.npz``: calc_norm_stats (unit_sec 0.95, loocv data source) on seeded clips
  written as wav files: ``short_*`` all at most 0.95 s (only the deterministic centred zero padding
  applies), ``long_*`` a mix with clips longer than 0.95 s, under seeded random/numpy/torch (the
  official random crop), made of stationary noise so that the statistics hardly depend on the crop.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from golden_weights import pack_shapes, seeded_state, shapes_of  # noqa: E402

COMMIT = "3e65c9283498d06915e6dbcff3445307d8d3e930"
SOURCE = f"nttcslab/byol-a@{COMMIT}"
SR = 16000
SEEDS = {512: 5120, 1024: 10240, 2048: 20480}
NORM = (-5.4919, 5.0389)  # fixed PrecomputedNorm stats (the order of BYOL-A's downstream ones)
UNIT_SEC = 0.95
SHORT_SECONDS = (0.12, 0.3, 0.5, 0.7, 0.9, 0.95)
LONG_SECONDS = (0.4, 1.3, 2.0, 3.1, 0.8, 1.7)
LONG_RNG_SEED = 7


def install_shims() -> None:
    for name in ("pytorch_lightning", "pandas"):
        if importlib.util.find_spec(name) is None:
            sys.modules[name] = types.ModuleType(name)
    clf = types.ModuleType("utils.torch_mlp_clf")
    clf.TorchMLPClassifier = None
    clf.train_test_sure_split = None
    sys.modules["utils.torch_mlp_clf"] = clf
    if not hasattr(torchaudio, "set_audio_backend"):
        torchaudio.set_audio_backend = lambda backend: None

    def load(path, *args, **kwargs):
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
        return torch.from_numpy(data.T.copy()), sr

    torchaudio.load = load


def import_official(root: Path) -> types.SimpleNamespace:
    install_shims()
    sys.path.insert(0, str(root))
    import evaluate
    from byol_a.augmentations import PrecomputedNorm
    from byol_a.common import load_yaml_config
    from byol_a.dataset import WaveInLMSOutDataset
    from byol_a.models import AudioNTT2020, AudioNTT2020Task6

    return types.SimpleNamespace(
        PrecomputedNorm=PrecomputedNorm,
        WaveInLMSOutDataset=WaveInLMSOutDataset,
        AudioNTT2020=AudioNTT2020,
        AudioNTT2020Task6=AudioNTT2020Task6,
        calc_norm_stats=evaluate.calc_norm_stats,
        cfg=lambda: load_yaml_config(root / "config.yaml"),
    )


def test_waves(seconds: float = 1.5) -> np.ndarray:
    """Two clips: a chirp with harmonics in noise, and noise bursts around exact digital silence."""
    rng = np.random.default_rng(2021)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    chirp = np.sin(2 * np.pi * (200 * t + 1800 * t**2)) + 0.3 * np.sin(
        2 * np.pi * 3 * (200 * t + 1800 * t**2)
    )
    a = 0.3 * chirp + 0.05 * rng.standard_normal(n)
    b = 0.2 * rng.standard_normal(n) * (1 + np.sin(2 * np.pi * 4 * t)) / 2
    b[n // 3 : n // 3 + 4000] = 0.0  # 0.25 s of exact zeros: the log's eps floor
    b += 0.1 * np.sin(2 * np.pi * 440 * t) * (t > 1.0)
    return np.stack([a, b]).astype(np.float32)


def write_wavs(folder: Path, waves: list[np.ndarray], stem: str) -> list[str]:
    files = []
    for i, w in enumerate(waves):
        path = folder / f"{stem}{i}.wav"
        sf.write(path, w, SR, subtype="FLOAT")
        assert np.array_equal(sf.read(path, dtype="float32")[0], w)
        files.append(str(path))
    return files


def official_logmel(off, waves: np.ndarray, tmp: Path) -> torch.Tensor:
    """WaveInLMSOutDataset's log-mel of each clip, (batch, 1, mels, frames), unit_sec = clip length."""
    cfg = off.cfg()
    cfg.unit_sec = waves.shape[1] / cfg.sample_rate
    ds = off.WaveInLMSOutDataset(cfg, write_wavs(tmp, list(waves), "clip"), labels=None, tfms=None)
    assert ds.unit_length == waves.shape[1]
    return torch.stack([ds[i] for i in range(len(ds))])


def run_encoder(off, model, lms: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    x = off.PrecomputedNorm(NORM)(lms)
    with torch.no_grad():
        emb = model(x)
        seq = off.AudioNTT2020Task6.forward(model, x)
    return emb.numpy(), seq.numpy()


def save(out: Path, name: str, **arrays) -> None:
    path = out / f"{name}.npz"
    np.savez_compressed(path, source=np.array(SOURCE), **arrays)
    print(f"{path}: {path.stat().st_size / 1e3:.0f} kB")


def encoder_fixtures(off, root: Path, out: Path, tmp: Path) -> None:
    waves = test_waves()
    lms = official_logmel(off, waves, tmp)
    common = dict(
        wave=waves,
        sample_rate=np.array(SR),
        logmel=lms[:, 0].numpy(),
        norm_mean=np.array(NORM[0]),
        norm_std=np.array(NORM[1]),
    )
    for d, seed in SEEDS.items():
        model = off.AudioNTT2020(n_mels=64, d=d)
        shapes = shapes_of(model.state_dict())
        model.load_state_dict(seeded_state(shapes, seed))
        model.eval()
        emb, seq = run_encoder(off, model, lms)
        save(
            out,
            f"byola{d}",
            seed=np.array(seed),
            **pack_shapes(shapes),
            embedding=emb,
            frame_features=seq,
            **common,
        )
    real = root / "pretrained_weights" / "AudioNTT2020-BYOLA-64x96d512.pth"
    model = off.AudioNTT2020(n_mels=64, d=512).load_weight(real, "cpu")
    emb, seq = run_encoder(off, model, lms)
    save(out, "byola512_real", embedding=emb, frame_features=seq, **common)


class Files:
    """The part of a downstream-task data source calc_norm_stats uses (LOO-CV: all files count)."""

    loocv = True

    def __init__(self, files: list[str]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)


def norm_waves(seconds: tuple[float, ...], seed: int, stationary: bool) -> list[np.ndarray]:
    out = []
    for i, s in enumerate(seconds):
        rng = np.random.default_rng([seed, i])
        n = int(s * SR)
        t = np.arange(n) / SR
        level = 0.02 + 0.3 * rng.random()
        w = level * rng.standard_normal(n) + level * np.sin(2 * np.pi * rng.uniform(100, 4000) * t)
        if not stationary:  # onsets and decays, so the edge frames carry signal
            w *= np.exp(-rng.uniform(0, 4) * t)
        out.append(w.astype(np.float32))
    return out


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def norm_stats_fixture(off, out: Path, tmp: Path) -> None:
    cfg = off.cfg()
    cfg.unit_sec = UNIT_SEC
    arrays: dict[str, np.ndarray] = {}
    for kind, seconds, stationary in (("short", SHORT_SECONDS, False), ("long", LONG_SECONDS, True)):
        waves = norm_waves(seconds, 11 if kind == "short" else 13, stationary)
        seed_all(LONG_RNG_SEED)
        stats = off.calc_norm_stats(cfg, Files(write_wavs(tmp, waves, kind)), n_stats=10000)
        print(kind, "mean/std", stats)
        lengths = np.array([len(w) for w in waves])
        arrays[f"{kind}_wave"] = np.concatenate(waves)
        arrays[f"{kind}_lengths"] = lengths
        arrays[f"{kind}_mean"] = np.array(stats[0])
        arrays[f"{kind}_std"] = np.array(stats[1])
    assert max(arrays["short_lengths"]) <= int(UNIT_SEC * SR)
    save(
        out,
        "byola_norm_stats",
        sample_rate=np.array(SR),
        unit_sec=np.array(UNIT_SEC),
        rng_seed=np.array(LONG_RNG_SEED),
        **arrays,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, required=True, help="extracted nttcslab/byol-a checkout")
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "golden")
    args = parser.parse_args()
    torch.set_num_threads(1)
    off = import_official(args.official.resolve())
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        encoder_fixtures(off, args.official.resolve(), args.out, Path(tmp))
        norm_stats_fixture(off, args.out, Path(tmp))


if __name__ == "__main__":
    main()
