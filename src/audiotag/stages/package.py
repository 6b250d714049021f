"""The ``audiotag package`` stage: a self-contained folder for a Kaggle offline inference notebook.

``build_package`` writes::

    OUT_DIR/
      inference.py          python inference.py [--input DIR] [--output FILE]: features -> folds -> blend
      README.md             how to use it on Kaggle
      bundle.json           competition, classes, submission format, blend method, members and folds
      ensemble.yaml         the resolved ensemble config (and ensemble_report.json, its CV, when known)
      code/audiotag/        our package source, imported from here (no pip install, no internet)
      members/<run>/        config.yaml, run.json, metrics.json, fold<k>/{best.pt,done.json}
                            (a linear probe: fold<k>/{probe.npz,done.json}, the fitted probe)
      weights/              a linear probe's frozen embedding model: its weights file (once per file)
      .audiotag-files.json  every file the package wrote (core/owned.py): a rerun replaces those and
                            nothing else; a folder holding other files is refused without --force

      dataset-metadata.json the Kaggle dataset's metadata (kernels-only competitions: also
                            kernel-metadata.json and kernel.ipynb), see audiotag/kaggle/metadata.py

Upload OUT_DIR as a Kaggle dataset (its README gives the commands), attach it and the competition
data to a notebook, and run ``!python /kaggle/input/<dataset>/inference.py``, which calls
``audiotag.kaggle.inference.inference_main`` (see ``audiotag/kaggle/inference.py`` for what it computes).

This module is imported by the CLI, so it imports torch and the models only inside the functions.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from audiotag.config.files import read_yaml
from audiotag.core.atomic import atomic_write_json, atomic_write_text
from audiotag.core.errors import DataError
from audiotag.core.owned import OwnedFolder
from audiotag.core.paths import check_name
from audiotag.kaggle.inference import (
    FORMAT_VERSION,
    MANIFEST,
    NETWORK,
    PROBE_MEMBER,
    STACKER_DATA,
    WEIGHTS_DIR,
)
from audiotag.kaggle.metadata import upload_steps, write_kaggle_metadata
from audiotag.models.probe import PROBE
from audiotag.models.probe_head import PROBE_FILE, PROBE_RECORD, read_probe, verify_probe

if TYPE_CHECKING:
    from audiotag.competitions import Competition
    from audiotag.config.schema import EnsembleConfig

log = logging.getLogger(__name__)


@dataclass
class PackagedMember:
    name: str
    folds: list[int]
    cv: float | None
    kind: str = NETWORK  # NETWORK (best.pt per fold) or PROBE_MEMBER (probe.npz per fold)
    weights: dict[str, Any] | None = None  # a probe's embedding weights in the bundle: file, size, sha256


def is_probe_run(run_dir: Path) -> bool:
    config_path = run_dir / "config.yaml"
    return config_path.is_file() and read_yaml(config_path).get("model", {}).get("name") == PROBE


def member_folds(run_dir: Path) -> list[int]:
    """The folds of a complete run, each with best.pt (a linear probe: probe.npz) and done.json;
    refuses an unfinished run and a best.pt or probe.npz that differs from the size and SHA-256 its
    done.json recorded."""
    from audiotag.train.checkpoint import verify_best

    name = run_dir.name
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise DataError(
            f"ensemble member {name!r}: {metrics_path} not found; the run is missing or has unfinished "
            f"folds (finish it with ./run.sh train, run name {name!r})"
        )
    folds = sorted(int(k) for k in json.loads(metrics_path.read_text())["folds"])
    probe = is_probe_run(run_dir)
    for fold in folds:
        fold_dir = run_dir / f"fold{fold}"
        if not (fold_dir / "done.json").is_file():
            raise DataError(f"ensemble member {name!r}: {fold_dir / 'done.json'} is missing")
        done = json.loads((fold_dir / "done.json").read_text())
        if probe:
            if not (fold_dir / PROBE_FILE).is_file() and PROBE_RECORD not in done:
                raise DataError(
                    f"ensemble member {name!r}: {fold_dir / PROBE_FILE} is missing: the fold was fitted "
                    "before linear probes saved their fitted classifier; delete the run's fold folders "
                    f"(or {run_dir}) and run ./run.sh train again (run name {name!r}) to refit them"
                )
            verify_probe(fold_dir / PROBE_FILE, done)  # size and SHA-256 recorded when it finished
        else:
            if not (fold_dir / "best.pt").is_file():
                raise DataError(f"ensemble member {name!r}: {fold_dir / 'best.pt'} is missing")
            verify_best(fold_dir / "best.pt", done)  # size and SHA-256 recorded when it finished
    if not (run_dir / "config.yaml").is_file():
        raise DataError(f"ensemble member {name!r}: {run_dir / 'config.yaml'} is missing")
    return folds


def probe_weights(run_dir: Path, folds: list[int]) -> tuple[Path, str] | None:
    """The weights file of a linear-probe member's frozen model (None: random weights), resolved as
    the embedding cache resolves it (a weights-table name: fetched or found in its installed package,
    and verified; else a file path), and refused unless it is the file every fold's embeddings were
    computed with (the SHA-256 each probe.npz recorded). Returned with the weights' name."""
    from audiotag.core.digests import file_sha256
    from audiotag.models.hear_in import hear_spec
    from audiotag.models.registry import resolve, weights_arch
    from audiotag.models.representation import EmbeddingConfig, model_config

    path: Path | None = None
    sha256 = name = None
    for fold in folds:
        probe = read_probe(run_dir / f"fold{fold}" / PROBE_FILE)
        embedding = probe.embedding
        cfg = EmbeddingConfig.model_validate(embedding.get("config") or {})
        recorded = str((embedding.get("identity") or {}).get("weights"))
        if cfg.weights is None:
            continue
        if hear_spec(cfg.weights) is not None:
            raise DataError(
                f"ensemble member {run_dir.name!r} embeds its clips with the HEAR module {cfg.weights!r}, an "
                "installed Python package that the offline bundle cannot ship; package an ensemble without it"
            )
        if path is None:
            path, entry = resolve(cfg.weights, arch=weights_arch(model_config(cfg)))
            sha256, name = file_sha256(path), entry.name if entry is not None else path.stem
        if recorded != sha256:
            raise DataError(
                f"ensemble member {run_dir.name!r}: fold {fold}'s embeddings were computed with weights of "
                f"SHA-256 {recorded}, but {cfg.weights!r} is now {path} (SHA-256 {sha256}); delete the "
                f"run's fold folders and train it again (./run.sh train, run name {run_dir.name!r})"
            )
    return None if path is None or name is None else (path, name)


