"""The ensemble stage: blend (or stack) finished runs on their OOF predictions, apply the result to
their test predictions, report every CV number, write the submission.

Members are runs, all folds of each. Their predictions are aligned by clip id; a member whose test
clips, classes or fold file differ from the others' is refused with the reason. Members may predict
different OOF clips (runs whose caches skipped different unusable clips, or a run trained on fewer
clips): they are blended and scored on the OOF clips common to all of them, with a warning, as long as
those are at least ``min_oof_overlap`` of the clips any member predicts, and refused otherwise. The
numbers, all on those common clips:

- every member's CV: the competition metric per fold on the scored OOF clips (verified clips of the
  fold, or all of them when the fold has none), recomputed here from the fold files so that members
  and blends are measured by one scorer;
- the blend's CV with the chosen weights. Searched weights are fitted on all OOF predictions, so this
  number is optimistic ("in-sample"); the nested CV (weights fitted on the other folds, scored on
  the held-out fold) is reported beside it, and their difference is the optimism;
- the stacker's CV, always nested (fitted on the other folds, scored on the held-out fold);
- the gain of each over the best single member.

Test predictions: each member's fold models are averaged by the blend's rule (``BlendRule.fold_average``)
and blended with exactly the weights chosen on OOF; with ``stacking`` the final stacker (fitted on all
scored OOF clips, the clips whose labels the CV trusts) predicts from the members' test logits averaged
over their fold models, and that is what is submitted.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from audiotag.atomic import atomic_write_json
from audiotag.blend import BlendRule, OofScorer, nested_weight_cv, normalise_weights, search_weights
from audiotag.competitions import Competition, get_competition
from audiotag.competitions.folds import file_sha256, load_folds
from audiotag.config import EnsembleConfig
from audiotag.data.meta import read_meta
from audiotag.errors import DataError
from audiotag.fold_scores import FoldScores, fold_mean, fold_std
from audiotag.paths import submissions_root
from audiotag.stacking import logit_features, make_stacker, nested_predictions
from audiotag.submission import build_submission, write_submission

log = logging.getLogger(__name__)


@dataclass
class Member(FoldScores):
    """One run: its OOF predictions (rows held out in ``oof_folds``) and each fold model's test
    predictions (rows in ``test_ids`` order). ``fold_scores`` is its CV, as the blend is scored."""

    name: str
    fold_scores: dict[int, float]
    folds_file: str
    folds_sha256: str
    oof_ids: list[str]
    oof: np.ndarray
    oof_folds: np.ndarray
    test_ids: list[str]
    test_folds: list[np.ndarray]

    @property
    def test(self) -> np.ndarray:
        """Arithmetic mean of the fold models' test predictions (the run's own test.parquet)."""
        return np.mean(np.stack(self.test_folds), axis=0)


@dataclass
class ScoreLine(FoldScores):
    """One row of the CV table: a member, the blend (in-sample or nested), or the stacker."""

    name: str
    fold_scores: dict[int, float]
    note: str = ""


@dataclass
class EnsembleResult(FoldScores):
    """``fold_scores`` is the honest CV of what was submitted: the nested CV when weights were searched
    or a stacker was fitted, otherwise the blend's plain CV. ``lines`` holds every row of the CV table
    (members first), ``weights`` the blend weight of each member (its mean over classes when they are
    per class), ``gain`` the submitted CV mean minus the best member's, ``oof_left_out`` how many of each
    member's OOF clips were outside the clips common to all members (every CV number is on those)."""

    metric: str
    members: list[Member]
    fold_scores: dict[int, float]
    submission: Path
    test_score: float | None = None
    report: dict[str, Any] = field(default_factory=dict)
    lines: list[ScoreLine] = field(default_factory=list)
    weights: dict[str, float] = field(default_factory=dict)
    submitted: str = "blend"
    best_member: str = ""
    gain: float = 0.0
    oof_left_out: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------- loading and checks


