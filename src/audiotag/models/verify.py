"""``weights verify``: run a pretrained checkpoint on a few clips and show what it hears.

For checkpoints with an AudioSet head (PANNs CNNs, AST: 527 classes) the top labels per clip are
printed, so a user can see at once that the model is the real one (a 440 Hz tone should read as
"Sine wave", speech as "Speech"); for every checkpoint, the clip embeddings' statistics. Without
``--audio`` a built-in set of synthetic clips is used (a sine tone, white noise, a click train, a
chirp). The class names (``audioset_labels.csv``) are AudioSet's ``class_labels_indices.csv``
(Gemmeke et al. 2017, CC BY 4.0) as shipped by the PANNs and AST repositories.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from audiotag.config.files import configs_root, load_group, validate
from audiotag.config.schema import FeatureConfig, InputNorm, ModelBase
from audiotag.core.errors import ConfigError, DataError
from audiotag.data.audio import load_audio
from audiotag.data.dataset import fit_length, silence_value
from audiotag.data.features import compute_logmel
from audiotag.models.registry import build_model, families, family_of, load_pretrained, lookup

AUDIOSET_CLASSES = 527
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")


@dataclass
class ClipResult:
    name: str
    seconds: float
    top: list[tuple[str, float]]  # (AudioSet label, probability), empty without an AudioSet head
    embedding: np.ndarray


def audioset_labels() -> list[str]:
    with open(Path(__file__).with_name("audioset_labels.csv"), newline="", encoding="utf-8") as f:
        return [row["display_name"] for row in csv.DictReader(f)]


def synthetic_clips(sample_rate: int, seconds: float = 5.0) -> dict[str, np.ndarray]:
    """Clips whose AudioSet labels are unambiguous: a tone, noise, clicks and a chirp."""
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    rng = np.random.default_rng(0)
    clicks = np.zeros_like(t)
    clicks[:: sample_rate // 4] = 1.0
    chirp_hz = 200 + (min(8000, sample_rate / 2 - 500) - 200) * t / seconds
    return {
        "sine_440Hz": 0.3 * np.sin(2 * np.pi * 440 * t),
        "white_noise": 0.1 * rng.standard_normal(t.size),
        "clicks_4Hz": clicks,
        "chirp_up": 0.3 * np.sin(2 * np.pi * np.cumsum(chirp_hz) / sample_rate),
    }


def audio_clips(folder: Path, sample_rate: int, max_clips: int) -> dict[str, np.ndarray]:
    if not folder.is_dir():
        raise DataError(f"--audio {folder}: no such folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)[:max_clips]
    if not files:
        raise DataError(f"--audio {folder}: no audio files ({', '.join(AUDIO_SUFFIXES)})")
    return {str(p.relative_to(folder)): load_audio(p, sample_rate) for p in files}


def model_and_features(name: str, weights: Path | None) -> tuple[ModelBase, FeatureConfig, str]:
    ckpt = lookup(name)
    if (configs_root() / "models" / f"{ckpt.model}.yaml").is_file():
        raw = load_group("model", ckpt.model)
    else:  # timm/<arch>.<tag> entries name the arch: the family that takes the layout makes the settings
        settings_of = [f.verification.settings_of for f in families().values() if ckpt.layout in f.converters]
        if not settings_of or settings_of[0] is None:
            raise ConfigError(f"weights verify: no model config for {ckpt.name}")
        raw = settings_of[0](ckpt.model)
    raw["pretrained"] = str(weights) if weights else ckpt.name
    cfg = validate(family_of(raw["name"]).config, raw, f"model {ckpt.model}")
    features_name = ckpt.features or "logmel_16k_64"
    features = validate(FeatureConfig, load_group("features", features_name), f"features {features_name}")
    return cfg, features, ckpt.layout


def run_checkpoint(
    name: str,
    clips: dict[str, np.ndarray] | None = None,
    weights: Path | None = None,
    offline: bool | None = None,
    top_k: int = 5,
) -> tuple[list[ClipResult], list[str]]:
    """Every clip through checkpoint ``name`` (its own front-end); returns results and load notes."""
    cfg, features, layout = model_and_features(name, weights)
    clips = clips if clips is not None else synthetic_clips(features.sample_rate)
    logmels = {k: compute_logmel(np.asarray(v, np.float32), features) for k, v in clips.items()}
    rules = family_of(cfg.name).verification
    n_classes = AUDIOSET_CLASSES if layout in rules.audioset_layouts else 1
    norm = None
    if cfg.input_norm == "dataset":  # BYOL-A: statistics of these clips stand in for a training set
        values = np.concatenate([m.ravel() for m in logmels.values()])
        norm = InputNorm(mean=float(values.mean()), std=float(max(values.std(), 1e-6)))
    frames = rules.input_frames or max(m.shape[0] for m in logmels.values())
    model = build_model(cfg, features.n_mels, n_classes, frames=frames, input_norm=norm)
    report = load_pretrained(model, cfg, features, offline=offline)
    if report is None:
        raise ConfigError(f"weights verify {name}: the model has no pretrained weights")
    head_loaded = n_classes == AUDIOSET_CLASSES and not any(k.startswith("head.fc") for k in report.missing)
    notes = [
        f"{len(report.loaded)} tensors loaded, {len(report.adapted)} adapted, {len(report.ignored)} ignored",
        f"front-end: {features.name}, {features.sample_rate} Hz, {features.n_mels} mel bins",
    ]
    if norm is not None:
        notes.append(
            f"input_norm: dataset, measured on these clips (mean {norm.mean:.3f}, std {norm.std:.3f})"
        )
    labels = audioset_labels() if head_loaded else []
    model.eval()
    results = []
    with torch.no_grad():
        for clip, logmel in logmels.items():
            if rules.input_frames is not None:
                logmel = fit_length(logmel, rules.input_frames, 0, "constant", silence_value(features))
            x = torch.from_numpy(np.ascontiguousarray(logmel, np.float32))[None]
            normed = (x - model.norm_mean) / model.norm_std
            embedding = model.head.embedding(model.backbone(normed))[0].numpy()
            if not np.isfinite(embedding).all():
                raise DataError(f"weights verify {name}: clip {clip} gives a non-finite embedding")
            top = []
            if labels:
                probs = torch.sigmoid(model(x))[0]
                best = torch.topk(probs, top_k)
                top = [(labels[int(i)], float(p)) for p, i in zip(best.values, best.indices, strict=True)]
            seconds = len(clips[clip]) / features.sample_rate
            results.append(ClipResult(clip, seconds, top, embedding))
    if not labels:
        notes.append("no AudioSet head in this checkpoint: embeddings only")
    return results, notes


def embedding_stats(results: list[ClipResult]) -> dict[str, float]:
    emb = np.stack([r.embedding for r in results]).astype(np.float64)
    unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    cosine = unit @ unit.T
    off_diagonal = cosine[~np.eye(len(results), dtype=bool)]
    return {
        "dim": float(emb.shape[1]),
        "mean": float(emb.mean()),
        "std": float(emb.std()),
        "min": float(emb.min()),
        "max": float(emb.max()),
        "zeros": float((emb == 0).mean()),
        "l2_norm_mean": float(np.linalg.norm(emb, axis=1).mean()),
        "cosine_between_clips": float(off_diagonal.mean()) if off_diagonal.size else 1.0,
    }
