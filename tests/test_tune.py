"""``tune``: the search space is checked against the experiment schema; the pruner stops a clearly bad
trial through the epoch hook; a killed trial is run again from its checkpoint; a tiny search on the
demo writes an experiment YAML the real loader reads back as the best trial's config, and a rerun
(after a SIGKILL too) continues the same study without repeating finished trials."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from audiotag.cli.main import main
from audiotag.config.files import configs_root, parse_override
from audiotag.core.errors import ConfigError
from audiotag.runs.folder import result_settings
from audiotag.stages.tune import FIXED_KEYS
from audiotag.train.experiment import load_experiment
from audiotag.train.hooks import EpochResult, replay_history
from audiotag.train.tune_config import (
    TuneConfig,
    check_space,
    load_tune_config,
    param_override,
    tune_config_path,
)
from audiotag.train.tune_study import PruningReporter, open_study, retry_interrupted, run_study
from tests.conftest import PYTHON, TINY_DEMO, subprocess_env

CNN_SMALL = configs_root() / "experiments" / "demo" / "cnn_small.yaml"


def load_cnn_small(overrides: list[str]) -> object:
    return load_experiment(CNN_SMALL, overrides)


def space(entries: dict) -> dict:
    return TuneConfig.model_validate({"space": entries}).space


# --------------------------------------------------------------------------- the space


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (
            {"train.lrr": {"type": "float", "low": 1e-4, "high": 1e-2}},
            ["'train.lrr'", "no such setting", " lr,"],
        ),
        ({"model.widthh": {"type": "int", "low": 1, "high": 4}}, ["'model.widthh'", "dropout", "channels"]),
        ({"train.lr": {"type": "float", "low": 0.0, "high": 1e-2}}, ["'train.lr'", "0.0", "greater than 0"]),
        ({"train.epochs": {"type": "float", "low": 2, "high": 8}}, ["'train.epochs'", "use type: int"]),
        ({"train.specaugment": {"type": "categorical", "choices": [1]}}, ["is a section", "time_masks"]),
        ({"train.pad_mode": {"type": "categorical", "choices": ["wrap", "mirror"]}}, ["'mirror' is refused"]),
        ({"train.folds": {"type": "categorical", "choices": [0, 1]}}, ["train.folds is not searched"]),
        ({"competition.n_folds": {"type": "int", "low": 3, "high": 5}}, ["competition is not searched"]),
    ],
)
def test_space_errors_name_the_key(entry: dict, expected: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        check_space(space(entry), load_cnn_small, "tune.yaml", FIXED_KEYS)
    for text in expected:
        assert text in str(err.value), str(err.value)


def test_the_shipped_tune_configs_fit_the_default_demo_experiment() -> None:
    for name in ("default", "quick"):
        cfg = load_tune_config(tune_config_path(name))
        check_space(cfg.space, load_cnn_small, name, FIXED_KEYS)  # no error
    small = load_tune_config(tune_config_path("small_data"))
    base = configs_root() / "experiments" / f"{small.experiment}.yaml"
    check_space(small.space, lambda overrides: load_experiment(base, overrides), "small_data", FIXED_KEYS)


@pytest.mark.parametrize(
    ("dist", "expected"),
    [
        ({"type": "float", "low": 1.0, "high": 0.1}, "low 1.0 is above high 0.1"),
        ({"type": "float", "low": 0.0, "high": 0.1, "log": True}, "log: true needs low > 0"),
        ({"type": "int", "low": 0, "high": 4, "log": True}, "log: true needs low >= 1"),
        ({"type": "normal", "low": 0, "high": 1}, "space.train.lr"),
    ],
)
def test_bad_distributions_are_refused_with_the_key(tmp_path: Path, dist: dict, expected: str) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(json.dumps({"space": {"train.lr": dist}}))
    with pytest.raises(ConfigError) as err:
        load_tune_config(path)
    assert expected in str(err.value) and "train.lr" in str(err.value)


@pytest.mark.parametrize("value", [1e-05, 3.0e-4, 0.5, -2.5e-7, 1e20, 3, 0, True, False, None, "wrap"])
def test_param_override_reads_back_as_the_same_value(value: object) -> None:
    path, parsed = parse_override(param_override("train.lr", value))
    assert path == ["train", "lr"] and parsed == value and type(parsed) is type(value)


def test_replay_history_reports_every_epoch_with_the_running_best() -> None:
    seen: list[EpochResult] = []
    history = [{"epoch": 0, "score": 0.3}, {"epoch": 1, "score": 0.2}, {"epoch": 2, "score": 0.5}]
    replay_history(seen.append, 4, 10, history)
    assert [(r.fold, r.epoch, r.epochs, r.score, r.best_score) for r in seen] == [
        (4, 0, 10, 0.3, 0.3),
        (4, 1, 10, 0.2, 0.3),
        (4, 2, 10, 0.5, 0.5),
    ]
    replay_history(None, 0, 10, history)  # no hook: nothing to do


# --------------------------------------------------------------------------- the study


def fake_training(curves: dict[float, list[float]], epochs_run: dict[int, int]):
    """A ``train_trial`` that "trains" one fold by reporting the curve of its lr through the hook."""

    def train_trial(overrides: list[str], run_dir: Path, hook) -> float:
        curve = curves[next(parse_override(o)[1] for o in overrides if o.startswith("train.lr="))]
        trial = int(run_dir.name.split("-")[1])
        best = float("-inf")
        for epoch, score in enumerate(curve):
            epochs_run[trial] = epoch + 1
            best = max(best, score)
            hook(EpochResult(0, epoch, len(curve), score, best))
        return best

    return train_trial


# median: below the median at its first epoch; ASHA (min_resource 1): its first rung ends at step 1
@pytest.mark.parametrize(("pruner", "stopped_after"), [("median", 1), ("successive_halving", 2)])
def test_the_pruner_stops_a_clearly_bad_trial_through_the_epoch_hook(
    tmp_path: Path, pruner: str, stopped_after: int
) -> None:
    good, better, bad = 1e-3, 3e-3, 1e-6
    curves = {
        good: [0.50, 0.60, 0.70, 0.75, 0.80, 0.82],
        better: [0.55, 0.65, 0.72, 0.78, 0.81, 0.85],
        bad: [0.02, 0.03, 0.03, 0.04, 0.04, 0.05],
    }
    cfg = TuneConfig.model_validate(
        {
            "n_trials": 3,
            "pruner": {"kind": pruner, "startup_trials": 2, "warmup_epochs": 0, "min_epochs": 1},
            "space": {"train.lr": {"type": "categorical", "choices": [good, better, bad]}},
        }
    )
    study = open_study(tmp_path, "fake", cfg)
    for lr in (good, better, bad):  # a fixed order: two good trials, then the bad one
        study.enqueue_trial({"train.lr": lr})
    epochs_run: dict[int, int] = {}
    assert run_study(study, cfg, tmp_path, fake_training(curves, epochs_run), stride=6) == 3
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED]
    assert [t.value for t in study.trials[:2]] == [0.82, 0.85]
    assert epochs_run[0] == epochs_run[1] == 6 and epochs_run[2] == stopped_after  # of 6
    assert study.trials[2].intermediate_values == dict(enumerate([0.02, 0.03][:stopped_after]))


class AlwaysPrune:
    """A stand-in for an Optuna trial whose pruner always says stop."""

    def __init__(self) -> None:
        self.reported: dict[int, float] = {}

    def report(self, value: float, step: int) -> None:
        self.reported[step] = value

    def should_prune(self) -> bool:
        return True


def test_the_reporter_numbers_steps_by_fold_and_never_prunes_a_trained_trial() -> None:
    trial = AlwaysPrune()
    reporter = PruningReporter(trial, folds=[3, 1], stride=10)  # type: ignore[arg-type]
    with pytest.raises(optuna.TrialPruned):
        reporter(EpochResult(fold=3, epoch=7, epochs=8, score=0.2, best_score=0.4))  # a fold remains
    with pytest.raises(optuna.TrialPruned):
        reporter(EpochResult(fold=1, epoch=2, epochs=8, score=0.1, best_score=0.3))
    reporter(EpochResult(fold=1, epoch=7, epochs=8, score=0.5, best_score=0.5))  # all trained: kept
    assert trial.reported == {7: 0.4, 12: 0.3, 17: 0.5}


def test_a_trial_left_running_is_marked_failed_and_enqueued_again_once(tmp_path: Path) -> None:
    cfg = TuneConfig.model_validate(
        {"max_retries": 1, "space": {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2}}}
    )
    study = open_study(tmp_path, "s", cfg)
    done = study.ask({"train.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2)})
    study.tell(done, 0.5)
    dead = study.ask({"train.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2)})
    dead.set_user_attr("run_dir", "trial-0001")  # as the process that was killed left it
    assert retry_interrupted(study, cfg.max_retries) == [1]
    assert retry_interrupted(study, cfg.max_retries) == []  # already enqueued: not twice
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]
    again = trials[2]
    assert again.user_attrs == {"run_dir": "trial-0001", "retry_of": 1, "retries": 1}
    # the retry starts with the same parameters, and is killed too: past max_retries, only marked failed
    retry = study.ask()
    assert retry.number == 2 and retry.user_attrs["retries"] == 1
    assert retry.suggest_float("train.lr", 1e-4, 1e-2) == dead.params["train.lr"]
    assert retry_interrupted(study, cfg.max_retries) == []
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE, *[TrialState.FAIL] * 2]


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_continued_study_does_not_draw_its_first_trials_again(tmp_path: Path, sampler: str) -> None:
    cfg = TuneConfig.model_validate(
        {
            "n_trials": 2,
            "sampler": {"kind": sampler, "seed": 0, "startup_trials": 10},
            "space": {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        }
    )
    seen: list[list[str]] = []

    def constant(overrides: list[str], run_dir: Path, hook) -> float:
        seen.append(overrides)
        return 0.5

    for n_trials in (2, 4):  # two calls, as two processes would run them
        assert run_study(open_study(tmp_path, "s", cfg), cfg, tmp_path, constant, 1, n_trials) == 2
    trials = open_study(tmp_path, "s", cfg).trials
    assert trials[0].user_attrs == {"baseline": True, "run_dir": "trial-0000"} and trials[0].params == {}
    assert seen[0] == []  # the baseline: the base experiment unchanged
    values = [t.params["train.lr"] for t in trials[1:]]
    assert len(values) == len(set(values)) == 3


def test_the_baseline_trial_can_be_left_out_and_is_retried_as_a_baseline(tmp_path: Path) -> None:
    space = {"train.lr": {"type": "categorical", "choices": [1e-3, 2e-3]}}
    cfg = TuneConfig.model_validate({"n_trials": 1, "baseline_first": False, "space": space})
    assert run_study(open_study(tmp_path / "a", "s", cfg), cfg, tmp_path / "a", lambda o, r, h: 0.5, 1) == 1
    assert "train.lr" in open_study(tmp_path / "a", "s", cfg).trials[0].params

    cfg = TuneConfig.model_validate({"n_trials": 2, "space": space})
    study = open_study(tmp_path / "b", "s", cfg)

    def killed(overrides: list[str], run_dir: Path, hook) -> float:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_study(study, cfg, tmp_path / "b", killed, 1)
    seen: list[list[str]] = []
    again = open_study(tmp_path / "b", "s", cfg)
    run_study(again, cfg, tmp_path / "b", lambda o, r, h: seen.append(o) or 0.5, 1)
    assert seen[0] == []  # the retried baseline runs the base experiment again, not a drawn trial
    trials = open_study(tmp_path / "b", "s", cfg).trials
    assert trials[1].user_attrs["baseline"] and trials[1].user_attrs["retry_of"] == 0


def test_a_trial_stopped_by_ctrl_c_is_run_again_from_its_folder(tmp_path: Path) -> None:
    cfg = TuneConfig.model_validate(
        {"n_trials": 2, "space": {"train.lr": {"type": "categorical", "choices": [1e-3, 2e-3]}}}
    )
    study = open_study(tmp_path, "s", cfg)
    (tmp_path / "trials" / "trial-0000").mkdir(parents=True)
    (tmp_path / "trials" / "trial-0000" / "last.pt").write_bytes(b"checkpoint")
    seen: list[tuple[str, list[str]]] = []

    def interrupted(overrides: list[str], run_dir: Path, hook) -> float:
        seen.append((run_dir.name, overrides))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_study(study, cfg, tmp_path, interrupted, stride=2)
    assert (tmp_path / "trials" / "trial-0000" / "last.pt").is_file()  # kept for the resume

    def finishing(overrides: list[str], run_dir: Path, hook) -> float:
        seen.append((run_dir.name, overrides))
        return 0.5

    assert run_study(study, cfg, tmp_path, finishing, stride=2) == 2
    assert seen[1] == seen[0]  # the same parameters, in the same run folder
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert study.trials[1].user_attrs["retry_of"] == 0
    assert not (tmp_path / "trials" / "trial-0000" / "last.pt").exists()  # finished: weights dropped


# --------------------------------------------------------------------------- end to end

TUNE_YAML = """\
folds: [0]
n_trials: 2
sampler: {kind: tpe, seed: 3, startup_trials: 2}
pruner: {kind: median, startup_trials: 1, warmup_epochs: 0}
space:
  train.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
  model.dropout: {type: float, low: 0.0, high: 0.5}