def read_member_predictions(path: Path, classes: list[str], member: str) -> tuple[list[str], np.ndarray]:
    """(clip ids, scores with columns in the competition's class order) of one prediction file."""
    if not path.is_file():
        raise DataError(
            f"ensemble member {member!r}: {path} not found; the run is missing a fold's predictions "
            f"(train it again with ./run.sh train, run name {member!r})"
        )
    df = pd.read_parquet(path)
    columns = [c for c in df.columns if c != "clip_id"]
    if columns != classes:
        missing = [c for c in classes if c not in set(columns)]
        extra = [c for c in columns if c not in set(classes)]
        if missing or extra or len(columns) != len(classes):
            raise DataError(
                f"ensemble member {member!r}: {path} predicts other classes than the competition and the "
                f"other members ({len(columns)} columns for {len(classes)} classes; missing {missing[:5]}, "
                f"unknown {extra[:5]})"
            )
    ids = df["clip_id"].astype(str).tolist()
    if len(set(ids)) != len(ids):
        raise DataError(f"ensemble member {member!r}: {path} lists a clip more than once")
    return ids, df[classes].to_numpy(dtype=np.float64)


def load_member(comp: Competition, name: str) -> Member:
    """Read a finished run: every fold's OOF and test predictions, with the fold each OOF row was in."""
    run_dir = comp.dir / "runs" / name
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise DataError(
            f"ensemble member {name!r}: {metrics_path} not found; the run is missing or has unfinished folds "
            f"(train it with ./run.sh train, run name {name!r})"
        )
    info = json.loads((run_dir / "run.json").read_text())
    trained = json.loads(metrics_path.read_text())
    folds = sorted(int(k) for k in trained["folds"])
    oof_ids: list[str] = []
    oof_parts, oof_folds, test_folds = [], [], []
    test_ids: list[str] | None = None
    for fold in folds:
        fold_dir = run_dir / f"fold{fold}"
        ids, scores = read_member_predictions(fold_dir / "oof.parquet", comp.classes, name)
        oof_ids += ids
        oof_parts.append(scores)
        oof_folds.append(np.full(len(ids), fold, dtype=np.int64))
        ids, scores = read_member_predictions(fold_dir / "test.parquet", comp.classes, name)
        if test_ids is None:
            test_ids = ids
        elif set(ids) != set(test_ids):
            raise DataError(
                f"ensemble member {name!r}: fold {fold} predicts other test clips than fold {folds[0]}"
            )
        position = {c: i for i, c in enumerate(ids)}
        test_folds.append(scores[[position[c] for c in test_ids]])
    if len(set(oof_ids)) != len(oof_ids):
        raise DataError(f"ensemble member {name!r}: a clip appears in the OOF predictions of two folds")
    return Member(
        name=name,
        fold_scores={},
        folds_file=str(info["folds_file"]),
        folds_sha256=str(info["folds_sha256"]),
        oof_ids=oof_ids,
        oof=np.concatenate(oof_parts),
        oof_folds=np.concatenate(oof_folds),
        test_ids=test_ids or [],
        test_folds=test_folds,
    )


def _difference(name_a: str, a: list[str], name_b: str, b: list[str]) -> str:
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    return (
        f"{len(only_a)} only in {name_a!r} (e.g. {only_a[:3]}), "
        f"{len(only_b)} only in {name_b!r} (e.g. {only_b[:3]})"
    )


@dataclass(frozen=True)
class OofOverlap:
    """The OOF clips common to all members (sorted), how many clips any member predicts, and for each
    member its clips outside the common set (sorted)."""

    common: list[str]
    n_union: int
    dropped: dict[str, list[str]]

    @property
    def share(self) -> float:
        return len(self.common) / self.n_union if self.n_union else 1.0


def oof_overlap(members: list[Member]) -> OofOverlap:
    sets = [set(m.oof_ids) for m in members]
    common = set.intersection(*sets)
    return OofOverlap(
        common=sorted(common),
        n_union=len(set.union(*sets)),
        dropped={m.name: sorted(ids - common) for m, ids in zip(members, sets, strict=True)},
    )


