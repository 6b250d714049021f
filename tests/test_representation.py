"""Layer fusion (models/representation.py) against a hand computation on the hooked layer outputs.

For CNN14 (seeded weights of ``tests/golden/panns_cnn14_16k.npz``), AST (``ast_audioset_t256``),
BYOL-A (``byola512``) and aisfx (its real weights from the installed wheel), forward hooks capture the
raw outputs of the chosen layers, and numpy forms the fusion as the authors' code does
(``GeneralPurposeCnn14.encode_frames`` + ``mean_max_pooling``; ``AR_AST_Fusion.forward``;
``AudioNTT2020Task6X``): non-overlapping max pooling over time to the last block's frame rate,
channel-major flattening, max + mean over time; LayerNorm and the averaged class tokens; adjoining-
frame averaging. The model's own embedding (and BYOL-A's last layer) are checked against the
official outputs stored in the fixtures.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from audiotag.config.files import load_group, validate
from audiotag.config.schema import FeatureConfig, InputNorm
from audiotag.core.errors import ConfigError
from audiotag.models.ast import AstBackbone
from audiotag.models.loading import load_converted
from audiotag.models.registry import family_of
from audiotag.models.representation import (
    EmbeddingConfig,
    Representation,
    available_layers,
    model_config,
    resolve_layers,
)
from tests.golden_weights import assert_close, fixture_state, load_fixture

TOL = 1e-5


def features(name: str) -> FeatureConfig:
    return validate(FeatureConfig, load_group("features", name), name)


def load_seeded(rep: Representation, family: str, layout: str, state: dict[str, torch.Tensor]) -> None:
    """Our converter and loader, as ``load_pretrained`` runs them, on the fixture's seeded state."""
    converted = family_of(family).converters[layout](state)
    prepare = getattr(rep.tagger.backbone, "prepare_checkpoint", None)
    if prepare is not None:
        converted = prepare(converted)
    with torch.no_grad():
        load_converted(rep.tagger, converted, source="seeded")


def hooked(modules: dict[str, nn.Module]) -> tuple[dict[str, np.ndarray], list]:
    """Forward hooks that keep each module's output as a float64 array."""
    seen: dict[str, np.ndarray] = {}
    handles = []
    for name, module in modules.items():

        def keep(_m, _inputs, output, name: str = name) -> None:
            seen[name] = output.detach().double().numpy()

        handles.append(module.register_forward_hook(keep))
    return seen, handles


def mean_max(frames: np.ndarray) -> np.ndarray:
    """(batch, time, dim) -> max over time + mean over time (the authors' ``mean_max_pooling``)."""
    return frames.max(axis=1) + frames.mean(axis=1)


def cnn_layer(fmap: np.ndarray, ratio: int, frames: int) -> np.ndarray:
    """(batch, C, T, F) -> (batch, frames, C*F): max over groups of ``ratio`` frames, channel-major."""
    batch, channels, time, bins = fmap.shape
    kept = time // ratio
    pooled = fmap[:, :, : kept * ratio].reshape(batch, channels, kept, ratio, bins).max(axis=3)
    pooled = pooled[:, :, :frames]
    return pooled.transpose(0, 2, 1, 3).reshape(batch, pooled.shape[2], channels * bins)


def encode(rep: Representation, x: np.ndarray, layers: list[str]) -> dict[str, np.ndarray]:
    return rep.encode(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), layers)


# ----------------------------------------------------------------------------- CNN14


@pytest.fixture(scope="module")
def cnn14() -> Representation:
    fixture = load_fixture("panns_cnn14_16k")
    rep = Representation(EmbeddingConfig(model="cnn14"), features("panns_16k"))
    load_seeded(rep, "cnn", "panns", fixture_state(fixture))
    return rep


