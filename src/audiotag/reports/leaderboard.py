"""The leaderboard: every run and every blend/submission of a competition in one table, sorted by CV.

Runs are read from ``competition/<comp>/runs/<run>/`` (``config.yaml`` for the model, features and
seed; ``fold*/done.json`` for the score, time and device of each fold). Blends come from the reports
the ensemble stage writes beside each submission (``submissions/<comp>/<name>.json``), submissions from
the submission log (``submissions/log.jsonl``), and their public and private leaderboard scores from
the Kaggle API when credentials exist (blank otherwise, with a note saying why).
"""

from __future__ import annotations

import base64
import html
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from rich import box
from rich.console import Console
from rich.table import Table

from audiotag.competitions.submission import report_mismatch
from audiotag.config.files import load_yaml_text
from audiotag.config.schema import CompetitionConfig
from audiotag.core.atomic import atomic_write_text, read_json_object
from audiotag.core.jsonl import read_jsonl
from audiotag.core.log import human_duration
from audiotag.core.paths import submission_log, submissions_root
from audiotag.fetch import kaggle as kaggle_client
from audiotag.fetch.network import OfflineError

log = logging.getLogger(__name__)

KINDS = ("run", "blend", "submission")
BASE_COLUMNS = [
    "kind",
    "name",
    "model",
    "pretrained",
    "features",
    "seed",
    "folds",
    "cv_mean",
    "cv_std",
    "oof_pooled",
    "test_score",
    "train_seconds",
    "device",
    "members",
    "public_lb",
    "private_lb",
    "lb_status",
    "submitted",
    "message",
    "ref",
    "path",
]


@dataclass
class Leaderboard:
    competition: str
    metric: str
    rows: pd.DataFrame
    fold_columns: list[str]
    notes: list[str] = field(default_factory=list)
    reports: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)  # that match their CSV


# --------------------------------------------------------------------------- collecting


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = load_yaml_text(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def fold_dones(run_dir: Path) -> dict[int, dict[str, Any]]:
    """The ``done.json`` of every finished fold that reads as a JSON object, by fold."""
    dones: dict[int, dict[str, Any]] = {}
    for done_path in sorted(Path(run_dir).glob("fold*/done.json")):
        done = read_json_object(done_path)
        suffix = done_path.parent.name.removeprefix("fold")
        if done is not None and suffix.isdigit():
            dones[int(suffix)] = done
    return dones


def fold_key(fold: int) -> str:
    return f"fold_{fold}"


def _mean_std(values: Iterable[float]) -> tuple[float, float]:
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std())


def _device_text(dones: list[dict[str, Any]]) -> str:
    """The devices the folds ran on, e.g. ``cuda:0 (NVIDIA H100) bf16 x2`` or ``cpu fp32``."""
    seen: list[str] = []
    for done in dones:
        device = str(done.get("device") or "")
        gpu = done.get("gpu") or done.get("gpu_name") or done.get("device_name")
        text = f"{device} ({gpu})" if gpu and str(gpu) not in device else device
        if done.get("precision"):
            text += f" {done['precision']}"
        if int(done.get("processes") or 1) > 1:
            text += f" x{done['processes']}"
        if text and text not in seen:
            seen.append(text)
    return ", ".join(seen)


def run_row(run_dir: Path) -> dict[str, Any]:
    """One leaderboard row for a run folder (complete or not)."""
    cfg = _read_config(run_dir / "config.yaml")
    model, features, train = cfg.get("model") or {}, cfg.get("features") or {}, cfg.get("train") or {}
    n_folds = int((cfg.get("competition") or {}).get("n_folds") or 0)
    dones = fold_dones(run_dir)
    metrics = read_json_object(run_dir / "metrics.json") or {}
    scores = {fold: float(done["score"]) for fold, done in dones.items() if "score" in done}
    mean, std = _mean_std(scores.values())
    n_folds = max(n_folds, len(dones))
    row: dict[str, Any] = {
        "kind": "run",
        "name": run_dir.name,
        "model": model.get("name", ""),
        "pretrained": model.get("pretrained") or "",
        "features": features.get("name", ""),
        "seed": train.get("seed", next((d.get("seed") for d in dones.values()), None)),
        "folds": f"{len(scores)}/{n_folds}" if n_folds else str(len(scores)),
        "cv_mean": mean,
        "cv_std": std,
        "oof_pooled": metrics.get("oof_pooled"),
        "test_score": metrics.get("test_score"),
        "train_seconds": sum(float(d.get("seconds") or 0.0) for d in dones.values()) or None,
        "device": _device_text(list(dones.values())),
        "path": str(run_dir),
    }
    row.update({fold_key(fold): score for fold, score in scores.items()})
    return row


