"""Speech Commands v2 (``-c speechcommands``, ``kind: folders`` with a ``.tar.gz`` download whose files
lie at its root): the config, and a tiny made-up archive served from 127.0.0.1, downloaded, checked,
extracted into raw/ and prepared; a table competition takes a .tar.gz the same way."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pandas as pd
import pytest

from audiotag.cli.main import main
from audiotag.config.schema import load_competition
from tests.folders_fakes import speech_layout
from tests.http_fakes import ArchiveHandler, running_server

WORDS = {"yes": 400.0, "no": 900.0, "up": 2500.0}  # three of the 35, with the YAML-boolean names


def _args(url: str, *extra: str) -> list[str]:
    out = ["prepare", "-c", "speechcommands", "--workers", "1", "--set", f"competition.download.url={url}"]
    for item in extra:
        out += ["--set", item]
    return out


def test_config_is_the_35_words_with_speaker_groups_and_the_lists() -> None:
    cfg = load_competition("speechcommands")
    assert (cfg.kind, cfg.metric, cfg.audio_dir, cfg.exclude) == (
        "folders",
        "accuracy",
        ".",
        ["_background_noise_"],
    )
    assert cfg.classes is not None and len(cfg.classes) == 35 == len(set(cfg.classes))
    assert {"yes", "no", "on", "off", "backward", "visual"} <= set(cfg.classes)  # quoted, not booleans
    assert (cfg.validation_list, cfg.testing_list) == ("validation_list.txt", "testing_list.txt")
    assert cfg.download is not None and cfg.download.folder == "."
    assert cfg.download.url.endswith("/speech_commands_v0.02.tar.gz")


def test_prepare_downloads_the_tar_gz_and_uses_its_root(workspace: Path) -> None:
    layout = speech_layout(WORDS)
    data = layout.tar_gz()
    state = {"data": data, "hits": 0}
    sha = hashlib.sha256(data).hexdigest()
    with running_server(ArchiveHandler, state) as base:
        url = f"{base}/data/speech_commands_v0.02.tar.gz"
        assert main(_args(url, f"competition.download.sha256='{sha}'")) == 0
        assert state["hits"] == 1
        assert main(_args(url)) == 0  # extracted files present: no second download
        assert state["hits"] == 1
    comp_dir = workspace / "competition" / "speechcommands"
    raw = comp_dir / "raw"
    assert (raw / "speech_commands_v0.02.tar.gz").is_file() and (raw / "testing_list.txt").is_file()
    assert (raw / "yes" / "00c0ffee_nohash_0.wav").is_file()
    table = pd.read_parquet(comp_dir / "meta.parquet")
    assert sorted(table.loc[table["split"] == "test", "clip_id"]) == sorted(layout.testing)
    assert sorted(table.loc[table["subset"] == "validation", "clip_id"]) == sorted(layout.validation)
    assert not table["clip_id"].str.startswith("_background_noise_").any()
    (fold_file,) = comp_dir.glob("folds/k5-seed42-all-grouped.csv")
    folds = pd.read_csv(fold_file)
    assert (folds.assign(s=folds["clip_id"].map(layout.speaker)).groupby("s")["fold"].nunique() == 1).all()
    sample = pd.read_csv(comp_dir / "sample_submission.csv")
    assert list(sample.columns) == ["fname", "label"] and len(sample) == len(layout.testing)


def test_wrong_sha256_is_refused_before_extraction(workspace: Path, capsys: pytest.CaptureFixture) -> None:
    state = {"data": speech_layout(WORDS).tar_gz(), "hits": 0}
    with running_server(ArchiveHandler, state) as base:
        url = f"{base}/speech_commands_v0.02.tar.gz"
        assert main(_args(url, "competition.download.sha256='" + "0" * 64 + "'")) != 0
    assert "refused" in capsys.readouterr().err
    assert not (workspace / "competition" / "speechcommands" / "raw" / "yes").exists()


def test_table_competition_downloads_a_tar_gz_with_a_top_folder(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """ESC-50-like: meta CSV and audio under the archive's top folder, fetched as .tar.gz."""
    layout = speech_layout(WORDS, speakers=5, testing_speakers=0, validation_speakers=0)
    clips = sorted(c for c in layout.files if c.endswith(".wav") and not c.startswith("_"))
    meta = pd.DataFrame({"file": clips, "label": [c.split("/")[0] for c in clips]})
    layout.files["meta.csv"] = meta.to_csv(index=False).encode()
    buf = io.BytesIO(layout.tar_gz(top="mydata-1.0"))
    with tarfile.open(fileobj=buf) as tf:
        assert all(n.startswith("mydata-1.0/") for n in tf.getnames())
    spec = {
        "name": "tartable",
        "kind": "table",
        "train_csv": "meta.csv",
        "audio_dir": ".",
        "file_column": "file",
        "metric": "macro_f1",
        "submission": {"kind": "top_k_labels", "k": 1},
        "n_folds": 3,
    }
    state = {"data": buf.getvalue(), "hits": 0}
    with running_server(ArchiveHandler, state) as base:
        spec["download"] = {"url": f"{base}/mydata-1.0.tgz", "folder": "mydata-1.0"}
        path = tmp_path / "tartable.yaml"
        path.write_text(json.dumps(spec))
        assert main(["prepare", "-c", str(path), "--workers", "1"]) == 0
        table = pd.read_parquet(workspace / "competition" / "tartable" / "meta.parquet")
        assert sorted(table["clip_id"]) == clips and state["hits"] == 1
        spec["download"] = {"url": f"{base}/mydata-1.0.tgz", "folder": "other"}
        path.write_text(json.dumps(spec))
        capsys.readouterr()
        assert main(["prepare", "-c", str(path), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "has no top-level folder 'other' (found ['mydata-1.0'])" in err and state["hits"] == 1