def _ship_weights(source: Path, name: str, bundle: Path) -> dict[str, Any]:
    """Copy a frozen model's weights file into ``bundle/weights/`` (once per file), checked; a
    TensorFlow checkpoint's ``.index`` takes its data shards along (checked by their CRC32Cs)."""
    from audiotag.core.digests import file_sha256
    from audiotag.models.tf_checkpoint import data_shards, is_index

    sha256 = file_sha256(source)
    label = re.sub(r"[^A-Za-z0-9_.+-]+", "_", name).strip("._") or "weights"
    stem = f"{label}-{sha256[:12]}"
    relative = Path(WEIGHTS_DIR) / (stem + (".index" if is_index(source) else source.suffix))
    dest = bundle / relative
    if not dest.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest)
        if file_sha256(dest) != sha256:
            raise DataError(f"{dest}: the copy of {source} differs from it; check the disk and package again")
        if is_index(source):
            for shard in data_shards(source):
                shutil.copyfile(shard, dest.parent / (stem + shard.name[shard.name.index(".data-") :]))
    return {"file": relative.as_posix(), "size": dest.stat().st_size, "sha256": sha256}


def _copy_code(dest: Path) -> None:
    """Our package source into ``dest/audiotag``; the copies are new files (the umask's modes, not the
    checkout's)."""
    import audiotag

    source = Path(audiotag.__file__).resolve().parent
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if "__pycache__" in rel.parts or path.suffix == ".pyc":
            continue
        target = dest / "audiotag" / rel
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)


def ensemble_report(path: Path, cfg: EnsembleConfig) -> dict[str, Any]:
    """The ensemble stage's report for ``cfg``: it holds the weights the blend chose on OOF. Refused
    when it does not describe the submission CSV beside it (an interrupted ensemble run)."""
    from audiotag.competitions.submission import check_report

    if not path.is_file():
        raise DataError(
            f"{path} not found: run the ensemble first (./run.sh ensemble --config <its yaml>), so the "
            "package blends with the weights it chose"
        )
    report = json.loads(path.read_text())
    check_report(path.with_suffix(".csv"), report)  # the report and the CSV beside it are one ensemble run
    if sorted(report.get("members") or {}) != sorted(cfg.members) or report.get("method") != cfg.method:
        raise DataError(
            f"{path} was written for other members or another method than ensemble {cfg.name!r} now has; "
            "run ./run.sh ensemble again"
        )
    return report


