"""The seeded VGGish weights of the golden fixture, numpy only: ``tools/golden/vggish_official.py``
(run in a TensorFlow environment without torch) writes them into a TF V1 checkpoint, and
``tests/test_golden_vggish.py`` rebuilds the same arrays for our model."""

from __future__ import annotations

import numpy as np

SEED = 20261208
VARIABLES = (  # the official checkpoint's variables, in define_vggish_slim's order
    ("vggish/conv1", (3, 3, 1, 64)),
    ("vggish/conv2", (3, 3, 64, 128)),
    ("vggish/conv3/conv3_1", (3, 3, 128, 256)),
    ("vggish/conv3/conv3_2", (3, 3, 256, 256)),
    ("vggish/conv4/conv4_1", (3, 3, 256, 512)),
    ("vggish/conv4/conv4_2", (3, 3, 512, 512)),
    ("vggish/fc1/fc1_1", (12288, 4096)),
    ("vggish/fc1/fc1_2", (4096, 4096)),
    ("vggish/fc2", (4096, 128)),
)


def seeded_weights(seed: int) -> dict[str, np.ndarray]:
    """Kernels N(0, 2 / fan_in) (He), biases N(0, 0.05), float32, drawn in VARIABLES' order."""
    rng = np.random.default_rng(seed)
    out = {}
    for scope, shape in VARIABLES:
        fan_in = int(np.prod(shape[:-1]))
        kernel = rng.standard_normal(shape, dtype=np.float32)
        kernel *= np.float32(np.sqrt(2.0 / fan_in))
        out[f"{scope}/weights"] = kernel
        out[f"{scope}/biases"] = rng.standard_normal(shape[-1], dtype=np.float32) * np.float32(0.05)
    return out
