"""A small SoundFont 2 reader and note renderer: the real recorded samples of a General MIDI bank.

Reads the RIFF ``sfbk`` file as the SoundFont 2.04 specification lays it out: ``sdta/smpl`` holds
16-bit PCM, ``pdta`` the preset -> instrument -> sample hierarchy (``phdr/pbag/pgen``,
``inst/ibag/igen``, ``shdr``). A note is rendered from every instrument zone that covers its key and
velocity (stereo pairs and velocity layers are summed to mono): the sample is resampled by linear
interpolation to the note's pitch (root key, coarse/fine tune, the sample's pitch correction, scale
tuning), looped while the note is held when the zone says so, and shaped by the zone's volume
envelope (delay, attack, hold, decay to sustain, release) and attenuation. Modulators, filters, LFOs,
pan, reverb and chorus are left out: the benchmark wants each library's recorded timbre, not a full
synthesiser. The PCM is memory-mapped, so opening FluidR3_GM (148 MB) reads only its headers.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from audiotag.core.errors import DataError

# Generator operators (SoundFont 2.04, section 8.1.2) this renderer uses.
START_OFFSET, END_OFFSET, LOOP_START_OFFSET, LOOP_END_OFFSET = 0, 1, 2, 3
START_COARSE, END_COARSE, LOOP_START_COARSE, LOOP_END_COARSE = 4, 12, 45, 50
DELAY_VOL, ATTACK_VOL, HOLD_VOL, DECAY_VOL, SUSTAIN_VOL, RELEASE_VOL = 33, 34, 35, 36, 37, 38
INSTRUMENT, KEY_RANGE, VEL_RANGE, ATTENUATION = 41, 43, 44, 48
COARSE_TUNE, FINE_TUNE, SAMPLE_ID, SAMPLE_MODES, SCALE_TUNING, ROOT_KEY = 51, 52, 53, 54, 56, 58
RANGES = (KEY_RANGE, VEL_RANGE)
UNSIGNED = (INSTRUMENT, SAMPLE_ID, SAMPLE_MODES)
# Preset-level values add to the instrument's (spec 8.5), for the operators used here.
ADDITIVE = (
    DELAY_VOL,
    ATTACK_VOL,
    HOLD_VOL,
    DECAY_VOL,
    SUSTAIN_VOL,
    RELEASE_VOL,
    ATTENUATION,
    COARSE_TUNE,
    FINE_TUNE,
)
DEFAULTS = {
    DELAY_VOL: -12000,
    ATTACK_VOL: -12000,
    HOLD_VOL: -12000,
    DECAY_VOL: -12000,
    SUSTAIN_VOL: 0,
    RELEASE_VOL: -12000,
    ATTENUATION: 0,
    COARSE_TUNE: 0,
    FINE_TUNE: 0,
    SAMPLE_MODES: 0,
    SCALE_TUNING: 100,
    ROOT_KEY: -1,
}
ROM_SAMPLE = 0x8000
SILENCE_DB = -100.0  # the level a release (or a decay to zero sustain) ends at, as the spec times it
MAX_SECONDS = 100.0  # envelope stage lengths are clamped to this (timecents allow hours)
MAX_RELEASE = 2.0  # seconds of release tail rendered at most (a clip never needs more)


@dataclass(frozen=True)
class SampleHeader:
    name: str
    start: int
    end: int
    loop_start: int
    loop_end: int
    rate: int
    original_pitch: int
    pitch_correction: int  # cents
    kind: int


@dataclass
class Zone:
    """Generators of one zone, the global zone's values already merged in."""

    gens: dict[int, int] = field(default_factory=dict)

    def range(self, op: int) -> tuple[int, int]:
        value = self.gens.get(op)
        return (0, 127) if value is None else (value & 0xFF, value >> 8)

    def covers(self, key: int, velocity: int) -> bool:
        lo, hi = self.range(KEY_RANGE)
        vlo, vhi = self.range(VEL_RANGE)
        return lo <= key <= hi and vlo <= velocity <= vhi

    def get(self, op: int) -> int:
        return self.gens.get(op, DEFAULTS.get(op, 0))


@dataclass(frozen=True)
class Preset:
    name: str
    bank: int
    program: int
    zones: list[Zone]


@dataclass(frozen=True)
class Voice:
    """One sample zone playing one note: the merged generators and the sample they point at."""

    gens: Zone
    sample: SampleHeader


def _chunks(data: memoryview, offset: int, end: int, path: Path) -> dict[str, tuple[int, int]]:
    """Sub-chunks of a RIFF list: {id: (data offset, size)}; LIST chunks keyed by their list type."""
    out: dict[str, tuple[int, int]] = {}
    while offset + 8 <= end:
        ident = bytes(data[offset : offset + 4]).decode("latin-1")
        (size,) = struct.unpack_from("<I", data, offset + 4)
        body = offset + 8
        if body + size > end:
            raise DataError(f"{path}: chunk {ident!r} at byte {offset} runs past the end of the file")
        if ident == "LIST":
            ident = bytes(data[body : body + 4]).decode("latin-1")
            out[ident] = (body + 4, size - 4)
        else:
            out[ident] = (body, size)
        offset = body + size + (size & 1)
    return out