def blend_spec(cfg: EnsembleConfig, report: dict[str, Any], classes: list[str]) -> dict[str, Any]:
    """How to combine the members' test predictions, as the ensemble stage did: rule, weights, stacker."""
    from audiotag.scoring.blend import BlendRule
    from audiotag.scoring.fitted_blend import FittedBlend
    from audiotag.scoring.stacking import Stacker

    fitted = FittedBlend.from_json(report, classes, cfg.members)
    # the rule as the config has it (ensemble_report checked the method; bundle.json records its power)
    spec = replace(fitted, rule=BlendRule(cfg.method, cfg.power)).to_spec()
    stacking = None
    if cfg.stacking is not None:
        stacker = Stacker(cfg.stacking, c=cfg.stacking_c, hidden=cfg.stacking_hidden, seed=cfg.seed)
        stacking = {**stacker.to_json(), "file": STACKER_DATA}
    return {**spec, "stacking": stacking}


def stacker_training_data(comp: Competition, cfg: EnsembleConfig) -> tuple[np.ndarray, np.ndarray]:
    """The stacker's training set exactly as the ensemble stage builds it: the members' OOF logits
    and the truth of the scored clips. Shipped so inference refits the same (seeded) stacker."""
    from audiotag.ensemble.members import load_aligned
    from audiotag.scoring.stacking import logit_features

    aligned = load_aligned(comp, cfg.members, cfg.min_oof_overlap, with_test=True)
    return logit_features([m.oof[aligned.scored] for m in aligned.members]), aligned.truth[aligned.scored]


def package_member(name: str, run_dir: Path, folds: list[int], staging: Path) -> PackagedMember:
    """Copy run ``name``'s record and its folds' weights into ``staging/members/<name>``."""
    dest = staging / "members" / name
    dest.mkdir(parents=True)
    for file in ("config.yaml", "run.json", "metrics.json"):
        if (run_dir / file).is_file():
            shutil.copyfile(run_dir / file, dest / file)
    probe = is_probe_run(run_dir)
    for fold in folds:
        (dest / f"fold{fold}").mkdir()
        for file in (PROBE_FILE if probe else "best.pt", "done.json"):
            shutil.copyfile(run_dir / f"fold{fold}" / file, dest / f"fold{fold}" / file)
        if probe:  # the copy, checked against the record it travels with
            done = json.loads((dest / f"fold{fold}" / "done.json").read_text())
            verify_probe(dest / f"fold{fold}" / PROBE_FILE, done, "check the disk and package again")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    member = PackagedMember(name, folds, metrics.get("mean"))
    if probe:
        weights = probe_weights(run_dir, folds)
        member.kind = PROBE_MEMBER
        member.weights = None if weights is None else _ship_weights(*weights, staging)
    return member


