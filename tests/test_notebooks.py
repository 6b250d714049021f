"""The notebooks: each .ipynb is the jupytext pair of its .py, and both run on the tiny demo."""

from __future__ import annotations

import json
from pathlib import Path

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

from tests import demo_workspace
from tests.conftest import REPO

NOTEBOOKS = REPO / "notebooks"
NAMES = ["eda", "results"]


@pytest.fixture
def demo(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    ws = demo_workspace.copy_to(demo_workspace.trained_base(tmp_path_factory), tmp_path / "ws", monkeypatch)
    monkeypatch.setenv("AUDIOTAG_COMPETITION", "demo")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    return ws


@pytest.mark.parametrize("name", NAMES)
def test_notebook_pairs_are_in_sync(name: str) -> None:
    script = jupytext.read(NOTEBOOKS / f"{name}.py")
    notebook = jupytext.read(NOTEBOOKS / f"{name}.ipynb")
    assert [(c.cell_type, c.source) for c in script.cells] == [
        (c.cell_type, c.source) for c in notebook.cells
    ], f"notebooks/{name}.ipynb differs from {name}.py: run `jupytext --sync notebooks/{name}.py`"
    assert notebook.metadata["jupytext"]["formats"] == "ipynb,py:percent"


def run_notebook(path: Path, cwd: Path) -> nbformat.NotebookNode:
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
    return notebook


def outputs(notebook: nbformat.NotebookNode) -> tuple[str, int]:
    """(all text output, number of images)."""
    texts, images = [], 0
    for cell in notebook.cells:
        for out in cell.get("outputs", []):
            texts.append(out.get("text", ""))
            data = out.get("data", {})
            texts.append(data.get("text/plain", ""))
            images += "image/png" in data
    return "\n".join(texts), images


@pytest.mark.slow  # the demo workspace is trained through the CLI
def test_eda_notebook_runs_on_the_demo(demo: Path) -> None:
    text, images = outputs(run_notebook(NOTEBOOKS / "eda.ipynb", demo))
    assert "demo: 112 clips" in text and "verified share overall" in text
    assert "cache: aisfx_44k_96-" in text or "cache: logmel_16k_64-" in text  # the default members' caches
    assert images >= 4  # class counts, durations, verified share, log-mel images


@pytest.mark.slow  # the demo workspace is trained through the CLI
def test_results_notebook_runs_on_the_demo(demo: Path) -> None:
    text, images = outputs(run_notebook(NOTEBOOKS / "results.ipynb", demo))
    runs = demo / "competition" / "demo" / "runs"
    cv = {path.parent.name: json.loads(path.read_text())["mean"] for path in runs.glob("*/metrics.json")}
    best = max(cv, key=cv.__getitem__)  # of the tiny runs, whichever the numerics favour
    assert f"best run: {best} (CV map3 {cv[best]:.4f})" in text
    assert "cnn_small" in text and "cnn_seed1" in text and "pair_rank" in text
    # learning curves (of the best CNN when a probe is best), per-class AP and confusion of the best
    # run, AP of 3 blends; a probe's missing curves are said, not shown as `None`
    assert images >= 6
    assert not [line for line in text.splitlines() if line.strip() == "None"]
    if best == "probe_aisfx":
        assert "probe_aisfx has no learning curves (a linear probe is fitted without epochs)" in text
