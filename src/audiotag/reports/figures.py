"""The report's figures, drawn from :class:`~audiotag.reports.data.ReportData` and returned as PNG data
URIs that the page inlines (no file beside it, no network).

The run and blend pictures are ``plots``' own (learning curves, per-class AP, confusion, CV vs LB);
the ones only the report draws are here: per-class AP of a blend against its best member, and the
clip table's durations, labels per clip and class counts.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from audiotag.reports.data import Predictions, ReportData
from audiotag.reports.plots import (
    confusion_figure,
    cv_vs_lb_figure,
    learning_curves_figure,
    new_figure,
    per_class_ap_figure,
)
from audiotag.scoring.metrics import average_precision_per_class

LABELLED_CLASSES = 60  # more classes than this: a scatter (AP) or an unlabelled profile (counts)


def data_uri(fig: Figure) -> str:
    """The figure as a base64 PNG ``data:`` URI."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def ap_against_best_figure(
    classes: Sequence[str], ap_blend: np.ndarray, ap_best: np.ndarray, blend: str, best: str
) -> Figure:
    """Each class's AP: the blend's against its best member's. Up to ``LABELLED_CLASSES`` classes as
    paired bars (sorted by the blend's gain), more as a scatter with the diagonal."""
    gain = ap_blend - ap_best
    title = f"per-class AP: {blend} vs its best member {best}"
    if len(classes) > LABELLED_CLASSES:
        fig = new_figure(6, 5.5)
        ax = fig.subplots()
        ax.scatter(ap_best, ap_blend, s=10, alpha=0.7, color="#3b75af")
        ax.plot([0, 1], [0, 1], color="#999999", lw=1, ls="--")
        better = int(np.nansum(gain > 0))
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel=f"AP of {best}", ylabel=f"AP of {blend}")
        ax.set_title(f"{title}\n{better} of {int(np.sum(~np.isnan(gain)))} classes above the diagonal")
        ax.grid(alpha=0.3)
        return fig
    order = np.argsort(np.nan_to_num(gain, nan=0.0))  # barh draws bottom-up: largest gain on top
    fig = new_figure(7.5, 1.4 + 0.3 * len(classes))
    ax = fig.subplots()
    y = np.arange(len(order))
    ax.barh(y + 0.2, np.nan_to_num(ap_blend[order]), height=0.4, color="#3b75af", label=blend)
    ax.barh(y - 0.2, np.nan_to_num(ap_best[order]), height=0.4, color="#f0a35e", label=best)
    ax.set_yticks(y, [f"{classes[i]} ({gain[i]:+.3f})" for i in order], fontsize="small")
    ax.set(xlim=(0, 1), xlabel="average precision (OOF)", title=title)
    ax.legend(loc="lower right", fontsize="small")
    ax.grid(axis="x", alpha=0.3)
    return fig


def durations_figure(table: pd.DataFrame) -> Figure | None:
    """Histogram of clip durations per split (seconds)."""
    if "duration" not in table or not table["duration"].notna().any():
        return None
    fig = new_figure(7, 3.2)
    ax = fig.subplots()
    durations = table["duration"].astype(float).dropna()
    lo, hi = float(durations.min()), float(durations.max())
    if hi - lo < 1e-3:  # one duration (cut segments, fixed-length clips): one visible bar around it
        lo, hi = lo - 0.05, hi + 0.05
    bins = np.linspace(lo, hi, 41)
    for split, part in table.groupby("split", sort=True):
        ax.hist(part["duration"].astype(float).dropna(), bins=bins, alpha=0.6, label=f"{split} ({len(part)})")
    ax.set(xlabel="duration (s)", ylabel="clips", title="clip durations")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return fig


def labelled(table: pd.DataFrame) -> pd.DataFrame:
    """The clips whose labels are known here (the training split)."""
    return table[table["split"] != "test"]


