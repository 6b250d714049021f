"""The pretrain command: self-supervised pretraining of an encoder on unlabeled audio (BYOL-A, COLA).

``audiotag pretrain --method byola|cola -c COMP [--clips train,test] [--audio DIR ...]`` pretrains
an encoder (BYOL-A's AudioNTT2020 by default; any family's backbone: ``model: efficientnet_b0``)
on a competition's cached clips and/or audio folders (``runs/pretrain_data.py``) and writes
``competition/<comp>/pretrain/<name>/encoder.pt`` (``--out DIR`` elsewhere; without a competition
``<workspace>/_pretrain/<name>/``): the encoder in its family's checkpoint key layout with its
front-end and normalisation (``models/encoder_file.py``), which ``model: {name: byola, dim: D,
pretrained: PATH}`` (or ``{name: timm, arch: A, ...}``) loads like the official checkpoints. The two
methods share the loop (``train/pretrain_loop.py``); what differs is in
``train/pretrain_methods.py``. The folder also holds ``pretrain.json`` (the settings; a rerun with
others is refused), ``config.yaml``, ``norm.json`` (the pretraining clips' mean and std),
``last.pt`` while running (a killed run resumes exactly) and ``done.json`` (loss and speed per
epoch, the encoder's size and SHA-256).

The recipe, checked against the official code (nttcslab/byol-a at 3e65c92: ``config.yaml``,
``train.py``, ``byol_a/augmentations.py``, ``byol_a/models.py``, ``byol_a/dataset.py``,
``byol_a/byol_pytorch.diff``; v2: ``v2/config_v2.yaml``, ``v2/train_v2.py``,
``v2/byol_a2/augmentations.py``) and the BYOL code it patches (lucidrains/byol-pytorch at 2aa84ee,
``byol_pytorch/byol_pytorch.py``, the commit its README pins):

- front-end: 16 kHz, STFT 1024 / hop 160, 64 mels 60-7800 Hz, ln(mel + eps) (``config.yaml``;
  ``configs/features/byola_16k_64.yaml``); units of ``unit_sec: 0.95`` s = 96 frames, a random crop
  of a longer clip, a shorter one zero-padded at both ends (``dataset.py``);
- pre-normalisation: v1 normalises with running statistics (``RunningNorm``), v2 with one mean and
  std precomputed on up to 10,000 training samples (``calc_norm_stats``): the v2 way here
  (``norm_stats``); post-normalisation of each batch of views (``NormalizeBatch``, one mean/std);
- augmentations: v1 = Mixup(ratio 0.4) + RRC; v2 = Mixup(ratio 0.2) + RRC + RLF(gain 1.0); memory
  of 2048 entries; RRC virtual crop (1.0, 1.5), freq (0.6, 1.5), time (0.6, 1.5), bicubic: the v2
  set is the default (``configs/pretrain/byola.yaml``; ``data/byola_augment.py`` for details);
- encoder: AudioNTT2020, ``feature_d`` 2048 in ``config.yaml`` (the released weights: 512, 1024,
  2048); v2's AudioNTT2022 (d 3072) is another network, not built here;
- BYOL: projector and predictor Linear-BN-ReLU-Linear, hidden 4096 (``proj_dim``), output 256
  (``proj_size``), ``ema_decay`` 0.99 on parameters after each step, symmetric 2 - 2 cos loss
  (``models/byol.py``);
- optimisation: Adam, lr 3e-4 (v1; v2 1e-4 for its wider network), no weight decay, no schedule,
  batch 256, 100 epochs, seed 42. The issue asked for a cosine schedule: neither version has one
  (``configure_optimizers`` returns plain Adam); ``lr_schedule: cosine`` is offered, ``constant``
  is the default.

The papers themselves (arXiv 2103.06695, 2204.07402) were not reachable from here; the numbers
above are the code's.

COLA, checked against the official code (google-research/google-research ``cola/`` at 0c1bbe5:
``main.py`` flag defaults, ``contrastive.py``, ``network.py``, ``data.py``;
``configs/pretrain/cola.yaml``):

- pairs: each clip's wave is L2-normalised, two random 1 s windows (``extract_window``, 16000
  samples; a shorter clip zero-padded at both ends) are anchor and positive, the positive with
  white noise of std 0.001 added (``--noise``); the other clips of the batch are the negatives
  (``drop_remainder``: full batches only). Here: two unit crops of the cached clip, the noise as its
  expected mel power (``train/pretrain_methods.py``), and BYOL-A's dataset mean/std pre-normalisation
  in place of the per-clip L2 norm (a gain, i.e. a constant in log-mel);
- front-end: 16 kHz, frame 400 / hop 160 / FFT 1024, 64 mels 60-7800 Hz, ln of the mel clipped at
  1e-5 (``configs/features/cola_16k_64.yaml``; its header lists what differs);
- network: EfficientNet-B0 from random weights (Keras ``weights=None``), global max pooling,
  ``Dense(512)``, then for the bilinear similarity LayerNorm and tanh; similarity ``a^T W p``
  (``--similarity_type`` bilinear, the default; dot: cosine / temperature 0.2);
  ``SparseCategoricalCrossentropy(from_logits=True)`` against ``range(batch)``;
- optimisation: Adam 1e-3, batch 64, 100 epochs of 1000 steps, no schedule, no weight decay.
  Anchors and positives go through the network as one batch (BatchNorm statistics over both).

The paper (arXiv 2010.10915) was not read here; its encoder and hyperparameters above are
the code's defaults.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from audiotag.competitions import get_competition
from audiotag.config.files import apply_overrides, read_yaml, resolve_groups, validate
from audiotag.config.schema import InputNorm
from audiotag.core.atomic import atomic_write_json
from audiotag.core.errors import ConfigError, TrainingError
from audiotag.core.locks import claim_folder
from audiotag.core.paths import workspace_root
from audiotag.data.norm_stats import dataset_norm
from audiotag.models.encoder_file import checkpoint_state, encoder_payload
from audiotag.runs.folder import check_or_write_record, code_version, refuse_changes
from audiotag.runs.pretrain_data import Sources, gather_sources
from audiotag.runs.task import RunRequest
from audiotag.train.checkpoint import disk_full_guard, file_record, save_checkpoint
from audiotag.train.distributed import SINGLE, DistContext, device_for
from audiotag.train.pretrain_config import PretrainConfig
from audiotag.train.pretrain_loop import build, pretrain

log = logging.getLogger(__name__)

ENCODER = "encoder.pt"
# Settings that change how a run executes but not its result; they may differ on resume.
RUNTIME_KEYS = {
    "device",
    "num_workers",
    "threads",
    "compile",
    "checkpoint_every_steps",
    "competition.data_dir",
}


def load_pretrain_config(
    path: Path, overrides: list[str] | None = None, competition: str | None = None
) -> PretrainConfig:
    """A pretrain YAML (``configs/pretrain/<method>.yaml``) with ``competition`` (a name or YAML path)
    and the ``--set`` overrides applied; ``name`` defaults to ``<method><dim>``."""
    raw = read_yaml(path)
    if competition is not None:
        raw["competition"] = competition
    tree = resolve_groups(apply_overrides(resolve_groups(raw), overrides or []))
    cfg = validate(PretrainConfig, tree, str(path))
    if cfg.name is None:
        cfg.name = cfg.default_name()
    return cfg


def output_dir(cfg: PretrainConfig, out: Path | None = None) -> Path:
    if out is not None:
        return Path(out).expanduser().resolve()
    assert cfg.name is not None
    if cfg.competition is not None:
        return get_competition(cfg.competition).dir / "pretrain" / cfg.name
    return workspace_root() / "_pretrain" / cfg.name


def refusal(out_dir: Path) -> Callable[[str], str]:
    return lambda changes: (
        f"pretrain {out_dir.name!r} in {out_dir} was started with other settings ({changes}). Give "
        "this one its own --name, or delete the folder to start over"
    )


def check_or_write_info(out_dir: Path, cfg: PretrainConfig, sources: Sources) -> None:
    """``pretrain.json`` and ``config.yaml`` at the start; a rerun with other settings, or on clips
    that changed since (other files, or other audio in them), is refused."""
    info_path = out_dir / "pretrain.json"
    fields = {
        "name": cfg.name,
        "sources": sources.counts,
        "clips_sha1": sources.fingerprint(),
        "feature_key": cfg.features.key(),
    }
    if check_or_write_record(info_path, cfg, refusal(out_dir), fields, RUNTIME_KEYS):
        saved = json.loads(info_path.read_text()).get("clips_sha1")
        if saved is not None and saved != sources.fingerprint():
            raise ConfigError(
                f"pretrain {out_dir.name!r} in {out_dir} was started on other clips ({sources.describe()} "
                "now): the audio or the clip list changed. Give this run its own --name, or delete the "
                "folder to start over"
            )


@dataclass
class PretrainResult:
    out_dir: Path
    encoder_path: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    encoder: nn.Module | None = None  # the trained encoder (None when the run was already done)


def pretraining_norm(out_dir: Path, cfg: PretrainConfig, sources: Sources, ctx: DistContext) -> InputNorm:
    """The pretraining clips' mean and std (``norm.json``; measured once, by rank 0)."""
    path = out_dir / "norm.json"
    if ctx.is_main and not path.is_file():
        norm = dataset_norm(sources.caches, sources.keys, cfg.features, cfg.norm_stats)
        atomic_write_json(path, {**norm.model_dump(), "clips": len(sources.keys)})
    ctx.barrier()
    saved = json.loads(path.read_text())
    return InputNorm(mean=saved["mean"], std=saved["std"])


