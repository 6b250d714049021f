"""The front-end's settings (``configs/features/*.yaml``): sample rate, STFT, mel filters, scale, and
the cache key that names a feature cache by every setting that changes its values."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import Field, model_validator

from audiotag.config.base import StrictModel

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
    mel_scale: Literal["slaney", "htk", "kaldi"] = "slaney"  # kaldi: torchaudio get_mel_banks (PaSST)
    mel_norm: Literal["slaney", "l1", "none"] = Field(
        "slaney", description="filter normalisation: slaney (librosa's default), l1 (librosa norm=1), none"
    )
    mel_slopes: Literal["hz", "mel"] = Field(
        "hz",
        description="the filters' triangles are linear in Hz (librosa, torchaudio) or in mel (HTK, "
        "tf.signal, VGGish's mel_features.py)",
    )
    power: Literal[1, 2] = Field(
        2,
        description="exponent of the STFT magnitude before the mel filters: 2 power (librosa), "
        "1 magnitude (VGGish)",
    )
    window: Literal["hann", "hann_symmetric", "hamming", "povey"] = "hann"  # logmel: hann is periodic
    scale: Literal["db", "log", "log10_1p"] = Field(
        "db",
        description="db: 10*log10(max(mel, amin)); log: ln(mel + log_offset); "
        "log10_1p: log10(1 + log_gain*mel)",
    )
    amin: float = Field(1e-10, gt=0, description="floor before 10*log10 (scale: db)")
    top_db: float | None = Field(
        None,
        gt=0,
        description="scale: db: raise every value to at least the clip's maximum minus top_db, over the "
        "whole log-mel the front-end computes (torchaudio AmplitudeToDB(top_db=80): ATST); null = no floor",
    )
    log_offset: float = Field(1e-6, gt=0, description="added before log (scale: log)")
    log_gain: float = Field(1.0, gt=0, description="gain inside log10(1 + gain * mel) (scale: log10_1p)")
    center_pad: Literal["reflect", "constant", "none"] = Field(
        "reflect",
        description="padding of the centred STFT: reflect (torch, torchlibrosa, PANNs) or constant "
        "zeros (librosa >= 0.9's default, aisfx); none: not centred, frame k covers the win_length "
        "samples from k * hop_length (VGGish's mel_features.py): 1 + (samples - win_length) // "
        "hop_length frames",
    )
    peak_normalize: bool = Field(False, description="scale each clip to peak 1 before the STFT (aisfx)")
    float16: bool = Field(
        False,
        description="scale log10_1p in float16 arithmetic, as musicnn (mel cast to float16, then "
        "log10(gain * mel + 1) in float16; saturating at float16's largest value where musicnn "
        "overflows to inf)",
    )
    preemphasis: float = Field(
        0.0, ge=0, lt=1, description="0.97: per frame as Kaldi (kaldi_fbank) or over the wave (logmel, PaSST)"
    )
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
        if self.mel_scale == "kaldi" and (self.kind != "logmel" or self.mel_norm != "none"):
            raise ValueError(
                "mel_scale: kaldi takes Kaldi's unnormalised filters; set kind: logmel, mel_norm: none"
            )
        if self.mel_scale == "kaldi" and self.n_fft % 2:
            raise ValueError(f"mel_scale: kaldi needs an even n_fft (got {self.n_fft})")
        if self.wave_scale != 1.0 and self.kind != "kaldi_fbank":
            raise ValueError("wave_scale applies to kind: kaldi_fbank only")
        if self.float16 and self.scale != "log10_1p":
            raise ValueError("float16 applies to scale: log10_1p only (musicnn's front-end)")
        if self.top_db is not None and (self.scale != "db" or self.kind != "logmel"):
            raise ValueError("top_db applies to kind: logmel with scale: db only")
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
        for field, default in (
            ("center_pad", "reflect"),
            ("resampler", "soxr_hq"),
            ("float16", False),
            ("top_db", None),
            ("mel_slopes", "hz"),
            ("power", 2),
            ("wave_scale", 1.0),
            ("clip_dc", True),
        ):
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
