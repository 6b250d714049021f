"""Audio decoding: any file libsndfile reads -> mono float32 at the front-end's sample rate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from audiotag.errors import DataError

FIX_HINT = "check the file or re-download the data (`./run.sh prepare`)"


def load_audio(path: Path, target_sr: int) -> np.ndarray:
    """Decode ``path``, mix down to mono and resample to ``target_sr``; a contiguous float32 1-D array."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: audio file not found; {FIX_HINT}")
    data, sr = _decode(path)
    if data.shape[0] == 0:
        raise DataError(f"{path}: audio file is empty (0 samples); {FIX_HINT} or drop it from the clip list")
    wave = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(wave).all():
        raise DataError(f"{path}: audio contains NaN or infinite samples; {FIX_HINT}")
    if sr != target_sr:
        wave = soxr.resample(wave, sr, target_sr, quality="HQ")
    return np.ascontiguousarray(wave, dtype=np.float32)


def audio_info(path: Path) -> tuple[float, int]:
    """(duration in seconds, sample rate) from the file header, without decoding."""
    try:
        info = sf.info(str(path))
    except Exception as exc:  # libsndfile reports missing and corrupt files with varying exception types
        raise DataError(f"{path}: cannot read audio header ({_reason(exc)}); {FIX_HINT}") from None
    return info.frames / info.samplerate, int(info.samplerate)


def _decode(path: Path) -> tuple[np.ndarray, int]:
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # see audio_info
        raise DataError(f"{path}: cannot decode audio ({_reason(exc)}); {FIX_HINT}") from None
    return data, int(sr)


def _reason(exc: Exception) -> str:
    return str(exc).strip() or type(exc).__name__
