"""Kaggle-side inference: what a package's ``inference.py`` runs (``audiotag package`` writes it).

:func:`run_inference` computes the log-mel of every clip of the sample submission found under
``/kaggle/input/<slug>/`` with the members' own front-ends (through the same feature cache code as
``prepare``), predicts with every fold of every member using the sliding windows of training's
evaluation, averages the folds of each member, blends the members as the ensemble did, and writes
``submission.csv`` after validating it against the sample. A linear-probe member embeds the clips
as its run's embedding cache did (:func:`predict_probe_member`).

The package's layout (``bundle.json``, ``members/``, ``stacker_train.npz``) is written by
``stages/package.py``; the names both sides use are defined here. This module runs from the package's
own copy of the code, so it imports torch and the models only inside the functions.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd

from audiotag.core.errors import DataError

if TYPE_CHECKING:
    from audiotag.competitions import Competition

log = logging.getLogger(__name__)

MANIFEST = "bundle.json"
FORMAT_VERSION = 1
SAMPLE = "sample_submission.csv"
STACKER_DATA = "stacker_train.npz"
WEIGHTS_DIR = "weights"  # a linear probe's frozen embedding model: its weights file
NETWORK = "network"  # a member's kind in bundle.json: a fine-tuned network, best.pt per fold
PROBE_MEMBER = "probe"  # a linear probe on frozen embeddings, probe.npz per fold
REBUILD = "the package's copy is damaged: build the package again (./run.sh package)"


REQUIRED_MODULES = ("torch", "numpy", "pandas", "pyarrow", "scipy", "soundfile", "soxr", "pydantic", "yaml")


def check_modules(names: Sequence[str] = REQUIRED_MODULES) -> None:
    import importlib.util

    missing = [name for name in names if importlib.util.find_spec(name) is None]
    if missing:
        raise DataError(
            f"python package(s) {', '.join(missing)} not installed; attach their wheels as a Kaggle dataset "
            "and `pip install --no-index --find-links /kaggle/input/<wheels> ...` first"
        )


def find_test_audio(input_dir: Path, fnames: Sequence[str]) -> dict[str, Path]:
    """Where each clip of the sample submission is under ``input_dir`` (a folder named *test* wins)."""
    wanted = set(fnames)
    found: dict[str, Path] = {}
    for path in sorted(input_dir.rglob("*")):
        if path.name not in wanted or not path.is_file():
            continue
        previous = found.get(path.name)
        in_test = "test" in path.parent.name.lower()
        if previous is None or (in_test and "test" not in previous.parent.name.lower()):
            found[path.name] = path
    missing = [f for f in fnames if f not in found]
    if missing:
        raise DataError(
            f"{len(missing)} clip(s) of {input_dir / SAMPLE} have no audio file under {input_dir}, e.g. "
            f"{missing[:5]}; pass --input with the competition's data folder"
        )
    return found


@dataclass(frozen=True)
class BundleCompetition:
    """What the submission writer needs of a competition, read from bundle.json and the input folder."""

    name: str
    classes: list[str]
    submission_kind: str
    sample_submission_path: Path
    label_count: int = 3  # labels per row of a top-k submission (bundles before it was recorded: 3)
    id_column: str = "fname"  # the sample's id column (bundles before it was recorded: fname)


def combine_members(
    fold_predictions: list[list[np.ndarray]], spec: dict[str, Any], bundle: Path
) -> np.ndarray:
    """The ensemble's test rule: each member's folds averaged by the blend rule, then the weighted
    blend; or, for a stacker, the stacker refitted on the shipped OOF data and applied to the members'
    fold-averaged test logits."""
    stacking = spec.get("stacking")
    if stacking is not None:
        from audiotag.scoring.stacking import Stacker, logit_features

        data = np.load(bundle / stacking["file"])
        n_folds = len(fold_predictions[0])
        if any(len(folds) != n_folds for folds in fold_predictions):
            raise DataError("stacking needs the same number of folds in every member")
        test_features = np.mean(
            [logit_features([folds[k] for folds in fold_predictions]) for k in range(n_folds)], axis=0
        )
        return Stacker.from_json(stacking).fit(data["features"], data["truth"])(test_features)
    from audiotag.scoring.fitted_blend import FittedBlend

    members = [f"member {i}" for i in range(len(fold_predictions))]  # bundle.json lists them in this order
    return FittedBlend.from_spec(spec, members).apply(fold_predictions)


def predict_member(
    member_dir: Path, folds: Sequence[int], cache: Any, clip_ids: list[str], n_classes: int, device: Any
) -> list[np.ndarray]:
    """Each fold's scores of one member: its best.pt over sliding windows, as training evaluated."""
    from audiotag.train.experiment import load_experiment
    from audiotag.train.loop import load_fold_model, predict_for

    cfg = load_experiment(member_dir / "config.yaml")
    parts = []
    for fold in folds:
        remedy = (
            f"the package's copy is damaged: build the package again (./run.sh package); if the run's own "
            f"fold{fold}/best.pt fails the same check, delete that fold folder to retrain the fold"
        )
        model = load_fold_model(cfg, member_dir / f"fold{fold}", n_classes, device, remedy)
        parts.append(predict_for(model, cache, clip_ids, cfg, device))
        log.info("inference: %s fold %d done", member_dir.name, fold)
    return parts


