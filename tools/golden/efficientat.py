"""Golden fixtures for EfficientAT's MobileNets (mn04, mn10, mn40), made by running the official code.

Official code: github.com/fschmid56/EfficientAT at commit a425fdce92572e602a1d5634799bd9f1f2efa806
(``models/mn/model.py``: ``get_model``; ``models/mn/block_types.py``; ``models/preprocess.py``:
``AugmentMelSTFT``), run with torch 2.9.1, torchaudio 2.9.1 and torchvision 0.24.1 (its
``ConvNormActivation``). Nothing of that code is copied here: it is imported from an extracted copy
and run. No shim or monkeypatch is needed: ``pretrained_name=None`` downloads nothing;
``helpers/utils.py`` reads ``metadata/class_labels_indices.csv`` relative to the working directory
when imported, so the import runs from the extracted copy's root.

Set-up (outside this repository)::

    mkdir -p /tmp/official/efficientat
    git --git-dir=/path/to/EfficientAT.git archive a425fdce92572e602a1d5634799bd9f1f2efa806 \
        | tar -x -C /tmp/official/efficientat
    /work/golden-env/bin/python tools/golden/efficientat.py --official /tmp/official/efficientat

For each width: ``get_model(width_mult=w, pretrained_name=None, head_type="mlp", se_dims="c",
num_classes=527)`` (what ``inference.py`` and ``ex_audioset.py`` build for the ``mn*_as``
checkpoints) gets seeded values in every parameter and BatchNorm buffer (``tests/golden_weights.py``;
its state dict is exactly what the released ``.pt`` files hold), loaded strictly. A seeded two-clip
batch of exactly 0.5 s at 32 kHz (16000 samples, on the 16-bit grid: the one-sample-shorter
pre-emphasised wave gives 50 frames, not 51; 50 is not a multiple of 32, so the stride-2
convolutions' padding matters) goes
through ``AugmentMelSTFT(n_mels=128, sr=32000, win_length=800, hopsize=320, n_fft=1024)`` in eval
mode (no fmin/fmax jitter, no masking) and the model in eval mode.

To keep the fixtures small (tens of kB), the input is stored once: ``tests/golden/efficientat_frontend.npz``
holds ``wave`` (int16 samples; the float wave is ``wave / 32768``) and ``model_input`` (the official
normalised log-mel ``(x + 4.5) / 5``, transposed to (batch, frames, mels)), which every model took.
``tests/golden/efficientat_<model>.npz`` keeps the seed, the width, the key list, ``embedding``
(the pooled ``features`` the model returns), ``output`` (logits) and, for the layer check,
``block5``/``block11``/``block15`` (``features[i]`` outputs averaged over frequency, (batch, C,
frames_i), from ``_forward_impl(return_fmaps=True)``).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests.golden_weights import GOLDEN_DIR, pack_shapes, seeded_state, shapes_of  # noqa: E402

COMMIT = "a425fdce92572e602a1d5634799bd9f1f2efa806"
SOURCE = f"fschmid56/EfficientAT@{COMMIT}"
SR = 32000
SECONDS = 0.5
MODELS = {"mn04": (0.4, 404), "mn10": (1.0, 1001), "mn40": (4.0, 4004)}  # name: (width, seed)
WAVE_SEED = 2023
BLOCKS = (5, 11, 15)


def golden_wave(seed: int) -> np.ndarray:
    """Two clips: tones + noise + a DC offset; a chirp up to 14 kHz with an envelope, then silence."""
    rng = np.random.default_rng(seed)
    n = int(SR * SECONDS)
    t = np.arange(n) / SR
    tones = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 5500 * t + 1.0)
    first = tones + 0.03 * rng.standard_normal(n) + 0.05
    phase = 2 * np.pi * (100 * t + (14000 - 100) / (2 * SECONDS) * t**2)
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 1.5 * t)) * 0.4
    second = envelope * np.sin(phase) + 0.01 * rng.standard_normal(n)
    second[int(0.4 * SR) :] = 0.0
    return np.round(np.stack([first, second]) * 32768).astype(np.int16)


def import_official(official: Path) -> tuple[object, type]:
    sys.path.insert(0, str(official))
    with contextlib.chdir(official):
        from models.mn.model import get_model  # type: ignore[import-not-found]
        from models.preprocess import AugmentMelSTFT  # type: ignore[import-not-found]
    return get_model, AugmentMelSTFT


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--official", type=Path, required=True, help="extracted EfficientAT at " + COMMIT)
    parser.add_argument("--out", type=Path, default=GOLDEN_DIR)
    args = parser.parse_args()
    get_model, mel_cls = import_official(args.official.resolve())
    torch.manual_seed(0)
    wave = golden_wave(WAVE_SEED)
    mel = mel_cls(n_mels=128, sr=SR, win_length=800, hopsize=320, n_fft=1024).eval()
    with torch.no_grad():
        spec = mel(torch.from_numpy(wave.astype(np.float32) / 32768))  # (batch, mels, frames), normalised
    assert spec.shape == (2, 128, 50), spec.shape
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out / "efficientat_frontend.npz",
        wave=wave,
        sample_rate=np.int64(SR),
        model_input=spec.transpose(1, 2).numpy().astype(np.float32),
        source=np.array(SOURCE),
    )
    for name, (width, seed) in MODELS.items():
        model = get_model(
            width_mult=width, pretrained_name=None, head_type="mlp", se_dims="c", num_classes=527
        )
        shapes = shapes_of(model.state_dict())
        model.load_state_dict(seeded_state(shapes, seed), strict=True)
        model.eval()
        with torch.no_grad():
            output, embedding = model(spec.unsqueeze(1))
            _, fmaps = model._forward_impl(spec.unsqueeze(1), return_fmaps=True)
        blocks = {f"block{i}": fmaps[i].mean(dim=2).numpy() for i in BLOCKS}
        path = args.out / f"efficientat_{name}.npz"
        np.savez_compressed(
            path,
            seed=np.int64(seed),
            width=np.float64(width),
            **pack_shapes(shapes),
            embedding=embedding.numpy(),
            output=output.numpy(),
            **blocks,
            source=np.array(SOURCE),
        )
        params = sum(p.numel() for p in model.parameters()) / 1e6
        size = path.stat().st_size / 1e3
        print(f"{path}: {size:.0f} kB, {params:.2f}M parameters, max |logit| {abs(output).max():.3g}")


if __name__ == "__main__":
    main()
