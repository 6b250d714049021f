"""Golden fixtures for the Audio Spectrogram Transformer, made by running the official code.

Official code: github.com/YuanGongND/ast at commit 31088be8a3f6ef96416145c4b8d43c81f99eba7a
(``src/models/ast_models.py``: ``ASTModel``; ``src/dataloader.py``: ``AudiosetDataset``, whose
``_wav2fbank`` + ``__getitem__`` are the front-end: ``torchaudio.compliance.kaldi.fbank`` of the
mean-removed wave, zero padding or cutting to ``target_length``, ``(fbank - mean) / (std * 2)``),
with timm 0.4.5 (the version ``ASTModel`` asserts). Nothing of that code is copied here: it is
imported from an extracted copy and run.

Set-up (outside this repository; only add packages to the shared env, never change its torch)::

    python3 -m venv /work/golden-env
    /work/golden-env/bin/pip install torch==2.9.1 torchaudio==2.9.1 torchvision==0.24.1 librosa
    /work/golden-env/bin/pip install --no-deps timm==0.4.5
    mkdir -p /tmp/official/ast
    git --git-dir=/path/to/ast.git archive 31088be8a3f6ef96416145c4b8d43c81f99eba7a \
        | tar -x -C /tmp/official/ast        # or a clone checked out at that commit

Run from the repository root::

    /work/golden-env/bin/python tools/golden/ast_model.py --official /tmp/official/ast

Shims and monkeypatches (none changes what the official code computes; installed packages are
never edited):

- ``wget``: ``ast_models.py`` imports it to download the AudioSet checkpoint when
  ``../../pretrained_models/audioset_10_10_0.4593.pth`` is absent. A stand-in module whose
  ``download`` raises is registered, and the seeded checkpoint is written at that path (relative to
  a temporary working directory), so no network is ever tried.
- ``timm.models.helpers.load_state_dict_from_url``: timm 0.4.5's pretrained loading of
  ``vit_deit_base_distilled_patch16_384`` downloads
  ``dl.fbaipublicfiles.com/deit/deit_base_distilled_patch16_384-d0272ac0.pth``; it is replaced by a
  function returning the seeded DeiT state in that file's layout (``{"model": state}``), which
  timm's own ``checkpoint_filter_fn`` and strict ``load_state_dict`` then process.
- ``torchaudio.load``: ``_wav2fbank`` reads a file name; torchaudio 2.9 reads only through
  torchcodec, so ``load`` is replaced by a lookup returning the seeded clip (float32, 16 kHz,
  shape (1, samples)), exactly what it would read from a float WAV file of those samples.
- No ``torch._six`` shim is needed: timm 0.4.5 imports cleanly on torch 2.9.1.

Fixtures (``tests/golden/ast_<layout>_t<T>.npz``; weights are never stored, only the seed and the
key list, see ``tests/golden_weights.py``):

- ``ast_audioset_t256``: a seeded checkpoint in the official AudioSet layout at 1024 frames (the
  state dict of ``DataParallel(ASTModel(input_tdim=1024, imagenet_pretrain=False))``: ``module.v.*``
  incl. the unused ImageNet heads ``module.v.head*``, and ``module.mlp_head.{0,1}.*``), loaded by
  ``ASTModel(audioset_pretrain=True, imagenet_pretrain=True, input_tdim=256)``, which cuts the
  12x101 positional grid to its middle 12x25 columns. That path builds the inner 1024-frame model
  with ``imagenet_pretrain=False`` (so no download), loads the checkpoint with ``strict=False`` and
  then creates a *new, random* ``mlp_head``: the script checks every loaded tensor against the
  seeded one (so a silently skipped key cannot pass) and overwrites the new ``mlp_head`` with the
  checkpoint's ``module.mlp_head`` values, so the logits are those of the whole checkpoint (which
  our "ast" converter loads when the class count is 527).
- ``ast_deit_t256``: the ImageNet initialisation ``ASTModel(imagenet_pretrain=True,
  audioset_pretrain=False, input_tdim=256)`` from a seeded timm-0.4.5 DeiT-base-distilled-384 state
  (key list stored; the same names as timm's current HF safetensors file). The official code sums the
  patch weights over RGB, cuts the 24x24 positional grid to the middle 12 rows after interpolating
  its 24 columns to 25 (bilinear). Its ``mlp_head`` is random: it is overwritten with seeded values
  whose keys are stored in the same list under ``mlp_head.{0,1}.*`` (not part of the DeiT file).

Each fixture holds the seeded two-clip batch ``wave`` (2.2 s at 16 kHz, 218 fbank frames, shorter
than T = 256 so the zero padding matters; clip 0 has a DC offset, which the official global mean
removal and the per-frame DC removal both see, clip 1 ends in digital silence), ``logmel`` (the
official fbank after zero padding to T, before normalisation: ``AudiosetDataset`` with
``skip_norm``), ``model_input`` (after normalisation: ``AudiosetDataset.__getitem__``),
``embedding`` (``(x[:, 0] + x[:, 1]) / 2`` after the final norm: the input of ``mlp_head``, taken by
a forward pre-hook), ``output`` (logits), ``target_length``, ``n_frames`` and ``source``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import sys
import tempfile
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests.golden_weights import GOLDEN_DIR, pack_shapes, seeded_state, shapes_of  # noqa: E402

COMMIT = "31088be8a3f6ef96416145c4b8d43c81f99eba7a"
SOURCE = f"YuanGongND/ast@{COMMIT}"
SR = 16000
SECONDS = 2.2
T = 256  # target_length: 25 patch columns, < 101 (AudioSet grid cut) and > 24 (DeiT grid interpolated)
AUDIOSET_MEAN, AUDIOSET_STD = -4.2677393, 4.5689974  # the official AudioSet normalisation stats
SEEDS = {"audioset": 4593, "deit": 384}
WAVE_SEED = 2021
CHECKPOINT = Path("pretrained_models") / "audioset_10_10_0.4593.pth"


def golden_wave(seed: int) -> np.ndarray:
    """Two clips: tones + noise + a DC offset; a chirp with an envelope ending in digital silence."""
    rng = np.random.default_rng(seed)
    n = int(SR * SECONDS)
    t = np.arange(n) / SR
    tones = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.15 * np.sin(2 * np.pi * 2750 * t + 1.0)
    first = tones + 0.03 * rng.standard_normal(n) + 0.05
    phase = 2 * np.pi * (100 * t + (6000 - 100) / (2 * SECONDS) * t**2)  # 100 Hz -> 6 kHz
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 1.5 * t)) * 0.4
    second = envelope * np.sin(phase) + 0.01 * rng.standard_normal(n)
    second[int(1.8 * SR) :] = 0.0
    return np.stack([first, second]).astype(np.float32)


def import_official(official: Path) -> tuple[type, type]:
    """``ASTModel`` and ``AudiosetDataset`` from the extracted copy (with the ``wget`` stand-in)."""

    def no_download(url: str, out: str | None = None) -> None:
        raise RuntimeError(f"golden fixtures never download: wget.download({url!r}, out={out!r})")

    sys.modules["wget"] = types.SimpleNamespace(download=no_download)  # type: ignore[assignment]
    sys.path.insert(0, str(official / "src"))
    import dataloader  # type: ignore[import-not-found]
    import timm
    from models.ast_models import ASTModel  # type: ignore[import-not-found]

    assert timm.__version__ == "0.4.5", timm.__version__
    return ASTModel, dataloader.AudiosetDataset


@contextlib.contextmanager
def patched(obj: object, name: str, value: object) -> Iterator[None]:
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def official_fbank(dataset_cls: type, wave: np.ndarray, work: Path, skip_norm: bool) -> np.ndarray:
    """``AudiosetDataset(...)[i]`` for each clip, in evaluation mode (no mixup, masking or noise)."""
    import torchaudio

    names = [f"clip{i}.wav" for i in range(len(wave))]
    (work / "data.json").write_text(json.dumps({"data": [{"wav": n, "labels": "/m/golden"} for n in names]}))
    with open(work / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([["index", "mid", "display_name"], [0, "/m/golden", "golden"]])
    conf = dict(
        num_mel_bins=128,
        target_length=T,
        freqm=0,
        timem=0,
        mixup=0.0,
        dataset="audioset",
        mode="evaluation",
        mean=AUDIOSET_MEAN,
        std=AUDIOSET_STD,
        noise=False,
        skip_norm=skip_norm,
    )
    clips = {n: torch.from_numpy(w.copy())[None] for n, w in zip(names, wave, strict=True)}
    dataset = dataset_cls(str(work / "data.json"), conf, label_csv=str(work / "labels.csv"))
    with patched(torchaudio, "load", lambda name: (clips[name].clone(), SR)):
        return np.stack([dataset[i][0].numpy() for i in range(len(names))])


def set_mlp_head(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Overwrite the official (randomly initialised) ``mlp_head`` with the ``mlp_head.*`` of ``state``."""
    head = {k.removeprefix("mlp_head."): v for k, v in state.items() if k.startswith("mlp_head.")}
    missing, unexpected = model.mlp_head.load_state_dict(head, strict=True)
    assert not missing and not unexpected


