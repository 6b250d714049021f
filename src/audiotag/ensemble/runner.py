"""The ensemble stage: blend (or stack) finished runs on their OOF predictions, apply the result to
their test predictions, report every CV number, write the submission.

Members are runs, all folds of each, aligned on the OOF clips common to all of them (``members``).
The numbers, all on those common clips:

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

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from audiotag.competitions import Competition, get_competition
from audiotag.competitions.submission import (
    build_submission,
    sha256_hex,
    submission_bytes,
    write_submission_bytes,
)
from audiotag.config.competition import keys_not_affecting
from audiotag.config.files import schema_default
from audiotag.config.schema import EnsembleConfig
from audiotag.core.atomic import atomic_write_json, read_json_object
from audiotag.core.errors import ConfigError
from audiotag.core.log import progress
from audiotag.core.paths import submissions_root
from audiotag.data.meta import read_meta
from audiotag.ensemble.members import Aligned, Member, OofOverlap, load_aligned
from audiotag.scoring.blend import BlendRule, OofScorer
from audiotag.scoring.fitted_blend import Blend, FittedBlend, member_weights
from audiotag.scoring.fold_scores import FoldScores, fold_mean, fold_std
from audiotag.scoring.stacking import Stacker, logit_features, nested_predictions
from audiotag.scoring.weight_search import nested_weight_cv

log = logging.getLogger(__name__)


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
    submission: Path | None  # None: the competition has no test set, nothing was written
    test_score: float | None = None
    report: dict[str, Any] = field(default_factory=dict)
    lines: list[ScoreLine] = field(default_factory=list)
    weights: dict[str, float] = field(default_factory=dict)
    submitted: str = "blend"
    best_member: str = ""
    gain: float = 0.0
    oof_left_out: dict[str, int] = field(default_factory=dict)
    partial_folds: list[int] | None = None  # the folds blended when no member is complete


# --------------------------------------------------------------------------- the stage

TEST_FOLD_AVERAGE = {
    "mean": "arithmetic mean of each member's fold models' test predictions",
    "geometric": "geometric mean of each member's fold models' test predictions",
    "power": "power mean (same exponent) of each member's fold models' test predictions",
    "rank": "each fold model's test predictions ranked per class over all test clips, scaled to [0, 1], "
    "then averaged over the fold models (OOF ranks: within each fold's scored clips)",
}


def _cv(scores: dict[int, float]) -> dict[str, Any]:
    return {"folds": scores, "mean": fold_mean(scores), "std": fold_std(scores)}


@dataclass
class BlendOutcome:
    """The fitted blend, its CV (in-sample), the nested CV of the search when weights were searched
    (with the weights fitted for each fold), and the blend applied to the test predictions."""

    fitted: FittedBlend
    searched: bool
    in_sample: dict[int, float]
    nested: dict[int, float] | None
    nested_weights: dict[int, np.ndarray]  # on the simplex
    test: np.ndarray


def fit_blend(
    cfg: EnsembleConfig, members: list[Member], scored: np.ndarray, scorer: OofScorer, classes: list[str]
) -> BlendOutcome:
    blend = Blend(BlendRule(cfg.method, cfg.power), cfg.weights, cfg.search, cfg.iterations, cfg.per_class)
    names = [m.name for m in members]
    # OOF in blend space, scored clips only: for rank, ranks within each fold's scored clips.
    space = np.stack([blend.rule.forward(m.oof[scored], scorer.folds) for m in members])
    searched = blend.searches(len(members))
    nested_cv = cfg.nested_cv and len(scorer.fold_ids) > 1  # one fold leaves no other to fit on
    if searched and cfg.nested_cv and not nested_cv:
        log.info("ensemble: one fold only: no nested CV of the weight search (its CV is in-sample)")
    fits = int(searched) * (1 + (len(scorer.fold_ids) if nested_cv else 0))
    bar = progress(total=fits, desc="weight search", unit="fit")
    if searched:
        log.info("ensemble: searching %s weights (%s) on OOF predictions", cfg.method, cfg.search)
        if cfg.per_class:
            log.info(
                "ensemble: per-class search: about %d metric evaluations per fit",
                space.shape[2] * cfg.iterations * len(members),
            )
    fitted = blend.fit(names, space, scorer, classes)
    if searched:
        bar.update()
    nested, nested_weights = None, {}
    if searched and nested_cv:
        log.info("ensemble: nested CV of the weight search (%d folds)", len(scorer.fold_ids))

        def fit_weights(space_part: np.ndarray, scorer_part: OofScorer) -> np.ndarray:
            weights = blend.fit(names, space_part, scorer_part, classes).normalised
            bar.update()
            return weights

        nested, nested_weights = nested_weight_cv(space, scorer, fit_weights, blend.rule)
    bar.close()
    return BlendOutcome(
        fitted=fitted,
        searched=searched,
        in_sample=scorer.fold_scores(fitted.combine(space)),
        nested=nested,
        nested_weights=nested_weights,
        test=fitted.apply([m.test_folds for m in members]),
    )


def fit_stacking(
    cfg: EnsembleConfig, members: list[Member], scored: np.ndarray, scorer: OofScorer
) -> tuple[dict[int, float], np.ndarray]:
    """(nested CV fold scores, test predictions of the stacker fitted on all scored OOF clips)."""
    assert cfg.stacking is not None
    if len(scorer.fold_ids) < 2:
        raise ConfigError(
            f"stacking: {cfg.stacking} is fitted on the other folds, and the members hold one fold only "
            f"({scorer.fold_ids}); train more folds, or leave stacking out (--set ensemble.stacking=null)"
        )
    log.info("ensemble: %s stacker, nested CV over %d folds", cfg.stacking, len(scorer.fold_ids))
    stacker = Stacker(cfg.stacking, c=cfg.stacking_c, hidden=cfg.stacking_hidden, seed=cfg.seed)
    features = logit_features([m.oof[scored] for m in members])
    held_out = nested_predictions(features, scorer.truth, scorer.folds, stacker.fit_predict)
    n_folds = len(members[0].test_folds)
    test_features = np.mean(
        [logit_features([m.test_folds[k] for m in members]) for k in range(n_folds)], axis=0
    )
    return scorer.fold_scores(held_out), stacker.fit(features, scorer.truth)(test_features)


def _member_note(overlap: OofOverlap, name: str) -> str:
    """Where members' OOF clips differ, the note says every line is scored on the common clips."""
    if not any(overlap.dropped.values()):
        return ""
    return f"on the {len(overlap.common)} common OOF clips ({len(overlap.dropped[name])} of its own left out)"


