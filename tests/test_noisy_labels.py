"""Noisy labels: per-subset loss weights, noise-robust losses, fold-safe pseudo-labels.

The losses are checked against numpy written from their formulas (not from our code); the pseudo-label
tests use a stub competition and a fake teacher whose fold-k model scores every clip (k + 1) / 10, so
which teacher fold fed which student fold shows in the numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from audiotag.config.schema import LossConfig, PseudoLabelConfig, TrainConfig
from audiotag.core.digests import file_sha256
from audiotag.core.errors import ConfigError
from audiotag.data.augment import mixup
from audiotag.runs.prepare import Prepared, clip_weights, fold_data
from audiotag.runs.pseudo_labels import (
    SCORES_FILE,
    check_teacher,
    leaked_clips,
    refine_targets,
    with_pseudo_labels,
    write_pseudo_labels,
)
from audiotag.scoring.predictions import read_predictions
from audiotag.train.losses import (
    lq_per_clip,
    lsep_per_clip,
    per_clip_loss,
    split_weights,
    training_loss,
    weighted_bce,
)

CLASSES = ["a", "b", "c"]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def _np_bce(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    p = _sigmoid(z)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean(axis=1)


@pytest.fixture
def batch() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, size=(6, 5))
    targets = (rng.random((6, 5)) < 0.4).astype(np.float64)
    targets[0] = 0  # a clip without a positive class
    targets[1] = 1  # and one without a negative
    return logits, targets


def _t(a: np.ndarray, grad: bool = False) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float64, requires_grad=grad)


# ------------------------------------------------------------------------------------------- losses


def test_lq_matches_its_formula_per_class(batch) -> None:
    z, y = batch
    q = 0.7
    p = _sigmoid(z)
    p_true = np.where(y == 1, p, 1 - p)  # the probability of the given outcome of each class
    expected = ((1 - p_true**q) / q).mean(axis=1)
    assert np.allclose(lq_per_clip(_t(z), _t(y), q).numpy(), expected, rtol=1e-10)
    soft = np.full_like(y, 0.3)  # soft targets mix the two outcomes linearly
    expected_soft = (0.3 * (1 - p**q) / q + 0.7 * (1 - (1 - p) ** q) / q).mean(axis=1)
    assert np.allclose(lq_per_clip(_t(z), _t(soft), q).numpy(), expected_soft, rtol=1e-10)


def test_lq_tends_to_bce_as_q_goes_to_zero_and_is_mae_at_one(batch) -> None:
    z, y = batch
    assert np.allclose(lq_per_clip(_t(z), _t(y), 1e-6).numpy(), _np_bce(z, y), rtol=1e-4)
    assert not np.allclose(lq_per_clip(_t(z), _t(y), 0.7).numpy(), _np_bce(z, y), rtol=1e-2)
    mae = np.abs(y - _sigmoid(z)).mean(axis=1)
    assert np.allclose(lq_per_clip(_t(z), _t(y), 1.0).numpy(), mae, rtol=1e-10)


def test_bootstrap_soft_is_bce_against_the_bootstrapped_target_with_its_gradient(batch) -> None:
    z, y = batch
    beta = 0.7
    p = _sigmoid(z)
    target = beta * y + (1 - beta) * p
    expected = -(target * np.log(p) + (1 - target) * np.log(1 - p)).mean(axis=1)
    logits = _t(z, grad=True)
    loss = per_clip_loss(LossConfig(name="bootstrap_soft", beta=beta), logits, _t(y))
    assert np.allclose(loss.detach().numpy(), expected, rtol=1e-10)
    loss.sum().backward()
    # the target is held constant: d/dz of BCE(sigmoid(z), t) is (p - t), over the C classes
    assert np.allclose(logits.grad.numpy(), (p - target) / z.shape[1], rtol=1e-9)
    at_one = per_clip_loss(LossConfig(name="bootstrap_soft", beta=1.0), _t(z), _t(y))
    assert np.allclose(at_one.numpy(), _np_bce(z, y), rtol=1e-10)


def test_lsep_matches_the_pairwise_sum(batch) -> None:
    z, y = batch
    expected = []
    for zi, yi in zip(z, y, strict=True):
        total = sum(
            np.exp(zi[u] - zi[v]) for v in range(len(zi)) for u in range(len(zi)) if yi[v] == 1 and yi[u] == 0
        )
        expected.append(np.log1p(total))
    got = lsep_per_clip(_t(z), _t(y)).numpy()
    assert np.allclose(got, expected, rtol=1e-10)
    assert got[0] == 0 and got[1] == 0  # no positive, or no negative: nothing to rank
    soft = np.array([[0.6, 0.2, 0.0]])  # pairs weighted y_v (1 - y_u), u != v
    zs = np.array([[0.5, -1.0, 2.0]])
    pairs = [(0, 1), (0, 2), (1, 0), (1, 2)]
    total = sum(soft[0, v] * (1 - soft[0, u]) * np.exp(zs[0, u] - zs[0, v]) for v, u in pairs)
    assert np.allclose(lsep_per_clip(_t(zs), _t(soft)).numpy(), [np.log1p(total)], rtol=1e-10)


@pytest.mark.parametrize("name", ["bce", "lq", "bootstrap_soft", "lsep"])
def test_every_loss_has_finite_gradients_at_extreme_logits(name: str) -> None:
    logits = torch.tensor([[90.0, -90.0, 0.0], [-90.0, 90.0, 40.0]], requires_grad=True)
    targets = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.5]])
    loss = training_loss(logits, targets, torch.ones(2), LossConfig(name=name))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_the_default_loss_is_the_historical_weighted_bce_bit_for_bit(batch) -> None:
    z, y = batch
    w = torch.tensor([1.0, 0.5, 0.5, 1.0, 0.0, 2.0], dtype=torch.float64)
    got = training_loss(_t(z), _t(y), w)
    assert torch.equal(got, weighted_bce(_t(z), _t(y), w))
    expected = (_np_bce(z, y) * w.numpy()).sum() / w.numpy().sum()
    assert np.isclose(got.item(), expected, rtol=1e-12)


def test_noisy_clips_take_the_noisy_loss_and_curated_ones_keep_bce(batch) -> None:
    z, y = batch
    weights = np.array([1.0, 0.5, 0.5, 1.0, 0.5, 1.0])
    verified = np.array([True, False, False, True, False, True])
    two = split_weights(weights, verified)
    assert two.tolist() == [[w, 0] if v else [0, w] for w, v in zip(weights, verified, strict=True)]
    lq = LossConfig(name="lq", q=0.5)
    got = training_loss(_t(z), _t(y), _t(two), LossConfig(), lq).item()
    p = _sigmoid(z)
    p_true = np.where(y == 1, p, 1 - p)
    per_clip = np.where(verified, _np_bce(z, y), ((1 - p_true**0.5) / 0.5).mean(axis=1))
    assert np.isclose(got, (per_clip * weights).sum() / weights.sum(), rtol=1e-10)
    # both columns under BCE: the one-column weighted BCE again
    same = training_loss(_t(z), _t(y), _t(two), LossConfig(), LossConfig()).item()
    assert np.isclose(same, weighted_bce(_t(z), _t(y), _t(weights)).item(), rtol=1e-12)


def test_mixup_mixes_both_weight_columns_like_the_targets() -> None:
    x, y = torch.randn(4, 8, 3), torch.rand(4, 3)
    w2 = torch.tensor(split_weights(np.array([1.0, 0.5, 1.0, 0.5]), np.array([True, False, True, False])))
    _, mixed_y, mixed_w = mixup(x, y, w2, 0.4, torch.Generator().manual_seed(3))
    _, same_y, col0 = mixup(x, y, w2[:, 0], 0.4, torch.Generator().manual_seed(3))
    _, _, col1 = mixup(x, y, w2[:, 1], 0.4, torch.Generator().manual_seed(3))
    assert mixed_w.shape == (4, 2) and torch.equal(mixed_y, same_y)
    assert torch.allclose(mixed_w[:, 0], col0) and torch.allclose(mixed_w[:, 1], col1)


# ------------------------------------------------------------------------- a stub competition on disk


class StubCompetition:
    name, classes, metric, task = "stub", CLASSES, "lwlrap", "multi_label"

    def __init__(self, root: Path, n_folds: int) -> None:
        self.dir = root
        self.cfg = SimpleNamespace(n_folds=n_folds)

    def training_clips(self, table: pd.DataFrame) -> pd.DataFrame:
        return table[table["split"] == "train"].reset_index(drop=True)

    def label_matrix(self, labels: pd.Series) -> np.ndarray:
        return np.array([[float(c in names) for c in CLASSES] for names in labels], dtype=np.float32)


def _prepared(root: Path, n_folds: int = 3) -> Prepared:
    """12 training clips, 2 curated and 2 noisy per fold, and 2 test clips."""
    rows = []
    for i in range(12):
        noisy = i % 2 == 1
        labels = [CLASSES[i % 3]] + ([CLASSES[(i + 1) % 3]] if i % 4 == 0 else [])
        rows.append(("n" if noisy else "c") + f"{i:02d}")
        rows[-1] = (rows[-1], "train", "noisy" if noisy else "curated", labels, not noisy)
    rows += [("t0", "test", "test", [], True), ("t1", "test", "test", [], True)]
    table = pd.DataFrame(rows, columns=["clip_id", "split", "subset", "labels", "verified"])
    train_ids = [r[0] for r in rows if r[1] == "train"]
    folds_path = root / "folds" / "student.csv"
    folds_path.parent.mkdir(parents=True)
    pd.DataFrame({"clip_id": train_ids, "fold": [i // 4 for i in range(12)]}).to_csv(folds_path, index=False)
    return Prepared(StubCompetition(root, n_folds), table, folds_path, root / "cache")  # type: ignore[arg-type]


def _cfg(**train) -> SimpleNamespace:
    return SimpleNamespace(train=TrainConfig(**train))


def _teacher(prepared: Prepared, name: str, folds: pd.DataFrame, done_folds=(0, 1, 2)) -> Path:
    run = prepared.competition.dir / "runs" / name
    folds_file = prepared.competition.dir / "folds" / f"{name}.csv"
    folds.to_csv(folds_file, index=False)
    run.mkdir(parents=True)
    info = {"folds_file": str(folds_file), "folds_sha256": file_sha256(folds_file)}
    (run / "run.json").write_text(json.dumps(info))
    for fold in done_folds:
        (run / f"fold{fold}").mkdir()
        (run / f"fold{fold}" / "done.json").write_text(json.dumps({"best_pt": {"sha256": f"w{fold}"}}))
    return run


class FoldTeacher:
    """Teacher fold k scores every clip (k + 1) / 10; remembers which fold was asked for what."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, list[str]]] = []

    def __call__(self, teacher, fold: int, ids: list[str]) -> np.ndarray:
        self.calls.append((fold, list(ids)))
        return np.full((len(ids), len(CLASSES)), (fold + 1) / 10)


