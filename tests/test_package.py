"""``audiotag package``: the Kaggle offline bundle, and its inference.py reproducing the ensemble."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audiotag.cli.main import main
from audiotag.core.errors import DataError
from audiotag.kaggle.inference import find_test_audio, run_inference
from audiotag.scoring.predictions import read_predictions
from tests import demo_workspace
from tests.conftest import PYTHON


@pytest.fixture
def demo(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return demo_workspace.copy_to(demo_workspace.trained_base(tmp_path_factory), tmp_path / "ws", monkeypatch)


def run_bundle(
    out: Path, demo: Path, python_flags: list[str], env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    """The bundle's inference.py run alone on the demo's raw folder, as on Kaggle: the process, the
    submission CSV and the scores file it was asked to write."""
    sub_path, scores_path = demo / "inference" / "submission.csv", demo / "inference" / "scores.parquet"
    raw = demo / "competition" / "demo" / "raw"
    options = [
        "--input",
        raw,
        "--output",
        sub_path,
        "--workers",
        1,
        "--device",
        "cpu",
        "--scores",
        scores_path,
    ]
    proc = subprocess.run(
        [PYTHON, *python_flags, str(out / "inference.py"), *map(str, options)],
        capture_output=True,
        text=True,
        cwd=demo,
        env=env,
        timeout=300,
    )
    return proc, sub_path, scores_path


def top3(labels: pd.Series) -> list[list[str]]:
    return [str(x).split(" ") for x in labels]


@pytest.mark.slow
def test_packaged_inference_reproduces_the_ensemble_submission(demo: Path, capsys) -> None:
    out = demo / "bundle"
    assert main(["package", "-c", "demo", str(out)]) == 0
    assert "inference.py" in capsys.readouterr().out
    manifest = json.loads((out / "bundle.json").read_text())
    assert manifest["competition"] == "demo" and manifest["submission_kind"] == "top_k_labels"
    assert [m["name"] for m in manifest["members"]] == ["cnn_small", "probe_aisfx"]  # the demo's default
    assert manifest["members"][0]["folds"] == [0, 1, 2]
    for fold in range(3):
        assert (out / "members" / "cnn_small" / f"fold{fold}" / "best.pt").is_file()
    assert (out / "members" / "cnn_small" / "config.yaml").is_file()
    assert (out / "ensemble.yaml").is_file() and (out / "ensemble_report.json").is_file()
    assert (out / "code" / "audiotag" / "kaggle" / "inference.py").is_file()
    assert not list(out.rglob("__pycache__"))

    # the packaged script, alone: its own copy of the code, the demo's raw folder as /kaggle/input/<slug>
    proc, sub_path, scores_path = run_bundle(out, demo, ["-I"])
    assert proc.returncode == 0, proc.stderr
    assert f"code: {out / 'code' / 'audiotag'}" in proc.stderr
    ours = pd.read_csv(sub_path)
    theirs = pd.read_csv(demo / "submissions" / "demo" / "demo.csv")
    assert ours["fname"].tolist() == theirs["fname"].tolist()
    assert top3(ours["label"]) == top3(theirs["label"])
    # the scores match the runs' own fold-mean test predictions, blended with the ensemble's weights
    classes = json.loads((out / "bundle.json").read_text())["classes"]
    ids, scores = read_predictions(scores_path, classes)
    weights = json.loads((demo / "submissions" / "demo" / "demo.json").read_text())["blend"]["weights"]
    expected = np.zeros_like(scores)
    for name, weight in weights.items():
        run_ids, run_scores = read_predictions(
            demo / "competition" / "demo" / "runs" / name / "test.parquet", classes
        )
        expected += weight * run_scores[[run_ids.index(i) for i in ids]]
    np.testing.assert_allclose(scores, expected / sum(weights.values()), atol=1e-4)

    # a bundle packaged before the kind was renamed says top3_labels: it still writes the same file
    (out / "bundle.json").write_text(json.dumps({**manifest, "submission_kind": "top3_labels"}))
    proc, old_sub_path, _ = run_bundle(out, demo, ["-I"])
    assert proc.returncode == 0, proc.stderr
    assert pd.read_csv(old_sub_path).equals(ours)


@pytest.mark.slow
@pytest.mark.parametrize("ensemble", ["pair_rank", "pair_stack"])
def test_weighted_rank_blend_and_stacker_are_reproduced(demo: Path, ensemble: str) -> None:
    out = demo / f"bundle_{ensemble}"
    config = demo_workspace.ensemble_path(demo, ensemble)
    assert main(["package", "--ensemble", str(config), str(out)]) == 0
    manifest = json.loads((out / "bundle.json").read_text())
    assert [m["name"] for m in manifest["members"]] == ["cnn_small", "cnn_seed1"]
    report = json.loads((demo / "submissions" / "demo" / f"{ensemble}.json").read_text())
    if ensemble == "pair_stack":
        assert manifest["blend"]["stacking"]["kind"] == "logreg" and (out / "stacker_train.npz").is_file()
    else:
        assert manifest["blend"]["method"] == "rank"
        assert manifest["blend"]["weights"] == [
            report["blend"]["weights"][m] for m in ("cnn_small", "cnn_seed1")
        ]
    sub_path = run_inference(out, demo / "competition" / "demo" / "raw", demo / f"{ensemble}.csv", workers=1)
    ours = pd.read_csv(sub_path)
    theirs = pd.read_csv(demo / "submissions" / "demo" / f"{ensemble}.csv")
    assert ours["fname"].tolist() == theirs["fname"].tolist()
    assert top3(ours["label"]) == top3(theirs["label"])


@pytest.mark.slow
def test_package_refuses_what_it_cannot_ship(demo: Path, capsys) -> None:
    # a folder that is not ours is never overwritten
    busy = demo / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert main(["package", str(busy)]) == 2
    assert "did not write (notes.txt)" in capsys.readouterr().err
    assert (busy / "notes.txt").read_text() == "mine"
    # an unfinished member
    (demo / "competition" / "demo" / "runs" / "cnn_small" / "metrics.json").unlink()
    assert main(["package", str(demo / "x")]) == 2
    err = capsys.readouterr().err
    assert "'cnn_small'" in err and "./run.sh train" in err
    assert not (demo / "x").exists() and not (demo / "x.partial").exists()


@pytest.mark.slow
def test_package_needs_the_ensemble_report(demo: Path, capsys) -> None:
    (demo / "submissions" / "demo" / "demo.json").unlink()
    assert main(["package", str(demo / "x")]) == 2
    assert "run the ensemble first" in capsys.readouterr().err


def test_test_audio_is_found_by_name_and_missing_clips_are_named(tmp_path: Path) -> None:
    for folder in ("audio_train", "audio_test"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "a.wav").write_bytes(b"")
    (tmp_path / "audio_test" / "b.wav").write_bytes(b"")
    found = find_test_audio(tmp_path, ["a.wav", "b.wav"])
    assert found["a.wav"].parent.name == "audio_test"
    with pytest.raises(DataError, match=r"1 clip\(s\).*c\.wav"):
        find_test_audio(tmp_path, ["a.wav", "c.wav"])


def test_the_bundle_writes_as_many_labels_as_the_competition_asks(tmp_path: Path) -> None:
    """A table competition with top_k_labels k=2: the bundle's manifest carries k, its submission
    writer uses it (bundles written before it was recorded: 3, as every known competition)."""
    import numpy as np

    from audiotag.competitions.submission import build_submission
    from audiotag.kaggle.inference import BundleCompetition

    sample = tmp_path / "sample_submission.csv"
    sample.write_text("fname,label\na.wav,x\nb.wav,x\n")
    scores = np.array([[0.1, 0.9, 0.5, 0.2], [0.8, 0.1, 0.3, 0.7]])
    comp = BundleCompetition("birds", ["w", "x", "y", "z"], "top_k_labels", sample, label_count=2)
    sub = build_submission(comp, ["a.wav", "b.wav"], scores)
    assert sub["label"].tolist() == ["x y", "w z"]
    old = BundleCompetition("birds", ["w", "x", "y", "z"], "top_k_labels", sample)
    assert build_submission(old, ["a.wav", "b.wav"], scores)["label"].tolist() == ["x y z", "w z y"]


def test_a_linear_probe_fold_without_its_saved_probe_is_refused_with_the_remedy(tmp_path: Path) -> None:
    """A probe run fitted before probes saved ``probe.npz`` (test_package_probe.py: packaging one)."""
    from audiotag.core.errors import DataError
    from audiotag.stages.package import member_folds

    run_dir = tmp_path / "probe_aisfx"
    (run_dir / "fold0").mkdir(parents=True)
    (run_dir / "metrics.json").write_text('{"folds": {"0": 0.5}}')
    (run_dir / "config.yaml").write_text("name: probe_aisfx\nmodel:\n  name: linear_probe\n")
    (run_dir / "fold0" / "done.json").write_text("{}")
    with pytest.raises(DataError, match=r"'probe_aisfx'.*probe\.npz is missing.*train again"):
        member_folds(run_dir)
