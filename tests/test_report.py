"""``audiotag report``: one self-contained HTML page of a competition's results, opened in headless
Chromium (Debian's ``chromium``) to see that it renders without console errors, that its images
decode, that its tables sort, and to keep a screenshot; plus the parts checked by hand."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from audiotag.cli.main import main
from audiotag.config.files import configs_root, dump_yaml
from audiotag.reports.data import ConfigDiff, RunFacts, config_diff
from audiotag.reports.figures import class_counts, durations_figure
from audiotag.reports.html import run_block, table
from audiotag.reports.leaderboard import build_leaderboard
from audiotag.runs.folder import check_or_write_run_info
from audiotag.runs.prepare import Prepared
from audiotag.train.experiment import load_experiment
from tests import demo_workspace

CNN_SMALL = configs_root() / "experiments" / "demo" / "cnn_small.yaml"
RUNS = ("cnn_small", "cnn_seed1")
BLENDS = ("demo", "pair_rank", "pair_stack")

# Appended to a copy of the page: after load, record what the browser made of it in <body data-*>.
PROBE = """<script>
window.addEventListener("load", () => {
  const out = document.body.dataset;
  out.images = [...document.images].filter((i) => i.complete && i.naturalWidth > 0).length;
  const table = document.querySelector("#leaderboard table");
  const heads = [...table.tHead.rows[0].cells];
  const name = heads.findIndex((h) => h.textContent === "name");
  const names = () => [...table.tBodies[0].rows].map((r) => r.cells[name].textContent).join(",");
  const cv = heads.find((h) => h.textContent.startsWith("CV "));
  cv.click();
  out.ascending = names();
  cv.click();
  out.descending = names();
});
</script>"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no chromium on PATH: apt-get install -y chromium (Debian) runs the report's browser test")


def browse(page: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium on ``page`` (a file URL, no network); console messages land in stderr."""
    return subprocess.run(
        [
            chromium(),
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
            *flags,
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def console_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if ":CONSOLE" in line]


class BodyData(HTMLParser):
    """The ``data-*`` attributes of <body>, and a count of each tag."""

    def __init__(self) -> None:
        super().__init__()
        self.body: dict[str, str] = {}
        self.tags: dict[str, int] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if tag == "body":
            self.body = {k.removeprefix("data-"): v or "" for k, v in attrs if k.startswith("data-")}


@pytest.fixture
def demo(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return demo_workspace.copy_to(demo_workspace.trained_base(tmp_path_factory), tmp_path / "ws", monkeypatch)


@pytest.mark.slow
def test_the_report_renders_in_chromium_with_its_table_and_figures(demo: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    assert main(["report", "-c", "demo", "-o", str(out)]) == 0
    page = out.read_text()
    assert not re.search(r"""(?:src|href)\s*=\s*["'](?!data:|#)""", page), "a reference outside the page"
    assert "<link" not in page and "@import" not in page
    alts = re.findall(r'<img src="data:image/png;base64,[^"]+" alt="([^"]+)"', page)
    expected = [f"learning curves of {run}, every fold" for run in RUNS]
    expected += [f"per-class AP of {blend}" for blend in BLENDS]
    expected += [f"confusion matrix of {blend} (OOF, top 1)" for blend in BLENDS]
    expected += ["clip durations per split", "labels per training clip"]
    expected += ["training clips per class (verified and unverified)"]
    assert sorted(alts) == sorted(expected)
    for run in RUNS:  # the config diff: the tiny demo's --set values against cnn_small.yaml
        block = page[page.index(f'id="run-{run}"') :]
        assert "<td>train.epochs</td><td>12</td>" in block

    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("</body>", PROBE + "</body>"))
    result = browse(probed, "--dump-dom")
    assert result.returncode == 0, result.stderr[-2000:]
    assert console_lines(result) == []
    dom = BodyData()
    dom.feed(result.stdout)
    assert int(dom.body["images"]) == len(expected)  # every image decoded
    assert dom.tags["table"] >= 10 and dom.tags["img"] == len(expected)

    board = build_leaderboard("demo", with_lb=False).rows.set_index("name")["cv_mean"]
    ascending = [board[n] for n in dom.body["ascending"].split(",")]
    descending = [board[n] for n in dom.body["descending"].split(",")]
    known = [v for v in ascending if not math.isnan(v)]
    assert known == sorted(known) and len(ascending) == len(board)
    assert [v for v in descending if not math.isnan(v)] == sorted(known, reverse=True)

    shots = Path(tempfile.gettempdir()) / "audiotag-test-artefacts"  # outlives pytest's tmp rotation
    shots.mkdir(exist_ok=True)
    shot = shots / "report.png"
    shot.unlink(missing_ok=True)
    result = browse(out, f"--screenshot={shot}", "--window-size=1400,7000", "--hide-scrollbars")
    assert result.returncode == 0 and console_lines(result) == [], result.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"report screenshot: {shot}")


