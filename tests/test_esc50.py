"""ESC-50 (``-c esc50``, ``kind: table`` with a ``download`` archive): a tiny made-up ESC-50 zipped the
way GitHub archives are, served from 127.0.0.1, downloaded, extracted and prepared with its predefined
folds; then trained one epoch on a narrow model (slow)."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from audiotag.cli.main import main
from audiotag.config.schema import load_competition
from audiotag.core.errors import ConfigError
from tests.http_fakes import ArchiveHandler, running_server

RATE = 16000
CATEGORIES = {"dog": 0, "rain": 10, "siren": 42}  # ESC-50 names and targets
COLUMNS = ["filename", "fold", "target", "category", "esc10", "src_file", "take"]


def _wav(freq: float, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    t = np.arange(RATE // 2) / RATE
    wave = 0.2 * np.sin(2 * np.pi * freq * t) + 0.02 * rng.standard_normal(t.size)
    buf = io.BytesIO()
    sf.write(buf, wave.astype(np.float32), RATE, format="WAV")
    return buf.getvalue()


def esc50_zip() -> tuple[bytes, pd.DataFrame]:
    """Per fold 1..5, two clips (takes A and B of one source file) of each of 3 categories."""
    rows, files = [], {}
    for fold in range(1, 6):
        for c, (category, target) in enumerate(CATEGORIES.items()):
            src = f"{fold}{c}{target:03d}"
            for take in "AB":
                name = f"{fold}-{src}-{take}-{target}.wav"
                rows.append([name, fold, target, category, category == "dog", src, take])
                files[name] = _wav(300.0 * (c + 1) ** 2, seed=len(rows))
    meta = pd.DataFrame(rows, columns=COLUMNS)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ESC-50-master/", "")
        zf.writestr("ESC-50-master/README.md", "made up\n")
        zf.writestr("ESC-50-master/meta/esc50.csv", meta.to_csv(index=False))
        for name, data in files.items():
            zf.writestr(f"ESC-50-master/audio/{name}", data)
    return buf.getvalue(), meta


@pytest.fixture
def archive() -> tuple[bytes, pd.DataFrame]:
    return esc50_zip()


def _args(url: str, *stages: str, extra: tuple[str, ...] = ()) -> list[str]:
    out = [*stages, "-c", "esc50", "--workers", "1", "--set", f"competition.download.url={url}"]
    for item in extra:
        out += ["--set", item]
    return out


def test_config_is_single_label_accuracy_on_predefined_folds() -> None:
    cfg = load_competition("esc50")
    assert (cfg.kind, cfg.metric, cfg.multi_label, cfg.test_dir) == ("table", "accuracy", False, None)
    assert (cfg.fold_column, cfg.group_column, cfg.n_folds) == ("fold", "src_file", 5)
    assert cfg.download is not None and cfg.download.folder == "ESC-50-master"
    with pytest.raises(ConfigError, match="only meaningful with kind: table"):
        load_competition("demo", ["download={url: 'https://x/a.zip', folder: a}"])


def test_prepare_downloads_extracts_and_keeps_the_given_folds(
    workspace: Path, archive: tuple[bytes, pd.DataFrame]
) -> None:
    data, meta = archive
    state = {"data": data, "hits": 0}
    with running_server(ArchiveHandler, state) as base:
        url = f"{base}/karolpiczak/ESC-50/archive/master.zip"
        sha = hashlib.sha256(data).hexdigest()
        assert main(_args(url, "prepare", extra=(f"competition.download.sha256='{sha}'",))) == 0
        assert state["hits"] == 1
        raw = workspace / "competition" / "esc50" / "raw"
        assert (raw / "master.zip").is_file() and (raw / "ESC-50-master" / "meta" / "esc50.csv").is_file()
        assert main(_args(url, "prepare")) == 0  # files present: no second download
        assert state["hits"] == 1
    comp_dir = workspace / "competition" / "esc50"
    table = pd.read_parquet(comp_dir / "meta.parquet")
    assert len(table) == 30 and (table["split"] == "train").all()
    assert json.loads((comp_dir / "vocabulary.json").read_text()) == {"classes": sorted(CATEGORIES)}
    (fold_file,) = comp_dir.glob("folds/k5-predefined-*.csv")
    folds = pd.read_csv(fold_file).merge(meta, left_on="clip_id", right_on="filename")
    assert len(folds) == 30 and (folds["fold_x"] == folds["fold_y"] - 1).all()  # given 1..5 as 0..4
    assert (folds.groupby("src_file")["fold_x"].nunique() == 1).all()


def test_wrong_sha256_is_refused_and_data_dir_skips_the_download(
    workspace: Path, tmp_path: Path, archive: tuple[bytes, pd.DataFrame], capsys: pytest.CaptureFixture
) -> None:
    data, _ = archive
    state = {"data": data, "hits": 0}
    with running_server(ArchiveHandler, state) as base:
        url = f"{base}/master.zip"
        assert main(_args(url, "prepare", extra=("competition.download.sha256='" + "0" * 64 + "'",))) != 0
        assert "master.zip" in (err := capsys.readouterr().err) and "refused" in err and state["hits"] == 1
        assert not (workspace / "competition" / "esc50" / "raw" / "ESC-50-master").exists()
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            zf.extractall(tmp_path / "mine")
        hits = state["hits"]
        assert main([*_args(url, "prepare"), "--data-dir", str(tmp_path / "mine" / "ESC-50-master")]) == 0
        assert state["hits"] == hits  # used in place, nothing fetched
    assert not (workspace / "competition" / "esc50" / "raw" / "ESC-50-master").exists()


@pytest.mark.slow
def test_train_one_epoch_reports_accuracy_per_given_fold(
    workspace: Path, archive: tuple[bytes, pd.DataFrame]
) -> None:
    data, _ = archive
    tiny = ("model.channels=[8,16]", "model.embedding_dim=16", "train.epochs=1", "train.batch_size=16")
    with running_server(ArchiveHandler, {"data": data, "hits": 0}) as base:
        assert main(_args(f"{base}/master.zip", "prepare", "train", "ensemble", extra=tiny)) == 0
    runs = {p.parent.name: p for p in (workspace / "competition" / "esc50" / "runs").glob("*/metrics.json")}
    assert sorted(runs) == ["cnn_small", "probe_aisfx"]  # the default experiment and the extra member
    for path in runs.values():  # both on the five given folds
        assert sorted(int(f) for f in json.loads(path.read_text())["folds"]) == [0, 1, 2, 3, 4]
    assert not list((workspace / "submissions" / "esc50").glob("*.csv"))
