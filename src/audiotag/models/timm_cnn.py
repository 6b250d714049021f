"""Any timm CNN as a backbone: one input channel, log-mel as an image, a frame sequence out.

The log-mel ``(batch, frames, mels)`` becomes a one-channel image with mels as height and time as
width; timm's ``forward_features`` gives ``(batch, channels, H', W')``, averaged over frequency into
``(batch, W', channels)``. ImageNet weights come from timm's own files (``model.safetensors`` of the
HF hub repo ``timm/<arch>.<tag>``, or an older ``.pth``); their keys already match the model, so
conversion only prefixes them, drops the old classifier and sums the RGB stem to one channel.

Which file: ``model.pretrained: imagenet`` is timm's default weights for ``model.arch`` (or the tag
given in it), ``timm/<arch>.<tag>`` any other weights of that arch; :mod:`audiotag.models.pretrained`
derives the URL from timm's ``pretrained_cfg`` and downloads it with its own checks (timm's hub
code, which needs huggingface_hub and the network, is never called).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from typing import Literal

import timm
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from audiotag.config.schema import ModelBase
from audiotag.core.errors import ConfigError
from audiotag.fetch.weights import Checkpoint
from audiotag.models.family import Family, Verification
from audiotag.models.loading import Adapter, Converted, Converter, rgb_to_mono


class TimmConfig(ModelBase):
    """Any timm CNN by name, one input channel, ImageNet weights from timm's own files.

    ``pretrained: imagenet`` takes the default weights timm lists for ``arch`` (the tag in
    ``arch``, e.g. ``tf_efficientnet_b0.ns_jft_in1k``, where one is given); ``timm/<arch>.<tag>``
    names other weights of the same arch. Both are downloaded from timm's HF hub repo by our own
    downloader (see ``audiotag.models.pretrained``).
    """

    name: Literal["timm"] = "timm"
    arch: str = Field(
        "efficientnet_b0",
        description="timm model name, e.g. efficientnet_b0, convnext_tiny (optionally .<tag>, which "
        "pretrained: imagenet then uses)",
    )
    drop_path: float = Field(0.0, ge=0, lt=1)
    global_pool: Literal["mean+max", "mean", "max"] = "mean+max"


PREFIX = "backbone.model."


class TimmBackbone(nn.Module):
    """``timm.create_model(arch)`` without classifier or pooling, one input channel."""

    output = "sequence"
    n_prefix_tokens = 0

    def __init__(self, arch: str, drop_path: float = 0.0) -> None:
        super().__init__()
        try:
            self.model = timm.create_model(
                arch, pretrained=False, num_classes=0, global_pool="", in_chans=1, drop_path_rate=drop_path
            )
        except RuntimeError as exc:  # timm's "Unknown model (...)"
            raise ConfigError(f"model.arch: {exc}") from None
        except TypeError as exc:
            raise ConfigError(f"model.arch: {arch!r} does not take these settings ({exc})") from None
        self.arch = arch
        self.out_dim = int(self.model.num_features)
        self.min_size = _total_stride(self.model)

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """timm's own keys (an encoder file written by ``pretrain``; ``convert_timm`` reads them)."""
        return self.model.state_dict()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image = x.transpose(1, 2).unsqueeze(1)  # (batch, 1, mels, frames)
        short_h, short_w = (max(0, self.min_size - n) for n in image.shape[2:])
        if short_h or short_w:  # e.g. ConvNeXt's unpadded stride-2 downsampling needs 32 x 32 at least
            image = F.pad(image, (0, short_w, 0, short_h), value=float(image.amin()))
        features = self.model.forward_features(image)
        if features.ndim != 4 or features.shape[1] != self.out_dim:
            raise ConfigError(
                f"model.arch: {self.arch} gives features of shape {tuple(features.shape)}, not (batch, "
                f"{self.out_dim}, freq, time); only CNNs with channels-first feature maps are supported"
            )
        # Without pooling, the head's pre-logits part keeps the map and applies what belongs to it
        # (ConvNeXt's final LayerNorm, per position); most CNNs return the map unchanged.
        mapped = self.model.forward_head(features, pre_logits=True)
        if mapped.shape == features.shape:
            features = mapped
        return features.mean(dim=2).transpose(1, 2)  # (batch, frames', channels)