@pytest.mark.slow
def test_the_ensemble_stage_writes_the_report_beside_its_submission(demo: Path) -> None:
    """Each ensemble's own report: its section and its members' runs; the leaderboard has every row."""
    default = ["cnn_small", "probe_aisfx"]  # the demo's default ensemble
    for blend, members in (("demo", default), ("pair_rank", list(RUNS)), ("pair_stack", list(RUNS))):
        page = (demo / "submissions" / "demo" / f"{blend}.report.html").read_text()
        assert re.findall(r'<section id="ensemble-([^"]+)"', page) == [blend]
        assert sorted(re.findall(r'<h3 id="run-([^"]+)"', page)) == sorted(members)
        assert "<td>cnn_small</td>" in page  # the leaderboard, whatever the ensemble
    assert "<td>cnn_seed1</td>" in page  # (pair_stack came last: every run was trained by then)


@pytest.mark.slow
def test_with_lb_scores_the_report_plots_cv_against_lb(demo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from audiotag.fetch import kaggle as fetch_kaggle
    from tests.test_leaderboard import SLUG, FakeKaggle, log_submission

    log_submission(demo, "pair_rank", "11", "rank blend")
    log_submission(demo, "demo", "12", "single cnn")
    answers = [
        {"ref": 11, "file_name": "pair_rank.csv", "description": "rank blend", "public_score": "0.5"},
        {"ref": 12, "file_name": "demo.csv", "description": "single cnn", "public_score": "0.25"},
    ]
    fake = FakeKaggle(answers)
    monkeypatch.setattr(fetch_kaggle, "KAGGLE_API_FACTORY", lambda: fake)
    out = demo / "lb.html"
    assert main(["report", "-c", "demo", "--lb", "--ensemble", "pair_rank", "-o", str(out)]) == 0
    page = out.read_text()
    assert fake.asked == [SLUG]
    assert 'alt="CV vs public LB (map3) of the submissions with a LB score"' in page
    assert '<td class="num" data-sort="0.5">0.50000</td>' in page  # the LB column, sortable by value


def test_the_console_check_sees_a_script_error(tmp_path: Path) -> None:
    """The browser check can fail: a page with a script error shows up in the console lines."""
    page = tmp_path / "broken.html"
    page.write_text("<!doctype html><title>t</title><script>notDefinedAnywhere();</script>")
    result = browse(page, "--dump-dom")
    assert any("notDefinedAnywhere" in line for line in console_lines(result)), result.stderr[-2000:]


def test_config_diff_names_what_set_changed(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "quick"
    run_dir.mkdir(parents=True)
    cfg = load_experiment(CNN_SMALL, ["train.epochs=3", "train.lr=0.01"])
    (run_dir / "config.yaml").write_text(dump_yaml(cfg))
    diff = config_diff(run_dir, "demo")
    assert diff.experiment_file == CNN_SMALL
    assert diff.rows == [("train.epochs", "12", "3"), ("train.lr", "0.003", "0.01")]

    (run_dir / "config.yaml").write_text(dump_yaml(load_experiment(CNN_SMALL)))
    assert config_diff(run_dir, "demo").rows == []
    # a run from before a setting existed: missing at its default is no difference, else it is
    older = load_experiment(CNN_SMALL).model_dump(mode="json")
    del older["train"]["loggers"], older["train"]["epochs"]  # the file sets epochs: 12, default 30
    (run_dir / "config.yaml").write_text(yaml.safe_dump(older))
    assert config_diff(run_dir, "demo").rows == [("train.epochs", "12", "—")]
    (run_dir / "config.yaml").write_text(dump_yaml(cfg).replace("name: cnn_small", "name: gone"))
    diff = config_diff(run_dir, "demo")
    assert diff.experiment_file is None and "gone.yaml not found" in diff.note


def test_a_run_started_on_one_fold_does_not_save_that_fold_list(tmp_path: Path) -> None:
    """A run whose first call was ``--folds 0`` and that was finished later: its config.yaml (and so
    the report's config diff) does not keep ``train.folds: [0]``; its fold folders say what it holds."""
    folds = tmp_path / "folds.csv"
    folds.write_text("clip_id,fold\na,0\n")
    prepared = Prepared(None, pd.DataFrame(), folds, tmp_path)  # type: ignore[arg-type]
    run_dir = tmp_path / "runs" / "cnn_small"
    check_or_write_run_info(run_dir, load_experiment(CNN_SMALL, ["train.folds=[0]"]), prepared)
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["folds"] is None
    assert config_diff(run_dir, "demo").rows == []
    check_or_write_run_info(run_dir, load_experiment(CNN_SMALL, ["train.folds=[1,2]"]), prepared)  # same run


def test_a_finished_probe_is_not_said_to_have_no_finished_fold(tmp_path: Path) -> None:
    figs = SimpleNamespace(learning_curves={})  # no curves: what a probe's folds give
    probe = RunFacts("probe_aisfx", tmp_path, {}, ConfigDiff(None), model="linear_probe", folds="5/5")
    block = run_block(None, figs, probe)  # type: ignore[arg-type]
    assert "a linear probe is fitted in one step, no epochs (5/5 folds done)" in block
    assert "no fold has finished" not in block
    fresh = RunFacts("cnn_small", tmp_path, {}, ConfigDiff(None), model="cnn_small", folds="0/5")
    assert "no learning curves yet: no fold has finished" in run_block(None, figs, fresh)  # type: ignore[arg-type]


def test_class_counts_split_verified_and_unverified_training_clips() -> None:
    clips = pd.DataFrame(
        {
            "split": ["train", "train", "train", "test"],
            "labels": [["a"], ["a", "b"], ["b"], ["a"]],
            "verified": [True, False, True, False],
        }
    )
    counts = class_counts(clips, ["a", "b", "c"])
    assert counts.to_dict("index") == {
        "a": {"verified": 1, "unverified": 1},
        "b": {"verified": 1, "unverified": 1},
        "c": {"verified": 0, "unverified": 0},
    }


def test_tables_escape_their_text_and_sort_numbers_by_value() -> None:
    html = table(["name", "CV"], [["<b>x</b>", ("0.5000 ± 0.0100", 0.5)], ["y", ("", None)]], ["run"])
    assert "<td>&lt;b&gt;x&lt;/b&gt;</td>" in html and "<b>x" not in html
    assert '<td class="num" data-sort="0.5">0.5000 ± 0.0100</td>' in html
    assert '<td class="num"></td>' in html and '<tr class="run">' in html


@pytest.mark.parametrize("durations", [[0.5, 0.5, 0.5], [0.5, 0.5 + 1e-15, 0.5], [0.3, 2.0, 9.5]])
def test_the_durations_histogram_draws_equal_and_nearly_equal_durations(durations: list[float]) -> None:
    table = pd.DataFrame({"duration": durations, "split": ["train", "train", "test"]})
    fig = durations_figure(table)
    assert fig is not None
    bars = [p for p in fig.axes[0].patches]
    assert sum(p.get_height() for p in bars) == len(durations)
