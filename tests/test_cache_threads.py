"""The feature cache's threads design (``build_cache(..., device=...)``, ``prepare --cache-device``):
decoding threads and the log-mel in the building process give the same cache as the worker processes."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from audiotag.cli import main as cli
from audiotag.config.schema import AudioRules, FeatureConfig
from audiotag.core.errors import ConfigError
from audiotag.data import cache_compute
from audiotag.data.cache_build import build_cache
from audiotag.data.cache_reader import FeatureCache
from tests.test_cache import CFG, N_CLIPS, copy_competition, write_clips

CACHE_FILES = ("frames.f16", "index.parquet", "report.csv")


def problem_clips(root: Path) -> pd.DataFrame:
    """``write_clips`` plus an undecodable training clip, an empty test clip and a segment."""
    clips = write_clips(root).assign(split="train")
    clips.loc[clips["clip_id"].isin(["clip03", "clip04"]), "split"] = "test"
    (root / "audio/clip05.wav").write_bytes(b"not audio at all")  # training: skipped
    sf.write(str(root / "audio/clip03.wav"), np.zeros(0, np.float32), 44100)  # test: zero-filled
    clips["start"], clips["end"] = np.nan, np.nan
    clips.loc[clips["clip_id"] == "clip01", ["start", "end"]] = [0.05, 0.15]  # a segment
    return clips


@pytest.fixture(scope="module")
def reference(module_tmp: Path) -> tuple[Path, pd.DataFrame, Path]:
    """The cache built the default way, by the worker processes."""
    root = module_tmp / "competition"
    root.mkdir()
    clips = problem_clips(root)
    return root, clips, build_cache(clips, root, CFG, workers=2)


def assert_same_cache(got: Path, want: Path) -> None:
    """Byte-equal files; a reason in the report names the file, so its competition folder is left out."""
    for name in CACHE_FILES:
        mine, theirs = ((d / name).read_bytes() for d in (got, want))
        if name == "report.csv":
            mine, theirs = (t.replace(bytes(d.parents[1]), b"ROOT") for t, d in ((mine, got), (theirs, want)))
        assert mine == theirs, name
    manifest, other = (json.loads((d / "manifest.json").read_text()) for d in (got, want))
    assert manifest["clips_hash"] == other["clips_hash"]  # the device is not part of the clip list


def test_threads_on_the_cpu_give_the_pools_cache_byte_for_byte(
    reference: tuple[Path, pd.DataFrame, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, clips, want = reference
    comp = copy_competition(root, tmp_path)
    threads_before = torch.get_num_threads()
    with caplog.at_level(logging.INFO, logger="audiotag.data.cache_build"):
        got = build_cache(clips, comp, CFG, workers=2, device="cpu")
    assert "2 decoding thread(s), log-mel on cpu" in caplog.text
    assert torch.get_num_threads() == threads_before  # the caller's setting is restored
    assert_same_cache(got, want)
    cache = FeatureCache(got)
    assert cache.skipped == ["clip05"] and cache.status("clip03") == "zero_filled"
    assert cache.n_frames("clip01") < cache.n_frames("clip00")  # the 0.1 s segment
    assert len(cache) == N_CLIPS - 1
    # the default path then finds it up to date: the same clip list
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="audiotag.data.cache_build"):
        assert build_cache(clips, comp, CFG, workers=1) == got
    assert "up to date" in caplog.text


def test_wave_cache_through_threads(tmp_path: Path) -> None:
    cfg = FeatureConfig(cache="wave")
    clips = problem_clips(tmp_path / "a")
    want = build_cache(clips, tmp_path / "a", cfg, workers=1)
    comp = copy_competition(tmp_path / "a", tmp_path / "b")
    got = build_cache(clips, comp, cfg, workers=3, device="cpu")
    assert_same_cache(got, want)


def test_threads_keep_task_order_and_bound_what_is_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    decode_clip = cache_compute.decode_clip
    started: list[str] = []

    def slow_first(path: str, *args: Any) -> Any:
        started.append(path)
        if path.endswith("0"):
            import time

            time.sleep(0.2)  # the first clip finishes last
        return decode_clip(path, *args)

    monkeypatch.setattr(cache_compute, "decode_clip", slow_first)
    consumed = []

    def tasks() -> Any:
        for i in range(40):
            consumed.append(i)
            yield cache_compute.Task(f"/nonexistent/clip{i:02d}", i % 2 == 1)

    results = cache_compute._compute_threads(tasks(), CFG, cache_compute.DEFAULT_RULES, 2, "cpu")
    first = next(results)
    assert len(consumed) <= 2 * cache_compute.CLIPS_PER_THREAD + 1  # bounded read-ahead
    rest = list(results)
    statuses = [r.status for r in [first, *rest]]
    assert statuses == ["skipped", "zero_filled"] * 20  # in task order: train skipped, test filled
    assert first.reason.startswith("missing: audio file not found")


def test_cuda_without_a_gpu_is_a_clear_error(
    reference: tuple[Path, pd.DataFrame, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, clips, _ = reference
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"--cache-device cuda: no CUDA GPU is available"):
        build_cache(clips, root, CFG, device="cuda")
    with pytest.raises(ConfigError, match=r"--cache-device 'tpu'"):
        build_cache(clips, root, CFG, device="tpu")


def test_the_cli_flag_reaches_build_cache(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import audiotag.runs.prepare as prepare_mod

    seen: dict[str, Any] = {}

    def fake_prepare(competition: Any, features: Any, workers: Any = None, cache_device: Any = None) -> None:
        seen.update(workers=workers, cache_device=cache_device)

    monkeypatch.setattr(prepare_mod, "prepare", fake_prepare)
    assert cli.main(["prepare", "--workers", "3", "--cache-device", "cpu", "--quiet"]) in (0, None)
    assert seen == {"workers": 3, "cache_device": "cpu"}
    assert "--cache-device {cuda,cpu}" in cli.build_parser().format_help()
    # a stage list without prepare would ignore it: refused, naming the command that uses it
    seen.clear()
    assert cli.main(["train", "--cache-device", "cpu", "--quiet"]) == 2
    assert not seen
    assert "run `./run.sh prepare train --cache-device cpu`" in capsys.readouterr().err


def test_prepare_hands_the_device_to_build_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import audiotag.runs.prepare as prepare_mod

    class Comp:
        name, dir = "fake", tmp_path

        def obtain(self) -> None:
            pass

    calls: dict[str, Any] = {}

    def fake_build(*args: Any, **kwargs: Any) -> Path:
        calls.update(kwargs)
        raise KeyboardInterrupt  # stop there: the call is what is tested

    table = pd.DataFrame({"clip_id": ["a"], "path": ["a.wav"], "split": ["train"]})
    monkeypatch.setattr(prepare_mod, "get_competition", lambda competition: Comp())
    monkeypatch.setattr(prepare_mod, "clip_table", lambda comp: table)
    monkeypatch.setattr(prepare_mod, "ensure_folds", lambda comp, table: None)
    monkeypatch.setattr(prepare_mod, "build_cache", fake_build)
    competition = SimpleNamespace(audio_rules=AudioRules(), test_labels=None)
    with pytest.raises(KeyboardInterrupt):
        prepare_mod.prepare(competition, CFG, workers=2, cache_device="cpu")  # type: ignore[arg-type]
    assert calls["device"] == "cpu" and calls["workers"] == 2
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="--cache-device cuda"):  # at once, before the raw data
        prepare_mod.prepare(competition, CFG, cache_device="cuda")  # type: ignore[arg-type]
