"""Golden fixtures for the PANNs tagging CNNs, made by running the official code.

Official code: github.com/qiuqiangkong/audioset_tagging_cnn at commit
d2f4b8c18eab44737fcc0de1248ae21eb43f6aa4 (``pytorch/models.py``: ``Cnn14``, ``Cnn14_16k``,
``Cnn10``, ``Cnn6``), with torchlibrosa 0.1.0 (its ``Spectrogram`` + ``LogmelFilterBank``
front-end, as those models build it). Nothing of that code is copied here: it is imported from a
checkout and run.

Set-up (outside this repository; any torch works for PANNs, the AST and BYOL-A scripts need
torchaudio too, so one env serves all of them)::

    python3 -m venv /work/golden-env
    /work/golden-env/bin/pip install torch==2.9.1 torchaudio==2.9.1 torchvision==0.24.1 \
        torchlibrosa==0.1.0 librosa soundfile
    git clone https://github.com/qiuqiangkong/audioset_tagging_cnn /tmp/official/panns
    git -C /tmp/official/panns checkout d2f4b8c18eab44737fcc0de1248ae21eb43f6aa4
    /work/golden-env/bin/python tools/golden/panns.py --official /tmp/official/panns

For each model: every parameter and BatchNorm buffer gets seeded values
(``tests/golden_weights.py``; the front-end's STFT and mel buffers keep the official values),
a fixed seeded waveform runs through the official model in eval mode, and
``tests/golden/panns_<model>.npz`` keeps the seed, the key list, the input, the official log-mel
(``logmel_extractor`` output), the embedding, the clip-wise output and the logits (the input of the
final sigmoid, taken by a forward hook on ``fc_audioset``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests.golden_weights import GOLDEN_DIR, pack_shapes, seeded_state, shapes_of  # noqa: E402

COMMIT = "d2f4b8c18eab44737fcc0de1248ae21eb43f6aa4"
FRONT_END_PREFIXES = ("spectrogram_extractor.", "logmel_extractor.")
MODELS = {
    # fixture name: (official class, sample rate, window, hop, fmax, seed)
    "cnn14_32k": ("Cnn14", 32000, 1024, 320, 14000, 1401),
    "cnn14_16k": ("Cnn14_16k", 16000, 512, 160, 8000, 1402),
    "cnn10": ("Cnn10", 32000, 1024, 320, 14000, 1001),
    "cnn6": ("Cnn6", 32000, 1024, 320, 14000, 601),
}
SECONDS = 1.5


def golden_wave(sample_rate: int, seconds: float, seed: int) -> np.ndarray:
    """Two clips of tones, chirps and noise bursts at levels a recording has (peak about 0.5)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    clips = []
    for _ in range(2):
        x = 0.02 * rng.standard_normal(t.size)
        for _ in range(4):
            f0 = rng.uniform(100, 0.4 * sample_rate / 2)
            env = np.exp(-((t - rng.uniform(0, seconds)) ** 2) / (2 * rng.uniform(0.05, 0.4) ** 2))
            x += rng.uniform(0.05, 0.2) * env * np.sin(2 * np.pi * (f0 + rng.uniform(-50, 50) * t) * t)
        clips.append(x)
    return np.stack(clips).astype(np.float32)


def run_official(models, name: str) -> dict[str, np.ndarray]:
    cls_name, sr, window, hop, fmax, seed = MODELS[name]
    model = getattr(models, cls_name)(
        sample_rate=sr, window_size=window, hop_size=hop, mel_bins=64, fmin=50, fmax=fmax, classes_num=527
    )
    shapes = shapes_of(model.state_dict(), skip=FRONT_END_PREFIXES)
    missing, unexpected = model.load_state_dict(seeded_state(shapes, seed), strict=False)
    assert not unexpected and all(k.startswith(FRONT_END_PREFIXES) for k in missing), (missing, unexpected)
    model.eval()
    seen: dict[str, torch.Tensor] = {}
    model.logmel_extractor.register_forward_hook(lambda m, i, o: seen.__setitem__("logmel", o))
    model.fc_audioset.register_forward_hook(lambda m, i, o: seen.__setitem__("logits", o))
    wave = golden_wave(sr, SECONDS, seed)
    with torch.no_grad():
        out = model(torch.from_numpy(wave))
    return {
        "seed": np.array(seed),
        **pack_shapes(shapes),
        "wave": wave,
        "sample_rate": np.array(sr),
        "logmel": seen["logmel"][:, 0].numpy(),  # (batch, frames, mels)
        "embedding": out["embedding"].numpy(),
        "output": out["clipwise_output"].numpy(),
        "logits": seen["logits"].numpy(),
        "source": np.array(f"qiuqiangkong/audioset_tagging_cnn@{COMMIT} pytorch/models.py {cls_name}"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, required=True, help="checkout of audioset_tagging_cnn")
    parser.add_argument("--only", nargs="*", choices=sorted(MODELS), help="fixtures to write (default: all)")
    args = parser.parse_args()
    sys.path.insert(0, str(args.official / "pytorch"))
    import models  # the official pytorch/models.py

    torch.manual_seed(0)
    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    for name in args.only or MODELS:
        fixture = run_official(models, name)
        path = GOLDEN_DIR / f"panns_{name}.npz"
        np.savez_compressed(path, **fixture)
        print(
            f"{path.relative_to(ROOT)}: logmel {fixture['logmel'].shape}, embedding "
            f"{fixture['embedding'].shape} (|max| {np.abs(fixture['embedding']).max():.3g}), logits "
            f"range {fixture['logits'].min():.3g}..{fixture['logits'].max():.3g}, {path.stat().st_size} bytes"
        )


if __name__ == "__main__":
    main()
