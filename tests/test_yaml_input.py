"""YAML that data can reach stays data (issue 26, item 4): ``new-competition`` writes what it read from a
folder (CSV headers, file names) as escaped values and one-line comments, and every config is read by
one loader that refuses a key given twice, naming the file, the line and the key."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from audiotag.cli.main import main
from audiotag.config.files import read_yaml
from audiotag.config.schema import load_competition
from audiotag.core.errors import ConfigError

# a CSV header cell that, written as it is, would add keys (and a comment hiding the rest of the line)
HOSTILE = "label\ndata_dir: /etc\nmetric: lwlrap\n#"


def test_a_key_given_twice_is_refused_naming_file_line_and_key(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("name: x\ncompetition: demo\ntrain:\n  epochs: 2\n  lr: 0.1\n  epochs: 50\n")
    with pytest.raises(ConfigError) as exc:
        read_yaml(path)
    assert str(exc.value).startswith(f"{path}: line 6: key 'epochs' is given twice (first on line 4)")


def test_the_cli_refuses_a_repeated_key_in_a_config_and_an_override(workspace: Path, capsys) -> None:
    path = workspace / "ens.yaml"
    path.write_text("competition: demo\nmembers: [cnn_small]\nmethod: mean\nmethod: rank\n")
    assert main(["ensemble", "--config", str(path)]) == 2
    assert f"{path}: line 4: key 'method' is given twice" in capsys.readouterr().err
    assert main(["train", "--set", "train.optimizer={a: 1, a: 2}"]) == 2
    assert "override 'train.optimizer={a: 1, a: 2}': key 'a' is given twice" in capsys.readouterr().err


def test_merge_keys_and_repeated_keys_in_other_mappings_still_load() -> None:
    from audiotag.config.files import load_yaml_text

    data = load_yaml_text("base: &b {lr: 1, epochs: 2}\ntrain:\n  <<: *b\n  lr: 3\nother: {lr: 4}\n")
    assert data == {"base": {"lr": 1, "epochs": 2}, "train": {"lr": 3, "epochs": 2}, "other": {"lr": 4}}


def test_a_csv_header_cannot_write_keys_of_the_guessed_yaml(tmp_path: Path) -> None:
    data = tmp_path / "data"
    rows = []
    for i in range(12):
        (data / "audio").mkdir(parents=True, exist_ok=True)
        (data / "audio" / f"c{i}.wav").write_bytes(b"RIFF....WAVE")
        rows.append([f"c{i}.wav", ["dog", "cat", "bird"][i % 3]])
    pd.DataFrame(rows, columns=["fname", HOSTILE]).to_csv(data / "train.csv", index=False)
    out = tmp_path / "evil.yaml"
    assert main(["new-competition", "evil", "--from", str(data), "-o", str(out)]) == 0
    written = read_yaml(out)  # the loader refuses a repeated key: data_dir/metric were not written twice
    assert written["label_column"] == HOSTILE
    assert written["data_dir"] == str(data.resolve()) and written["metric"] == "accuracy"
    cfg = load_competition(str(out))
    assert cfg.label_column == HOSTILE and cfg.data_dir == str(data.resolve())
    assert all(line.startswith(("#", "name:")) or ": " in line for line in out.read_text().splitlines())
