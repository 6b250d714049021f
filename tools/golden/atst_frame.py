"""Golden fixture for ATST-Frame, made by running the official code.

Official code: github.com/Audio-WestlakeU/audiossl at commit ec3a14db086eaccfb69513e4a90fad89bf992e1f
(``audiossl/methods/atstframe/audio_transformer.py``: ``FrameAST_small``; ``embedding.py``: the
front-end ``melspec_t``, ``to_db``, ``normalize`` and ``get_scene_embedding`` /
``get_timestamp_embedding``, which cut inputs into 1001-frame chunks). Nothing of that code is
copied here: it is imported from an extracted copy and run.

Set-up (outside this repository)::

    mkdir -p /tmp/official/atst
    for f in $(git --git-dir=MIRROR ls-tree -r --name-only ec3a14db audiossl | grep '\\.py$'); do
        mkdir -p /tmp/official/atst/$(dirname $f)
        git --git-dir=MIRROR show ec3a14db:$f > /tmp/official/atst/$f; done
    # (``git archive`` of the mirror stops at a missing data blob; the Python files are all there)

Run from the repository root with the shared golden env (torch 2.9.1, torchaudio 2.9.1,
torchvision 0.24.1, einops)::

    /work/golden-env/bin/python tools/golden/atst_frame.py --official /tmp/official/atst

Shims (none changes what the official code computes):

- ``audiossl.methods.atstframe.random_mask``: ``audio_transformer.py`` imports it, and it imports
  ``fairseq`` (for pre-training masks only). A stand-in empty module is registered.
- ``audiossl.methods.atstframe.model``: ``embedding.py`` imports ``FrameATSTLightningModule`` from it
  (PyTorch Lightning, transformers) for ``load_model`` only. A stand-in is registered and
  ``load_model`` is replaced by what it does after loading: take the teacher encoder (here a
  ``FrameAST_small()`` given the seeded teacher weights with a strict ``load_state_dict``), ``eval()``,
  and ``transform = Compose([melspec_t, to_db, normalize])``.

Fixture ``tests/golden/atst_frame_small.npz`` (weights never stored: seed + key list, see
``tests/golden_weights.py``). The key list is that of the official Lightning checkpoint's
``state_dict``: ``model.teacher.encoder.*`` (all of ``FrameAST_small``: the small model keeps the
tests fast on 2 cores; base differs only in width and head count, 768-d and 12 heads) and, to check that the
converter leaves them out, a few small ``model.student.*`` and ``model.teacher.projector.*`` keys (the
real file has the whole student, projector and predictor). Arrays:

- ``wave``: two seeded clips of 1.5 s at 16 kHz as int16 PCM (``/ 32768`` gives the float input;
  151 frames, of which the official patching keeps 148: 37 tokens). Clip 1 is 30 dB quieter and
  ends in digital silence, so the 80 dB floor relative to each clip's maximum matters.
- ``logmel``: ``to_db(melspec_t(wave))`` (2, 64, 151), before the min-max scaling.
- ``scene``: ``get_scene_embedding`` with ``N_BLOCKS = 12`` (every block's tokens through
  ``norm_frame``, averaged over time, concatenated: (2, 12 * 384)), projected by ``PROJECTION_SEED``
  onto 16 dimensions (``scene_proj``), and ``scene_last`` its last 384 values (the last block).
- ``output``: ``scene_last @ head_weight.T + head_bias``, the head being seeded ``head.fc.*`` keys
  (``N_CLASSES`` classes; in the key list): a linear head on the mean-pooled last block, as the
  official fine-tuning (whose BatchNorm without affine is left out).
- ``timestamp_proj``: ``get_timestamp_embedding`` (12 blocks) of the long clip, clip 0 tiled
  ``LONG_TILES`` times (12 s, 1201 frames: chunks of 1001 and 200 frames, 250 + 50 tokens), each
  40 ms token's 4608 values projected onto 8 dimensions: (1, 300, 8); ``timestamps`` (ms).
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests.golden_weights import GOLDEN_DIR, pack_shapes, seeded_state, shapes_of  # noqa: E402

COMMIT = "ec3a14db086eaccfb69513e4a90fad89bf992e1f"
SOURCE = f"Audio-WestlakeU/audiossl@{COMMIT}"
SR = 16000
SECONDS = 1.5
SEED = 2306  # arXiv 2306.04186
WAVE_SEED = 2023
PROJECTION_SEED = 4186
N_CLASSES = 10
LONG_TILES = 8
TEACHER = "model.teacher.encoder."
DIM = 384  # FrameAST_small
EXTRA_SHAPES = [  # keys the converter must ignore (the real file has many more of them)
    ("model.student.encoder.mask_embed", (1, 1, DIM)),
    ("model.student.encoder.pos_embed", (1, 251, DIM)),
    ("model.student.encoder.norm_frame.weight", (DIM,)),
    ("model.teacher.projector.1.running_mean", (4096,)),
    ("model.teacher.projector.1.running_var", (4096,)),
]


def golden_wave(seed: int) -> np.ndarray:
    """Two clips as int16 PCM: tones + noise; a quieter chirp with an envelope ending in silence."""
    rng = np.random.default_rng(seed)
    n = int(SR * SECONDS)
    t = np.arange(n) / SR
    first = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 3100 * t + 1.0)
    first += 0.02 * rng.standard_normal(n)
    phase = 2 * np.pi * (150 * t + (7000 - 150) / (2 * SECONDS) * t**2)  # 150 Hz -> 7 kHz
    second = 0.03 * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t)) * np.sin(phase) + 0.001 * rng.standard_normal(n)
    second[int(1.2 * SR) :] = 0.0
    return np.round(np.stack([first, second]) * 32768).clip(-32768, 32767).astype(np.int16)


def projection(seed: int, dim: int, width: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((dim, width)) / np.sqrt(dim)


def import_official(official: Path) -> tuple[types.ModuleType, types.ModuleType]:
    """``audio_transformer`` and ``embedding`` of the extracted copy, with the two stand-ins."""
    sys.path.insert(0, str(official))
    sys.modules["audiossl.methods.atstframe.random_mask"] = types.ModuleType("random_mask")
    stand_in = types.ModuleType("audiossl.methods.atstframe.model")
    stand_in.FrameATSTLightningModule = None  # type: ignore[attr-defined]
    sys.modules["audiossl.methods.atstframe.model"] = stand_in
    from audiossl.methods.atstframe import audio_transformer, embedding  # type: ignore[import-not-found]

    return audio_transformer, embedding


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--official", type=Path, required=True, help="extracted audiossl at " + COMMIT)
    parser.add_argument("--out", type=Path, default=GOLDEN_DIR)
    args = parser.parse_args()
    audio_transformer, embedding = import_official(args.official.resolve())
    from torchvision import transforms

    torch.manual_seed(0)  # the official random initialisation is overwritten; fixed for repeatability
    encoder = audio_transformer.FrameAST_small()
    encoder_shapes = [(TEACHER + k, s) for k, s in shapes_of(encoder.state_dict())]
    head_shapes = [("head.fc.weight", (N_CLASSES, DIM)), ("head.fc.bias", (N_CLASSES,))]
    shapes = encoder_shapes + [s for s in EXTRA_SHAPES if s[0] not in dict(encoder_shapes)] + head_shapes
    state = seeded_state(shapes, SEED)
    teacher = {k.removeprefix(TEACHER): v for k, v in state.items() if k.startswith(TEACHER)}
    encoder.load_state_dict(teacher, strict=True)  # every official tensor from the seeded checkpoint
    # embedding.load_model after FrameATSTLightningModule.load_from_checkpoint:
    encoder.eval()
    encoder.transform = transforms.Compose([embedding.melspec_t, embedding.to_db, embedding.normalize])

    pcm = golden_wave(WAVE_SEED)
    audio = torch.from_numpy(pcm.astype(np.float32) / 32768.0)  # (2, samples)
    with torch.no_grad():
        # (batch, 1, samples) as the embedding functions pass it: AmplitudeToDB's top_db floor is then
        # taken per clip (over channel, mel and time), not over the batch
        logmel = embedding.to_db(embedding.melspec_t(audio.unsqueeze(1)))[:, 0]  # (2, 64, frames)
        assert embedding.N_BLOCKS == 12
        scene = embedding.get_scene_embedding(audio, encoder)  # (2, 12 * DIM)
        long = audio[:1].repeat(1, LONG_TILES)
        stamps, times = embedding.get_timestamp_embedding(long, encoder)  # (1, tokens, 12 * DIM)
    scene_last = scene[:, -DIM:].numpy()
    output = scene_last @ state["head.fc.weight"].numpy().T + state["head.fc.bias"].numpy()
    scene_proj = scene.double().numpy() @ projection(PROJECTION_SEED, scene.shape[1], 16)
    timestamp_proj = stamps.double().numpy() @ projection(PROJECTION_SEED + 1, stamps.shape[2], 8)
    assert logmel.shape == (2, 64, 151) and stamps.shape == (1, 300, 12 * DIM), (logmel.shape, stamps.shape)

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "atst_frame_small.npz"
    np.savez_compressed(
        path,
        seed=np.int64(SEED),
        **pack_shapes(shapes),
        wave=pcm,
        sample_rate=np.int64(SR),
        logmel=logmel.numpy().astype(np.float32),
        scene_proj=scene_proj,
        scene_last=scene_last.astype(np.float32),
        output=output.astype(np.float32),
        long_tiles=np.int64(LONG_TILES),
        timestamp_proj=timestamp_proj,
        timestamps=times.numpy().astype(np.float32),
        projection_seed=np.int64(PROJECTION_SEED),
        source=np.array(SOURCE),
    )
    print(
        f"{path}: {path.stat().st_size / 1e3:.0f} kB, logits {output.shape}, "
        f"max |logit| {abs(output).max():.3g}"
    )


if __name__ == "__main__":
    main()