def _student_folds(prepared: Prepared, cfg, folds=(0, 1, 2)):
    return [fold_data(prepared, cfg, fold) for fold in folds]  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- per-subset weights


def test_subset_weights_replace_the_unverified_weight_for_the_subsets_named(tmp_path: Path) -> None:
    prepared = _prepared(tmp_path)
    train = prepared.table[prepared.table["split"] == "train"]
    noisy = (train["subset"] == "noisy").to_numpy()
    by_default = clip_weights(train, TrainConfig(unverified_weight=0.3))
    assert by_default.tolist() == np.where(noisy, 0.3, 1.0).tolist()
    named = clip_weights(train, TrainConfig(unverified_weight=0.3, subset_weights={"noisy": 0.5}))
    assert named.tolist() == np.where(noisy, 0.5, 1.0).tolist()
    curated = clip_weights(train, TrainConfig(unverified_weight=0.3, subset_weights={"curated": 2.0}))
    assert curated.tolist() == np.where(noisy, 0.3, 2.0).tolist()
    with pytest.raises(ConfigError, match=r"train.subset_weights: \['nosiy'\].*\['curated', 'noisy'\]"):
        clip_weights(train, TrainConfig(subset_weights={"nosiy": 0.5}))
    with pytest.raises(ConfigError, match="every training clip weighs 0"):
        clip_weights(train, TrainConfig(subset_weights={"noisy": 0, "curated": 0}))
    with pytest.raises(ValueError, match="finite numbers >= 0"):
        TrainConfig(subset_weights={"noisy": -1})