def labels_per_clip_figure(table: pd.DataFrame) -> Figure | None:
    train = labelled(table)
    if train.empty:
        return None
    counts = train["labels"].map(len).value_counts().sort_index()
    fig = new_figure(5, 3)
    ax = fig.subplots()
    ax.bar(counts.index.astype(str), counts.to_numpy(), color="#3b75af")
    ax.set(xlabel="labels per clip", ylabel="clips", title=f"labels per training clip ({len(train)} clips)")
    ax.grid(axis="y", alpha=0.3)
    return fig


def class_counts(table: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """Training clips per class: ``verified`` and ``unverified`` columns, classes in vocabulary order."""
    train = labelled(table).explode("labels")
    train = train[train["labels"].isin(list(classes))]
    verified = train["verified"].astype(bool)
    out = pd.DataFrame(
        {
            "verified": train[verified]["labels"].value_counts(),
            "unverified": train[~verified]["labels"].value_counts(),
        }
    )
    return out.reindex(list(classes)).fillna(0).astype(int)


def class_counts_figure(table: pd.DataFrame, classes: Sequence[str]) -> Figure | None:
    counts = class_counts(table, classes)
    if counts.to_numpy().sum() == 0:
        return None
    counts = counts.assign(total=counts.sum(axis=1)).sort_values("total")
    title = "training clips per class"
    if len(counts) > LABELLED_CLASSES:
        fig = new_figure(7, 3.5)
        ax = fig.subplots()
        x = np.arange(len(counts))
        ax.bar(x, counts["verified"], width=1.0, color="#3b75af", label="verified")
        ax.bar(
            x, counts["unverified"], bottom=counts["verified"], width=1.0, color="#f0a35e", label="unverified"
        )
        ax.set(xlabel=f"{len(counts)} classes, sorted", ylabel="clips", yscale="log", title=title)
    else:
        fig = new_figure(7, 1.2 + 0.22 * len(counts))
        ax = fig.subplots()
        y = np.arange(len(counts))
        ax.barh(y, counts["verified"], color="#3b75af", label="verified")
        ax.barh(y, counts["unverified"], left=counts["verified"], color="#f0a35e", label="unverified")
        ax.set_yticks(y, counts.index, fontsize="small")
        ax.set(xlabel="clips", title=title)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return fig


@dataclass
class ReportFigures:
    """Data URIs by what they show; a figure with nothing to show is absent."""

    cv_vs_lb: str | None = None
    learning_curves: dict[str, str] = field(default_factory=dict)  # run name -> figure
    ap: dict[str, str] = field(default_factory=dict)  # blend (or best run) name -> figure
    confusion: dict[str, str] = field(default_factory=dict)
    clips: dict[str, str] = field(default_factory=dict)  # durations, labels_per_clip, class_counts


def ap_of(pred: Predictions) -> np.ndarray:
    return average_precision_per_class(pred.truth, pred.scores)


def make_figures(data: ReportData) -> ReportFigures:
    figs = ReportFigures()
    if len(data.board.rows):
        fig = cv_vs_lb_figure(data.board.rows, data.metric)
        figs.cv_vs_lb = data_uri(fig) if fig is not None else None
    for run in data.runs:
        fig = learning_curves_figure(run.dir, data.metric)
        if fig is not None:
            figs.learning_curves[run.name] = data_uri(fig)
    shown = [(b.name, b.blend, b.best_member) for b in data.blends if b.blend is not None]
    if data.best_run is not None:
        shown.append((data.best_run.name, data.best_run, None))
    for name, pred, best in shown:
        if best is not None:
            fig = ap_against_best_figure(data.classes, ap_of(pred), ap_of(best), pred.name, best.name)
        else:
            fig = per_class_ap_figure(data.classes, pred.truth, pred.scores, f"per-class AP: {name} (OOF)")
        figs.ap[name] = data_uri(fig)
        if data.task == "single_label":
            figs.confusion[name] = data_uri(confusion_figure(data.classes, pred.truth, pred.scores, name))
    if data.clips is not None:
        table = data.clips.table
        for key, fig in (
            ("durations", durations_figure(table)),
            ("labels_per_clip", labels_per_clip_figure(table)),
            ("class_counts", class_counts_figure(table, data.classes)),
        ):
            if fig is not None:
                figs.clips[key] = data_uri(fig)
    return figs
