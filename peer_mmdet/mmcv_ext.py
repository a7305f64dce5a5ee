"""A stand-in for ``mmcv._ext``, mmcv's compiled extension, in the MMDetection peer environment.

mmcv-lite is mmcv's Python code without the compiled ops. MMDetection imports ``mmcv.ops`` at
import time, and each ``mmcv.ops`` module asks ``mmcv.utils.ext_loader.load_ext`` for the ops it
may call (``assert hasattr(ext, name)``). This module answers every such name, so MMDetection
imports; it *implements* only what a Faster / Dynamic R-CNN with an FPN calls on the box branch:

* ``nms``: ``torchvision.ops.nms`` (mmcv's ``offset=0`` semantics, continuous coordinates;
  ``offset=1``, the legacy "+1 pixel" box width, is refused). mmcv's ``batched_nms`` adds its
  per-class coordinate offsets before calling it, exactly as with the compiled op.
* RoIAlign runs through ``mmcv.ops.RoIAlign(use_torchvision=True)``, which calls
  ``torchvision.ops.roi_align`` directly, so it needs nothing here.

Every other op raises ``NotImplementedError`` naming itself when it is *called*, so a config
that needs a compiled op fails loudly instead of computing something else. ``make mmdet-env``
installs this file as ``mmcv/_ext.py`` in ``.venv-mmdet``; ``peer_mmdet/test_parity.py`` checks
the two implemented paths against torchvision on the same inputs.
"""

from __future__ import annotations

import torch
import torchvision

IMPLEMENTED = ("nms",)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, offset: int = 0) -> torch.Tensor:
    """Indices kept by NMS, highest score first (what mmcv's compiled ``nms`` returns)."""
    if int(offset) != 0:
        raise NotImplementedError("mmcv._ext stand-in: nms with offset=1 (legacy +1 box width) is not provided")
    if boxes.numel() == 0:
        return boxes.new_zeros(0, dtype=torch.long)
    return torchvision.ops.nms(boxes.float(), scores.float(), float(iou_threshold))


def _missing(name: str):
    def op(*args, **kwargs):
        raise NotImplementedError(
            f"mmcv._ext stand-in: the compiled op {name!r} is not available in the MMDetection peer "
            "environment (peer_mmdet/mmcv_ext.py implements only nms; RoIAlign must use use_torchvision=True)")

    op.__name__ = name
    return op


def __getattr__(name: str):
    # dunder look-ups (copy, pickle, inspect) must fail as on any module
    if name.startswith("__") and name.endswith("__"):
        raise AttributeError(name)
    return _missing(name)