def test_a_subset_of_weight_zero_leaves_training_but_is_still_validated(tmp_path: Path) -> None:
    prepared = _prepared(tmp_path)
    data = fold_data(prepared, _cfg(subset_weights={"noisy": 0}), 1)  # type: ignore[arg-type]
    assert data.train_ids == ["c00", "c02", "c08", "c10"]
    assert data.val_ids == ["c04", "n05", "c06", "n07"]
    assert data.val_scored.tolist() == [True, False, True, False]
    weighted = fold_data(prepared, _cfg(subset_weights={"noisy": 0.5}), 1)  # type: ignore[arg-type]
    assert dict(zip(weighted.train_ids, weighted.train_weights, strict=True))["n01"] == 0.5
    assert weighted.train_verified is not None
    assert weighted.train_verified.tolist() == [not c.startswith("n") for c in weighted.train_ids]


# ------------------------------------------------------------------------------------- pseudo-labels


def test_refine_targets_modes_by_hand() -> None:
    given = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]], dtype=np.float32)
    scores = np.array([[0.9, 0.6, 0.1], [0.2, 0.3, 0.4], [0.7, 0.2, 0.1]])
    soft, keep = refine_targets("soft", 0.5, given, scores)
    assert np.allclose(soft, scores) and keep.all()
    hard, keep = refine_targets("replace", 0.5, given, scores)
    assert hard.tolist() == [[1, 1, 0], [0, 0, 1], [1, 0, 0]] and keep.all()  # row 2: its top class
    single, _ = refine_targets("replace", 0.5, given, scores, single_label=True)
    assert single.tolist() == [[1, 0, 0], [0, 0, 1], [1, 0, 0]]
    kept, keep = refine_targets("filter", 0.5, given, scores)
    assert kept.tolist() == [[1, 0, 0], [0, 0, 0], [1, 0, 0]] and keep.tolist() == [True, False, True]