def report_cv(report: dict[str, Any]) -> dict[str, Any]:
    """The CV of what an ensemble submitted: ``cv`` (nested when weights were searched or a stacker
    was fitted), or ``blend`` in reports that have no ``cv``."""
    return report.get("cv") or report.get("blend") or {}


def blend_row(report_path: Path, report: dict[str, Any]) -> dict[str, Any]:
    blend = report_cv(report)
    folds = {int(k): float(v) for k, v in (blend.get("folds") or {}).items()}
    row: dict[str, Any] = {
        "kind": "blend",
        "name": report.get("name") or report_path.stem,
        "model": f"{report.get('submitted') or 'blend'} ({report.get('method', '?')})",
        "folds": f"{len(folds)}/{report['n_folds']}" if report.get("n_folds") else str(len(folds)),
        "cv_mean": blend.get("mean", math.nan),
        "cv_std": blend.get("std", math.nan),
        "test_score": report.get("test_score"),
        "members": " + ".join(sorted(report.get("members") or {})),
        "lb_status": "not submitted",
        "path": str(report.get("submission") or report_path.with_suffix(".csv")),
    }
    row.update({fold_key(fold): score for fold, score in folds.items()})
    return row


def submission_row(entry: dict[str, Any], report: dict[str, Any] | None) -> dict[str, Any]:
    folds = {int(k): float(v) for k, v in report_cv(report or {}).get("folds", {}).items()}
    row: dict[str, Any] = {
        "kind": "submission",
        "name": entry.get("ensemble") or Path(str(entry.get("file", ""))).stem,
        "model": "submission",
        "folds": str(len(folds)) if folds else "",
        "cv_mean": entry.get("cv") if entry.get("cv") is not None else math.nan,
        "cv_std": entry.get("cv_std") if entry.get("cv_std") is not None else math.nan,
        "members": " + ".join(entry.get("members") or []),
        "submitted": entry.get("time", ""),
        "message": entry.get("message", ""),
        "ref": entry.get("ref") or "",
        "path": entry.get("file", ""),
        "lb_status": "",
    }
    row.update({fold_key(fold): score for fold, score in folds.items()})
    return row


def match_score(
    entry: dict[str, Any], scores: list[kaggle_client.KaggleScore]
) -> kaggle_client.KaggleScore | None:
    """The Kaggle submission of a log entry: by ref, else by file name and description."""
    ref = str(entry.get("ref") or "")
    if ref:
        for score in scores:
            if score.ref == ref:
                return score
    name = Path(str(entry.get("file", ""))).name
    for score in scores:  # Kaggle lists newest first
        if score.file_name == name and score.description == entry.get("message"):
            return score
    return None


def attach_lb(
    rows: list[dict[str, Any]], entries: list[dict[str, Any]], slugs: list[str], notes: list[str]
) -> None:
    """Fill public_lb/private_lb of submission rows from the Kaggle API; a note when that is impossible."""
    fetched: dict[str, list[kaggle_client.KaggleScore]] = {}
    for slug in slugs:
        try:
            fetched[slug] = kaggle_client.fetch_scores(slug)
        except OfflineError:
            notes.append("public/private LB are blank: offline mode is on (AUDIOTAG_OFFLINE=1)")
            return
        except kaggle_client.MissingCredentials:
            notes.append(
                "public/private LB are blank: no Kaggle credentials (set KAGGLE_API_TOKEN or "
                "~/.kaggle/kaggle.json to read them back)"
            )
            return
        except kaggle_client.KaggleError as exc:
            notes.append(f"public/private LB of {slug} are blank: {exc}")
    for row, entry in zip(rows, entries, strict=True):
        scores = fetched.get(str(entry.get("slug")))
        if scores is None:
            row["lb_status"] = "unknown"
            continue
        match = match_score(entry, scores)
        if match is None:
            row["lb_status"] = "not found on Kaggle"
            continue
        row["public_lb"], row["private_lb"] = match.public, match.private
        row["lb_status"] = match.status.lower() or "?"