"""


def tune_args(config: Path, *extra: str) -> list[str]:
    args = ["tune", "-c", "demo", "--workers", "1", "--config", str(config)]
    for item in [*TINY_DEMO, "train.threads=1"]:
        args += ["--set", item]
    return [*args, *extra]  # after the tiny settings: an extra --set wins


def load_study(tune_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name=tune_dir.name, storage=f"sqlite:///{tune_dir / 'study.sqlite3'}")


@pytest.mark.slow
def test_tiny_tune_writes_a_loadable_yaml_and_a_rerun_continues(workspace: Path) -> None:
    config = workspace / "tiny.yaml"
    config.write_text(TUNE_YAML)
    assert main(tune_args(config)) == 0
    tune_dir = workspace / "competition" / "demo" / "tune" / "cnn_small"
    study = load_study(tune_dir)
    states = [t.state for t in study.trials]
    assert states[0] == TrialState.COMPLETE and set(states) <= {TrialState.COMPLETE, TrialState.PRUNED}
    for trial in study.trials:  # the real loop reported every epoch through the hook
        done_path = tune_dir / "trials" / f"trial-{trial.number:04d}" / "fold0" / "done.json"
        steps = sorted(trial.intermediate_values)
        if trial.state == TrialState.PRUNED:  # stopped mid-fold by the pruner: the fold never finished
            assert steps == list(range(len(steps))) and len(steps) in (1, 2) and not done_path.exists()
            continue
        done = json.loads(done_path.read_text())
        assert steps == [0, 1] and trial.value == pytest.approx(done["score"])
        assert trial.intermediate_values[1] == pytest.approx(max(h["score"] for h in done["history"]))
    assert not list((tune_dir / "trials").rglob("*.pt"))  # keep_weights: false
    assert not (workspace / "competition" / "demo" / "runs").exists()  # trials stay out of the leaderboard
    for png in ("history.png", "epochs.png"):
        assert (tune_dir / png).read_bytes()[:4] == b"\x89PNG"

    best = max((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    tuned = load_experiment(tune_dir / "cnn_small_tuned.yaml")
    assert tuned.name == "cnn_small_tuned"
    if best.params:  # else the baseline won: the tuned file is the base experiment (checked below)
        assert tuned.train.lr == best.params["train.lr"]
        assert tuned.model.dropout == best.params["model.dropout"]
    trial_cfg = load_experiment(tune_dir / "trials" / f"trial-{best.number:04d}" / "config.yaml")
    got, want = result_settings(tuned), result_settings(trial_cfg)
    assert {k: v for k, v in got.items() if k != "name"} == {k: v for k, v in want.items() if k != "name"}

    assert main(tune_args(config, "--trials", "3")) == 0  # one more trial, the first two kept
    study = load_study(tune_dir)
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
    assert main(tune_args(config, "--trials", "3")) == 0  # reached: nothing to run
    assert len(load_study(tune_dir).trials) == 3
    assert main(tune_args(config, "--set", "train.epochs=3")) == 2  # another base: refused


def wait_for(
    proc: subprocess.Popen[bytes], log: Path, text: str, after: int = 0, timeout: float = 300
) -> int:
    """The log's length once ``text`` appears in it past position ``after``."""
    deadline = time.monotonic() + timeout
    while True:
        content = log.read_text(errors="replace")
        found = content.find(text, after)
        if found >= 0:
            return found + len(text)
        assert proc.poll() is None, f"exited ({proc.returncode}) before {text!r}:\n{content[-3000:]}"
        assert time.monotonic() < deadline, f"{text!r} never logged:\n{content[-3000:]}"
        time.sleep(0.01)


