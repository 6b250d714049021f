"""Audio decoding: any file libsndfile reads -> mono float32 at the front-end's sample rate.

WAV, FLAC, OGG Vorbis and MP3 are decoded by libsndfile (through ``soundfile``), multi-channel audio is
mixed down to the mean of its channels, and other sample rates are resampled with soxr (quality HQ,
the same as ``librosa.load``'s default).

Problem files are handled by written rules rather than by a crash or a silently wrong tensor.
``decode`` either returns the wave with *flags* (the clip is kept) or raises ``UnusableAudio`` with a
*kind* (the clip cannot be used as it is), which the feature cache (``data/cache_build.py``) skips
or zero-fills, listing each case with its reason in its ``report.csv``.

Rules (limits are fields of ``audiotag.config.schema.AudioRules``, defaults in parentheses; a flag is listed
in the clip's status). The limits are settable per competition under ``competition.audio_rules`` in
the YAML config (e.g. ``--set competition.audio_rules.max_seconds=30``); ``prepare`` passes them to
the cache, whose clip-list hash includes them, so changing one rebuilds the feature cache:

- missing file (or a symbolic link whose target is missing), or one that cannot be opened or decoded,
  or whose header declares frames of which none decode, or whose sample rate is outside
  ``min_rate``-``max_rate`` (1 kHz-768 kHz): unusable (``missing``/``undecodable``); a file this
  user may not read, or a symbolic link loop, is ``undecodable`` with a reason that says so and what
  to do (not libsndfile's "System error");
- 0 bytes or 0 samples: unusable (``empty``);
- more than ``max_nonfinite`` (1 %) of the samples NaN or infinite: unusable (``undecodable``);
- at most ``max_nonfinite`` NaN/inf samples: kept, those samples set to 0, flag ``nonfinite``;
- fewer frames decode than the header declares (the WAV data chunk, the FLAC/MP3 length) by more
  than ``truncation_slack`` (1024) frames: kept as far as it decodes, flag ``truncated``; after a
  decoder error the file is read again in small blocks so the frames before the error are kept;
- longer than ``max_seconds`` (600 s): the first ``max_seconds`` are kept, flag ``cut``; the rest is
  never decoded, so memory stays bounded;
- peak amplitude below ``silence_peak`` (1e-5, under one 16-bit step): kept, flag ``silent``;
- sample rate below the front-end's: resampled, flag ``upsampled`` (no content above the source's
  Nyquist frequency);
- any other sample rate (8 kHz, 11.025 kHz, 96 kHz, ...): resampled with soxr, no flag; the cache
  index keeps the source rate (``features.resampler: sinc`` resamples with ``data/resample.py``
  instead, on the device that computes the log-mel);
- several channels: their mean, no flag;
- a segment of the file (``start``/``end`` seconds: a table's ``start_column``/``end_column``): only
  its frames are decoded (a seek, then resampling of the segment) and the rules above apply to the
  segment; one that starts at or after the file's end: unusable (``empty``).

An Ogg file cut short cannot be told from a shorter complete one (libsndfile measures the pages that
are present), so a truncated Ogg file is either kept unflagged or, when its header pages are cut,
``undecodable``.
"""

from __future__ import annotations

import errno
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from audiotag.config.schema import AudioRules
from audiotag.core.errors import DataError

FIX_HINT = "check the file or re-download the data (`./run.sh prepare`)"
PERMISSION_HINT = (
    "make it readable for this user (chmod a+r FILE, and a+x on its folders) or copy the data to a "
    "folder you can read"
)
LOOP_HINT = "replace the link with the audio file, or with a link that ends at the real file"

MISSING, EMPTY, UNDECODABLE = "missing", "empty", "undecodable"
FLAGS = ("truncated", "cut", "nonfinite", "silent", "upsampled")  # in the order a status lists them

_BLOCK = 1 << 20  # frames per read: most clips are one read, a long file never sits in memory twice
_PCM16_SCALE = np.float32(1 / 32768)
_SALVAGE_BLOCK = 4096  # frames per read when a decoder error makes us keep what decodes before it