def score_lines(
    cfg: EnsembleConfig,
    members: list[Member],
    blend: BlendOutcome,
    stacked: dict[int, float] | None,
    overlap: OofOverlap,
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


def score_members(comp: Competition, cfg: EnsembleConfig, has_test: bool) -> tuple[Aligned, OofScorer]:
    """Read, check and align the members, and score each on the common scored OOF clips."""
    data = load_aligned(comp, cfg.members, cfg.min_oof_overlap, with_test=has_test)
    scorer = OofScorer(comp.metric, data.truth[data.scored], data.members[0].oof_folds[data.scored])
    for m in data.members:
        m.fold_scores = scorer.fold_scores(m.oof[data.scored])
    return data, scorer


def blend_report(
    comp: Competition, test_ids: list[str], best: Member, blend: BlendOutcome, has_test: bool
) -> dict[str, Any]:
    """The report's ``blend`` section: its CV, weights, nested CV and test score."""
    recorded, names = blend.fitted.to_json(), blend.fitted.members
    report: dict[str, Any] = {
        **_cv(blend.in_sample),
        "weights": recorded["weights"],
        "cv_kind": "in-sample (weights fit on all OOF)" if blend.searched else "fixed weights",
        "gain_over_best_member": fold_mean(blend.in_sample) - best.mean,
        "nested": None,
        "test_score": comp.score_test(test_ids, blend.test) if has_test else None,
    }
    if "weights_per_class" in recorded:
        report["weights_per_class"] = recorded["weights_per_class"]
    if blend.nested is not None:
        report["nested"] = {
            **_cv(blend.nested),
            "weights": {k: member_weights(names, w) for k, w in blend.nested_weights.items()},
            "gain_over_best_member": fold_mean(blend.nested) - best.mean,
            "optimism": fold_mean(blend.in_sample) - fold_mean(blend.nested),
        }
    return report


def stacking_report(
    cfg: EnsembleConfig, stacked: dict[int, float], best: Member, test_score: float | None
) -> dict[str, Any]:
    return {
        "kind": cfg.stacking,
        **_cv(stacked),
        "cv_kind": "nested (stacker fit on the other folds)",
        "gain_over_best_member": fold_mean(stacked) - best.mean,
        "test_score": test_score,
    }


def blend_settings(cfg: EnsembleConfig) -> dict[str, Any]:
    """What makes a blend what it is, as its report records it (``settings``): the ensemble config but
    its name, with the competition's keys that decide a run's results (not where its files are)."""
    neutral = keys_not_affecting("run")
    competition = cfg.competition.model_dump(mode="json")
    return {
        **cfg.model_dump(mode="json", exclude={"name", "competition"}),
        "competition": {k: v for k, v in competition.items() if k not in neutral},
    }


def check_blend_name(cfg: EnsembleConfig, report_path: Path) -> dict[str, Any]:
    """The blend's settings; ConfigError when the report of a blend of the same name (``report_path``)
    recorded others, so that a blend is never silently replaced by a different one. The same settings
    rewrite it (a rerun, e.g. once the members have more folds)."""
    settings = blend_settings(cfg)
    report = read_json_object(report_path)
    if report is None:
        return settings
    saved = report.get("settings")
    if not isinstance(saved, dict):
        log.warning(
            "ensemble: %s records no settings (an older audiotag wrote it); replacing it",
            report_path,
        )
        return settings
    changed = [
        key
        for key in sorted(set(saved) | set(settings))
        if saved.get(key, schema_default(cfg, key)) != settings.get(key)
    ]
    if changed:
        shown = "; ".join(
            f"{k}: {json.dumps(saved.get(k))} -> {json.dumps(settings.get(k))}" for k in changed
        )
        raise ConfigError(
            f"ensemble {cfg.name!r} was written with other settings ({shown}): {report_path} and its "
            f"submission. Give this blend its own name with --set ensemble.name=NAME (or `name:` in its "
            f"YAML); the leaderboard then lists both. Or delete {report_path} to replace it"
        )
    return settings


def submitted_predictions(
    cfg: EnsembleConfig, data: Aligned, scorer: OofScorer, blend: BlendOutcome
) -> tuple[dict[int, float] | None, np.ndarray, dict[int, float], str]:
    """(the stacker's nested CV or None, the test predictions submitted, their CV, what they are): the
    stacker's with ``stacking``, else the blend's (its nested CV when weights were searched)."""
    if cfg.stacking is not None:
        stacked, test = fit_stacking(cfg, data.members, data.scored, scorer)
        return stacked, test, stacked, "stacking"
    return None, blend.test, blend.nested if blend.nested is not None else blend.in_sample, "blend"


def is_partial(data: Aligned) -> bool:
    """Whether the members hold only the folds they have finished so far (then the same ones: checked
    by ``load_aligned``); said with a warning, since every number then covers those folds only."""
    if all(m.complete for m in data.members):
        return False
    folds = data.members[0].folds
    log.warning(
        "ensemble: the members have finished folds %s of %d, the same for each: blending those folds "
        "only (every CV number is on them; each member's test predictions average %d fold model(s)); "
        "train the other folds for the full blend",
        folds,
        data.n_folds,
        len(folds),
    )
    return True


def run_ensemble(cfg: EnsembleConfig) -> EnsembleResult:
    comp = get_competition(cfg.competition)
    path = submissions_root() / comp.name / f"{cfg.name}.csv"
    settings = check_blend_name(cfg, path.with_suffix(".json"))  # before any work
    # no test clips in the clip table (a kind: table competition without test_dir): the runs wrote no
    # test.parquet and the ensemble writes no submission. Without a clip table yet, the members are
    # read first so that their error (nothing trained) is the one shown.
    has_test = not comp.meta_path.is_file() or bool((read_meta(comp.meta_path)["split"] == "test").any())
    data, scorer = score_members(comp, cfg, has_test)
    members, overlap = data.members, data.overlap
    partial = is_partial(data)
    best = max(members, key=lambda m: m.mean)
    blend = fit_blend(cfg, members, data.scored, scorer, list(comp.classes))
    stacked, final_test, final_scores, submitted = submitted_predictions(cfg, data, scorer, blend)

    csv_bytes: bytes | None = None
    test_score: float | None = None
    if has_test:
        submission = build_submission(comp, data.test_ids, final_test)
        csv_bytes = submission_bytes(comp, submission)  # validated; written after the report (see below)
        test_score = comp.score_test(data.test_ids, final_test)
    result = EnsembleResult(
        metric=comp.metric,
        members=members,
        fold_scores=final_scores,
        submission=path if has_test else None,
        test_score=test_score,
        lines=score_lines(cfg, members, blend, stacked, overlap),
        weights=blend.fitted.to_json()["weights"],
        submitted=submitted,
        best_member=best.name,
        gain=fold_mean(final_scores) - best.mean,
        oof_left_out={name: len(ids) for name, ids in overlap.dropped.items()},
        partial_folds=members[0].folds if partial else None,
    )
    result.report = {
        "name": cfg.name,
        "competition": comp.name,
        "metric": comp.metric,
        "method": cfg.method,
        "power": blend.fitted.to_json()["power"],
        "test_fold_average": TEST_FOLD_AVERAGE[cfg.method],
        "weights_mode": cfg.weights if isinstance(cfg.weights, str) else "fixed",
        "search": cfg.search if blend.searched else None,
        "per_class": cfg.per_class,
        "n_scored_clips": int(data.scored.sum()),
        "n_oof_clips": len(data.oof_ids),
        "n_oof_clips_any_member": overlap.n_union,
        "oof_clips_left_out": overlap.dropped,
        "folds_file": members[0].folds_file,
        "folds": members[0].folds,
        "n_folds": data.n_folds,
        "partial": partial,  # the members' finished folds only (no member is complete)
        "members": {m.name: _cv(m.fold_scores) for m in members},
        "best_member": {"name": best.name, "mean": best.mean},
        "blend": blend_report(comp, data.test_ids, best, blend, has_test),
        "stacking": None if stacked is None else stacking_report(cfg, stacked, best, test_score),
        "submitted": submitted,
        "cv": _cv(final_scores),
        "gain_over_best_member": result.gain,
        "test_score": test_score,
        "submission": str(path) if has_test else None,
        "submission_sha256": sha256_hex(csv_bytes) if csv_bytes is not None else None,
        "settings": settings,
    }
    # The report first, then the CSV: a run killed between the two leaves a report whose
    # submission_sha256 does not match the CSV beside it, which every reader checks (submission.py).
    atomic_write_json(path.with_suffix(".json"), result.report)
    if csv_bytes is None:
        log.info(
            "%s: no test set (the competition has no test clips): CV reported in %s, no submission written",
            comp.name,
            path.with_suffix(".json"),
        )
        return result
    write_submission_bytes(path, csv_bytes, len(submission))
    return result