def build_leaderboard(competition: str | CompetitionConfig, with_lb: bool = True) -> Leaderboard:
    """Collect every run, blend and logged submission of ``competition`` (a name, a YAML path or the
    loaded config) into one table."""
    from audiotag.competitions import get_competition
    from audiotag.config.schema import load_competition
    from audiotag.scoring import metrics

    cfg = load_competition(competition) if isinstance(competition, str) else competition
    comp = get_competition(cfg)
    notes: list[str] = []
    rows: list[dict[str, Any]] = []
    runs_dir = comp.dir / "runs"
    if runs_dir.is_dir():
        for run_dir in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
            if (run_dir / "config.yaml").is_file() or (run_dir / "run.json").is_file():
                rows.append(run_row(run_dir))
    if not rows:
        notes.append(f"no runs in {runs_dir} yet (./run.sh train -c {comp.name})")
    entries = [e for e in read_jsonl(submission_log()) if e.get("competition") == comp.name]
    submitted = {str(e.get("file")) for e in entries}
    sub_dir = submissions_root() / comp.name
    reports: dict[str, dict[str, Any]] = {}
    matching: list[tuple[Path, dict[str, Any]]] = []
    for report_path in sorted(sub_dir.glob("*.json")) if sub_dir.is_dir() else []:
        report = read_json_object(report_path)
        if report is None or "blend" not in report:
            continue
        problem = report_mismatch(report_path.with_suffix(".csv"), report)
        if problem:  # a report that does not describe the CSV beside it says nothing about it
            log.warning("%s; its report is left out (run ./run.sh ensemble again)", problem)
            notes.append(f"{report_path.name} left out: {problem}")
            continue
        csv_path = str(report_path.with_suffix(".csv").resolve())
        reports[csv_path] = report
        matching.append((report_path, report))
        if csv_path not in submitted:
            rows.append(blend_row(report_path, report))
    sub_rows = [submission_row(e, reports.get(str(e.get("file")))) for e in entries]
    if entries and with_lb:
        slugs = sorted({str(e.get("slug")) for e in entries if e.get("slug")})
        attach_lb(sub_rows, entries, slugs, notes)
    elif entries:
        notes.append("public/private LB not read (--no-lb)")
    rows += sub_rows
    table = pd.DataFrame(rows)
    fold_columns = sorted(
        (c for c in table.columns if c.startswith("fold_")), key=lambda c: int(c.removeprefix("fold_"))
    )
    table = table.reindex(columns=[*BASE_COLUMNS[:7], *fold_columns, *BASE_COLUMNS[7:]])
    if len(table):
        descending = metrics.higher_is_better(comp.metric)
        table["_order"] = table["kind"].map({k: i for i, k in enumerate(KINDS)})
        table = table.sort_values(
            ["cv_mean", "_order"], ascending=[not descending, True], na_position="last", kind="stable"
        )
        table = table.drop(columns="_order").reset_index(drop=True)
    return Leaderboard(comp.name, comp.metric, table, fold_columns, notes, matching)


# --------------------------------------------------------------------------- showing