def test_cnn14_fusion_3_6_is_6144_values_as_the_paper_forms_them(cnn14: Representation) -> None:
    x = np.random.default_rng(0).normal(-20, 10, (2, 203, 64))  # 203 frames: odd counts at every block
    backbone = cnn14.tagger.backbone
    seen, handles = hooked({"3": backbone.conv_block3, "6": backbone.conv_block6})
    try:
        out = encode(cnn14, x, ["3", "6"])
    finally:
        for h in handles:
            h.remove()
    assert seen["3"].shape == (2, 256, 25, 8) and seen["6"].shape == (2, 2048, 6, 2)
    frames = np.concatenate([cnn_layer(seen["3"], 4, 6), cnn_layer(seen["6"], 1, 6)], axis=2)
    assert frames.shape == (2, 6, 6144)  # 256 x 8 + 2048 x 2, the authors' example prints 6144
    fused = np.concatenate([out["3"], out["6"]], axis=1)
    assert_close(torch.from_numpy(fused), mean_max(frames), TOL, TOL, "CNN14-Fusion#3#6")


def test_cnn14_block_1_is_pooled_by_16_and_the_embedding_is_the_official_one(cnn14: Representation) -> None:
    fixture = load_fixture("panns_cnn14_16k")
    backbone = cnn14.tagger.backbone
    seen, handles = hooked({"1": backbone.conv_block1})
    try:
        out = encode(cnn14, fixture["logmel"], ["1", "embedding"])
    finally:
        for h in handles:
            h.remove()
    last = fixture["logmel"].shape[1] // 32  # 151 frames -> 4 after the five 2x2 poolings
    assert_close(torch.from_numpy(out["1"]), mean_max(cnn_layer(seen["1"], 16, last)), TOL, TOL, "block 1")
    assert out["1"].shape == (2, 64 * 32)
    assert_close(torch.from_numpy(out["embedding"]), fixture["embedding"], TOL, TOL, "official fc1 embedding")


# ----------------------------------------------------------------------------- AST


def test_ast_fusion_5_12_is_the_layernormed_class_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    fixture = load_fixture("ast_audioset_t256")
    state = fixture_state(fixture)
    cfg = EmbeddingConfig(model="ast_base", window_seconds=2.56)  # 256 frames, the fixture's length
    with monkeypatch.context() as patch:  # every tensor is overwritten below; skip the slow random init
        patch.setattr(AstBackbone, "_init_weights", lambda _self: None)
        patch.setattr(nn.Linear, "reset_parameters", lambda _self: None)
        rep = Representation(cfg, features("ast_kaldi_128"), device="cpu")
    load_seeded(rep, "ast", "ast", state)
    backbone = rep.tagger.backbone
    seen, handles = hooked({"5": backbone.blocks[4], "12": backbone.blocks[11]})
    try:
        out = encode(rep, fixture["logmel"], ["5", "12", "embedding"])
    finally:
        for h in handles:
            h.remove()
    weight = backbone.norm.weight.detach().double().numpy()
    bias = backbone.norm.bias.detach().double().numpy()
    for layer in ("5", "12"):
        tokens = seen[layer]
        normed = (tokens - tokens.mean(-1, keepdims=True)) / np.sqrt(tokens.var(-1, keepdims=True) + 1e-6)
        normed = normed * weight + bias
        expected = (normed[:, 0] + normed[:, 1]) / 2
        assert_close(torch.from_numpy(out[layer]), expected, 1e-4, 1e-5, f"AST block {layer}")
    assert np.concatenate([out["5"], out["12"]], axis=1).shape == (2, 1536)
    assert_close(torch.from_numpy(out["12"]), fixture["embedding"], 1e-4, 0, "block 12 = official embedding")
    assert_close(torch.from_numpy(out["embedding"]), fixture["embedding"], 1e-4, 0, "AST embedding")


# ----------------------------------------------------------------------------- BYOL-A


def halve_to(v: np.ndarray, target: int) -> np.ndarray:
    """AudioNTT2020Task6X's alignment, written out: average adjoining frames (an odd count first
    averages its last two) until ``target`` frames remain."""
    while v.shape[1] > target:
        if v.shape[1] % 2:
            v = np.concatenate([v[:, :-2], v[:, -2:].mean(axis=1, keepdims=True)], axis=1)
        v = (v[:, 0::2] + v[:, 1::2]) / 2
    return v


