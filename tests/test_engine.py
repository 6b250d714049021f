"""The optimisation step: accumulation, clipping, EMA, precision choice, failure messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from audiotag.cli.main import main
from audiotag.config.schema import TrainConfig
from audiotag.core.errors import TrainingError
from audiotag.train import epoch as epoch_mod
from audiotag.train import loop
from audiotag.train.engine import StepEngine, out_of_memory_advice, resolve_precision, uses_channels_last
from tests.conftest import tiny_args

CPU = torch.device("cpu")


def engine_for(model: nn.Module, lr: float = 0.1, **train) -> StepEngine:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return StepEngine(model, optimizer, scheduler, TrainConfig(**train), CPU)


def bce(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(model(x), y)


def test_precision_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    from audiotag.train import engine

    monkeypatch.setattr(engine, "cpu_has_bf16", lambda: False)
    assert resolve_precision("auto", CPU) == "fp32"
    monkeypatch.setattr(engine, "cpu_has_bf16", lambda: True)
    assert resolve_precision("auto", CPU) == "bf16"
    assert resolve_precision("fp32", CPU) == "fp32"
    assert resolve_precision("bf16", CPU) == "bf16"
    with pytest.raises(TrainingError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", CPU)


def test_emulated_bf16_on_the_cpu_is_kept_but_named(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from audiotag.train import engine

    monkeypatch.setattr(engine, "cpu_has_bf16", lambda: False)
    caplog.set_level("WARNING")
    assert resolve_precision("bf16", CPU) == "bf16"  # the user's choice, not overruled
    assert "train.precision bf16 on a CPU without bf16 instructions" in caplog.text
    assert "train.precision=auto" in caplog.text
    caplog.clear()
    monkeypatch.setattr(engine, "cpu_has_bf16", lambda: True)
    assert resolve_precision("bf16", CPU) == "bf16" and not caplog.text


def test_accumulated_micro_batches_equal_one_large_batch() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(8, 5), torch.rand(8, 3)
    one, two = nn.Linear(5, 3), nn.Linear(5, 3)
    two.load_state_dict(one.state_dict())
    big = engine_for(one)
    assert big.backward(bce(one, x, y))
    small = engine_for(two, grad_accum_steps=2)
    assert not small.backward(bce(two, x[:4], y[:4]))  # gradient kept, no step yet
    assert small.backward(bce(two, x[4:], y[4:]))
    for a, b in zip(one.parameters(), two.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_gradient_clipping_bounds_the_update() -> None:
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    engine = engine_for(model, lr=1.0, grad_clip_norm=0.5)
    engine.backward(1000 * bce(model, torch.randn(8, 5), torch.rand(8, 3)))
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert torch.linalg.vector_norm(after - before) == pytest.approx(0.5, rel=1e-4)


def test_ema_follows_the_weights_with_its_decay() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    engine = engine_for(model, ema_decay=0.5)
    expected = [p.detach().clone() for p in model.parameters()]
    for i in range(3):
        engine.backward(bce(model, torch.randn(6, 4), torch.rand(6, 2)))
        current = [p.detach() for p in model.parameters()]
        if i == 0:  # the first update copies the weights
            expected = [c.clone() for c in current]
        else:
            expected = [0.5 * e + 0.5 * c for e, c in zip(expected, current, strict=True)]
    for e, p in zip(expected, engine.eval_model.parameters(), strict=True):
        torch.testing.assert_close(p, e)
    restored = engine_for(nn.Linear(4, 2), ema_decay=0.5)
    restored.load_state_dict(engine.state_dict())
    for a, b in zip(restored.eval_model.parameters(), engine.eval_model.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_out_of_memory_advice_keeps_the_effective_batch() -> None:
    text = out_of_memory_advice(64, 1)
    assert "train.batch_size=32" in text and "train.grad_accum_steps=2" in text


@pytest.mark.slow
def test_bf16_ema_accumulation_run_end_to_end(workspace: Path) -> None:
    extra = [
        "train.precision=bf16",
        "train.ema_decay=0.9",
        "train.grad_accum_steps=2",
        "train.grad_clip_norm=1.0",
        "train.channels_last=true",
        "train.folds=[0]",
        "train.batch_size=8",
        "train.num_workers=2",  # crops read from the memory-mapped cache in worker processes
    ]
    assert main(tiny_args("prepare", "train", extra=extra)) == 0
    done = json.loads((workspace / "competition/demo/runs/cnn_small/fold0/done.json").read_text())
    assert done["precision"] == "bf16" and done["epochs_run"] == 2


@pytest.mark.slow
def test_nan_loss_stops_naming_fold_and_epoch_and_keeps_the_last_good_checkpoint(
    workspace: Path, monkeypatch, capsys
) -> None:
    """The loss turns NaN in the second epoch: training stops with a message naming the fold and the
    epoch, and the first epoch's checkpoints are left to resume from (no done.json)."""
    real_loss, real_score = epoch_mod.training_loss, loop.fold_score
    scored: list[float] = []

    def score_and_count(data, scores):
        scored.append(real_score(data, scores))
        return scored[-1]

    def bce_nan_after_first_epoch(logits, y, w, *specs):
        loss = real_loss(logits, y, w, *specs)
        return loss * float("nan") if scored else loss

    monkeypatch.setattr(loop, "fold_score", score_and_count)
    monkeypatch.setattr(epoch_mod, "training_loss", bce_nan_after_first_epoch)
    assert main(tiny_args("prepare", "train", extra=["train.folds=[0]", "train.epochs=3"])) == 2
    err = capsys.readouterr().err
    assert "fold 0: loss became nan at epoch 2" in err and "train.lr" in err
    fold = workspace / "competition/demo/runs/cnn_small/fold0"
    assert len(scored) == 1 and not (fold / "done.json").exists()
    last = torch.load(fold / "last.pt", weights_only=True)["state"]
    assert last["epoch"] == 1 and "partial" not in last and len(last["history"]) == 1
    assert torch.isfinite(torch.tensor(last["history"][0]["loss"]))
    best = torch.load(fold / "best.pt", weights_only=True)
    assert best["epoch"] == 0 and best["score"] == pytest.approx(scored[0])