def _pair_share(a: Member, b: Member) -> float:
    ids_a, ids_b = set(a.oof_ids), set(b.oof_ids)
    union = len(ids_a | ids_b)
    return len(ids_a & ids_b) / union if union else 1.0


def check_oof_overlap(members: list[Member], min_overlap: float) -> None:
    """Refuse members whose common OOF clips are less than ``min_overlap`` of all their OOF clips."""
    overlap = oof_overlap(members)
    if overlap.share >= min_overlap:
        check_folds_kept(members, overlap.common)
        return
    a, b = min(itertools.combinations(members, 2), key=lambda pair: _pair_share(*pair))
    raise DataError(
        f"ensemble members {a.name!r} and {b.name!r} predict too different OOF clips to be blended: "
        f"{_difference(a.name, a.oof_ids, b.name, b.oof_ids)}. Only {len(overlap.common)} of the "
        f"{overlap.n_union} OOF clips of the members are common to all of them ({overlap.share:.1%}; "
        f"min_oof_overlap asks for {min_overlap:.0%}), too few to compare or blend "
        "them. Train the members on the same clips (the same fold file and the same usable clips of the "
        "cache), or leave one of them out of `members`"
    )


def check_folds_kept(members: list[Member], common: list[str]) -> None:
    """Refuse a common OOF set that lost a whole fold: the CV mean would silently cover fewer folds."""
    kept, every = set(), set()
    keep = set(common)
    for m in members:
        every |= set(m.oof_folds.tolist())
        kept |= {int(f) for c, f in zip(m.oof_ids, m.oof_folds, strict=True) if c in keep}
    lost = sorted(every - kept)
    if lost:
        holders = [m.name for m in members if set(lost) & set(m.oof_folds.tolist())]
        raise DataError(
            f"no OOF clip of fold(s) {lost} is predicted by every ensemble member (only by {holders}); "
            "the CV would leave those folds out. Train the members on the same clips, or leave out the "
            "members that lack them"
        )


def warn_dropped_oof(overlap: OofOverlap) -> None:
    """Say which members lose OOF clips to the common set, and that every CV number is on that set."""
    if not any(overlap.dropped.values()):
        return
    per_member = ", ".join(
        f"{len(ids)} of {name!r}" + (f" (e.g. {ids[:3]})" if ids else "")
        for name, ids in overlap.dropped.items()
    )
    log.warning(
        "ensemble: the members predict different OOF clips (e.g. their caches skipped different unusable "
        "clips); blending on the %d clips common to all of them (%.1f%% of %d), leaving out %s. Every CV "
        "number of this ensemble, the members' included, is on these common clips: comparable with one "
        "another, not with the runs' own metrics.json",
        len(overlap.common),
        100 * overlap.share,
        overlap.n_union,
        per_member,
    )


def check_members(members: list[Member], min_oof_overlap: float) -> pd.DataFrame:
    """Refuse members that cannot be blended; return the shared fold table (clip_id, fold)."""
    first = members[0]
    for other in members[1:]:
        if other.folds_sha256 != first.folds_sha256:
            raise DataError(
                f"ensemble members {first.name!r} and {other.name!r} used different fold files "
                f"({first.folds_file} vs {other.folds_file}); their OOF scores are not comparable"
            )
    path = Path(first.folds_file)
    folds = load_folds(path)
    if file_sha256(path) != first.folds_sha256:
        raise DataError(
            f"fold file {path} changed after the members were trained; their OOF predictions no longer "
            "match it (train them again)"
        )
    fold_of = folds.set_index("clip_id")["fold"]
    for member in members:
        unknown = sorted(set(member.oof_ids) - set(fold_of.index))
        if unknown:
            raise DataError(
                f"ensemble member {member.name!r}: OOF clips not in the fold file {path}: {unknown[:3]}"
            )
        expected = fold_of.loc[member.oof_ids].to_numpy()
        wrong = np.flatnonzero(expected != member.oof_folds)
        if wrong.size:
            i = int(wrong[0])
            raise DataError(
                f"ensemble member {member.name!r}: clip {member.oof_ids[i]!r} is in its "
                f"fold{member.oof_folds[i]} OOF predictions, but the fold file puts it in fold {expected[i]} "
                f"({wrong.size} such clips)"
            )
    for other in members[1:]:
        if set(first.test_ids) != set(other.test_ids):
            raise DataError(
                f"ensemble members {first.name!r} and {other.name!r} predict different test clips: "
                + _difference(first.name, first.test_ids, other.name, other.test_ids)
                + "; a submission needs every test clip from every member (predict the missing ones, "
                "or leave the member out)"
            )
    check_oof_overlap(members, min_oof_overlap)
    return folds


