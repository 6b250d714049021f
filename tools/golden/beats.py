"""Golden fixture for BEATs, made by running the official code.

Official code: github.com/microsoft/unilm at commit 768a3c873f598bb9b4d4dfb9267b099e35f8fe56,
``beats/BEATs.py`` (``BEATs``, ``BEATsConfig``: ``preprocess`` is the front-end, the wave times 2**15
through ``torchaudio.compliance.kaldi.fbank(num_mel_bins=128, sample_frequency=16000,
frame_length=25, frame_shift=10)``, then ``(fbank - 15.41663) / (2 * 6.55582)``), ``beats/backbone.py``
and ``beats/modules.py``. Nothing of that code is copied here: it is imported from an extracted copy
and run, unchanged, with torch 2.9.1 and torchaudio 2.9.1 (no shims are needed: it reads no files and
downloads nothing).

Set-up (outside this repository)::

    mkdir -p /tmp/official/beats
    git --git-dir=/path/to/unilm.git archive 768a3c873f598bb9b4d4dfb9267b099e35f8fe56 beats \\
        | tar -x -C /tmp/official/beats

Run from the repository root::

    /work/golden-env/bin/python tools/golden/beats.py --official /tmp/official/beats/beats

The model is ``BEATs(BEATsConfig(CFG))``, ``CFG`` the architecture of every released checkpoint
(12 blocks of 768, DeepNorm, gated relative position bias with 320 buckets and max distance 800,
``finetuned_model`` with the 527-class ``predictor``), filled with seeded weights
(``tests/golden_weights.py``). The relative-bias table is one module shared by all blocks, saved
under every block's name: its seeded value is block 0's, copied to the other names (as a real file
holds it), which the official strict ``load_state_dict`` then loads. ``label_dict`` is a seeded
permutation of AudioSet's mids (index -> mid), so the test also checks that our loader puts the
classifier rows in ``class_labels_indices.csv`` order.

The fixture (``tests/golden/beats_as2m.npz``; weights are never stored, only the seed and the key
list) holds ``wave`` (two 0.55 s clips at 16 kHz as 16-bit integers: tones + noise + a DC offset; a
chirp ending in digital silence, where the eps floor holds after the 2**15 scaling), ``logmel`` (the
official fbank before normalisation, 53 frames: 3 whole 16-frame patches, 5 frames the patch conv
drops), ``embedding`` (the mean over tokens of the encoder output, the vector the predictor's mean
sees), ``blocks`` (the token mean after blocks ``BLOCKS``, by forward hooks on the official layers),
``output`` (the official logits: the predictor's per-token outputs averaged, of which
``extract_features`` returns the sigmoid), ``label_order`` (the
permutation), and ``buckets``: the official ``_relative_positions_bucket`` for relative positions
-1200..1200 (the clips are too short to reach the log-spaced buckets).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests.golden_weights import GOLDEN_DIR, pack_shapes, seeded_state, shapes_of  # noqa: E402

COMMIT = "768a3c873f598bb9b4d4dfb9267b099e35f8fe56"
SOURCE = f"microsoft/unilm@{COMMIT}"
SR = 16000
SECONDS = 0.55
SEED = 2212
WAVE_SEED = 9058
BLOCKS = (3, 8)
MAX_REL = 1200
CFG = {
    "input_patch_size": 16,
    "embed_dim": 512,
    "conv_bias": False,
    "encoder_layers": 12,
    "encoder_embed_dim": 768,
    "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12,
    "activation_fn": "gelu",
    "layer_norm_first": False,
    "deep_norm": True,
    "conv_pos": 128,
    "conv_pos_groups": 16,
    "relative_position_embedding": True,
    "num_buckets": 320,
    "max_distance": 800,
    "gru_rel_pos": True,
    "finetuned_model": True,
    "predictor_class": 527,
    "dropout": 0.0,
    "attention_dropout": 0.0,
    "activation_dropout": 0.0,
    "encoder_layerdrop": 0.05,
    "dropout_input": 0.0,
    "predictor_dropout": 0.0,
}
SHARED = "self_attn.relative_attention_bias.weight"


def golden_wave(seed: int) -> np.ndarray:
    """Two clips as int16 values: tones + noise + DC; a chirp with an envelope ending in silence."""
    rng = np.random.default_rng(seed)
    n = int(SR * SECONDS)
    t = np.arange(n) / SR
    first = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.15 * np.sin(2 * np.pi * 2750 * t + 1.0)
    first += 0.03 * rng.standard_normal(n) + 0.05
    phase = 2 * np.pi * (100 * t + (6000 - 100) / (2 * SECONDS) * t**2)
    second = 0.4 * np.sin(np.pi * t / SECONDS) * np.sin(phase) + 0.01 * rng.standard_normal(n)
    second[int(0.45 * SR) :] = 0.0
    return np.round(np.stack([first, second]) * 32767).astype(np.int16)


def share_bias(state: dict[str, torch.Tensor], depth: int) -> None:
    """Block 0's relative-bias table under every block's name, as the shared module is saved."""
    for i in range(1, depth):
        state[f"encoder.layers.{i}.{SHARED}"] = state[f"encoder.layers.0.{SHARED}"].clone()


def audioset_mids() -> list[str]:
    with open(ROOT / "src/audiotag/models/audioset_labels.csv", newline="", encoding="utf-8") as f:
        return [row["mid"] for row in csv.DictReader(f)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--official", type=Path, required=True, help="extracted unilm beats/ at " + COMMIT)
    parser.add_argument("--out", type=Path, default=GOLDEN_DIR)
    args = parser.parse_args()
    sys.path.insert(0, str(args.official.resolve()))
    from BEATs import BEATs, BEATsConfig  # type: ignore[import-not-found]

    torch.manual_seed(0)  # the official random initialisation is overwritten; fixed for repeatability
    model = BEATs(BEATsConfig(CFG))
    shapes = shapes_of(model.state_dict())
    state = seeded_state(shapes, SEED)
    share_bias(state, CFG["encoder_layers"])
    model.load_state_dict(state, strict=True)
    layers = model.encoder.layers
    assert all(
        layer.self_attn.relative_attention_bias is layers[0].self_attn.relative_attention_bias
        for layer in layers
    )
    model.eval()

    wave_int = golden_wave(WAVE_SEED)
    wave = torch.from_numpy(wave_int.astype(np.float32) / 32768)
    logmel = model.preprocess(wave, fbank_mean=0.0, fbank_std=0.5).numpy()  # (x - 0) / 1: the raw fbank
    captured: dict[int, torch.Tensor] = {}
    token_logits: list[torch.Tensor] = []
    hooks = [model.predictor.register_forward_hook(lambda _m, _a, out: token_logits.append(out))]
    hooks += [
        layers[b - 1].register_forward_hook(lambda _m, _a, out, b=b: captured.__setitem__(b, out[0]))
        for b in (*BLOCKS, len(layers))
    ]
    with torch.no_grad():
        probs, _ = model.extract_features(wave)
    for hook in hooks:
        hook.remove()
    # hooks see (tokens, batch, dim): the token mean per clip
    blocks = np.stack([captured[b].mean(dim=0).numpy() for b in BLOCKS])
    embedding = captured[len(layers)].mean(dim=0).numpy()
    output = token_logits[0].mean(dim=1)  # the official logits: the token mean it takes the sigmoid of
    assert torch.allclose(torch.sigmoid(output), probs, atol=0, rtol=0)
    output = output.numpy()

    rng = np.random.default_rng(SEED)
    order = rng.permutation(527).astype(np.int16)  # official class j is AudioSet class order[j]
    rel = torch.arange(-MAX_REL, MAX_REL + 1)
    buckets = model.encoder.layers[0].self_attn._relative_positions_bucket(rel).numpy().astype(np.int16)

    path = args.out / "beats_as2m.npz"
    np.savez_compressed(
        path,
        seed=np.int64(SEED),
        **pack_shapes(shapes),
        wave=wave_int,
        sample_rate=np.int64(SR),
        logmel=logmel.astype(np.float32),
        embedding=embedding.astype(np.float32),
        blocks=blocks.astype(np.float32),
        block_numbers=np.array(BLOCKS, dtype=np.int64),
        output=output,
        label_order=order,
        buckets=buckets,
        max_rel=np.int64(MAX_REL),
        source=np.array(SOURCE),
    )
    mids = audioset_mids()
    assert len(mids) == 527 and len(set(mids)) == 527
    print(f"{path}: {path.stat().st_size / 1e3:.1f} kB, logmel {logmel.shape}, logits {output.shape}")
    print(f"max |logit| {abs(output).max():.3g}, logmel range {logmel.min():.2f}..{logmel.max():.2f}")


if __name__ == "__main__":
    main()
