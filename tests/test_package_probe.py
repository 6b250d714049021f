"""A linear-probe member in a package: ``probe.npz`` predicts as the probe fitted in memory, a
damaged one is refused, and a packaged ensemble of a fine-tuned CNN and an aisfx probe reproduces the
ensemble's submission offline, without the ``aisfx`` package."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audiotag.cli.main import main
from audiotag.core.errors import DataError
from audiotag.kaggle.inference import combine_members
from audiotag.models.probe import LinearProbeConfig
from audiotag.models.probe_head import PROBE_FILE, PROBE_RECORD, load_probe, read_probe
from audiotag.models.representation import EmbeddingConfig
from audiotag.scoring.predictions import read_predictions
from audiotag.stages.package import member_folds
from audiotag.train.probe import ProbeFold, fit_fold, write_fold
from tests import demo_workspace
from tests.test_package import run_bundle

CLASSES = ["a", "b", "c", "d"]
EMBEDDING = {"config": {"weights": "aisfx"}, "identity": {"weights": "x"}, "layers": ["embedding"]}


def probe_fold(single: bool, present: list[int], seed: int = 0) -> ProbeFold:
    """Float32 'embeddings' (as an embedding cache holds them) of 60 training, 15 validation and 15
    test clips; single-label targets use only the classes in ``present``."""
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(90, 8)) * 3 + 1).astype(np.float32)
    z = x @ rng.normal(size=(8, len(CLASSES)))
    if single:
        z[:, [c for c in range(len(CLASSES)) if c not in present]] = -np.inf
        y = np.eye(len(CLASSES))[z.argmax(axis=1)]
    else:
        y = (z > 0.5).astype(np.float64)
    n = 60
    weights = np.where(np.arange(n) % 3 == 0, 0.5, 1.0)
    return ProbeFold(0, x[:n], y[:n], weights, np.ones(n, bool), None, x[n : n + 15], x[n + 15 :])


def fitted_fold(
    tmp_path: Path, single: bool, head: str, present: list[int]
) -> tuple[Path, ProbeFold, object]:
    fold = probe_fold(single, present)
    cfg = LinearProbeConfig(
        embedding=EmbeddingConfig(weights="aisfx"), head=head, c_grid=[0.1, 1.0], mlp_epochs=3, hidden=16
    )
    outcome = fit_fold(cfg, fold, "accuracy" if single else "lwlrap", single, seed=0)
    fold_dir = tmp_path / "run" / "fold0"
    ids = [f"clip{i}" for i in range(15)]
    write_fold(fold_dir, outcome, {"score": 0.5}, ids, ids, CLASSES, embedding=EMBEDDING)
    return fold_dir, fold, outcome


@pytest.mark.parametrize(
    ("single", "head", "present", "output"),
    [
        (True, "linear", [0, 1, 3], "softmax"),  # class 2 absent from the training clips: scores 0
        (True, "linear", [1, 3], "binary"),  # two classes: scikit-learn's sigmoid, not a softmax
        (True, "linear", [2], "constant"),  # one class: nothing to learn
        (False, "linear", [], "sigmoid"),  # multi-label: the linear BCE head
        (True, "mlp", [0, 1, 3], "mlp_softmax"),
        (False, "mlp", [], "mlp_sigmoid"),
    ],
)
def test_the_saved_probe_predicts_as_the_fitted_one(
    tmp_path: Path, single: bool, head: str, present: list[int], output: str
) -> None:
    fold_dir, fold, outcome = fitted_fold(tmp_path, single, head, present)
    done = json.loads((fold_dir / "done.json").read_text())
    probe_path = fold_dir / PROBE_FILE
    assert done[PROBE_RECORD]["size"] == probe_path.stat().st_size
    assert sorted(p.name for p in fold_dir.iterdir()) == [
        "done.json",
        "oof.parquet",
        "probe.npz",
        "test.parquet",
    ]
    with np.load(probe_path, allow_pickle=False) as data:  # plain arrays: no pickle needed
        assert {"spec", "mean", "scale", "present"} <= set(data.files)

    loaded = load_probe(fold_dir)
    assert loaded.head.output == output
    assert loaded.layers == ["embedding"] and loaded.spec["classes"] == CLASSES
    assert loaded.spec["c"] == outcome.c and loaded.embedding["identity"] == {"weights": "x"}
    for x, in_memory in ((fold.x_val, outcome.val_scores), (fold.x_test, outcome.test_scores)):
        ours = loaded.predict(x)
        assert ours.shape == (len(x), len(CLASSES))
        np.testing.assert_allclose(ours, in_memory, rtol=1e-9, atol=1e-12)
    if single and head == "linear":  # logistic regression places the classes it saw (the MLP: all)
        absent = [c for c in range(len(CLASSES)) if c not in present]
        assert (loaded.predict(fold.x_test)[:, absent] == 0).all()
    with pytest.raises(DataError, match="expected \\(n, 8\\)"):
        loaded.predict(fold.x_test[:, :5])


def test_a_damaged_probe_file_is_refused_naming_it(tmp_path: Path) -> None:
    fold_dir, _, _ = fitted_fold(tmp_path, True, "linear", [0, 1, 3])
    path = fold_dir / PROBE_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte flipped: same size, other SHA-256
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"{re.escape(str(path))}.*corrupt or was replaced"):
        load_probe(fold_dir)
    run_dir = fold_dir.parent  # package refuses it too
    (run_dir / "metrics.json").write_text('{"folds": {"0": 0.5}}')
    (run_dir / "config.yaml").write_text("name: run\nmodel:\n  name: linear_probe\n")
    with pytest.raises(DataError, match=f"{re.escape(str(path))}.*corrupt"):
        member_folds(run_dir)
    # a file that is not a probe at all is named by the reader too
    path.write_bytes(b"not a zip file")
    with pytest.raises(DataError, match=f"{re.escape(str(path))}: not a readable linear probe file"):
        read_probe(path)
    path.unlink()
    with pytest.raises(DataError, match=f"{re.escape(str(path))} is missing"):
        load_probe(fold_dir)


# ----------------------------------------------------------------------------- end to end

ENSEMBLE = "competition: demo\nmembers: [cnn_small, probe_aisfx]\nmethod: mean\nweights: equal\n"


@pytest.mark.slow
def test_a_bundle_with_an_aisfx_probe_reproduces_the_ensemble_offline(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from audiotag.models.registry import weights_table

    KNOWN = weights_table()

    # The demo's default training already made the aisfx probe member (a default extra experiment).
    demo = demo_workspace.copy_to(demo_workspace.trained_base(tmp_path_factory), tmp_path / "ws", monkeypatch)
    runs = demo / "competition" / "demo" / "runs"
    ensemble = demo / "ensembles" / "probe_pair.yaml"
    ensemble.write_text(ENSEMBLE)
    assert main(["ensemble", "--config", str(ensemble)]) == 0
    out = demo / "bundle"
    assert main(["package", "--ensemble", str(ensemble), str(out)]) == 0

    # what the bundle holds for the probe: its run files, each fold's probe.npz and the aisfx weights
    manifest = json.loads((out / "bundle.json").read_text())
    cnn, probe = manifest["members"]
    assert (cnn["name"], cnn["kind"], probe["name"], probe["kind"]) == (
        "cnn_small",
        "network",
        "probe_aisfx",
        "probe",
    )
    member = out / "members" / "probe_aisfx"
    assert sorted(p.name for p in member.iterdir()) == [
        "config.yaml",
        "fold0",
        "fold1",
        "fold2",
        "metrics.json",
        "run.json",
    ]
    for fold in range(3):
        assert sorted(p.name for p in (member / f"fold{fold}").iterdir()) == ["done.json", "probe.npz"]
    weights = probe["embedding_weights"]
    assert weights["sha256"] == KNOWN["aisfx"].sha256 and weights["size"] == KNOWN["aisfx"].size
    assert weights["file"] == f"weights/aisfx-{weights['sha256'][:12]}.pth"
    assert (out / weights["file"]).stat().st_size == weights["size"]
    assert "linear probe" in (out / "README.md").read_text()

    # the packaged script, alone, with a stand-in `aisfx` package that holds no weights: a bundle that
    # looked for the installed wheel's checkpoint would fail; no weights cache, offline
    shadow = tmp_path / "shadow" / "aisfx"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('the bundle must not need aisfx')\n")
    env = {
        **os.environ,
        "PYTHONPATH": str(shadow.parent),
        "AUDIOTAG_CACHE": str(tmp_path / "empty_cache"),
        "AUDIOTAG_OFFLINE": "1",
    }
    proc, sub_path, scores_path = run_bundle(out, demo, ["-s", "-P"], env)
    assert proc.returncode == 0, proc.stderr
    assert "probe_aisfx embedded" in proc.stderr

    ours = pd.read_csv(sub_path)
    theirs = pd.read_csv(demo / "submissions" / "demo" / "probe_pair.csv")
    assert ours["fname"].tolist() == theirs["fname"].tolist()
    assert [str(x).split() for x in ours["label"]] == [str(x).split() for x in theirs["label"]]  # ranked
    # the blended scores: the ensemble's rule applied to the runs' own fold test predictions
    classes = manifest["classes"]
    ids, scores = read_predictions(scores_path, classes)
    folds = []
    for name in ("cnn_small", "probe_aisfx"):
        parts = [read_predictions(runs / name / f"fold{k}" / "test.parquet", classes) for k in range(3)]
        assert all(part[0] == parts[0][0] for part in parts)
        order = [parts[0][0].index(i) for i in ids]
        folds.append([part[1][order] for part in parts])
    np.testing.assert_allclose(scores, combine_members(folds, manifest["blend"], out), atol=1e-5)
    # and the probe member alone: its folds' probabilities as the run's test.parquet averaged them
    run_ids, run_test = read_predictions(runs / "probe_aisfx" / "test.parquet", classes)
    np.testing.assert_allclose(
        np.mean(folds[1], axis=0), run_test[[run_ids.index(i) for i in ids]], atol=1e-6
    )
