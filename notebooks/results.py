# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Results
#
# The leaderboard of every run and blend, the learning curves of the best run, and the per-class
# average precision of the best run and of each blend, all on out-of-fold predictions. The notebook
# reads the competition named by `AUDIOTAG_COMPETITION` (default: `demo`); `./run.sh leaderboard
# --plots` writes the same pictures as PNG files.

# %%
# %matplotlib inline

import json
import os
from pathlib import Path

import pandas as pd
from IPython.display import display

from audiotag.competitions import get_competition
from audiotag.config.schema import load_competition
from audiotag.core.paths import submissions_root
from audiotag.reports import plots
from audiotag.reports.leaderboard import build_leaderboard

COMPETITION = os.environ.get("AUDIOTAG_COMPETITION", "demo")
comp = get_competition(load_competition(COMPETITION))
board = build_leaderboard(COMPETITION, with_lb=os.environ.get("AUDIOTAG_READ_LB") == "1")
for note in board.notes:
    print("note:", note)
columns = ["kind", "name", "model", "features", "seed", "folds", *board.fold_columns, "cv_mean", "cv_std"]
columns += ["train_seconds", "device", "members", "public_lb", "private_lb"]
pd.set_option("display.width", 200)
board.rows[columns].round(4)

# %% [markdown]
# ## Learning curves of the best run (trained by epochs)

# %%
runs = board.rows[board.rows["kind"] == "run"]
best_run = Path(runs.iloc[0]["path"]) if len(runs) else None
if best_run is None:
    print(f"no runs yet: ./run.sh train -c {comp.name}")
else:
    print(f"best run: {best_run.name} (CV {comp.metric} {runs.iloc[0]['cv_mean']:.4f})")
    curves = plots.learning_curves_figure(best_run, comp.metric)
    if curves is None:  # a linear probe has no epochs: the curves of the best run that has them
        with_epochs = [Path(p) for p in runs["path"] if plots.fold_histories(Path(p))]
        print(f"{best_run.name} has no learning curves (a linear probe is fitted without epochs)")
        if with_epochs:
            print(f"learning curves of the best run trained by epochs: {with_epochs[0].name}")
            curves = plots.learning_curves_figure(with_epochs[0], comp.metric)
    if curves is not None:
        display(curves)

# %% [markdown]
# ## Per-class average precision
# Which classes the best run gets right, and which it confuses (single-label competitions).

# %%
oof = plots.run_oof(comp, best_run) if best_run is not None else None
if oof is not None:
    truth, scores = oof
    display(plots.per_class_ap_figure(comp.classes, truth, scores, f"per-class AP: {best_run.name} (OOF)"))
    if comp.task == "single_label":
        display(plots.confusion_figure(comp.classes, truth, scores, f"{best_run.name} (OOF)"))

# %% [markdown]
# ## Blends

# %%
reports = sorted((submissions_root() / comp.name).glob("*.json"))
for path in reports:
    report = json.loads(path.read_text())
    if "blend" not in report:
        continue
    truth, scores = plots.blend_oof(comp, report)
    display(plots.per_class_ap_figure(comp.classes, truth, scores, f"per-class AP: blend {path.stem} (OOF)"))
if not reports:
    print(f"no blends yet: ./run.sh ensemble -c {comp.name}")
