"""Linear evaluation on frozen embeddings: one outer fold of a ``linear_probe`` run.

As in EVAR and BYOL-A's ``evaluate.py``, the embeddings are standardised (mean and standard
deviation of the fold's training clips; a constant column is left at 0) and a linear classifier is
trained on them:

- single-label, ``head: linear``: multinomial logistic regression (scikit-learn's
  ``LogisticRegression``, L-BFGS), which minimises ``C * sum_i w_i CE_i + ||W||^2 / 2``;
- multi-label, ``head: linear``: one logistic regression per class, fitted together as one linear
  layer with BCE by full-batch L-BFGS in torch, minimising ``sum_i w_i sum_c BCE_ic / sum_i w_i +
  ||W||^2 / (2 C sum_i w_i)`` (the objective of scikit-learn's one-vs-rest logistic regression with
  the same ``C``, divided by ``C sum_i w_i``; ``tests/test_probe.py`` checks the two agree);
- ``head: mlp``: one hidden ReLU layer, softmax cross-entropy or BCE, Adam, the same L2 term.

``w_i`` is the clip's training weight (``train.unverified_weight`` for unverified clips). The L2
strength ``C`` is chosen from ``model.c_grid`` by an inner cross-validation *on the outer fold's
training clips only* (:func:`choose_c` is handed nothing else): ``model.inner_folds`` folds,
stratified by class (single-label) or by label set (multi-label), groups kept whole where the
competition has them, scored by the competition metric on the inner validation clips that are
verified. Ties go to the smaller ``C`` (stronger regularisation). The chosen ``C`` is then fitted on
all of the fold's training clips, which predict its validation (OOF) and test clips.

Each fitted classifier also carries its parameters (:class:`Fitted`); the fold's final one is saved,
with the standardiser and the embedding it expects, as ``fold<k>/probe.npz``
(``models/probe_head.py``), which ``package`` ships and the package's inference predicts with.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold
from sklearn.preprocessing import StandardScaler

from audiotag.core.atomic import atomic_write_json, load_json_object
from audiotag.core.digests import file_sha256
from audiotag.models.probe import LinearProbeConfig
from audiotag.models.probe_head import PROBE_FILE, PROBE_RECORD, ProbeHead, ProbeModel, save_probe
from audiotag.scoring import metrics
from audiotag.scoring.predictions import write_predictions

log = logging.getLogger(__name__)

Predictor = Callable[[np.ndarray], np.ndarray]  # standardised embeddings -> scores (n, n_classes)


@dataclass(frozen=True)
class Fitted:
    """A fitted classifier: called on standardised rows, it predicts; ``head`` holds its parameters
    as ``probe.npz`` keeps them (``models/probe_head.py``), which predict the same scores."""

    predictor: Predictor
    head: ProbeHead

    def __call__(self, xs: np.ndarray) -> np.ndarray:
        return self.predictor(xs)


@dataclass
class ProbeFold:
    """One outer fold's embeddings and labels. Training rows only in the ``*_train`` arrays."""

    fold: int
    x_train: np.ndarray
    y_train: np.ndarray  # (n, n_classes) 0/1
    w_train: np.ndarray  # training weight per clip
    verified_train: np.ndarray  # bool: scored in the inner CV
    groups_train: np.ndarray | None  # clips of one group stay in one inner fold
    x_val: np.ndarray
    x_test: np.ndarray


# ----------------------------------------------------------------------------- fitting


def standardise(x: np.ndarray) -> StandardScaler:
    """Mean and std of these rows (scikit-learn's StandardScaler: a constant column gets scale 1)."""
    return StandardScaler().fit(x)


def _place(proba: np.ndarray, present: np.ndarray, n_classes: int) -> np.ndarray:
    """Scores for every class: a class absent from the training rows scores 0."""
    out = np.zeros((proba.shape[0], n_classes))
    out[:, present] = proba
    return out