def build_package(
    cfg: EnsembleConfig,
    out_dir: Path,
    slug: str | None = None,
    kaggle_id: str | None = None,
    force: bool = False,
) -> Path:
    """Write the inference folder for ensemble ``cfg`` into ``out_dir``, replacing an earlier package
    there (core/owned.py: only files a package wrote are ever deleted; a folder holding others is
    refused unless ``force``, and then they are kept), with its Kaggle metadata (``kaggle_id``:
    OWNER/SLUG of the dataset, :mod:`audiotag.kaggle.metadata`)."""
    from audiotag.competitions import get_competition
    from audiotag.config.files import dump_yaml
    from audiotag.core.paths import submissions_root
    from audiotag.kaggle.submit import kaggle_slug
    from audiotag.runs.folder import code_version

    comp = get_competition(cfg.competition)
    folder = OwnedFolder(Path(out_dir), "audiotag package")
    if folder.foreign() and not force:  # said before the checks below, which may take a while
        folder.claim(force)
    runs = {name: comp.dir / "runs" / name for name in cfg.members}
    folds = {name: member_folds(run_dir) for name, run_dir in runs.items()}
    report_path = submissions_root() / comp.name / f"{cfg.name}.json"
    report = ensemble_report(report_path, cfg)
    slug = check_name(slug or kaggle_slug(comp) or comp.name, "--slug")
    kept = folder.claim(force)
    staging = folder.staging
    try:
        _copy_code(staging / "code")
        members = [package_member(name, run_dir, folds[name], staging) for name, run_dir in runs.items()]
        shutil.copy2(report_path, staging / "ensemble_report.json")
        atomic_write_text(staging / "ensemble.yaml", dump_yaml(cfg))
        spec = blend_spec(cfg, report, list(comp.classes))
        if spec["stacking"] is not None:
            features, truth = stacker_training_data(comp, cfg)
            np.savez_compressed(staging / STACKER_DATA, features=features, truth=truth)
        manifest = {
            "format": FORMAT_VERSION,
            "competition": comp.name,
            "slug": slug,
            "metric": comp.metric,
            "task": comp.task,
            "submission_kind": comp.submission_kind,
            "label_count": comp.label_count,
            "id_column": comp.id_column,
            "classes": list(comp.classes),
            "ensemble": {"name": cfg.name, "cv": (report.get("cv") or report.get("blend") or {}).get("mean")},
            "blend": spec,
            "members": [
                {"name": m.name, "folds": m.folds, "cv": m.cv, "kind": m.kind}
                | ({"embedding_weights": m.weights} if m.kind == PROBE_MEMBER else {})
                for m in members
            ],
            "code_version": code_version(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        manifest["kaggle"] = write_kaggle_metadata(staging, manifest, kaggle_id, comp.cfg.kernels_only)
        atomic_write_json(staging / MANIFEST, manifest)
        atomic_write_text(staging / "inference.py", INFERENCE_SCRIPT.replace("{slug}", slug))
        atomic_write_text(staging / "README.md", readme(manifest))
        folder.publish()
    except BaseException:
        folder.abandon()
        raise
    out_dir = folder.folder
    size = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
    log.info("package: wrote %s (%.1f MB, %d member(s))", out_dir, size / 1e6, len(members))
    if kept:
        log.warning("package: kept %d file(s) it did not write in %s: %s", len(kept), out_dir, kept[:5])
    return out_dir


def blend_text(spec: dict[str, Any]) -> str:
    if spec["stacking"] is not None:
        return f"{spec['stacking']['kind']} stacker (refitted from {spec['stacking']['file']})"
    power = f" (q={spec['power']})" if spec["method"] == "power" else ""
    return f"{spec['method']}{power} with weights {spec['weights']}"


def member_line(member: dict[str, Any]) -> str:
    line = f"- `{member['name']}`: folds {member['folds']}, CV {member['cv']}"
    if member.get("kind") == PROBE_MEMBER:
        weights = member.get("embedding_weights")
        frozen = f"`{weights['file']}`" if weights else "random weights"
        line += f" (linear probe on the embeddings of {frozen})"
    return line


def readme(manifest: dict[str, Any]) -> str:
    members = "\n".join(member_line(m) for m in manifest["members"])
    title = f"{manifest['competition']} / ensemble `{manifest['ensemble']['name']}`"
    return f"""# audiotag inference package: {title}

Blend: {blend_text(manifest["blend"])} of the members' fold-averaged predictions
(CV {manifest["metric"]}: {manifest["ensemble"]["cv"]}).

{members}

## On Kaggle (no internet)
{upload_steps(manifest)}
Options of inference.py: `--input DIR` (competition data), `--output FILE`, `--work DIR` (feature
cache, default a temporary folder), `--workers N`, `--device cpu|cuda`.

The code needs torch, numpy, pandas, pyarrow, scipy, soundfile, soxr, pydantic, pyyaml and tqdm (timm
for timm backbones); Kaggle's Python image has most of them, and `inference.py` names any that is
missing (attach its wheel as a dataset and `pip install --no-index` it).
"""


INFERENCE_SCRIPT = '''#!/usr/bin/env python
"""Offline inference for Kaggle: python inference.py [--input DIR] [--output FILE]

Written by `audiotag package`. Reads the test audio listed in the competition's sample submission,
predicts with every fold of every member in members/, blends them as the ensemble did, and writes the
submission CSV. Needs no internet: the code is in code/, the weights in members/ (and a linear
probe's frozen embedding model in weights/).
"""

import argparse
import os
import sys
from pathlib import Path

SLUG = "{slug}"
try:
    BUNDLE = Path(__file__).resolve().parent
except NameError:  # pasted into a notebook cell
    BUNDLE = Path(os.environ.get("AUDIOTAG_BUNDLE", "."))
sys.dont_write_bytecode = True  # the bundle is read-only on Kaggle
sys.path.insert(0, str(BUNDLE / "code"))


def main(argv=None):
    kaggle = Path("/kaggle/working").is_dir()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_input = Path(os.environ.get("AUDIOTAG_INPUT", f"/kaggle/input/{SLUG}"))
    default_output = Path("/kaggle/working/submission.csv" if kaggle else "submission.csv")
    parser.add_argument("--input", type=Path, default=default_input, help="the competition's data")
    parser.add_argument("--output", type=Path, default=default_output, help="the submission CSV")
    parser.add_argument("--work", type=Path, help="folder for the feature cache (default: a temporary one)")
    parser.add_argument("--workers", type=int, help="processes computing features (default: all cores)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--scores", type=Path, help="also write the blended scores (parquet)")
    args = parser.parse_args(argv)
    from audiotag.kaggle.inference import inference_main

    return inference_main(BUNDLE, args)


if __name__ == "__main__":
    sys.exit(main())
'''