@pytest.mark.soak
@pytest.mark.slow
def test_sigkill_mid_trial_then_rerun_keeps_finished_trials_and_resumes_the_killed_one(
    tmp_path: Path,
) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(TUNE_YAML.replace("n_trials: 2", "n_trials: 3").replace("kind: median", "kind: none"))
    command = [PYTHON, "-m", "audiotag", *tune_args(config), "--quiet"]
    env = subprocess_env(tmp_path)
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    with first.open("wb") as err:
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        at = wait_for(proc, first, "tune: trial 2/3 (#1)")
        wait_for(proc, first, "fold 0 epoch 1/2", after=at)  # last.pt of epoch 1 is written before this line
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    tune_dir = tmp_path / "competition" / "demo" / "tune" / "cnn_small"
    trial0 = tune_dir / "trials" / "trial-0000" / "fold0" / "done.json"
    before = trial0.read_bytes()
    killed = load_study(tune_dir).trials
    assert [t.state for t in killed] == [TrialState.COMPLETE, TrialState.RUNNING]
    assert (tune_dir / "trials" / "trial-0001" / "fold0" / "last.pt").is_file()

    with second.open("wb") as err:
        rc = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=err, timeout=600).returncode
    text = second.read_text(errors="replace")
    assert rc == 0, text[-3000:]
    assert "trial-0001/fold0/last.pt at epoch 2" in text  # the killed trial resumed, not restarted
    trials = load_study(tune_dir).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, *[TrialState.COMPLETE] * 2]
    retry = trials[2]
    assert retry.params == killed[1].params and retry.user_attrs["retry_of"] == 1
    assert retry.user_attrs["run_dir"] == "trial-0001" and sorted(retry.intermediate_values) == [0, 1]
    assert trials[3].user_attrs["run_dir"] == "trial-0003"
    assert trial0.read_bytes() == before  # the finished trial was not trained again
    assert "(#0)" not in text  # trial #0 was not started again
    assert (tune_dir / "cnn_small_tuned.yaml").is_file()
