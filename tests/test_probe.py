"""The linear probe (train/probe.py, runs/probe_training.py): no leak into the choice of C, and the
classifiers checked against scikit-learn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

import audiotag.train.probe as probe
from audiotag.config.competition import NamedCompetitionConfig
from audiotag.config.schema import FeatureConfig, TrainConfig
from audiotag.core.paths import REPO_ROOT
from audiotag.models.probe import LinearProbeConfig
from audiotag.models.representation import EmbeddingConfig
from audiotag.runs.prepare import Prepared, fold_data
from audiotag.runs.probe_training import probe_one_fold
from audiotag.train.experiment import ExperimentConfig, load_experiment
from tests.fakes import FakeMulti, FakeSingle, make

ID_SCALE = 1e-3  # column 0 of every fake embedding: the clip's number times this (a clip's id)


class IdEmbeddings:
    """An embedding cache stand-in: clip ``i`` is (i * ID_SCALE, class signal + noise...)."""

    def __init__(self, table: pd.DataFrame, classes: list[str], dim: int = 6) -> None:
        rng = np.random.default_rng(0)
        self.rows: dict[str, np.ndarray] = {}
        for i, (clip_id, labels) in enumerate(zip(table["clip_id"], table["labels"], strict=True)):
            signal = np.zeros(dim)
            for label in labels:
                signal[classes.index(label) % dim] += 3.0
            self.rows[clip_id] = np.concatenate([[i * ID_SCALE], signal + rng.normal(0, 1, dim)])
        self.dims = {"1": dim + 1}
        self.folder = Path("fake-embeddings")
        self.manifest = {"identity": {"fake": True}}  # what probe.npz records of the embeddings

    def matrix(self, layers: list[str], clip_ids: list[str]) -> np.ndarray:
        return np.stack([self.rows[c] for c in clip_ids])

    def ids_of(self, x: np.ndarray) -> set[str]:
        """The clips whose rows ``x`` holds, read from column 0."""
        by_code = {float(v[0]): c for c, v in self.rows.items()}
        return {by_code[float(code)] for code in x[:, 0]}


def prepared_fake(cls, tmp_path: Path) -> Prepared:
    comp = make(cls, tmp_path, n_folds=4)
    train = comp.parse_clip_table()
    test = train.head(10).assign(clip_id=[f"test{i}" for i in range(10)], split="test")
    table = pd.concat([train, test], ignore_index=True)
    folds = tmp_path / "folds.csv"
    pd.DataFrame({"clip_id": train["clip_id"], "fold": np.arange(len(train)) % 4}).to_csv(folds, index=False)
    return Prepared(comp, table, folds, tmp_path / "cache")


def experiment(probe_cfg: LinearProbeConfig, comp_name: str) -> ExperimentConfig:
    return ExperimentConfig(
        name="probe_test",
        competition=NamedCompetitionConfig(name=comp_name, n_folds=4),
        features=FeatureConfig(),
        model=probe_cfg,
        train=TrainConfig(unverified_weight=0.5),
    )


@pytest.mark.parametrize("cls", [FakeSingle, FakeMulti])
@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_the_outer_validation_clips_never_reach_the_choice_of_c(
    cls, head: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spies on everything that fits (standardisation, classifiers) and on the inner CV: the clips of
    the outer validation fold appear in none of their inputs, only in the final prediction."""
    prepared = prepared_fake(cls, tmp_path)
    emb = IdEmbeddings(prepared.table, prepared.competition.classes)
    cfg = experiment(
        LinearProbeConfig(
            embedding=EmbeddingConfig(weights="aisfx"), head=head, c_grid=[0.01, 1.0], mlp_epochs=3
        ),
        cls.name,
    )
    seen = {"standardise": [], "fit": [], "inner predict": [], "final predict": []}
    seen_choose: list[set[str]] = []
    inner_rows: list[tuple[np.ndarray, np.ndarray]] = []
    real = {
        name: getattr(probe, name)
        for name in ("standardise", "choose_c", "inner_splits", "fit_path", "predict")
    }
    inside = {"choose_c": False}

    class IdKeepingScaler:  # standardises, but leaves column 0 (the clip's id) readable
        def __init__(self, scaler) -> None:
            self.scaler = scaler
            self.mean_, self.scale_ = scaler.mean_, scaler.scale_  # what probe.npz keeps

        def transform(self, x: np.ndarray) -> np.ndarray:
            out = self.scaler.transform(x)
            out[:, 0] = x[:, 0]
            return out

    def standardise(x):
        seen["standardise"].append(emb.ids_of(x))
        return IdKeepingScaler(real["standardise"](x))

    def choose_c(x, *args, **kwargs):
        seen_choose.append(emb.ids_of(x))
        inside["choose_c"] = True
        try:
            return real["choose_c"](x, *args, **kwargs)
        finally:
            inside["choose_c"] = False

    def inner_splits(y, *args, **kwargs):
        splits = real["inner_splits"](y, *args, **kwargs)
        inner_rows.extend(splits)
        for train_rows, val_rows in splits:  # the inner CV covers exactly the rows it was handed
            assert sorted([*train_rows, *val_rows]) == list(range(len(y)))
        return splits

    def fit_path(x, *args, **kwargs):
        seen["fit"].append(emb.ids_of(x))
        return real["fit_path"](x, *args, **kwargs)

    def predict(predictor, x):
        seen["inner predict" if inside["choose_c"] else "final predict"].append(emb.ids_of(x))
        return real["predict"](predictor, x)

    for name, spy in (
        ("standardise", standardise),
        ("choose_c", choose_c),
        ("inner_splits", inner_splits),
        ("fit_path", fit_path),
        ("predict", predict),
    ):
        monkeypatch.setattr(probe, name, spy)
    data = fold_data(prepared, cfg, 1)
    summary = probe_one_fold(cfg, prepared, emb, ["1"], data, tmp_path / "run" / "fold1")

    val, train, test_ids = set(data.val_ids), set(data.train_ids), set(data.test_ids)
    assert seen_choose == [train]  # the choice of C is handed the training clips, all of them, only
    assert len(inner_rows) == cfg.model.inner_folds
    for what in ("standardise", "fit", "inner predict"):
        assert seen[what] and all(ids <= train for ids in seen[what]), what
    assert seen["standardise"][-1] == seen["fit"][-1] == train  # the final fit: every training clip
    assert seen["final predict"] == [val, test_ids]  # validation clips are only ever predicted, last
    assert summary["n_val"] == len(val) and 0 <= summary["score"] <= 1
    oof = pd.read_parquet(tmp_path / "run" / "fold1" / "oof.parquet")
    assert set(oof["clip_id"]) == val
    test = pd.read_parquet(tmp_path / "run" / "fold1" / "test.parquet")
    assert len(test) == 10
    scores = oof.drop(columns="clip_id").to_numpy()
    assert ((scores >= 0) & (scores <= 1)).all()
    if cls is FakeSingle:
        np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-5)  # softmax probabilities


