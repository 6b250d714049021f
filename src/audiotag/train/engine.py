"""The optimisation step and what surrounds it: mixed precision, gradient accumulation and clipping,
an exponential moving average of the weights, channels-last and torch.compile.

``precision: auto`` picks bf16 where the GPU supports it, fp16 with loss scaling on older GPUs; on the
CPU bf16 autocast where the CPU has bf16 instructions (AVX512-BF16 or AMX: the small CNN trains 1.6x
faster, benchmarks/RESULTS.md), else fp32 (emulated bf16 is slower). The EMA copy, when enabled, is
the model that is evaluated and saved as best.pt.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from audiotag.config.schema import TrainConfig
from audiotag.core.errors import TrainingError

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(choice: str, device: torch.device) -> str:
    if choice != "auto":
        if choice == "fp16" and device.type != "cuda":
            raise TrainingError("train.precision: fp16 needs a CUDA GPU; use bf16 or fp32 on the CPU")
        if choice == "bf16" and device.type == "cpu" and not cpu_has_bf16():
            log.warning(
                "train.precision bf16 on a CPU without bf16 instructions (AVX512-BF16 or AMX): emulated, "
                "3.5-4.4x slower than fp32 (musicnn on an AVX2 EPYC); train.precision=auto picks fp32 here"
            )
        return choice
    if device.type != "cuda":
        return "bf16" if cpu_has_bf16() else "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX tiles)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def uses_channels_last(tc: TrainConfig, device: torch.device) -> bool:
    """``train.channels_last``, where null means on for a GPU and off on the CPU."""
    return tc.channels_last if tc.channels_last is not None else device.type == "cuda"


def configure_determinism(deterministic: bool, device: torch.device) -> None:
    """Deterministic kernels on request; otherwise let cuDNN pick the fastest convolution."""
    torch.use_deterministic_algorithms(deterministic, warn_only=False)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
        if deterministic:
            import os

            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


class StepEngine:
    """Owns the optimizer step: call ``backward(loss)`` for every micro-batch."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        tc: TrainConfig,
        device: torch.device,
        ddp: bool = False,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.device = device
        self.precision = resolve_precision(tc.precision, device)
        self.dtype = DTYPES[self.precision]
        self.accum = tc.grad_accum_steps
        self.clip = tc.grad_clip_norm
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        self.ema = (
            AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(tc.ema_decay), use_buffers=True)
            if tc.ema_decay
            else None
        )
        self.micro = 0
        self.steps_taken = 0
        forward: nn.Module = model
        if ddp:  # gradients are averaged across processes in backward()
            ids = [device.index] if device.type == "cuda" else None
            forward = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.forward_model: nn.Module = (
            torch.compile(forward, mode=tc.compile_mode) if tc.compile else forward
        )

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        enabled = self.precision != "fp32"
        with torch.autocast(device_type=self.device.type, dtype=self.dtype, enabled=enabled):
            yield

    def backward(self, loss: torch.Tensor) -> bool:
        """Accumulate the gradient of one micro-batch; step when enough are in. True when it stepped."""
        self.scaler.scale(loss / self.accum).backward()
        self.micro += 1
        if self.micro % self.accum:
            return False
        if self.clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.steps_taken += 1
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return True

    def flush(self) -> None:
        """Drop a partial accumulation at the end of an epoch, so every epoch starts clean."""
        self.optimizer.zero_grad(set_to_none=True)
        self.micro = 0

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def state_dict(self) -> dict:
        return {
            "steps_taken": self.steps_taken,
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.scaler.load_state_dict(state["scaler"])
        self.steps_taken = state.get("steps_taken", 0)
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])


def out_of_memory_advice(batch_size: int, accum: int) -> str:
    half = max(1, batch_size // 2)
    return (
        f"the GPU ran out of memory at train.batch_size={batch_size}; try --set train.batch_size={half} "
        f"--set train.grad_accum_steps={accum * 2} (same effective batch), or train.precision=bf16"
    )
