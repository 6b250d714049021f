"""Issue 14's GPU measurements in one run: training throughput and memory (CNN14, AST), the data
pipeline's headroom, bf16 against fp32 on the golden fixtures, the feature cache built with the GPU,
and exact resume on CUDA.

Every result is one JSON line in ``OUT/gpu_suite.jsonl``, written as soon as it is measured, so a run
stopped by its time limit still returns what it measured; ``OUT/gpu_suite.log`` holds the full
output. Sections run in the order given (``--sections``); each is skipped when less than its
minimum time (``MIN_SECONDS``) plus that of the sections after it is left of ``--budget``, and the
models of ``train`` share what the later sections leave (see ``limits``).

    python benchmarks/gpu_suite.py --out $OUT --budget 560           # on the GPU machine
    .venv/bin/python benchmarks/gpu_suite.py --out /tmp/suite --smoke   # here: every section, tiny
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(BENCH), str(REPO)]

RESUME_TESTS = [
    "tests/test_end_to_end.py::test_killed_run_resumes_and_matches_uninterrupted",
    "tests/test_engine.py::test_mid_epoch_checkpoint_resumes_exactly",
    "tests/test_resample.py::test_sinc_on_cuda_matches_the_cpu",  # skipped without a GPU
]


# the least time a section needs to be worth starting (seconds)
MIN_SECONDS = {"train": 60.0, "golden": 40.0, "features": 60.0, "resume": 60.0}

# compile last: it is the slowest to start and the first to go when time runs short
MODEL_VARIANTS = {
    "cnn14": [
        "fp32",
        "bf16",
        "bf16_cl",
        "wave_bf16_cl",
        "bf16_cl_ddp",
        "bf16_cl_compile",
        "wave_bf16_cl_compile",
    ],
    "ast_base": ["fp32", "bf16", "wave_bf16_cl", "bf16_cl_ddp", "bf16_cl_compile"],
}


class Suite:
    def __init__(self, out: Path, budget: float) -> None:
        self.out = out
        self.start = time.monotonic()
        self.budget = budget
        out.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(out / "gpu_suite.jsonl", "a", encoding="utf-8")  # noqa: SIM115

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def end(self) -> float:
        """time.monotonic() at which the budget is spent."""
        return self.start + self.budget

    def emit(self, section: str, row: dict) -> None:
        row = {"section": section, "t": round(self.elapsed(), 1), **row}
        self.jsonl.write(json.dumps(row, default=str) + "\n")
        self.jsonl.flush()
        print(json.dumps(row, default=str), flush=True)

    def section(self, name: str, start_by: float, body: Callable[[], None]) -> None:
        """Run ``body`` unless time.monotonic() is past ``start_by``; errors become rows."""
        if time.monotonic() > start_by:
            self.emit(name, {"skipped": f"time budget ({self.elapsed():.0f} s spent)"})
            return
        started = time.monotonic()
        self.emit(name, {"status": "start"})
        try:
            body()
        except Exception as exc:
            self.emit(
                name, {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}
            )
        self.emit(name, {"status": "end", "seconds": round(time.monotonic() - started, 1)})


def environment(suite: Suite, device: torch.device) -> None:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu_count": os.cpu_count(),
        "device": str(device),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            sms=props.multi_processor_count,
        )
        smi = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
        info["nvidia_smi"] = smi.stdout.strip()
    suite.emit("environment", info)


def throughput(
    suite: Suite, device: torch.device, model: str, variants: list[str] | None, args, until: float
) -> None:
    import train_throughput as tt

    ns = argparse.Namespace(
        clips=args.clips, clip_seconds=args.clip_seconds, steps=args.steps, warmup=args.warmup,
        compile_warmup=args.compile_warmup,
    )  # fmt: skip
    variants = variants or list(tt.VARIANTS)
    tt.run(
        device,
        [model],
        variants,
        ns,
        out=lambda r: suite.emit(f"train {model}", r),
        deadline=until,
    )


def golden(suite: Suite, device: torch.device, smoke: bool) -> None:
    import gpu_golden

    families = gpu_golden.one_family_per_case() if smoke else None
    gpu_golden.run(str(device), out=lambda r: suite.emit("golden bf16", r), families=families)


def features(suite: Suite, device: torch.device, clips: int, resamplers: list[str] | None) -> None:
    import gpu_features

    gpu_features.run(str(device), clips, out=lambda r: suite.emit("feature cache", r), resamplers=resamplers)


def resume(suite: Suite, timeout: float) -> None:
    """The killed-then-resumed runs of the test suite, on this machine's device (CUDA when present)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *RESUME_TESTS]  # each runs
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    started = time.monotonic()
    try:
        proc = subprocess.run(
            cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
        rc, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, output = (
            "timeout",
            (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else str(exc.stdout),
        )
    suite.emit("exact resume", {
        "tests": RESUME_TESTS, "returncode": rc, "seconds": round(time.monotonic() - started, 1),
        "cuda": torch.cuda.is_available(), "output_tail": output[-6000:],
    })  # fmt: skip


def schedule(sections: list[str], models: list[str]) -> list[tuple[str, str, str | None]]:
    """(name, kind, model) per section in the order given; ``train`` is one section per model."""
    names = {"golden": "golden bf16", "features": "feature cache", "resume": "exact resume"}
    plan: list[tuple[str, str, str | None]] = []
    for section in sections:
        if section == "train":
            plan += [(f"train {m}", "train", m) for m in models]
        else:
            plan.append((names[section], section, None))
    return plan


def limits(plan: list[tuple[str, str, str | None]], i: int, now: float, end: float) -> tuple[float, float]:
    """(start by, until) for section ``i`` of ``plan`` at time ``now``, the budget ending at ``end``.

    It must start while its own ``MIN_SECONDS`` and those of the sections after it are left, and end
    (a training section: start its last variant) before the later ones are owed their minimum; the
    models of ``train`` share equally what the other later sections leave.
    """
    kind = plan[i][1]
    later = [k for _, k, _ in plan[i + 1 :]]
    until = end - sum(MIN_SECONDS[k] for k in later)
    start_by = until - MIN_SECONDS[kind]
    if kind == "train":
        others = sum(MIN_SECONDS[k] for k in later if k != "train")
        until = min(until, now + (end - others - now) / (1 + later.count("train")))
    return start_by, until


def model_variants(args: argparse.Namespace, model: str) -> list[str] | None:
    """``--model-variants MODEL=a,b`` for that model, else ``--variants``, else MODEL_VARIANTS."""
    for item in args.model_variants:
        name, _, listed = item.partition("=")
        if name == model:
            return listed.split(",")
    return args.variants or MODEL_VARIANTS.get(model)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/gpu_suite")))
    parser.add_argument("--budget", type=float, default=560.0, help="seconds for the whole suite")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes, one golden family per case: the script on a CPU"
    )
    parser.add_argument(
        "--sections", nargs="+", choices=list(MIN_SECONDS), default=["train", "golden", "features", "resume"]
    )
    parser.add_argument("--models", nargs="+", default=["cnn14", "ast_base"])
    parser.add_argument("--variants", nargs="+", default=None)
    parser.add_argument("--model-variants", nargs="+", default=[], help="MODEL=variant,variant ...")
    parser.add_argument("--clips", type=int, default=256)
    parser.add_argument("--clip-seconds", type=float, default=11.0)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--compile-warmup", type=int, default=2)
    parser.add_argument("--feature-clips", type=int, default=400)
    parser.add_argument(
        "--feature-resamplers", nargs="+", default=None, help="gpu_features.py's --resamplers"
    )
    parser.add_argument("--resume-timeout", type=float, default=300.0, help="seconds for the resume tests")
    args = parser.parse_args()
    if args.smoke:
        args.models, args.clips, args.clip_seconds, args.steps, args.warmup = ["cnn_small"], 24, 3.0, 2, 1
        args.compile_warmup, args.feature_clips = 1, 40
        args.feature_resamplers = args.feature_resamplers or ["soxr_hq", "sinc"]
        args.variants = args.variants or ["fp32", "bf16", "wave_bf16_cl", "bf16_cl_ddp", "bf16_cl_loop"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    suite = Suite(args.out, args.budget)
    environment(suite, device)
    plan = schedule(args.sections, args.models)
    for i, (name, kind, model) in enumerate(plan):
        start_by, until = limits(plan, i, time.monotonic(), suite.end())
        if kind == "train":
            variants = model_variants(args, model)
            suite.section(
                name, start_by, lambda m=model, v=variants, u=until: throughput(suite, device, m, v, args, u)
            )
        elif kind == "golden":
            suite.section(name, start_by, lambda: golden(suite, device, args.smoke))
        elif kind == "features":
            suite.section(
                name, start_by, lambda: features(suite, device, args.feature_clips, args.feature_resamplers)
            )
        else:
            left = min(args.resume_timeout, max(MIN_SECONDS["resume"], until - time.monotonic()))
            suite.section(name, start_by, lambda t=left: resume(suite, t))
    suite.emit("suite", {"status": "done", "seconds": round(suite.elapsed(), 1)})


if __name__ == "__main__":
    main()