def _records(data: memoryview, chunk: tuple[int, int], fmt: str, name: str, path: Path) -> list[tuple]:
    offset, size = chunk
    width = struct.calcsize(fmt)
    if size % width:
        raise DataError(f"{path}: pdta/{name} is {size} bytes, not a multiple of its {width}-byte records")
    return [struct.unpack_from(fmt, data, offset + i * width) for i in range(size // width)]


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("latin-1").strip()


def _zones(bags: list[tuple], gens: list[tuple], first: int, last: int, terminal: int) -> list[Zone]:
    """Zones of bags first..last-1; a first zone without the terminal generator is global (defaults)."""
    zones: list[Zone] = []
    global_gens: dict[int, int] = {}
    for bag in range(first, last):
        lo, hi = bags[bag][0], bags[bag + 1][0]
        values: dict[int, int] = {}
        for op, amount in (gens[i] for i in range(lo, hi)):
            if op in RANGES or op in UNSIGNED:
                values[op] = amount
            else:
                values[op] = amount - 0x10000 if amount >= 0x8000 else amount
        if terminal not in values:
            if bag == first:
                global_gens = values
            continue  # a non-first zone without its terminal generator is ignored (spec 7.3 / 7.7)
        zones.append(Zone({**global_gens, **values}))
    return zones


class SoundFont:
    """The presets and samples of one .sf2 file; ``render`` plays a note of a preset as mono audio."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        raw = np.memmap(self.path, dtype=np.uint8, mode="r")
        data = memoryview(raw)  # type: ignore[arg-type]
        if len(raw) < 12 or bytes(data[0:4]) != b"RIFF" or bytes(data[8:12]) != b"sfbk":
            raise DataError(f"{self.path}: not a SoundFont 2 file (no RIFF sfbk header)")
        top = _chunks(data, 12, len(raw), self.path)
        for needed in ("sdta", "pdta"):
            if needed not in top:
                raise DataError(f"{self.path}: no LIST {needed} chunk")
        sdta = _chunks(data, top["sdta"][0], top["sdta"][0] + top["sdta"][1], self.path)
        pdta = _chunks(data, top["pdta"][0], top["pdta"][0] + top["pdta"][1], self.path)
        if "smpl" not in sdta:
            raise DataError(f"{self.path}: no sdta/smpl chunk (16-bit sample data)")
        missing = [c for c in ("phdr", "pbag", "pgen", "inst", "ibag", "igen", "shdr") if c not in pdta]
        if missing:
            raise DataError(f"{self.path}: pdta lacks {', '.join(missing)}")
        start, size = sdta["smpl"]
        self.pcm = np.frombuffer(raw, dtype="<i2", count=size // 2, offset=start)
        rec = lambda name, fmt: _records(data, pdta[name], fmt, name, self.path)  # noqa: E731
        self.samples = [
            SampleHeader(_text(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[9])
            for r in rec("shdr", "<20sIIIIIBbHH")[:-1]
        ]
        igen = [(op, amount) for op, amount in rec("igen", "<HH")]
        ibag = rec("ibag", "<HH")
        insts = rec("inst", "<20sH")
        self.instruments = [
            _zones(ibag, igen, insts[i][1], insts[i + 1][1], SAMPLE_ID) for i in range(len(insts) - 1)
        ]
        pgen = [(op, amount) for op, amount in rec("pgen", "<HH")]
        pbag = rec("pbag", "<HH")
        phdr = rec("phdr", "<20sHHHIII")
        self.presets = {
            (phdr[i][2], phdr[i][1]): Preset(
                _text(phdr[i][0]),
                phdr[i][2],
                phdr[i][1],
                _zones(pbag, pgen, phdr[i][3], phdr[i + 1][3], INSTRUMENT),
            )
            for i in range(len(phdr) - 1)
        }

    def preset(self, program: int, bank: int = 0) -> Preset:
        found = self.presets.get((bank, program))
        if found is None:
            raise DataError(f"{self.path}: no preset for bank {bank}, program {program}")
        return found

    def voices(self, program: int, key: int, velocity: int, bank: int = 0) -> list[Voice]:
        """The sample zones that sound for ``key`` at ``velocity`` (preset values added to instrument's)."""
        out = []
        for pzone in self.preset(program, bank).zones:
            if not pzone.covers(key, velocity):
                continue
            index = pzone.get(INSTRUMENT)
            if index >= len(self.instruments):
                raise DataError(f"{self.path}: preset {program} points at missing instrument {index}")
            for izone in self.instruments[index]:
                if not izone.covers(key, velocity):
                    continue
                sample_index = izone.get(SAMPLE_ID)
                if sample_index >= len(self.samples):
                    raise DataError(
                        f"{self.path}: an instrument zone points at missing sample {sample_index}"
                    )
                sample = self.samples[sample_index]
                if sample.kind & ROM_SAMPLE:
                    continue
                gens = dict(izone.gens)
                for op in ADDITIVE:
                    if op in pzone.gens:
                        gens[op] = izone.get(op) + pzone.gens[op]
                out.append(Voice(Zone(gens), sample))
        return out

    def render(
        self, program: int, key: int, velocity: int, held: float, rate: int, bank: int = 0
    ) -> np.ndarray:
        """One note, held for ``held`` seconds then released, as float32 mono at ``rate`` Hz."""
        voices = self.voices(program, key, velocity, bank)
        if not voices:
            return np.zeros(0, dtype=np.float32)
        parts = [self._voice(v, key, velocity, held, rate) for v in voices]
        out = np.zeros(max(len(p) for p in parts), dtype=np.float32)
        for part in parts:
            out[: len(part)] += part
        return out

    def _voice(self, voice: Voice, key: int, velocity: int, held: float, rate: int) -> np.ndarray:
        z, s = voice.gens, voice.sample
        start = s.start + z.get(START_OFFSET) + 32768 * z.get(START_COARSE)
        end = s.end + z.get(END_OFFSET) + 32768 * z.get(END_COARSE)
        loop_start = s.loop_start + z.get(LOOP_START_OFFSET) + 32768 * z.get(LOOP_START_COARSE)
        loop_end = s.loop_end + z.get(LOOP_END_OFFSET) + 32768 * z.get(LOOP_END_COARSE)
        start, end = max(0, start), min(len(self.pcm), end)
        if end - start < 2:
            return np.zeros(0, dtype=np.float32)
        root = z.get(ROOT_KEY)
        root = s.original_pitch if root < 0 or root > 127 else root
        semitones = (
            (key - root) * z.get(SCALE_TUNING) / 100.0
            + z.get(COARSE_TUNE)
            + (z.get(FINE_TUNE) + s.pitch_correction) / 100.0
        )
        step = 2.0 ** (semitones / 12.0) * s.rate / rate  # sample frames per output frame
        envelope = volume_envelope(z, held, rate)
        pos = (start + step * np.arange(len(envelope))).astype(np.float64)
        looping = z.get(SAMPLE_MODES) in (1, 3) and start <= loop_start < loop_end <= end
        if looping:
            beyond = pos >= loop_end
            pos[beyond] = loop_start + np.mod(pos[beyond] - loop_start, loop_end - loop_start)
        else:
            pos = pos[pos < end - 1]
            envelope = envelope[: len(pos)]
        base = np.floor(pos).astype(np.int64)
        frac = (pos - base).astype(np.float32)
        pcm = self.pcm
        wave = pcm[base].astype(np.float32) * (1 - frac) + pcm[base + 1].astype(np.float32) * frac
        gain_db = -z.get(ATTENUATION) / 10.0 + 40.0 * np.log10(max(velocity, 1) / 127.0)
        return wave / 32768.0 * envelope * np.float32(10.0 ** (gain_db / 20.0))


def seconds(timecents: int) -> float:
    return min(2.0 ** (timecents / 1200.0), MAX_SECONDS)


def volume_envelope(zone: Zone, held: float, rate: int) -> np.ndarray:
    """Amplitude over time: delay, linear attack, hold, decay in dB to sustain, release in dB to silence.

    Decay and release times are, as the spec says, the time a full 100 dB change would take."""
    sustain_db = -min(max(zone.get(SUSTAIN_VOL), 0), 1440) / 10.0
    delay, attack, hold = (seconds(zone.get(op)) for op in (DELAY_VOL, ATTACK_VOL, HOLD_VOL))
    decay, release = seconds(zone.get(DECAY_VOL)), seconds(zone.get(RELEASE_VOL))
    n_held = max(round(held * rate), 1)
    n_release = round(min(release, MAX_RELEASE) * rate)
    t = np.arange(n_held + n_release, dtype=np.float64) / rate
    level_db = np.full(t.shape, sustain_db)
    decay_start = delay + attack + hold
    in_decay = t >= decay_start
    level_db[in_decay] = np.maximum(sustain_db, SILENCE_DB * (t[in_decay] - decay_start) / max(decay, 1e-6))
    level_db[t < decay_start] = 0.0
    amplitude = 10.0 ** (level_db / 20.0)
    amplitude[t < delay] = 0.0
    rising = (t >= delay) & (t < delay + attack)
    amplitude[rising] = (t[rising] - delay) / max(attack, 1e-6)
    at_release = amplitude[n_held - 1]
    if n_release:
        fall = t[n_held:] - t[n_held - 1]
        release_db = 20.0 * np.log10(max(at_release, 1e-5)) + SILENCE_DB * fall / max(release, 1e-6)
        amplitude[n_held:] = np.where(release_db > SILENCE_DB, 10.0 ** (release_db / 20.0), 0.0)
    return amplitude.astype(np.float32)