def test_a_spy_would_catch_a_leak(tmp_path: Path) -> None:
    """The spy's arithmetic: rows of validation clips are recognised even after standardisation."""
    prepared = prepared_fake(FakeSingle, tmp_path)
    emb = IdEmbeddings(prepared.table, prepared.competition.classes)
    ids = prepared.table["clip_id"].tolist()[:7]
    x = emb.matrix(["1"], ids)
    assert emb.ids_of(x) == set(ids)


def fixed_problem(n: int = 80, d: int = 5, k: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    w_true = rng.normal(size=(d, k)) * 2
    y = (x @ w_true + rng.normal(size=(n, k)) > 0.5).astype(np.float64)
    weights = rng.uniform(0.5, 1.0, n)
    return x, y, weights


@pytest.mark.parametrize("c", [0.05, 1.0])
def test_multilabel_linear_bce_equals_sklearn_one_vs_rest(c: float) -> None:
    x, y, w = fixed_problem()
    cfg = LinearProbeConfig(embedding=EmbeddingConfig(weights="aisfx"), max_iter=500)
    (ours,) = probe.fit_path(x, y, w, [c], cfg, single=False, seed=0)
    sklearn = np.stack(
        [
            LogisticRegression(C=c, tol=1e-10, max_iter=10000)
            .fit(x, y[:, j], sample_weight=w)
            .predict_proba(x)[:, 1]
            for j in range(y.shape[1])
        ],
        axis=1,
    )
    np.testing.assert_allclose(ours(x), sklearn, atol=2e-5)


@pytest.mark.parametrize("single", [False, True])
def test_more_values_than_clips_fits_in_the_row_space_as_the_full_fit_would(single: bool) -> None:
    """A fused embedding wider than the clips count is fitted on its row space: same scores as
    scikit-learn's fit on all the columns, and the saved head (full-width weights) agrees too."""
    x, y, w = fixed_problem(n=40, d=120, k=3)
    assert probe.row_space_basis(x) is not None and probe.row_space_basis(x[:, :30]) is None
    if single:
        y = np.eye(3)[y.argmax(axis=1)]
    cfg = LinearProbeConfig(embedding=EmbeddingConfig(weights="aisfx"), max_iter=2000)
    (ours,) = probe.fit_path(x, y, w, [0.05], cfg, single=single, seed=0)
    assert ours.head.weights[0].shape == (3, 120)
    if single:
        ref = LogisticRegression(C=0.05, tol=1e-10, max_iter=10000).fit(x, y.argmax(axis=1), sample_weight=w)
        expected = ref.predict_proba(x)
    else:
        expected = np.stack(
            [
                LogisticRegression(C=0.05, tol=1e-10, max_iter=10000)
                .fit(x, y[:, j], sample_weight=w)
                .predict_proba(x)[:, 1]
                for j in range(y.shape[1])
            ],
            axis=1,
        )
    x_new = np.random.default_rng(5).normal(size=(7, 120))
    np.testing.assert_allclose(ours(x), expected, atol=2e-4)
    np.testing.assert_allclose(ours.head(x_new), ours(x_new), atol=1e-10)


def test_single_label_logistic_regression_scores_every_class() -> None:
    x, y, w = fixed_problem(k=4)
    labels = y.argmax(axis=1)
    labels[labels == 2] = 0  # class 2 never appears in these training rows
    onehot = np.eye(4)[labels]
    cfg = LinearProbeConfig(embedding=EmbeddingConfig(weights="aisfx"))
    (ours,) = probe.fit_path(x, onehot, w, [0.3], cfg, single=True, seed=0)
    ref = LogisticRegression(C=0.3, max_iter=500).fit(x, labels, sample_weight=w)
    scores = ours(x)
    assert scores.shape == (len(x), 4) and (scores[:, 2] == 0).all()
    np.testing.assert_allclose(scores[:, ref.classes_], ref.predict_proba(x), atol=1e-4)


def test_choose_c_prefers_the_smaller_c_on_ties_and_skips_a_single_candidate() -> None:
    x, y, w = fixed_problem()
    verified = np.ones(len(x), bool)
    cfg = LinearProbeConfig(embedding=EmbeddingConfig(weights="aisfx"), c_grid=[0.5])
    assert probe.choose_c(x, y, w, verified, None, cfg, "lwlrap", False, 0) == (0.5, {})
    cfg = LinearProbeConfig(embedding=EmbeddingConfig(weights="aisfx"), c_grid=[100.0, 1e-3, 1e-2])
    const = np.zeros_like(x)  # no information: every C scores the same
    c, scores = probe.choose_c(const, y, w, verified, None, cfg, "lwlrap", False, 0)
    assert c == 1e-3 and list(scores) == [1e-3, 1e-2, 100.0]
    c, scores = probe.choose_c(x, y, w, verified, None, cfg, "lwlrap", False, 0)
    assert scores[c] == max(scores.values())


def test_inner_folds_keep_groups_whole() -> None:
    rng = np.random.default_rng(0)
    y = np.eye(3)[rng.integers(0, 3, 60)]
    groups = np.repeat(np.arange(20), 3)
    for single in (True, False):
        for train_rows, val_rows in probe.inner_splits(y, groups, 3, single, 0):
            assert not set(groups[train_rows]) & set(groups[val_rows])


def test_probe_experiment_configs_load_with_their_front_end_and_the_mlp_switch() -> None:
    path = REPO_ROOT / "configs" / "experiments" / "demo" / "probe_aisfx.yaml"
    cfg = load_experiment(path)
    assert isinstance(cfg.model, LinearProbeConfig) and cfg.model.head == "linear"
    assert cfg.features.name == "aisfx_44k_96"  # features: auto, from the embedding's weights
    assert cfg.model.pretrained == "aisfx"
    assert load_experiment(path, ["model.head=mlp"]).model.head == "mlp"
    fusion = load_experiment(path.with_name("probe_aisfx_fusion.yaml"))
    assert fusion.model.embedding.layers != cfg.model.embedding.layers