def bundled_weights(bundle: Path, member: dict[str, Any]) -> Path | None:
    """A probe member's weights file in the bundle, checked against the size and SHA-256 bundle.json
    recorded; None for random weights."""
    from audiotag.core.digests import file_sha256

    record = member.get("embedding_weights")
    if record is None:
        return None
    path = bundle / str(record["file"])
    if not path.is_file():
        raise DataError(f"{path} not found (member {member['name']!r}'s embedding weights); {REBUILD}")
    if path.stat().st_size != record.get("size") or file_sha256(path) != record.get("sha256"):
        raise DataError(
            f"{path} differs from the size and SHA-256 {bundle / MANIFEST} recorded for it; {REBUILD}"
        )
    return path


def predict_probe_member(
    bundle: Path,
    member: dict[str, Any],
    features: Any,
    cache: Any,
    clip_ids: list[str],
    classes: list[str],
    device: Any,
    embedded: dict[str, np.ndarray],
) -> list[np.ndarray]:
    """Each fold's scores of a linear-probe member: the clips embedded as the run's embedding cache
    embedded them (the model, weights, front-end ``features``, input normalisation, windows and layers
    that each fold's ``probe.npz`` recorded), then the fold's standardiser and classifier. ``embedded``
    keeps embeddings computed for one member for the next that asks for the same ones."""
    from audiotag.models.embedding_plan import embed_clips, recorded_plan
    from audiotag.models.probe_head import load_probe
    from audiotag.models.representation import EmbeddingConfig

    member_dir = bundle / "members" / member["name"]
    weights = bundled_weights(bundle, member)
    shipped = (member.get("embedding_weights") or {}).get("sha256")
    parts = []
    for fold in member["folds"]:
        fold_dir = member_dir / f"fold{fold}"
        probe = load_probe(fold_dir, REBUILD)
        if probe.spec.get("classes") != classes:
            raise DataError(
                f"{fold_dir / 'probe.npz'}: fitted for other classes than {bundle / MANIFEST} lists"
            )
        spec = probe.embedding
        identity = dict(spec["identity"])
        if not str(identity.get("weights")).startswith("random-") and identity.get("weights") != shipped:
            raise DataError(
                f"{fold_dir / 'probe.npz'}: fitted on embeddings of weights with SHA-256 "
                f"{identity.get('weights')}, but the package ships {shipped}; {REBUILD}"
            )
        key = json.dumps(
            [{k: v for k, v in identity.items() if k != "clips"}, spec["layers"]], sort_keys=True
        )
        if key not in embedded:
            plan = recorded_plan(EmbeddingConfig.model_validate(spec["config"]), features, identity)
            embedded[key] = embed_clips(plan, probe.layers, cache, clip_ids, device, weights)
            log.info(
                "inference: %s embedded %d clips (layers %s)", member["name"], len(clip_ids), spec["layers"]
            )
        parts.append(probe.predict(embedded[key]))
        log.info("inference: %s fold %d done", member["name"], fold)
    return parts


def read_manifest(bundle: Path) -> dict[str, Any]:
    manifest = json.loads((bundle / MANIFEST).read_text())
    if manifest.get("format") != FORMAT_VERSION:
        raise DataError(
            f"{bundle / MANIFEST}: package format {manifest.get('format')} is not {FORMAT_VERSION}"
        )
    return manifest


