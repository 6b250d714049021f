"""The ensemble stage on hand-made run folders (fast), and once through the CLI on the tiny demo."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audiotag.cli.main import main
from audiotag.competitions import Competition, get_competition
from audiotag.config.files import configs_root
from audiotag.config.schema import EnsembleConfig, load_competition, load_ensemble
from audiotag.core.digests import file_sha256
from audiotag.core.errors import ConfigError, DataError
from audiotag.ensemble import runner as ensemble
from audiotag.ensemble.members import Member
from audiotag.ensemble.runner import ScoreLine, run_ensemble
from audiotag.reports.leaderboard import build_leaderboard
from audiotag.scoring import metrics
from audiotag.scoring.blend import scaled_ranks
from audiotag.scoring.fold_scores import FoldScores
from audiotag.scoring.predictions import read_predictions, write_predictions
from tests.conftest import tiny_args

# --------------------------------------------------------------------------- a hand-made workspace


@dataclass
class FakeCompetition:
    comp: Competition
    train_ids: list[str]
    test_ids: list[str]
    truth: np.ndarray  # (n_train, C)
    verified: np.ndarray
    folds: np.ndarray
    folds_path: Path


def fake_competition(
    name: str = "demo", n_train: int = 90, n_test: int = 12, n_folds: int = 3
) -> FakeCompetition:
    """meta.parquet, a fold file and the sample submission, as prepare would leave them."""
    comp = get_competition(load_competition(name))
    rng = np.random.default_rng(0)
    classes = comp.classes
    train_ids = [f"tr{i:03d}" for i in range(n_train)]
    test_ids = [f"te{i:03d}" for i in range(n_test)]
    truth = np.eye(len(classes))[rng.integers(0, len(classes), n_train)]
    if name == "demo2019":
        truth = np.maximum(truth, rng.random(truth.shape) < 0.1)
    labels = [[classes[j] for j in np.flatnonzero(row)] for row in truth]
    verified = np.arange(n_train) % 2 == 0
    table = pd.DataFrame(
        {
            "clip_id": train_ids + test_ids,
            "path": [f"{c}.wav" for c in train_ids + test_ids],
            "split": ["train"] * n_train + ["test"] * n_test,
            "subset": "train",
            "labels": labels + [[] for _ in test_ids],
            "verified": list(verified) + [False] * n_test,
            "duration": 1.0,
            "sample_rate": 16000,
        }
    )
    comp.dir.mkdir(parents=True)
    table.to_parquet(comp.meta_path, index=False)
    folds = rng.permutation(np.arange(n_train) % n_folds)
    folds_path = comp.dir / "folds" / f"k{n_folds}.csv"
    folds_path.parent.mkdir()
    pd.DataFrame({"clip_id": train_ids, "fold": folds}).to_csv(folds_path, index=False)
    comp.raw_dir.mkdir()
    if comp.submission_kind == "top_k_labels":
        sample = pd.DataFrame({"fname": test_ids[::-1], "label": "x"})
    else:
        sample = pd.DataFrame(0.0, index=range(n_test), columns=classes)
        sample.insert(0, "fname", test_ids[::-1])
    sample.to_csv(comp.sample_submission_path, index=False)
    return FakeCompetition(comp, train_ids, test_ids, truth, verified, folds, folds_path)


def write_run(
    fc: FakeCompetition,
    name: str,
    quality: float,
    seed: int,
    *,
    folds: np.ndarray | None = None,
    folds_path: Path | None = None,
    oof_ids: list[str] | None = None,
    test_ids: list[str] | None = None,
    classes: list[str] | None = None,
) -> list[np.ndarray]:
    """A finished run whose OOF scores are sigmoid(quality * (2 y - 1) + noise); returns each fold's
    test predictions (as read back, float32 precision)."""
    rng = np.random.default_rng(seed)
    run_dir = fc.comp.dir / "runs" / name
    folds = fc.folds if folds is None else folds
    folds_path = folds_path or fc.folds_path
    keep = set(oof_ids if oof_ids is not None else fc.train_ids)
    test_ids = test_ids if test_ids is not None else fc.test_ids
    oof = 1 / (1 + np.exp(-(quality * (2 * fc.truth - 1) + rng.normal(size=fc.truth.shape))))
    tests = []
    for k in sorted(set(folds.tolist())):
        rows = [i for i in np.flatnonzero(folds == k) if fc.train_ids[i] in keep]
        write_predictions(
            run_dir / f"fold{k}" / "oof.parquet",
            [fc.train_ids[i] for i in rows],
            classes or fc.comp.classes,
            oof[rows],
        )
        test_path = run_dir / f"fold{k}" / "test.parquet"
        write_predictions(
            test_path, test_ids, classes or fc.comp.classes, rng.random((len(test_ids), oof.shape[1]))
        )
        tests.append(read_predictions(test_path, classes or fc.comp.classes)[1])
    (run_dir / "run.json").write_text(
        json.dumps({"folds_file": str(folds_path), "folds_sha256": file_sha256(folds_path)})
    )
    (run_dir / "metrics.json").write_text(json.dumps({"folds": {str(k): 0.0 for k in set(folds.tolist())}}))
    return tests


def ensemble_config(
    workspace: Path, competition: str, members: list[str], **settings: object
) -> EnsembleConfig:
    path = workspace / "ens.yaml"
    path.write_text(json.dumps({"competition": competition, "members": members, **settings}))
    return load_ensemble(path)


def read_submission(workspace: Path, fc: FakeCompetition) -> pd.DataFrame:
    return pd.read_csv(workspace / "submissions" / fc.comp.name / "ens.csv")


# --------------------------------------------------------------------------- blending runs


def test_search_and_stacking_report(workspace: Path) -> None:
    fc = fake_competition("demo")
    write_run(fc, "good", 1.5, seed=1)
    write_run(fc, "fair", 1.0, seed=2)
    write_run(fc, "noise", 0.0, seed=3)
    cfg = ensemble_config(workspace, "demo", ["good", "fair", "noise"], stacking="logreg")
    result = run_ensemble(cfg)
    report = json.loads((workspace / "submissions" / "demo" / "ens.json").read_text())

    # every member's CV: the metric per fold on the verified clips of that fold
    for name in ("good", "fair", "noise"):
        oof = pd.concat(
            pd.read_parquet(p) for p in sorted((fc.comp.dir / "runs" / name).glob("fold*/oof.parquet"))
        )
        oof = oof.set_index("clip_id").loc[fc.train_ids].to_numpy()
        for k in range(3):
            rows = (fc.folds == k) & fc.verified
            expected = metrics.score("map3", fc.truth[rows], oof[rows])
            assert report["members"][name]["folds"][str(k)] == pytest.approx(expected)
    best = max(report["members"].values(), key=lambda m: m["mean"])
    assert report["best_member"]["name"] == "good" and report["best_member"]["mean"] == best["mean"]

    blend = report["blend"]
    assert set(blend["weights"]) == {"good", "fair", "noise"}
    assert sum(blend["weights"].values()) == pytest.approx(1.0) and min(blend["weights"].values()) >= 0
    assert blend["mean"] >= best["mean"] - 1e-12  # weights fit on all OOF: at least the best member
    assert blend["gain_over_best_member"] == pytest.approx(blend["mean"] - best["mean"])
    nested = blend["nested"]
    assert sorted(nested["folds"]) == ["0", "1", "2"] and sorted(nested["weights"]) == ["0", "1", "2"]
    assert nested["optimism"] == pytest.approx(blend["mean"] - nested["mean"])

    stacking = report["stacking"]
    assert stacking["kind"] == "logreg" and sorted(stacking["folds"]) == ["0", "1", "2"]
    assert report["submitted"] == "stacking" and report["cv"]["mean"] == pytest.approx(stacking["mean"])
    assert report["gain_over_best_member"] == pytest.approx(stacking["mean"] - best["mean"])

    # what the CLI prints
    assert result.submitted == "stacking" and result.best_member == "good"
    assert result.fold_scores == {int(k): v for k, v in stacking["folds"].items()}
    assert [line.name for line in result.lines] == [
        "good",
        "fair",
        "noise",
        "blend (mean)",
        "blend nested",
        "stacking (logreg)",
    ]
    assert [line.note.endswith("submitted") for line in result.lines] == [False] * 5 + [True]
    assert result.weights == blend["weights"]

    sub = read_submission(workspace, fc)
    assert sub["fname"].tolist() == fc.test_ids[::-1]  # the sample submission's order
    assert all(len(label.split(" ")) == 3 for label in sub["label"])


def test_geometric_blend_uses_geometric_fold_means_and_the_oof_weights(workspace: Path) -> None:
    fc = fake_competition("demo2019")
    tests_a = write_run(fc, "a", 1.0, seed=1)
    tests_b = write_run(fc, "b", 0.5, seed=2)
    cfg = ensemble_config(workspace, "demo2019", ["a", "b"], method="geometric", weights={"a": 3, "b": 1})
    result = run_ensemble(cfg)
    assert result.weights == {"a": 0.75, "b": 0.25}
    log_mean_a = np.mean([np.log(t) for t in tests_a], axis=0)
    log_mean_b = np.mean([np.log(t) for t in tests_b], axis=0)
    expected = np.exp(0.75 * log_mean_a + 0.25 * log_mean_b)
    sub = read_submission(workspace, fc).set_index("fname").loc[fc.test_ids, fc.comp.classes]
    np.testing.assert_allclose(sub.to_numpy(), expected, atol=1e-6)
    report = json.loads((workspace / "submissions" / "demo2019" / "ens.json").read_text())
    assert report["weights_mode"] == "fixed" and report["blend"]["nested"] is None
    assert report["cv"] == {k: report["blend"][k] for k in ("folds", "mean", "std")}  # nothing was fitted


def test_rank_blend_averages_each_fold_models_test_ranks(workspace: Path) -> None:
    fc = fake_competition("demo2019")
    tests_a = write_run(fc, "a", 1.0, seed=1)
    tests_b = write_run(fc, "b", 1.0, seed=2)
    run_ensemble(ensemble_config(workspace, "demo2019", ["a", "b"], method="rank", weights="equal"))
    expected = np.mean([scaled_ranks(t) for t in tests_a + tests_b], axis=0)
    sub = read_submission(workspace, fc).set_index("fname").loc[fc.test_ids, fc.comp.classes]
    np.testing.assert_allclose(sub.to_numpy(), expected, atol=1e-6)


def test_searched_power_blend_is_applied_to_test_as_chosen_on_oof(workspace: Path) -> None:
    fc = fake_competition("demo2019")
    tests = [write_run(fc, name, q, seed=s) for name, q, s in (("a", 1.2, 1), ("b", 1.0, 2), ("c", 0.0, 3))]
    result = run_ensemble(ensemble_config(workspace, "demo2019", ["a", "b", "c"], method="power", power=3.0))
    w = result.report["blend"]["weights"]
    assert result.submitted == "blend" and result.report["blend"]["nested"] is not None
    cubes = [np.mean([t**3 for t in member], axis=0) for member in tests]  # power fold mean, in blend space
    expected = (w["a"] * cubes[0] + w["b"] * cubes[1] + w["c"] * cubes[2]) ** (1 / 3)
    sub = read_submission(workspace, fc).set_index("fname").loc[fc.test_ids, fc.comp.classes]
    np.testing.assert_allclose(sub.to_numpy(), expected, atol=1e-6)
    assert result.fold_scores == {int(k): v for k, v in result.report["blend"]["nested"]["folds"].items()}


def test_per_class_scipy_search_and_mlp_stacking(workspace: Path) -> None:
    fc = fake_competition("demo2019")
    write_run(fc, "a", 1.0, seed=1)
    write_run(fc, "b", 0.8, seed=2)
    cfg = ensemble_config(
        workspace, "demo2019", ["a", "b"], search="scipy", per_class=True, iterations=10, stacking="mlp"
    )
    result = run_ensemble(cfg)
    report = result.report
    per_class = report["blend"]["weights_per_class"]
    assert set(per_class) == {"a", "b"} and set(per_class["a"]) == set(fc.comp.classes)
    for c in fc.comp.classes:
        assert per_class["a"][c] + per_class["b"][c] == pytest.approx(1.0)
    assert report["blend"]["mean"] >= max(m["mean"] for m in report["members"].values()) - 1e-12
    assert report["stacking"]["kind"] == "mlp" and result.submitted == "stacking"
    values = read_submission(workspace, fc).drop(columns="fname").to_numpy()
    assert values.min() >= 0 and values.max() <= 1


def _map_at_3(truth: np.ndarray, scores: np.ndarray) -> float:
    """MAP@3 of single-label rows, written out with numpy (independent of audiotag.scoring.metrics)."""
    top3 = np.argsort(-scores, axis=1)[:, :3]
    hits = top3 == truth.argmax(axis=1)[:, None]
    return float((hits / np.arange(1, 4)).sum(axis=1).mean())


def _read_oof(fc: FakeCompetition, name: str) -> pd.DataFrame:
    runs = fc.comp.dir / "runs" / name
    return pd.concat(pd.read_parquet(p) for p in sorted(runs.glob("fold*/oof.parquet"))).set_index("clip_id")


def test_members_with_different_oof_clips_are_scored_and_blended_on_the_common_clips(
    workspace: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fc = fake_competition("demo")
    write_run(fc, "a", 1.0, seed=1)
    write_run(fc, "b", 0.8, seed=2, oof_ids=fc.train_ids[1:])  # tr000 (verified, scored) missing
    caplog.set_level(logging.WARNING, logger="audiotag.ensemble.runner")
    result = run_ensemble(ensemble_config(workspace, "demo", ["a", "b"], weights="equal"))

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "blending on the 89 clips common to all of them (98.9% of 90), leaving out 1 of 'a' "
        "(e.g. ['tr000']), 0 of 'b'"
        in w
        and "the members' included, is on these common clips" in w
        for w in warnings
    ), warnings
    report = result.report
    assert report["n_oof_clips"] == 89 and report["n_oof_clips_any_member"] == 90
    assert report["oof_clips_left_out"] == {"a": ["tr000"], "b": []}
    assert result.oof_left_out == {"a": 1, "b": 0}
    assert [line.note for line in result.lines[:2]] == [
        "on the 89 common OOF clips (1 of its own left out)",
        "on the 89 common OOF clips (0 of its own left out)",
    ]

    # independently: intersect the OOF files, score each fold's verified clips with numpy
    common = sorted(set(_read_oof(fc, "a").index) & set(_read_oof(fc, "b").index))
    assert common == fc.train_ids[1:]
    oof = {name: _read_oof(fc, name).loc[common, fc.comp.classes].to_numpy() for name in ("a", "b")}
    oof["blend"] = (oof["a"] + oof["b"]) / 2
    row = {c: i for i, c in enumerate(fc.train_ids)}
    idx = np.array([row[c] for c in common])
    truth, folds, verified = fc.truth[idx], fc.folds[idx], fc.verified[idx]
    expected = {
        name: {k: _map_at_3(truth[(folds == k) & verified], s[(folds == k) & verified]) for k in range(3)}
        for name, s in oof.items()
    }
    for name, part in (
        ("a", report["members"]["a"]),
        ("b", report["members"]["b"]),
        ("blend", report["blend"]),
    ):
        assert {int(k): v for k, v in part["folds"].items()} == pytest.approx(expected[name])
        assert part["mean"] == pytest.approx(np.mean(list(expected[name].values())))
        assert part["std"] == pytest.approx(np.std(list(expected[name].values())))
    assert result.fold_scores == pytest.approx(expected["blend"])
    assert read_submission(workspace, fc)["fname"].tolist() == fc.test_ids[::-1]  # every test clip

    from rich.console import Console

    from audiotag.cli.stage_commands import print_ensemble

    console = Console(record=True, width=200)
    print_ensemble(console, result)
    assert "every score above is on the OOF clips all members share (left out: a 1)" in console.export_text()


def test_fold_score_summaries_are_shared() -> None:
    from audiotag.runs.folder import RunResult

    for cls in (Member, ScoreLine, RunResult, ensemble.EnsembleResult):
        assert issubclass(cls, FoldScores) and "fold_scores" in {f.name for f in fields(cls)}
    assert [f.name for f in fields(ScoreLine)] == ["name", "fold_scores", "note"]
    line = ScoreLine("x", {0: 0.5, 1: 0.7})
    assert line.mean == pytest.approx(0.6) and line.std == pytest.approx(0.1)
    run = RunResult("r", Path("."), "map3", {0: 0.5, 1: 0.7}, complete=True)
    assert (run.mean, run.std) == (line.mean, line.std)
    assert np.isnan(ScoreLine("empty", {}).mean) and np.isnan(ScoreLine("empty", {}).std)


# --------------------------------------------------------------------------- refusals


def _refused(workspace: Path, fc: FakeCompetition, match: str) -> None:
    with pytest.raises(DataError, match=match):
        run_ensemble(ensemble_config(workspace, fc.comp.name, ["a", "b"]))
    assert not (workspace / "submissions" / fc.comp.name / "ens.csv").exists()


def test_members_sharing_too_few_oof_clips_are_refused(workspace: Path) -> None:
    fc = fake_competition()  # 90 OOF clips: 80 in common is 88.9%, below min_oof_overlap
    write_run(fc, "a", 1.0, seed=1)
    write_run(fc, "b", 1.0, seed=2, oof_ids=fc.train_ids[10:])
    _refused(
        workspace,
        fc,
        r"members 'a' and 'b' predict too different OOF clips to be blended: 10 only in 'a' "
        r"\(e.g. \['tr000', 'tr001', 'tr002'\]\), 0 only in 'b' .*Only 80 of the 90 .*\(88.9%; "
        r"min_oof_overlap asks for 90%\).* leave one of them out of `members`",
    )


def test_too_small_overlap_names_the_most_different_pair(workspace: Path) -> None:
    fc = fake_competition()  # every pair of a member with 'a' shares 93%, but 'b' and 'c' only 87%
    write_run(fc, "a", 1.0, seed=1)
    write_run(fc, "b", 1.0, seed=2, oof_ids=fc.train_ids[6:])
    write_run(fc, "c", 1.0, seed=3, oof_ids=fc.train_ids[:6] + fc.train_ids[12:])
    with pytest.raises(DataError, match=r"members 'b' and 'c' .* Only 78 of the 90 "):
        run_ensemble(ensemble_config(workspace, "demo", ["a", "b", "c"]))


def test_common_oof_clips_that_lose_a_whole_fold_are_refused(workspace: Path) -> None:
    fc = fake_competition(n_folds=10)  # 9 clips a fold: without fold 9, 'b' still shares 90%
    write_run(fc, "a", 1.0, seed=1)
    write_run(
        fc, "b", 1.0, seed=2, oof_ids=[c for c, f in zip(fc.train_ids, fc.folds, strict=True) if f != 9]
    )
    _refused(
        workspace,
        fc,
        r"no OOF clip of fold\(s\) \[9\] is predicted by every ensemble member \(only by \['a'\]\)",
    )


def test_min_oof_overlap_is_the_threshold(workspace: Path) -> None:
    fc = fake_competition()
    write_run(fc, "a", 1.0, seed=1)
    write_run(fc, "b", 1.0, seed=2, oof_ids=fc.train_ids[10:])
    cfg = ensemble_config(workspace, "demo", ["a", "b"], weights="equal", min_oof_overlap=0.8)
    result = run_ensemble(cfg)
    assert result.report["n_oof_clips"] == 80 and result.oof_left_out == {"a": 10, "b": 0}
    for bad in (0, 1.5):
        with pytest.raises(ConfigError, match="min_oof_overlap"):
            ensemble_config(workspace, "demo", ["a", "b"], min_oof_overlap=bad)


@pytest.mark.parametrize("b_oof", ["same", "one_missing"])
def test_member_with_other_test_clips_is_refused(workspace: Path, b_oof: str) -> None:
    fc = fake_competition()
    write_run(fc, "a", 1.0, seed=1)
    oof_ids = fc.train_ids if b_oof == "same" else fc.train_ids[1:]
    write_run(fc, "b", 1.0, seed=2, oof_ids=oof_ids, test_ids=[*fc.test_ids[:-1], "other"])
    _refused(
        workspace,
        fc,
        r"predict different test clips: 1 only in 'a' \(e.g. \['te011'\]\), 1 only in 'b' "
        r"\(e.g. \['other'\]\); a submission needs every test clip",
    )


def test_member_with_other_classes_is_refused(workspace: Path) -> None:
    fc = fake_competition()
    write_run(fc, "a", 1.0, seed=1)
    write_run(fc, "b", 1.0, seed=2, classes=[*fc.comp.classes[:-1], "Kazoo"])
    _refused(workspace, fc, r"member 'b': .* other classes .* unknown \['Kazoo'\]")


def test_member_with_another_fold_file_is_refused(workspace: Path) -> None:
    fc = fake_competition()
    write_run(fc, "a", 1.0, seed=1)
    other_folds = np.roll(fc.folds, 1)
    other_path = fc.folds_path.with_name("k3-other.csv")
    pd.DataFrame({"clip_id": fc.train_ids, "fold": other_folds}).to_csv(other_path, index=False)
    write_run(fc, "b", 1.0, seed=2, folds=other_folds, folds_path=other_path)
    _refused(workspace, fc, "used different fold files")


def test_member_whose_folds_disagree_with_its_fold_file_is_refused(workspace: Path) -> None:
    fc = fake_competition()
    write_run(fc, "a", 1.0, seed=1)
    write_run(fc, "b", 1.0, seed=2, folds=np.roll(fc.folds, 1))
    _refused(workspace, fc, "member 'b': clip .* but the fold file puts it in fold")


def test_changed_fold_file_and_missing_fold_predictions_are_refused(workspace: Path) -> None:
    fc = fake_competition()
    write_run(fc, "a", 1.0, seed=1)
    write_run(fc, "b", 1.0, seed=2)
    (fc.comp.dir / "runs" / "b" / "fold1" / "test.parquet").unlink()
    _refused(workspace, fc, r"member 'b': .*fold1/test.parquet not found")
    write_run(fc, "b", 1.0, seed=2)
    fc.folds_path.write_text(fc.folds_path.read_text() + "\n")
    _refused(workspace, fc, "changed after the members were trained")


# --------------------------------------------------------------------------- partial runs


def unfinish(fc: FakeCompetition, name: str, keep: list[int]) -> None:
    """Run ``name`` as a partial run leaves it: ``done.json`` in the folds ``keep``, no other fold, no
    ``metrics.json`` (written once every fold is done)."""
    run_dir = fc.comp.dir / "runs" / name
    (run_dir / "metrics.json").unlink()
    for fold_dir in run_dir.glob("fold*"):
        fold = int(fold_dir.name.removeprefix("fold"))
        if fold in keep:
            (fold_dir / "done.json").write_text(json.dumps({"fold": fold, "score": 0.5}))
        else:
            shutil.rmtree(fold_dir)


def test_members_with_the_same_finished_folds_are_blended_on_those_folds(
    workspace: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fc = fake_competition()  # 3 folds
    write_run(fc, "a", 1.5, seed=1)
    write_run(fc, "b", 1.0, seed=2)
    for name in ("a", "b"):
        unfinish(fc, name, [0, 1])
    with caplog.at_level(logging.WARNING):
        result = run_ensemble(ensemble_config(workspace, "demo", ["a", "b"]))
    n_folds = 3  # of the fold file (the competition's config says 5)
    assert f"finished folds [0, 1] of {n_folds}, the same for each: blending those folds only" in caplog.text
    assert result.partial_folds == [0, 1] and sorted(result.fold_scores) == [0, 1]
    report = result.report
    assert report["partial"] is True and report["folds"] == [0, 1] and report["n_folds"] == n_folds
    assert report["n_oof_clips"] == int((fc.folds < 2).sum())
    assert sorted(report["blend"]["nested"]["folds"]) == [0, 1]
    assert len(read_submission(workspace, fc)) == len(fc.test_ids)
    row = build_leaderboard("demo", with_lb=False).rows.set_index("name").loc["ens"]
    assert row["folds"] == f"2/{n_folds}"


def test_one_finished_fold_is_blended_in_sample_and_refuses_stacking(workspace: Path) -> None:
    fc = fake_competition()
    write_run(fc, "a", 1.5, seed=1)
    write_run(fc, "b", 1.0, seed=2)
    for name in ("a", "b"):
        unfinish(fc, name, [0])
    with pytest.raises(ConfigError, match=r"stacking: logreg .* one fold only .*ensemble.stacking=null"):
        run_ensemble(ensemble_config(workspace, "demo", ["a", "b"], stacking="logreg"))
    result = run_ensemble(ensemble_config(workspace, "demo", ["a", "b"], name="one"))
    assert result.report["blend"]["nested"] is None and result.report["folds"] == [0]
    assert [line.name for line in result.lines] == ["a", "b", "blend (mean)"]


def test_members_holding_different_folds_are_refused_naming_the_missing_ones(workspace: Path) -> None:
    fc = fake_competition()
    write_run(fc, "a", 1.0, seed=1)
    write_run(fc, "b", 1.0, seed=2)
    unfinish(fc, "b", [0])
    _refused(
        workspace,
        fc,
        r"members hold different folds \('a' \[0, 1, 2\], 'b' \[0\] so far\); .* train the missing "
        r"folds \(b: \[1, 2\]\) with ./run.sh train",
    )
    shutil.rmtree(fc.comp.dir / "runs" / "b" / "fold0")
    _refused(workspace, fc, r"member 'b': no finished fold in .*train it with ./run.sh train, run name 'b'")


# --------------------------------------------------------------------------- one name, one blend


def test_a_blend_with_other_settings_is_refused_under_the_same_name(workspace: Path) -> None:
    fc = fake_competition()
    write_run(fc, "a", 1.5, seed=1)
    write_run(fc, "b", 1.0, seed=2)
    csv = workspace / "submissions" / "demo" / "ens.csv"
    run_ensemble(ensemble_config(workspace, "demo", ["a", "b"]))
    first = csv.read_bytes(), csv.with_suffix(".json").read_text()
    run_ensemble(ensemble_config(workspace, "demo", ["a", "b"]))  # the same settings: idempotent
    assert (csv.read_bytes(), csv.with_suffix(".json").read_text()) == first

    with pytest.raises(ConfigError) as refused:
        run_ensemble(ensemble_config(workspace, "demo", ["a", "b"], method="geometric", iterations=50))
    message = str(refused.value)
    expected = "ensemble 'ens' was written with other settings (iterations: 100 -> 50; method: \"mean\" -> "
    assert expected in message
    assert "--set ensemble.name=NAME" in message and str(csv.with_suffix(".json")) in message
    assert (csv.read_bytes(), csv.with_suffix(".json").read_text()) == first  # untouched

    run_ensemble(ensemble_config(workspace, "demo", ["a", "b"], method="geometric", name="ens_geo"))
    blends = build_leaderboard("demo", with_lb=False).rows.query("kind == 'blend'")
    assert sorted(blends["name"]) == ["ens", "ens_geo"]


def test_a_report_without_settings_is_replaced_with_a_warning(
    workspace: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fc = fake_competition()
    write_run(fc, "a", 1.5, seed=1)
    write_run(fc, "b", 1.0, seed=2)
    report = workspace / "submissions" / "demo" / "ens.json"
    run_ensemble(ensemble_config(workspace, "demo", ["a", "b"]))
    older = json.loads(report.read_text())
    del older["settings"]  # as audiotag wrote reports before they recorded their settings
    report.write_text(json.dumps(older))
    with caplog.at_level(logging.WARNING):
        run_ensemble(ensemble_config(workspace, "demo", ["a", "b"], method="geometric"))
    assert "records no settings (an older audiotag wrote it); replacing it" in caplog.text
    assert json.loads(report.read_text())["settings"]["method"] == "geometric"


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("weights={cnn_small: 1, other: 2}", "weights"),
        ("weights={cnn_small: -1}", "weights"),
        ("weights=best", "weights"),
        ("per_class=true", "per_class"),  # with weights: equal below
        ("power=0", "power"),
        ("members=[a, a]", "members"),
        ("method=median", "method"),
        ("search=grid", "search"),
        ("stacking=xgboost", "stacking"),
        ("iterations=0", "iterations"),
    ],
)
def test_config_errors_name_the_key(override: str, key: str) -> None:
    extra = ["weights=equal"] if key == "per_class" else []
    with pytest.raises(ConfigError, match=rf"\n  {key}: "):
        load_ensemble(configs_root() / "ensembles" / "demo.yaml", [*extra, override])


@pytest.mark.parametrize("path", sorted((configs_root() / "ensembles").glob("*.yaml")))
def test_shipped_ensembles_validate(path: Path) -> None:
    cfg = load_ensemble(path)
    assert cfg.members and cfg.weights == "search"


# --------------------------------------------------------------------------- through the CLI


def write_ensemble(path: Path, members: list[str], **settings: object) -> Path:
    path.write_text(json.dumps({"name": path.stem, "competition": "demo", "members": members, **settings}))
    return path


@pytest.mark.slow
def test_two_runs_blended_and_stacked_through_the_cli(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(tiny_args("prepare", "train")) == 0
    assert main([*tiny_args("train", extra=["train.seed=1"]), "--run-name", "b"]) == 0
    assert main([*tiny_args("train", extra=["competition.fold_seed=7"]), "--run-name", "c"]) == 0
    capsys.readouterr()

    good = write_ensemble(workspace / "ab.yaml", ["cnn_small", "b"], method="geometric", stacking="logreg")
    assert main(["ensemble", "--config", str(good)]) == 0
    out = capsys.readouterr().out
    assert "cnn_small" in out and "submission:" in out
    report = json.loads((workspace / "submissions" / "demo" / "ab.json").read_text())
    assert set(report["members"]) == {"cnn_small", "b"} and report["method"] == "geometric"
    for part in (report["members"]["b"], report["blend"], report["blend"]["nested"], report["stacking"]):
        assert sorted(part["folds"]) == ["0", "1", "2"] and part["std"] >= 0
    assert sum(report["blend"]["weights"].values()) == pytest.approx(1.0)
    assert report["blend"]["mean"] >= report["best_member"]["mean"] - 1e-12
    assert report["submitted"] == "stacking" and 0 <= report["test_score"] <= 1
    sub = pd.read_csv(workspace / "submissions" / "demo" / "ab.csv")
    sample = pd.read_csv(workspace / "competition" / "demo" / "raw" / "sample_submission.csv")
    assert sub["fname"].tolist() == sample["fname"].tolist() and list(sub.columns) == ["fname", "label"]

    bad = write_ensemble(workspace / "ac.yaml", ["cnn_small", "c"])
    assert main(["ensemble", "--config", str(bad)]) == 2
    assert "different fold files" in capsys.readouterr().err
    assert not (workspace / "submissions" / "demo" / "ac.csv").exists()

    missing = write_ensemble(workspace / "ax.yaml", ["cnn_small", "nosuchrun"])
    assert main(["ensemble", "--config", str(missing)]) == 2
    assert "nosuchrun" in capsys.readouterr().err
