"""``pretrain --method byola`` end to end on a tiny demo: the encoder loads back through the model
path and gives the pretrained encoder's output; a run SIGKILLed at random moments and resumed ends
with the same weights as an uninterrupted one; settings changes are refused."""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from audiotag.cli.main import main
from audiotag.config.files import configs_root
from audiotag.core.errors import ConfigError
from audiotag.models.byola import ByolaConfig
from audiotag.models.encoder_file import read_encoder_info
from audiotag.models.registry import build_model, check_pretrained, load_pretrained
from audiotag.stages.pretrain import load_pretrain_config, run_pretrain_stage
from audiotag.train.experiment import load_experiment
from tests.conftest import PYTHON, subprocess_env

TINY = [
    "competition.n_folds=2",
    "competition.generator.train_per_class=3",
    "competition.generator.test_per_class=1",
    "competition.generator.max_duration=2.0",
    "model.dim=512",
    "projection_dim=16",
    "projection_hidden=32",
    "augment.memory_units=12",  # smaller than an epoch: the memory wraps
    "batch_size=8",
    "epochs=2",
    "threads=1",
]
PRETRAIN_YAML = configs_root() / "pretrain" / "byola.yaml"


def tiny_cli(extra: list[str]) -> list[str]:
    args = ["pretrain", "--method", "byola", "-c", "demo", "--workers", "1"]
    for item in [*TINY, *extra]:
        args += ["--set", item]
    return args


@pytest.mark.slow
def test_encoder_loads_through_the_model_path_and_matches(workspace: Path) -> None:
    cfg = load_pretrain_config(PRETRAIN_YAML, [*TINY, "clips=[train,test]"], competition="demo")
    result = run_pretrain_stage(cfg, workers=1)
    path = result.encoder_path
    assert path == workspace / "competition" / "demo" / "pretrain" / "byola512" / "encoder.pt"
    assert result.encoder is not None and len(result.history) == 2
    assert not (path.parent / "last.pt").exists()
    info = read_encoder_info(path)
    assert info is not None and info.features == cfg.features and info.model == {"name": "byola", "dim": 512}
    assert info.input_norm.std > 0 and info.pretrain["sources"] == {"demo train+test": 56}
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert set(raw["state_dict"]) == set(result.encoder.state_dict())  # the official key layout
    assert "features.0.weight" in raw["state_dict"] and "fc.3.weight" in raw["state_dict"]

    model_cfg = ByolaConfig(dim=512, pretrained=str(path))
    tagger = build_model(model_cfg, 64, 5, 96)
    report = load_pretrained(tagger, model_cfg, cfg.features)
    assert report is not None
    assert sorted(report.loaded) == sorted(f"backbone.{k}" for k in result.encoder.state_dict())
    assert all(k.startswith("head.") for k in report.missing) and not report.unexpected
    x = torch.randn(3, 150, 64)
    with torch.no_grad():
        torch.testing.assert_close(tagger.backbone.eval()(x), result.encoder.eval()(x), rtol=0, atol=0)

    experiment = workspace / "probe.yaml"
    experiment.write_text(
        f"competition: demo\nfeatures: auto\nmodel: {{name: byola, dim: 512, pretrained: {path}}}\n"
    )
    assert load_experiment(experiment).features == cfg.features  # features: auto reads the recorded front-end

    other_front_end = cfg.features.model_copy(update={"n_fft": 512, "win_length": 512})
    with pytest.raises(ConfigError, match="pretrained on the front-end"):
        check_pretrained(model_cfg, other_front_end)

    again = run_pretrain_stage(cfg, workers=1)  # done: nothing is trained again
    assert again.encoder is None and again.history == result.history
    changed = load_pretrain_config(
        PRETRAIN_YAML, [*TINY, "clips=[train,test]", "lr=1e-3"], competition="demo"
    )
    with pytest.raises(ConfigError, match=re.escape("lr: 0.0003 -> 0.001")):
        run_pretrain_stage(changed, workers=1)


KILLS = 2
STAGE_TIMEOUT = 300
KILL_EXTRA = ["epochs=3", "checkpoint_every_steps=2"]  # mid-epoch checkpoints: more states to resume from


