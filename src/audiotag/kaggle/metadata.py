"""The Kaggle metadata of the bundle ``package`` writes, and the upload steps of its README.

``dataset-metadata.json`` makes the bundle folder a Kaggle dataset (``kaggle datasets create -p .
--dir-mode zip``: without ``--dir-mode`` the client skips the folders code/, members/ and weights/).
Its id is ``--kaggle-id OWNER/SLUG`` (or ``SLUG``, the owner then from the credentials), else the
Kaggle username of the credentials (``KAGGLE_USERNAME`` or ``kaggle.json``; nothing is sent to
Kaggle) with a slug made from the competition and the ensemble. The pinned client's rules
(``KaggleApi.dataset_create_new``, ``kernels_push``): a dataset slug and title of 6 to 50
characters, exactly one licence; a kernel title of at least 5 characters that slugifies to the
kernel's slug, a code file, a language and a kernel type.

For a kernels-only competition (``kernels_only`` in its config) the bundle also holds
``kernel-metadata.json`` and ``kernel.ipynb``: a notebook with internet off, the competition's data
and the bundle dataset attached, that finds both under ``/kaggle/input`` and runs the bundle's
``inference.py`` into ``/kaggle/working/submission.csv`` (``kaggle kernels push -p .``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from audiotag.core.atomic import atomic_write_json, atomic_write_text
from audiotag.core.errors import ConfigError
from audiotag.fetch.kaggle import kaggle_username

DATASET_METADATA = "dataset-metadata.json"
KERNEL_METADATA = "kernel-metadata.json"
KERNEL_NOTEBOOK = "kernel.ipynb"
SLUG_LENGTH = (6, 50)  # the client's limits on a dataset's slug and title
LICENSE = "other"  # the bundle holds our code and weights under their own licences (see the README)
UPLOAD = "kaggle datasets create -p . --dir-mode zip"
PUSH = "kaggle kernels push -p ."


def slugify(text: str) -> str:
    """Lowercase letters and digits joined by single hyphens (Kaggle's slugs)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _fit(text: str, what: str, source: str) -> str:
    low, high = SLUG_LENGTH
    text = text[:high].strip("- ")
    if len(text) < low:
        raise ConfigError(f"{what} {text!r} (from {source}): under {low} characters, which Kaggle refuses")
    return text


def dataset_id(kaggle_id: str | None, competition: str, ensemble: str) -> str | None:
    """``OWNER/SLUG`` of the bundle dataset, or None when no owner is known (see the module docstring)."""
    owner, _, slug = (kaggle_id or "").rpartition("/")
    owner = owner or kaggle_username() or ""
    if kaggle_id and (slug != slugify(slug) or not slug or (owner and owner != slugify(owner))):
        raise ConfigError(
            f"--kaggle-id {kaggle_id!r}: expected OWNER/SLUG or SLUG, lowercase letters, digits and hyphens "
            "(your Kaggle username and the dataset's name in its address)"
        )
    if not owner:
        return None
    source = "--kaggle-id" if kaggle_id else "the competition and ensemble names"
    return f"{owner}/{_fit(slug or slugify(f'audiotag {competition} {ensemble}'), 'dataset slug', source)}"


def kernel_notebook(dataset_slug: str, competition_slug: str) -> dict[str, Any]:
    """A one-cell notebook running the bundle's inference.py on the attached competition data."""
    source = f'''# Written by `audiotag package`: the bundle's offline inference, written to submission.csv.
import subprocess
import sys
from pathlib import Path

INPUT = Path("/kaggle/input")


def attached(name, marker):
    """The folder holding ``marker`` inside the attached input called ``name``."""
    for path in sorted(INPUT.glob("**/" + marker)):
        if name in path.relative_to(INPUT).parts:
            return path.parent
    raise SystemExit(f"no {{marker}} in an input named {{name}} under {{INPUT}}: attach it to this notebook")


bundle = attached({dataset_slug!r}, "bundle.json")
data = attached({competition_slug!r}, "sample_submission.csv")
command = [sys.executable, str(bundle / "inference.py"), "--input", str(data)]
subprocess.run([*command, "--output", "/kaggle/working/submission.csv"], check=True)
'''
    return {
        "cells": [
            {
                "cell_type": "code",
                "execution_count": None,
                "metadata": {},
                "outputs": [],
                "source": source.splitlines(keepends=True),
            }
        ],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def write_kaggle_metadata(
    bundle: Path, manifest: dict[str, Any], kaggle_id: str | None, kernels_only: bool
) -> dict[str, str | None] | None:
    """Write the dataset's metadata (and, ``kernels_only``, the kernel's) into ``bundle``; the ids
    written (``{"dataset": ..., "kernel": ...}``), or None when no owner is known (nothing written)."""
    competition, ensemble = manifest["competition"], manifest["ensemble"]["name"]
    dataset = dataset_id(kaggle_id, competition, ensemble)
    if dataset is None:
        return None
    title = _fit(f"audiotag {competition} {ensemble}", "dataset title", "the competition and ensemble names")
    atomic_write_json(
        bundle / DATASET_METADATA,
        {
            "id": dataset,
            "title": title,
            "subtitle": f"audiotag inference bundle for {competition}"[:80],  # 20 to 80 characters
            "licenses": [{"name": LICENSE}],
            "description": f"Written by `audiotag package`: see README.md. Ensemble {ensemble!r}.",
        },
    )
    kernel = None
    if kernels_only:
        kernel_title = f"{title} submission"[:50].strip()
        kernel = f"{dataset.split('/')[0]}/{slugify(kernel_title)}"
        notebook = kernel_notebook(dataset.split("/")[1], manifest["slug"])
        atomic_write_text(bundle / KERNEL_NOTEBOOK, json.dumps(notebook, indent=1) + "\n")
        atomic_write_json(
            bundle / KERNEL_METADATA,
            {
                "id": kernel,
                "title": kernel_title,
                "code_file": KERNEL_NOTEBOOK,
                "language": "python",
                "kernel_type": "notebook",
                "is_private": True,
                "enable_gpu": False,
                "enable_internet": False,  # a kernels-only competition scores notebooks run offline
                "dataset_sources": [dataset],
                "competition_sources": [manifest["slug"]],
                "kernel_sources": [],
                "model_sources": [],
            },
        )
    return {"dataset": dataset, "kernel": kernel}


def upload_steps(manifest: dict[str, Any]) -> str:
    """The README's section on getting the bundle onto Kaggle: the commands a test runs against the
    pinned client's metadata readers (each on its own line, indented four spaces)."""
    ids, slug, comp = manifest.get("kaggle"), manifest["slug"], manifest["competition"]
    if ids is None:
        first = (
            "No Kaggle username was known when this bundle was written (KAGGLE_USERNAME, "
            f"~/.kaggle/kaggle.json or --kaggle-id), so it has no {DATASET_METADATA}: package again with "
            "`--kaggle-id USER/SLUG`, then, in this folder:"
        )
    else:
        first = f"This folder is the Kaggle dataset `{ids['dataset']}` ({DATASET_METADATA}); in it, run:"
    later = 'kaggle datasets version -p . --dir-mode zip -m "..."'
    steps = (
        f"{first}\n\n    {UPLOAD}\n\n(`--dir-mode zip` uploads the folders code/, members/ and weights/, "
        f"which the client skips otherwise; later versions: `{later}`.)\n\n"
    )
    if ids is not None and ids.get("kernel"):
        return steps + (
            f"{comp} is a kernels-only competition: Kaggle takes its submissions only from a notebook run on "
            f"Kaggle with internet off. Once the dataset is ready, push the notebook {KERNEL_NOTEBOOK} "
            f"(`{ids['kernel']}`, {KERNEL_METADATA}: the competition's data and this dataset attached):\n\n"
            f"    {PUSH}\n\nthen submit its output submission.csv from the notebook's page on Kaggle.\n"
        )
    return steps + (
        "In a notebook, add the competition data and this dataset as inputs and run `!python "
        "/kaggle/input/<this dataset>/inference.py`: it reads the test audio listed in "
        f"`/kaggle/input/{slug}/sample_submission.csv` and writes `/kaggle/working/submission.csv`.\n"
    )
