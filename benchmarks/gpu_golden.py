"""Golden outputs under bf16: the pretrained families' outputs stay within a stated tolerance of fp32.

For each golden fixture family (``tests/golden/*.npz``, written from the official code) this builds
our model exactly as ``tests/test_golden_*.py`` does (seeded weights saved in the official file
format, then our real loading path ``load_pretrained``), moves it and its inputs to the device, and
computes the outputs those tests check:

1. in fp32, with TF32 switched off for both cuDNN convolutions and CUDA matmuls (PyTorch's defaults
   are ``torch.backends.cudnn.allow_tf32 = True`` and ``torch.backends.cuda.matmul.allow_tf32 =
   False``; the project never changes them, so on a GPU its "fp32" convolutions are TF32). This is
   the reference, and it is also checked against the official golden values (a sanity check that
   the model is right on this device);
2. under ``torch.autocast(device_type, dtype=torch.bfloat16)`` with the TF32 flags as PyTorch's
   defaults leave them (what training and prediction run under: ``train/engine.py``);
3. on CUDA only, in fp32 with PyTorch's default TF32 flags (the project's ``precision: fp32`` on a
   GPU), reported as precision ``tf32``.

The log-mel front-end runs in fp32 outside autocast, as the project does: features come from the
cache (computed on the CPU in float32 by ``compute_logmel``) or from ``Tagger.logmel``, which runs
the front-end with autocast disabled and is called before ``engine.autocast()`` in
``train/epoch.py``. Here, as in the golden tests, ``compute_logmel`` makes the log-mel on the CPU;
the input normalisation ``(x - mean) / std`` stays float32 under autocast (elementwise ops keep
their input dtype). Sigmoid probabilities are taken of ``logits.float()``, as ``train/predict.py``
does.

Reported per output: ``fp32_vs_golden`` = max |fp32 - official| and ``fp32_golden_rel`` = that over
max |official|; ``max_abs`` = max |bf16 - fp32|, ``scale`` = max |fp32|, ``rel`` = max_abs / scale;
for classifier logits the mean top-5 set overlap and the mean Spearman rank correlation (over the
batch) between bf16 and fp32; ``pass``.

Usage::

    .venv/bin/python benchmarks/gpu_golden.py --device auto [--jsonl rows.jsonl]

On the 2-core CPU machine ``--device cpu`` takes about 45 s (AVX512-BF16 autocast); exit status 1
when a row fails.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO / "src", REPO):  # ``tests.test_golden_*`` and the working tree's ``audiotag``
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

# --------------------------------------------------------------------------------------- tolerances
#
# bf16 keeps 8 significant bits (7 stored): one rounding is off by up to 2^-9 = 0.2 % (0.4 % between
# neighbouring values), and an output is a sum of many rounded products through 4..12 layers, so
# errors relative to the output's largest value of a few tenths of a percent up to ~1 % are what
# bf16 gives. Measured with CPU bf16 autocast (2-core AMD EPYC with AVX512-BF16, torch 2.14.1,
# Python 3.11; seeded weights except aisfx, whose real weights ship in its wheel), rel = max|bf16 -
# fp32| / max|fp32|:
#   PANNs CNN14 32k/16k, CNN10, CNN6   embeddings 3.7e-3..6.8e-3, logits 5.2e-3..6.4e-3
#   AST audioset / DeiT (T = 256)      embeddings 4.6e-3 / 5.2e-3, logits 6.8e-3 / 5.6e-3
#   BYOL-A 512/1024/2048               frame features 6.2e-3..7.5e-3, embeddings 4.9e-3..6.5e-3
#   aisfx (real weights)               embedding 8.8e-3
#   timm efficientnet_b0 / resnet18    features 4.6e-3 / 9.7e-3, embeddings 2.7e-3 / 7.5e-3
#   clip-wise probabilities            1.2e-3 (CNN14 32k) .. 2.0e-2 absolute (CNN6)
#   logits' top-5 sets                 equal (overlap 1.0), Spearman over 527 classes >= 0.99995
# REL_TOL = 2e-2 is 2x over the worst of these (resnet18's feature map, 0.97 %). cuDNN / cuBLAS bf16
# kernels accumulate in fp32 as oneDNN does on the CPU; they round the same inputs and weights to
# bf16, only the summation order and tiling differ, so figures of the same size are expected. A real
# error (a norm or softmax left in bf16 where autocast keeps fp32, a front-end run in bf16, an
# overflow) moves these by several percent or gives inf/NaN (a row with a non-finite value fails).
# Probabilities: sigmoid's slope is at most 1/4, so a probability moves by at most a quarter of its
# logit's error; the seeded CNN6's logits reach 23 (0.12 absolute error at 0.5 %), hence 0.02 on
# its probabilities. PROB_ATOL = 5e-2 is 2.5x over that (the logits row holds the strict bound).
REL_TOL = 2e-2  # embeddings, frame features, logits: max|bf16 - fp32| <= 2e-2 * max|fp32|
PROB_ATOL = 5e-2  # sigmoid outputs (0..1): max|bf16 - fp32| <= 5e-2 absolute
TOP5_MIN = 0.8  # classifier logits: on average at least 4 of the fp32 top 5 are in the bf16 top 5
# The fp32 reference against the official golden values: the golden tests hold float32 on the CPU
# to 1e-5..1e-4 absolute (measured 1e-7..3e-5); a device's float32 kernels sum in another order, so
# this sanity bound is relative to the output's scale and loose. A wrong model is off by 1e-1 or more.
FP32_GOLDEN_REL = 1e-4
# TF32 (10-bit mantissa) on CUDA: reported for information with the same bound as bf16.
TF32_REL_TOL = REL_TOL

Forward = Callable[[nn.Module, torch.Tensor], dict[str, torch.Tensor]]


@dataclass
class Case:
    """One fixture: our loaded model, its input, what to compute and the official values."""

    family: str
    model: nn.Module
    inputs: torch.Tensor
    forward: Forward
    golden: dict[str, np.ndarray]  # output name -> official value (None: no golden value)
    kinds: dict[str, str]  # output name -> "embedding" | "features" | "logits" | "prob"
    note: str = ""


# ------------------------------------------------------------------------------------------ families


def panns_case(name: str, tmp: Path) -> Case:
    from audiotag.data.features import compute_logmel
    from tests import test_golden_panns as t
    from tests.golden_weights import load_fixture

    fixture = load_fixture(name)
    features = t.features_config(t.CASES[name][1])
    logmel = np.stack([compute_logmel(w, features) for w in fixture["wave"]])  # fp32, our front-end
    model = t.loaded_model(fixture, name, t.official_checkpoint(fixture, tmp / f"{name}.pth"))

    def forward(m: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
        seq = m.backbone(x)  # as the golden test: embedding from the backbone, logits from the Tagger
        logits = m(x)
        return {
            "embedding": m.head.embedding(seq),
            "logits": logits,
            "clipwise_output": torch.sigmoid(logits.float()),
        }

    golden = {
        "embedding": fixture["embedding"],
        "logits": fixture["logits"],
        "clipwise_output": fixture["output"],
    }
    kinds = {"embedding": "embedding", "logits": "logits", "clipwise_output": "prob"}
    return Case(name, model, torch.from_numpy(logmel), forward, golden, kinds)


def ast_case(name: str, tmp: Path) -> Case:
    import pytest

    from tests import test_golden_ast as t
    from tests.golden_weights import load_fixture

    fixture = load_fixture(name)
    model = t.our_tagger(fixture, tmp, pytest.MonkeyPatch())  # ``our_tagger`` patches in a context
    logmel = t.our_logmel(fixture)  # our Kaldi fbank, padded to T = 256, fp32

    def forward(m: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled: list[
            torch.Tensor
        ] = []  # the pooled token the head's LayerNorm gets (official mlp_head input)
        hook = m.head.norm.register_forward_pre_hook(lambda _m, args: pooled.append(args[0]))
        try:
            logits = m(x)
        finally:
            hook.remove()
        return {"embedding": pooled[0], "logits": logits}

    golden = {"embedding": fixture["embedding"], "logits": fixture["output"]}
    return Case(
        name, model, torch.from_numpy(logmel), forward, golden, {"embedding": "embedding", "logits": "logits"}
    )


def byola_case(name: str, tmp: Path) -> Case:
    from tests import test_golden_byola as t
    from tests.golden_weights import load_fixture

    if name == "byola512_real":
        from audiotag.fetch.weights import cached_path
        from audiotag.models.registry import lookup

        path = cached_path(lookup("byola512"))
        if not path.is_file():
            raise Skip(f"{path.name} not in the weights cache (./run.sh weights fetch byola512)")
        fixture = load_fixture(name)
        model = t.loaded_tagger(fixture, 512, "byola512", offline=True)
    else:
        dim = int(name.removeprefix("byola"))
        fixture = load_fixture(name)
        model = t.loaded_tagger(fixture, dim, str(t.seeded_checkpoint(fixture, tmp, dim)))
    logmel = t.our_logmel(fixture)

    def forward(m: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
        seq = m.backbone((x - m.norm_mean) / m.norm_std)
        return {"frame_features": seq, "embedding": m.head.embedding(seq)}

    golden = {"frame_features": fixture["frame_features"], "embedding": fixture["embedding"]}
    kinds = {"frame_features": "features", "embedding": "embedding"}
    return Case(name, model, torch.from_numpy(logmel), forward, golden, kinds)


def aisfx_case(name: str, tmp: Path) -> Case:
    if importlib.util.find_spec("aisfx") is None:
        raise Skip("the aisfx package is not installed (requirements-nodeps.lock): its weights ship in it")
    from audiotag.data.features import compute_logmel
    from tests import test_golden_aisfx as t
    from tests.golden_weights import load_fixture

    fixture = load_fixture(name)
    features = t.aisfx_features()
    model, report = t.aisfx_model(features)
    assert report is not None and all(k.startswith("head.") for k in report.missing)
    logmel = np.stack([compute_logmel(w, features) for w in fixture["wave"]])

    def forward(m: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"embedding": m.head.embedding(m.backbone((x - m.norm_mean) / m.norm_std))}

    return Case(
        name,
        model.eval(),
        torch.from_numpy(logmel),
        forward,
        {"embedding": fixture["embedding"]},
        {"embedding": "embedding"},
    )


def timm_case(name: str, tmp: Path) -> Case:
    from tests import test_golden_timm as t
    from tests.golden_weights import load_fixture

    fixture = load_fixture(name)
    model, report, image = t.loaded_timm(fixture, tmp / f"{name}.safetensors")
    assert report is not None and report.adapted and not report.unexpected

    def forward(m: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "features": m.backbone.model.forward_features(x),
            "embedding": m.backbone(x[:, 0].transpose(1, 2)).mean(dim=1),  # our layout (batch, frames, mels)
        }

    golden = {"features": fixture["features"], "embedding": fixture["embedding"]}
    return Case(
        name, model.eval(), image, forward, golden, {"features": "features", "embedding": "embedding"}
    )


FAMILIES: dict[str, Callable[[str, Path], Case]] = {
    "panns_cnn14_32k": panns_case,
    "panns_cnn14_16k": panns_case,
    "panns_cnn10": panns_case,
    "panns_cnn6": panns_case,
    "ast_audioset_t256": ast_case,
    "ast_deit_t256": ast_case,
    "byola512": byola_case,
    "byola1024": byola_case,
    "byola2048": byola_case,
    "byola512_real": byola_case,
    "aisfx_real": aisfx_case,
    "timm_efficientnet_b0": timm_case,
    "timm_resnet18": timm_case,
}


class Skip(Exception):
    """A family that cannot run here (a package or weights file missing): a row with ``skipped``."""


# ------------------------------------------------------------------------------------------ measuring


@contextlib.contextmanager
def tf32(enabled: bool | None) -> Iterator[None]:
    """TF32 for cuDNN convolutions and CUDA matmuls on (True), off (False) or as they are (None)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    if enabled is not None:
        torch.backends.cudnn.allow_tf32 = enabled
        torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@torch.no_grad()
