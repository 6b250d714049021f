"""A tiny TensorFlow checkpoint for the TensorBundle reader's tests (models/tf_checkpoint.py).

Written by real TensorFlow (``tf.train.Checkpoint`` of seeded variables of several dtypes and
shapes, 40 variables under shared name prefixes so that the table's keys are prefix-compressed and
span more than one restart interval), plus ``expected.npz``: every variable's value by its
checkpoint key, as TensorFlow's own ``tf.train.load_checkpoint`` reads it back.

Environment: the TF venv of tools/golden/musicnn_package.py (tensorflow-cpu 2.21.0). Run from the
repository root: ``/tmp/tfvenv/bin/python tools/golden/tf_checkpoint.py``; it writes
``tests/golden/tf_checkpoint/ckpt.index``, ``ckpt.data-00000-of-00001`` and ``expected.npz``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import tensorflow as tf

OUT = Path(__file__).resolve().parents[2] / "tests" / "golden" / "tf_checkpoint"
SEED = 7


def main() -> None:
    rng = np.random.default_rng(SEED)
    variables = {
        "float32_matrix": tf.Variable(rng.standard_normal((3, 5)).astype(np.float32)),
        "float64_vector": tf.Variable(rng.standard_normal(4)),
        "float16_kernel": tf.Variable(rng.standard_normal((2, 3, 1, 4)).astype(np.float16)),
        "int64_scalar": tf.Variable(np.int64(-1234567890123)),
        "int32_vector": tf.Variable(rng.integers(-1000, 1000, 6).astype(np.int32)),
        "bool_vector": tf.Variable(np.array([True, False, True])),
        "empty": tf.Variable(np.zeros((0, 3), np.float32)),
    }
    for i in range(33):  # many keys sharing a prefix: prefix compression and restart points
        variables[f"layer_{i:02d}_bias"] = tf.Variable(rng.standard_normal(i % 5 + 1).astype(np.float32))
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    tmp = OUT / "tmp"
    path = tf.train.Checkpoint(**variables).write(str(tmp / "ckpt"))
    reader = tf.train.load_checkpoint(path)
    expected = {}
    for key, dtype in reader.get_variable_to_dtype_map().items():
        if dtype != tf.string:
            expected[key] = reader.get_tensor(key)
    for name in ("ckpt.index", "ckpt.data-00000-of-00001"):
        shutil.move(str(tmp / name), OUT / name)
    shutil.rmtree(tmp)
    np.savez(OUT / "expected.npz", **expected)
    print(sorted(p.name for p in OUT.iterdir()), len(expected), "tensors")


if __name__ == "__main__":
    main()
