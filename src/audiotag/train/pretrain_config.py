"""The ``pretrain`` config: self-supervised pretraining of an encoder on unlabeled audio.

Composed like an experiment (``configs/pretrain/<method>.yaml``, the ``competition``, ``features``
and ``model`` groups, ``--set KEY=VALUE``) and validated here. The defaults are BYOL-A's
(nttcslab/byol-a ``config.yaml``, ``train.py``; v2 ``config_v2.yaml``, ``train_v2.py``); COLA's are
in ``configs/pretrain/cola.yaml``; what was checked where is listed in ``stages/pretrain.py``. It
sits in the train layer because its ``model`` section is any model family's own schema (the
encoder; ``models/registry.py``), and it builds the step engine's settings
(:meth:`PretrainConfig.engine_settings`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, model_validator

from audiotag.config.base import PlainName
from audiotag.config.schema import (
    CompetitionConfig,
    FeatureConfig,
    NormStatsConfig,
    StrictModel,
    TrainConfig,
)
from audiotag.data.byola_augment import ByolaAugmentConfig
from audiotag.models.byola import ByolaConfig
from audiotag.models.cola import ColaSettings
from audiotag.models.registry import families

# any family's backbone is an encoder (a frame sequence); BYOL-A's AudioNTT2020 by default
EncoderConfig = Annotated[
    Union[(*(f.config for f in families().values()),)],  # a union built at run time
    Field(discriminator="name"),
]

CLIP_SPLITS = ("train", "test")


class PretrainConfig(StrictModel):
    name: PlainName | None = Field(
        None, description="the output folder's name, <competition>/pretrain/<name>/; null: <method><dim>"
    )
    method: Literal["byola", "cola"] = Field(
        "byola",
        description="byola: BYOL for Audio (Niizumi et al. 2021); cola: COLA (Saeed et al. 2021)",
    )
    competition: CompetitionConfig | None = Field(
        None, description="a competition whose cached clips are pretrained on (-c); null: --audio only"
    )
    clips: list[Literal["train", "test"]] = Field(
        default_factory=lambda: ["train"], description="the competition's clips to use: train, test or both"
    )
    audio: list[str] = Field(
        default_factory=list, description="audio folders to use as well (every audio file under them)"
    )
    features: FeatureConfig = Field(description="the front-end (BYOL-A: byola_16k_64)")
    model: EncoderConfig = Field(  # type: ignore[valid-type]
        default_factory=ByolaConfig,
        description="the encoder, any family (byola: model.dim 512, 1024, 2048; timm: model.arch); "
        "model.pretrained: weights to start from",
    )
    augment: ByolaAugmentConfig = Field(default_factory=ByolaAugmentConfig, description="byola only")
    cola: ColaSettings = Field(default_factory=ColaSettings, description="cola only")
    unit_seconds: float = Field(0.95, gt=0, description="length of a training segment (BYOL-A unit_sec)")
    projection_dim: int = Field(256, ge=1, description="byola: projector/predictor output (proj_size)")
    projection_hidden: int = Field(4096, ge=1, description="byola: projector/predictor hidden width")
    ema_decay: float = Field(0.99, gt=0, lt=1, description="byola: target = decay*target + (1-decay)*online")
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(256, ge=2, description="units per optimiser step, all processes together")
    lr: float = Field(3e-4, gt=0, description="Adam learning rate (v1 3e-4, v2 1e-4)")
    weight_decay: float = Field(0.0, ge=0, description="Adam's L2 weight decay (official: none)")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="constant (the official code), or linear warm-up then cosine decay"
    )
    warmup_epochs: float = Field(0.0, ge=0, description="cosine: warm-up epochs")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine: final lr as a share of lr")
    norm_stats: NormStatsConfig = Field(
        default_factory=NormStatsConfig,
        description="pre-normalisation: one mean and std of the pretraining clips' log-mel (BYOL-A v2)",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="auto: bf16 on GPUs that have it, fp16 with loss scaling on older ones; on a CPU bf16 "
        "where it has bf16 instructions (AVX512-BF16, AMX), else fp32",
    )
    grad_clip_norm: float | None = Field(None, gt=0, description="clip the global gradient norm; null = off")
    compile: bool = Field(False, description="torch.compile the online network")
    deterministic: bool = Field(False, description="deterministic kernels (slower); seeds are always set")
    checkpoint_every_steps: int | None = Field(
        None, ge=1, description="also save last.pt every N steps inside an epoch; null = once per epoch"
    )
    seed: int = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int | None = Field(
        None, ge=0, description="DataLoader workers; null = up to 8 on a GPU, 0 on the CPU"
    )
    threads: int | None = Field(None, ge=1, description="torch CPU threads; null = all cores")

    @model_validator(mode="after")
    def _check(self) -> PretrainConfig:
        if self.competition is None and not self.audio:
            raise ValueError("nothing to pretrain on: give a competition (-c) or audio folders (--audio)")
        if not self.clips and not self.audio:
            raise ValueError("clips: empty and no audio folders; use clips: [train], [test] or both")
        if len(set(self.clips)) != len(self.clips):
            raise ValueError(f"clips: each of {', '.join(CLIP_SPLITS)} once, got {self.clips}")
        if self.features.cache != "logmel":
            raise ValueError("features.cache: pretraining reads log-mel units; set features.cache: logmel")
        if self.model.name == "byola" and self.features.n_mels < 8:
            raise ValueError(
                f"features.n_mels: AudioNTT2020 pools mels by 8, needs 8 or more ({self.features.n_mels})"
            )
        if self.method == "cola" and self.cola.noise_snr_db is not None and self.features.scale == "log10_1p":
            raise ValueError(
                f"cola.noise_snr_db: noise power is added to a log or dB front-end, not "
                f"{self.features.name!r} (scale log10_1p); set cola.noise_snr_db: null or another front-end"
            )
        return self

    def encoder_record(self) -> dict[str, Any]:
        """The encoder's model settings an encoder file records (the ones that shape its weights)."""
        fields = self.model.model_dump(mode="json")
        return {k: fields[k] for k in ("name", "dim", "arch") if k in fields}

    def default_name(self) -> str:
        """``<method><dim>`` (byola512, cola2048), or ``<method>_<arch>`` for a timm encoder."""
        record = self.encoder_record()
        if "dim" in record:
            return f"{self.method}{record['dim']}"
        return f"{self.method}_{record.get('arch', record['name'])}"

    def engine_settings(self) -> TrainConfig:
        """What the step engine (AMP, clipping, compile) reads, from this config."""
        return TrainConfig(
            precision=self.precision,
            grad_clip_norm=self.grad_clip_norm,
            compile=self.compile,
            deterministic=self.deterministic,
            seed=self.seed,
            device=self.device,
            num_workers=self.num_workers,
            threads=self.threads,
            batch_size=self.batch_size,
        )
