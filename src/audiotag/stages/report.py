"""The report stage: one self-contained HTML page of a competition's results, written atomically.

``audiotag report -c COMP [-o FILE]`` writes ``submissions/<comp>/report.html`` by default; the
ensemble stage writes ``submissions/<comp>/<ensemble>.report.html`` beside its submission. Facts are
collected by ``reports.data``, drawn by ``reports.figures`` and assembled by ``reports.html``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from audiotag.config.schema import CompetitionConfig
from audiotag.core.atomic import atomic_write_text
from audiotag.core.disk_full import disk_full_as_error
from audiotag.core.paths import submissions_root
from audiotag.reports.data import collect
from audiotag.reports.figures import make_figures
from audiotag.reports.html import render

log = logging.getLogger(__name__)


def write_report(
    competition: str | CompetitionConfig,
    out: Path | None = None,
    with_lb: bool = False,
    ensemble: str | None = None,
) -> Path:
    """Collect, draw and write the report of ``competition``; its path. ``with_lb``: read the public
    and private LB scores of logged submissions from Kaggle (credentials needed). ``ensemble``: that
    ensemble's report (its section and its members' runs; the leaderboard is whole)."""
    started = time.time()
    data = collect(competition, with_lb=with_lb, ensemble=ensemble)
    name = data.competition
    log.info(
        "report %s: %d run(s), %d ensemble report(s); drawing the figures",
        name,
        len(data.runs),
        len(data.blends),
    )
    page = render(data, make_figures(data))
    file = f"{ensemble}.report.html" if ensemble else "report.html"
    path = Path(out) if out is not None else submissions_root() / data.competition / file
    with disk_full_as_error(path.parent, f"the report {path.name}", lambda: len(page.encode())):
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, page)
    log.info("report %s: %s (%.0f kB, %.1fs)", name, path, len(page) / 1024, time.time() - started)
    return path
