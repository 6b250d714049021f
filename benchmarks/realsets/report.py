"""The accuracy table of ``benchmarks/accuracy.py``: its rows, the goal per set, and the dated block
appended to the accuracy section of ``benchmarks/RESULTS.md`` (other sections are left as they are)."""

from __future__ import annotations

import datetime as dt
import os
import platform
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from audiotag.core.atomic import atomic_write_text

SECTION = "## Accuracy on the real-audio check sets (`benchmarks/accuracy.py`)"
SECTION_INTRO = """\
Sets made by `benchmarks/realsets/` (see `benchmarks/README.md`); the anchor is log-mel mean + std
and logistic regression; the goal of issue 16 is the best recipe's test score at least halfway
from the anchor's to 1.0. Newest block last."""


@dataclass
class Row:
    dataset: str
    recipe: str
    metric: str
    cv: float
    test: float
    minutes: float


def render_table(rows: list[Row]) -> Table:
    table = Table(title="accuracy on the real-audio check sets")
    for column in ("dataset", "recipe", "CV", "test", "minutes"):
        table.add_column(column, justify="left" if column in ("dataset", "recipe") else "right")
    for r in rows:
        table.add_row(
            f"{r.dataset} ({r.metric})", r.recipe, f"{r.cv:.4f}", f"{r.test:.4f}", f"{r.minutes:.1f}"
        )
    return table


def goals(rows: list[Row]) -> list[str]:
    """Per set: the best recipe's test score against halfway from the anchor's to 1.0."""
    lines = []
    for dataset in dict.fromkeys(r.dataset for r in rows):
        anchor = next((r for r in rows if r.dataset == dataset and r.recipe == "anchor"), None)
        recipes = [r for r in rows if r.dataset == dataset and r.recipe != "anchor"]
        if anchor is None or not recipes:
            continue
        best = max(recipes, key=lambda r: r.test)
        target = anchor.test + (1.0 - anchor.test) / 2
        verdict = "met" if best.test >= target else "not met"
        lines.append(
            f"{dataset}: best recipe {best.recipe} test {best.test:.4f}; goal >= {target:.4f} "
            f"(halfway from the anchor's {anchor.test:.4f} to 1): {verdict}"
        )
    return lines


def markdown(rows: list[Row], command: str, cores: int, note: str, prepare_minutes: dict[str, float]) -> str:
    machine = f"{platform.machine()}, {os.cpu_count()} cores ({cores} used)"
    lines = [
        f"### {dt.date.today().isoformat()}, {machine}{', ' + note if note else ''}",
        "",
        f"    {command}",
        "",
    ]
    lines += [f"| dataset | recipe | CV | test | minutes on {cores} cores |", "|---|---|---|---|---|"]
    lines += [
        f"| {r.dataset} ({r.metric}) | {r.recipe} | {r.cv:.4f} | {r.test:.4f} | {r.minutes:.1f} |"
        for r in rows
    ]
    lines += ["", *[f"- {g}" for g in goals(rows)]]
    lines += [f"- {name}: generation + prepare (cache) {m:.1f} min" for name, m in prepare_minutes.items()]
    return "\n".join(lines) + "\n"


def append_results(path: Path, block: str) -> None:
    """Append ``block`` at the end of the accuracy section (made at the end of the file when absent)."""
    text = path.read_text() if path.is_file() else "# Measured results\n"
    if SECTION not in text:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\n{SECTION_INTRO}\n\n{block}"
    else:
        start = text.index(SECTION) + len(SECTION)
        following = text.find("\n## ", start)
        end = len(text) if following < 0 else following + 1
        text = text[:end].rstrip("\n") + f"\n\n{block}" + ("\n" + text[end:] if following >= 0 else "")
    atomic_write_text(path, text)
