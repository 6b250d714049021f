"""Seeded weights for the golden fixtures: the same numbers from a key list, in any torch version.

``tools/golden/*.py`` build each official model, fill every parameter and BatchNorm buffer it names
with ``seeded_state`` and save the key list, the input and the official outputs in
``tests/golden/*.npz``. A test rebuilds the identical state dict from the key list alone (numpy's
PCG64 stream, seeded by the fixture seed and a CRC of the key, is stable across versions and does
not depend on the order in which a model creates its modules) and loads it through our converter.

Values are scaled so activations stay in a sensible range through deep stacks: weights ~
N(0, 1/fan_in), BatchNorm running variances in [0.5, 1.5], other vectors small around their
identity (LayerNorm/BatchNorm scales near 1, biases and means near 0); position embeddings and
class tokens ~ N(0, 0.25), large enough that a wrongly adapted grid changes the outputs.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch

GOLDEN_DIR = Path(__file__).parent / "golden"


def seeded_tensor(name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    if name.endswith("num_batches_tracked"):
        return torch.tensor(1, dtype=torch.long)
    if name.endswith("running_var"):
        return torch.from_numpy(rng.uniform(0.5, 1.5, shape).astype(np.float32))
    if "pos_embed" in name or name.endswith("_token"):  # large, so a wrong adaptation shows at once
        return torch.from_numpy((0.5 * rng.standard_normal(shape)).astype(np.float32))
    if len(shape) >= 2:
        fan_in = int(np.prod(shape[1:]))
        return torch.from_numpy((rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32))
    base = 1.0 if name.endswith(("weight", "gamma")) and len(shape) == 1 else 0.0
    return torch.from_numpy((base + 0.1 * rng.standard_normal(shape)).astype(np.float32))


def seeded_state(shapes: Iterable[tuple[str, tuple[int, ...]]], seed: int) -> dict[str, torch.Tensor]:
    """``{key: tensor}`` for every ``(key, shape)`` pair, in the given order."""
    return {name: seeded_tensor(name, tuple(int(s) for s in shape), seed) for name, shape in shapes}


def shapes_of(
    state: Mapping[str, torch.Tensor], skip: tuple[str, ...] = ()
) -> list[tuple[str, tuple[int, ...]]]:
    """The ``(key, shape)`` list of a state dict, leaving out keys that start with ``skip``."""
    return [(k, tuple(v.shape)) for k, v in state.items() if not k.startswith(skip)]


def pack_shapes(shapes: list[tuple[str, tuple[int, ...]]]) -> dict[str, np.ndarray]:
    """The key list as two arrays an ``.npz`` can hold (names, and shapes padded with -1)."""
    width = max((len(s) for _, s in shapes), default=0)
    table = np.full((len(shapes), width), -1, dtype=np.int64)
    for i, (_, shape) in enumerate(shapes):
        table[i, : len(shape)] = shape
    return {"state_keys": np.array([k for k, _ in shapes]), "state_shapes": table}


def unpack_shapes(fixture: Mapping[str, np.ndarray]) -> list[tuple[str, tuple[int, ...]]]:
    keys = [str(k) for k in fixture["state_keys"]]
    return [
        (k, tuple(int(s) for s in row if s >= 0))
        for k, row in zip(keys, fixture["state_shapes"], strict=True)
    ]


def load_fixture(name: str) -> dict[str, np.ndarray]:
    """``tests/golden/<name>.npz`` as a dict (the arrays are read at once)."""
    with np.load(GOLDEN_DIR / f"{name}.npz", allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def fixture_state(fixture: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The seeded state dict a fixture was made with, in the official key layout."""
    return seeded_state(unpack_shapes(fixture), int(fixture["seed"]))


def max_diff(ours: torch.Tensor | np.ndarray, official: np.ndarray) -> float:
    """Largest absolute difference of two arrays of the same shape, computed in float64."""
    ours = ours.detach().cpu().numpy() if isinstance(ours, torch.Tensor) else np.asarray(ours)
    assert ours.shape == official.shape, (ours.shape, official.shape)
    return float(np.abs(ours.astype(np.float64) - official.astype(np.float64)).max())


def assert_close(ours: torch.Tensor, official: np.ndarray, atol: float, rtol: float, what: str) -> None:
    """``max|ours - official| <= atol + rtol * max|official|``, naming ``what`` and both numbers."""
    bound = atol + rtol * float(np.abs(official).max())
    diff = max_diff(ours, official)
    assert diff <= bound, f"{what}: max abs difference {diff:.3g} > {bound:.3g}"
