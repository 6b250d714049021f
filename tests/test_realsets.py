"""The real-audio check sets' generators (benchmarks/realsets/) and the accuracy script's bookkeeping.

The generators run on a tiny size and their layout is parsed by the competition loader (the clip
table only: no cache, no training). They need Debian packages (espeak-ng, fluid-soundfont-gm,
timgm6mb-soundfont; .ci/run installs them): without one, its tests skip and say which. The
SoundFont reader is checked on a bank this file writes itself, against numpy's FFT.
"""

from __future__ import annotations

import hashlib
import struct
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audiotag.competitions import get_competition
from audiotag.config.schema import load_competition
from audiotag.core.errors import DataError

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import realsets  # noqa: E402
from realsets import common, instruments, report, sf2, speech  # noqa: E402

TINY = common.TINY


def sources_or_skip(name: str) -> None:
    try:
        realsets.module(name).sources()
    except realsets.MissingSource as exc:
        pytest.skip(f"a Debian package is missing: {exc}")


@pytest.fixture(scope="module")
def made(module_tmp: Path) -> dict[str, realsets.RealSet]:
    """Each set whose packages are installed, generated once at the tiny size."""
    root = module_tmp / "realsets"
    out = {}
    for name in realsets.SETS:
        try:
            out[name] = realsets.ensure(name, root, seed=11, size=TINY)
        except realsets.MissingSource:
            continue
    return out


def get_set(made: dict[str, realsets.RealSet], name: str) -> realsets.RealSet:
    sources_or_skip(name)
    return made[name]


def digests(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != common.MANIFEST
    }


