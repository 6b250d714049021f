# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Exploratory data analysis
#
# Class counts, clip durations, the share of manually verified labels and a few log-mel images from
# the feature cache of one competition. Run `./run.sh prepare -c NAME` first; the notebook reads the
# competition named by `AUDIOTAG_COMPETITION` (default: `demo`) in the workspace of
# `AUDIOTAG_WORKSPACE` (default: `competition/`).

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

from audiotag.competitions import get_competition
from audiotag.config.schema import load_competition
from audiotag.data.cache_reader import FeatureCache
from audiotag.data.meta import read_meta

COMPETITION = os.environ.get("AUDIOTAG_COMPETITION", "demo")
comp = get_competition(load_competition(COMPETITION))
table = read_meta(comp.meta_path)
train = comp.training_clips(table)
print(f"{comp.name}: {len(table)} clips ({comp.task}, metric {comp.metric}, {len(comp.classes)} classes)")
table.groupby(["split", "subset"]).size().rename("clips").to_frame()

# %% [markdown]
# ## Class counts
# Labels per class in the training clips (a multi-label clip counts once for each of its labels).

# %%
counts = train["labels"].explode().value_counts().reindex(comp.classes, fill_value=0).sort_values()
fig, ax = plt.subplots(figsize=(7, 1.2 + 0.22 * len(counts)))
ax.barh(counts.index, counts.to_numpy(), color="#3b75af")
ax.set(xlabel="training clips", title=f"{comp.name}: clips per class")
ax.grid(axis="x", alpha=0.3)
plt.show()
print(f"most common {counts.idxmax()} ({counts.max()}), rarest {counts.idxmin()} ({counts.min()})")
print(f"labels per clip: {train['labels'].map(len).value_counts().sort_index().to_dict()}")

# %% [markdown]
# ## Durations

# %%
fig, ax = plt.subplots(figsize=(7, 3))
for split, part in table.groupby("split"):
    ax.hist(part["duration"].dropna(), bins=30, alpha=0.6, label=f"{split} ({len(part)})")
ax.set(xlabel="seconds", ylabel="clips", title="clip durations")
ax.legend()
plt.show()
table.groupby("split")["duration"].describe().round(2)

# %% [markdown]
# ## Verified labels
# Share of training clips whose labels were checked by hand (all of them in curated subsets), per
# class; the CV is scored on verified clips only.

# %%
verified = train.explode("labels").groupby("labels")["verified"].mean().reindex(comp.classes)
print(f"verified share overall: {train['verified'].mean():.1%}")
fig, ax = plt.subplots(figsize=(7, 1.2 + 0.22 * len(verified)))
ax.barh(verified.index, verified.to_numpy(), color="#2ca02c")
ax.set(xlim=(0, 1), xlabel="share verified", title="verified share per class")
plt.show()

# %% [markdown]
# ## Log-mel images
# One training clip of each of a few classes, as the model sees them (from the feature cache).

# %%
caches = sorted(p.parent for p in (comp.dir / "cache").glob("*/manifest.json"))
if not caches:
    print(f"no feature cache in {comp.dir / 'cache'}; run ./run.sh prepare -c {comp.name}")
else:
    cache = FeatureCache(caches[0])
    print(f"cache: {caches[0].name}")
    shown = train.explode("labels").drop_duplicates("labels").head(4)
    shown = shown[[cache.has(c) for c in shown["clip_id"]]]
    fig, axes = plt.subplots(
        1, max(len(shown), 1), figsize=(3.2 * max(len(shown), 1), 3), squeeze=False, layout="constrained"
    )
    for ax, (_, row) in zip(axes[0], shown.iterrows(), strict=False):
        frames = np.asarray(cache.get(row["clip_id"]), dtype=np.float32)
        ax.imshow(frames.T, origin="lower", aspect="auto", cmap="magma")
        ax.set(title=f"{row['labels']}\n{row['clip_id']}", xlabel="frame", ylabel="mel bin")
    plt.show()
