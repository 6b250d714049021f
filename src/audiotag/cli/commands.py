"""The commands that run alone and report: ``submit``, ``leaderboard``, ``report`` and ``package``
(each a parser and a runner, listed in ``cli.COMMANDS``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from audiotag.cli.args import QUIET_HELP, add_data_dir_argument, data_dir_overrides, plain_name
from audiotag.core.errors import ConfigError
from audiotag.core.log import output_console


def build_submit_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audiotag submit",
        description="Validate a submission CSV against the competition's sample submission, submit it "
        "through the Kaggle API and record it in submissions/log.jsonl (with its CV and members).",
    )
    parser.add_argument("file", type=Path, metavar="FILE", help="e.g. submissions/fsd2018/cnn14.csv")
    parser.add_argument("--message", "-m", help="the description Kaggle shows (needed unless --dry-run)")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="only check FILE against the sample submission (rows, ids, order, columns, values) and say "
        "where it would go; nothing is sent",
    )
    parser.add_argument(
        "--competition", "-c", help="competition name (default: from the report beside FILE, or its folder)"
    )
    parser.add_argument(
        "--slug", type=plain_name, help="Kaggle competition slug (default: the competition's own)"
    )
    add_data_dir_argument(
        parser,
        "; give it when the data was prepared with --data-dir: its sample submission is the one checked",
    )
    parser.add_argument("--verbose", "-v", action="store_true")
    return parser


def run_submit(args: argparse.Namespace) -> None:
    from audiotag.core.paths import submission_log
    from audiotag.kaggle.submit import submit_file

    overrides = [o.removeprefix("competition.") for o in data_dir_overrides(args)]
    if args.dry_run:
        print_dry_run(args, overrides)
        return
    record = submit_file(
        args.file, args.message, competition=args.competition, slug=args.slug, overrides=overrides
    )
    console = output_console()
    cv = f"CV {record.metric} {record.cv:.4f}" if record.cv is not None else "no CV report"
    members = " + ".join(record.members) or "-"
    console.print(
        f"submitted {args.file} to {record.slug}: {record.reply or 'ok'} (ref {record.ref or '?'})",
        soft_wrap=True,
    )
    console.print(
        f"{cv}; members: {members}; sha256 {record.sha256[:16]}…; logged in {submission_log()}",
        soft_wrap=True,
    )


def print_dry_run(args: argparse.Namespace, overrides: list[str]) -> None:
    from audiotag.kaggle.submit import check_submission, kernels_only_note

    checked = check_submission(args.file, competition=args.competition, slug=args.slug, overrides=overrides)
    if checked.slug is None:
        where = "it has no Kaggle slug: pass --slug SLUG to submit it"
    else:
        where = kernels_only_note(checked) or f"`submit` without --dry-run sends it to {checked.slug}"
    output_console().print(
        f"{args.file}: {checked.rows} rows match the {checked.comp.name} sample submission (ids, order, "
        f"columns, values); nothing was sent. {where}",
        soft_wrap=True,
    )


def build_leaderboard_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audiotag leaderboard",
        description="Every run (CV per fold, mean ± std, time, device) and every blend or submission "
        "(CV, public/private LB from the Kaggle API when credentials exist), sorted by CV.",
    )
    parser.add_argument("--competition", "-c", default="demo", help="competition name (default: demo)")
    parser.add_argument("--csv", type=Path, metavar="PATH", help="also write the table as CSV")
    parser.add_argument("--html", type=Path, metavar="PATH", help="also write the table as HTML")
    parser.add_argument(
        "--plots",
        action="store_true",
        help="draw PNGs: learning curves, per-class AP and confusion matrix of each run and blend "
        "(in its folder), CV vs LB (submissions/<competition>/cv_vs_lb.png); --html embeds them",
    )
    parser.add_argument("--no-lb", action="store_true", help="do not ask Kaggle for the LB scores")
    parser.add_argument("--verbose", "-v", action="store_true")
    return parser


def run_leaderboard(args: argparse.Namespace) -> None:
    from audiotag.reports.leaderboard import build_leaderboard, print_leaderboard, write_csv, write_html

    console = output_console(220)
    board = build_leaderboard(args.competition, with_lb=not args.no_lb)
    print_leaderboard(console, board)
    if args.csv:
        console.print(f"csv: {write_csv(board, args.csv)}", soft_wrap=True)
    plots = []
    if args.plots:  # first, so that the HTML page embeds them
        from audiotag.competitions import get_competition
        from audiotag.config.schema import load_competition
        from audiotag.core.paths import submissions_root
        from audiotag.reports.plots import plot_all

        comp = get_competition(load_competition(board.competition))
        plots = plot_all(comp, board.rows, submissions_root() / comp.name)
        for path in plots:
            console.print(f"plot: {path}", soft_wrap=True)
    if args.html:
        console.print(f"html: {write_html(board, args.html, plots)}", soft_wrap=True)


def build_report_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audiotag report",
        description="Write one self-contained HTML page of a competition's results (opens from a file, "
        "no network): the leaderboard (sortable), CV vs LB, each ensemble's CV, weights, nested CV, "
        "per-class AP against its best member and confusion matrix, each run's learning curves and "
        "config against its experiment file, and the clip statistics with the unusable-audio report.",
    )
    parser.add_argument("--competition", "-c", default="demo", help="competition name (default: demo)")
    parser.add_argument(
        "--output", "-o", type=Path, metavar="FILE", help="default: submissions/<competition>/report.html"
    )
    parser.add_argument(
        "--ensemble",
        type=plain_name,
        metavar="NAME",
        help="only this ensemble and its members' runs (leaderboard: all)",
    )
    parser.add_argument(
        "--lb", action="store_true", help="read the public/private LB of logged submissions from Kaggle"
    )
    parser.add_argument("--verbose", "-v", action="store_true")
    parser.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    return parser


def run_report(args: argparse.Namespace) -> None:
    from audiotag.stages.report import write_report

    path = write_report(args.competition, args.output, with_lb=args.lb, ensemble=args.ensemble)
    output_console().print(f"report: {path}", soft_wrap=True)


def build_package_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audiotag package",
        description="Build a folder for a Kaggle offline inference notebook: our code, the members' "
        "best.pt of every fold with their configs (a linear probe: each fold's probe.npz and its frozen "
        "model's weights file), the ensemble config and inference.py.",
    )
    parser.add_argument(
        "out_dir", type=Path, metavar="OUT_DIR", help="folder to write (an earlier package there is replaced)"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="write into OUT_DIR although it holds files the package did not write (they are kept; "
        "without --force such a folder is refused)",
    )
    parser.add_argument(
        "--competition", "-c", help="competition name (default: the ensemble config's, else demo)"
    )
    parser.add_argument(
        "--ensemble",
        metavar="NAME",
        help="ensemble config: a name under configs/ensembles/ or a YAML path (default: the competition's)",
    )
    parser.add_argument(
        "--slug", type=plain_name, help="Kaggle slug of the data folder /kaggle/input/<slug> (default: own)"
    )
    parser.add_argument(
        "--kaggle-id",
        metavar="OWNER/SLUG",
        help="the Kaggle dataset the bundle becomes (dataset-metadata.json); default: the username of "
        "your Kaggle credentials and a slug from the competition and ensemble names",
    )
    parser.add_argument("--verbose", "-v", action="store_true")
    return parser


def run_package(args: argparse.Namespace) -> None:
    from audiotag.cli.configs import default_config, table_competition
    from audiotag.config.files import find_config
    from audiotag.config.schema import load_ensemble
    from audiotag.stages.package import build_package

    if args.ensemble is None:
        path = default_config(args.competition or "demo", "ensemble")
    else:
        path = find_config(args.ensemble, "ensembles")
    table = table_competition(args.competition)  # a kind: table YAML goes into the generic ensemble
    cfg = load_ensemble(path, competition=table)
    if args.competition and table is None and cfg.competition.name != args.competition:
        raise ConfigError(f"{path}: is for competition {cfg.competition.name!r}, not {args.competition!r}")
    out = build_package(cfg, args.out_dir, slug=args.slug, kaggle_id=args.kaggle_id, force=args.force)
    output_console().print(
        f"package: {out}\nrun on Kaggle: python {out.name}/inference.py (see {out / 'README.md'})",
        soft_wrap=True,
    )
