"""``audiotag leaderboard``: runs, blends and submissions in one table (console, CSV, HTML), LB scores
read back through the Kaggle client, and the PNG pictures."""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from audiotag.cli.main import main
from audiotag.core import jsonl
from audiotag.fetch import kaggle as fetch_kaggle
from audiotag.reports.leaderboard import build_leaderboard
from audiotag.reports.plots import cv_vs_lb_figure, learning_curves_figure
from tests import demo_workspace
from tests.test_report import BodyData, browse, console_lines

PNG = b"\x89PNG\r\n\x1a\n"
SLUG = "demo-slug"


@pytest.fixture
def demo(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return demo_workspace.copy_to(demo_workspace.trained_base(tmp_path_factory), tmp_path / "ws", monkeypatch)


class FakeKaggle:
    """Recorded answers of ``competition_submissions``."""

    def __init__(self, submissions: list[dict[str, Any]]) -> None:
        self.submissions = submissions
        self.asked: list[str] = []

    def authenticate(self) -> None:
        pass

    def competition_submissions(self, competition: str, **kwargs: Any) -> list[dict[str, Any]]:
        self.asked.append(competition)
        return self.submissions


def log_submission(ws: Path, name: str, ref: str, message: str) -> None:
    csv = ws / "submissions" / "demo" / f"{name}.csv"
    report = json.loads(csv.with_suffix(".json").read_text())
    jsonl.append_jsonl(
        ws / "submissions" / "log.jsonl",
        {
            "time": "2026-01-02T03:04:05+0000",
            "competition": "demo",
            "slug": SLUG,
            "file": str(csv.resolve()),
            "sha256": "0" * 64,
            "message": message,
            "metric": "map3",
            "cv": report["cv"]["mean"],
            "cv_std": report["cv"]["std"],
            "members": sorted(report["members"]),
            "ensemble": name,
            "reply": "Successfully submitted",
            "ref": ref,
        },
    )


def done_scores(run_dir: Path) -> list[float]:
    return [json.loads((run_dir / f"fold{k}" / "done.json").read_text())["score"] for k in range(3)]


@pytest.mark.slow
def test_leaderboard_table_files_lb_and_plots(demo: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    log_submission(demo, "pair_rank", "11", "rank blend of two")
    log_submission(demo, "demo", "12", "single cnn")
    fake = FakeKaggle(
        [
            {
                "ref": 11,
                "file_name": "pair_rank.csv",
                "description": "rank blend of two",
                "public_score": "0.5",
            }
            | {"private_score": "0.45", "status": "COMPLETE"},
            {"ref": 99, "file_name": "other.csv", "description": "made elsewhere", "public_score": "0.1"},
        ]
    )
    monkeypatch.setattr(fetch_kaggle, "KAGGLE_API_FACTORY", lambda: fake)
    csv_path, html_path = demo / "lb.csv", demo / "lb.html"
    args = ["leaderboard", "-c", "demo", "--csv", str(csv_path), "--html", str(html_path), "--plots"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert fake.asked == [SLUG]
    for text in ("cnn_small", "cnn_seed1", "pair_rank", "pair_stack", "0.50000", "0.45000", "not submitted"):
        assert text in out

    table = pd.read_csv(csv_path, keep_default_na=True)
    assert sorted(table.loc[table["kind"] == "run", "name"]) == ["cnn_seed1", "cnn_small", "probe_aisfx"]
    cv = table["cv_mean"].to_numpy()
    assert (np.diff(cv[~np.isnan(cv)]) <= 1e-12).all()  # best CV first
    runs = table[table["kind"] == "run"].set_index("name")
    for name, seed in (("cnn_small", 0), ("cnn_seed1", 1)):
        scores = done_scores(demo / "competition" / "demo" / "runs" / name)
        row = runs.loc[name]
        assert [row[f"fold_{k}"] for k in range(3)] == pytest.approx(scores, abs=1e-6)
        assert row["cv_mean"] == pytest.approx(np.mean(scores), abs=1e-6)
        assert row["cv_std"] == pytest.approx(np.std(scores), abs=1e-6)
        assert row["seed"] == seed and row["folds"] == "3/3" and row["train_seconds"] > 0
        assert row["model"] == "cnn" and row["features"] == "logmel_16k_64" and "cpu" in row["device"]
    subs = table[table["kind"] == "submission"].set_index("name")
    assert subs.loc["pair_rank", "public_lb"] == pytest.approx(0.5)
    assert subs.loc["pair_rank", "private_lb"] == pytest.approx(0.45)
    assert subs.loc["pair_rank", "members"] == "cnn_seed1 + cnn_small"
    assert subs.loc["pair_rank", "message"] == "rank blend of two"
    assert (
        math.isnan(subs.loc["demo", "public_lb"]) and subs.loc["demo", "lb_status"] == "not found on Kaggle"
    )
    blends = table[table["kind"] == "blend"]["name"].tolist()
    assert "pair_stack" in blends and "pair_rank" not in blends  # a submitted blend shows as its submission
    page = html_path.read_text()
    assert "<table>" in page and "pair_rank" in page and "cnn_seed1" in page

    pictures = [
        demo / "competition" / "demo" / "runs" / run / name
        for run in ("cnn_small", "cnn_seed1")
        for name in ("learning_curves.png", "per_class_ap.png", "confusion.png")
    ]
    pictures += [
        demo / "submissions" / "demo" / name
        for name in ("pair_rank.per_class_ap.png", "pair_rank.confusion.png", "cv_vs_lb.png")
    ]
    for picture in pictures:
        assert picture.read_bytes()[:8] == PNG, picture
        assert f"plot: {picture}" in out


# Appended to a copy of the page: after load, how many images decoded, how wide the page and its table are.
MEASURE = """<script>
window.addEventListener("load", () => {
  const out = document.body.dataset;
  out.images = [...document.images].filter((i) => i.complete && i.naturalWidth > 0).length;
  const table = document.querySelector("table");  // its own right edge: its wrapper could scroll
  out.width = Math.max(document.documentElement.scrollWidth, table.getBoundingClientRect().right);
});
</script>"""


@pytest.mark.slow
def test_leaderboard_html_embeds_its_plots_and_fits_a_1400_px_window(
    demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page_path = tmp_path / "lb.html"
    assert main(["leaderboard", "-c", "demo", "--no-lb", "--plots", "--html", str(page_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    plots = [line.removeprefix("plot: ") for line in out if line.startswith("plot: ")]
    page = page_path.read_text()
    assert not re.search(r"""(?:src|href)\s*=\s*["'](?!data:|#)""", page), "a reference outside the page"
    assert len(plots) >= 9 and page.count("<img src='data:image/png;base64,") == len(plots)
    assert "cnn_small/learning_curves.png" in page and "demo/pair_rank.confusion.png" in page

    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("</body>", MEASURE + "</body>"))
    result = browse(probed, "--dump-dom", "--window-size=1400,900")
    assert result.returncode == 0 and console_lines(result) == [], result.stderr[-2000:]
    dom = BodyData()
    dom.feed(result.stdout)
    assert int(dom.body["images"]) == len(plots)  # every plot decoded
    assert int(dom.body["width"]) <= 1400  # no horizontal scrolling in a 1400 px window

    shots = Path(tempfile.gettempdir()) / "audiotag-test-artefacts"  # outlives pytest's tmp rotation
    shots.mkdir(exist_ok=True)
    shot = shots / "leaderboard.png"
    shot.unlink(missing_ok=True)
    result = browse(page_path, f"--screenshot={shot}", "--window-size=1400,3000", "--hide-scrollbars")
    assert result.returncode == 0 and shot.read_bytes()[:8] == PNG, result.stderr[-2000:]
    print(f"leaderboard screenshot: {shot}")


@pytest.mark.slow
def test_without_credentials_the_lb_is_blank_with_a_note(
    demo: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    home = demo / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(home / ".kaggle"))
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_API_ENVIRONMENT"):
        monkeypatch.delenv(name, raising=False)
    with contextlib.redirect_stdout(io.StringIO()):  # the package's import-time sign-in prints
        from kaggle.api.kaggle_api_extended import KaggleApi
    monkeypatch.setattr(KaggleApi, "config_dir", str(home / ".kaggle"))  # fixed at first import
    monkeypatch.setattr(KaggleApi, "config", str(home / ".kaggle" / "kaggle.json"))
    monkeypatch.setattr(fetch_kaggle, "KAGGLE_API_FACTORY", fetch_kaggle.default_api)  # the real client
    log_submission(demo, "demo", "12", "single cnn")
    board = build_leaderboard("demo")
    assert any("no Kaggle credentials" in note for note in board.notes)
    row = board.rows[board.rows["kind"] == "submission"].iloc[0]
    assert pd.isna(row["public_lb"]) and pd.isna(row["private_lb"])
    assert main(["leaderboard", "--no-lb"]) == 0
    assert "LB not read (--no-lb)" in capsys.readouterr().out


@pytest.mark.slow
def test_a_competition_without_runs_and_figures_without_data(workspace: Path, capsys) -> None:
    assert main(["leaderboard", "-c", "demo2019"]) == 0
    assert "no runs in" in capsys.readouterr().out
    assert learning_curves_figure(workspace / "nothing") is None
    rows = pd.DataFrame({"kind": ["run"], "name": ["r"], "cv_mean": [0.5], "public_lb": [np.nan]})
    rows["private_lb"] = np.nan
    assert cv_vs_lb_figure(rows, "map3") is None