def finished(out_dir: Path) -> dict[str, Any] | None:
    """``done.json`` of a finished run whose ``encoder.pt`` is intact; None when not finished."""
    done_path, encoder = out_dir / "done.json", out_dir / ENCODER
    if not done_path.is_file():
        return None
    done = json.loads(done_path.read_text())
    if not encoder.is_file() or file_record(encoder) != done.get("encoder_pt"):
        raise TrainingError(
            f"{encoder} is missing or differs from the record in {done_path}; delete {out_dir} to "
            "pretrain again"
        )
    return done


def run_pretrain_stage(
    cfg: PretrainConfig, out: Path | None = None, workers: int | None = None, ctx: DistContext = SINGLE
) -> PretrainResult:
    """Pretrain (or resume, or find done) and write the encoder file."""
    out_dir = output_dir(cfg, out)
    refuse_changes(out_dir / "pretrain.json", cfg, refusal(out_dir), RUNTIME_KEYS)
    done = finished(out_dir)
    if done is not None:
        (out_dir / "last.pt").unlink(missing_ok=True)  # a run killed between done.json and this cleanup
        log.info(
            "pretrain: %s is already done (loss %.4f); its encoder: %s",
            out_dir,
            done["loss"],
            out_dir / ENCODER,
        )
        return PretrainResult(out_dir, out_dir / ENCODER, done["history"])
    if ctx.ddp and cfg.batch_size % ctx.world:
        raise ConfigError(f"batch_size {cfg.batch_size} must be a multiple of the {ctx.world} processes")
    if cfg.competition is not None and cfg.audio and not cfg.competition.rules.external_data_allowed:
        log.warning(
            "%s: the competition rules banned external data; an encoder pretrained on --audio folders "
            "gives scores that are not comparable with the leaderboard",
            cfg.competition.name,
        )
    if ctx.is_main:
        sources = gather_sources(cfg, workers)
    ctx.barrier()
    if not ctx.is_main:  # the caches are complete now: this only reads
        sources = gather_sources(cfg, workers)
    claim = claim_folder(
        out_dir,
        f"pretrain {out_dir.name}",
        lambda owner: TrainingError(
            f"{out_dir} is being pretrained by {owner}; wait for it, or give this run its own --name"
        ),
    )
    with claim if ctx.is_main else contextlib.nullcontext():
        if ctx.is_main:
            check_or_write_info(out_dir, cfg, sources)
        ctx.barrier()
        return _train(cfg, sources, out_dir, ctx)