def outputs(case: Case, x: torch.Tensor, device: torch.device, precision: str) -> dict[str, np.ndarray]:
    """The case's outputs as float64 numpy arrays, in ``precision`` fp32 (TF32 off), bf16 or tf32."""
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    with tf32(False if precision == "fp32" else None), autocast:
        result = case.forward(case.model, x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {k: v.detach().float().cpu().numpy().astype(np.float64) for k, v in result.items()}


def ranks(values: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(values, axis=-1), axis=-1).astype(np.float64)


def classifier_agreement(test: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """Mean top-5 set overlap and mean Spearman rank correlation over the batch (rows = clips)."""
    top5 = [
        len(set(np.argsort(-t)[:5]) & set(np.argsort(-r)[:5])) / 5 for t, r in zip(test, ref, strict=True)
    ]
    rt, rr = ranks(test), ranks(ref)
    rt -= rt.mean(axis=-1, keepdims=True)
    rr -= rr.mean(axis=-1, keepdims=True)
    rho = (rt * rr).sum(-1) / np.sqrt((rt**2).sum(-1) * (rr**2).sum(-1))
    return float(np.mean(top5)), float(np.mean(rho))


def compare(case: Case, name: str, ref: np.ndarray, test: np.ndarray, precision: str) -> dict:
    kind = case.kinds[name]
    golden = case.golden.get(name)
    row: dict = {"family": case.family, "output": name, "kind": kind, "precision": precision}
    row["shape"] = "x".join(str(s) for s in ref.shape)
    if golden is not None:
        assert golden.shape == ref.shape, (case.family, name, golden.shape, ref.shape)
        g = golden.astype(np.float64)
        row["fp32_vs_golden"] = float(np.abs(ref - g).max())
        row["fp32_golden_rel"] = row["fp32_vs_golden"] / max(float(np.abs(g).max()), 1e-12)
    scale = float(np.abs(ref).max())
    diff = float(np.abs(test - ref).max())
    row.update(scale=scale, max_abs=diff, rel=diff / max(scale, 1e-12))
    if golden is not None:
        row["vs_golden_rel"] = float(np.abs(test - golden).max()) / max(float(np.abs(golden).max()), 1e-12)
    ok = (
        row["max_abs"] <= PROB_ATOL
        if kind == "prob"
        else row["rel"] <= (TF32_REL_TOL if precision == "tf32" else REL_TOL)
    )
    row["tol"] = f"abs<={PROB_ATOL:g}" if kind == "prob" else f"rel<={REL_TOL:g}"
    if kind == "logits":
        row["top5"], row["spearman"] = classifier_agreement(test, ref)
        ok = ok and row["top5"] >= TOP5_MIN
        row["tol"] += f",top5>={TOP5_MIN:g}"
    row["fp32_ok"] = golden is None or row["fp32_golden_rel"] <= FP32_GOLDEN_REL
    row["pass"] = bool(ok and row["fp32_ok"] and np.isfinite(test).all())
    return row


def one_family_per_case() -> list[str]:
    """The first family of each case builder: every code path of the script, a fraction of its time
    (a CPU smoke run of the suite)."""
    first: dict[Callable[[str, Path], Case], str] = {}
    for family, case in FAMILIES.items():
        first.setdefault(case, family)
    return list(first.values())


def run_family(family: str, device: torch.device, tmp: Path) -> list[dict]:
    start = time.perf_counter()
    case = FAMILIES[family](family, tmp)
    case.model.to(device).eval()
    x = case.inputs.to(device)
    precisions = ["bf16", *(["tf32"] if device.type == "cuda" else [])]
    outputs(case, x, device, "fp32")  # warm-up (cuDNN algorithm choice, lazy inits); not compared
    ref = outputs(case, x, device, "fp32")
    rows = []
    for precision in precisions:
        test = outputs(case, x, device, precision)
        rows += [compare(case, name, ref[name], test[name], precision) for name in case.kinds]
    seconds = time.perf_counter() - start
    for row in rows:
        row["seconds"] = round(seconds, 2)
    case.model.cpu()
    return rows


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def run(
    device: str, out: Callable[[dict], None] | None = None, families: list[str] | None = None
) -> list[dict]:
    """Every family's rows (one per output and precision); ``out(row)`` is called after each row.

    A family that fails gives one row with ``error`` (and ``pass`` False); one that cannot run here
    (package or weights missing) one row with ``skipped`` (and ``pass`` None).
    """
    dev = resolve_device(device)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="gpu_golden_") as folder:
        for family in families or list(FAMILIES):
            tmp = Path(folder) / family
            tmp.mkdir()
            try:
                new = run_family(family, dev, tmp)
            except Skip as skip:
                new = [{"family": family, "skipped": str(skip), "pass": None}]
            except Exception as exc:  # one family's failure must not stop the others
                new = [
                    {
                        "family": family,
                        "error": f"{type(exc).__name__}: {exc}",
                        "traceback": traceback.format_exc(limit=6),
                        "pass": False,
                    }
                ]
            for row in new:
                row["device"] = str(dev)
                rows.append(row)
                if out is not None:
                    out(row)
    return rows


# ------------------------------------------------------------------------------------------ reporting


def environment(device: torch.device) -> dict:
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cudnn.allow_tf32 (default)": torch.backends.cudnn.allow_tf32,
        "cuda.matmul.allow_tf32 (default)": torch.backends.cuda.matmul.allow_tf32,
    }
    if device.type == "cuda":
        try:
            env["gpu"] = torch.cuda.get_device_name(device)
            env["bf16_supported"] = torch.cuda.is_bf16_supported()
        except (RuntimeError, AssertionError) as exc:  # no driver: each family's row says so too
            env["gpu"] = f"unavailable: {exc}"
    else:
        env["cpu"] = platform.processor() or platform.machine()
    return env