@pytest.mark.parametrize("name", list(realsets.SETS))
def test_layout_parses_as_its_competition(
    name: str, made: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = get_set(made, name)
    monkeypatch.setenv("AUDIOTAG_WORKSPACE", str(tmp_path / "ws"))
    cfg = load_competition(str(real.yaml), [f"data_dir={real.data_dir}"])
    comp = get_competition(cfg)
    comp.obtain()
    table = comp.parse_clip_table()
    train, test = table[table["split"] == "train"], table[table["split"] == "test"]
    truth = pd.read_csv(real.truth, dtype=str, keep_default_na=False)
    assert sorted(test["clip_id"]) == sorted(truth["fname"])
    assert len(comp.classes) == TINY.classes
    per_class = pd.Series([c for labels in train["labels"] for c in labels]).value_counts()
    assert per_class.min() >= TINY.train_per_class
    assert (table["duration"] > 0.3).all() and (table["sample_rate"] == 22050).all()
    truth_labels = {c for text in truth.iloc[:, 1] for c in text.split(",")}
    assert truth_labels <= set(comp.classes)
    # the YAML's test_labels give the competition the same labels: runs report their own test score
    known = comp.test_truth()
    assert known is not None and known["clip_id"].tolist() == truth["fname"].tolist()
    assert [",".join(labels) for labels in known["labels"]] == truth.iloc[:, 1].tolist()


def test_spoken_words_test_voices_are_unseen(made: dict) -> None:
    real = get_set(made, "spoken_words")
    train = pd.read_csv(real.data_dir / "train.csv", dtype=str)
    truth = pd.read_csv(real.truth, dtype=str)
    assert set(train["voice"]).isdisjoint(truth["voice"])
    assert list(train.columns) == ["fname", "label", "manually_verified", "voice", "accent"]
    # within a class every clip has its own speaker (accent + voice variant)
    assert not train.duplicated(["label", "voice", "accent"]).any()


def test_instrument_clips_hold_one_to_three_instruments(made: dict) -> None:
    real = get_set(made, "instruments")
    train = pd.read_csv(real.data_dir / "train_curated.csv", dtype=str)
    counts = train["labels"].str.split(",").map(len)
    assert counts.between(1, 3).all()
    assert not train["labels"].str.split(",").map(lambda x: len(set(x)) != len(x)).any()
    sample = pd.read_csv(real.data_dir / "sample_submission.csv")
    assert list(sample.columns[1:]) == sorted(i.label for i in instruments.INSTRUMENTS[: TINY.classes])


@pytest.mark.parametrize("name", list(realsets.SETS))
def test_same_seed_same_files_other_seed_other_files(name: str, made: dict, tmp_path: Path) -> None:
    real = get_set(made, name)
    again = realsets.module(name).generate(tmp_path / "again", 11, TINY)
    assert again["seed"] == 11
    assert digests(tmp_path / "again") == digests(real.folder)
    realsets.module(name).generate(tmp_path / "other", 12, TINY)
    assert digests(tmp_path / "other") != digests(real.folder)


def test_ensure_keeps_an_up_to_date_set(made: dict, tmp_path: Path) -> None:
    real = get_set(made, "spoken_words")
    marker = real.folder / "data" / "train.csv"
    before = marker.stat().st_mtime_ns
    assert realsets.ensure("spoken_words", real.folder.parent, seed=11, size=TINY) == real
    assert marker.stat().st_mtime_ns == before


def test_missing_packages_are_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(common.shutil, "which", lambda _: None)
    with pytest.raises(realsets.MissingSource, match=r"apt-get install -y espeak-ng"):
        speech.generate(tmp_path / "s", 1, TINY)
    monkeypatch.setattr(instruments, "LIBRARIES", {"train": (tmp_path / "none.sf2", "fluid-soundfont-gm")})
    with pytest.raises(realsets.MissingSource, match=r"none\.sf2.*fluid-soundfont-gm"):
        instruments.generate(tmp_path / "i", 1, TINY)
    assert not (tmp_path / "s").exists() and not (tmp_path / "i").exists()


# ----------------------------------------------------------------------------- the SoundFont reader


def chunk(ident: bytes, body: bytes) -> bytes:
    return ident + struct.pack("<I", len(body)) + body + (b"\0" if len(body) % 2 else b"")


def riff_list(kind: bytes, *chunks: bytes) -> bytes:
    return chunk(b"LIST", kind + b"".join(chunks))


def write_bank(path: Path, wave: np.ndarray, rate: int, root: int, inst_gens: list[tuple[int, int]]) -> None:
    """A one-preset bank (bank 0, program 5) of one instrument with one zone over one sample, as the
    SoundFont 2.04 specification lays it out (46 zero samples after the sample, terminal records)."""
    pcm = np.concatenate([np.round(wave * 32767).astype("<i2"), np.zeros(46, "<i2")]).tobytes()
    n = len(wave)
    gens = [*inst_gens, (54, 1), (53, 0)]  # loop continuously; sampleID last
    pdta = riff_list(
        b"pdta",
        chunk(
            b"phdr",
            struct.pack("<20sHHHIII", b"Test", 5, 0, 0, 0, 0, 0)
            + struct.pack("<20sHHHIII", b"EOP", 0, 0, 1, 0, 0, 0),
        ),
        chunk(b"pbag", struct.pack("<HH", 0, 0) + struct.pack("<HH", 1, 0)),
        chunk(b"pmod", bytes(10)),
        chunk(b"pgen", struct.pack("<HH", 41, 0) + struct.pack("<HH", 0, 0)),
        chunk(b"inst", struct.pack("<20sH", b"Sine", 0) + struct.pack("<20sH", b"EOI", 1)),
        chunk(b"ibag", struct.pack("<HH", 0, 0) + struct.pack("<HH", len(gens), 0)),
        chunk(b"imod", bytes(10)),
        chunk(b"igen", b"".join(struct.pack("<Hh", op, amount) for op, amount in gens) + bytes(4)),
        chunk(
            b"shdr",
            struct.pack("<20sIIIIIBbHH", b"sine", 0, n, 0, n, rate, root, 0, 0, 1) + bytes(46),
        ),
    )
    body = (
        b"sfbk"
        + riff_list(b"INFO", chunk(b"ifil", struct.pack("<HH", 2, 1)))
        + riff_list(b"sdta", chunk(b"smpl", pcm))
        + pdta
    )
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def peak_hz(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[np.argmax(spectrum)])


def test_soundfont_note_pitch_loop_and_envelope(tmp_path: Path) -> None:
    rate = 22050
    period = 50  # 441 Hz, an exact number of periods in the loop
    wave = 0.5 * np.sin(2 * np.pi * np.arange(period * 40) / period)
    attack = -1200  # timecents: 2 ** (-1200 / 1200) = 0.5 s
    write_bank(tmp_path / "t.sf2", wave, rate, root=69, inst_gens=[(34, attack), (52, 0)])
    bank = sf2.SoundFont(tmp_path / "t.sf2")
    assert bank.preset(5).name == "Test" and len(bank.voices(5, 60, 100)) == 1
    held = bank.render(5, 69, 127, held=2.0, rate=rate)  # the 0.09 s sample looped for 2 s
    assert len(held) >= 2 * rate
    steady = held[rate : 2 * rate]
    assert abs(peak_hz(steady, rate) - 441.0) < 2.0
    octave = bank.render(5, 81, 127, held=2.0, rate=rate)[rate : 2 * rate]
    assert abs(peak_hz(octave, rate) - 882.0) < 2.0
    # linear attack over 0.5 s: a quarter second in, the envelope is at half the full level
    level = lambda t: np.abs(held[int(t * rate) - 200 : int(t * rate) + 200]).max()  # noqa: E731
    assert level(0.25) / level(1.0) == pytest.approx(0.5, abs=0.03)
    assert level(1.0) == pytest.approx(0.5, abs=0.01)  # velocity 127, no attenuation: the sample's level
    with pytest.raises(DataError, match="no preset for bank 0, program 6"):
        bank.render(6, 60, 100, 1.0, rate)


def test_soundfont_fine_tune(tmp_path: Path) -> None:
    rate = 22050
    wave = 0.5 * np.sin(2 * np.pi * np.arange(50 * 40) / 50)
    write_bank(tmp_path / "t.sf2", wave, rate, root=69, inst_gens=[(52, 100)])  # +100 cents
    note = sf2.SoundFont(tmp_path / "t.sf2").render(5, 69, 127, held=2.0, rate=rate)[rate : 2 * rate]
    assert abs(peak_hz(note, rate) - 441.0 * 2 ** (1 / 12)) < 2.0


def test_soundfont_refuses_other_files(tmp_path: Path) -> None:
    (tmp_path / "x.sf2").write_bytes(b"RIFF\0\0\0\0WAVEfmt ")
    with pytest.raises(DataError, match="not a SoundFont 2 file"):
        sf2.SoundFont(tmp_path / "x.sf2")


# ----------------------------------------------------------------------------- the accuracy table


def test_goal_is_halfway_from_the_anchor_to_perfect() -> None:
    rows = [
        report.Row("a", "anchor", "map3", 0.2, 0.4, 0.1),
        report.Row("a", "cnn", "map3", 0.5, 0.69, 3.0),
        report.Row("a", "big", "map3", 0.6, 0.71, 9.0),
        report.Row("b", "anchor", "lwlrap", 0.7, 0.8, 0.1),
        report.Row("b", "cnn", "lwlrap", 0.6, 0.7, 3.0),
    ]
    lines = report.goals(rows)
    assert "best recipe big test 0.7100; goal >= 0.7000" in lines[0] and lines[0].endswith("met")
    assert "goal >= 0.9000" in lines[1] and lines[1].endswith("not met")


def test_results_block_goes_into_its_own_section(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    path.write_text("# Measured results\n\n## Training throughput\n\nkept\n")
    report.append_results(path, "### first\n")
    report.append_results(path, "### second\n")
    text = path.read_text()
    assert text.startswith("# Measured results\n\n## Training throughput\n\nkept\n")
    assert text.index(report.SECTION) < text.index("### first") < text.index("### second")
    path.write_text(text + "\n## Later section\n\nalso kept\n")
    report.append_results(path, "### third\n")
    text = path.read_text()
    assert text.index("### second") < text.index("### third") < text.index("## Later section")
    assert text.endswith("## Later section\n\nalso kept\n")


def test_accuracy_refuses_a_run_of_some_folds() -> None:
    """``--set train.folds=[0]`` would train for minutes and then find no metrics.json: refused first."""
    import accuracy

    recipe = REPO / "configs" / "experiments" / "table" / "probe_aisfx.yaml"
    with pytest.raises(SystemExit, match=r"train\.folds=\[0\].*whole runs"):
        accuracy.main(["--set", "train.folds=[0]", "--recipes", str(recipe), "--work", "/nonexistent"])
