"""Golden fixture for Masked Modeling Duo (M2D), made by running the official runtime.

Official code: github.com/nttcslab/m2d at commit f0c4128d4e89b1ab4e303f03141067b34aadf128
(``m2d/runtime_audio.py``: ``RuntimeM2D``, ``get_backbone``, ``get_to_melspec``), set up as its README
says: ``m2d/models_mae.py`` and ``m2d/pos_embed.py`` from facebookresearch/mae at
efb2a8062c206524e35e47d04501ed4f544c0ae8, ``m2d/timm_layers_pos_embed.py`` from
huggingface/pytorch-image-models at e9373b1b925b2546706d78d25294de596bad4bfe, then ``patch -p1 <
patch_m2d.diff``; an empty ``m2d/__init__.py`` makes ``m2d`` importable as a package. Run with torch
2.9.1, timm 1.0.31, einops 0.8.2 and nnAudio 0.3.4 (installed with ``pip install --target
/tmp/m2d-extra nnAudio --no-deps``, on ``PYTHONPATH``). Nothing of that code is copied here: it is
imported from the extracted copy and run. No shim or monkeypatch is needed.

Set-up and run (outside this repository for the official code)::

    mkdir -p /tmp/official/m2d && cd /tmp/official/m2d
    git --git-dir=<m2d mirror> archive f0c4128d4e89b1ab4e303f03141067b34aadf128 | tar -x
    # (files whose blobs the mirror lacks: the notebooks, not needed)
    git --git-dir=<mae mirror> show efb2a80...:models_mae.py > m2d/models_mae.py   # and the others
    patch -p1 < patch_m2d.diff && touch m2d/__init__.py
    cd /work/wt-m2d && PYTHONPATH=/tmp/m2d-extra /work/golden-env/bin/python tools/golden/m2d.py \
        --official /tmp/official/m2d

The official runtime takes a checkpoint path and reads the input size from its folder name
(``m2d_vit_base-80x48p16x16-...``), so the seeded checkpoints are written under such folders in a
temporary directory. One fixture, ``tests/golden/m2d_16k.npz`` (weights are never stored: the seed
and key list, see ``tests/golden_weights.py``):

- ``wave``: two 0.8-s clips at 16 kHz as int16 (tones + noise with a DC offset; a chirp ending in
  digital silence), read as ``int16 / 32768`` float32: 81 frames.
- Case A, ``m2d_audioset`` layout: EVAR's fine-tuned file (``module.ar.runtime.backbone.*``, the
  front-end buffers ``module.ar.runtime.to_spec.*``, ``module.head.norm.*`` and
  ``module.head.mlp.mlp.0.*`` with 527 classes), seed ``SEED``, input size 80x48 (a 5x3 patch grid,
  so the 81 frames make two chunks, the second zero-padded from 33 to 48 frames) and ``norm_stats``
  ``NORM_STATS`` (not the default, so a wrong normalisation shows). ``RuntimeM2D(num_classes=527)``:
  ``logmel`` (``to_feature``, before normalisation, as (batch, frames, mels)), ``embedding`` (the
  mean of the patch tokens, the input of ``head_norm``), ``output`` (logits, eval mode),
  ``scene`` (``get_scene_embeddings`` with ``flat_features`` False: 3840-d, the last block),
  ``scene_block6`` (``encode_lms(return_layers=True)[5]``, the 6th block, averaged over time),
  ``train_embedding`` (``RuntimeM2D(training_mask=0.5)`` in train mode, ``np.random.seed`` and
  ``torch.manual_seed(TRAIN_SEED)`` just before the forward: the mean of the kept tokens).
- Cases B and C, ``m2d`` layout: an encoder-only file (the encoder keys of case A without prefix,
  no ``norm_stats``, so the official default -7.1, 4.2 applies) whose ``pos_embed`` is seeded anew
  for a 5x2 grid (B, ``80x32``) or a 5x8 grid (C, ``80x128``), loaded with ``dur_frames=81``: the
  official code interpolates B's grid to 5 columns (bicubic) and cuts C's to its first 5, and
  encodes the 81 frames whole. ``scene_interpolated`` and ``scene_trimmed``: ``get_scene_embeddings``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests.golden_weights import GOLDEN_DIR, pack_shapes, seeded_state, seeded_tensor  # noqa: E402

COMMIT = "f0c4128d4e89b1ab4e303f03141067b34aadf128"
SOURCE = f"nttcslab/m2d@{COMMIT}"
SR = 16000
SAMPLES = 12800  # 0.8 s: 81 frames
SEED = 2210  # case A's weights
POS_SEEDS = {"interpolated": 32, "trimmed": 128}  # cases B and C: the seed and input frames of pos_embed
NORM_STATS = (-6.5, 4.5)
TRAIN_SEED = 7
WAVE_SEED = 1006
DIM, DEPTH = 768, 12
EVAR = "module.ar.runtime.backbone."


def golden_wave(seed: int) -> np.ndarray:
    """(2, SAMPLES) int16: tones + noise + DC; a chirp whose envelope ends in digital silence."""
    rng = np.random.default_rng(seed)
    t = np.arange(SAMPLES) / SR
    first = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.15 * np.sin(2 * np.pi * 2750 * t + 1.0)
    first += 0.03 * rng.standard_normal(SAMPLES) + 0.05
    phase = 2 * np.pi * (100 * t + (6000 - 100) / (2 * t[-1]) * t**2)
    second = 0.4 * np.sin(np.pi * t / t[-1]) * np.sin(phase) + 0.01 * rng.standard_normal(SAMPLES)
    second[int(0.65 * SR) :] = 0.0
    return np.round(np.stack([first, second]) * 32767).astype(np.int16)


def evar_shapes() -> list[tuple[str, tuple[int, ...]]]:
    """Case A's key list: EVAR's fine-tuned file of a 80x48 M2D (5x3 grid), 527 classes."""
    shapes = [(f"{EVAR}cls_token", (1, 1, DIM)), (f"{EVAR}pos_embed", (1, 1 + 5 * 3, DIM))]
    shapes += [(f"{EVAR}patch_embed.proj.weight", (DIM, 1, 16, 16)), (f"{EVAR}patch_embed.proj.bias", (DIM,))]
    for i in range(DEPTH):
        block = f"{EVAR}blocks.{i}."
        shapes += [(block + "norm1.weight", (DIM,)), (block + "norm1.bias", (DIM,))]
        shapes += [(block + "attn.qkv.weight", (3 * DIM, DIM)), (block + "attn.qkv.bias", (3 * DIM,))]
        shapes += [(block + "attn.proj.weight", (DIM, DIM)), (block + "attn.proj.bias", (DIM,))]
        shapes += [(block + "norm2.weight", (DIM,)), (block + "norm2.bias", (DIM,))]
        shapes += [(block + "mlp.fc1.weight", (4 * DIM, DIM)), (block + "mlp.fc1.bias", (4 * DIM,))]
        shapes += [(block + "mlp.fc2.weight", (DIM, 4 * DIM)), (block + "mlp.fc2.bias", (DIM,))]
    shapes += [(f"{EVAR}norm.weight", (DIM,)), (f"{EVAR}norm.bias", (DIM,))]
    spec = "module.ar.runtime.to_spec."
    shapes += [(spec + "mel_basis", (80, 201)), (spec + "stft.wsin", (201, 1, 400))]
    shapes += [(spec + "stft.wcos", (201, 1, 400)), (spec + "stft.window_mask", (400,))]
    shapes += [("module.head.norm.running_mean", (DIM,)), ("module.head.norm.running_var", (DIM,))]
    shapes += [("module.head.norm.num_batches_tracked", ())]
    shapes += [("module.head.mlp.mlp.0.weight", (527, DIM)), ("module.head.mlp.mlp.0.bias", (527,))]
    return shapes


def evar_state(shapes: list[tuple[str, tuple[int, ...]]]) -> dict[str, torch.Tensor]:
    """Case A's checkpoint: the seeded tensors and ``norm_stats`` (the tests rebuild it the same way)."""
    state = seeded_state(shapes, SEED)
    state[f"{EVAR}norm_stats"] = torch.tensor(NORM_STATS)
    return state