def _num(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return ""
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return str(value)


def human_seconds(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return human_duration(value)  # never negative here: times and durations


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # a seed in a column that pandas made float
    return str(value)


def display_rows(board: Leaderboard) -> list[dict[str, str]]:
    """The table as the console and HTML show it: formatted strings, one dict per row."""
    out = []
    for row in board.rows.to_dict("records"):
        mean, std = _num(row["cv_mean"]), _num(row["cv_std"])
        cells = {
            "kind": _text(row["kind"]),
            "name": _text(row["name"]),
            "model": _text(row["model"]) + (f" ({row['pretrained']})" if _text(row["pretrained"]) else ""),
            "features": _text(row["features"]),
            "seed": _text(row["seed"]),
            "folds": _text(row["folds"]),
        }
        cells.update({c.replace("_", " "): _num(row[c]) for c in board.fold_columns})
        cells[f"CV {board.metric}"] = f"{mean} ± {std}" if mean and std else mean
        cells["test"] = _num(row["test_score"])
        cells["time"] = human_seconds(row["train_seconds"])
        cells["device"] = _text(row["device"])
        cells["members"] = _text(row["members"])
        cells["public LB"] = _num(row["public_lb"], 5)
        cells["private LB"] = _num(row["private_lb"], 5)
        cells["note"] = " ".join(
            x for x in (_text(row["lb_status"]), _text(row["message"]) and f"“{row['message']}”") if x
        )
        out.append(cells)
    return out


def filled_columns(shown: list[dict[str, str]]) -> list[str]:
    """The columns of ``display_rows`` that hold something: an empty column only takes width."""
    return [c for c in (list(shown[0]) if shown else []) if any(r[c] for r in shown)]


def print_leaderboard(console: Console, board: Leaderboard) -> None:
    shown = display_rows(board)
    table = Table(
        title=f"{board.competition}: runs and submissions by CV {board.metric}",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    columns = filled_columns(shown) if shown else ["kind", "name", f"CV {board.metric}"]
    for column in columns:
        numeric = column.startswith(("fold ", "CV ", "public", "private", "test", "time"))
        table.add_column(column, justify="right" if numeric else "left", overflow="fold")
    for cells in shown:
        style = "bold" if cells["kind"] != "run" else None
        table.add_row(*[cells[c] for c in columns], style=style)
    console.print(table)
    if any(r.get("test") for r in shown):
        console.print("test: score on the demo's hidden test labels (demo competitions only)")
    for note in board.notes:
        console.print(f"note: {note}")


def write_csv(board: Leaderboard, path: Path) -> Path:
    atomic_write_text(path, board.rows.to_csv(index=False, float_format="%.6f"))
    return path


WRAPPED = {"model", "features", "device", "members", "note"}  # text columns that wrap in the HTML table


def png_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def write_html(board: Leaderboard, path: Path, plots: Sequence[Path] = ()) -> Path:
    """The table as one self-contained page (empty columns left out, long text wrapped, so that it
    fits a 1400 px window), with ``plots`` (``--plots``' PNG files) embedded below it."""
    shown = display_rows(board)
    columns = filled_columns(shown)

    def cell(row: dict[str, str], column: str) -> str:
        css = " class='wrap'" if column in WRAPPED else ""
        return f"<td{css}>{html.escape(row[column])}</td>"

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "\n".join(
        "<tr class='{}'>{}</tr>".format(html.escape(r["kind"]), "".join(cell(r, c) for c in columns))
        for r in shown
    )
    notes = "".join(f"<p class='note'>{html.escape(n)}</p>" for n in board.notes)
    figures = "".join(
        f"<figure><img src='{png_uri(p)}' alt='{html.escape(caption)}'><figcaption>{html.escape(caption)}"
        "</figcaption></figure>"
        for p in plots
        for caption in [f"{Path(p).parent.name}/{Path(p).name}"]
    )
    plots_html = f"<h2>Plots</h2><div class='plots'>{figures}</div>" if figures else ""
    title = html.escape(f"{board.competition}: runs and submissions by CV {board.metric}")
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
.scroll {{ overflow-x: auto; }}
table {{ border-collapse: collapse; font-size: 90%; }}
th, td {{ padding: 0.25em 0.5em; border-bottom: 1px solid #ddd; text-align: right; white-space: nowrap; }}
th:nth-child(-n+6), td:nth-child(-n+6), td.wrap {{ text-align: left; }}
td.wrap {{ white-space: normal; min-width: 6em; max-width: 16em; overflow-wrap: anywhere; }}
tr.blend, tr.submission {{ font-weight: bold; }}
.note {{ color: #555; }}
.plots {{ display: flex; flex-wrap: wrap; gap: 1em; }}
.plots figure {{ margin: 0; flex: 1 1 560px; max-width: 100%; }}
.plots img {{ max-width: 100%; height: auto; border: 1px solid #eee; }}
</style></head>
<body><h1>{title}</h1>
<div class="scroll"><table><thead><tr>{head}</tr></thead>
<tbody>
{body}
</tbody></table></div>
{notes}
{plots_html}
</body></html>
"""
    atomic_write_text(path, page)
    return path
