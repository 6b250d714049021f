"""The demo competitions' sounds: one synthesiser per class, and clips mixing events over noise.

Every class is a *time-frequency pattern*, not a pitch: carrier and centre frequencies are drawn from
wide, overlapping ranges, so the long-term average spectrum cannot tell the classes apart; what does
is the structure over time (up vs down sweeps, AM vs FM, harmonics vs pure tone, clicks, bursts vs
swells, pips, two alternating pitches, plinks, ...). Rates, depths, onsets and envelopes are drawn
per clip, and rates are raised on short clips so that at least one cycle of the pattern fits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
from scipy import fft as sp_fft
from scipy import signal as sp_signal

TWO_PI = 2.0 * np.pi
TONE_RANGE = (200.0, 4000.0)  # carrier / centre frequencies shared by all tonal classes (Hz)
F0_RANGE = (150.0, 1500.0)  # fundamentals of the harmonic classes (their partials reach the tone range)
NOISE_RANGE = (300.0, 5000.0)  # band centres shared by the noise classes (Hz)
MAX_PARTIAL_HZ = 7000.0  # keep content below the 8 kHz Nyquist of 16 kHz features
FADE_S = 0.005
MIN_EVENT_S = 0.25

Rng = np.random.Generator
Synth = Callable[[int, int, Rng], np.ndarray]


# ----------------------------------------------------------------------------- small helpers


def _logu(rng: Rng, lo: float, hi: float) -> float:
    """Log-uniform draw in [lo, hi]."""
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _rate(rng: Rng, lo: float, hi: float, n: int, sr: int, cycles: float) -> float:
    """A repetition rate in [lo, hi] Hz, raised so that ``cycles`` cycles fit into ``n`` samples."""
    return max(_logu(rng, lo, hi), cycles * sr / max(n, 1))


def _time(n: int, sr: int) -> np.ndarray:
    return np.arange(n) / sr


def _phase(freq: np.ndarray, sr: int) -> np.ndarray:
    """Phase of an oscillator whose instantaneous frequency is ``freq`` (Hz per sample)."""
    return TWO_PI * np.cumsum(freq) / sr


def _tone(freq: np.ndarray | float, n: int, sr: int, rng: Rng) -> np.ndarray:
    freq = np.broadcast_to(np.asarray(freq, dtype=np.float64), (n,))
    return np.sin(_phase(freq, sr) + rng.uniform(0, TWO_PI))


def _harmonic(f0: np.ndarray | float, n: int, sr: int, rng: Rng) -> np.ndarray:
    """Sum of 3-8 partials k*f0 with a random spectral tilt (partials above MAX_PARTIAL_HZ dropped)."""
    f0 = np.broadcast_to(np.asarray(f0, dtype=np.float64), (n,))
    base = _phase(f0, sr)
    top = float(f0.max()) if n else 1.0
    count = max(2, min(int(rng.integers(3, 9)), int(MAX_PARTIAL_HZ // top)))
    tilt = rng.uniform(0.3, 1.2)
    out = np.zeros(n)
    for k in range(1, count + 1):
        out += k**-tilt * rng.uniform(0.6, 1.0) * np.sin(k * base + rng.uniform(0, TWO_PI))
    return out


def _shaped_noise(n: int, sr: int, rng: Rng, gain: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """White noise filtered by ``gain(freqs)`` in the frequency domain, scaled to unit RMS."""
    m = sp_fft.next_fast_len(max(n, 2), real=True)
    spec = sp_fft.rfft(rng.standard_normal(m))
    freqs = sp_fft.rfftfreq(m, 1.0 / sr)
    out = sp_fft.irfft(spec * gain(freqs), m)[:n]
    rms = np.sqrt(np.mean(out**2)) if n else 0.0
    return out / rms if rms > 0 else out


def _band_noise(n: int, sr: int, rng: Rng, centre: float, octaves: float) -> np.ndarray:
    """Noise with a Gaussian band in log-frequency around ``centre`` (``octaves`` wide at -8.7 dB)."""

    def gain(freqs: np.ndarray) -> np.ndarray:
        dist = np.log2(np.maximum(freqs, 1.0) / centre) / (octaves / 2)
        return np.exp(-0.5 * dist**2)

    return _shaped_noise(n, sr, rng, gain)


def _background(n: int, sr: int, rng: Rng) -> np.ndarray:
    """Unit-RMS background: a random mix of white, pink and brown noise."""
    weights = rng.dirichlet([1.0, 1.0, 1.0])

    def gain(freqs: np.ndarray) -> np.ndarray:
        f = np.maximum(freqs, 20.0)
        shapes = [np.ones_like(f), f**-0.5, f**-1.0]
        total = np.zeros_like(f)
        for w, shape in zip(weights, shapes, strict=True):
            total += w * shape / np.sqrt(np.mean(shape**2))  # each colour at unit RMS before mixing
        total[0] = 0.0
        return total

    return _shaped_noise(n, sr, rng, gain)


def _pulses(n: int, sr: int, times: np.ndarray, kernel: np.ndarray, amps: np.ndarray) -> np.ndarray:
    """Copies of ``kernel`` starting at ``times`` (seconds) with amplitudes ``amps``."""
    train = np.zeros(n)
    idx = np.clip(np.round(times * sr).astype(int), 0, max(n - 1, 0))
    np.add.at(train, idx, amps)
    return sp_signal.oaconvolve(train, kernel)[:n]


# ----------------------------------------------------------------------------- one function per class


def _chirp(n: int, sr: int, rng: Rng, up: bool) -> np.ndarray:
    """Repeated logarithmic sweeps over a random band; at least one whole sweep fits."""
    centre = _logu(rng, 250.0, 3500.0)
    ratio = _logu(rng, 1.6, 3.0)
    period = min(_logu(rng, 0.25, 1.5), n / sr)
    frac = (_time(n, sr) / period + rng.uniform(0, 0.1)) % 1.0
    if not up:
        frac = 1.0 - frac
    return _tone(centre * ratio ** (frac - 0.5), n, sr, rng)


def am_tone(n: int, sr: int, rng: Rng) -> np.ndarray:
    """Pure tone with deep sinusoidal amplitude modulation at 4-25 Hz."""
    rate = _rate(rng, 4.0, 25.0, n, sr, cycles=2)
    depth = rng.uniform(0.6, 1.0)
    env = 1.0 - depth * 0.5 * (1.0 - np.cos(TWO_PI * rate * _time(n, sr) + rng.uniform(0, TWO_PI)))
    return env * _tone(_logu(rng, *TONE_RANGE), n, sr, rng)


def fm_vibrato(n: int, sr: int, rng: Rng) -> np.ndarray:
    """Pure tone with periodic sinusoidal frequency modulation (vibrato) of 2-8 % at 3-10 Hz."""
    rate = _rate(rng, 3.0, 10.0, n, sr, cycles=1.5)
    depth = rng.uniform(0.02, 0.08)
    freq = _logu(rng, *TONE_RANGE) * (
        1 + depth * np.sin(TWO_PI * rate * _time(n, sr) + rng.uniform(0, TWO_PI))
    )
    return _tone(freq, n, sr, rng)


def harmonic_stack(n: int, sr: int, rng: Rng) -> np.ndarray:
    """Steady harmonic complex with a soft attack and release."""
    t = _time(n, sr)
    d = n / sr
    attack, release = rng.uniform(0.01, 0.2) * d, rng.uniform(0.05, 0.3) * d
    env = np.minimum(1.0, np.minimum(t / attack, (d - t) / release))
    return env * _harmonic(_logu(rng, *F0_RANGE), n, sr, rng)


def harmonic_glide(n: int, sr: int, rng: Rng) -> np.ndarray:
    """Harmonic complex whose fundamental glides smoothly up or down by 1.3-2.5x over the event."""
    ratio = _logu(rng, 1.3, 2.5) ** rng.choice([-1.0, 1.0])
    progress = _time(n, sr) / max(n / sr, 1e-9)
    shape = 0.5 - 0.5 * np.cos(np.pi * progress)  # smooth start and end of the glide
    return _harmonic(_logu(rng, *F0_RANGE) * ratio**shape, n, sr, rng)


def click_train(n: int, sr: int, rng: Rng) -> np.ndarray:
    """Periodic clicks (short damped resonances) at 4-40 per second with slight jitter."""
    rate = _rate(rng, 4.0, 40.0, n, sr, cycles=3)
    times = np.arange(rng.uniform(0, 1.0 / rate), n / sr, 1.0 / rate)
    times = times + rng.normal(0, 0.02 / rate, len(times))
    tau = _logu(rng, 0.0005, 0.003)
    k = np.arange(int(5 * tau * sr) + 1) / sr
    kernel = np.exp(-k / tau) * np.sin(TWO_PI * _logu(rng, 500.0, 5000.0) * k + rng.uniform(0, TWO_PI))
    return _pulses(n, sr, times, kernel, rng.uniform(0.7, 1.0, len(times)))


def _noise_band(n: int, sr: int, rng: Rng) -> np.ndarray:
    return _band_noise(n, sr, rng, _logu(rng, *NOISE_RANGE), rng.uniform(0.5, 2.5))


def noise_burst(n: int, sr: int, rng: Rng) -> np.ndarray:
    """1-4 band-noise bursts: sharp onset, exponential decay."""
    t = _time(n, sr)
    d = n / sr
    count = int(rng.integers(1, 5))
    onsets = np.sort(rng.uniform(0, 0.75 * d, count))
    onsets[0] = min(onsets[0], 0.1 * d)
    tau = _logu(rng, 0.03, 0.3) * min(1.0, d / count)
    env = np.zeros(n)
    for onset in onsets:
        dt = np.maximum(t - onset, 0.0)
        env += (t >= onset) * np.exp(-dt / tau) * np.minimum(1.0, dt / 0.002)  # 2 ms attack
    return env * _noise_band(n, sr, rng)


def noise_swell(n: int, sr: int, rng: Rng) -> np.ndarray:
    """Band noise that slowly swells and fades (0.8-4 s per swell, at least one)."""
    d = n / sr
    swells = max(1, round(d / _logu(rng, 0.8, 4.0)))
    env = np.sin(np.pi * swells * _time(n, sr) / d) ** 2
    return env * _noise_band(n, sr, rng)


def beep_train(n: int, sr: int, rng: Rng) -> np.ndarray:
    """On/off pips of a pure tone (2-10 per second, duty 30-60 %) with 3 ms ramps."""
    rate = _rate(rng, 2.0, 10.0, n, sr, cycles=2)
    duty = rng.uniform(0.3, 0.6) / rate
    pos = ((_time(n, sr) * rate + rng.uniform(0, 1)) % 1.0) / rate  # seconds into the current cycle
    ramp = min(0.003, duty / 4)
    env = np.clip(np.minimum(pos, duty - pos) / ramp, 0.0, 1.0)
    return env * _tone(_logu(rng, *TONE_RANGE), n, sr, rng)


def two_tone_siren(n: int, sr: int, rng: Rng) -> np.ndarray:
    """Continuous tone switching between two pitches (ratio 1.15-1.6), at least one full cycle."""
    rate = _rate(rng, 0.8, 4.0, n, sr, cycles=1)
    low = _logu(rng, TONE_RANGE[0], TONE_RANGE[1] / 1.3)
    high = low * _logu(rng, 1.15, 1.6)
    first_high = ((_time(n, sr) * rate + rng.uniform(0, 1)) % 1.0) < 0.5
    return _tone(np.where(first_high, high, low), n, sr, rng)


def dripping(n: int, sr: int, rng: Rng) -> np.ndarray:
    """Random plinks (2-8 per second, at least two), each a short decaying tone with falling pitch."""
    d = n / sr
    count = max(2, int(rng.poisson(_logu(rng, 2.0, 8.0) * d)))
    out = np.zeros(n)
    for onset in rng.uniform(0, max(d - 0.03, 0), count):
        tau = _logu(rng, 0.01, 0.04)
        m = min(int(5 * tau * sr), n - int(onset * sr))
        if m <= 1:
            continue
        k = np.arange(m) / sr
        fall = rng.uniform(0.4, 0.7)
        freq = _logu(rng, *TONE_RANGE) * (fall + (1 - fall) * np.exp(-k / _logu(rng, 0.005, 0.02)))
        env = rng.uniform(0.5, 1.0) * np.exp(-k / tau) * np.minimum(1.0, k / 0.001)  # 1 ms attack
        start = int(onset * sr)
        out[start : start + m] += env * _tone(freq, m, sr, rng)
    return out


def rumble(n: int, sr: int, rng: Rng) -> np.ndarray:
    """Low-frequency band noise (centre 40-150 Hz) with slow, shallow amplitude modulation."""
    rate = _rate(rng, 0.5, 4.0, n, sr, cycles=1)
    depth = rng.uniform(0.3, 0.8)
    env = 1.0 - depth * 0.5 * (1.0 - np.cos(TWO_PI * rate * _time(n, sr) + rng.uniform(0, TWO_PI)))
    return env * _band_noise(n, sr, rng, _logu(rng, 40.0, 150.0), rng.uniform(1.0, 2.0))


def warble(n: int, sr: int, rng: Rng) -> np.ndarray:
    """Pure tone whose pitch wanders irregularly (random glides between 4-15 targets per second)."""
    d = n / sr
    rate = _rate(rng, 4.0, 15.0, n, sr, cycles=3)
    knots = np.arange(0.0, d + 1.0 / rate, 1.0 / rate)
    depth = rng.uniform(0.05, 0.2)
    wander = np.interp(_time(n, sr), knots, rng.uniform(-depth, depth, len(knots)))
    return _tone(_logu(rng, *TONE_RANGE) * (1 + wander), n, sr, rng)


SYNTHS: dict[str, Synth] = {
    "Chirp_up": partial(_chirp, up=True),
    "Chirp_down": partial(_chirp, up=False),
    "AM_tone": am_tone,
    "FM_vibrato": fm_vibrato,
    "Harmonic_stack": harmonic_stack,
    "Harmonic_glide": harmonic_glide,
    "Click_train": click_train,
    "Noise_burst": noise_burst,
    "Noise_swell": noise_swell,
    "Beep_train": beep_train,
    "Two_tone_siren": two_tone_siren,
    "Dripping": dripping,
    "Rumble": rumble,
    "Warble": warble,
}
CLASSES: tuple[str, ...] = tuple(SYNTHS)


# ----------------------------------------------------------------------------- events and clips


def synthesize_event(name: str, duration: float, sr: int, rng: Rng) -> np.ndarray:
    """One event of class ``name``: float32 mono, ``round(duration * sr)`` samples, peak 1 (or silence)."""
    if name not in SYNTHS:
        raise ValueError(f"unknown demo class {name!r}; known: {', '.join(CLASSES)}")
    n = round(duration * sr)
    if n <= 0:
        return np.zeros(0, dtype=np.float32)
    x = np.asarray(SYNTHS[name](n, sr, rng), dtype=np.float64)
    fade = min(round(FADE_S * sr), n // 4)
    if fade > 0:
        ramp = np.linspace(0.0, 1.0, fade, endpoint=False)
        x[:fade] *= ramp
        x[n - fade :] *= ramp[::-1]
    peak = np.max(np.abs(x))
    if peak > 0:
        x = x / peak
    return x.astype(np.float32)


def mix_clip(
    names: Sequence[str],
    duration: float,
    sr: int,
    rng: Rng,
    snr_db_range: tuple[float, float] = (5, 30),
) -> np.ndarray:
    """Events of ``names`` at random offsets and gains over coloured background noise at a random SNR.

    Each event lasts 40-100 % of the clip (at least ``MIN_EVENT_S`` or the whole clip); the result is
    float32 normalised to a random peak in [0.3, 0.95].
    """
    n = round(duration * sr)
    events = np.zeros(n)
    for name in names:
        length = min(n, max(round(duration * rng.uniform(0.4, 1.0) * sr), round(MIN_EVENT_S * sr)))
        offset = int(rng.integers(0, n - length + 1))
        gain = 10 ** (rng.uniform(-10.0, 0.0) / 20)
        events[offset : offset + length] += gain * synthesize_event(name, length / sr, sr, rng)
    power = float(np.mean(events**2)) if n else 0.0
    snr_db = rng.uniform(*snr_db_range)
    noise_rms = math.sqrt(power / 10 ** (snr_db / 10)) if power > 0 else 0.01
    x = events + noise_rms * _background(n, sr, rng)
    peak = float(np.max(np.abs(x))) if n else 0.0
    target = rng.uniform(0.3, 0.95)
    if peak > 0:
        x *= target / peak
    return x.astype(np.float32)