def test_byola_layers_align_as_task6x_and_layer_5_is_the_official_embedding(tmp_path: Path) -> None:
    fixture = load_fixture("byola512")
    path = tmp_path / "AudioNTT2020-BYOLA-64x96d512.pth"
    torch.save(fixture_state(fixture), path)
    norm = InputNorm(mean=float(fixture["norm_mean"]), std=float(fixture["norm_std"]))
    rep = Representation(EmbeddingConfig(weights=str(path), model="byola512"), features("byola_16k_64"), norm)
    logmel = fixture["logmel"].transpose(0, 2, 1)  # official (batch, mels, frames) -> ours
    enc = rep.tagger.backbone
    seen, handles = hooked(
        {"1": enc.features[3], "2": enc.features[7], "3": enc.features[11], "4": enc.fc[1], "5": enc.fc}
    )
    try:
        out = encode(rep, logmel, ["1", "2", "3", "4", "5"])
    finally:
        for h in handles:
            h.remove()
    target = logmel.shape[1] // 8
    assert target == fixture["frame_features"].shape[1] == 18
    for layer in ("1", "2", "3"):
        fmap = seen[layer]  # (batch, ch, mel, time)
        batch, channels, mels, frames = fmap.shape
        flat = fmap.transpose(0, 3, 1, 2).reshape(batch, frames, channels * mels)
        expected = mean_max(halve_to(flat, target))
        assert out[layer].shape == (2, 64 * mels)
        assert_close(torch.from_numpy(out[layer]), expected, TOL, TOL, f"BYOL-A conv{layer}")
    assert_close(torch.from_numpy(out["4"]), mean_max(seen["4"]), TOL, TOL, "BYOL-A fc1")
    assert_close(torch.from_numpy(out["5"]), fixture["embedding"], TOL, TOL, "official BYOL-A embedding")
    assert_close(torch.from_numpy(out["5"]), mean_max(fixture["frame_features"]), TOL, TOL, "official frames")


# ----------------------------------------------------------------------------- aisfx (real weights)


@pytest.mark.skipif(importlib.util.find_spec("aisfx") is None, reason="aisfx is not installed")
def test_aisfx_fusion_with_the_real_weights() -> None:
    fixture = load_fixture("aisfx_real")
    rep = Representation(EmbeddingConfig(weights="aisfx"), features("aisfx_44k_96"))
    backbone = rep.tagger.backbone
    seen, handles = hooked({"2": backbone.conv_block2, "4": backbone.conv_block4})
    try:
        out = encode(rep, fixture["logmel"], ["2", "4", "embedding"])
    finally:
        for h in handles:
            h.remove()
    last = seen["4"].shape[2]
    assert seen["2"].shape[1:] == (128, 25, 24) and seen["4"].shape[1:] == (512, 12, 12)
    frames = np.concatenate([cnn_layer(seen["2"], 2, last), cnn_layer(seen["4"], 1, last)], axis=2)
    assert frames.shape == (2, 12, 128 * 24 + 512 * 12)
    fused = np.concatenate([out["2"], out["4"]], axis=1)
    assert_close(torch.from_numpy(fused), mean_max(frames), TOL, TOL, "aisfx fusion 2+4")
    # the model's own embedding: max over time of the frequency-averaged last block (aisfx's)
    assert_close(torch.from_numpy(out["embedding"]), fixture["embedding"], 1e-5, 1e-5, "aisfx embedding")


# ----------------------------------------------------------------------------- layer names


def test_layer_names_defaults_and_refusals() -> None:
    cnn14, ast, byola = (model_config(EmbeddingConfig(model=m)) for m in ("cnn14", "ast_base", "byola512"))
    assert resolve_layers(cnn14, "default") == ["3", "6"]
    assert resolve_layers(ast, "default") == ["5", "12"]
    assert resolve_layers(byola, "default") == ["5"]
    assert resolve_layers(model_config(EmbeddingConfig(model="aisfx")), "default") == ["embedding"]
    assert available_layers(cnn14) == ["1", "2", "3", "4", "5", "6", "embedding"]
    assert resolve_layers(cnn14, ["embedding", 6, 3]) == ["3", "6", "embedding"]  # network order
    with pytest.raises(ConfigError, match=r"\['7'\] not offered"):
        resolve_layers(cnn14, [7])
    with pytest.raises(ConfigError, match=r"embedding\.model"):
        model_config(EmbeddingConfig(weights="/some/file.pth"))
    with pytest.raises(ValueError, match="count from 1"):
        EmbeddingConfig(model="cnn14", layers=[0])
