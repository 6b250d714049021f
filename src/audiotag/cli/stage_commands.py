"""The pipeline stages' runners (prepare, train, ensemble): what one ``audiotag STAGE...`` call shares
(``Pipeline``), each stage's call into its floor, and the tables it prints."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from audiotag.config.schema import EnsembleConfig
    from audiotag.train.distributed import DistContext
    from audiotag.train.experiment import ExperimentConfig

log = logging.getLogger("audiotag")


def print_run(console: Console, result) -> None:
    from rich.table import Table

    table = Table(title=f"run {result.name}: CV {result.metric} per fold")
    table.add_column("fold", justify="right")
    table.add_column(result.metric, justify="right")
    for fold, score in sorted(result.fold_scores.items()):
        table.add_row(str(fold), f"{score:.4f}")
    table.add_row("mean ± std", f"{result.mean:.4f} ± {result.std:.4f}", style="bold")
    console.print(table)
    if result.test_score is not None:
        n = len(result.fold_scores)
        console.print(
            f"test {result.metric} of the {n}-fold mean (hidden test labels): {result.test_score:.4f}"
        )


def print_ensemble(console: Console, result) -> None:
    from rich.table import Table

    table = Table(title=f"ensemble: CV {result.metric}")
    table.add_column("member / blend")
    folds = sorted(result.fold_scores)
    for fold in folds:
        table.add_column(f"fold {fold}", justify="right")
    table.add_column("mean ± std", justify="right")
    table.add_column("note")
    for line in result.lines:
        table.add_row(
            line.name,
            *[f"{line.fold_scores[f]:.4f}" for f in folds],
            f"{line.mean:.4f} ± {line.std:.4f}",
            line.note,
            style="bold" if "submitted" in line.note else None,
        )
    console.print(table)
    left_out = {name: n for name, n in result.oof_left_out.items() if n}
    if left_out:
        console.print(
            "[yellow]every score above is on the OOF clips all members share[/yellow] (left out: "
            + ", ".join(f"{name} {n}" for name, n in left_out.items())
            + "); a run's own metrics.json scores all of its clips"
        )
    if result.partial_folds is not None:
        console.print(
            f"[yellow]partial blend: folds {result.partial_folds} only[/yellow], the folds every member "
            "has finished; train the others for the full blend (its CV and test predictions cover more)"
        )
    console.print("weights: " + ", ".join(f"{name} {w:.3f}" for name, w in result.weights.items()))
    console.print(
        f"submitted {result.submitted}: CV {result.mean:.4f} ± {result.std:.4f}, "
        f"{result.gain:+.4f} over the best member ({result.best_member})"
    )
    console.print(f"submission: {result.submission or 'none (the competition has no test set)'}")
    if result.test_score is not None:
        console.print(f"test {result.metric} (hidden test labels): [bold]{result.test_score:.4f}[/bold]")


@dataclass
class Pipeline:
    """What the stages of one ``audiotag STAGE...`` call share."""

    args: argparse.Namespace
    exp: ExperimentConfig | None  # the experiment a stage runs now
    ctx: DistContext
    console: Console
    main_exp: ExperimentConfig | None = None  # --config's or the default one; --run-name names its run


def run_prepare(pipe: Pipeline) -> None:
    from audiotag.runs.prepare import prepare

    assert pipe.exp is not None
    if pipe.ctx.is_main:
        args = pipe.args
        prepare(pipe.exp.competition, pipe.exp.features, workers=args.workers, cache_device=args.cache_device)
    pipe.ctx.barrier()


def run_train(pipe: Pipeline) -> None:
    from audiotag.stages.train import train_experiment

    assert pipe.exp is not None
    args = pipe.args
    run_name = args.run_name if pipe.exp is pipe.main_exp else None
    if args.quick:
        from audiotag.cli.configs import quick_name

        run_name = quick_name(args, run_name or pipe.exp.name)
    result = train_experiment(pipe.exp, run_name=run_name, workers=args.workers, ctx=pipe.ctx)
    if pipe.ctx.is_main:
        print_run(pipe.console, result)


def run_ensemble_stage(pipe: Pipeline) -> None:
    from audiotag.cli.configs import ensemble_config
    from audiotag.ensemble.runner import run_ensemble

    if pipe.ctx.is_main:
        cfg = ensemble_config(pipe.args, pipe.exp)
        print_ensemble(pipe.console, run_ensemble(cfg))
        report_beside_submission(pipe.console, cfg)


def report_beside_submission(console: Console, cfg: EnsembleConfig) -> None:
    """The HTML report, written by the ensemble stage as ``<ensemble>.report.html`` beside the CSV; a
    report that cannot be written is a warning, not a failed stage (the submission is already there)."""
    from audiotag.stages.report import write_report

    try:
        path = write_report(cfg.competition, ensemble=cfg.name)
    except Exception as exc:  # the report is an extra: any failure of it leaves the stage done
        log.warning(
            "the HTML report was not written: %s: %s (try ./run.sh report -c %s)",
            type(exc).__name__,
            exc,
            cfg.competition.name,
        )
        return
    console.print(f"report: {path}", soft_wrap=True)
