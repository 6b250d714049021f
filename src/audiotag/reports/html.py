"""The report page: one self-contained HTML file assembled from the collected facts and the figures'
data URIs. No file beside it and nothing from the network: styles and the table-sorting script are
inline, images are ``data:`` URIs, so it opens from a file anywhere (and survives being mailed).

Every table with ``class="sortable"`` sorts by a click on a column header (again: the other way);
a cell's ``data-sort`` holds its exact number where the text is formatted (``0.5123 ± 0.0100``).
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from audiotag.models.probe import PROBE
from audiotag.reports.data import UNUSABLE_ROWS, BlendFacts, ClipFacts, ReportData, RunFacts, finite
from audiotag.reports.figures import ReportFigures, class_counts
from audiotag.reports.leaderboard import display_rows, fold_key, human_seconds
from audiotag.scoring.metrics import average_precision_per_class

STYLE = """
body { font-family: system-ui, sans-serif; margin: 0 2em 3em; color: #222; }
nav { position: sticky; top: 0; background: #fff; padding: .6em 0; border-bottom: 1px solid #ddd; }
nav a { margin-right: 1.2em; }
h2 { margin-top: 2em; border-bottom: 2px solid #3b75af; }
table { border-collapse: collapse; margin: .8em 0; font-size: 90%; }
th, td { padding: .25em .6em; border-bottom: 1px solid #e3e3e3; text-align: left; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.sortable th { cursor: pointer; user-select: none; background: #f4f6f9; }
table.sortable th[data-dir="asc"]::after { content: " ▲"; }
table.sortable th[data-dir="desc"]::after { content: " ▼"; }
tr.blend, tr.submission { font-weight: bold; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
.row { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
.row figure { flex: 1 1 520px; margin: 0; }
.note { color: #666; } .scroll { overflow-x: auto; }
"""

# Sorts a table.sortable by the clicked column: numbers as numbers (data-sort, else the text's
# leading number), text as text, empty cells last either way.
SCRIPT = """
"use strict";
function sortKey(cell) {
  const text = (cell.dataset.sort ?? cell.textContent).trim();
  if (text === "") return null;
  const number = Number.parseFloat(text);
  return /^[-+]?(\\d|\\.\\d)/.test(text) && !Number.isNaN(number) ? number : text.toLowerCase();
}
for (const th of document.querySelectorAll("table.sortable th")) {
  th.addEventListener("click", () => {
    const table = th.closest("table"), body = table.tBodies[0], col = th.cellIndex;
    const dir = th.dataset.dir === "asc" ? "desc" : "asc";
    for (const other of table.querySelectorAll("th")) delete other.dataset.dir;
    th.dataset.dir = dir;
    const rows = Array.from(body.rows).sort((a, b) => {
      const x = sortKey(a.cells[col]), y = sortKey(b.cells[col]);
      if (x === null || y === null) return (x === null) - (y === null);
      const order = typeof x === typeof y ? (x < y ? -1 : x > y ? 1 : 0) : typeof x === "number" ? -1 : 1;
      return dir === "asc" ? order : -order;
    });
    for (const row of rows) body.appendChild(row);
  });
}
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def num(value: Any, digits: int = 4) -> str:
    number = finite(value)
    return "" if number is None else f"{number:.{digits}f}"


Cell = str | tuple[str, float | None]  # text, or (text, the number it sorts by)


def table(columns: Sequence[str], rows: Iterable[Sequence[Cell]], row_classes: Sequence[str] = ()) -> str:
    """A sortable table; a ``(text, number)`` cell is right-aligned and sorts by the number."""
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    lines = []
    for i, row in enumerate(rows):
        cells = []
        for cell in row:
            if isinstance(cell, tuple):
                text, number = cell
                sort = "" if number is None else f' data-sort="{number!r}"'
                cells.append(f'<td class="num"{sort}>{esc(text)}</td>')
            else:
                cells.append(f"<td>{esc(cell)}</td>")
        css = f' class="{esc(row_classes[i])}"' if i < len(row_classes) and row_classes[i] else ""
        lines.append(f"<tr{css}>{''.join(cells)}</tr>")
    body = "\n".join(lines)
    return (
        f'<div class="scroll"><table class="sortable"><thead><tr>{head}</tr></thead>\n'
        f"<tbody>\n{body}\n</tbody></table></div>"
    )


def figure(uri: str | None, caption: str) -> str:
    if not uri:
        return ""
    caption = esc(caption)
    return (
        f'<figure><img src="{uri}" alt="{caption}"><figcaption class="note">{caption}</figcaption></figure>'
    )


def row(*blocks: str) -> str:
    """Blocks side by side where the page is wide enough, wrapped below one another where not."""
    return f'<div class="row">{"".join(blocks)}</div>'


def notes(lines: Iterable[str]) -> str:
    return "".join(f'<p class="note">{esc(line)}</p>' for line in lines if line)


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>\n{body}\n</section>'


# --------------------------------------------------------------------------- sections

RAW_COLUMNS = {
    "test": "test_score",
    "time": "train_seconds",
    "public LB": "public_lb",
    "private LB": "private_lb",
}


def leaderboard_section(data: ReportData, figs: ReportFigures) -> str:
    board = data.board
    shown = display_rows(board)
    if not shown:
        return section("leaderboard", "Leaderboard", notes(board.notes or ["no runs or submissions yet"]))
    columns = [c for c in shown[0] if any(r[c] for r in shown)]  # an empty column only takes width
    raw = board.rows.to_dict("records")
    rows = []
    for cells, values in zip(shown, raw, strict=True):
        row: list[Cell] = []
        for column in columns:
            key = RAW_COLUMNS.get(column)
            if column.startswith("fold "):
                key = fold_key(int(column.removeprefix("fold ")))
            elif column.startswith("CV "):
                key = "cv_mean"
            row.append((cells[column], finite(values.get(key))) if key else cells[column])
        rows.append(row)
    body = table(columns, rows, [r["kind"] for r in shown])
    body += notes(["click a column header to sort; runs, blends and submissions by CV at first"])
    body += figure(figs.cv_vs_lb, f"CV vs public LB ({data.metric}) of the submissions with a LB score")
    return section("leaderboard", f"Leaderboard: CV {data.metric}", body)


def cv_table(report: dict[str, Any]) -> str:
    """Members, the blend (in-sample and nested) and the stacker, fold by fold."""
    lines: list[tuple[str, dict[str, Any], str]] = [
        (name, cv, "member") for name, cv in (report.get("members") or {}).items()
    ]
    blend = report.get("blend") or {}
    lines.append((f"blend ({report.get('method', '?')})", blend, blend.get("cv_kind", "")))
    if blend.get("nested"):
        lines.append(("blend, nested CV", blend["nested"], "weights fitted on the other folds"))
    if report.get("stacking"):
        stack = report["stacking"]
        lines.append((f"stacking ({stack.get('kind')})", stack, stack.get("cv_kind", "")))
    folds = sorted({int(k) for _, cv, _ in lines for k in (cv.get("folds") or {})})
    rows = []
    for name, cv, kind in lines:
        fold_values = {int(k): v for k, v in (cv.get("folds") or {}).items()}
        rows.append(
            [name]
            + [(num(fold_values.get(f)), finite(fold_values.get(f))) for f in folds]
            + [(f"{num(cv.get('mean'))} ± {num(cv.get('std'))}", finite(cv.get("mean"))), kind]
        )
    return table(["", *(f"fold {f}" for f in folds), "mean ± std", "CV kind"], rows)


def weights_table(report: dict[str, Any]) -> str:
    """Each member's weight on all OOF clips and, for the nested CV, the weights fitted for each fold."""
    blend = report.get("blend") or {}
    weights = blend.get("weights") or {}
    nested = (blend.get("nested") or {}).get("weights") or {}
    folds = sorted(nested, key=int)
    rows = [
        [name, (num(w, 3), finite(w))]
        + [(num(nested[f].get(name), 3), finite(nested[f].get(name))) for f in folds]
        for name, w in weights.items()
    ]
    return table(["member", "weight", *(f"fold {f} (nested)" for f in folds)], rows)


def ap_table(data: ReportData, facts: BlendFacts) -> str:
    assert facts.blend is not None
    truth = facts.blend.truth
    blend_ap = average_precision_per_class(truth, facts.blend.scores)
    best = facts.best_member
    best_ap = average_precision_per_class(truth, best.scores) if best is not None else None
    rows = []
    for i, name in enumerate(data.classes):
        row: list[Cell] = [name, (str(int(truth[:, i].sum())), float(truth[:, i].sum()))]
        row.append((num(blend_ap[i]), finite(blend_ap[i])))
        if best_ap is not None:
            gain = blend_ap[i] - best_ap[i]
            row += [
                (num(best_ap[i]), finite(best_ap[i])),
                (f"{gain:+.4f}" if np.isfinite(gain) else "", finite(gain)),
            ]
        rows.append(row)
    columns = ["class", "positives", "AP blend"] + ([f"AP {best.name}", "gain"] if best is not None else [])
    return table(columns, rows)


def blend_section(data: ReportData, figs: ReportFigures, facts: BlendFacts) -> str:
    report = facts.report
    cv = report.get("cv") or {}
    head = (
        f"<p>submitted: <b>{esc(report.get('submitted', 'blend'))}</b>, CV {esc(data.metric)} "
        f"{num(cv.get('mean'))} ± {num(cv.get('std'))} "
        f"({num(report.get('gain_over_best_member'))} over the best member "
        f"{esc((report.get('best_member') or {}).get('name', '?'))}); "
        f"method {esc(report.get('method', '?'))}, "
        f"weights {esc(report.get('weights_mode', '?'))}"
        + (f", search {esc(report['search'])}" if report.get("search") else "")
        + (
            f"; test score (hidden labels) {num(report['test_score'])}"
            if finite(report.get("test_score"))
            else ""
        )
        + "</p>"
    )
    body = head + "<h3>CV per fold</h3>" + cv_table(report)
    body += "<h3>Weights</h3>" + weights_table(report)
    body += notes([facts.note])
    if facts.blend is not None:
        body += "<h3>Per-class AP and confusion</h3>" + ap_and_confusion(figs, facts.name)
        body += ap_table(data, facts)
    return section(f"ensemble-{facts.name}", f"Ensemble {facts.name}", body)


def best_run_section(data: ReportData, figs: ReportFigures) -> str:
    assert data.best_run is not None
    name = data.best_run.name
    body = notes([f"no ensemble report yet: the best run's OOF predictions ({name})"])
    body += ap_and_confusion(figs, name)
    return section("best-run", f"Best run: {name}", body)


def ap_and_confusion(figs: ReportFigures, name: str) -> str:
    return row(
        figure(figs.ap.get(name), f"per-class AP of {name}"),
        figure(figs.confusion.get(name), f"confusion matrix of {name} (OOF, top 1)"),
    )


def no_curves_note(run: RunFacts) -> str:
    """Why a run has no learning curves: a linear probe has no epochs; other runs, no finished fold."""
    if run.model == PROBE:
        return f"no learning curves: a linear probe is fitted in one step, no epochs ({run.folds} folds done)"
    if run.folds and not run.folds.startswith("0"):
        return f"no per-epoch history recorded in its finished folds ({run.folds})"
    return "no learning curves yet: no fold has finished"


def run_block(data: ReportData, figs: ReportFigures, run: RunFacts) -> str:
    body = f'<h3 id="run-{esc(run.name)}">{esc(run.name)}</h3>'
    body += figure(figs.learning_curves.get(run.name), f"learning curves of {run.name}, every fold")
    if not run.histories:
        body += notes([no_curves_note(run)])
    diff = run.config_diff
    where = f" against {diff.experiment_file}" if diff.experiment_file else ""
    body += f"<p>config{esc(where)}:</p>"
    if diff.rows:
        body += table(["setting", "experiment file", "this run"], [list(r) for r in diff.rows])
    body += notes([diff.note])
    return body


def runs_section(data: ReportData, figs: ReportFigures) -> str:
    if not data.runs:
        return section("runs", "Runs", notes(["no runs yet"]))
    return section("runs", "Runs", "\n".join(run_block(data, figs, run) for run in data.runs))


def clip_summary(table_: pd.DataFrame) -> str:
    rows = []
    keys = ["split", "subset"] if "subset" in table_ else ["split"]
    for key, part in table_.groupby(keys, sort=True, dropna=False):
        durations = part["duration"].astype(float) if "duration" in part else pd.Series(dtype=float)
        names = key if isinstance(key, tuple) else (key,)
        rows.append(
            [" / ".join(str(k) for k in names), (str(len(part)), float(len(part)))]
            + [(human_seconds(durations.sum()), float(durations.sum()))]
            + [(num(durations.quantile(q), 2), finite(durations.quantile(q))) for q in (0.0, 0.5, 1.0)]
            + [(f"{part['verified'].astype(bool).mean():.0%}", float(part["verified"].astype(bool).mean()))]
        )
    columns = [" / ".join(keys), "clips", "audio", "shortest (s)", "median (s)", "longest (s)", "verified"]
    return table(columns, rows)


def unusable_block(clips: ClipFacts) -> str:
    if not clips.caches:
        return notes(["no feature cache yet (./run.sh prepare): no unusable-audio report"])
    if clips.unusable.empty:
        return notes([f"every clip was usable ({', '.join(c.name for c in clips.caches)})"])
    bad = clips.unusable
    counts = bad.groupby(["cache", "status", "reason"], dropna=False).size().reset_index(name="clips")
    body = table(
        ["cache", "status", "reason", "clips"],
        [[r.cache, r.status, r.reason, (str(r.clips), float(r.clips))] for r in counts.itertuples()],
    )
    shown = bad.head(UNUSABLE_ROWS)
    columns = [
        c for c in ("cache", "clip_id", "path", "split", "status", "reason", "audio_issue") if c in bad
    ]
    body += table(columns, shown[columns].astype(str).to_numpy().tolist())
    if len(bad) > UNUSABLE_ROWS:
        body += notes([f"first {UNUSABLE_ROWS} of {len(bad)} rows; the caches' report.csv has them all"])
    return body


def clips_section(data: ReportData, figs: ReportFigures) -> str:
    if data.clips is None:
        return section("clips", "Clips", notes(["no clip table yet (./run.sh prepare)"]))
    table_ = data.clips.table
    body = clip_summary(table_)
    body += row(
        *(
            figure(figs.clips.get(key), caption)
            for key, caption in (
                ("durations", "clip durations per split"),
                ("labels_per_clip", "labels per training clip"),
                ("class_counts", "training clips per class (verified and unverified)"),
            )
        )
    )
    counts = class_counts(table_, data.classes)
    body += "<h3>Class counts</h3>" + table(
        ["class", "verified", "unverified"],
        [[name, (str(v), float(v)), (str(u), float(u))] for name, v, u in counts.itertuples()],
    )
    body += "<h3>Unusable audio</h3>" + unusable_block(data.clips)
    return section("clips", "Clips", body)


def render(data: ReportData, figs: ReportFigures) -> str:
    """The whole page."""
    title = f"{data.competition}: audiotag report"
    parts = [leaderboard_section(data, figs)]
    parts += [blend_section(data, figs, facts) for facts in data.blends]
    if data.best_run is not None:
        parts.append(best_run_section(data, figs))
    parts += [runs_section(data, figs), clips_section(data, figs)]
    links = [("leaderboard", "leaderboard")]
    links += [(f"ensemble-{b.name}", f"ensemble {b.name}") for b in data.blends]
    links += [("best-run", "best run")] if data.best_run is not None else []
    links += [("runs", "runs"), ("clips", "clips")]
    nav = "".join(f'<a href="#{esc(anchor)}">{esc(text)}</a>' for anchor, text in links)
    facts = {
        "competition": data.competition,
        "metric": data.metric,
        "task": data.task,
        "classes": len(data.classes),
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    summary = ", ".join(f"{k} {esc(v)}" for k, v in facts.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<style>{STYLE}</style>
</head><body>
<h1>{esc(title)}</h1>
<p class="note">{summary}</p>
{notes(data.notes)}
<nav>{nav}</nav>
{"".join(parts)}
<script>{SCRIPT}</script>
</body></html>
"""