def read_sample(input_dir: Path, id_column: str) -> list[str]:
    """The clip ids of the sample submission in ``input_dir``."""
    sample_path = input_dir / SAMPLE
    if not sample_path.is_file():
        raise DataError(f"{sample_path} not found; pass --input with the competition's data folder")
    sample = pd.read_csv(sample_path, dtype={id_column: str}, keep_default_na=False)
    if id_column not in sample.columns:
        raise DataError(f"{sample_path}: no id column {id_column!r} (columns {list(sample.columns)[:5]})")
    return sample[id_column].tolist()


def predict_members(
    bundle: Path, manifest: dict[str, Any], clips: pd.DataFrame, work: Path, workers: int | None, device: Any
) -> list[list[np.ndarray]]:
    """Every member's fold predictions of ``clips``, each member's features computed with its own
    front-end and audio rules (a cache shared by the members that have the same)."""
    from audiotag.config.schema import AudioRules
    from audiotag.data.cache_build import build_cache
    from audiotag.data.cache_reader import FeatureCache
    from audiotag.train.experiment import load_experiment

    fnames, classes = clips["clip_id"].tolist(), list(manifest["classes"])
    caches: dict[tuple[str, AudioRules], FeatureCache] = {}
    embedded: dict[str, np.ndarray] = {}  # probe members' embeddings of the test clips
    predictions = []
    for member in manifest["members"]:
        member_dir = bundle / "members" / member["name"]
        member_cfg = load_experiment(member_dir / "config.yaml")
        features, rules = member_cfg.features, member_cfg.competition.audio_rules
        key = (features.key(), rules)
        if key not in caches:  # the member's own audio rules, as its training cache had
            caches[key] = FeatureCache(build_cache(clips, work, features, workers=workers, rules=rules))
        cache = caches[key]
        if member.get("kind", NETWORK) == PROBE_MEMBER:
            predictions.append(
                predict_probe_member(bundle, member, features, cache, fnames, classes, device, embedded)
            )
        else:
            folds = member["folds"]
            predictions.append(predict_member(member_dir, folds, cache, fnames, len(classes), device))
    return predictions


def run_inference(
    bundle: Path,
    input_dir: Path,
    output: Path,
    work_dir: Path | None = None,
    workers: int | None = None,
    device: str = "auto",
    scores_path: Path | None = None,
) -> Path:
    """Write the submission for the test clips in ``input_dir`` with the package in ``bundle``."""
    import torch

    from audiotag.competitions.submission import build_submission, write_submission
    from audiotag.scoring.predictions import write_predictions

    manifest = read_manifest(bundle)
    id_column = str(manifest.get("id_column", "fname"))
    fnames = read_sample(input_dir, id_column)
    audio = find_test_audio(input_dir, fnames)
    clips = pd.DataFrame({"clip_id": fnames, "path": [str(audio[f]) for f in fnames], "split": "test"})
    torch_device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    )
    classes = list(manifest["classes"])
    log.info(
        "inference: %d test clips from %s, %d member(s), on %s (code: %s)",
        len(fnames),
        input_dir,
        len(manifest["members"]),
        torch_device,
        Path(__file__).resolve().parents[1],
    )
    with contextlib.ExitStack() as stack:
        if work_dir is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="audiotag-")))
        else:
            work = Path(work_dir)
        predictions = predict_members(bundle, manifest, clips, work, workers, torch_device)
        blended = combine_members(predictions, manifest["blend"], bundle)
    comp = BundleCompetition(
        manifest["competition"],
        classes,
        {"top3_labels": "top_k_labels"}.get(kind := manifest["submission_kind"], kind),  # older bundles' name
        input_dir / SAMPLE,
        int(manifest.get("label_count", 3)),
        id_column,
    )
    as_comp = cast("Competition", comp)  # the submission writer reads only these attributes
    if scores_path is not None:
        write_predictions(scores_path, fnames, classes, blended)
    return write_submission(as_comp, build_submission(as_comp, fnames, blended), output)


def inference_main(bundle: Path, args: Any) -> int:
    """The body of the packaged ``inference.py``: logging, checks, and one-line errors."""
    from audiotag.core.errors import AudiotagError
    from audiotag.core.log import setup_logging

    setup_logging(bool(os.environ.get("AUDIOTAG_VERBOSE")))
    try:
        check_modules()
        out = run_inference(
            bundle,
            args.input,
            args.output,
            args.work,
            args.workers,
            args.device,
            getattr(args, "scores", None),
        )
    except AudiotagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"submission: {out}")
    return 0
