"""Pictures of runs and submissions (learning curves, per-class AP, confusion, CV vs LB), drawn with
matplotlib's Agg canvas (no display needed).

Each ``*_figure`` function returns a ``matplotlib.figure.Figure`` (the notebooks show them as they
are); :func:`plot_run`, :func:`plot_blend` and :func:`plot_all` write PNG files next to the run or the
submission. Figures are built without pyplot, so nothing here touches the global backend.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from audiotag.core.atomic import atomic_path
from audiotag.core.errors import DataError
from audiotag.reports.leaderboard import fold_dones

log = logging.getLogger(__name__)

DPI = 110


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG, atomically."""
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    return path


# --------------------------------------------------------------------------- figures


def fold_histories(run_dir: Path) -> dict[int, list[dict[str, Any]]]:
    """Per-epoch history of every finished fold: ``{fold: [{epoch, loss, score, lr, seconds}, ...]}``."""
    return {fold: list(done["history"]) for fold, done in fold_dones(run_dir).items() if done.get("history")}


def learning_curves_figure(run_dir: Path, metric: str = "score") -> Figure | None:
    """Loss and validation score per epoch, one line per fold; None when no fold has finished."""
    histories = fold_histories(run_dir)
    if not histories:
        return None
    fig = new_figure(9, 3.4)
    loss_ax, score_ax = fig.subplots(1, 2)
    for fold, history in sorted(histories.items()):
        epochs = [int(h["epoch"]) + 1 for h in history]
        loss_ax.plot(epochs, [h["loss"] for h in history], marker="o", ms=3, label=f"fold {fold}")
        line = score_ax.plot(epochs, [h["score"] for h in history], marker="o", ms=3, label=f"fold {fold}")
        best = int(np.argmax([h["score"] for h in history]))
        score_ax.plot(epochs[best], history[best]["score"], "*", ms=10, color=line[0].get_color())
    loss_ax.set(title="training loss", xlabel="epoch", ylabel="loss")
    score_ax.set(title=f"validation {metric} (* best)", xlabel="epoch", ylabel=metric)
    for ax in (loss_ax, score_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    score_ax.legend(fontsize="small")
    fig.suptitle(f"learning curves: {Path(run_dir).name}")
    return fig


def per_class_ap_figure(classes: Sequence[str], truth: np.ndarray, scores: np.ndarray, title: str) -> Figure:
    """Horizontal bars of each class's average precision, best first; classes without positives greyed."""
    from audiotag.scoring.metrics import average_precision_per_class

    ap = average_precision_per_class(truth, scores)
    order = np.argsort(np.nan_to_num(ap, nan=-1.0))  # ascending: barh draws bottom-up, so best on top
    fig = new_figure(7, 1.2 + 0.22 * len(classes))
    ax = fig.subplots()
    values = np.nan_to_num(ap[order], nan=0.0)
    colors = ["#bbbbbb" if np.isnan(ap[i]) else "#3b75af" for i in order]
    ax.barh(np.arange(len(order)), values, color=colors)
    ax.set_yticks(np.arange(len(order)), [classes[i] for i in order], fontsize="small")
    mean = float(np.nanmean(ap)) if not np.isnan(ap).all() else float("nan")
    ax.axvline(mean, color="#d62728", ls="--", lw=1, label=f"mean AP {mean:.3f}")
    ax.set(xlim=(0, 1), xlabel="average precision", title=title)
    ax.legend(loc="lower right", fontsize="small")
    ax.grid(axis="x", alpha=0.3)
    return fig


def confusion_figure(classes: Sequence[str], truth: np.ndarray, scores: np.ndarray, title: str) -> Figure:
    """Rows: true class; columns: top-1 predicted class; each row normalised to sum 1."""
    n = len(classes)
    true_idx = np.asarray(truth).argmax(axis=1)
    pred_idx = np.asarray(scores).argmax(axis=1)
    counts = np.zeros((n, n), dtype=np.float64)
    np.add.at(counts, (true_idx, pred_idx), 1.0)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    size = 3.0 + 0.28 * n
    fig = new_figure(size + 1.0, size)
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(n)
    ax.set_xticks(ticks, classes, rotation=90, fontsize="small")
    ax.set_yticks(ticks, classes, fontsize="small")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    color = "white" if share[i, j] > 0.5 else "black"
                    ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=7, color=color)
    accuracy = float(np.trace(counts) / max(counts.sum(), 1.0))
    ax.set(xlabel="predicted (top 1)", ylabel="true", title=f"{title} (top-1 accuracy {accuracy:.3f})")
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true class")
    return fig


