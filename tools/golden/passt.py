"""Golden fixtures for PaSST, made by running the official code.

Official code: github.com/kkoutini/PaSST at commit 2a5c818afcc2a215b2a1aaf1ed8be71f89d43201
(``models/preprocess.py``: ``AugmentMelSTFT``, the front-end; ``models/passt.py``: ``PaSST``,
``get_model``, ``checkpoint_filter_fn``; ``models/helpers/vit_helpers.py``: ``load_pretrained``).
Nothing of that code is copied here: it is imported from an extracted copy and run.

Set-up (outside this repository)::

    mkdir -p /tmp/official/passt
    git --git-dir=/path/to/PaSST.git archive 2a5c818afcc2a215b2a1aaf1ed8be71f89d43201 \
        | tar -x -C /tmp/official/passt

Run from the repository root, with the shared golden env (torch 2.9.1, torchaudio 2.9.1, timm)::

    /work/golden-env/bin/python tools/golden/passt.py --official /tmp/official/passt

Shims (none changes what the official code computes):

- ``ba3l.ingredients.ingredient``: both modules register their functions with a sacred
  ``Ingredient`` (``@model_ing.command``); a stand-in whose ``command`` returns the function
  unchanged is registered, so sacred and the rest of ``ba3l`` are not needed.
- ``models.helpers.vit_helpers.download_cached_file``: the official pretrained path downloads the
  release file; it is replaced by a function returning the path of the seeded checkpoint, written
  with ``torch.save`` as a plain state dict (the release files' format). The official
  ``load_pretrained`` then reads it with ``torch.load``, runs ``checkpoint_filter_fn`` and loads it
  strictly, so every key is checked by the official code too.

Fixtures (weights are never stored, only the seed and the key list; see ``tests/golden_weights.py``):

- ``passt_frontend.npz``: ``wave`` (one 0.5-s clip at 32 kHz, float16 values so it is stored exactly:
  tones, noise and a DC offset, a chirp, then 0.1 s of digital silence) and ``model_input``, the
  output of ``AugmentMelSTFT(n_mels=128, sr=32000, win_length=800, hopsize=320, n_fft=1024,
  freqm=48, timem=192, htk=False, fmin=0.0, fmax=None, norm=1, fmin_aug_range=10,
  fmax_aug_range=2000)`` in eval mode (the settings of ex_audioset.py / ex_fsd50k.py / ex_esc50.py),
  i.e. ``(ln(mel + 1e-5) + 4.5) / 5`` as ``(batch, mels, frames)``: 50 frames.
- ``passt_s10.npz`` / ``passt_s16.npz``: ``get_model(arch="passt_s_swa_p16_128_ap476", fstride=10,
  tstride=10)`` / ``get_model(arch="passt_s_p16_s16_128_ap468", fstride=16, tstride=16)`` with
  ``pretrained=True``, n_classes 527, input 128 x 998: the seeded checkpoint's key list, ``embedding``
  (the mean of the class and distillation tokens after the final norm: the official forward's second
  output) and ``output`` (logits) of the model in eval mode on ``model_input``. 50 frames give 4
  (stride 10) or 3 (stride 16) patch columns, so the official eval rule (the first columns of the
  99- or 62-column time embedding) is what the fixture checks.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests.golden_weights import GOLDEN_DIR, pack_shapes, seeded_state, shapes_of  # noqa: E402

COMMIT = "2a5c818afcc2a215b2a1aaf1ed8be71f89d43201"
SOURCE = f"kkoutini/PaSST@{COMMIT}"
SR = 32000
SECONDS = 0.5
WAVE_SEED = 2110  # arXiv 2110.05069
MODELS = {  # fixture -> (official arch, stride, seed)
    "passt_s10": ("passt_s_swa_p16_128_ap476", 10, 476),
    "passt_s16": ("passt_s_p16_s16_128_ap468", 16, 468),
}


def golden_wave(seed: int) -> np.ndarray:
    """One clip (1, samples): tones + noise + DC, then a chirp, then digital silence; float16 values."""
    rng = np.random.default_rng(seed)
    n = int(SR * SECONDS)
    t = np.arange(n) / SR
    tones = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.15 * np.sin(2 * np.pi * 5500 * t + 1.0)
    wave = tones + 0.03 * rng.standard_normal(n) + 0.05
    chirp = t >= 0.25
    phase = 2 * np.pi * (200 * t + (12000 - 200) / (2 * SECONDS) * t**2)
    wave[chirp] = 0.4 * np.sin(phase[chirp]) + 0.01 * rng.standard_normal(int(chirp.sum()))
    wave[int(0.4 * SR) :] = 0.0
    return wave[None].astype(np.float16).astype(np.float32)


def import_official(official: Path) -> tuple[types.ModuleType, types.ModuleType]:
    """``models.passt`` and ``models.preprocess`` from the extracted copy, with the ba3l stand-in."""

    class Ingredient:
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def command(self, function=None, **kwargs):
            return function if function is not None else (lambda f: f)

        def add_config(self, *args: object, **kwargs: object) -> None:
            pass

    for name in ("ba3l", "ba3l.ingredients"):
        sys.modules[name] = types.ModuleType(name)
    ingredient = types.ModuleType("ba3l.ingredients.ingredient")
    ingredient.Ingredient = Ingredient  # type: ignore[attr-defined]
    sys.modules["ba3l.ingredients.ingredient"] = ingredient
    sys.path.insert(0, str(official))
    import models.passt as passt  # type: ignore[import-not-found]
    import models.preprocess as preprocess  # type: ignore[import-not-found]

    return passt, preprocess


def official_input(preprocess: types.ModuleType, wave: np.ndarray) -> np.ndarray:
    mel = preprocess.AugmentMelSTFT(
        n_mels=128,
        sr=SR,
        win_length=800,
        hopsize=320,
        n_fft=1024,
        freqm=48,
        timem=192,
        htk=False,
        fmin=0.0,
        fmax=None,
        norm=1,
        fmin_aug_range=10,
        fmax_aug_range=2000,
    ).eval()
    with torch.no_grad():
        return mel(torch.from_numpy(wave)).numpy()


def official_model(passt: types.ModuleType, arch: str, stride: int, seed: int, folder: Path):
    """The official model loaded from a seeded checkpoint by its own pretrained path; and the key list."""
    skeleton = passt.get_model(arch=arch, pretrained=False, fstride=stride, tstride=stride)
    shapes = shapes_of(skeleton.state_dict())
    state = seeded_state(shapes, seed)
    path = folder / f"{arch}.pt"
    torch.save(state, path)
    helpers = sys.modules["models.helpers.vit_helpers"]
    helpers.download_cached_file = lambda url, **kwargs: str(path)
    model = passt.get_model(arch=arch, pretrained=True, fstride=stride, tstride=stride).eval()
    for key, value in model.state_dict().items():  # a silently skipped key cannot pass
        assert torch.equal(value, state[key]), key
    return model, shapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", type=Path, default=Path("/tmp/official/passt"))
    args = parser.parse_args()
    torch.manual_seed(0)
    passt, preprocess = import_official(args.official.resolve())
    wave = golden_wave(WAVE_SEED)
    model_input = official_input(preprocess, wave)
    GOLDEN_DIR.mkdir(exist_ok=True)
    np.savez_compressed(
        GOLDEN_DIR / "passt_frontend.npz",
        wave=wave.astype(np.float16),
        model_input=model_input,
        sample_rate=np.int64(SR),
        source=np.array(SOURCE),
    )
    print("frontend", model_input.shape)
    with tempfile.TemporaryDirectory() as tmp:
        for fixture, (arch, stride, seed) in MODELS.items():
            model, shapes = official_model(passt, arch, stride, seed, Path(tmp))
            with torch.no_grad():
                logits, embedding = model(torch.from_numpy(model_input)[:, None])
            np.savez_compressed(
                GOLDEN_DIR / f"{fixture}.npz",
                seed=np.int64(seed),
                arch=np.array(arch),
                stride=np.int64(stride),
                embedding=embedding.numpy(),
                output=logits.numpy(),
                source=np.array(SOURCE),
                **pack_shapes(shapes),
            )
            print(fixture, tuple(logits.shape), float(logits.abs().max()))


if __name__ == "__main__":
    main()
