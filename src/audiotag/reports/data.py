"""What the HTML report shows, collected from a competition's files (no figures, no HTML here): the
leaderboard, every run's history and config against its experiment file, every ensemble report with
its blend's and best member's OOF predictions (else the best run's), the clip table's statistics and
the feature caches' unusable-audio reports.

Anything that cannot be read becomes a note on the page rather than an error: a report is read when
something looks wrong, so it shows what it can.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from audiotag.config.files import MISSING, configs_root, flatten, load_yaml_text, schema_default
from audiotag.config.schema import CompetitionConfig
from audiotag.core.atomic import read_json_object
from audiotag.core.errors import AudiotagError
from audiotag.data.cache_reader import OK, REPORT
from audiotag.data.meta import read_meta
from audiotag.reports.leaderboard import Leaderboard, build_leaderboard
from audiotag.reports.plots import blend_oof_members, fold_histories, run_oof

log = logging.getLogger(__name__)

UNUSABLE_ROWS = 200  # rows of the unusable-audio table shown (the counts cover all)


@dataclass
class ConfigDiff:
    """Settings where a run's resolved config differs from its experiment file: (key, file, run)."""

    experiment_file: Path | None
    rows: list[tuple[str, str, str]] = field(default_factory=list)
    note: str = ""


@dataclass
class RunFacts:
    name: str
    dir: Path
    histories: dict[int, list[dict[str, Any]]]
    config_diff: ConfigDiff
    model: str = ""  # the leaderboard's model and folds ("2/5") columns
    folds: str = ""


@dataclass
class Predictions:
    """OOF predictions of one model or blend on the clips its CV is scored on."""

    name: str
    truth: np.ndarray
    scores: np.ndarray


@dataclass
class BlendFacts:
    name: str
    report: dict[str, Any]
    blend: Predictions | None = None
    best_member: Predictions | None = None  # on the same clips as ``blend``
    note: str = ""


@dataclass
class ClipFacts:
    table: pd.DataFrame  # the clip table (meta.parquet)
    unusable: pd.DataFrame  # rows of the caches' report.csv that are not ok, with their cache
    caches: list[Path] = field(default_factory=list)


@dataclass
class ReportData:
    competition: str
    metric: str
    task: str
    classes: list[str]
    board: Leaderboard
    runs: list[RunFacts]
    blends: list[BlendFacts]
    best_run: Predictions | None  # shown when there is no ensemble
    clips: ClipFacts | None
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- config diff


def find_experiment_file(name: str, competition: str, root: Path | None = None) -> Path | None:
    """``configs/experiments/<competition>/<name>.yaml``, else the one ``<name>.yaml`` elsewhere under
    ``configs/experiments/`` (an experiment's name is its file's stem unless the file says otherwise)."""
    base = (root or configs_root()) / "experiments"
    own = base / competition / f"{name}.yaml"
    if own.is_file():
        return own
    found = sorted(base.rglob(f"{name}.yaml")) if base.is_dir() else []
    return found[0] if len(found) == 1 else None


def _shown(value: Any) -> str:
    return "—" if value is MISSING else json.dumps(value, ensure_ascii=False)