def test_student_fold_k_takes_its_pseudo_labels_from_teacher_fold_k_only(tmp_path: Path) -> None:
    prepared = _prepared(tmp_path)
    _teacher(prepared, "teacher", pd.read_csv(prepared.folds_path))  # the student's own fold file
    spec = PseudoLabelConfig(from_run="teacher", mode="soft")
    cfg = _cfg(pseudo_labels=spec.model_dump())
    run_dir = tmp_path / "runs" / "student"
    folds = _student_folds(prepared, cfg)
    teacher = FoldTeacher()
    write_pseudo_labels(spec, prepared, run_dir, folds, teacher)
    for data in folds:
        asked = [ids for fold, ids in teacher.calls if fold == data.fold]
        noisy = [c for c in data.train_ids if c.startswith("n")]
        assert asked == [noisy]  # teacher fold k was asked once, for fold k's noisy training clips
        ids, scores = read_predictions(run_dir / f"fold{data.fold}" / SCORES_FILE, CLASSES)
        assert ids == noisy and np.allclose(scores, (data.fold + 1) / 10)
        relabelled = with_pseudo_labels(data, spec, run_dir / f"fold{data.fold}", single_label=False)
        targets = dict(zip(relabelled.train_ids, relabelled.train_targets.tolist(), strict=True))
        assert all(np.allclose(targets[c], (data.fold + 1) / 10) for c in noisy)
        curated = [i for i, c in enumerate(data.train_ids) if c.startswith("c")]
        assert np.array_equal(relabelled.train_targets[curated], data.train_targets[curated])
    calls = len(teacher.calls)
    write_pseudo_labels(spec, prepared, run_dir, folds, teacher)  # written once, then reused
    assert len(teacher.calls) == calls
    done = prepared.competition.dir / "runs" / "teacher" / "fold0" / "done.json"
    done.write_text(json.dumps({"best_pt": {"sha256": "retrained"}}))
    (run_dir / "fold1" / "last.pt").write_bytes(b"")  # fold 1 started, fold 0 did not
    write_pseudo_labels(spec, prepared, run_dir, folds[:1], teacher)  # a new teacher fold 0: scored again
    assert [fold for fold, _ in teacher.calls[calls:]] == [0]
    (prepared.competition.dir / "runs" / "teacher" / "fold1" / "done.json").write_text(json.dumps({}))
    with pytest.raises(ConfigError, match="changed since this fold started"):
        write_pseudo_labels(spec, prepared, run_dir, folds, teacher)