def cv_vs_lb_figure(rows: pd.DataFrame, metric: str) -> Figure | None:
    """CV against public (and private, where known) LB of each submission; None without LB scores."""
    subs = rows[(rows["kind"] == "submission") & rows["public_lb"].notna() & rows["cv_mean"].notna()]
    if subs.empty:
        return None
    cv = subs["cv_mean"].astype(float).to_numpy()
    public = subs["public_lb"].astype(float).to_numpy()
    fig = new_figure(5.5, 4.5)
    ax = fig.subplots()
    ax.scatter(cv, public, label="public LB", color="#3b75af", zorder=3)
    private = subs["private_lb"].astype(float)
    if private.notna().any():
        ax.scatter(cv, private.to_numpy(), label="private LB", color="#d62728", marker="s", zorder=3)
    for x, y, name in zip(cv, public, subs["name"], strict=True):
        ax.annotate(str(name), (x, y), textcoords="offset points", xytext=(4, 4), fontsize="small")
    low = float(np.nanmin(np.concatenate([cv, public])))
    high = float(np.nanmax(np.concatenate([cv, public])))
    pad = max(0.01, 0.05 * (high - low))
    ax.plot([low - pad, high + pad], [low - pad, high + pad], color="#999999", lw=1, ls="--", label="LB = CV")
    if len(subs) >= 2 and np.ptp(cv) > 0:
        r = float(np.corrcoef(cv, public)[0, 1])
        ax.set_title(f"CV vs LB ({metric}), Pearson r = {r:.2f}")
    else:
        ax.set_title(f"CV vs LB ({metric})")
    ax.set(xlabel=f"CV {metric}", ylabel=f"LB {metric}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


# --------------------------------------------------------------------------- predictions to plot


def run_oof(comp: Any, run_dir: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(truth, scores) of a run's OOF clips the CV is scored on: the verified ones when there are any."""
    from audiotag.data.meta import read_meta
    from audiotag.scoring.predictions import read_predictions

    path = Path(run_dir) / "oof.parquet"
    if not path.is_file():
        return None
    clip_ids, scores = read_predictions(path, comp.classes)
    table = read_meta(comp.meta_path).set_index("clip_id")
    missing = [c for c in clip_ids if c not in table.index]
    if missing:
        raise DataError(f"{comp.meta_path}: has no row for {len(missing)} OOF clip(s), e.g. {missing[:3]}")
    rows = table.loc[clip_ids]
    truth = comp.label_matrix(rows["labels"])
    verified = rows["verified"].to_numpy(dtype=bool)
    keep = verified if verified.any() else np.ones(len(rows), dtype=bool)
    return truth[keep], scores[keep]


def blend_oof(comp: Any, report: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The blended OOF predictions of an ensemble report on the scored clips, with the report's rule
    and weights (the blend, not a stacker)."""
    truth, blended, _ = blend_oof_members(comp, report)
    return truth, blended


def blend_oof_members(
    comp: Any, report: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """``blend_oof``'s (truth, blend), and each member's OOF predictions on the same clips."""
    from audiotag.ensemble.members import load_aligned
    from audiotag.scoring.fitted_blend import FittedBlend

    names = list(report.get("members") or {})
    if not names:
        raise DataError(f"ensemble report {report.get('name')!r} lists no members")
    # OOF is all it needs; min_oof_overlap 0: the ensemble stage accepted these members already
    data = load_aligned(comp, names, min_oof_overlap=0.0, with_test=False)
    members, scored, folds = data.members, data.scored, data.members[0].oof_folds
    fitted = FittedBlend.from_json(report, comp.classes, names)
    space = np.stack([fitted.rule.forward(m.oof[scored], folds[scored]) for m in members])
    return data.truth[scored], fitted.combine(space), {m.name: m.oof[scored] for m in members}


# --------------------------------------------------------------------------- files


def plot_run(comp: Any, run_dir: Path) -> list[Path]:
    """learning_curves.png, per_class_ap.png and (single label) confusion.png in the run folder."""
    run_dir = Path(run_dir)
    written: list[Path] = []
    fig = learning_curves_figure(run_dir, comp.metric)
    if fig is not None:
        written.append(save(fig, run_dir / "learning_curves.png"))
    oof = run_oof(comp, run_dir)
    if oof is not None:
        written += save_oof_figures(comp, *oof, run_dir.name, run_dir, "")
    return written


def save_oof_figures(
    comp: Any, truth: np.ndarray, scores: np.ndarray, label: str, folder: Path, prefix: str
) -> list[Path]:
    """``<prefix>per_class_ap.png`` and (single label) ``<prefix>confusion.png`` of OOF predictions."""
    title = f"per-class AP: {label} (OOF)"
    written = [
        save(per_class_ap_figure(comp.classes, truth, scores, title), folder / f"{prefix}per_class_ap.png")
    ]
    if comp.task == "single_label":
        fig = confusion_figure(comp.classes, truth, scores, f"{label} (OOF)")
        written.append(save(fig, folder / f"{prefix}confusion.png"))
    return written


def plot_blend(comp: Any, report_path: Path) -> list[Path]:
    """``<name>.per_class_ap.png`` and (single label) ``<name>.confusion.png`` beside the submission."""
    report = json.loads(Path(report_path).read_text())
    name = str(report.get("name") or Path(report_path).stem)
    truth, scores = blend_oof(comp, report)
    return save_oof_figures(comp, truth, scores, f"blend {name}", Path(report_path).parent, f"{name}.")


def plot_all(comp: Any, rows: pd.DataFrame, submissions_dir: Path) -> list[Path]:
    """Every picture for a leaderboard: each run, each blend report, and CV vs LB."""
    written: list[Path] = []
    for path in rows.loc[rows["kind"] == "run", "path"]:
        try:
            written += plot_run(comp, Path(path))
        except DataError as exc:
            log.warning("plots of run %s skipped: %s", Path(path).name, exc)
    for report_path in sorted(submissions_dir.glob("*.json")) if submissions_dir.is_dir() else []:
        try:
            if "blend" in json.loads(report_path.read_text()):
                written += plot_blend(comp, report_path)
        except (DataError, json.JSONDecodeError) as exc:
            log.warning("plots of blend %s skipped: %s", report_path.stem, exc)
    fig = cv_vs_lb_figure(rows, comp.metric)
    if fig is not None:
        written.append(save(fig, submissions_dir / "cv_vs_lb.png"))
    else:
        log.info("plots: no submission with a public LB score yet; cv_vs_lb.png not drawn")
    return written