def config_diff(run_dir: Path, competition: str) -> ConfigDiff:
    """The run's ``config.yaml`` against its experiment file as that file loads today (no overrides):
    what ``--set`` (or ``--folds``, ``--weights``) changed, and defaults changed since the run."""
    from audiotag.train.experiment import load_experiment

    try:
        run_cfg = load_yaml_text((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        return ConfigDiff(None, note=f"no readable config.yaml in {run_dir}: {exc}")
    name = str(run_cfg.get("name") or run_dir.name)
    path = find_experiment_file(name, competition)
    if path is None:
        return ConfigDiff(
            None,
            note=f"experiment file {name}.yaml not found under {configs_root() / 'experiments'} "
            "(a file given by path, or renamed since): nothing to compare with",
        )
    try:
        table = None if (run_cfg.get("competition") or {}).get("kind") is None else competition
        loaded = load_experiment(path, competition=table)
    except AudiotagError as exc:
        return ConfigDiff(path, note=f"{path} does not load today: {exc}")
    theirs, ours = flatten(loaded.model_dump(mode="json")), flatten(run_cfg)
    rows = []
    for key in sorted(set(theirs) | set(ours)):
        a, b = theirs.get(key, MISSING), ours.get(key, MISSING)
        if b is MISSING and a == schema_default(loaded, key):
            continue  # a setting added since the run, at its default: what the run's code did
        if key != "name" and a != b:
            rows.append((key, _shown(a), _shown(b)))
    note = "" if rows else "the run used the experiment file exactly as it loads today"
    return ConfigDiff(path, rows, note)


# --------------------------------------------------------------------------- runs and blends


def collect_runs(comp: Any, board: Leaderboard) -> list[RunFacts]:
    runs = []
    rows = board.rows.loc[board.rows["kind"] == "run"] if len(board.rows) else board.rows
    for row in rows.to_dict("records"):
        run_dir = Path(row["path"])
        histories, diff = fold_histories(run_dir), config_diff(run_dir, comp.name)
        runs.append(RunFacts(run_dir.name, run_dir, histories, diff, str(row["model"]), str(row["folds"])))
    return runs


def collect_blend(comp: Any, path: Path, report: dict[str, Any]) -> BlendFacts:
    name = str(report.get("name") or path.stem)
    facts = BlendFacts(name, report)
    best = (report.get("best_member") or {}).get("name")
    try:
        truth, blended, members = blend_oof_members(comp, report)
    except AudiotagError as exc:
        facts.note = f"the blend's OOF predictions could not be rebuilt: {exc}"
        return facts
    facts.blend = Predictions(f"blend {name}", truth, blended)
    if best in members:
        facts.best_member = Predictions(str(best), truth, members[best])
    if report.get("submitted") == "stacking":
        facts.note = (
            "a stacker was submitted; the figures show the weighted blend of the same members "
            "(the stacker's nested OOF predictions are not kept)"
        )
    return facts


def best_run(comp: Any, board: Leaderboard) -> Predictions | None:
    """The OOF predictions of the run with the best CV that has them (the board is sorted by CV)."""
    rows = board.rows[board.rows["kind"] == "run"] if len(board.rows) else board.rows
    for path in rows["path"] if len(rows) else []:
        try:
            oof = run_oof(comp, Path(path))
        except AudiotagError:
            continue
        if oof is not None:
            return Predictions(Path(path).name, *oof)
    return None


# --------------------------------------------------------------------------- clips


def cache_dirs(comp: Any, runs: list[RunFacts]) -> list[Path]:
    """The feature caches the runs used (run.json), else every cache of the competition."""
    used = []
    for run in runs:
        recorded = (read_json_object(run.dir / "run.json") or {}).get("cache_dir")
        if not isinstance(recorded, str):  # missing or damaged: every cache of the competition, below
            continue
        cache = Path(recorded)
        if cache.is_dir() and cache not in used:
            used.append(cache)
    if used:
        return used
    root = comp.dir / "cache"
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def collect_clips(comp: Any, runs: list[RunFacts], notes: list[str]) -> ClipFacts | None:
    try:
        table = read_meta(comp.meta_path)
    except AudiotagError as exc:
        notes.append(f"no clip statistics: {exc}")
        return None
    parts = []
    caches = cache_dirs(comp, runs)
    for cache in caches:
        path = cache / REPORT
        if not path.is_file():
            continue
        rows = pd.read_csv(path, dtype=str, keep_default_na=False)
        rows = rows[rows["status"] != OK].assign(cache=cache.name)
        parts.append(rows)
    unusable = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    return ClipFacts(table, unusable, caches)


# --------------------------------------------------------------------------- all of it


def collect(
    competition: str | CompetitionConfig, with_lb: bool = False, ensemble: str | None = None
) -> ReportData:
    """Everything the report of ``competition`` shows. ``with_lb``: ask Kaggle for LB scores.
    ``ensemble``: only that ensemble and its members' runs (the leaderboard keeps every row)."""
    from audiotag.competitions import get_competition
    from audiotag.config.schema import load_competition

    cfg = load_competition(competition) if isinstance(competition, str) else competition
    comp = get_competition(cfg)
    board = build_leaderboard(cfg, with_lb=with_lb)
    notes = list(board.notes)
    reports = board.reports
    runs = collect_runs(comp, board)
    if ensemble is not None:
        reports = [
            (path, report) for path, report in reports if (report.get("name") or path.stem) == ensemble
        ]
        members = {name for _, report in reports for name in report.get("members") or {}}
        runs = [run for run in runs if run.name in members]
        notes.append(f"ensemble {ensemble} and its members; ./run.sh report -c {comp.name} shows every run")
    blends = [collect_blend(comp, path, report) for path, report in reports]
    shown_blend = any(b.blend is not None for b in blends)
    return ReportData(
        competition=comp.name,
        metric=comp.metric,
        task=comp.task,
        classes=list(comp.classes),
        board=board,
        runs=runs,
        blends=blends,
        best_run=None if shown_blend else best_run(comp, board),
        clips=collect_clips(comp, runs, notes),
        notes=notes,
    )


def finite(value: Any) -> float | None:
    """A float for a number that is one (not None, NaN or text)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number
