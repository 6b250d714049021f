"""Accuracy on the real-audio check sets (benchmarks/realsets/): the recipes against a trivial anchor.

For each set: make it (cached under ``--work``, see ``realsets.ensure``), prepare it (clip table,
folds, feature cache) in a workspace of its own, then score

- the **anchor**: the mean and standard deviation over time of each clip's log-mel (the
  ``logmel_16k_64`` front-end, read from the same feature cache), standardised, and scikit-learn's
  LogisticRegression (one-vs-rest for multi-label sets); one model per fold on the run's fold file,
  CV = the mean of the fold scores, test = the metric of the fold models' mean test prediction,
  the same protocol as a run (scored by the competition, which reads the set's hidden test labels
  through its YAML's ``test_labels``);
- each **recipe** (an experiment YAML; default: ``configs/experiments/table/cnn_small.yaml``, what a
  ``kind: table`` competition trains by default): ``python -m audiotag prepare train`` in a
  subprocess pinned to ``--cores`` cores (``train.threads`` and ``--workers`` set to match), its
  run folder removed first so that every figure is a fresh run; CV and test from the run's own
  ``metrics.json`` (the mean of the fold scores; the fold models' mean test prediction scored on the
  set's hidden test labels, which the set's YAML names as ``test_labels``).

- with ``--ensemble``, the **ensemble** of the recipes' runs (``python -m audiotag ensemble``: mean
  blend, weights searched on OOF predictions only): CV = its nested CV (weights fit on the other
  folds), test = the blend's test prediction scored the same way.

It prints one table (dataset, recipe, CV, test, minutes) and, per set, the goal of issue 16: the best
recipe's test score at least halfway from the anchor's to a perfect score. With ``--write`` it
appends a dated block to the accuracy section of ``benchmarks/RESULTS.md``.

    .venv/bin/python benchmarks/accuracy.py --write                    # every set, the default recipe
    .venv/bin/python benchmarks/accuracy.py --sets spoken_words --recipes \
        configs/experiments/table/cnn_small_fixed.yaml my_recipe.yaml
    .venv/bin/python benchmarks/accuracy.py --tiny --set train.epochs=1  # a smoke run: tiny sets, 2 folds
    .venv/bin/python benchmarks/accuracy.py --recipes configs/experiments/table/cnn_small.yaml \
        configs/experiments/table/probe_aisfx.yaml --ensemble     # two members and their blend

Minutes are wall-clock minutes of ``prepare train`` for a recipe (the cache is then already built,
so mostly training) and of the fitting for the anchor, on ``--cores`` cores (2 by default: the
project's machines); other load on those cores slows them down, so say when there was some.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import yaml
from rich.console import Console

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import realsets  # noqa: E402
from realsets.common import TINY  # noqa: E402
from realsets.report import Row, append_results, goals, markdown, render_table  # noqa: E402

from audiotag.competitions.folds import load_folds  # noqa: E402
from audiotag.config.files import load_group  # noqa: E402
from audiotag.config.schema import CompetitionConfig, FeatureConfig, load_competition  # noqa: E402
from audiotag.core.log import setup_logging  # noqa: E402
from audiotag.runs.prepare import Prepared, prepare  # noqa: E402
from audiotag.scoring import metrics  # noqa: E402
from audiotag.train.experiment import load_experiment  # noqa: E402

log = logging.getLogger("accuracy")

DEFAULT_RECIPE = REPO / "configs" / "experiments" / "table" / "cnn_small.yaml"
ANCHOR_FEATURES = "logmel_16k_64"
RESULTS = HERE / "RESULTS.md"


# ----------------------------------------------------------------------------- the set


def workspace(work: Path, folder: Path) -> Path:
    """Each generated set (name, size, seed) gets a workspace of its own: vocabularies never mix."""
    return work / "workspace" / folder.name


def competition_config(real: realsets.RealSet, overrides: list[str]) -> CompetitionConfig:
    """The set's competition YAML with its data folder (and ``overrides``, without the prefix)."""
    return load_competition(
        str(real.yaml), [f"data_dir={json.dumps(str(real.data_dir.resolve()))}", *overrides]
    )


# ----------------------------------------------------------------------------- the anchor


def clip_statistics(cache, clip_ids: list[str]) -> np.ndarray:
    """Per clip: the log-mel's mean and standard deviation over time (2 x n_mels values)."""
    rows = []
    for clip_id in clip_ids:
        frames = np.asarray(cache.get(clip_id), dtype=np.float32)
        rows.append(np.concatenate([frames.mean(axis=0), frames.std(axis=0)]))
    return np.stack(rows)


def anchor_model(multi_label: bool):
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classifier = LogisticRegression(max_iter=2000, C=1.0)
    return make_pipeline(StandardScaler(), OneVsRestClassifier(classifier) if multi_label else classifier)