def start(ws: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as err:
        return subprocess.Popen(
            [PYTHON, "-m", "audiotag", *tiny_cli(KILL_EXTRA)],
            env=subprocess_env(ws),
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def wait_for(proc: subprocess.Popen[bytes], log: Path, text: str) -> float | None:
    deadline = time.monotonic() + STAGE_TIMEOUT
    while text not in log.read_text(errors="replace"):
        if proc.poll() is not None:
            return None
        assert time.monotonic() < deadline, f"{log.name}: {text!r} never logged"
        time.sleep(0.005)
    return time.monotonic()


STARTED = "pretrain: byola on"  # logged once the caches and statistics are ready, just before training
DONE = "pretrain: done"


def encoder_state(ws: Path) -> dict[str, torch.Tensor]:
    path = ws / "competition" / "demo" / "pretrain" / "byola512" / "encoder.pt"
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def losses(ws: Path) -> list[float]:
    done = json.loads((ws / "competition" / "demo" / "pretrain" / "byola512" / "done.json").read_text())
    return [h["loss"] for h in done["history"]]


@pytest.mark.soak
@pytest.mark.slow
def test_sigkill_anywhere_then_resume_gives_the_same_weights(tmp_path: Path) -> None:
    clean, killed, logs = tmp_path / "clean", tmp_path / "killed", tmp_path / "logs"
    logs.mkdir()
    proc = start(clean, logs / "clean.log")
    began, ended = wait_for(proc, logs / "clean.log", STARTED), wait_for(proc, logs / "clean.log", DONE)
    assert proc.wait(timeout=STAGE_TIMEOUT) == 0 and began and ended, (logs / "clean.log").read_text()[-3000:]
    work = ended - began

    rng = random.Random(1234)
    epoch_time = work / 3  # each attempt is killed within about one epoch of its (re)start
    outcomes = []
    for i in range(KILLS):
        log = logs / f"killed-{i}.log"
        proc = start(killed, log)
        t0 = wait_for(proc, log, STARTED)
        delay = rng.uniform(0.2, 0.9) * epoch_time
        while t0 is not None and proc.poll() is None and time.monotonic() - t0 < delay:
            time.sleep(0.002)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            outcomes.append(f"killed {delay:.2f}s into training")
        else:
            assert proc.returncode == 0, log.read_text()[-3000:]
            outcomes.append("finished")
    final = logs / "final.log"
    proc = start(killed, final)
    assert proc.wait(timeout=STAGE_TIMEOUT) == 0, final.read_text()[-3000:]
    print("attempts:", outcomes)
    assert outcomes[0].startswith("killed"), outcomes  # the first attempt has 3 epochs to run
    later = [*sorted(logs.glob("killed-*.log"))[1:], final]
    resumed = [line[-60:] for p in later for line in p.read_text().splitlines() if "resuming from" in line]
    print("resumed:", resumed)
    assert resumed, outcomes

    want, got = encoder_state(clean), encoder_state(killed)
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), f"{key} differs after kills {outcomes}"
    assert losses(killed) == losses(clean)


@pytest.mark.slow
def test_cli_pretrain_on_an_audio_folder(workspace: Path) -> None:
    """``--audio DIR`` builds its own cache and writes under ``<workspace>/_pretrain/<name>``."""
    demo = [arg for item in TINY[:4] for arg in ("--set", item)]
    assert main(["prepare", "-c", "demo", "--workers", "1", *demo]) == 0
    audio = workspace / "competition" / "demo" / "raw" / "audio_train"
    recipe = [arg for item in [*TINY[4:], "epochs=1"] for arg in ("--set", item)]
    assert main(["pretrain", "--audio", str(audio), "--name", "folder", "--workers", "1", *recipe]) == 0
    out = workspace / "competition" / "_pretrain" / "folder"
    info = read_encoder_info(out / "encoder.pt")
    assert info is not None and list(info.pretrain["sources"].values()) == [42]
    assert len(list((workspace / "competition" / "_audio").glob("*/cache/byola_16k_64-*/manifest.json"))) == 1


@pytest.mark.soak
@pytest.mark.slow
def test_ddp_two_cpu_processes_pretrain_together(tmp_path: Path) -> None:
    """``--gpus 2`` without CUDA: two gloo processes share each batch; rank 0 alone writes."""
    args = [PYTHON, "-m", "audiotag", *tiny_cli(["epochs=1", "checkpoint_every_steps=2"]), "--gpus", "2"]
    proc = subprocess.run(args, env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = json.loads((tmp_path / "competition" / "demo" / "pretrain" / "byola512" / "done.json").read_text())
    assert done["processes"] == 2 and len(done["history"]) == 1
    assert proc.stdout.count("encoder:") == 1  # only rank 0 reports
    assert read_encoder_info(tmp_path / "competition" / "demo" / "pretrain" / "byola512" / "encoder.pt")
