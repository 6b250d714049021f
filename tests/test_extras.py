"""Optional packages (core/extras.py): imported when a setting needs them, installed on first use
under run.sh, else refused naming the command that installs them."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from audiotag.core.errors import ConfigError
from audiotag.core.extras import RUN_SH, import_extra
from audiotag.train.experiment import load_experiment
from tests.conftest import REPO

MODULE = "audiotag_fake_extra_module"


@pytest.fixture
def no_fake_module(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.delenv(RUN_SH, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    yield tmp_path
    sys.modules.pop(MODULE, None)


def test_an_installed_module_is_imported() -> None:
    assert import_extra("json", "augment", "train.wave_augment").__name__ == "json"


def test_outside_run_sh_a_missing_extra_names_the_pip_command(no_fake_module: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        import_extra(MODULE, "augment", "train.wave_augment")
    text = str(caught.value)
    assert f"train.wave_augment needs {MODULE}, one of the optional 'augment' packages" in text
    assert f"{sys.executable} -m pip install 'audiotag[augment]'" in text


def test_under_run_sh_the_extra_is_installed_on_first_use(
    no_fake_module: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``run.sh install augment`` (here a script that writes the module where Python looks) runs once."""
    site = no_fake_module / "site"
    log = no_fake_module / "calls.log"
    script = no_fake_module / "run.sh"
    script.write_text(f'echo "$*" >>{log}\nmkdir -p {site}\necho "VALUE = 42" >{site}/{MODULE}.py\n')
    monkeypatch.setenv(RUN_SH, str(script))
    with caplog.at_level(logging.WARNING):
        module = import_extra(MODULE, "augment", "train.wave_augment")
    assert module.VALUE == 42
    assert log.read_text() == "install augment\n"
    assert "installing them now (first use only; ./run.sh install augment)" in caplog.text


def test_under_run_sh_a_failed_install_names_run_sh(no_fake_module: Path, monkeypatch) -> None:
    script = no_fake_module / "run.sh"
    script.write_text("exit 2\n")  # offline, say
    monkeypatch.setenv(RUN_SH, str(script))
    with pytest.raises(ConfigError, match=r"install them with `\./run\.sh install augment`"):
        import_extra(MODULE, "augment", "train.spec_augment_lib")


def test_an_augmentation_setting_without_its_library_is_refused_when_the_config_loads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(RUN_SH, raising=False)
    monkeypatch.setitem(sys.modules, "albumentations", None)  # import albumentations: ImportError
    path = REPO / "configs" / "experiments" / "demo" / "cnn_small.yaml"
    with pytest.raises(ConfigError, match=r"train\.spec_augment_lib needs albumentations"):
        load_experiment(path, ["train.spec_augment_lib=[{name: GaussNoise}]"])
