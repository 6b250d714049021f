"""The search itself, on Optuna: a study in SQLite, trials drawn from the declared space, a pruner
fed by each epoch's validation score, and trials killed mid-way run again from their checkpoint.

``run_study`` asks Optuna for trials and hands each one's overrides, run folder and pruning hook to
``train_trial`` (the tune stage trains the experiment there and returns the fold-mean score). The
pruning hook is a plain ``train/hooks.py`` observer: the training loop never imports Optuna.

Resuming. One process owns a study at a time (the stage holds a file lock), so a trial that is still
RUNNING in the storage when a process starts was left by a process that died (SIGKILL, power loss):
:func:`retry_interrupted` marks it FAIL and enqueues its parameters again, with the same run folder,
so the new trial resumes the old one's ``last.pt`` and replays its recorded epochs to the pruner. A
trial stopped by Ctrl-C is FAIL with ``interrupted`` set, and is retried the same way. Finished
trials (COMPLETE, PRUNED) are never run again; ``n_trials`` counts them across all calls.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from audiotag.core.errors import AudiotagError
from audiotag.train.hooks import EpochHook, EpochResult
from audiotag.train.tune_config import (
    Categorical,
    Distribution,
    FloatRange,
    IntRange,
    PrunerConfig,
    SamplerConfig,
    TuneConfig,
    param_override,
)

log = logging.getLogger(__name__)

STORAGE_FILE = "study.sqlite3"
TRIALS_DIR = "trials"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
RUN_DIR, RETRY_OF, RETRIES, INTERRUPTED = "run_dir", "retry_of", "retries", "interrupted"  # user attrs
BASELINE = "baseline"  # user attr: the trial runs the base experiment as it is (no value of the space)

# overrides of the trial, its run folder, the pruning hook -> the value to maximise
TrainTrial = Callable[[list[str], Path, EpochHook], float]


def quiet_optuna() -> None:
    """Optuna's messages through our log handler, warnings and above (we log each trial ourselves)."""
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def make_sampler(cfg: SamplerConfig, trials_so_far: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler, seeded with ``seed + trials_so_far``: a study continued by a new process does not
    draw its first trials' random parameters again (a sampler's random state is not stored)."""
    seed = cfg.seed + trials_so_far
    if cfg.kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=cfg.startup_trials)


def make_pruner(cfg: PrunerConfig) -> optuna.pruners.BasePruner:
    if cfg.kind == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=cfg.startup_trials, n_warmup_steps=cfg.warmup_epochs
        )
    if cfg.kind == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=cfg.min_epochs, reduction_factor=cfg.reduction_factor
        )
    return optuna.pruners.NopPruner()


def open_study(tune_dir: Path, name: str, cfg: TuneConfig) -> optuna.Study:
    """The study ``name`` in ``tune_dir/study.sqlite3``, created on first use, else loaded as it is."""
    quiet_optuna()
    tune_dir.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name=name,
        storage=f"sqlite:///{tune_dir / STORAGE_FILE}",
        load_if_exists=True,
        direction="maximize",
        pruner=make_pruner(cfg.pruner),
    )
    study.sampler = make_sampler(cfg.sampler, len(study.get_trials(deepcopy=False)))
    return study


def enqueue_baseline(study: optuna.Study) -> bool:
    """A new study's first trial: the base experiment as it is (its own or ``train.auto``'s values),
    so the best trial is never worse than the base on the tuned folds. False when the study has
    trials already."""
    if study.get_trials(deepcopy=False):
        return False
    study.enqueue_trial({}, user_attrs={BASELINE: True})
    return True


def trial_dir_name(number: int) -> str:
    return f"trial-{number:04d}"


def retry_interrupted(study: optuna.Study, max_retries: int) -> list[int]:
    """Trials a dead (or interrupted) process left unfinished: each marked FAIL and, within
    ``max_retries``, enqueued again with the same parameters and run folder. The trial numbers
    enqueued again. Safe to repeat: a trial already enqueued again is only marked FAIL."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get(RETRY_OF) for t in trials}
    again = []
    for trial in trials:
        stale = trial.state == TrialState.RUNNING
        interrupted = trial.state == TrialState.FAIL and trial.user_attrs.get(INTERRUPTED)
        if not (stale or interrupted):
            continue
        retries = int(trial.user_attrs.get(RETRIES, 0))
        run_dir = trial.user_attrs.get(RUN_DIR, trial_dir_name(trial.number))
        if trial.number in retried:
            pass
        elif retries >= max_retries:
            log.warning(
                "tune: trial #%d was stopped mid-way %d times; not running it again (max_retries %d)",
                trial.number,
                retries + 1,
                max_retries,
            )
        else:
            attrs = {RUN_DIR: run_dir, RETRY_OF: trial.number, RETRIES: retries + 1}
            if trial.user_attrs.get(BASELINE):
                attrs[BASELINE] = True
            study.enqueue_trial(dict(trial.params), user_attrs=attrs)  # before the FAIL: a kill between
            again.append(trial.number)  # the two leaves it RUNNING, and the next start finds it retried
            log.info("tune: trial #%d was stopped mid-way; running it again from %s", trial.number, run_dir)
        if stale:
            study.tell(trial.number, state=TrialState.FAIL)
    return again