def align(members: list[Member]) -> tuple[list[str], list[str]]:
    """Keep the OOF clips common to all members and reorder every member's rows by sorted clip id (in
    place); return (OOF ids, test ids). Dropping OOF clips is logged; ``check_members`` bounds it."""
    overlap = oof_overlap(members)
    warn_dropped_oof(overlap)
    oof_ids, test_ids = overlap.common, sorted(members[0].test_ids)
    for m in members:
        oof_pos = {c: i for i, c in enumerate(m.oof_ids)}
        test_pos = {c: i for i, c in enumerate(m.test_ids)}
        oof_order = [oof_pos[c] for c in oof_ids]
        test_order = [test_pos[c] for c in test_ids]
        m.oof, m.oof_folds, m.oof_ids = m.oof[oof_order], m.oof_folds[oof_order], list(oof_ids)
        m.test_folds, m.test_ids = [t[test_order] for t in m.test_folds], list(test_ids)
    return oof_ids, test_ids


def scored_rows(
    comp: Competition, table: pd.DataFrame, clip_ids: list[str], folds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(truth (n, C), scored mask (n,)): the verified clips of each fold, or all of a fold's clips when
    it has no verified one, as the train stage scores a fold."""
    rows = table.set_index("clip_id")
    unknown = sorted(set(clip_ids) - set(rows.index))
    if unknown:
        raise DataError(f"OOF clips not in the clip table {comp.meta_path}: {unknown[:3]}")
    rows = rows.loc[clip_ids]
    truth = comp.label_matrix(rows["labels"])
    verified = rows["verified"].to_numpy(dtype=bool)
    scored = verified.copy()
    for fold in np.unique(folds):
        in_fold = folds == fold
        if not (verified & in_fold).any():
            log.warning("ensemble: fold %d has no verified clip; scoring it on all of its clips", fold)
            scored |= in_fold
    return truth, scored


# --------------------------------------------------------------------------- the stage

TEST_FOLD_AVERAGE = {
    "mean": "arithmetic mean of each member's fold models' test predictions",
    "geometric": "geometric mean of each member's fold models' test predictions",
    "power": "power mean (same exponent) of each member's fold models' test predictions",
    "rank": "each fold model's test predictions ranked per class over all test clips, scaled to [0, 1], "
    "then averaged over the fold models (OOF ranks: within each fold's scored clips)",
}


def _weights_by_member(names: list[str], weights: np.ndarray) -> dict[str, float]:
    """Each member's weight (its mean over classes when weights are per class), exact: the package and
    the plots re-blend with these numbers."""
    values = weights if weights.ndim == 1 else weights.mean(axis=1)
    return {name: float(w) for name, w in zip(names, values, strict=True)}


def _cv(scores: dict[int, float]) -> dict[str, Any]:
    return {"folds": scores, "mean": fold_mean(scores), "std": fold_std(scores)}


@dataclass
class BlendOutcome:
    """The chosen weights, the blend's CV with them (in-sample), the nested CV of the search when
    weights were searched, and the blend applied to the test predictions."""

    weights: np.ndarray
    searched: bool
    in_sample: dict[int, float]
    nested: dict[int, float] | None
    nested_weights: dict[int, np.ndarray]
    test: np.ndarray


def fit_blend(
    cfg: EnsembleConfig, members: list[Member], scored: np.ndarray, scorer: OofScorer
) -> BlendOutcome:
    rule = BlendRule(cfg.method, cfg.power)
    # OOF in blend space, scored clips only: for rank, ranks within each fold's scored clips.
    space = np.stack([rule.forward(m.oof[scored], scorer.folds) for m in members])

    def fit_weights(space_part: np.ndarray, scorer_part: OofScorer) -> np.ndarray:
        return search_weights(
            space_part,
            rule,
            scorer_part,
            search=cfg.search,
            iterations=cfg.iterations,
            per_class=cfg.per_class,
        )

    searched = cfg.weights == "search" and len(members) > 1
    if isinstance(cfg.weights, dict):
        weights = normalise_weights(np.array([cfg.weights[m.name] for m in members]), len(members))
    elif searched:
        log.info("ensemble: searching %s weights (%s) on OOF predictions", cfg.method, cfg.search)
        if cfg.per_class:
            n_classes = space.shape[2]
            log.info(
                "ensemble: per-class search: about %d metric evaluations per fit",
                n_classes * cfg.iterations * len(members),
            )
        weights = fit_weights(space, scorer)
    else:
        weights = np.full(len(members), 1.0 / len(members))
    nested, nested_weights = None, {}
    if searched and cfg.nested_cv:
        log.info("ensemble: nested CV of the weight search (%d folds)", len(scorer.fold_ids))
        nested, nested_weights = nested_weight_cv(space, scorer, fit_weights, rule)
    test_space = np.stack([rule.fold_average(m.test_folds) for m in members])
    return BlendOutcome(
        weights=weights,
        searched=searched,
        in_sample=scorer.fold_scores(rule.combine(space, weights)),
        nested=nested,
        nested_weights=nested_weights,
        test=rule.combine(test_space, weights),
    )


def fit_stacking(
    cfg: EnsembleConfig, members: list[Member], scored: np.ndarray, scorer: OofScorer
) -> tuple[dict[int, float], np.ndarray]:
    """(nested CV fold scores, test predictions of the stacker fitted on all scored OOF clips)."""
    assert cfg.stacking is not None
    log.info("ensemble: %s stacker, nested CV over %d folds", cfg.stacking, len(scorer.fold_ids))
    fit_predict = make_stacker(cfg.stacking, c=cfg.stacking_c, hidden=cfg.stacking_hidden, seed=cfg.seed)
    features = logit_features([m.oof[scored] for m in members])
    fold_scores = scorer.fold_scores(nested_predictions(features, scorer.truth, scorer.folds, fit_predict))
    n_folds = len(members[0].test_folds)
    test_features = np.mean(
        [logit_features([m.test_folds[k] for m in members]) for k in range(n_folds)], axis=0
    )
    return fold_scores, fit_predict(features, scorer.truth, test_features)


def _member_note(overlap: OofOverlap | None, name: str) -> str:
    """Where members' OOF clips differ, the note says every line is scored on the common clips."""
    if overlap is None or not any(overlap.dropped.values()):
        return ""
    return f"on the {len(overlap.common)} common OOF clips ({len(overlap.dropped[name])} of its own left out)"


def score_lines(
    cfg: EnsembleConfig,
    members: list[Member],
    blend: BlendOutcome,
    stacked: dict[int, float] | None,
    overlap: OofOverlap | None = None,
) -> list[ScoreLine]:
    lines = [ScoreLine(m.name, m.fold_scores, _member_note(overlap, m.name)) for m in members]
    lines.append(
        ScoreLine(
            f"blend ({cfg.method})",
            blend.in_sample,
            "in-sample weights: optimistic" if blend.searched else "",
        )
    )
    if blend.nested is not None:
        lines.append(ScoreLine("blend nested", blend.nested, "weights from other folds"))
    if stacked is not None:
        lines.append(ScoreLine(f"stacking ({cfg.stacking})", stacked, "nested"))
    lines[-1].note = f"{lines[-1].note}; submitted" if lines[-1].note else "submitted"
    return lines


def run_ensemble(cfg: EnsembleConfig) -> EnsembleResult:
    comp = get_competition(cfg.competition)
    members = [load_member(comp, name) for name in cfg.members]
    check_members(members, cfg.min_oof_overlap)
    overlap = oof_overlap(members)
    oof_ids, test_ids = align(members)
    names = [m.name for m in members]
    folds = members[0].oof_folds
    truth, scored = scored_rows(comp, read_meta(comp.meta_path), oof_ids, folds)
    scorer = OofScorer(comp.metric, truth[scored], folds[scored])
    for m in members:
        m.fold_scores = scorer.fold_scores(m.oof[scored])
    best = max(members, key=lambda m: m.mean)

    blend = fit_blend(cfg, members, scored, scorer)
    stacked: dict[int, float] | None = None
    if cfg.stacking is not None:
        stacked, final_test = fit_stacking(cfg, members, scored, scorer)
        final_scores, submitted = stacked, "stacking"
    else:
        final_test, submitted = blend.test, "blend"
        final_scores = blend.nested if blend.nested is not None else blend.in_sample

    path = submissions_root() / comp.name / f"{cfg.name}.csv"
    write_submission(comp, build_submission(comp, test_ids, final_test), path)
    test_score = comp.score_test(test_ids, final_test)
    result = EnsembleResult(
        metric=comp.metric,
        members=members,
        fold_scores=final_scores,
        submission=path,
        test_score=test_score,
        lines=score_lines(cfg, members, blend, stacked, overlap),
        weights=_weights_by_member(names, blend.weights),
        submitted=submitted,
        best_member=best.name,
        gain=fold_mean(final_scores) - best.mean,
        oof_left_out={name: len(ids) for name, ids in overlap.dropped.items()},
    )

    report_blend: dict[str, Any] = {
        **_cv(blend.in_sample),
        "weights": result.weights,
        "cv_kind": "in-sample (weights fit on all OOF)" if blend.searched else "fixed weights",
        "gain_over_best_member": fold_mean(blend.in_sample) - best.mean,
        "nested": None,
        "test_score": comp.score_test(test_ids, blend.test),
    }
    if blend.weights.ndim == 2:
        report_blend["weights_per_class"] = {
            name: dict(zip(comp.classes, map(float, row), strict=True))
            for name, row in zip(names, blend.weights, strict=True)
        }
    if blend.nested is not None:
        report_blend["nested"] = {
            **_cv(blend.nested),
            "weights": {k: _weights_by_member(names, w) for k, w in blend.nested_weights.items()},
            "gain_over_best_member": fold_mean(blend.nested) - best.mean,
            "optimism": fold_mean(blend.in_sample) - fold_mean(blend.nested),
        }
    report_stacking = None
    if stacked is not None:
        report_stacking = {
            "kind": cfg.stacking,
            **_cv(stacked),
            "cv_kind": "nested (stacker fit on the other folds)",
            "gain_over_best_member": fold_mean(stacked) - best.mean,
            "test_score": test_score,
        }
    result.report = {
        "name": cfg.name,
        "competition": comp.name,
        "metric": comp.metric,
        "method": cfg.method,
        "power": cfg.power if cfg.method == "power" else None,
        "test_fold_average": TEST_FOLD_AVERAGE[cfg.method],
        "weights_mode": cfg.weights if isinstance(cfg.weights, str) else "fixed",
        "search": cfg.search if blend.searched else None,
        "per_class": cfg.per_class,
        "n_scored_clips": int(scored.sum()),
        "n_oof_clips": len(oof_ids),
        "n_oof_clips_any_member": overlap.n_union,
        "oof_clips_left_out": overlap.dropped,
        "folds_file": members[0].folds_file,
        "members": {m.name: _cv(m.fold_scores) for m in members},
        "best_member": {"name": best.name, "mean": best.mean},
        "blend": report_blend,
        "stacking": report_stacking,
        "submitted": submitted,
        "cv": _cv(final_scores),
        "gain_over_best_member": result.gain,
        "test_score": test_score,
        "submission": str(path),
    }
    atomic_write_json(path.with_suffix(".json"), result.report)
    return result
