"""Golden fixture for musicnn: the PyPI package musicnn 0.1.0 run with TensorFlow, real weights.

Reference: ``musicnn==0.1.0`` from PyPI (Pons & Serra 2019; its wheel ships the TF1 checkpoints
``musicnn/MTT_musicnn/`` and ``musicnn/MSD_musicnn/``), run through its own code:
``musicnn.extractor.batch_data`` (librosa.load at 16 kHz, ``librosa.feature.melspectrogram`` with
n_fft 512, hop 256, 96 mels, cast to float16, ``np.log10(10000 * x + 1)``, 187-frame patches) and
``musicnn.models.define_model`` restored from the wheel's checkpoint with ``tf.compat.v1.train.Saver``
exactly as ``musicnn.extractor.extractor`` does (graph under ``name_scope('model')``, sigmoid of the
logits, ``is_training: False``). The graph is run here on the whole batch at once because
``extractor``'s loop over later batches re-uses the first batch's cnn1..cnn3; the script checks that
``extractor`` itself gives the same taggram and pooled features on each clip.

Clips (16 kHz, 47616 samples: 1 + 47616 // 256 = 187 frames, one patch), seeded: a chord of three
tones with vibrato, a chirp with noise bursts, and pink-ish noise. Their levels keep every mel value
below 6.55, where musicnn's float16 ``10000 * x`` overflows to inf (a 0.5-amplitude sine already
does: TF then runs on inf and NaN, which no other framework reproduces; our front-end saturates at
float16's largest value instead); the script asserts the official log-mel is finite.

Environment (what worked, Python 3.11; musicnn's metadata pins numpy<1.17, hence --no-deps; with
TensorFlow >= 2.16 ``tf.compat.v1.layers`` needs Keras 2, i.e. tf_keras and TF_USE_LEGACY_KERAS=1)::

    python3.11 -m venv /tmp/tfvenv
    /tmp/tfvenv/bin/pip install tensorflow-cpu==2.21.0 tf_keras==2.21.0 librosa==0.11.0 soundfile
    /tmp/tfvenv/bin/pip install --no-deps musicnn==0.1.0

Run from the repository root:
``TF_USE_LEGACY_KERAS=1 /tmp/tfvenv/bin/python tools/golden/musicnn_package.py``; it writes
``tests/golden/musicnn_real.npz``: ``wave`` (3, 47616), ``logmel`` (3, 187, 96) as the package
computes it (float16 values), and per model ``<model>/taggram`` (3, 50),
``<model>/penultimate`` (3, 200), ``<model>/max_pool``, ``<model>/mean_pool`` (3, 753),
``<model>/cnn3`` (3, 187, 64) for MTT_musicnn only, and ``source``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import librosa
import numpy as np
import soundfile
import tensorflow as tf
from musicnn import configuration as config
from musicnn import extractor as mx
from musicnn import models

OUT = Path(__file__).resolve().parents[2] / "tests" / "golden" / "musicnn_real.npz"
SEED = 20261207
N_SAMPLES = 47616  # 187 frames of hop 256: exactly one 3-s patch
N_FRAMES = 187
MODELS = ("MTT_musicnn", "MSD_musicnn")


def seeded_waves() -> np.ndarray:
    """(3, N_SAMPLES) float32 on a 16-bit grid (exact in a float WAV)."""
    rng = np.random.default_rng(SEED)
    sr = config.SR
    t = np.arange(N_SAMPLES) / sr
    vibrato = 0.003 * np.sin(2 * np.pi * 5 * t)
    chord = sum(a * np.sin(2 * np.pi * f * (t + vibrato)) for a, f in [(1, 220), (0.6, 277.2), (0.4, 329.6)])
    chirp = np.sin(2 * np.pi * (80 * t + 900 * t**2))
    chirp = chirp + 0.5 * rng.standard_normal(N_SAMPLES) * (np.sin(2 * np.pi * 2 * t) > 0.7)
    white = rng.standard_normal(N_SAMPLES)
    pinkish = np.convolve(white, np.exp(-np.arange(64) / 8.0), mode="same")
    waves = [chord, chirp, pinkish]
    peaks = [0.05, 0.06, 0.2]  # below the float16 overflow of 10000 * mel
    out = np.stack([w / np.abs(w).max() * p for w, p in zip(waves, peaks, strict=True)])
    return (np.round(out * 32767) / 32768).astype(np.float32)


def run_graph(model: str, batch: np.ndarray) -> dict[str, np.ndarray]:
    """``extractor``'s graph and checkpoint restore, run on the whole batch."""
    tf.compat.v1.reset_default_graph()
    with tf.name_scope("model"):
        x = tf.compat.v1.placeholder(tf.float32, [None, N_FRAMES, config.N_MELS])
        is_training = tf.compat.v1.placeholder(tf.bool)
        y, _timbral, _temporal, _cnn1, _cnn2, cnn3, mean_pool, max_pool, penultimate = models.define_model(
            x, is_training, model, len(config.MTT_LABELS)
        )
        taggram = tf.nn.sigmoid(y)
    sess = tf.compat.v1.Session()
    sess.run(tf.compat.v1.global_variables_initializer())
    tf.compat.v1.train.Saver().restore(sess, os.path.dirname(mx.__file__) + "/" + model + "/")
    names = ["taggram", "penultimate", "max_pool", "mean_pool", "cnn3"]
    values = sess.run(
        [taggram, penultimate, max_pool, mean_pool, cnn3], feed_dict={x: batch, is_training: False}
    )
    sess.close()
    return dict(zip(names, values, strict=True))


def main() -> None:
    waves = seeded_waves()
    tmp = Path(tempfile.mkdtemp())
    logmels, out = [], {}
    try:
        paths = []
        for i, wave in enumerate(waves):
            path = tmp / f"clip{i}.wav"
            soundfile.write(str(path), wave, config.SR, subtype="FLOAT")
            paths.append(path)
            batch, logmel = mx.batch_data(str(path), N_FRAMES, N_FRAMES)
            assert batch.shape == (1, N_FRAMES, config.N_MELS), batch.shape
            assert np.isfinite(logmel).all(), f"clip {i}: the package's float16 log-mel overflows"
            logmels.append(batch[0])
        batch = np.stack(logmels)
        for model in MODELS:
            got = run_graph(model, batch.astype(np.float32))
            for i, path in enumerate(paths):  # the package's own entry point agrees (batch of 1: TF's
                # float32 kernels round differently, measured 4e-6 on penultimate values of ~2)
                tags, _, feats = mx.extractor(str(path), model=model, extract_features=True)
                assert np.allclose(tags[0], got["taggram"][i], atol=1e-5), model
                assert np.allclose(feats["penultimate"][0], got["penultimate"][i], atol=1e-4), model
            for name, value in got.items():
                if name != "cnn3" or model == "MTT_musicnn":
                    out[f"{model}/{name}"] = np.asarray(value, np.float32).squeeze()
    finally:
        shutil.rmtree(tmp)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        OUT,
        wave=waves,
        sample_rate=np.array(config.SR),
        logmel=batch,  # float16, as the package computes it
        source=np.array(
            f"musicnn 0.1.0 (PyPI wheel), tensorflow {tf.__version__}, librosa {librosa.__version__}, "
            f"numpy {np.__version__}"
        ),
        seed=np.array(SEED),
        **out,
    )
    print(f"{OUT}: {OUT.stat().st_size / 1e3:.0f} kB; {sorted(out)}", file=sys.stderr)


if __name__ == "__main__":
    main()