DEFAULT_RULES = AudioRules()


class UnusableAudio(DataError):
    """A file the rules cannot turn into a wave; ``kind`` is missing, empty or undecodable."""

    def __init__(self, path: Path | str, kind: str, detail: str, hint: str = FIX_HINT) -> None:
        super().__init__(f"{path}: {detail}; {hint}")
        self.path = str(path)
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True)
class Decoded:
    """A decoded clip: the wave at the target rate and what the rules found on the way."""

    wave: np.ndarray
    source_rate: int
    channels: int
    seconds: float  # decoded length at the source rate, after any cut
    flags: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # one human-readable line per flag
    rate: int = 0  # the wave's sample rate: the target rate, or the source's when not resampled

    @property
    def status(self) -> str:
        """``"ok"`` or the flags, comma-separated."""
        return ",".join(self.flags) or "ok"

    @property
    def reason(self) -> str:
        return "; ".join(self.notes)


def decode(
    path: Path | str,
    target_sr: int,
    rules: AudioRules = DEFAULT_RULES,
    start: float | None = None,
    end: float | None = None,
    resample: bool = True,
) -> Decoded:
    """Decode ``path`` to mono float32 at ``target_sr`` following the rules in the module docstring.

    ``resample=False`` leaves the wave at the file's own rate (``Decoded.rate``) for a resampler that
    runs elsewhere (``data/resample.py`` on the log-mel's device); the rules and flags are the same.

    ``start``/``end`` (seconds; None: the file's beginning / end) decode only that segment: the
    frames ``round(start * rate)`` to ``round(end * rate)`` at the file's own rate, then resampled, so
    the wave is the file's resampled wave over that stretch up to the resampler's edges.

    Raises ``UnusableAudio`` (a ``DataError`` naming the file) for a file that cannot be used.
    """
    path = Path(path)
    _check_file(path)
    with _open(path) as f:
        rate, channels, declared, fmt = int(f.samplerate), int(f.channels), int(f.frames), f.format
        if not rules.min_rate <= rate <= rules.max_rate:
            raise UnusableAudio(path, UNDECODABLE, f"implausible sample rate {rate} Hz in the header")
        if fmt in ("WAV", "WAVEX"):  # libsndfile shortens a cut WAV silently; the chunk size does not
            declared = max(declared, _wav_declared_frames(path) or 0)
        first = 0 if start is None else max(0, round(start * rate))
        span = (declared if end is None else round(end * rate)) - first
        segment = "" if start is None and end is None else f"segment {start or 0:g}-{_end_text(end)} s: "
        if segment and declared and (first >= declared or span <= 0):
            raise UnusableAudio(
                path, EMPTY, f"{segment}no samples in it (the file is {declared / rate:.3f} s long)"
            )
        limit = int(rules.max_seconds * rate)
        wanted = min(span, limit)
        _seek(f, first, path, segment)
        wave, error = _read_mono(f, wanted, channels, _BLOCK)
    if error is not None:  # the block the error happened in is lost: read again in small blocks
        with _open(path) as f:
            _seek(f, first, path, segment)
            wave, error = _read_mono(f, wanted, channels, _SALVAGE_BLOCK)
    flags: dict[str, str] = {}
    if wave.size == 0:
        if declared == 0:
            raise UnusableAudio(path, EMPTY, "audio file is empty (0 samples)")
        why = f" ({error})" if error else ""
        raise UnusableAudio(
            path, UNDECODABLE, f"{segment}header declares {declared} frames but none decode{why}"
        )
    if wanted - wave.size > rules.truncation_slack:
        why = f"; decoder: {error}" if error else ""
        where = "the segment spans" if segment else "the header declares"
        flags["truncated"] = f"{segment}decoded {wave.size} of {wanted} frames {where}{why}"
    if span > limit and wave.size == limit:
        flags["cut"] = f"{segment}{span / rate:.1f} s long, cut to the first {rules.max_seconds:g} s"
    seconds = wave.size / rate
    peak = _peak(wave, path, rules, flags)
    if peak < rules.silence_peak:
        flags["silent"] = f"peak amplitude {peak:.3g}"
    if rate < target_sr:
        flags["upsampled"] = f"source rate {rate} Hz: no content above {rate // 2} Hz"
    if rate != target_sr and resample:
        wave = soxr.resample(wave, rate, target_sr, quality="HQ")
    ordered = [flag for flag in FLAGS if flag in flags]
    return Decoded(
        wave=np.ascontiguousarray(wave, dtype=np.float32),
        source_rate=rate,
        rate=target_sr if resample else rate,
        channels=channels,
        seconds=seconds,
        flags=tuple(ordered),
        notes=tuple(f"{flag}: {flags[flag]}" for flag in ordered),
    )