def fmt(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "NO", None: "-"}[value]
    if isinstance(value, float):
        return f"{value:.2g}" if value < 0.995 else f"{value:.3g}"
    return str(value)


COLUMNS = [
    ("family", "family"),
    ("output", "output"),
    ("precision", "prec"),
    ("shape", "shape"),
    ("fp32_vs_golden", "fp32-gold"),
    ("scale", "max|fp32|"),
    ("max_abs", "max|d|"),
    ("rel", "rel"),
    ("top5", "top5"),
    ("spearman", "rho"),
    ("tol", "tolerance"),
    ("pass", "pass"),
]


def table(rows: list[dict]) -> str:
    cells = [[title for _, title in COLUMNS]]
    notes = []
    for row in rows:
        if "error" in row or "skipped" in row:
            what = "ERROR" if "error" in row else "skipped"
            notes.append(f"{row['family']}: {what}: {row.get('error') or row.get('skipped')}")
            cells.append([row["family"], what] + [""] * (len(COLUMNS) - 3) + [fmt(row["pass"])])
            continue
        cells.append([fmt(row.get(key, "")) if key in row else "" for key, _ in COLUMNS])
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + notes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--jsonl", type=Path, help="append each row to this file as it is measured")
    parser.add_argument("--family", action="append", choices=list(FAMILIES), help="only these (repeatable)")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    env = environment(device)
    print(json.dumps(env), flush=True)
    sink = args.jsonl.open("a") if args.jsonl else None

    def out(row: dict) -> None:
        brief = {k: row[k] for k in ("family", "output", "precision", "rel", "max_abs", "pass") if k in row}
        print(json.dumps(brief if "error" not in row else row), flush=True)
        if sink is not None:
            sink.write(json.dumps(row) + "\n")
            sink.flush()

    start = time.perf_counter()
    try:
        if sink is not None:
            sink.write(json.dumps({"environment": env}) + "\n")
        rows = run(args.device, out, args.family)
    finally:
        if sink is not None:
            sink.close()
    print()
    print(table(rows))
    failed = [r for r in rows if r["pass"] is False]
    print(
        f"\n{len(rows)} rows, {len(failed)} failed, {sum(r['pass'] is None for r in rows)} skipped; "
        f"{time.perf_counter() - start:.1f} s on {device}. Tolerances: rel<={REL_TOL:g} of max|fp32| "
        f"(embeddings, features, logits), abs<={PROB_ATOL:g} (probabilities), top-5 overlap>={TOP5_MIN:g}, "
        f"fp32 within {FP32_GOLDEN_REL:g} of the golden scale (TF32 off for the fp32 reference)."
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