def encoder_state(evar: dict[str, torch.Tensor], frames: int) -> dict[str, torch.Tensor]:
    """Cases B and C: the encoder of case A without prefix or norm_stats, ``pos_embed`` for 80 x frames."""
    state = {k.removeprefix(EVAR): v for k, v in evar.items() if k.startswith(EVAR) and "norm_stats" not in k}
    state["pos_embed"] = seeded_tensor("pos_embed", (1, 1 + 5 * (frames // 16), DIM), frames)
    return state


def save(state: dict[str, torch.Tensor], work: Path, folder: str) -> str:
    path = work / folder / "weights_ep69it3124-0.00000.pth"
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--official", type=Path, required=True, help="the set-up nttcslab/m2d at " + COMMIT)
    parser.add_argument("--out", type=Path, default=GOLDEN_DIR)
    args = parser.parse_args()
    sys.path.insert(0, str(args.official.resolve()))
    from m2d.runtime_audio import Config, RuntimeM2D  # type: ignore[import-not-found]

    wave16 = golden_wave(WAVE_SEED)
    wave = torch.from_numpy(wave16.astype(np.float32) / 32768)
    shapes = evar_shapes()
    evar = evar_state(shapes)
    out: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        work = Path(tmp)
        a_file = save(evar, work, "m2d_vit_base-80x48p16x16-golden_as")
        runtime = RuntimeM2D(cfg=Config(), weight_file=a_file, num_classes=527).eval()
        assert runtime.cfg.flat_features  # the head takes the mean of the patch tokens (768-d)
        pooled: list[torch.Tensor] = []
        runtime.head_norm.register_forward_pre_hook(lambda _m, a: pooled.append(a[0].squeeze(-1).clone()))
        out["logmel"] = runtime.to_feature(wave)[:, 0].transpose(1, 2).numpy()
        out["output"] = runtime(wave).numpy()
        out["embedding"] = pooled[0].numpy()
        runtime.cfg.flat_features = False  # the 3840-d frame features of EVAR's linear evaluation
        out["scene"] = runtime.get_scene_embeddings(wave).numpy()
        layers = runtime.encode_lms(runtime.to_normalized_spec(wave), return_layers=True)
        assert len(layers) == DEPTH
        out["scene_block6"] = layers[5].mean(dim=1).numpy()

        trainer = RuntimeM2D(cfg=Config(), weight_file=a_file, num_classes=527, training_mask=0.5)
        pooled.clear()
        trainer.head_norm.register_forward_pre_hook(lambda _m, a: pooled.append(a[0].squeeze(-1).clone()))
        trainer.train()
        np.random.seed(TRAIN_SEED)
        torch.manual_seed(TRAIN_SEED)
        trainer(wave)
        out["train_embedding"] = pooled[0].numpy()

        for case, frames in POS_SEEDS.items():
            path = save(encoder_state(evar, frames), work, f"m2d_vit_base-80x{frames}p16x16-golden")
            model = RuntimeM2D(cfg=Config(), weight_file=path, dur_frames=81).eval()
            out[f"scene_{case}"] = model.get_scene_embeddings(wave).numpy()
    path = args.out / "m2d_16k.npz"
    np.savez_compressed(
        path,
        seed=np.int64(SEED),
        **pack_shapes(shapes),
        norm_stats=np.array(NORM_STATS, dtype=np.float32),
        train_seed=np.int64(TRAIN_SEED),
        wave=wave16,
        sample_rate=np.int64(SR),
        **{k: v.astype(np.float32) for k, v in out.items()},
        source=np.array(SOURCE),
    )
    print(
        f"{path}: {path.stat().st_size / 1e3:.0f} kB; " + ", ".join(f"{k} {v.shape}" for k, v in out.items())
    )


if __name__ == "__main__":
    main()
