"""Golden fixtures for the timm CNN family: timm's own one-channel model from ImageNet-layout weights.

Reference: timm 1.x from PyPI (the version in the project's venv, ``requirements.lock``). timm
adapts the stem itself when asked for ``in_chans=1`` with pretrained weights (``adapt_input_conv``
in ``timm.models._manipulate``, called by ``timm.models._builder.load_pretrained``), and drops the
ImageNet classifier for ``num_classes=0``. This script never imports ``audiotag``.

For each arch it builds the ImageNet layout (``in_chans=3``, 1000 classes), fills every key with
``tests/golden_weights.seeded_state`` and saves that file; ``timm.create_model(arch,
pretrained=True, in_chans=1, num_classes=0, pretrained_cfg_overlay=dict(file=...))`` then loads it
through timm's own pretrained path. A seeded one-channel log-mel image (2, 1, 64, 96) (mels as
height, frames as width, as ``audiotag.models.timm_cnn`` lays it out) goes through the model in
eval mode; ``forward_features``, the pooled features and ``stages`` (each stage's output of
``forward_intermediates`` averaged over space, concatenated: the early stages depend most on the
stem) are written with the key list to ``tests/golden/timm_<arch>.npz``.

Run from the repository root with the project's venv (timm, torch, safetensors, numpy)::

    .venv/bin/python tools/golden/timm_stem.py            # efficientnet_b0 and resnet18
    .venv/bin/python tools/golden/timm_stem.py resnet18   # just one
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import timm
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests.golden_weights import GOLDEN_DIR, pack_shapes, seeded_state, shapes_of  # noqa: E402

ARCHS = ("efficientnet_b0", "resnet18")
SEED = 20240607
INPUT_SHAPE = (2, 1, 64, 96)  # (batch, channel, mels, frames)


def make_fixture(arch: str) -> Path:
    layout = timm.create_model(arch, pretrained=False, in_chans=3, num_classes=1000)
    shapes = shapes_of(layout.state_dict())
    state = seeded_state(shapes, SEED)
    image = np.random.default_rng([SEED, 1]).standard_normal(INPUT_SHAPE).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        model = timm.create_model(
            arch, pretrained=True, in_chans=1, num_classes=0, pretrained_cfg_overlay=dict(file=str(path))
        ).eval()
    stem = model.pretrained_cfg["first_conv"]
    loaded = model.state_dict()[f"{stem}.weight"]
    assert loaded.shape[1] == 1 and not torch.equal(loaded, state[f"{stem}.weight"][:, :1]), (
        "stem not adapted"
    )
    with torch.no_grad():
        x = torch.from_numpy(image)
        features = model.forward_features(x)
        pooled = model(x)  # num_classes=0: the globally pooled features (timm's forward_head)
        # each stage's output averaged over space: with seeded weights the input's effect fades by
        # ~10x per EfficientNet stage, so the early stages are where the stem is really checked
        stages = torch.cat(
            [s.mean(dim=(2, 3)) for s in model.forward_intermediates(x, intermediates_only=True)], 1
        )
    out = GOLDEN_DIR / f"timm_{arch}.npz"
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out,
        arch=np.array(arch),
        input=image,
        features=features.numpy().astype(np.float32),
        embedding=pooled.numpy().astype(np.float32),
        stages=stages.numpy().astype(np.float32),
        stem_key=np.array(stem),
        source=np.array(f"timm {timm.__version__} (PyPI), torch {torch.__version__}"),
        seed=np.array(SEED),
        **pack_shapes(shapes),
    )
    print(
        f"{out.relative_to(ROOT)}: features {tuple(features.shape)} |x|max {features.abs().max():.3g}, "
        f"embedding {tuple(pooled.shape)} std {pooled.std():.3g}, {out.stat().st_size / 1e3:.0f} kB"
    )
    return out


def main(argv: list[str]) -> None:
    torch.manual_seed(0)
    for arch in argv or ARCHS:
        make_fixture(arch)


if __name__ == "__main__":
    main(sys.argv[1:])