def _total_stride(model: nn.Module) -> int:
    """The network's total downsampling (timm's ``feature_info`` reduction; 32 if unknown)."""
    try:
        return max(int(info["reduction"]) for info in model.feature_info)  # type: ignore[union-attr]
    except (AttributeError, KeyError, TypeError, ValueError):
        return 32


def build_backbone(cfg: TimmConfig, n_mels: int, frames: int) -> nn.Module:
    """Any input size works; inputs smaller than the total stride are padded with their minimum."""
    return TimmBackbone(cfg.arch, cfg.drop_path)


def _as_names(value: str | Iterable[str] | None) -> tuple[str, ...]:
    if not value:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


@cache
def known_classifiers() -> frozenset[str]:
    """Every module name that timm's pretrained configs call a classifier (``fc``, ``head.fc``, …)."""
    names: set[str] = set()
    for tagged in timm.list_pretrained():
        pretrained_cfg = timm.models.get_pretrained_cfg(tagged)
        if pretrained_cfg is not None:
            names.update(_as_names(pretrained_cfg.classifier))
    return frozenset(names)


def _convert(state: dict[str, torch.Tensor], classifiers: Iterable[str], stems: Iterable[str]) -> Converted:
    """Prefix every key; keys of a classifier module (``<name>.weight``/``.bias``) go to ``ignored``."""
    drop = {f"{name}.{leaf}" for name in classifiers for leaf in ("weight", "bias")}
    out: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    for key, value in state.items():
        if key in drop:
            ignored.append(key)
        else:
            out[PREFIX + key] = value
    # Ported weights may lack BatchNorm's counter; it does not affect the output (momentum is fixed).
    for key in list(out):
        if key.endswith(".running_mean"):
            counter = key.removesuffix("running_mean") + "num_batches_tracked"
            out.setdefault(counter, torch.tensor(0, dtype=torch.long))
    stem_keys = {f"{PREFIX}{name}.weight" for name in stems}

    def stem_to_mono(key: str, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor | None:
        return rgb_to_mono(key, src, dst) if not stem_keys or key in stem_keys else None

    adapters: list[Adapter] = [stem_to_mono]
    return Converted(state=out, ignored=ignored, adapters=adapters)


def convert_timm(state: dict[str, torch.Tensor]) -> Converted:
    """timm ImageNet state dict -> ``backbone.model.*``, for any arch (judged from the keys alone).

    The rule: a key ``<name>.weight`` or ``<name>.bias`` is the old classifier when ``<name>`` is a
    classifier name in any of timm's pretrained configs (``classifier``, ``fc``, ``head.fc``,
    ``head``, ``last_linear``, …). A backbone layer never has such a name in an arch that uses it as
    classifier, and a wrong guess cannot pass silently: ``load_converted`` refuses a dropped key the
    model needs (missing) or a kept key it lacks (unexpected). The stem is the only weight with 3
    input channels in the file and 1 in the model; ``rgb_to_mono`` sums it over RGB.
    """
    state = {key.removeprefix("module."): value for key, value in state.items()}  # DataParallel's prefix
    present = {key.rsplit(".", 1)[0] for key in state}
    return _convert(state, sorted(known_classifiers() & present), stems=())


CONVERTERS: dict[str, Converter] = {"timm": convert_timm}


CHECKPOINTS = (
    Checkpoint(
        name="efficientnet_b0",
        url="https://huggingface.co/timm/efficientnet_b0.ra_in1k/resolve/main/model.safetensors",
        filename="efficientnet_b0.ra_in1k.safetensors",
        size=None,
        sha256=None,
        md5=None,
        license="Apache-2.0*",  # * as timm lists it; see the note
        layout="timm",
        features=None,
        model="efficientnet_b0",
        note="EfficientNet-B0 (RandAugment recipe), ImageNet-1k; timm pretrained_cfg hf_hub_id "
        "timm/efficientnet_b0.ra_in1k (licence field apache-2.0). timm's code is Apache-2.0; "
        "licences of ImageNet-trained weights vary by model and the ImageNet terms of use are "
        "non-commercial. Stem conv_stem has 3 input channels (summed to 1 when loaded).",
    ),
)


# imagenet and timm/<arch> names refer to model.arch; timm/<arch>.<tag> table entries name the arch
VERIFY = Verification(settings_of=lambda arch: {"name": "timm", "arch": arch})
FAMILY = Family(
    TimmConfig,
    build_backbone,
    CONVERTERS,
    None,
    CHECKPOINTS,
    verification=VERIFY,
    weights_arch=lambda c: c.arch,
)