class Pretraining:
    """The ``TrainingTask`` of pretraining (``runs/task.py``): ``request.run_dir`` is the output folder
    (``--out``; default ``output_dir``'s); a run name and an epoch hook do not apply."""

    def train(self, cfg: PretrainConfig, request: RunRequest) -> PretrainResult:
        return run_pretrain_stage(cfg, request.run_dir, request.workers, request.ctx)


def _train(cfg: PretrainConfig, sources: Sources, out_dir: Path, ctx: DistContext) -> PretrainResult:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = device_for(ctx, cfg.device)
    norm = pretraining_norm(out_dir, cfg, sources, ctx)
    started = time.time()
    log.info(
        "pretrain: %s on %s, %d clips, %d epochs of %d, %s threads -> %s",
        cfg.method,
        device,
        len(sources.keys),
        cfg.epochs,
        cfg.batch_size,
        torch.get_num_threads(),
        out_dir,
    )
    run = pretrain(build(cfg, sources.caches, sources.keys, norm, out_dir, device, ctx))
    encoder_path = out_dir / ENCODER
    history = run.state.history
    if ctx.is_main:
        info = {
            "method": cfg.method,
            "name": cfg.name,
            "sources": sources.counts,
            "epochs": cfg.epochs,
            "loss": history[-1]["loss"],
            "code_version": code_version(),
            "settings": cfg.model_dump(mode="json"),
        }
        state = checkpoint_state(run.encoder)
        save_checkpoint(encoder_path, encoder_payload(state, cfg.encoder_record(), cfg.features, norm, info))
        done = {
            "loss": history[-1]["loss"],
            "epochs": len(history),
            "clips": len(sources.keys),
            "mean_clips_per_second": round(sum(h["clips_per_second"] for h in history) / len(history), 2),
            "seconds": round(time.time() - started, 1),
            "device": str(device),
            "precision": run.engine.precision,
            "processes": ctx.world if ctx.ddp else 1,
            "input_norm": norm.model_dump(),
            "history": history,
            "encoder_pt": file_record(encoder_path),
        }
        with disk_full_guard(out_dir / "done.json"):
            atomic_write_json(out_dir / "done.json", done)
        run.last_path.unlink(missing_ok=True)
        log.info("pretrain: done, loss %.4f; encoder %s", history[-1]["loss"], encoder_path)
    ctx.barrier()
    return PretrainResult(out_dir, encoder_path, history, run.encoder)