def _peak(wave: np.ndarray, path: Path, rules: AudioRules, flags: dict[str, str]) -> float:
    """The wave's peak amplitude, its NaN/inf samples set to 0 first (flagged ``nonfinite``);
    UnusableAudio when more than ``rules.max_nonfinite`` of them are."""
    top, bottom = float(wave.max()), float(wave.min())  # NaN and inf propagate: one pass in the usual case
    if not (math.isfinite(top) and math.isfinite(bottom)):
        bad = ~np.isfinite(wave)
        n_bad = int(np.count_nonzero(bad))
        share = n_bad / wave.size
        if share > rules.max_nonfinite:
            raise UnusableAudio(
                path,
                UNDECODABLE,
                f"{n_bad} of {wave.size} samples are NaN or infinite ({share:.1%}, above the "
                f"{rules.max_nonfinite:.0%} limit)",
            )
        wave[bad] = 0.0
        flags["nonfinite"] = f"{n_bad} NaN/inf sample(s) set to 0"
        top, bottom = float(wave.max()), float(wave.min())
    return max(top, -bottom)


def _end_text(end: float | None) -> str:
    return "end" if end is None else f"{end:g}"


def _seek(f: sf.SoundFile, frame: int, path: Path, segment: str) -> None:
    """Move to ``frame`` (a segment's first); a file that cannot seek there is undecodable."""
    if frame == 0:
        return
    try:
        f.seek(frame)
    except Exception as exc:  # libsndfile refuses a seek past the frames it can reach
        raise UnusableAudio(
            path, UNDECODABLE, f"{segment}cannot seek to frame {frame} ({_reason(exc)})"
        ) from None


def load_audio(path: Path | str, target_sr: int, rules: AudioRules = DEFAULT_RULES) -> np.ndarray:
    """The wave of :func:`decode` (contiguous float32, 1-D); an unusable file raises ``UnusableAudio``."""
    return decode(path, target_sr, rules).wave


def audio_info(path: Path | str) -> tuple[float, int]:
    """(duration in seconds, sample rate) from the file header, without decoding.

    Raises ``UnusableAudio`` (a ``DataError``) with the rules' kind: ``missing`` (no such file, or a
    link to nothing), ``empty`` (0 bytes) or ``undecodable`` (not audio, unreadable, a link loop).
    A header that declares 0 frames is not an error here: its duration is 0.
    """
    path = Path(path)
    _check_file(path)
    try:
        info = sf.info(str(path))
    except Exception as exc:  # libsndfile reports missing and corrupt files with varying exception types
        raise _open_failure(path, exc, "cannot read audio header") from None
    return (info.frames / info.samplerate if info.samplerate else 0.0), int(info.samplerate)