def run_anchor(prepared: Prepared) -> tuple[float, float]:
    """CV (mean of the fold scores) and test score of the log-mel statistics + logistic regression."""
    from audiotag.data.cache_reader import FeatureCache

    comp = prepared.competition
    cache = FeatureCache(prepared.cache_dir)
    table = prepared.table
    folds = load_folds(prepared.folds_path)
    folds = folds[~folds["clip_id"].isin(prepared.skipped)].reset_index(drop=True)
    labels = table.set_index("clip_id").loc[folds["clip_id"], "labels"]
    y = comp.label_matrix(labels)
    x = clip_statistics(cache, folds["clip_id"].tolist())
    test_ids = table.loc[table["split"] == "test", "clip_id"].tolist()
    x_test = clip_statistics(cache, test_ids)
    multi = comp.task == "multi_label"
    fold_scores, test_parts = [], []
    warnings.filterwarnings("ignore", message="Label .* is present in all training examples")
    for fold in sorted(folds["fold"].unique()):
        held = (folds["fold"] == fold).to_numpy()
        model = anchor_model(multi)
        if multi:
            model.fit(x[~held], y[~held].astype(int))
            predict = lambda m, data: m.predict_proba(data)  # noqa: E731
        else:
            model.fit(x[~held], y[~held].argmax(axis=1))
            predict = lambda m, data: _spread(m, data, y.shape[1])  # noqa: E731
        fold_scores.append(metrics.score(comp.metric, y[held], predict(model, x[held])))
        test_parts.append(predict(model, x_test))
    test = comp.score_test(test_ids, np.mean(test_parts, axis=0)) if test_ids else None
    return float(np.mean(fold_scores)), float("nan") if test is None else test


def _spread(model, x: np.ndarray, n_classes: int) -> np.ndarray:
    """predict_proba of a single-label model, placed in the columns of the classes it saw."""
    out = np.zeros((len(x), n_classes), dtype=np.float64)
    out[:, model.classes_] = model.predict_proba(x)
    return out


# ----------------------------------------------------------------------------- the recipes


def cpu_set(cores: int) -> list[int]:
    allowed = sorted(os.sched_getaffinity(0))
    if cores > len(allowed):
        log.warning("--cores %d: only %d cores are available; using them all", cores, len(allowed))
    return allowed[:cores]


def derived_recipe(recipe: Path, real: realsets.RealSet, folder: Path) -> Path:
    """The recipe with the set's competition YAML put in (table experiments name a placeholder)."""
    raw = yaml.safe_load(recipe.read_text())
    raw["competition"] = str(real.yaml.resolve())
    raw.setdefault("name", recipe.stem)
    target = folder / f"{recipe.stem}.yaml"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(f"# {recipe} with competition {real.yaml.name} (made by benchmarks/accuracy.py)\n")
    with target.open("a") as handle:
        yaml.safe_dump(raw, handle, sort_keys=False)
    return target