def check_loaded(model: torch.nn.Module, expected: dict[str, torch.Tensor], skip: tuple[str, ...]) -> None:
    """Every tensor the official model took from the checkpoint equals the seeded one."""
    have = model.state_dict()
    for key, value in expected.items():
        if not key.startswith(skip):
            assert torch.equal(have[key], value), f"official model did not load {key}"


def run_official(model: torch.nn.Module, model_input: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logits and the pooled token (the input of ``mlp_head``) of the official forward, eval mode."""
    pooled: list[torch.Tensor] = []
    hook = model.mlp_head.register_forward_pre_hook(lambda _m, args: pooled.append(args[0].detach().clone()))
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(model_input))
    hook.remove()
    return logits.float().numpy(), pooled[0].float().numpy()


def audioset_model(ast_cls: type, work: Path, seed: int) -> tuple[torch.nn.Module, list]:
    """``ASTModel(audioset_pretrain=True, input_tdim=T)`` from a seeded 1024-frame AudioSet checkpoint."""
    layout = torch.nn.DataParallel(
        ast_cls(input_tdim=1024, imagenet_pretrain=False, audioset_pretrain=False, verbose=False)
    )
    shapes = shapes_of(layout.state_dict())
    state = seeded_state(shapes, seed)
    run_dir = work / "audioset" / "egs" / "audioset"  # official recipes run from egs/<dataset>/
    run_dir.mkdir(parents=True)
    (work / "audioset" / CHECKPOINT).parent.mkdir()
    torch.save(state, work / "audioset" / CHECKPOINT)
    with contextlib.chdir(run_dir):
        model = ast_cls(label_dim=527, input_tdim=T, imagenet_pretrain=True, audioset_pretrain=True)
    inner = {k.removeprefix("module."): v for k, v in state.items()}
    check_loaded(model, inner, skip=("mlp_head.", "v.pos_embed", "v.head"))
    assert torch.equal(model.v.pos_embed[:, :2], inner["v.pos_embed"][:, :2])
    set_mlp_head(model, inner)
    return model, shapes


def deit_model(ast_cls: type, seed: int) -> tuple[torch.nn.Module, list]:
    """``ASTModel(imagenet_pretrain=True, input_tdim=T)`` from a seeded timm-0.4.5 DeiT-384 state."""
    import timm
    import timm.models.helpers

    deit = timm.create_model("vit_deit_base_distilled_patch16_384", pretrained=False)
    deit_shapes = shapes_of(deit.state_dict())
    head_shapes = [("mlp_head.0.weight", (768,)), ("mlp_head.0.bias", (768,))]
    head_shapes += [("mlp_head.1.weight", (527, 768)), ("mlp_head.1.bias", (527,))]
    state = seeded_state(deit_shapes + head_shapes, seed)
    deit_state = {k: v for k, v in state.items() if not k.startswith("mlp_head.")}
    urls: list[str] = []

    def seeded_download(url: str, **_kwargs: object) -> dict:
        urls.append(url)
        return {"model": {k: v.clone() for k, v in deit_state.items()}}  # the DeiT release's layout

    with patched(timm.models.helpers, "load_state_dict_from_url", seeded_download):
        model = ast_cls(label_dim=527, input_tdim=T, imagenet_pretrain=True, audioset_pretrain=False)
    assert urls == ["https://dl.fbaipublicfiles.com/deit/deit_base_distilled_patch16_384-d0272ac0.pth"], urls
    skip = ("patch_embed.", "pos_embed", "head.", "head_dist.")
    check_loaded(model.v, deit_state, skip=skip)
    set_mlp_head(model, state)
    return model, deit_shapes + head_shapes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--official", type=Path, required=True, help="extracted YuanGongND/ast at " + COMMIT)
    parser.add_argument("--out", type=Path, default=GOLDEN_DIR)
    args = parser.parse_args()
    official = args.official.resolve()
    ast_cls, dataset_cls = import_official(official)
    torch.manual_seed(0)  # the official random initialisations are all overwritten; fixed for repeatability
    wave = golden_wave(WAVE_SEED)
    n_frames = 1 + (wave.shape[1] - 400) // 160
    assert n_frames < T
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        logmel = official_fbank(dataset_cls, wave, work, skip_norm=True)
        model_input = official_fbank(dataset_cls, wave, work, skip_norm=False)
        assert logmel.shape == (2, T, 128) and np.all(logmel[:, n_frames:] == 0.0)
        for layout, seed in SEEDS.items():
            if layout == "audioset":
                model, shapes = audioset_model(ast_cls, work, seed)
            else:
                model, shapes = deit_model(ast_cls, seed)
            output, embedding = run_official(model, model_input)
            path = args.out / f"ast_{layout}_t{T}.npz"
            np.savez_compressed(
                path,
                seed=np.int64(seed),
                **pack_shapes(shapes),
                wave=wave,
                sample_rate=np.int64(SR),
                target_length=np.int64(T),
                n_frames=np.int64(n_frames),
                logmel=logmel.astype(np.float32),
                model_input=model_input.astype(np.float32),
                embedding=embedding,
                output=output,
                source=np.array(SOURCE),
            )
            size = path.stat().st_size / 1e6
            print(f"{path}: {size:.2f} MB, logits {output.shape}, max |logit| {abs(output).max():.3g}")


if __name__ == "__main__":
    main()