class Killed(BaseException):
    """Stands in for SIGKILL: not an Exception, so nothing on the way up handles it."""


@pytest.mark.slow
def test_mid_epoch_checkpoint_resumes_exactly(tmp_path: Path, monkeypatch) -> None:
    import pandas as pd

    extra = ["train.folds=[0]", "train.checkpoint_every_steps=1", "train.batch_size=8", "train.epochs=2"]
    real_save = loop.save_checkpoint

    def dying_save(path, payload):
        partial = payload.get("state", {}).get("partial")
        if partial and partial["epoch"] == 1 and partial["batch"] == 2:
            real_save(path, payload)
            raise Killed
        real_save(path, payload)

    def workspace(name: str) -> Path:
        monkeypatch.setenv("AUDIOTAG_WORKSPACE", str(tmp_path / name / "competition"))
        monkeypatch.setenv("AUDIOTAG_SUBMISSIONS", str(tmp_path / name / "submissions"))
        return tmp_path / name / "competition" / "demo" / "runs" / "cnn_small" / "fold0"

    fold = workspace("killed")
    monkeypatch.setattr(loop, "save_checkpoint", dying_save)
    with pytest.raises(Killed):
        main(tiny_args("prepare", "train", extra=extra))
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    saved = torch.load(fold / "last.pt", weights_only=True)["state"]
    assert saved["epoch"] == 1 and saved["partial"]["batch"] == 2
    assert main(tiny_args("prepare", "train", extra=extra)) == 0
    clean = workspace("clean")
    assert main(tiny_args("prepare", "train", extra=extra)) == 0

    a, b = (json.loads((f / "done.json").read_text())["history"] for f in (fold, clean))
    assert [h["loss"] for h in a] == pytest.approx([h["loss"] for h in b], rel=1e-6)
    oof_a, oof_b = (pd.read_parquet(f / "oof.parquet") for f in (fold, clean))
    pd.testing.assert_frame_equal(oof_a, oof_b)


def test_mid_epoch_random_states_are_kept_per_rank() -> None:
    cpu = torch.device("cpu")
    with torch.random.fork_rng(devices=[]):
        saved = []
        for rank in range(2):  # each DDP rank has its own augmentation and dropout streams
            aug = torch.Generator().manual_seed(100 + rank)
            torch.manual_seed(200 + rank)
            torch.rand(3, generator=aug), torch.rand(3)
            saved.append(epoch_mod.rank_progress(float(rank), 10 + rank, aug, cpu))
        partial = {"epoch": 1, "batch": 3, "ranks": saved}
        for rank in range(2):
            aug = torch.Generator()
            assert epoch_mod.restore_rank_progress(partial, rank, 2, aug, cpu) == (float(rank), 10 + rank)
            assert torch.equal(aug.get_state(), saved[rank]["aug_state"])
            assert torch.equal(torch.get_rng_state(), saved[rank]["rng_state"])
        older = {"epoch": 1, "batch": 3, **saved[1]}  # written before states were kept per rank
        assert epoch_mod.restore_rank_progress(older, 0, 1, torch.Generator(), cpu) == (1.0, 11)
        with pytest.raises(TrainingError, match=r"written by 2 training process.*resume with --gpus 2"):
            epoch_mod.restore_rank_progress(partial, 0, 1, torch.Generator(), cpu)