def test_a_teacher_trained_on_the_folds_validation_clips_is_refused(tmp_path: Path) -> None:
    prepared = _prepared(tmp_path)
    rotated = pd.read_csv(prepared.folds_path)
    rotated["fold"] = (rotated["fold"] + 1) % 3  # teacher fold k trained on student fold k's clips
    _teacher(prepared, "leaky", rotated)
    spec = PseudoLabelConfig(from_run="leaky")
    cfg = _cfg(pseudo_labels=spec.model_dump())
    folds = _student_folds(prepared, cfg)
    assert leaked_clips(folds[0].val_ids, rotated, 0) == folds[0].val_ids
    teacher = FoldTeacher()
    with pytest.raises(ConfigError, match="fold 0 may have trained on 4 of this fold's 4 validation clips"):
        write_pseudo_labels(spec, prepared, tmp_path / "runs" / "student", folds, teacher)
    assert teacher.calls == []  # refused before any teacher model was asked


def test_a_teacher_that_never_saw_some_clips_is_safe_and_one_that_saw_one_is_not(tmp_path: Path) -> None:
    prepared = _prepared(tmp_path)
    own = pd.read_csv(prepared.folds_path)
    curated_only = own[own["clip_id"].str.startswith("c")]  # same folds, noisy clips never seen
    _teacher(prepared, "curated", curated_only)
    cfg = _cfg()
    check_teacher(
        PseudoLabelConfig(from_run="curated"), prepared, tmp_path / "s", _student_folds(prepared, cfg)
    )
    moved = own.copy()
    moved.loc[moved["clip_id"] == "c04", "fold"] = 0  # one validation clip of fold 1 in teacher fold 0
    _teacher(prepared, "one_off", moved)
    with pytest.raises(ConfigError, match=r"fold 1 may have trained on 1 .*\['c04'\]"):
        check_teacher(
            PseudoLabelConfig(from_run="one_off"), prepared, tmp_path / "s", _student_folds(prepared, cfg)
        )


def test_teacher_problems_are_named(tmp_path: Path) -> None:
    prepared = _prepared(tmp_path)
    folds = _student_folds(prepared, _cfg())
    with pytest.raises(ConfigError, match=r"not a run .*--run-name ghost"):
        check_teacher(PseudoLabelConfig(from_run="ghost"), prepared, tmp_path / "s", folds)
    _teacher(prepared, "half", pd.read_csv(prepared.folds_path), done_folds=(0,))
    with pytest.raises(ConfigError, match="has not finished fold 1"):
        check_teacher(PseudoLabelConfig(from_run="half"), prepared, tmp_path / "s", folds)
    own = prepared.competition.dir / "runs" / "half"
    with pytest.raises(ConfigError, match="is this run"):
        check_teacher(PseudoLabelConfig(from_run="half"), prepared, own, folds)
    no_noisy = _student_folds(prepared, _cfg(subset_weights={"noisy": 0}))
    with pytest.raises(ConfigError, match="no unverified clip to relabel"):
        check_teacher(PseudoLabelConfig(from_run="half"), prepared, tmp_path / "s", no_noisy[:1])


