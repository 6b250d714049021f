"""A fitted linear probe as a file: ``fold<k>/probe.npz`` of a ``linear_probe`` run.

``audiotag.train.probe`` fits one classifier per outer fold on standardised frozen embeddings; what
it predicts with is kept as a :class:`ProbeModel` (the standardiser and a :class:`ProbeHead`) and
written to ``probe.npz`` before ``done.json``, which records the file's size and SHA-256 under
``probe_npz``. ``package`` ships it and the package's inference reads it back with
:func:`load_probe`, which checks that record first. The loaded model computes exactly what the
in-memory predictor of ``train/probe.py`` computes (``tests/test_package_probe.py`` checks each head).

The file is plain NumPy, read with ``np.load(allow_pickle=False)`` (so it cannot run code):

- ``spec``: JSON text: ``format``, ``output`` (below), ``n_classes``, ``input_dtype`` (the embeddings'
  dtype when fitted), ``c`` (the chosen L2 strength), ``classes``, and ``embedding``: the
  ``EmbeddingConfig``, the embedding cache's ``identity`` (model settings, weights SHA-256, feature
  key, input normalisation, windows: what the vectors depend on), ``layers`` (concatenated in this
  order) and their ``dims``;
- ``mean``, ``scale``: the standardiser (scikit-learn ``StandardScaler``'s ``mean_`` and ``scale_``,
  applied as its ``transform`` applies them: in the input's dtype);
- ``present``: the class index of each output column; a class absent from a single-label fold's
  training clips has no column and scores 0 (``_place`` in ``train/probe.py``);
- ``weight0``, ``bias0`` (and ``weight1``, ``bias1`` for the MLP): ``torch.nn.Linear``'s layout,
  ``(out, in)`` and ``(out,)``.

``output`` is how the scores are formed from ``z = x W0^T + b0``:

- ``softmax``: logistic regression over three or more classes (scikit-learn's ``predict_proba``);
- ``binary``: logistic regression fitted on two classes: ``p = expit(z)``, columns ``[1 - p, p]``;
- ``sigmoid``: the multi-label linear head (one-vs-rest logistic regression): ``1 / (1 + exp(-z))``;
- ``mlp_softmax``, ``mlp_sigmoid``: ``head: mlp``, Linear-ReLU-Linear in float32 torch, then softmax
  (single-label) or sigmoid (multi-label);
- ``constant``: the fold's training clips hold one class, which gets probability 1.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from audiotag.core.atomic import atomic_path
from audiotag.core.digests import check_fold_file
from audiotag.core.errors import DataError

PROBE_FILE = "probe.npz"
PROBE_RECORD = "probe_npz"  # the key of done.json that records the file's size and SHA-256
PROBE_FORMAT = 1
N_LAYERS = {"softmax": 1, "binary": 1, "sigmoid": 1, "mlp_softmax": 2, "mlp_sigmoid": 2, "constant": 0}


@dataclass
class ProbeHead:
    """A classifier on standardised embeddings: its layers, how they become scores, and which class
    each output column is."""

    output: str
    n_classes: int
    present: np.ndarray  # int: the class index of each output column
    weights: list[np.ndarray] = field(default_factory=list)
    biases: list[np.ndarray] = field(default_factory=list)

    def __call__(self, xs: np.ndarray) -> np.ndarray:
        """(n, n_classes) float64 scores of standardised rows."""
        if self.output == "constant":
            scores: np.ndarray = np.ones((len(xs), 1))
        elif self.output in ("mlp_softmax", "mlp_sigmoid"):
            scores = self._mlp(xs)
        else:
            z = xs @ self.weights[0].T + self.biases[0]
            if self.output == "sigmoid":
                scores = 1.0 / (1.0 + np.exp(-z))
            elif self.output == "binary":
                from scipy.special import expit

                p = expit(z.reshape(-1))
                scores = np.stack([1 - p, p], axis=1)
            else:  # softmax, as scikit-learn computes it
                z -= z.max(axis=1).reshape(-1, 1)
                np.exp(z, out=z)
                z /= z.sum(axis=1).reshape(-1, 1)
                scores = z
        out = np.zeros((scores.shape[0], self.n_classes))
        out[:, self.present] = scores
        return out

    def _mlp(self, xs: np.ndarray) -> np.ndarray:
        import torch
        from torch.nn import functional

        with torch.no_grad():
            h = torch.as_tensor(xs, dtype=torch.float32)
            (w0, w1), (b0, b1) = (
                [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
                for arrays in (self.weights, self.biases)
            )
            logits = functional.linear(torch.relu(functional.linear(h, w0, b0)), w1, b1)
            probs = torch.softmax(logits, dim=1) if self.output == "mlp_softmax" else torch.sigmoid(logits)
        return probs.double().numpy()


@dataclass
class ProbeModel:
    """One fold's fitted probe: the standardiser, the head, and what it was fitted on (``spec``)."""

    mean: np.ndarray
    scale: np.ndarray
    head: ProbeHead
    spec: dict[str, Any]

    @property
    def layers(self) -> list[str]:
        return [str(name) for name in self.spec["embedding"]["layers"]]

    @property
    def embedding(self) -> dict[str, Any]:
        """The embedding it expects: ``config``, ``identity``, ``layers``, ``dims``."""
        return dict(self.spec["embedding"])

    def standardise(self, x: np.ndarray) -> np.ndarray:
        """scikit-learn's ``StandardScaler.transform``: a float copy, centred and scaled in its dtype."""
        x = np.array(x, dtype=np.dtype(self.spec.get("input_dtype", "float32")), copy=True)
        x -= self.mean.astype(x.dtype)
        x /= self.scale.astype(x.dtype)
        return x

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(n, n_classes) probabilities of raw clip embeddings (the layers concatenated in order)."""
        if x.ndim != 2 or x.shape[1] != self.mean.shape[0]:
            raise DataError(
                f"linear probe: embeddings of shape {x.shape}, expected (n, {self.mean.shape[0]}) "
                f"(layers {', '.join(self.layers)})"
            )
        return self.head(self.standardise(x))


def save_probe(path: Path, model: ProbeModel) -> None:
    """Write ``model`` to ``path`` atomically (plain arrays and one JSON string)."""
    head = model.head
    spec = {**model.spec, "format": PROBE_FORMAT, "output": head.output, "n_classes": head.n_classes}
    arrays: dict[str, np.ndarray] = {
        "spec": np.array(json.dumps(spec, sort_keys=True)),
        "mean": np.asarray(model.mean),
        "scale": np.asarray(model.scale),
        "present": np.asarray(head.present, dtype=np.int64),
    }
    for i, (weight, bias) in enumerate(zip(head.weights, head.biases, strict=True)):
        arrays[f"weight{i}"], arrays[f"bias{i}"] = np.asarray(weight), np.asarray(bias)
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as f:  # a file: savez keeps the name
        np.savez(f, **arrays)


def read_probe(path: Path, remedy: str = "") -> ProbeModel:
    """The probe in ``path`` (not checked against done.json: :func:`load_probe` does that)."""
    path = Path(path)
    tail = f"; {remedy}" if remedy else ""
    try:
        with np.load(path, allow_pickle=False) as data:
            spec = json.loads(str(data["spec"][()]))
            output = spec["output"]
            n_layers = N_LAYERS[output]
            model = ProbeModel(
                mean=data["mean"],
                scale=data["scale"],
                head=ProbeHead(
                    output,
                    int(spec["n_classes"]),
                    data["present"].astype(np.int64),
                    [data[f"weight{i}"] for i in range(n_layers)],
                    [data[f"bias{i}"] for i in range(n_layers)],
                ),
                spec=spec,
            )
    except FileNotFoundError:
        raise DataError(f"{path}: linear probe file not found{tail}") from None
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(
            f"{path}: not a readable linear probe file ({type(exc).__name__}: {exc}){tail}"
        ) from None
    if spec.get("format") != PROBE_FORMAT:
        raise DataError(f"{path}: linear probe format {spec.get('format')!r}, expected {PROBE_FORMAT}{tail}")
    problem = _shape_problem(model)
    if problem:
        raise DataError(f"{path}: inconsistent linear probe file ({problem}){tail}")
    return model


def _shape_problem(model: ProbeModel) -> str | None:
    head, dim = model.head, model.mean.shape[0] if model.mean.ndim == 1 else -1
    if model.scale.shape != model.mean.shape or dim < 0:
        return f"mean {model.mean.shape} and scale {model.scale.shape}"
    if head.present.ndim != 1 or ((head.present < 0) | (head.present >= head.n_classes)).any():
        return f"class columns {head.present.tolist()} for {head.n_classes} classes"
    columns = {"binary": 2, "constant": 1}.get(head.output)
    width = dim
    for weight, bias in zip(head.weights, head.biases, strict=True):
        if weight.ndim != 2 or weight.shape[1] != width or bias.shape != (weight.shape[0],):
            return f"layer of shape {weight.shape} (bias {bias.shape}) on {width} inputs"
        width = weight.shape[0]
    if columns is None:
        columns = width
    elif head.output == "binary" and width != 1:
        return f"a two-class logistic regression with {width} outputs"
    if len(head.present) != columns:
        return f"{columns} output columns, {len(head.present)} class indices"
    return None


def verify_probe(path: Path, done: dict[str, Any], remedy: str | None = None) -> None:
    """Check ``path`` against the size and SHA-256 its fold's ``done.json`` recorded (refused unrecorded)."""
    remedy = remedy or f"delete the fold folder {path.parent} and train again to refit the fold"
    check_fold_file(path, done, PROBE_RECORD, remedy, unrecorded_ok=False)


def load_probe(fold_dir: Path, remedy: str | None = None) -> ProbeModel:
    """The fold's fitted probe, after checking ``probe.npz`` against its ``done.json``;
    ``load_probe(fold_dir).predict(x)`` gives the probabilities of raw embeddings ``x``."""
    fold_dir = Path(fold_dir)
    done_path = fold_dir / "done.json"
    remedy = remedy or f"delete the fold folder {fold_dir} and train again to refit the fold"
    try:
        done = json.loads(done_path.read_text())
    except FileNotFoundError:
        raise DataError(f"{done_path} not found: the fold is not finished; {remedy}") from None
    except ValueError as exc:
        raise DataError(f"{done_path}: not valid JSON ({exc}); {remedy}") from None
    path = fold_dir / PROBE_FILE
    verify_probe(path, done, remedy)
    return read_probe(path, remedy)
