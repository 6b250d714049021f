"""Tiny TensorFlow V1 checkpoints for the V1 reader's tests (models/tf_checkpoint.py).

VGGish's official ``vggish_model.ckpt`` is in TensorFlow's old V1 format (one file; the official
``load_vggish_slim_checkpoint`` restores it with ``tf.train.Saver(..., write_version=1)``). This
script writes the same format with real TensorFlow (``tf.compat.v1.train.Saver(write_version=
SaverDef.V1)``): ``ckpt``, seeded variables of nine dtypes and shapes (one scalar, one empty, an
Adam slot under a variable's name, a string) under shared prefixes, enough keys to span several
restart intervals; ``partitioned.ckpt``, one variable saved as two slices (which the reader
refuses); and ``expected.npz``, every numeric variable as ``tf.train.load_checkpoint`` reads it back
(float16, which TF's V1 reader does not implement: the value saved).

Environment: the TF venv of tools/golden/vggish_official.py (tensorflow-cpu 2.21.0). Run from the
repository root: ``/tmp/tfvenv/bin/python tools/golden/tf_checkpoint_v1.py``; it writes
``tests/golden/tf_checkpoint_v1/``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import tensorflow.compat.v1 as tf

OUT = Path(__file__).resolve().parents[2] / "tests" / "golden" / "tf_checkpoint_v1"
SEED = 11


def save(variables: dict[str, np.ndarray], path: Path, partitioned: str | None = None) -> None:
    with tf.Graph().as_default():
        for name, value in variables.items():
            tf.get_variable(name, initializer=tf.constant(value))
        if partitioned:
            tf.get_variable(
                partitioned,
                shape=(4, 3),
                initializer=tf.constant_initializer(1.5),
                partitioner=tf.fixed_size_partitioner(2),
            )
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            tf.train.Saver(write_version=tf.train.SaverDef.V1).save(sess, str(path), write_meta_graph=False)


def main() -> None:
    tf.disable_v2_behavior()
    rng = np.random.default_rng(SEED)
    variables = {
        "net/float32_matrix": rng.standard_normal((3, 5)).astype(np.float32),
        "net/float32_matrix/Adam": rng.standard_normal((3, 5)).astype(np.float32),
        "net/float64_vector": rng.standard_normal(4),
        "net/float16_kernel": rng.standard_normal((2, 3, 1, 4)).astype(np.float16),
        "net/int64_scalar": np.int64(-1234567890123),
        "net/int32_vector": rng.integers(-1000, 1000, 6).astype(np.int32),
        "net/int8_vector": np.array([-128, -1, 0, 127], np.int8),
        "net/uint8_vector": np.array([0, 1, 254, 255], np.uint8),
        "net/bool_vector": np.array([True, False, True]),
        "net/empty": np.zeros((0, 3), np.float32),
        "net/name": np.array(b"a string, skipped"),
    }
    for i in range(33):  # many keys sharing a prefix: prefix compression and restart points
        variables[f"net/layer_{i:02d}/bias"] = rng.standard_normal(i % 5 + 1).astype(np.float32)
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    save(variables, OUT / "ckpt")
    save({"other": np.zeros(2, np.float32)}, OUT / "partitioned.ckpt", partitioned="split")
    for leftover in OUT.glob("checkpoint"):
        leftover.unlink()
    reader = tf.train.load_checkpoint(str(OUT / "ckpt"))
    # TF's V1 reader does not implement float16 (UnimplementedError): that one is the value saved
    expected = {
        key: reader.get_tensor(key) if dtype != tf.float16 else variables[key]
        for key, dtype in reader.get_variable_to_dtype_map().items()
        if dtype != tf.string
    }
    np.savez(OUT / "expected.npz", **expected)
    print(sorted(p.name for p in OUT.iterdir()), len(expected), "tensors")


if __name__ == "__main__":
    main()
