"""Ensemble members: finished runs read back with their OOF and test predictions, and the checks
that let them be blended (same fold file, classes and test clips; enough common OOF clips).

A member is a run: all folds of it, or, while no member is complete, the folds it has finished, which
must then be the same folds for every member (e.g. ``--quick`` or ``--folds 0`` runs: the blend covers
those folds and says so). Its predictions are aligned with the other members' by clip id;
a member whose test clips, classes or fold file differ is refused with the reason. Members may
predict different OOF clips (runs whose caches skipped different unusable clips, or a run trained on
fewer clips): they are then compared on the OOF clips common to all of them, with a warning, as long
as those are at least ``min_oof_overlap`` of the clips any member predicts, and refused otherwise.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from audiotag.competitions import Competition
from audiotag.competitions.folds import load_folds
from audiotag.core.atomic import load_json_object
from audiotag.core.digests import file_sha256
from audiotag.core.errors import DataError
from audiotag.data.meta import read_meta
from audiotag.scoring.fold_scores import FoldScores

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
    folds: list[int]
    complete: bool = True  # metrics.json: every fold done; else the folds finished so far


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


def member_folds(run_dir: Path) -> tuple[list[int], bool]:
    """(folds, complete): every fold of a complete run (its ``metrics.json``), else the folds it has
    finished (``fold<k>/done.json``); DataError when it has none."""
    metrics_path, name = run_dir / "metrics.json", run_dir.name
    if metrics_path.is_file():
        remedy = f"run ./run.sh train again (run name {name!r}): it rewrites the file from the finished folds"
        recorded = load_json_object(metrics_path, remedy).get("folds")
        if not isinstance(recorded, dict) or not all(str(k).isdigit() for k in recorded):
            raise DataError(f"{metrics_path}: damaged, 'folds' is not a table of fold numbers; {remedy}")
        return sorted(int(k) for k in recorded), True
    done = [p.parent.name.removeprefix("fold") for p in run_dir.glob("fold*/done.json")]
    folds = sorted(int(k) for k in done if k.isdigit())
    if not folds or not (run_dir / "run.json").is_file():
        raise DataError(
            f"ensemble member {name!r}: no finished fold in {run_dir} (no metrics.json, no "
            f"fold*/done.json); train it with ./run.sh train, run name {name!r}"
        )
    return folds, False


def load_member(comp: Competition, name: str, with_test: bool = True) -> Member:
    """Read a trained run: its folds' (``member_folds``) OOF and test predictions, with the fold each
    OOF row was in. ``with_test=False`` (a competition without test clips, whose runs write no
    test.parquet): no test predictions, each fold's an empty (0, n_classes) array."""
    run_dir = comp.dir / "runs" / name
    folds, complete = member_folds(run_dir)
    lost = f"the run's record is lost: delete {run_dir} and train it again (run name {name!r})"
    info = load_json_object(run_dir / "run.json", lost)
    for key in ("folds_file", "folds_sha256"):
        if not isinstance(info.get(key), str):
            raise DataError(f"{run_dir / 'run.json'}: damaged, no {key}; {lost}")
    oof_ids: list[str] = []
    oof_parts, oof_folds, test_folds = [], [], []
    test_ids: list[str] | None = None
    for fold in folds:
        fold_dir = run_dir / f"fold{fold}"
        ids, scores = read_member_predictions(fold_dir / "oof.parquet", comp.classes, name)
        oof_ids += ids
        oof_parts.append(scores)
        oof_folds.append(np.full(len(ids), fold, dtype=np.int64))
        if not with_test:
            test_ids = []
            test_folds.append(np.zeros((0, len(comp.classes))))
            continue
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
        folds=folds,
        complete=complete,
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


def check_same_folds(members: list[Member]) -> None:
    """Refuse members that hold different folds: a blend scores and averages the same folds of all."""
    if len({tuple(m.folds) for m in members}) == 1:
        return
    every = {f for m in members for f in m.folds}
    held = ", ".join(f"{m.name!r} {m.folds}{'' if m.complete else ' so far'}" for m in members)
    lacking = ", ".join(f"{m.name}: {sorted(every - set(m.folds))}" for m in members if every - set(m.folds))
    raise DataError(
        f"ensemble members hold different folds ({held}); a blend needs the same folds from every "
        f"member: train the missing folds ({lacking}) with ./run.sh train (--folds chooses them), or "
        "leave a member out of `members`"
    )


def check_members(members: list[Member], min_oof_overlap: float) -> pd.DataFrame:
    """Refuse members that cannot be blended; return the shared fold table (clip_id, fold)."""
    check_same_folds(members)
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


@dataclass
class Aligned:
    """Members read, checked and aligned on their common OOF clips (``align``), with the truth of those
    clips and the mask of the scored ones (``scored_rows``); ``overlap`` as it was before aligning."""

    members: list[Member]
    overlap: OofOverlap
    oof_ids: list[str]
    test_ids: list[str]
    truth: np.ndarray
    scored: np.ndarray
    n_folds: int  # of the members' fold file (they may hold fewer: ``Member.folds``)


def load_aligned(comp: Competition, names: list[str], min_oof_overlap: float, with_test: bool) -> Aligned:
    """The runs ``names`` as blendable members, as the ensemble stage and its plots read them."""
    members = [load_member(comp, name, with_test=with_test) for name in names]
    meta = read_meta(comp.meta_path)
    folds = check_members(members, min_oof_overlap)
    overlap = oof_overlap(members)
    oof_ids, test_ids = align(members)
    truth, scored = scored_rows(comp, meta, oof_ids, members[0].oof_folds)
    n_folds = int(folds["fold"].nunique())
    return Aligned(members, overlap, oof_ids, test_ids, truth, scored, n_folds)
