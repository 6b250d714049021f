"""The typed configuration schemas: competition, front-end, the settings every model shares,
training and ensembles (each model family's own schema lives with the family, ``models/*.py``; the
competition's, a union by kind, lives in ``config/competition.py`` and its parts in
``config/competition_parts.py``).

Files are read, composed and overridden by ``audiotag.config.files``; ``load_ensemble`` and
``load_competition`` here validate such a tree against its schema.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import (
    BaseModel,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from audiotag.config.base import PlainName, StrictModel
from audiotag.config.competition import CompetitionConfig
from audiotag.config.competition_parts import AudioRules as AudioRules  # the decoder's, re-exported
from audiotag.config.files import apply_overrides, load_group, read_yaml, resolve_groups, validate
from audiotag.scoring.blend import BlendMethod
from audiotag.scoring.stacking import StackerKind
from audiotag.scoring.weight_search import WeightSearchName

M = TypeVar("M", bound="BaseModel")

FEATURE_CODE_VERSION = 1  # bump when the log-mel computation changes, so old caches are not reused


class FeatureConfig(StrictModel):
    """Log-mel front-end. Every field except ``name`` enters the cache key."""

    name: str = "logmel"
    cache: Literal["logmel", "wave"] = Field(
        "logmel",
        description="what prepare caches: logmel, or the resampled wave (float16), the log-mel then being "
        "computed per batch on the training device (GPU) by the model's front-end",
    )
    kind: Literal["logmel", "kaldi_fbank"] = Field(
        "logmel",
        description="logmel: torch STFT + mel (PANNs, BYOL-A, aisfx); kaldi_fbank: Kaldi fbank (AST)",
    )
    sample_rate: int = Field(16000, gt=0)
    resampler: Literal["soxr_hq", "sinc"] = Field(
        "soxr_hq",
        description="how clips at other rates are resampled: soxr_hq (soxr's HQ on the CPU, as librosa) or "
        "sinc (the same filter recipe in torch, run on the device that computes the log-mel: with "
        "prepare --cache-device cuda the CPU only decodes); a cache built with sinc has its own key",
    )
    n_fft: int = Field(512, gt=0)
    win_length: int | None = Field(None, gt=0)
    hop_length: int = Field(320, gt=0)
    n_mels: int = Field(64, gt=0)
    fmin: float = Field(50.0, ge=0)
    fmax: float | None = Field(None, gt=0)
    mel_scale: Literal["slaney", "htk"] = "slaney"
    mel_norm: Literal["slaney", "l1", "none"] = Field(
        "slaney", description="filter normalisation: slaney (librosa's default), l1 (librosa norm=1), none"
    )
    window: Literal["hann", "hamming", "povey"] = "hann"
    scale: Literal["db", "log", "log10_1p"] = Field(
        "db",
        description="db: 10*log10(max(mel, amin)); log: ln(mel + log_offset); "
        "log10_1p: log10(1 + log_gain*mel)",
    )
    amin: float = Field(1e-10, gt=0, description="floor before 10*log10 (scale: db)")
    log_offset: float = Field(1e-6, gt=0, description="added before log (scale: log)")
    log_gain: float = Field(1.0, gt=0, description="gain inside log10(1 + gain * mel) (scale: log10_1p)")
    center_pad: Literal["reflect", "constant"] = Field(
        "reflect",
        description="padding of the centred STFT: reflect (torch, torchlibrosa, PANNs) or constant "
        "zeros (librosa >= 0.9's default, aisfx)",
    )
    peak_normalize: bool = Field(False, description="scale each clip to peak 1 before the STFT (aisfx)")
    float16: bool = Field(
        False,
        description="scale log10_1p in float16 arithmetic, as musicnn (mel cast to float16, then "
        "log10(gain * mel + 1) in float16; saturating at float16's largest value where musicnn "
        "overflows to inf)",
    )
    preemphasis: float = Field(0.0, ge=0, lt=1, description="kaldi_fbank: pre-emphasis coefficient (0.97)")
    remove_dc: bool = Field(False, description="kaldi_fbank: subtract each frame's mean")
    clip_dc: bool = Field(
        True,
        description="kaldi_fbank with remove_dc: also subtract each clip's mean first, as AST does "
        "(waveform - waveform.mean()); false: per frame only, as Kaldi and BEATs",
    )
    wave_scale: float = Field(
        1.0,
        gt=0,
        description="kaldi_fbank: the wave is multiplied by this first (32768: the 16-bit integer range, "
        "as Kaldi reads WAV files and BEATs scales its input; it moves the log-mel by 2 ln(scale) except "
        "where the eps floor holds, digital silence)",
    )

    @model_validator(mode="after")
    def _check(self) -> FeatureConfig:
        nyquist = self.sample_rate / 2
        if self.fmax is not None and self.fmax > nyquist:
            raise ValueError(f"fmax {self.fmax} is above the Nyquist frequency {nyquist}")
        if self.fmin >= (self.fmax or nyquist):
            raise ValueError("fmin must be below fmax")
        if self.win_length is not None and self.win_length > self.n_fft:
            raise ValueError("win_length must not exceed n_fft")
        if self.wave_scale != 1.0 and self.kind != "kaldi_fbank":
            raise ValueError("wave_scale applies to kind: kaldi_fbank only")
        if self.float16 and self.scale != "log10_1p":
            raise ValueError("float16 applies to scale: log10_1p only (musicnn's front-end)")
        return self

    @property
    def frames_per_second(self) -> float:
        """Log-mel frames per second (whatever the cache holds)."""
        return self.sample_rate / self.hop_length

    @property
    def cache_rate(self) -> float:
        """Cached rows per second: log-mel frames, or samples for ``cache: wave``."""
        return float(self.sample_rate) if self.cache == "wave" else self.frames_per_second

    @property
    def cache_width(self) -> int:
        """Values per cached row: n_mels, or 1 for ``cache: wave``."""
        return 1 if self.cache == "wave" else self.n_mels

    def key(self) -> str:
        """Short hash of every setting that changes the cached tensors."""
        settings = self.model_dump(exclude={"name"})
        settings["fmax"] = self.fmax or self.sample_rate / 2
        settings["win_length"] = self.win_length or self.n_fft
        settings["code_version"] = FEATURE_CODE_VERSION
        later = (("center_pad", "reflect"), ("resampler", "soxr_hq"), ("float16", False))
        later += (("wave_scale", 1.0), ("clip_dc", True))
        for field, default in later:
            if settings[field] == default:  # added later: the default keeps existing cache keys
                del settings[field]
        blob = json.dumps(settings, sort_keys=True).encode()
        return hashlib.sha1(blob).hexdigest()[:10]

    def cache_name(self) -> str:
        return f"{self.name}-{self.key()}"

    def frontend_differences(self, other: FeatureConfig) -> dict[str, tuple[Any, Any]]:
        """Settings (but the name) where ``other`` gives a model other inputs: ``(ours, theirs)`` each.

        The resampler is not one: soxr and sinc give log-mels within 0.1 dB (tests/test_resample.py),
        so a checkpoint trained on one accepts a cache built with the other.
        """
        if self.model_copy(update={"resampler": other.resampler}).key() == other.key():
            return {}
        ours, theirs = (
            self.model_dump(exclude={"name", "resampler"}),
            other.model_dump(exclude={"name", "resampler"}),
        )
        return {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs[k]}


class InputNorm(StrictModel):
    """``(x - mean) / std`` applied to the log-mel before the backbone (the checkpoint's own recipe)."""

    mean: float = 0.0
    std: float = Field(1.0, gt=0)


class NormStatsConfig(StrictModel):
    """How ``input_norm: dataset`` measures its mean and std (BYOL-A's ``calc_norm_stats``)."""

    unit_seconds: float | None = Field(
        0.95,
        gt=0,
        description="each clip cropped (at random) or zero-padded (centred) to this length first, "
        "padding included in the statistics, as BYOL-A does with its unit_sec; null = whole clips",
    )
    max_clips: int = Field(10000, gt=0, description="at most this many training clips, drawn at random")
    seed: int = Field(42, description="seed of the clip draw and the crops")


class ModelBase(StrictModel):
    """Settings every backbone shares: pretrained weights, head, input normalisation."""

    pretrained: str | None = Field(
        None,
        description="a name from `./run.sh weights list`, or the path of a checkpoint file; null = random. "
        "timm models also take `imagenet` (timm's default weights of model.arch) and "
        "`timm/<arch>[.<tag>]` (any weights timm knows, e.g. timm/tf_efficientnet_b0.ns_jft_in1k)",
    )
    head: Literal["linear", "attention", "cls", "mean"] = Field(
        "linear",
        description="linear: pool over time then classify; attention: PANNs decision-level attention; "
        "cls/mean: transformer class token or mean token (ast only)",
    )
    embedding_dim: int | None = Field(
        None, gt=0, description="hidden layer between pooling and classifier (PANNs fc1); null = none"
    )
    dropout: float = Field(0.2, ge=0, lt=1)
    input_norm: InputNorm | Literal["dataset"] | None = Field(
        None,
        description="(x - mean) / std before the backbone: explicit numbers (a checkpoint's recipe), "
        "'dataset' (one scalar mean and std over the training fold's log-mel, as BYOL-A does), or null",
    )
    norm_stats: NormStatsConfig = Field(
        default_factory=NormStatsConfig, description="how input_norm: dataset measures its statistics"
    )

    token_heads: ClassVar[bool] = False  # True for transformers: heads cls/mean instead of linear/attention

    @model_validator(mode="after")
    def _head_fits_the_backbone(self) -> ModelBase:
        on_tokens = self.head in ("cls", "mean")
        name = getattr(self, "name", type(self).__name__)
        if on_tokens and not self.token_heads:
            raise ValueError(f"head {self.head!r} is for transformers; {name} takes linear or attention")
        if self.token_heads and not on_tokens:
            raise ValueError(f"head {self.head!r}: {name}, a transformer, takes cls or mean")
        return self


class SpecAugmentConfig(StrictModel):
    time_masks: int = Field(2, ge=0)
    time_width: int = Field(16, ge=0, description="maximum frames per time mask")
    freq_masks: int = Field(2, ge=0)
    freq_width: int = Field(8, ge=0, description="maximum mel bins per frequency mask")
    where: Literal["auto", "input", "after_norm"] = Field(
        "auto",
        description="input: mask the log-mel; after_norm: mask after the backbone's input BatchNorm, as "
        "PANNs trains (bn0, then SpecAugment); auto: after_norm where the backbone has bn0, else input",
    )
    fill: Literal["auto", "mean", "zero"] = Field(
        "auto", description="masked values: each clip's mean, or 0; auto: zero after_norm (PANNs), else mean"
    )


class LossConfig(StrictModel):
    """A training loss (``train/losses.py`` has the formulas and where each comes from)."""

    name: Literal["bce", "lq", "bootstrap_soft", "lsep"] = Field(
        "bce",
        description="bce; lq: per-class generalised cross-entropy (1 - p_t^q)/q; bootstrap_soft: BCE "
        "against beta*y + (1-beta)*p; lsep: log-sum-exp pairwise ranking",
    )
    q: float = Field(0.7, gt=0, le=1, description="lq: q -> 0 is BCE, q = 1 is the MAE of p_t")
    beta: float = Field(0.7, ge=0, le=1, description="bootstrap_soft: weight of the given labels (1: BCE)")


class PseudoLabelConfig(StrictModel):
    """Unverified (noisy) training clips relabelled from a finished run's fold models, fold-safely."""

    from_run: PlainName = Field(description="the teacher: a run name under competition/<name>/runs/")
    mode: Literal["soft", "replace", "filter"] = Field(
        "soft",
        description="soft: the teacher's scores as targets; replace: its labels (scores >= threshold, else "
        "its top class); filter: keep the given labels the teacher scores >= threshold, drop clips left bare",
    )
    threshold: float = Field(0.5, gt=0, lt=1)


class TrainConfig(StrictModel):
    auto: bool = Field(
        False,
        description="derive the crop, batch size, epochs, warm-up, patience, mixup, SpecAugment widths and "
        "head_bias from the data (train/auto_recipe.py) where this config does not set them; printed, "
        "saved in the run folder (auto_recipe.json) and reused when the run resumes",
    )
    head_bias: Literal["default", "prior"] = Field(
        "default",
        description="prior: the classifier's bias starts at each class's log-odds in the training fold "
        "(BCE then starts at the prior's loss); default: the layer's own initialisation",
    )
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    backbone_lr_ratio: float = Field(
        1.0, gt=0, description="backbone learning rate = lr * ratio (the head always gets lr)"
    )
    layer_decay: float = Field(
        1.0,
        gt=0,
        le=1,
        description="layer-wise learning-rate decay (BEiT, PaSST, BEATs fine-tuning): the backbone's "
        "block i of n learns at backbone lr * decay**(n + 1 - i), what comes before the blocks at "
        "decay**(n + 1), what comes after them at backbone lr; 1 = off. Needs a backbone with `blocks`",
    )
    freeze_backbone_epochs: int = Field(0, ge=0, description="train only the head for this many epochs")
    weight_decay: float = Field(1e-2, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    min_lr_ratio: float = Field(0.01, ge=0, le=1)
    crop_seconds: float = Field(2.0, gt=0)
    pad_mode: Literal["constant", "wrap"] = "wrap"
    mixup_alpha: float = Field(0.4, ge=0, description="Beta(alpha, alpha); 0 disables mixup")
    mixup_prob: float = Field(0.5, ge=0, le=1)
    specaugment: SpecAugmentConfig = Field(default_factory=SpecAugmentConfig)
    wave_augment: list[dict[str, Any]] = Field(
        default_factory=list,
        description="audiomentations transforms on each training crop of a wave cache, in order: "
        "[{name: Gain, min_gain_db: -6, max_gain_db: 6, p: 0.5}, ...] (data/wave_augment.py); [] = none",
    )
    spec_augment_lib: list[dict[str, Any]] = Field(
        default_factory=list,
        description="albumentations transforms on each training crop's log-mel, in order: "
        "[{name: CoarseDropout, ...}, ...] (data/spec_augment_lib.py: image scale in dB); [] = none",
    )
    patience: int = Field(5, ge=1, description="epochs without improvement before stopping")
    eval_hop_fraction: float = Field(0.5, gt=0, le=1)
    eval_aggregate: Literal["mean", "max"] = "mean"
    tta_shifts: int = Field(
        1, ge=1, description="test-time augmentation: also score window grids shifted by hop/N (N grids)"
    )
    tta_gains_db: list[float] = Field(
        default_factory=list, description="test-time augmentation: also score the clip at these gains (dB)"
    )
    unverified_weight: float = Field(
        1.0, ge=0, description="loss weight of unverified/noisy clips (of subsets not in subset_weights)"
    )
    subset_weights: dict[str, float] = Field(
        default_factory=dict,
        description="loss weight of every clip of a subset, e.g. {curated: 1.0, noisy: 0.5}; replaces "
        "unverified_weight for the subsets named; 0 leaves the subset out of training (still validated)",
    )
    loss: LossConfig = Field(default_factory=LossConfig)
    noisy_loss: LossConfig | None = Field(
        None, description="the loss of unverified (noisy) clips; null: train.loss, as for the others"
    )
    pseudo_labels: PseudoLabelConfig | None = Field(
        None, description="relabel the unverified training clips from another run's fold models"
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="auto: bf16 on GPUs that have it, fp16 with loss scaling on older ones; on a CPU bf16 "
        "where it has bf16 instructions (AVX512-BF16, AMX), else fp32",
    )
    grad_accum_steps: int = Field(1, ge=1, description="micro-batches per optimizer step")
    checkpoint_every_steps: int | None = Field(
        None, ge=1, description="also save last.pt every N optimizer steps inside an epoch; null = per epoch"
    )
    grad_clip_norm: float | None = Field(None, gt=0, description="clip the global gradient norm; null = off")
    ema_decay: float | None = Field(
        None, gt=0, lt=1, description="keep an EMA of the weights (e.g. 0.999) and evaluate it; null = off"
    )
    channels_last: bool | None = Field(
        None,
        description="channels-last memory format; null = on for a GPU (CNN14 in bf16 on an H100: 1.46x "
        "the samples/s), off on the CPU",
    )
    compile: bool = Field(
        False,
        description="torch.compile the model (on an H100: CNN14 1.25x, AST 1.27x the samples/s, after "
        "about 25 s of compiling per fold)",
    )
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = Field(
        "default",
        description="torch.compile's mode with compile: true; reduce-overhead replays CUDA graphs (less "
        "launch overhead per step), max-autotune also searches kernels (minutes to compile)",
    )
    deterministic: bool = Field(False, description="deterministic kernels (slower); seeds are always set")
    folds: list[int] | None = Field(None, description="folds to train; null = all")
    max_clips: int | None = Field(
        None,
        ge=1,
        description="train and validate on at most this many of the training clips, drawn once at "
        "random (the same for every fold, seed and member); every test clip is kept. For smoke runs "
        "(--quick); null = all",
    )
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int | None = Field(
        None, ge=0, description="DataLoader workers; null = up to 8 on a GPU, 0 on the CPU (no core to spare)"
    )
    threads: int | None = Field(None, ge=1, description="torch CPU threads; null = all cores")
    loggers: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=lambda: ["tensorboard"],
        description="experiment trackers (train/trackers.py): tensorboard (event files in the run folder), "
        "mlflow, wandb (optional packages); [] = none",
    )

    @field_validator("subset_weights")
    @classmethod
    def _subset_weights_valid(cls, weights: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in weights.items() if not 0 <= v < float("inf")}
        if bad:
            raise ValueError(f"weights must be finite numbers >= 0; got {bad}")
        return weights


class EnsembleConfig(StrictModel):
    """Blend (and optionally stack) finished runs; weights are searched on OOF predictions only."""

    name: PlainName
    competition: CompetitionConfig
    members: list[PlainName] = Field(min_length=1, description="run names under competition/<name>/runs/")
    method: BlendMethod = Field(
        "mean",
        description="weighted arithmetic mean, geometric mean, power mean (exponent `power`) or rank "
        "average (per-class ranks in [0, 1]); test predictions are fold-averaged by the same rule",
    )
    power: float = Field(2.0, description="exponent of the power mean (method: power); not 0")
    weights: Literal["search", "equal"] | dict[str, float] = Field(
        "search", description="search (on OOF), equal, or a mapping {run name: weight >= 0}"
    )
    search: WeightSearchName = Field(
        "hill_climb",
        description="hill_climb: Caruana greedy selection with replacement from the best member; "
        "scipy: Nelder-Mead on softmax weights",
    )
    per_class: bool = Field(False, description="search one weight per member and class (weights: search)")
    iterations: int = Field(100, ge=1, description="hill-climbing steps, or Nelder-Mead iterations")
    nested_cv: bool = Field(
        True, description="also measure the weight search by nested CV (weights fit on the other folds)"
    )
    stacking: StackerKind | None = Field(
        None, description="fit a stacker on the members' OOF predictions and submit its test predictions"
    )
    stacking_c: float = Field(1.0, gt=0, description="inverse L2 strength of the logreg stacker")
    stacking_hidden: int = Field(32, ge=1, description="hidden units of the mlp stacker")
    min_oof_overlap: float = Field(
        0.9,
        gt=0,
        le=1,
        description="members whose OOF clips differ are blended on the clips they all share; fewer "
        "shared clips than this share of all their OOF clips is refused",
    )
    seed: int = 0

    @field_validator("members")
    @classmethod
    def _unique_members(cls, members: list[str]) -> list[str]:
        repeated = sorted({m for m in members if members.count(m) > 1})
        if repeated:
            raise ValueError(f"each run may be listed once; repeated: {repeated}")
        return members

    @field_validator("power")
    @classmethod
    def _nonzero_power(cls, power: float) -> float:
        if power == 0 or power != power or abs(power) == float("inf"):
            raise ValueError("must be finite and non-zero (the power mean's limit at 0 is method: geometric)")
        return power

    @field_validator("weights", mode="before")
    @classmethod
    def _weights_shape(cls, weights: Any, info: ValidationInfo) -> Any:
        if isinstance(weights, str) and weights not in ("search", "equal"):
            raise ValueError("expected search, equal or a mapping {run name: weight}")
        if isinstance(weights, dict):
            members = info.data.get("members") or []
            unknown = sorted(set(weights) - set(members))
            missing = sorted(set(members) - set(weights))
            if unknown or missing:
                raise ValueError(
                    f"the mapping must give a weight to every member and only to them; "
                    f"not members: {unknown}, members without a weight: {missing}"
                )
            bad = {k: v for k, v in weights.items() if not isinstance(v, int | float) or v < 0}
            if bad:
                raise ValueError(f"weights must be numbers >= 0; got {bad}")
            if not sum(weights.values()) > 0:
                raise ValueError("weights must not all be zero")
        return weights

    @field_validator("per_class")
    @classmethod
    def _per_class_needs_search(cls, per_class: bool, info: ValidationInfo) -> bool:
        if per_class and info.data.get("weights", "search") != "search":
            raise ValueError("per-class weights are searched; set weights: search, or per_class: false")
        return per_class


def load_ensemble(
    path: str | Path, overrides: list[str] | None = None, competition: str | None = None
) -> EnsembleConfig:
    """``competition``: a competition config (name or YAML path) replacing the file's (kind: table)."""
    path = Path(path)
    raw = read_yaml(path)
    raw.setdefault("name", path.stem)
    if competition is not None:
        raw["competition"] = competition
    tree = resolve_groups(apply_overrides(resolve_groups(raw), overrides or []))
    return validate(EnsembleConfig, tree, str(path))


def load_competition(name: str, overrides: list[str] | None = None) -> CompetitionConfig:
    tree = apply_overrides(load_group("competition", name), overrides or [])
    source = name if name.endswith((".yaml", ".yml")) else f"configs/competitions/{name}.yaml"
    return validate(CompetitionConfig, tree, source)