def run_logged(command: list[str], env: dict[str, str], cores: list[int], log_path: Path) -> float:
    """Run ``command`` from the repository pinned to ``cores``, output to ``log_path``; its minutes.
    A failure raises with the end of the log."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log_path.open("w") as out:
        done = subprocess.run(
            command,
            cwd=REPO,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: os.sched_setaffinity(0, cores),
            check=False,
        )
    minutes = (time.perf_counter() - start) / 60
    if done.returncode != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-15:])
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}); end of {log_path}:\n{tail}")
    return minutes


def run_recipe(
    recipe: Path, real: realsets.RealSet, ws: Path, cores: list[int], overrides: list[str], logs: Path
) -> tuple[float, float, float]:
    """Train the recipe on the set in a subprocess; (CV, test, minutes) from its ``metrics.json``."""
    config = derived_recipe(recipe, real, ws / "recipes")
    exp = load_experiment(config, overrides)  # fails here, before training, on a bad recipe or override
    run_dir = ws / exp.competition.name / "runs" / recipe.stem
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a fresh run: resuming finished folds would time nothing
    command = [sys.executable, "-m", "audiotag", "prepare", "train", "--config", str(config)]
    command += ["--data-dir", str(real.data_dir), "--run-name", recipe.stem, "--workers", str(len(cores))]
    command += ["--set", f"train.threads={len(cores)}"]
    for item in overrides:
        command += ["--set", item]
    log_path = logs / f"{real.name}-{recipe.stem}.log"
    log.info("%s / %s: training (log: %s)", real.name, recipe.stem, log_path)
    minutes = run_logged(command, {"AUDIOTAG_WORKSPACE": str(ws)}, cores, log_path)
    report = json.loads((run_dir / "metrics.json").read_text())
    test = report.get("test_score")
    return float(report["mean"]), float("nan") if test is None else float(test), minutes


def run_ensemble(
    recipes: list[Path], real: realsets.RealSet, ws: Path, cores: list[int], logs: Path
) -> tuple[str, float, float, float]:
    """Blend the recipes' runs with the ensemble stage; (row name, nested CV, test, minutes)."""
    members = [r.stem for r in recipes]
    name = "ensemble(" + "+".join(members) + ")"
    config = ws / "recipes" / "ensemble.yaml"
    spec = {
        "name": "accuracy_ensemble",
        "competition": str(real.yaml.resolve()),
        "members": members,
        "method": "mean",
        "weights": "search",
        "search": "hill_climb",
        "nested_cv": True,
    }
    config.write_text(yaml.safe_dump(spec, sort_keys=False))
    command = [sys.executable, "-m", "audiotag", "ensemble", "--config", str(config)]
    command += ["--data-dir", str(real.data_dir)]
    env = {"AUDIOTAG_WORKSPACE": str(ws), "AUDIOTAG_SUBMISSIONS": str(ws / "submissions")}
    minutes = run_logged(command, env, cores, logs / f"{real.name}-ensemble.log")
    comp = load_competition(str(real.yaml))
    report = json.loads((ws / "submissions" / comp.name / "accuracy_ensemble.json").read_text())
    test = report.get("test_score")
    return name, float(report["cv"]["mean"]), float("nan") if test is None else float(test), minutes


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", choices=list(realsets.SETS), default=list(realsets.SETS))
    parser.add_argument("--recipes", nargs="+", type=Path, default=[DEFAULT_RECIPE], metavar="YAML")
    parser.add_argument("--no-anchor", action="store_true", help="leave the anchor out")
    parser.add_argument(
        "--ensemble", action="store_true", help="also blend the recipes' runs (two recipes or more)"
    )
    parser.add_argument("--seed", type=int, default=2026, help="the sets' seed (default 2026)")
    parser.add_argument(
        "--work", type=Path, default=REPO / "competition" / "_realsets", help="sets, workspaces"
    )
    parser.add_argument("--cores", type=int, default=2, help="cores the runs are pinned to (default 2)")
    parser.add_argument("--tiny", action="store_true", help="tiny sets and 2 folds: a smoke run")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="for every recipe"
    )
    parser.add_argument("--generate-only", action="store_true", help="make the sets and stop")
    parser.add_argument("--write", action="store_true", help=f"append the table to {RESULTS.name}")
    parser.add_argument("--note", default="", help="said in the RESULTS.md block, e.g. 'cores shared'")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(False)
    console = Console()
    cores = cpu_set(args.cores)
    if args.ensemble and len(args.recipes) < 2:
        raise SystemExit("--ensemble: give two recipes or more (--recipes A.yaml B.yaml)")
    missing = [r for r in args.recipes if not r.is_file()]
    if missing:
        raise SystemExit(f"--recipes: no such file {missing[0]}")
    partial = [o for o in args.overrides if o.split("=", 1)[0].strip() == "train.folds"]
    if partial:
        raise SystemExit(
            f"--set {partial[0]}: the table scores whole runs (CV over every fold, the test from the "
            "folds' mean), and a run of some folds writes no metrics.json; train those folds with "
            "`./run.sh train --set train.folds=[...]` instead, which prints their CV and test score"
        )
    fold_overrides = ["n_folds=2"] if args.tiny else []
    run_overrides = [*args.overrides, *(["competition.n_folds=2"] if args.tiny else [])]
    rows: list[Row] = []
    prepare_minutes: dict[str, float] = {}
    for name in args.sets:
        start = time.perf_counter()
        try:
            real = realsets.ensure(name, args.work / "sets", args.seed, TINY if args.tiny else None)
        except realsets.MissingSource as exc:
            raise SystemExit(f"{name}: {exc}") from None
        if args.generate_only:
            continue
        ws = workspace(args.work, real.folder)
        os.environ["AUDIOTAG_WORKSPACE"] = str(ws)
        cfg = competition_config(real, fold_overrides)
        features = FeatureConfig.model_validate(load_group("features", ANCHOR_FEATURES))
        prepared = prepare(cfg, features, workers=len(cores))
        prepare_minutes[name] = (time.perf_counter() - start) / 60
        if not args.no_anchor:
            start = time.perf_counter()
            cv, test = run_anchor(prepared)
            rows.append(Row(name, "anchor", cfg.metric or "", cv, test, (time.perf_counter() - start) / 60))
            log.info("%s / anchor: CV %.4f, test %.4f", name, cv, test)
        for recipe in args.recipes:
            cv, test, minutes = run_recipe(recipe, real, ws, cores, run_overrides, args.work / "logs")
            rows.append(Row(name, recipe.stem, cfg.metric or "", cv, test, minutes))
            log.info("%s / %s: CV %.4f, test %.4f, %.1f min", name, recipe.stem, cv, test, minutes)
        if args.ensemble:
            row, cv, test, minutes = run_ensemble(args.recipes, real, ws, cores, args.work / "logs")
            rows.append(Row(name, row, cfg.metric or "", cv, test, minutes))
            log.info("%s / %s: nested CV %.4f, test %.4f", name, row, cv, test)
    if args.generate_only:
        return 0
    console.print(render_table(rows))
    for line in goals(rows):
        console.print(line)
    if args.write:
        niceness = os.nice(0)
        prefix = [
            *(["nice", "-n", str(niceness)] if niceness else []),
            ".venv/bin/python",
            "benchmarks/accuracy.py",
        ]
        command = shlex.join([*prefix, *(sys.argv[1:] if argv is None else argv)])
        append_results(RESULTS, markdown(rows, command, len(cores), args.note, prepare_minutes))
        console.print(f"appended to {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