def _fit_logreg_path(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, grid: list[float], cfg: LinearProbeConfig, seed: int
) -> list[Fitted]:
    labels = y.argmax(axis=1)
    n_classes = y.shape[1]
    present = np.unique(labels)
    if len(present) < 2:  # one class: nothing to learn; it gets the whole probability
        head = ProbeHead("constant", n_classes, present[:1].astype(np.int64))
        return [
            Fitted(lambda xs, c=present[0]: _place(np.ones((len(xs), 1)), np.array([c]), n_classes), head)
            for _ in grid
        ]
    est = LogisticRegression(max_iter=cfg.max_iter, warm_start=True, random_state=seed)
    out: list[Fitted] = []
    for c in grid:  # ascending: each fit starts from the last (warm start)
        est.set_params(C=c)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est.fit(x, labels, sample_weight=w)
        frozen = copy.deepcopy(est)
        head = ProbeHead(
            "binary" if len(frozen.classes_) == 2 else "softmax",  # as predict_proba forms its scores
            n_classes,
            np.asarray(frozen.classes_, dtype=np.int64),
            [frozen.coef_.copy()],
            [np.asarray(frozen.intercept_).copy()],
        )
        out.append(Fitted(lambda xs, e=frozen: _place(e.predict_proba(xs), e.classes_, n_classes), head))
    return out


def _torch_objective(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, single: bool, l2: float
) -> torch.Tensor:
    logits = model(x)
    if single:
        loss = torch.nn.functional.cross_entropy(logits, y.argmax(dim=1), reduction="none")
    else:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none").sum(dim=1)
    penalty = sum((p**2).sum() for name, p in model.named_parameters() if name.endswith("weight"))
    return (w * loss).sum() / w.sum() + l2 * penalty


def _fit_linear_bce_path(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, grid: list[float], cfg: LinearProbeConfig, seed: int
) -> list[Fitted]:
    """One-vs-rest logistic regression of every class at once: a linear layer, BCE, full-batch L-BFGS."""
    torch.manual_seed(seed)
    xt, yt, wt = (torch.as_tensor(a, dtype=torch.float64) for a in (x, y, w))
    layer = torch.nn.Linear(x.shape[1], y.shape[1], dtype=torch.float64)
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    out: list[Fitted] = []
    for c in grid:  # ascending, warm-started
        l2 = 1.0 / (2.0 * c * float(wt.sum()))
        opt = torch.optim.LBFGS(
            layer.parameters(),
            lr=1.0,
            max_iter=cfg.max_iter,
            tolerance_grad=1e-7,
            tolerance_change=1e-10,
            history_size=20,
            line_search_fn="strong_wolfe",
        )

        def closure(opt: torch.optim.LBFGS = opt, l2: float = l2) -> torch.Tensor:
            opt.zero_grad()
            loss = _torch_objective(layer, xt, yt, wt, False, l2)
            loss.backward()
            return loss

        opt.step(closure)
        weight, bias = layer.weight.detach().numpy().copy(), layer.bias.detach().numpy().copy()
        head = ProbeHead("sigmoid", y.shape[1], np.arange(y.shape[1]), [weight], [bias])
        out.append(Fitted(lambda xs, a=weight, b=bias: 1.0 / (1.0 + np.exp(-(xs @ a.T + b))), head))
    return out