def test_filter_mode_drops_clips_left_without_a_label_with_their_weights(tmp_path: Path) -> None:
    prepared = _prepared(tmp_path)
    _teacher(prepared, "teacher", pd.read_csv(prepared.folds_path))
    spec = PseudoLabelConfig(from_run="teacher", mode="filter", threshold=0.25)
    cfg = _cfg(subset_weights={"noisy": 0.5}, pseudo_labels=spec.model_dump())
    run_dir = tmp_path / "runs" / "student"
    folds = _student_folds(prepared, cfg)
    write_pseudo_labels(spec, prepared, run_dir, folds, FoldTeacher())
    low = with_pseudo_labels(folds[0], spec, run_dir / "fold0", single_label=False)  # scores 0.1 < 0.25
    assert low.train_ids == [c for c in folds[0].train_ids if c.startswith("c")]
    assert low.train_weights.tolist() == [1.0] * len(low.train_ids)
    high = with_pseudo_labels(folds[2], spec, run_dir / "fold2", single_label=False)  # 0.3 >= 0.25
    assert high.train_ids == folds[2].train_ids
    assert np.array_equal(high.train_targets, folds[2].train_targets)


def test_a_linear_probe_refuses_the_losses_and_pseudo_labels_it_cannot_use() -> None:
    from audiotag.stages.train import train_experiment
    from audiotag.train.experiment import load_experiment
    from tests.conftest import REPO

    for setting in ("train.noisy_loss.name=lq", "train.loss.name=lsep", "train.pseudo_labels.from_run=t"):
        cfg = load_experiment(REPO / "configs/experiments/demo/probe_byola_random.yaml", [setting])
        with pytest.raises(ConfigError, match="linear_probe fits a logistic regression"):
            train_experiment(cfg)


# ------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_teacher_then_pseudo_labelled_student_on_the_2019_demo(workspace: Path, capsys) -> None:
    from audiotag.cli.main import main
    from audiotag.data.cache_reader import FeatureCache
    from audiotag.kaggle.inference import predict_member
    from tests.conftest import tiny_args

    def train(run: str, *settings: str) -> int:
        args = tiny_args("train", competition="demo2019", extra=["train.epochs=1", *settings])
        return main([*args, "--folds", "0,1", "--run-name", run])

    # the teacher: curated clips only, on the student's fold file (noisy clips weigh 0)
    assert train("teacher", "train.subset_weights={noisy: 0}") == 0
    student = ["train.pseudo_labels={from_run: teacher, mode: soft}", "train.subset_weights={noisy: 0.5}"]
    assert train("student", *student, "train.noisy_loss={name: lq, q: 0.7}") == 0
    comp_dir = workspace / "competition" / "demo2019"
    runs = comp_dir / "runs"
    teacher_done = json.loads((runs / "teacher" / "fold0" / "done.json").read_text())
    student_done = json.loads((runs / "student" / "fold0" / "done.json").read_text())
    assert student_done["n_train"] > teacher_done["n_train"]  # the noisy clips joined
    cache = FeatureCache(Path(json.loads((runs / "teacher" / "run.json").read_text())["cache_dir"]))
    classes = pd.read_parquet(runs / "student" / "fold0" / "oof.parquet").columns[1:].tolist()
    for fold in (0, 1):
        ids, scores = read_predictions(runs / "student" / f"fold{fold}" / SCORES_FILE, classes)
        record = json.loads((runs / "student" / f"fold{fold}" / "pseudo_labels.json").read_text())
        assert record["teacher"] == "teacher" and record["teacher_fold"] == fold
        # fold k's pseudo-labels are teacher fold k's predictions, not another fold's
        own, other = (
            predict_member(runs / "teacher", [k], cache, ids, len(classes), torch.device("cpu"))[0]
            for k in (fold, 1 - fold)
        )
        assert np.allclose(scores, own, atol=1e-6) and not np.allclose(scores, other, atol=1e-3)
    # a curated-only teacher on its own fold file trained on the student's validation clips: refused
    assert train("teacher_cur", "competition.subsets=[curated]") == 0
    capsys.readouterr()
    assert train("student_bad", "train.pseudo_labels={from_run: teacher_cur}") == 2
    assert "may have trained on" in capsys.readouterr().err
    assert not (runs / "student_bad" / "run.json").exists()  # refused before the run was recorded
