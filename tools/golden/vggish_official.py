"""Golden fixture for VGGish: the official code of tensorflow/models research/audioset/vggish, run
with TensorFlow on seeded weights saved to (and restored from) a V1 checkpoint.

Reference: tensorflow/models at commit 09093db7da85c9808bbbce7bc6e26fd1a049e9af,
``research/audioset/vggish``: ``vggish_slim.py`` (``define_vggish_slim``,
``load_vggish_slim_checkpoint``), ``vggish_input.py`` (``waveform_to_examples``),
``mel_features.py``, ``vggish_params.py``, ``vggish_postprocess.py`` (``Postprocessor``). They are
not in this repository: put them in a folder (``OFFICIAL``, default /tmp/official/vggish) first.

What it does:

1. builds the official graph, sets every variable to seeded values (``seeded_weights``: He-scaled
   normals for the kernels, small normals for the biases, so that the activations neither vanish
   nor explode; ``tests/test_golden_vggish.py`` regenerates the same arrays from the seed), saves
   them with ``tf.train.Saver(write_version=V1)``, the format of the official
   ``vggish_model.ckpt``;
2. restores that file into a fresh graph with the official ``load_vggish_slim_checkpoint`` (a V1
   restore) and runs the official pipeline: ``waveform_to_examples`` on three seeded 16-kHz clips
   (2.2 s, 1.3 s, 2.0 s: two, one and two examples, with frames past the last example dropped),
   the embedding (``vggish/embedding``) and fc1_2 (``vggish/fc1/fc1_2/Relu``), then
   ``Postprocessor.postprocess`` with seeded PCA parameters; clip 0 also with
   ``EXAMPLE_HOP_SECONDS`` 0.48 (overlapping examples);
3. reads the V1 file with our reader (``audiotag.models.tf_checkpoint.read_v1_checkpoint``,
   imported from ``src/``: it needs only numpy) and checks that it gives the seeded arrays exactly:
   the 288 MB file is too big to commit, so the reader is checked on it here, once.

Environment (what worked, Python 3.11)::

    python3.11 -m venv /tmp/tfvenv
    /tmp/tfvenv/bin/pip install tensorflow-cpu==2.21.0 tf_slim==1.1.0 resampy soundfile scipy six

Run from the repository root: ``/tmp/tfvenv/bin/python tools/golden/vggish_official.py``; it
writes ``tests/golden/vggish_official.npz``: ``wave`` (int16 samples, the three clips
concatenated), ``lengths``, ``examples`` (5, 96, 64) float32 and ``example_clip`` (the clip of
each), ``embedding`` (5, 128), ``fc1_2`` (5, 4096), ``pca_means`` (128,), ``pca_eigen_vectors``
(128, 128), ``postprocessed`` (5, 128) uint8, ``hop48_examples`` / ``hop48_embedding`` (clip 0,
hop 0.48 s), ``seed``, ``source``.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import tensorflow.compat.v1 as tf

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests.vggish_seeded import SEED, seeded_weights  # noqa: E402  (numpy only)

OUT = ROOT / "tests" / "golden" / "vggish_official.npz"
OFFICIAL = Path(os.environ.get("OFFICIAL", "/tmp/official/vggish"))
SR = 16000
LENGTHS = (35200, 20800, 32000)  # 2.2 s, 1.3 s, 2.0 s


def seeded_waves() -> list[np.ndarray]:
    """Three clips on a 16-bit grid: a chord with vibrato, a chirp with noise bursts, pink-ish noise."""
    rng = np.random.default_rng(SEED + 1)
    waves = []
    for i, n in enumerate(LENGTHS):
        t = np.arange(n) / SR
        if i == 0:
            vibrato = 0.003 * np.sin(2 * np.pi * 5 * t)
            chord = [(1, 220), (0.6, 277.2), (0.4, 329.6)]
            w = sum(a * np.sin(2 * np.pi * f * (t + vibrato)) for a, f in chord)
        elif i == 1:
            w = np.sin(2 * np.pi * (150 * t + 2500 * t**2))
            w = w + 0.5 * rng.standard_normal(n) * (np.sin(2 * np.pi * 3 * t) > 0.6)
        else:
            w = np.convolve(rng.standard_normal(n), np.exp(-np.arange(64) / 8.0), mode="same")
        waves.append(np.round(w / np.abs(w).max() * 0.5 * 32767).astype(np.int16))
    return waves


def main() -> None:
    sys.path.insert(0, str(OFFICIAL))
    import vggish_input
    import vggish_params
    import vggish_postprocess
    import vggish_slim

    tf.disable_v2_behavior()
    weights = seeded_weights(SEED)
    tmp = Path(tempfile.mkdtemp())
    ckpt = tmp / "vggish_seeded.ckpt"
    with tf.Graph().as_default(), tf.Session() as sess:
        vggish_slim.define_vggish_slim(training=False)
        variables = {v.op.name: v for v in tf.global_variables()}
        assert sorted(variables) == sorted(weights), sorted(variables)
        for name, value in weights.items():
            variables[name].load(value, sess)
        tf.train.Saver(write_version=tf.train.SaverDef.V1).save(sess, str(ckpt), write_meta_graph=False)

    waves = seeded_waves()
    examples, clip_of = [], []
    for i, wave in enumerate(waves):
        batch = vggish_input.waveform_to_examples(wave / 32768.0, SR)
        examples.append(batch)
        clip_of += [i] * len(batch)
    batch = np.concatenate(examples).astype(np.float32)
    vggish_params.EXAMPLE_HOP_SECONDS = 0.48
    hop48 = vggish_input.waveform_to_examples(waves[0] / 32768.0, SR).astype(np.float32)
    vggish_params.EXAMPLE_HOP_SECONDS = 0.96

    with tf.Graph().as_default(), tf.Session() as sess:
        vggish_slim.define_vggish_slim(training=False)
        vggish_slim.load_vggish_slim_checkpoint(sess, str(ckpt))  # the official V1 restore
        features = sess.graph.get_tensor_by_name(vggish_params.INPUT_TENSOR_NAME)
        embedding = sess.graph.get_tensor_by_name(vggish_params.OUTPUT_TENSOR_NAME)
        fc1_2 = sess.graph.get_tensor_by_name("vggish/fc1/fc1_2/Relu:0")
        emb, fc = sess.run([embedding, fc1_2], feed_dict={features: batch})
        (emb48,) = sess.run([embedding], feed_dict={features: hop48})

    rng = np.random.default_rng(SEED + 2)  # PCA parameters that spread the output over 0..255
    q, _ = np.linalg.qr(rng.standard_normal((128, 128)))
    pca_means = (emb.mean(axis=0) + 0.1 * rng.standard_normal(128)).astype(np.float32)
    pca_vectors = (q / (emb.std() + 1e-6)).astype(np.float32)
    pca_file = tmp / "pca.npz"
    np.savez(pca_file, pca_eigen_vectors=pca_vectors, pca_means=pca_means)
    postprocessed = vggish_postprocess.Postprocessor(str(pca_file)).postprocess(emb)
    clipped = np.mean((postprocessed == 0) | (postprocessed == 255))
    print(f"postprocessed: {clipped:.2f} clipped", file=sys.stderr)

    sys.path.insert(0, str(ROOT / "src"))
    from audiotag.models.tf_checkpoint import read_v1_checkpoint

    ours = read_v1_checkpoint(ckpt)
    assert sorted(ours) == sorted(weights)
    for name, value in weights.items():
        assert ours[name].dtype == value.dtype and np.array_equal(ours[name], value), name
    size, sha = ckpt.stat().st_size, hashlib.sha256(ckpt.read_bytes()).hexdigest()
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()

    np.savez_compressed(
        OUT,
        wave=np.concatenate(waves),
        lengths=np.array(LENGTHS),
        sample_rate=np.array(SR),
        examples=batch,
        example_clip=np.array(clip_of),
        embedding=emb.astype(np.float32),
        fc1_2=fc.astype(np.float32),
        pca_means=pca_means,
        pca_eigen_vectors=pca_vectors,
        postprocessed=postprocessed,
        hop48_examples=hop48,
        hop48_embedding=emb48.astype(np.float32),
        seed=np.array(SEED),
        source=np.array(
            f"tensorflow/models 09093db7 research/audioset/vggish, tensorflow {tf.__version__}, numpy "
            f"{np.__version__}; V1 checkpoint of the seeded weights: {size} bytes, sha256 {sha}, read "
            "by audiotag's read_v1_checkpoint identically"
        ),
    )
    print(f"{OUT}: {OUT.stat().st_size / 1e3:.0f} kB; {len(batch)} examples", file=sys.stderr)


if __name__ == "__main__":
    main()
