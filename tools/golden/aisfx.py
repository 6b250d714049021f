"""Golden fixture for aisfx: the PyPI package aisfx 0.1.2 run on a seeded waveform, real weights.

Reference: ``aisfx==0.1.2`` from PyPI (Pennsylvania State University's sound-effects embedding
model; its wheel ships ``aisfx/models/checkpoint.pth``), run through its own public functions:
``aisfx.utils.spectrogram_selector("librosa")`` (librosa front-end: ``librosa.load`` at 44.1 kHz,
peak normalisation, ``librosa.feature.melspectrogram(norm=1, htk=True, power=2)``,
``log10(1e4 * mel + 1)``), ``aisfx.preprocessing.spectrogram_normalize(..., "original")`` (min-max
scaling by 0 .. 9.4578), ``aisfx.inference.load_weights`` / ``load_bestModel`` (CrossNet with
``EmbeddingNet("max", 3, 1, 64)``, eval mode) and ``aisfx.inference.model_get_embedding`` (100-frame
blocks, hop 0.5, as its ``main`` does). The package is run, not copied: nothing of it is in the repo.

One deviation from ``aisfx.inference.main(spectrogram_type="librosa")``: librosa returns the
log-mel as (mels, frames) and that path feeds it to the model untransposed (its blocking then cuts
the 96 mel rows as if they were frames, and the model convolves over the wrong axes); the
essentia path, with which the model was trained (ISMIR paper), gives (frames, mels). Here the
librosa log-mel is transposed to (frames, mels) before the package's own normalisation, blocking and
model. The script prints how far ``main``'s librosa output is from that, for the record.

Each clip is 101900 samples (2.31 s, not a multiple of the 1024 hop) so that it gives exactly 100
frames, one full embedding block: the package's embedding of a clip is then its model on the whole
log-mel, what our tagger's backbone computes. Clip 0 is tones plus noise at full scale, clip 1 a
quiet chirp with noise bursts (peak 0.05, so peak normalisation matters); both are non-zero at the
edges, where zero (librosa >= 0.9) and reflect padding of the centred STFT differ.

Environment (librosa 0.9.2 and numpy 1.23 as aisfx pins them; numpy 1.23.0 has no wheel for
Python 3.11, so 1.23.5; torch CPU)::

    python3.11 -m venv /work/golden-env-aisfx
    /work/golden-env-aisfx/bin/pip install torch numpy==1.23.5 librosa==0.9.2 tqdm==4.62.3 \
        soundfile "setuptools<70"        # librosa 0.9.2 imports pkg_resources
    /work/golden-env-aisfx/bin/pip install --no-deps aisfx==0.1.2

Run from the repository root: ``/work/golden-env-aisfx/bin/python tools/golden/aisfx.py``; it writes
``tests/golden/aisfx_real.npz`` (``wave``, ``sample_rate``, ``logmel`` before and ``logmel_scaled``
after the package's scaling, both (batch, frames, mels), ``embedding`` (batch, 512), ``source``).
"""

from __future__ import annotations

import os

# The package calls torch.load(checkpoint) without weights_only, written for torch < 2.6 (the pickle
# holds a numpy scalar); this restores that default for the wheel's own file.
os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

import shutil
import sys
import tempfile
from pathlib import Path

import aisfx
import librosa
import numpy as np
import soundfile
import torch
from aisfx import inference, preprocessing, utils

OUT = Path(__file__).resolve().parents[2] / "tests" / "golden" / "aisfx_real.npz"
SEED = 20240607
N_SAMPLES = 101900  # 1 + 101900 // 1024 = 100 frames: exactly one embedding block
EMB_HOP = 0.5  # aisfx.inference.main's default emb_hop_size
DROP_PARTIAL = True  # and drop_partial_block