def suggest(trial: optuna.Trial, key: str, dist: Distribution) -> Any:
    if isinstance(dist, FloatRange):
        return trial.suggest_float(key, dist.low, dist.high, log=dist.log, step=dist.step)
    if isinstance(dist, IntRange):
        return trial.suggest_int(key, dist.low, dist.high, log=dist.log, step=dist.step)
    assert isinstance(dist, Categorical)
    return trial.suggest_categorical(key, dist.choices)


@dataclass
class PruningReporter:
    """The epoch hook of one trial: reports the fold's best score so far as the intermediate value at
    step ``position of the fold * stride + epoch`` (``stride`` >= any trial's epochs, so a step means
    the same fold and epoch in every trial), and stops the trial when the pruner says so; never after
    the last epoch of the last fold, when stopping saves nothing and the trial's score is known."""

    trial: optuna.Trial
    folds: list[int]
    stride: int

    def __call__(self, result: EpochResult) -> None:
        step = self.folds.index(result.fold) * self.stride + result.epoch
        self.trial.report(result.best_score, step)
        trained = result.fold == self.folds[-1] and result.epoch + 1 >= result.epochs
        if not trained and self.trial.should_prune():
            raise optuna.TrialPruned(
                f"fold {result.fold} epoch {result.epoch + 1}: best {result.best_score:.4f}, behind others"
            )


def finished(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=FINISHED)


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max(complete, key=lambda t: t.value if t.value is not None else -math.inf) if complete else None


def describe(params: dict[str, Any]) -> str:
    if not params:
        return "the base experiment as it is"
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def drop_weights(run_dir: Path) -> None:
    """A finished trial's checkpoints (its scores, predictions and done.json stay)."""
    for path in run_dir.rglob("*.pt"):
        path.unlink(missing_ok=True)


def run_study(
    study: optuna.Study,
    cfg: TuneConfig,
    tune_dir: Path,
    train_trial: TrainTrial,
    stride: int,
    n_trials: int | None = None,
) -> int:
    """Run trials until the study has ``n_trials`` (default ``cfg.n_trials``) finished ones, or the
    timeout; the number of trials this call ran. Trials that raise an AudiotagError are FAIL and the
    search goes on; any other error stops it."""
    target = n_trials or cfg.n_trials
    if cfg.baseline_first and enqueue_baseline(study):
        log.info("tune: trial #0 is the base experiment as it is (baseline_first)")
    retry_interrupted(study, cfg.max_retries)
    remaining = target - len(finished(study))
    if remaining <= 0:
        log.info("tune: the study has %d finished trials already (n_trials %d)", len(finished(study)), target)
        return 0

    def objective(trial: optuna.Trial) -> float:
        baseline = bool(trial.user_attrs.get(BASELINE))
        params = {} if baseline else {key: suggest(trial, key, dist) for key, dist in cfg.space.items()}
        run_name = trial.user_attrs.get(RUN_DIR) or trial_dir_name(trial.number)
        trial.set_user_attr(RUN_DIR, run_name)
        run_dir = tune_dir / TRIALS_DIR / run_name
        best = best_trial(study)
        log.info(
            "tune: trial %d/%d (#%d%s): %s; best so far %s",
            len(finished(study)) + 1,
            target,
            trial.number,
            f", again #{trial.user_attrs[RETRY_OF]}" if RETRY_OF in trial.user_attrs else "",
            describe(params),
            f"#{best.number} {best.value:.4f}" if best else "none",
        )
        overrides = [param_override(key, value) for key, value in params.items()]
        try:
            value = train_trial(overrides, run_dir, PruningReporter(trial, cfg.folds, stride))
        except KeyboardInterrupt:
            trial.set_user_attr(INTERRUPTED, True)  # retried, from its checkpoint, at the next start
            raise
        except BaseException:
            if not cfg.keep_weights:
                drop_weights(run_dir)
            raise
        if not cfg.keep_weights:
            drop_weights(run_dir)
        if not math.isfinite(value):
            raise AudiotagError(f"trial #{trial.number}: score {value} (see {run_dir})")
        return value

    ran = []

    def report(study: optuna.Study, trial: FrozenTrial) -> None:
        ran.append(trial.number)
        best = best_trial(study)
        state = trial.state.name.lower()
        if trial.state == TrialState.COMPLETE:
            state = f"{trial.value:.4f}"
        elif trial.state == TrialState.PRUNED and trial.last_step is not None:
            state = f"pruned at step {trial.last_step} (epoch {trial.last_step % stride + 1})"
        log.info(
            "tune: trial #%d %s (%d/%d finished); best #%s %s",
            trial.number,
            state,
            len(finished(study)),
            target,
            best.number if best else "-",
            f"{best.value:.4f} ({describe(best.params)})" if best else "none",
        )

    timeout = cfg.timeout_minutes * 60 if cfg.timeout_minutes else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.optimize(
            objective, n_trials=remaining, timeout=timeout, catch=(AudiotagError,), callbacks=[report]
        )
    return len(ran)


def trial_counts(study: optuna.Study) -> dict[str, int]:
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name.lower()] = counts.get(trial.state.name.lower(), 0) + 1
    return counts
