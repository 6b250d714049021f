"""``benchmarks/gpu_suite.py`` runs end to end on the CPU (``--smoke``): the GPU session's one
command must not fail on a typo, and every row it measures is streamed as a JSON line. Only that it
runs and reports is checked here; the figures are the GPU machine's (benchmarks/RESULTS.md)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PYTHON, REPO


@pytest.mark.soak
@pytest.mark.slow
def test_gpu_suite_smoke_run_streams_every_section(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    args = [PYTHON, str(REPO / "benchmarks" / "gpu_suite.py"), "--out", str(tmp_path), "--smoke"]
    args += ["--sections", "train", "golden", "features"]
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "gpu_suite.jsonl").read_text().splitlines()]
    assert not [r for r in rows if "error" in r], [r for r in rows if "error" in r]
    train = [r for r in rows if r.get("kind") == "train" and "samples_per_s" in r]
    assert {r["variant"] for r in train} >= {
        "fp32",
        "bf16",
        "wave cache, bf16 + channels-last",
        "bf16 + channels-last, the training loop's own epochs",
    }
    assert all(r["samples_per_s"] > 0 for r in train)
    assert [r for r in rows if r.get("kind") == "pipeline" and r["samples_per_s"] > 0]
    golden = [r for r in rows if r["section"] == "golden bf16" and r.get("pass") is not None]
    assert golden and all(r["pass"] for r in golden)
    assert [r for r in rows if r["section"] == "feature cache" and r.get("clips_per_s", 0) > 0]
    threads = [r.get("note", "") for r in rows if r.get("path", "").startswith("build_cache, threads")]
    assert {note.split(";")[0] for note in threads} == {"soxr_hq", "sinc"}
    assert rows[-1]["section"] == "suite" and rows[-1]["status"] == "done"


def test_the_suite_budget_keeps_each_later_section_its_minimum() -> None:
    """Any order of --sections: a section starts only while it and the later ones fit, and the
    models of ``train`` share what the later sections leave (the GPU run had resume first)."""
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_suite as g

    plan = g.schedule(["resume", "train", "features"], ["cnn14", "ast_base"])
    assert [kind for _, kind, _ in plan] == ["resume", "train", "train", "features"]
    mins = g.MIN_SECONDS
    end = 420.0
    start_by, until = g.limits(plan, 0, 0.0, end)
    assert until == end - 2 * mins["train"] - mins["features"] and start_by == until - mins["resume"]
    # resume took 150 s: the two models share the 420 - 150 - 60 s left before the feature section
    _, cnn_until = g.limits(plan, 1, 150.0, end)
    assert cnn_until == 150.0 + (end - mins["features"] - 150.0) / 2
    start_by, ast_until = g.limits(plan, 2, cnn_until, end)
    assert ast_until == end - mins["features"] and start_by == ast_until - mins["train"]
    start_by, until = g.limits(plan, 3, ast_until, end)
    assert (start_by, until) == (end - mins["features"], end)