def _fit_mlp(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, c: float, cfg: LinearProbeConfig, single: bool, seed: int
) -> Fitted:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    xt, yt, wt = (torch.as_tensor(a, dtype=torch.float32) for a in (x, y, w))
    model = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], cfg.hidden), torch.nn.ReLU(), torch.nn.Linear(cfg.hidden, y.shape[1])
    )
    opt = torch.optim.Adam(model.parameters(), lr=cfg.mlp_lr)
    l2 = 1.0 / (2.0 * c * float(wt.sum()))
    for _ in range(cfg.mlp_epochs):
        order = torch.randperm(len(xt), generator=generator)
        for start in range(0, len(xt), cfg.mlp_batch_size):
            rows = order[start : start + cfg.mlp_batch_size]
            opt.zero_grad()
            _torch_objective(model, xt[rows], yt[rows], wt[rows], single, l2).backward()
            opt.step()
    model.eval()

    def predict(xs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            logits = model(torch.as_tensor(xs, dtype=torch.float32))
            probs = torch.softmax(logits, dim=1) if single else torch.sigmoid(logits)
        return probs.double().numpy()

    first, last = model[0], model[2]
    head = ProbeHead(
        "mlp_softmax" if single else "mlp_sigmoid",
        y.shape[1],
        np.arange(y.shape[1]),
        [layer.weight.detach().numpy().copy() for layer in (first, last)],
        [layer.bias.detach().numpy().copy() for layer in (first, last)],
    )
    return Fitted(predict, head)


def row_space_basis(x: np.ndarray) -> np.ndarray | None:
    """An orthonormal basis ``V`` (d, r) of the span of ``x``'s rows, when there are fewer rows than
    columns (a fused embedding of thousands of values on a few hundred clips); else None.

    An L2-penalised linear model's optimum lies in that span (the loss gradient is a combination of
    the rows, the penalty pulls towards 0), and so does every L-BFGS iterate started at 0. Fitting
    ``z = x V`` (r columns) and mapping the weights back as ``W_z V^T`` is therefore the same fit, as
    ``||W_z V^T|| = ||W_z||``, at r/d of the cost: on 400 clips of a 9216-value fusion, 23x fewer.
    """
    n, d = x.shape
    if n >= d:
        return None
    _, singular, vt = np.linalg.svd(x, full_matrices=False)
    keep = singular > singular[0] * d * np.finfo(np.float64).eps
    return np.ascontiguousarray(vt[keep].T) if keep.any() else None


def _in_full_space(fitted: Fitted, basis: np.ndarray) -> Fitted:
    """A classifier fitted on ``x @ basis``, as one on ``x``."""
    head = fitted.head
    if head.output == "constant":
        full = head
    else:
        full = ProbeHead(head.output, head.n_classes, head.present, [head.weights[0] @ basis.T], head.biases)
    return Fitted(lambda xs, p=fitted.predictor: p(np.asarray(xs) @ basis), full)


def fit_path(
    x: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    grid: list[float],
    cfg: LinearProbeConfig,
    single: bool,
    seed: int,
) -> list[Fitted]:
    """One fitted classifier per ``C`` of ``grid`` (ascending) on standardised rows ``x``."""
    if cfg.head == "mlp":
        return [_fit_mlp(x, y, w, c, cfg, single, seed) for c in grid]
    basis = row_space_basis(x)
    if basis is not None:
        reduced = np.asarray(x, dtype=np.float64) @ basis
        return [_in_full_space(f, basis) for f in fit_path(reduced, y, w, grid, cfg, single, seed)]
    if single:
        return _fit_logreg_path(x, y, w, grid, cfg, seed)
    return _fit_linear_bce_path(x, y, w, grid, cfg, seed)


def predict(predictor: Predictor, x: np.ndarray) -> np.ndarray:
    return predictor(x)


# ----------------------------------------------------------------------------- choosing C


def inner_splits(
    y: np.ndarray, groups: np.ndarray | None, n_splits: int, single: bool, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train rows, validation rows) of the inner CV over the given (outer training) rows."""
    n = len(y)
    n_splits = min(n_splits, n)
    index = np.zeros((n, 1))
    has_groups = groups is not None and len(np.unique(groups)) >= n_splits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "the least populated class has only k members"
        try:
            if single:
                labels = y.argmax(axis=1)
                if has_groups:
                    splitter = StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed)
                    return list(splitter.split(index, labels, groups))
                return list(StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(index, labels))
            if has_groups:
                return list(GroupKFold(n_splits).split(index, y, groups))
            splitter = MultilabelStratifiedKFold(n_splits, shuffle=True, random_state=seed)
            return list(splitter.split(index, y))
        except ValueError:  # too few clips per class to stratify: plain folds
            return list(KFold(n_splits, shuffle=True, random_state=seed).split(index))


def choose_c(
    x: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    verified: np.ndarray,
    groups: np.ndarray | None,
    cfg: LinearProbeConfig,
    metric: str,
    single: bool,
    seed: int,
) -> tuple[float, dict[float, float]]:
    """The ``C`` of ``cfg.c_grid`` with the best mean inner-CV score, and every ``C``'s mean score.

    Every argument is about the outer fold's *training* clips only: the outer validation clips
    cannot influence the choice because they are never handed in.
    """
    grid = list(cfg.c_grid)
    if len(grid) == 1:
        return grid[0], {}
    totals = np.zeros(len(grid))
    counted = np.zeros(len(grid))
    for inner_train, inner_val in inner_splits(y, groups, cfg.inner_folds, single, seed):
        scaler = standardise(x[inner_train])
        predictors = fit_path(
            scaler.transform(x[inner_train]), y[inner_train], w[inner_train], grid, cfg, single, seed
        )
        scored = inner_val[verified[inner_val]] if verified[inner_val].any() else inner_val
        x_scored = scaler.transform(x[scored])
        for i, predictor in enumerate(predictors):
            try:
                totals[i] += metrics.score(metric, y[scored], predict(predictor, x_scored))
                counted[i] += 1
            except ValueError as exc:  # e.g. mAP of an inner fold without any positive
                log.debug("inner fold skipped for C=%g: %s", grid[i], exc)
    means = np.where(counted > 0, totals / np.maximum(counted, 1), -np.inf)
    best = int(np.argmax(means))  # the first maximum: the smallest C among ties
    return grid[best], {c: float(m) for c, m in zip(grid, means, strict=True)}


# ----------------------------------------------------------------------------- one outer fold


@dataclass
class FoldOutcome:
    c: float
    inner_scores: dict[float, float]
    val_scores: np.ndarray
    test_scores: np.ndarray | None
    scaler: StandardScaler
    model: ProbeModel  # what probe.npz keeps: the standardiser and the fitted head


def fit_fold(cfg: LinearProbeConfig, fold: ProbeFold, metric: str, single: bool, seed: int) -> FoldOutcome:
    """Choose ``C`` on the training rows, fit it on all of them, predict validation and test rows."""
    c, inner = choose_c(
        fold.x_train,
        fold.y_train,
        fold.w_train,
        fold.verified_train,
        fold.groups_train,
        cfg,
        metric,
        single,
        seed,
    )
    scaler = standardise(fold.x_train)
    (predictor,) = fit_path(
        scaler.transform(fold.x_train), fold.y_train, fold.w_train, [c], cfg, single, seed
    )
    val = predict(predictor, scaler.transform(fold.x_val))
    test = predict(predictor, scaler.transform(fold.x_test)) if len(fold.x_test) else None
    model = ProbeModel(
        np.asarray(scaler.mean_).copy(),
        np.asarray(scaler.scale_).copy(),
        predictor.head,
        {"c": c, "input_dtype": str(np.asarray(fold.x_train).dtype)},
    )
    return FoldOutcome(c, inner, val, test, scaler, model)


def write_fold(
    fold_dir: Path,
    outcome: FoldOutcome,
    summary: dict[str, Any],
    val_ids: list[str],
    test_ids: list[str],
    classes: list[str],
    embedding: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``oof.parquet``, ``test.parquet``, ``probe.npz`` (the fitted probe, with ``embedding``: what
    the embeddings were computed with, see ``models/probe_head.py``) and, last, ``done.json`` (what
    marks the fold finished; it records the size and SHA-256 of ``probe.npz``)."""
    fold_dir.mkdir(parents=True, exist_ok=True)
    write_predictions(fold_dir / "oof.parquet", val_ids, classes, outcome.val_scores)
    if outcome.test_scores is not None:
        write_predictions(fold_dir / "test.parquet", test_ids, classes, outcome.test_scores)
    model = outcome.model
    model.spec = {**model.spec, "classes": list(classes), "embedding": embedding or {}}
    probe_path = fold_dir / PROBE_FILE
    save_probe(probe_path, model)
    summary = {
        **summary,
        "probe": {
            "c": outcome.c,
            "inner_scores": {f"{c:g}": s for c, s in outcome.inner_scores.items()},
        },
        PROBE_RECORD: {"size": probe_path.stat().st_size, "sha256": file_sha256(probe_path)},
        "history": [],
    }
    atomic_write_json(fold_dir / "done.json", summary)
    return summary


def read_done(fold_dir: Path) -> dict[str, Any] | None:
    path = fold_dir / "done.json"
    if not path.is_file():
        return None
    return load_json_object(path, f"delete the fold folder {fold_dir} to fit it again")