def seeded_waves() -> np.ndarray:
    """(2, N_SAMPLES) float32, on a 16-bit grid (exact in a float WAV, and compresses in the .npz)."""
    rng = np.random.default_rng(SEED)
    sr = inference.SAMPLE_RATE
    t = np.arange(N_SAMPLES) / sr
    tones = sum(
        a * np.sin(2 * np.pi * f * t + p) for a, f, p in [(0.4, 220, 0.3), (0.2, 1870, 1.1), (0.1, 9300, 2)]
    )
    clip0 = tones + 0.1 * rng.standard_normal(N_SAMPLES)
    chirp = np.sin(2 * np.pi * (100 * t + 2000 * t**2) + 0.7)
    bursts = rng.standard_normal(N_SAMPLES) * (np.sin(2 * np.pi * 3 * t) > 0.6)
    clip1 = chirp + 0.5 * bursts
    waves = np.stack([clip0 / np.abs(clip0).max() * 0.9, clip1 / np.abs(clip1).max() * 0.05])
    return (np.round(waves * 32767) / 32768).astype(np.float32)


def package_pipeline(path: Path, model: torch.nn.Module) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The package's librosa log-mel (frames, mels), its scaled version, and its embedding(s)."""
    compute = utils.spectrogram_selector("librosa")
    spec = compute(
        filename=str(path),
        sr=inference.SAMPLE_RATE,
        block_size=inference.SPEC_BLOCK_LENGTH,
        hop_size=inference.SPEC_HOP_LENGTH,
        n_mels=inference.MEL_BINS,
        f_min=inference.F_MIN,
        f_max=inference.F_MAX,
    )
    assert spec.shape[0] == inference.MEL_BINS, spec.shape  # librosa's (mels, frames)
    logmel = np.ascontiguousarray(spec.T)  # (frames, mels), as the essentia path and the model have it
    scaled = preprocessing.spectrogram_normalize(logmel, spec_norm="original")
    embedding = inference.model_get_embedding(scaled, EMB_HOP, DROP_PARTIAL, model, "cpu").numpy()
    return logmel, scaled, embedding


def main_librosa_embeddings(folder: Path, export: Path) -> dict[str, np.ndarray]:
    """What ``aisfx.inference.main(spectrogram_type="librosa")`` itself writes (untransposed input)."""
    inference.main(str(folder), str(export), spectrogram_type="librosa", use_cuda=False)
    return {p.stem: np.load(p) for p in export.glob("*.npy")}


def main() -> None:
    torch.manual_seed(0)
    waves = seeded_waves()
    weights, ds_dict = inference.load_weights("cpu")
    model = inference.load_bestModel(weights, ds_dict, "cpu")
    assert not model.training
    logmels, scaled, embeddings = [], [], []
    tmp = Path(tempfile.mkdtemp())
    try:
        (tmp / "audio").mkdir()
        for i, wave in enumerate(waves):
            path = tmp / "audio" / f"clip{i}.wav"
            soundfile.write(str(path), wave, int(inference.SAMPLE_RATE), subtype="FLOAT")
            assert np.array_equal(librosa.load(str(path), sr=inference.SAMPLE_RATE)[0], wave)
            logmel, norm, emb = package_pipeline(path, model)
            assert emb.shape == (1, 512), emb.shape  # one block: the whole clip
            logmels.append(logmel)
            scaled.append(norm)
            embeddings.append(emb[0])
        from_main = main_librosa_embeddings(tmp / "audio", tmp / "emb")
    finally:
        shutil.rmtree(tmp)
    for i, emb in enumerate(embeddings):
        other = from_main[f"clip{i}"]
        print(
            f"clip{i}: main(librosa) gives {other.shape}, max |diff| to the (frames, mels) embedding "
            f"{np.abs(other[0] - emb).max():.3g} (embedding max {np.abs(emb).max():.3g})"
        )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        OUT,
        wave=waves,
        sample_rate=np.array(int(inference.SAMPLE_RATE)),
        logmel=np.stack(logmels).astype(np.float32),
        logmel_scaled=np.stack(scaled).astype(np.float32),
        embedding=np.stack(embeddings).astype(np.float32),
        source=np.array(
            f"aisfx {getattr(aisfx, '__version__', '0.1.2')} (PyPI wheel, models/checkpoint.pth), "
            f"librosa {librosa.__version__}, numpy {np.__version__}, torch {torch.__version__}"
        ),
        seed=np.array(SEED),
    )
    print(
        f"{OUT}: logmel {np.stack(logmels).shape}, embedding {np.stack(embeddings).shape}, "
        f"{OUT.stat().st_size / 1e3:.0f} kB",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
