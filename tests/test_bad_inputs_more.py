"""Bad inputs to the newer commands (issue 26): new-competition, embed, tune, pretrain, report (and the
train rerun a damaged run file sends the user to). Each is a message naming the file or setting at fault
and what to do, exit code 2, no traceback, and nothing of the user's deleted or changed."""

from __future__ import annotations

import html
import shutil
from pathlib import Path

import pytest
import yaml

from audiotag.cli.main import main
from tests import demo_workspace
from tests.conftest import tiny_args
from tests.test_new_competition import esc50_like
from tests.test_probe_end_to_end import FRONT_END, panns_checkpoint, tiny_competition_yaml
from tests.test_tune import TUNE_YAML, tune_args


def refused(capsys: pytest.CaptureFixture, *args: str) -> str:
    """Run the command, expect exit code 2 and a message without a traceback; the message."""
    assert main(list(args)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "\nerror: " in "\n" + err, err
    return err


# --------------------------------------------------------------------------- new-competition


def test_new_competition_on_an_empty_folder_names_it(tmp_path: Path, capsys) -> None:
    (tmp_path / "data").mkdir()
    err = refused(
        capsys, "new-competition", "x", "--from", str(tmp_path / "data"), "-o", str(tmp_path / "x.yaml")
    )
    assert f"{tmp_path / 'data'}: no audio files" in err
    assert not (tmp_path / "x.yaml").exists()


def test_new_competition_reads_a_csv_with_a_byte_order_mark(tmp_path: Path) -> None:
    data = esc50_like(tmp_path / "esc")
    csv = data / "meta" / "esc50.csv"
    csv.write_bytes(b"\xef\xbb\xbf" + csv.read_bytes())  # as Excel's 'CSV UTF-8' export writes it
    assert main(["new-competition", "x", "--from", str(data), "-o", str(tmp_path / "x.yaml")]) == 0
    spec = yaml.safe_load((tmp_path / "x.yaml").read_text())
    assert (spec["train_csv"], spec["file_column"], spec["label_column"]) == (
        "meta/esc50.csv",
        "filename",
        "category",
    )


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16"])
def test_new_competition_names_a_csv_in_another_encoding(tmp_path: Path, capsys, encoding: str) -> None:
    data = esc50_like(tmp_path / "esc")
    csv = data / "meta" / "esc50.csv"
    text = csv.read_text().replace("dog", "chien_à_poil")
    csv.write_bytes(text.encode(encoding))
    before = csv.read_bytes()
    err = refused(capsys, "new-competition", "x", "--from", str(data), "-o", str(tmp_path / "x.yaml"))
    assert "meta/esc50.csv: not UTF-8 text at line " in err and "save it as UTF-8" in err
    assert not (tmp_path / "x.yaml").exists() and csv.read_bytes() == before


def test_prepare_names_a_train_csv_in_another_encoding(tmp_path: Path, workspace: Path, capsys) -> None:
    data = esc50_like(tmp_path / "esc")
    config = tmp_path / "x.yaml"
    assert main(["new-competition", "x", "--from", str(data), "-o", str(config)]) == 0
    csv = data / "meta" / "esc50.csv"
    csv.write_bytes(csv.read_text().replace("rain", "pluie_fine_é").encode("latin-1"))
    err = refused(capsys, "prepare", "-c", str(config), "--workers", "1")
    assert f"{csv}: cannot be parsed as CSV (not UTF-8 text at line 4: byte 0xe9; save it as UTF-8" in err


# --------------------------------------------------------------------------- embed


@pytest.mark.slow
def test_embed_names_a_damaged_embedding_file_and_keeps_the_rest(
    tmp_path: Path, workspace: Path, capsys
) -> None:
    tiny_competition_yaml(tmp_path)
    model = ["--model", str(panns_checkpoint(tmp_path / "frozen.pth")), "--arch", "cnn_small"]
    args = ["embed", "-c", str(tmp_path / "demo.yaml"), *model, "--features", FRONT_END, "--workers", "1"]
    assert main([*args, "--device", "cpu"]) == 0
    (folder,) = (p for p in (workspace / "competition" / "demo" / "embeddings").iterdir() if p.is_dir())
    layer = folder / "embedding.f32"
    damaged = layer.read_bytes()[:-4]  # cut short
    layer.write_bytes(damaged)
    rest = {p.name: p.read_bytes() for p in folder.iterdir() if p != layer}
    err = refused(capsys, *args, "--device", "cpu")
    assert (
        f"{layer}: " in err
        and f"the embedding cache is damaged — delete {folder} and run ./run.sh embed" in err
    )
    assert (
        layer.read_bytes() == damaged
        and {p.name: p.read_bytes() for p in folder.iterdir() if p != layer} == rest
    )
    shutil.rmtree(folder)  # what the message says to do
    assert main([*args, "--device", "cpu"]) == 0 and layer.stat().st_size == len(damaged) + 4


# --------------------------------------------------------------------------- tune


@pytest.mark.parametrize(
    ("space", "named"),
    [
        (
            "  train.lr: {type: float, low: abc, high: 1.0e-2}\n",
            "space.train.lr.float.low: Input should be a valid number",
        ),
        ("  train.lr: {type: floaty, low: 0.1, high: 1.0}\n", "space.train.lr: Input tag 'floaty'"),
        ("  model.dropout: {type: categorical, choices: 5}\n", "space.model.dropout.categorical.choices"),
        ("  train.lr: {type: float, low: 1.0, high: 0.1}\n", "low 1.0 is above high 0.1"),
        (
            "  train.grad_accum_steps: {type: float, low: 1.5, high: 3.5}\n",
            "'train.grad_accum_steps': a whole-number setting",
        ),
        (
            "  model.dropout: {type: categorical, choices: [a, b]}\n",
            "'model.dropout': the value 'a' is refused",
        ),
    ],
    ids=["low-str", "type", "choices-scalar", "low-above-high", "float-for-int", "choice-type"],
)
def test_tune_names_the_search_space_entry_of_the_wrong_type(
    workspace: Path, capsys, space: str, named: str
) -> None:
    config = workspace / "tune.yaml"
    config.write_text(TUNE_YAML.split("space:")[0] + "space:\n" + space)
    err = refused(capsys, *tune_args(config))
    assert str(config) in err and named in err
    assert not (workspace / "competition" / "demo" / "tune").exists()


# --------------------------------------------------------------------------- pretrain


def test_pretrain_on_an_empty_folder_or_non_audio_files_names_them(
    tmp_path: Path, workspace: Path, capsys
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not audio")
    args = ["pretrain", "--name", "x", "--workers", "1", "--audio"]
    err = refused(capsys, *args, str(tmp_path / "empty"))
    assert f"--audio {tmp_path / 'empty'}: no audio files (.wav" in err
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.wav").write_bytes(b"not audio at all" * 10)
    err = refused(capsys, *args, str(tmp_path / "junk"))
    assert f"none of the 1 clips has usable audio (e.g. {tmp_path / 'junk' / 'a.wav'}: undecodable" in err
    assert (tmp_path / "junk" / "a.wav").read_bytes() == b"not audio at all" * 10
    assert not (workspace / "competition" / "_pretrain" / "x" / "encoder.pt").exists()


# --------------------------------------------------------------------------- report, train


@pytest.fixture
def trained(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    return demo_workspace.copy_to(demo_workspace.trained_base(tmp_path_factory), tmp_path / "ws", monkeypatch)


def damage(path: Path, how: str) -> bytes:
    data = path.read_bytes()
    path.write_bytes({"cut": data[: len(data) // 2], "empty": b"", "list": b"[1, 2]\n"}[how])
    return path.read_bytes()


def report_page(trained: Path) -> str:
    """The report's text: it shows what it can, and says on the page why a blend's section is missing."""
    page = trained / "page.html"
    assert main(["report", "-c", "demo", "-o", str(page)]) == 0
    return html.unescape(page.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("how", ["cut", "list"])
def test_report_and_train_name_a_damaged_run_json(trained: Path, capsys, how: str) -> None:
    run = trained / "competition" / "demo" / "runs" / "cnn_small"
    damaged = damage(run / "run.json", how)
    page = report_page(trained)
    assert f"{run / 'run.json'}: damaged" in page and f"delete {run} and train it again" in page
    err = refused(capsys, *tiny_args("train"))
    assert f"{run / 'run.json'}: damaged" in err and f"delete {run} to start over" in err
    assert (run / "run.json").read_bytes() == damaged and (run / "fold0" / "best.pt").is_file()


@pytest.mark.slow
def test_a_damaged_metrics_json_is_named_and_a_train_rerun_writes_it_again(trained: Path) -> None:
    run = trained / "competition" / "demo" / "runs" / "cnn_small"
    want = (run / "metrics.json").read_bytes()
    damage(run / "metrics.json", "cut")
    page = report_page(trained)
    assert f"{run / 'metrics.json'}: damaged, not valid JSON" in page and "run ./run.sh train again" in page
    # what the message says to do: every fold is done, the file comes back
    assert main(tiny_args("train")) == 0
    assert (run / "metrics.json").read_bytes() == want


@pytest.mark.slow
def test_train_names_a_damaged_done_json(trained: Path, capsys) -> None:
    done = trained / "competition" / "demo" / "runs" / "cnn_small" / "fold1" / "done.json"
    damaged = damage(done, "cut")
    err = refused(capsys, *tiny_args("train"))
    assert f"{done}: damaged, not valid JSON" in err and f"delete the fold folder {done.parent}" in err
    assert done.read_bytes() == damaged
    shutil.rmtree(done.parent)  # what the message says to do
    assert main(tiny_args("train")) == 0 and (done.parent / "done.json").is_file()