def test_channels_last_is_on_for_a_gpu_unless_set() -> None:
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert uses_channels_last(TrainConfig(), cuda) and not uses_channels_last(TrainConfig(), cpu)
    assert not uses_channels_last(TrainConfig(channels_last=False), cuda)
    assert uses_channels_last(TrainConfig(channels_last=True), cpu)


def test_training_crops_travel_as_float16_and_are_widened_exactly() -> None:
    import numpy as np

    from audiotag.data.dataset import CropDataset

    frames = (np.arange(40 * 3, dtype=np.float32).reshape(40, 3) / 7).astype(np.float16)

    class Cache:
        def get(self, clip_id: str) -> np.ndarray:
            return frames

    dataset = CropDataset(Cache(), ["a"], np.ones((1, 2)), np.ones(1), 16, "wrap", 0.0, seed=0)
    x, _, _ = dataset[0]
    assert x.dtype == torch.float16 and x.shape == (16, 3)
    start = int(np.flatnonzero((frames == x.numpy()[0]).all(axis=1))[0])
    np.testing.assert_array_equal(x.float().numpy(), frames[start : start + 16].astype(np.float32))


def test_compile_passes_its_mode_to_torch_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict] = []

    def fake_compile(module: nn.Module, **kwargs) -> nn.Module:
        seen.append(kwargs)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    cpu = torch.device("cpu")
    StepEngine(model, optimizer, scheduler, TrainConfig(), cpu)
    assert seen == []  # compile is off by default
    StepEngine(model, optimizer, scheduler, TrainConfig(compile=True), cpu)
    StepEngine(model, optimizer, scheduler, TrainConfig(compile=True, compile_mode="reduce-overhead"), cpu)
    assert seen == [{"mode": "default"}, {"mode": "reduce-overhead"}]


def test_loss_tally_sums_like_python_floats_and_reports_the_first_non_finite_step() -> None:
    losses = [0.7310585786, 0.1234567, 2.5, 1e-8]
    # resumed mid-epoch: 3 samples, sum 1.5
    tally = epoch_mod.LossTally("fold 2", 3, 1.5, 3, torch.device("cpu"))
    want = 1.5
    for step, value in enumerate(losses):
        loss = torch.tensor(value, dtype=torch.float32)
        tally.add(loss, 8, step)
        want += loss.item() * 8  # what the loop summed before the tally
    assert tally.read() == (want, 3 + 8 * len(losses))  # exactly: float64 on the device too
    tally.add(torch.tensor(float("inf")), 8, 4)
    tally.add(torch.tensor(float("nan")), 8, 5)
    with pytest.raises(TrainingError, match=r"fold 2: loss became inf at epoch 4, step 4; .*train\.lr"):
        tally.read()


def test_the_epoch_reads_the_loss_back_only_every_few_steps(workspace: Path, monkeypatch) -> None:
    """No loss.item() a step: on a GPU that makes the CPU wait for each step before queuing the next."""
    reads: list[int] = []
    real_read = epoch_mod.LossTally.read

    def counted(self):
        reads.append(self.count)
        return real_read(self)

    monkeypatch.setattr(epoch_mod.LossTally, "read", counted)
    monkeypatch.setattr(epoch_mod, "READ_EVERY", 3)
    extra = ["train.folds=[0]", "train.epochs=1", "train.batch_size=8"]
    assert main(tiny_args("prepare", "train", extra=extra)) == 0
    steps = reads[-1] // 8
    assert steps > 6 and reads == [8 * s for s in range(3, steps, 3)] + [8 * steps]


def test_an_epoch_without_the_folds_loader_makes_and_stops_its_own(workspace: Path, monkeypatch) -> None:
    closed: list[int] = []
    real_close = epoch_mod.EpochLoader.close

    def counted_close(self) -> None:
        closed.append(1)
        real_close(self)

    monkeypatch.setattr(loop, "fold_loader", lambda *args: None)  # run_epoch passes no loader
    monkeypatch.setattr(epoch_mod.EpochLoader, "close", counted_close)
    extra = ["train.folds=[0]", "train.epochs=2", "train.batch_size=8", "train.num_workers=1"]
    assert main(tiny_args("prepare", "train", extra=extra)) == 0
    assert len(closed) == 2  # one loader an epoch, each stopped when its epoch ended