def _check_file(path: Path) -> None:
    """Refuse, with the rules' kind and a reason that says what to do, a path that is no readable file:
    missing, a dangling or looping symbolic link, a folder, or 0 bytes."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            target = os.readlink(path)
            raise UnusableAudio(
                path,
                MISSING,
                f"symbolic link to {target!r}, which does not exist",
                "point the link at the audio file or replace it with the file",
            ) from None
        raise UnusableAudio(path, MISSING, "audio file not found") from None
    except OSError as exc:
        raise _os_failure(path, exc) from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise UnusableAudio(path, MISSING, f"audio file not found ({kind} has this name)")
    if st.st_size == 0:
        raise UnusableAudio(path, EMPTY, "audio file is empty (0 bytes)")


def _os_failure(path: Path, exc: OSError) -> UnusableAudio:
    """An operating-system error on ``path`` as an unusable clip that names the cause."""
    if exc.errno == errno.ELOOP:
        return UnusableAudio(
            path, UNDECODABLE, "symbolic link loop (the link leads back to itself)", LOOP_HINT
        )
    if isinstance(exc, PermissionError):
        return UnusableAudio(
            path, UNDECODABLE, "permission denied (this user cannot read it)", PERMISSION_HINT
        )
    return UnusableAudio(path, UNDECODABLE, f"cannot be read ({exc.strerror or _reason(exc)})")


def _open_failure(path: Path, exc: Exception, doing: str) -> UnusableAudio:
    """Why libsndfile could not open ``path``: its message (e.g. "Format not recognised"), unless the
    operating system refuses the file, which libsndfile reports only as "System error"."""
    try:
        os.close(os.open(path, os.O_RDONLY))
    except OSError as os_exc:
        return _os_failure(path, os_exc)
    return UnusableAudio(path, UNDECODABLE, f"{doing} ({_reason(exc)})")


def _open(path: Path) -> sf.SoundFile:
    try:
        return sf.SoundFile(str(path))
    except Exception as exc:  # see audio_info
        raise _open_failure(path, exc, "cannot decode audio") from None


def _read_mono(f: sf.SoundFile, n_frames: int, channels: int, block: int) -> tuple[np.ndarray, str | None]:
    """Up to ``n_frames`` frames of ``f`` mixed down to mono, and the decoder's error if it stopped early.

    16-bit PCM is read as int16 and scaled here, twice as fast as libsndfile's float conversion and
    bit-identical to it (x / 32768 is exact). A decoder error loses the block it happened in.
    """
    out = np.empty(n_frames, dtype=np.float32)
    pcm16 = f.subtype == "PCM_16"
    done, error = 0, None
    while done < n_frames:
        n = min(block, n_frames - done)
        try:
            data = f.read(n, dtype="int16" if pcm16 else "float32", always_2d=True)
        except Exception as exc:
            error = _reason(exc)
            break
        got = data.shape[0]
        if got == 0:
            break
        target = out[done : done + got]
        if channels == 1 and pcm16:
            np.multiply(data[:, 0], _PCM16_SCALE, out=target)  # converts and scales in one pass
        elif channels == 1:
            target[:] = data[:, 0]
        else:
            data.mean(axis=1, dtype=np.float32, out=target)
            if pcm16:
                target *= _PCM16_SCALE
        done += got
    return (out if done == n_frames else out[:done].copy()), error


def _wav_declared_frames(path: Path) -> int | None:
    """Frames the RIFF/WAVE ``data`` chunk declares, or None (not RIFF, or a streaming placeholder)."""
    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        block_align = 0
        for _ in range(64):  # chunks before the data chunk
            chunk = fh.read(8)
            if len(chunk) < 8:
                return None
            cid, size = chunk[:4], int.from_bytes(chunk[4:], "little")
            if cid == b"data":
                return size // block_align if block_align and size not in (0, 0xFFFFFFFF) else None
            if cid == b"fmt ":
                fmt = fh.read(min(size, 16))
                block_align = int.from_bytes(fmt[12:14], "little") if len(fmt) >= 14 else 0
                fh.seek(size - len(fmt) + (size & 1), 1)
            else:
                fh.seek(size + (size & 1), 1)
    return None


def _reason(exc: Exception) -> str:
    return str(exc).strip() or type(exc).__name__
