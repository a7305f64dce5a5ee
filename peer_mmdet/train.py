"""Train MMDetection's own Faster R-CNN or Dynamic R-CNN on our miniature benchmark (the peer run).

Run in the MMDetection peer environment (``make mmdet-env``), CPU::

    OMP_NUM_THREADS=1 .venv-mmdet/bin/python peer_mmdet/train.py --method dynamic --seed 0 \\
        --data-root data/mini --backbone data/pretrained/mini_pretrain/backbone.pth --out runs/mmdet/dynamic_s0 \\
        [--max-iters N] [--set key=value ...] [--threads 1] [--preset mini_long]

Purpose: an independent implementation of the same experiment. The network, the assignment, the
sampling, the losses and the Dynamic R-CNN rules are MMDetection 3.3's installed code
(``FasterRCNN``, ``StandardRoIHead`` / ``DynamicRoIHead``, ``MaxIoUAssigner``, ``RandomSampler``);
this script only configures it. The starting point is MMDetection's own config file
(``configs/faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py`` for ``--method faster``,
``configs/dynamic_rcnn/dynamic-rcnn_r50_fpn_1x_coco.py`` for ``--method dynamic``, loaded by path,
no ``mmdet::`` references), and every number the script changes is read from our preset
(``dynrcnn.presets.build_config(preset, "baseline" | "dynamic", seed, overrides)``, default preset
``mini_long``; ``--set`` takes the same ``key=value`` overrides as ``dynrcnn train --set``). Before
any ``--set``, the script applies ``model.rpn_nms_thresh=0.85`` (``dynrcnn.reference.DYNAMIC_RPN_NMS``)
to both methods: Faster R-CNN at the RPN NMS of Dynamic R-CNN is the fair baseline (our report's
0.85 baseline); ``--set model.rpn_nms_thresh=0.7`` restores the preset's value.

What is taken from the preset (and where it goes in MMDetection's config):

* schedule: ``max_iter`` -> ``IterBasedTrainLoop.max_iters``; ``ims_per_batch`` -> batch size (one
  process); the resolved lr (``dynrcnn.config.resolved_lr``), ``momentum``, ``weight_decay`` -> SGD
  (``OptimWrapper``, no paramwise rules, no gradient clipping: our engine does not clip);
  ``warmup_iters``/``warmup_factor`` -> ``LinearLR(start_factor, end=warmup_iters + 1)`` (mmengine
  ends the ramp one step before ``end``; with the +1 it is ``dynrcnn.engine.trainer.lr_at``'s ramp: the script
  steps both schedules over every iteration and refuses a difference, ``train_done.json``);
  ``lr_steps``/``lr_gamma`` -> ``MultiStepLR`` (by iteration); ``seed`` -> ``randomness.seed`` and
  the ``InfiniteSampler`` seed; ``num_workers``; ``log_period``.
* data: ``hflip_prob`` -> ``RandomFlip(prob)``; ``model.min_size``/``max_size`` -> ``Resize(scale=
  (max_size, min_size), keep_ratio=True)`` (a no-op on the 128 px benchmark, as in torchvision);
  ImageNet mean/std in 0-255 RGB and ``pad_size_divisor=32`` (torchvision's
  ``GeneralizedRCNNTransform``); classes = the annotation file's categories in id order;
  ``eval_batch_size`` -> test batch size.
* model: ``slim_r10_fpn`` = ``SlimResNet`` (below: MMDetection's ``ResNet`` with
  ``arch_settings = {10: (BasicBlock, (1, 1, 1, 1))}``, widths 64..512, 7x7/2 stem + max-pool,
  ``style='pytorch'``, trainable BatchNorm with torch momentum 0.03 in every layer, ``norm_eval=False``,
  ``frozen_stages=-1``); FPN ``in_channels`` [64, 128, 256, 512], ``out_channels = model.fpn_channels``,
  5 outputs (P6 by max-pool, as torchvision's ``LastLevelMaxPool``); anchors strides 4..64, ratios
  (0.5, 1, 2), one scale per level so that each level's anchor size is ``model.anchor_sizes``
  (16..256: octave scale 4 on MMDetection's base size = stride); RPN ``nms_pre`` / ``max_per_img`` /
  NMS IoU from ``rpn_pre_nms_top_n_*`` (per level in both) / ``rpn_post_nms_top_n_*`` /
  ``rpn_nms_thresh`` at train and test; RPN sampler ``num = rpn_batch_size_per_image``; RoI extractor
  ``out_channels = fpn_channels``; ``Shared2FCBBoxHead(in_channels=fpn_channels,
  fc_out_channels=representation_size, num_classes=N)``; R-CNN sampler ``num =
  box_batch_size_per_image``, ``pos_fraction = box_positive_fraction``; R-CNN loss SmoothL1 with
  ``beta = model.box_beta`` (faster) / ``dynamic.init_beta`` (dynamic: its starting beta); test
  ``score_thr`` / NMS / ``max_per_img`` from ``box_score_thresh`` / ``box_nms_thresh`` /
  ``box_detections_per_img``; Dynamic R-CNN ``iou_topk = dynamic.k_i``, ``beta_topk = dynamic.k_beta``,
  ``update_iter_interval = dynamic.interval``, ``initial_iou = dynamic.init_iou``,
  ``initial_beta = dynamic.init_beta``.
* weights: ``--backbone`` (our backbone state dict, ``torch.load(weights_only=True)``, SHA-256 checked
  when the preset pins one) renamed with ``dynrcnn.checkpoint.convert.mmdet_name`` and loaded into the built
  model after MMDetection's weight init; every backbone and neck tensor is checked to be loaded
  exactly (missing / unexpected keys are reported in ``train_done.json`` and refused when they
  touch the backbone or neck). RPN and R-CNN head start from MMDetection's initialisation.

Kept as MMDetection has it, hence different from our torchvision implementation:

* RPN box loss: ``L1Loss`` (MMDetection) vs SmoothL1 with beta 1/9 (torchvision); both normalised by
  the sampled anchors.
* RPN low-quality matches: MMDetection makes an anchor with a ground truth's highest IoU positive
  only if that IoU >= ``min_pos_iou`` 0.3; torchvision's ``allow_low_quality_matches`` has no floor.
* R-CNN assigner: MMDetection's 0.5 / 0.5 / 0.5 (equals our ``model.fg_iou_thresh`` 0.5; asserted).
* RoIAlign: ``mmcv.ops.RoIAlign(use_torchvision=True)`` with MMDetection's ``aligned=True`` (half-pixel
  offset) and ``sampling_ratio=0`` (adaptive) vs ours (preset ``model.roi_align_aligned=False``,
  ``model.roi_sampling_ratio=2``, torchvision's default). Level mapping is the same rule
  (``floor(log2(sqrt(wh)/56))``, clamped to P2..P5).
* Anchors: MMDetection keeps fractional base anchors (e.g. 22.63 x 11.31 for size 16, ratio 0.5);
  torchvision (our preset's ``anchor_style=torchvision``) rounds them to whole pixels (22 x 12). At
  128 px the strides agree (4..64) in both.
* Weight init of the fresh heads: MMDetection's ``Shared2FCBBoxHead`` uses Xavier-uniform fcs,
  ``fc_cls`` N(0, 0.01) and ``fc_reg`` N(0, 0.001); torchvision's ``TwoMLPHead`` /
  ``FastRCNNPredictor`` keep PyTorch's default ``nn.Linear`` init. RPN heads: N(0, 0.01) in both.
* Small boxes: MMDetection's RPN keeps proposals with w, h > ``min_bbox_size`` 0 and its R-CNN test
  keeps every box; torchvision drops proposals under 1e-3 px and detections under 1e-2 px a side.
* BatchNorm: same momentum (0.03 in torch's convention) and eps; trainable in both.
* Data: MMDetection's ``CocoDataset`` drops boxes with ``w < 1`` or ``h < 1`` or ``area <= 0`` and
  does not clip boxes to the image; ours clips and drops only empty boxes (the counts each would
  drop are recorded in ``train_done.json``, ``data_check``). Images are decoded by OpenCV (BGR,
  converted to RGB by the preprocessor) instead of PIL: identical pixels for PNG. Image order and
  flips come from MMDetection's ``InfiniteSampler`` + ``AspectRatioBatchSampler`` and numpy's RNG,
  not from our seeded group sampler: same distribution, different draws.
* Dynamic R-CNN statistics: MMDetection's code *is* our ``dynamic.convention=mmdet`` (the only one
  it implements; ``official`` is refused). Its first ``C`` iterations train at the assigner's 0.5.
* Evaluation: MMDetection's ``CocoMetric`` (pycocotools, maxDets (100, 300, 1000), rounded to 0.1
  AP); ``mmdet_eval.json`` also holds the unrounded numbers, AP90 and AP per IoU recomputed from the
  very detections ``CocoMetric`` wrote, with ``dynrcnn.evaluation.coco_eval.coco_metrics`` (our eval's code).

Outputs in ``--out``: ``dynamic.jsonl`` (the initial threshold/beta, then every update of
``DynamicRoIHead``; one ``"fixed": true`` line for faster), ``metrics.jsonl`` (every ``log_period``
iterations: lr, losses under MMDetection's and our names, threshold, beta, sec/iter),
``train_done.json``, ``mmdet_config.py`` (the resolved MMDetection config), ``our_config.json``,
``backbone_mmdet.pth`` (the converted backbone + neck), ``iter_<max>.pth`` (mmengine's checkpoint),
``model_state.pth`` (plain state dict, loads with ``weights_only=True``; ``iter_<max>.pth`` holds
mmengine objects and needs ``weights_only=False``), ``mmdet_results.bbox.json`` (detections) and
``mmdet_eval.json``. mmengine's own log is under ``--out/<timestamp>/``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

import mmcv
import mmdet
import mmengine
from mmengine.config import Config as MMConfig
from mmengine.hooks import Hook
from mmengine.runner import Runner
from mmdet.models.backbones.resnet import BasicBlock, ResNet
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules

from dynrcnn.config import Config, resolved_lr
from dynrcnn.checkpoint.convert import mmdet_name
from dynrcnn.data.datasets import annotation_file
from dynrcnn.presets import build_config
from dynrcnn.reference import DYNAMIC_RPN_NMS
from dynrcnn.io import file_sha256
from dynrcnn.checkpoint.weights import load_backbone_state

MMDET_CONFIGS = Path(mmdet.__file__).parent / ".mim" / "configs"
BASE_CONFIG = {
    "faster": MMDET_CONFIGS / "faster_rcnn" / "faster-rcnn_r50_fpn_1x_coco.py",
    "dynamic": MMDET_CONFIGS / "dynamic_rcnn" / "dynamic-rcnn_r50_fpn_1x_coco.py",
}
OUR_METHOD = {"faster": "baseline", "dynamic": "dynamic"}
DEFAULT_PRESET = "mini_long"
# applied before the user's --set: both methods at Dynamic R-CNN's RPN NMS (the fair baseline)
DEFAULT_OVERRIDES = (f"model.rpn_nms_thresh={DYNAMIC_RPN_NMS}",)
FPN_STRIDES = (4, 8, 16, 32, 64)  # P2..P6, as torchvision's FPN with LastLevelMaxPool
ARCH_BLOCKS = {"slim_r10_fpn": (10, (1, 1, 1, 1)), "slim_r18_fpn": (18, (2, 2, 2, 2))}
# ImageNet mean / std in 0-255 RGB: torchvision's 0-1 values x 255
MEAN = [123.675, 116.28, 103.53]
STD = [58.395, 57.12, 57.375]
# MMDetection's loss names -> ours (dynrcnn.rundir.runs.LOSS_KEYS, torchvision's names)
LOSS_ALIASES = {"loss_cls": "loss_classifier", "loss_bbox": "loss_box_reg",
                "loss_rpn_cls": "loss_objectness", "loss_rpn_bbox": "loss_rpn_box_reg"}

register_all_modules()


@MODELS.register_module()
class SlimResNet(ResNet):
    """MMDetection's ResNet with the slim depths: 10 = BasicBlock x (1, 1, 1, 1) (our
    ``slim_r10_fpn``), 18 as in MMDetection."""

    arch_settings = {10: (BasicBlock, (1, 1, 1, 1)), 18: (BasicBlock, (2, 2, 2, 2))}


# --------------------------------------------------------------------------------------
# configuration


def our_config(method: str, seed: int, data_root: str, overrides: list[str], preset: str) -> Config:
    cfg = build_config(preset, OUR_METHOD[method], seed=seed, data_root=data_root,
                       overrides=list(DEFAULT_OVERRIDES) + list(overrides))
    if cfg.model.arch not in ARCH_BLOCKS:
        raise SystemExit(f"model.arch={cfg.model.arch}: this script builds the slim ResNet-FPN models only "
                         f"({', '.join(ARCH_BLOCKS)})")
    if cfg.model.pretrained_backbone:
        raise SystemExit("model.pretrained_backbone=true (frozen-BN ImageNet body) is not mirrored; use --backbone")
    if method == "dynamic" and cfg.dynamic.convention != "mmdet":
        raise SystemExit(f"dynamic.convention={cfg.dynamic.convention}: MMDetection implements only the "
                         "'mmdet' convention")
    return cfg


def read_categories(ann_path: Path) -> list[str]:
    data = json.loads(ann_path.read_text())
    return [str(c["name"]) for c in sorted(data["categories"], key=lambda c: c["id"])]


def data_check(ann_path: Path) -> dict:
    """How many boxes MMDetection's CocoDataset ignores vs our loader (dynrcnn.data.datasets) drops."""
    data = json.loads(ann_path.read_text())
    size = {im["id"]: (float(im["width"]), float(im["height"])) for im in data["images"]}
    mm_drop = ours_drop = outside = 0
    for a in data["annotations"]:
        if a.get("iscrowd", 0):
            continue
        x, y, w, h = (float(v) for v in a["bbox"])
        W, H = size[a["image_id"]]
        if a.get("area", w * h) <= 0 or w < 1 or h < 1:
            mm_drop += 1
        if min(x + w, W) - max(x, 0) <= 0 or min(y + h, H) - max(y, 0) <= 0:
            ours_drop += 1
        if x < 0 or y < 0 or x + w > W or y + h > H:
            outside += 1
    return {"file": str(ann_path), "boxes": len(data["annotations"]), "mmdet_ignores": mm_drop,
            "ours_drops": ours_drop, "outside_image_not_clipped_by_mmdet": outside}


def mmdet_config(ours: Config, method: str, data_root: Path, out: Path, classes: list[str]) -> MMConfig:
    """MMDetection's own config file with what our preset sets changed (module docstring)."""
    m, d = ours.model, ours.dynamic
    cfg = MMConfig.fromfile(str(BASE_CONFIG[method]))
    num_classes = len(classes)
    depth, _ = ARCH_BLOCKS[m.arch]
    widths = [64 * 2 ** i for i in range(4)]

    # --- model
    model = cfg.model
    model.data_preprocessor.update(mean=MEAN, std=STD, bgr_to_rgb=True, pad_size_divisor=32)
    model.backbone = dict(
        type="SlimResNet", depth=depth, num_stages=4, out_indices=(0, 1, 2, 3), frozen_stages=-1,
        norm_cfg=dict(type="BN", momentum=0.03, requires_grad=True), norm_eval=False, style="pytorch",
        init_cfg=None)  # no torchvision://resnet50; the weights come from --backbone
    model.neck.update(in_channels=widths, out_channels=m.fpn_channels, num_outs=len(FPN_STRIDES))
    ag = model.rpn_head.anchor_generator
    assert tuple(ag.strides) == FPN_STRIDES and len(m.anchor_sizes) == len(FPN_STRIDES)
    octave = {s / st for s, st in zip(m.anchor_sizes, FPN_STRIDES)}
    if len(octave) == 1:  # MMDetection's form: base size = stride, one scale
        ag.update(scales=[float(octave.pop())], ratios=[0.5, 1.0, 2.0])
    else:
        ag.update(base_sizes=list(m.anchor_sizes), scales=[1.0], ratios=[0.5, 1.0, 2.0])
    model.rpn_head.update(in_channels=m.fpn_channels, feat_channels=m.fpn_channels)
    rh = model.roi_head
    rh.bbox_roi_extractor.roi_layer.update(use_torchvision=True)  # aligned / sampling_ratio: MMDetection's
    rh.bbox_roi_extractor.update(out_channels=m.fpn_channels)
    box_beta = d.init_beta if method == "dynamic" else m.box_beta
    rh.bbox_head.update(in_channels=m.fpn_channels, fc_out_channels=m.representation_size,
                        num_classes=num_classes, loss_bbox=dict(type="SmoothL1Loss", beta=box_beta, loss_weight=1.0))
    tr, te = model.train_cfg, model.test_cfg
    tr.rpn.sampler.num = m.rpn_batch_size_per_image
    tr.rpn_proposal.update(nms_pre=m.rpn_pre_nms_top_n_train, max_per_img=m.rpn_post_nms_top_n_train)
    tr.rpn_proposal.nms.iou_threshold = m.rpn_nms_thresh
    te.rpn.update(nms_pre=m.rpn_pre_nms_top_n_test, max_per_img=m.rpn_post_nms_top_n_test)
    te.rpn.nms.iou_threshold = m.rpn_nms_thresh
    a = tr.rcnn.assigner
    assert a.pos_iou_thr == a.neg_iou_thr == a.min_pos_iou == m.fg_iou_thresh, (
        f"MMDetection's R-CNN assigner {a.pos_iou_thr} vs our model.fg_iou_thresh {m.fg_iou_thresh}")
    tr.rcnn.sampler.update(num=m.box_batch_size_per_image, pos_fraction=m.box_positive_fraction)
    if method == "dynamic":
        tr.rcnn.dynamic_rcnn.update(iou_topk=d.k_i, beta_topk=d.k_beta, update_iter_interval=d.interval,
                                    initial_iou=d.init_iou, initial_beta=d.init_beta)
    te.rcnn.update(score_thr=m.box_score_thresh, max_per_img=m.box_detections_per_img)
    te.rcnn.nms.iou_threshold = m.box_nms_thresh

    # --- data
    metainfo = dict(classes=tuple(classes))
    scale = (m.max_size, m.min_size)  # MMDetection's (long, short) bound with keep_ratio
    train_pipeline = [
        dict(type="LoadImageFromFile", backend_args=None),
        dict(type="LoadAnnotations", with_bbox=True),
        dict(type="Resize", scale=scale, keep_ratio=True),
        dict(type="RandomFlip", prob=ours.hflip_prob),
        dict(type="PackDetInputs"),
    ]
    test_pipeline = [
        dict(type="LoadImageFromFile", backend_args=None),
        dict(type="Resize", scale=scale, keep_ratio=True),
        dict(type="LoadAnnotations", with_bbox=True),
        dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
    ]
    root = str(data_root) + "/"
    cfg.train_dataloader = dict(
        batch_size=ours.ims_per_batch, num_workers=ours.num_workers, persistent_workers=ours.num_workers > 0,
        sampler=dict(type="InfiniteSampler", shuffle=True, seed=ours.seed),
        batch_sampler=dict(type="AspectRatioBatchSampler"),
        dataset=dict(type="CocoDataset", data_root=root, metainfo=metainfo,
                     ann_file=f"annotations/instances_{ours.train_split}.json",
                     data_prefix=dict(img=f"{ours.train_split}/"),
                     filter_cfg=dict(filter_empty_gt=True, min_size=0), pipeline=train_pipeline, backend_args=None))
    cfg.test_dataloader = dict(
        batch_size=ours.eval_batch_size, num_workers=ours.num_workers, persistent_workers=False, drop_last=False,
        sampler=dict(type="DefaultSampler", shuffle=False),
        dataset=dict(type="CocoDataset", data_root=root, metainfo=metainfo,
                     ann_file=f"annotations/instances_{ours.val_split}.json",
                     data_prefix=dict(img=f"{ours.val_split}/"), test_mode=True, pipeline=test_pipeline,
                     backend_args=None))
    cfg.test_evaluator = dict(type="CocoMetric", ann_file=str(annotation_file(data_root, ours.val_split)),
                              metric="bbox", format_only=False, backend_args=None,
                              outfile_prefix=str(out / "mmdet_results"))
    cfg.val_dataloader = None
    cfg.val_evaluator = None
    cfg.val_cfg = None
    cfg.test_cfg = dict(type="TestLoop")

    # --- schedule
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=ours.max_iter, val_interval=ours.max_iter + 1)
    cfg.optim_wrapper = dict(type="OptimWrapper", optimizer=dict(
        type="SGD", lr=resolved_lr(ours), momentum=ours.momentum, weight_decay=ours.weight_decay))
    schedulers = []
    if ours.warmup_iters > 0:
        # mmengine's LinearLR reaches its end factor at step end - begin - 1; end = warmup_iters + 1 gives
        # ours (dynrcnn.engine.trainer.lr_at): factor warmup_factor + (1 - warmup_factor) * i / warmup_iters
        schedulers.append(dict(type="LinearLR", start_factor=ours.warmup_factor, by_epoch=False, begin=0,
                               end=ours.warmup_iters + 1))
    if ours.lr_steps:
        schedulers.append(dict(type="MultiStepLR", by_epoch=False, begin=0, end=ours.max_iter,
                               milestones=list(ours.lr_steps), gamma=ours.lr_gamma))
    cfg.param_scheduler = schedulers
    cfg.auto_scale_lr = dict(enable=False, base_batch_size=ours.ims_per_batch)

    # --- runtime
    cfg.default_hooks = dict(
        timer=dict(type="IterTimerHook"),
        logger=dict(type="LoggerHook", interval=ours.log_period),
        param_scheduler=dict(type="ParamSchedulerHook"),
        checkpoint=dict(type="CheckpointHook", interval=ours.max_iter, by_epoch=False, save_last=True,
                        max_keep_ckpts=1),
        sampler_seed=dict(type="DistSamplerSeedHook"))  # no DetVisualizationHook: visualization off
    cfg.log_processor = dict(type="LogProcessor", window_size=ours.log_period, by_epoch=False)
    cfg.env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
                       dist_cfg=dict(backend="gloo"))
    cfg.randomness = dict(seed=ours.seed, deterministic=False)
    cfg.launcher = "none"
    cfg.load_from = None
    cfg.resume = False
    cfg.work_dir = str(out)
    return cfg


def _flat(d, prefix=""):
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def method_difference(seed: int, overrides: list[str], preset: str, data_root: Path, out: Path,
                      classes: list[str]) -> list[str]:
    """The keys in which the resolved faster and dynamic MMDetection configs differ (must be the
    R-CNN head only: its type and the dynamic_rcnn block)."""
    flats = {}
    for mth in ("faster", "dynamic"):
        c = mmdet_config(our_config(mth, seed, str(data_root), overrides, preset), mth, data_root, out, classes)
        flats[mth] = _flat(c.to_dict())
    keys = sorted(k for k in set(flats["faster"]) | set(flats["dynamic"])
                  if flats["faster"].get(k, "<absent>") != flats["dynamic"].get(k, "<absent>"))
    allowed = [k for k in keys if k == "model.roi_head.type" or k.startswith("model.train_cfg.rcnn.dynamic_rcnn.")]
    other = [k for k in keys if k not in allowed]
    if other:
        raise SystemExit(f"faster and dynamic MMDetection configs differ beyond the R-CNN head: {other}")
    return keys


def check_schedule(ours: Config, cfg: MMConfig) -> float:
    """Step the config's mmengine schedulers on a dummy optimizer and return the largest relative
    difference from our engine's lr (``dynrcnn.engine.trainer.lr_at``) over all iterations (refused > 1e-9)."""
    from mmengine.registry import PARAM_SCHEDULERS

    from dynrcnn.engine.trainer import lr_at

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optim_wrapper.optimizer.lr)
    scheds = [PARAM_SCHEDULERS.build(dict(s, optimizer=opt)) for s in cfg.param_scheduler]
    worst = 0.0
    for i in range(ours.max_iter):
        worst = max(worst, abs(opt.param_groups[0]["lr"] - lr_at(ours, i)) / lr_at(ours, i))
        opt.step()
        for s in scheds:
            s.step()
    if worst > 1e-9:
        raise SystemExit(f"the mmengine lr schedule differs from ours by {worst:.3g} (relative)")
    return worst


# --------------------------------------------------------------------------------------
# weights


def convert_backbone(path: str, sha256: str = "") -> dict:
    """Our backbone (+FPN) state dict with MMDetection's key names."""
    state = load_backbone_state(path, sha256)
    return {mmdet_name("backbone." + k): v for k, v in state.items()}


class BackboneInitHook(Hook):
    """Loads the converted backbone + neck into the model after MMDetection's weight init (the
    runner calls ``init_weights`` right before ``before_train``) and checks every tensor."""

    priority = "VERY_HIGH"

    def __init__(self, state: dict, report: dict):
        self.state = state
        self.report = report

    def before_train(self, runner):
        model = runner.model
        own = model.state_dict()
        unexpected = sorted(k for k in self.state if k not in own)
        misshaped = sorted(k for k in self.state if k in own and own[k].shape != self.state[k].shape)
        if unexpected or misshaped:
            raise SystemExit(f"backbone file does not fit the MMDetection model: unexpected {unexpected[:5]}, "
                             f"mis-shaped {misshaped[:5]}")
        result = model.load_state_dict(self.state, strict=False)
        missing = sorted(result.missing_keys)
        not_loaded = [k for k in missing if k.startswith(("backbone.", "neck."))]
        if not_loaded or result.unexpected_keys:
            raise SystemExit(f"backbone/neck tensors not loaded: {not_loaded[:5]}; unexpected "
                             f"{list(result.unexpected_keys)[:5]}")
        after = model.state_dict()
        for k, v in self.state.items():
            assert torch.equal(after[k].cpu(), v.to(after[k].dtype)), f"{k} not loaded exactly"
        fresh = {}
        for k in missing:
            fresh[k.split(".")[0]] = fresh.get(k.split(".")[0], 0) + 1
        self.report.update({
            "loaded_tensors": len(self.state),
            "backbone_neck_tensors_in_model": sum(1 for k in own if k.startswith(("backbone.", "neck."))),
            "unexpected_keys": list(result.unexpected_keys),
            "missing_keys_fresh_init": fresh,
        })
        runner.logger.info(f"backbone + neck: {len(self.state)} tensors loaded exactly; fresh: {fresh}")


# --------------------------------------------------------------------------------------
# logs


class JsonlWriter:
    def __init__(self, path: Path):
        self.f = open(path, "w")

    def write(self, record: dict) -> None:
        self.f.write(json.dumps(record) + "\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def _roi_head(runner):
    model = runner.model.module if hasattr(runner.model, "module") else runner.model
    return model.roi_head


class DynamicLogHook(Hook):
    """``dynamic.jsonl``: the starting threshold/beta and every ``update_hyperparameters``."""

    priority = "HIGH"

    def __init__(self, path: Path, method: str):
        self.writer = JsonlWriter(path)
        self.method = method

    def before_train(self, runner):
        head = _roi_head(runner)
        first = {"iteration": 0, "iou_threshold": float(head.bbox_assigner.pos_iou_thr),
                 "beta": float(head.bbox_head.loss_bbox.beta), "num_iou_stats": 0, "num_beta_stats": 0}
        if not hasattr(head, "update_hyperparameters"):
            first["fixed"] = True
        self.writer.write(first)
        if hasattr(head, "update_hyperparameters"):
            original = head.update_hyperparameters
            writer = self.writer

            def update():
                n_iou, n_beta = len(head.iou_history), len(head.beta_history)
                thr, beta = original()
                writer.write({"iteration": runner.iter + 1, "iou_threshold": float(thr), "beta": float(beta),
                              "num_iou_stats": n_iou, "num_beta_stats": n_beta})
                return thr, beta

            head.update_hyperparameters = update  # the instance attribute shadows the method

    def after_train(self, runner):
        self.writer.close()


class MetricsHook(Hook):
    """``metrics.jsonl`` every ``period`` iterations: the interval's mean losses, the lr in use,
    the head's threshold and beta, and the median (and mean) time per iteration."""

    priority = "NORMAL"  # before ParamSchedulerHook (LOW): the lr read is the one this iteration used

    def __init__(self, path: Path, period: int, max_iters: int):
        self.writer = JsonlWriter(path)
        self.period = period
        self.max_iters = max_iters
        self.sums: dict[str, float] = {}
        self.count = 0
        self.times: list[float] = []
        self.all_times: list[float] = []
        self.interval_means: list[float] = []

    def before_train(self, runner):
        self.t0 = self.last = time.perf_counter()

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        now = time.perf_counter()
        self.times.append(now - self.last)
        self.all_times.append(now - self.last)
        self.last = now
        for k, v in (outputs or {}).items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v.detach() if torch.is_tensor(v) else v)
        self.count += 1
        it = runner.iter + 1
        if it % self.period == 0 or it == self.max_iters:
            head = _roi_head(runner)
            means = {k: v / self.count for k, v in self.sums.items()}
            record = {"iteration": it, "lr": float(runner.optim_wrapper.get_lr()["lr"][0]), "loss": means.get("loss")}
            record.update({k: v for k, v in means.items() if k != "loss"})
            record.update({ours: means.get(mm) for mm, ours in LOSS_ALIASES.items()})
            mean_t = sum(self.times) / len(self.times)
            record.update({"iou_threshold": float(head.bbox_assigner.pos_iou_thr),
                           "beta": float(head.bbox_head.loss_bbox.beta),
                           "sec_per_iter": statistics.median(self.times), "sec_per_iter_mean": mean_t,
                           "elapsed_sec": now - self.t0})
            self.interval_means.append(mean_t)
            self.writer.write(record)
            self.sums, self.count, self.times = {}, 0, []

    def after_train(self, runner):
        self.writer.close()


# --------------------------------------------------------------------------------------
# evaluation


def write_eval(out: Path, metrics: dict, ann_file: Path) -> dict:
    from dynrcnn.evaluation.coco_eval import coco_metrics

    det_file = out / "mmdet_results.bbox.json"
    dets = json.loads(det_file.read_text()) if det_file.exists() else []
    full = coco_metrics(str(ann_file), dets)
    names = {"AP": "mAP", "AP50": "mAP_50", "AP75": "mAP_75", "APs": "mAP_s", "APm": "mAP_m", "APl": "mAP_l"}
    record = {}
    for ours, mm in names.items():
        v = metrics.get(f"coco/bbox_{mm}")
        record[ours] = None if v is None or v < 0 else round(100.0 * v, 6)  # CocoMetric's value (rounded to 0.1 AP)
    for ours in names:  # CocoMetric rounds to 3 decimals of a fraction; the recomputation must agree
        a, b = record[ours], full.get(ours)
        if a is not None and b is not None:
            assert abs(a - b) <= 0.05 + 1e-6, f"{ours}: CocoMetric {a} vs recomputed {b}"
    record.update({
        "unrounded": {k: full.get(k) for k in names},
        "AP90": full.get("AP90"), "AP_per_iou": full.get("AP_per_iou"), "iou_thresholds": full.get("iou_thresholds"),
        "num_detections": full.get("num_detections"), "split_annotations": str(ann_file),
        "num_images": len(json.loads(ann_file.read_text())["images"]),
        "evaluator": "mmdet CocoMetric (pycocotools); unrounded/AP90/AP_per_iou: dynrcnn.evaluation.coco_eval.coco_metrics "
                     "on the same detections",
        "mmdet_metric": {k: float(v) for k, v in metrics.items()},
    })
    (out / "mmdet_eval.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


# --------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", required=True, choices=tuple(BASE_CONFIG))
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--data-root", required=True, metavar="DIR")
    p.add_argument("--backbone", required=True, metavar="FILE", help="our backbone (+FPN) state dict")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--max-iters", type=int, default=None, help="same as --set max_iter=N")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override of the preset, as 'dynrcnn train --set' (repeatable)")
    p.add_argument("--preset", default=DEFAULT_PRESET)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data_root = Path(args.data_root).resolve()
    overrides = list(args.overrides) + ([f"max_iter={args.max_iters}"] if args.max_iters is not None else [])
    overrides.append(f"model.backbone_weights={Path(args.backbone).resolve()}")
    ours = our_config(args.method, args.seed, str(data_root), overrides, args.preset)
    train_ann = annotation_file(data_root, ours.train_split)
    val_ann = annotation_file(data_root, ours.val_split)
    classes = read_categories(train_ann)
    if read_categories(val_ann) != classes:
        raise SystemExit(f"{train_ann} and {val_ann} list different categories")

    diff = method_difference(args.seed, overrides, args.preset, data_root, out, classes)
    cfg = mmdet_config(ours, args.method, data_root, out, classes)
    schedule_diff = check_schedule(ours, cfg)
    cfg.dump(str(out / "mmdet_config.py"))
    (out / "our_config.json").write_text(ours.to_json() + "\n")

    state = convert_backbone(ours.model.backbone_weights, ours.model.backbone_sha256)
    torch.save(state, out / "backbone_mmdet.pth")
    load_report: dict = {}

    runner = Runner.from_cfg(cfg)
    head = _roi_head(runner)
    roi_layer = head.bbox_roi_extractor.roi_layers[0]
    runner.register_hook(BackboneInitHook(state, load_report), priority="VERY_HIGH")
    runner.register_hook(DynamicLogHook(out / "dynamic.jsonl", args.method), priority="HIGH")
    metrics_hook = MetricsHook(out / "metrics.jsonl", ours.log_period, ours.max_iter)
    runner.register_hook(metrics_hook, priority="NORMAL")

    start = time.perf_counter()
    runner.train()
    wall = time.perf_counter() - start
    model = runner.model.module if hasattr(runner.model, "module") else runner.model
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out / "model_state.pth")

    t_eval = time.perf_counter()
    metrics = runner.test()
    eval_record = write_eval(out, dict(metrics), val_ann)
    eval_sec = time.perf_counter() - t_eval

    times = metrics_hook.all_times
    bns = [mod for mod in model.modules() if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)]
    done = {
        "method": args.method, "our_method": ours.method, "preset": ours.preset, "seed": ours.seed,
        "iterations": runner.iter, "wall_time_sec": wall, "eval_time_sec": eval_sec,
        "sec_per_iter_median": statistics.median(times) if times else None,
        "sec_per_iter_median_excluding_first": statistics.median(times[1:]) if len(times) > 1 else None,
        "sec_per_iter_median_of_interval_means": (statistics.median(metrics_hook.interval_means)
                                                  if metrics_hook.interval_means else None),
        "images_per_sec": ours.ims_per_batch / statistics.median(times) if times else None,
        "threads": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "versions": {"mmdet": mmdet.__version__, "mmcv": mmcv.__version__, "mmengine": mmengine.__version__,
                     "torch": torch.__version__, "python": sys.version.split()[0]},
        "mmdet_base_config": str(BASE_CONFIG[args.method]),
        "mmdet_config": str(out / "mmdet_config.py"),
        "overrides": list(DEFAULT_OVERRIDES) + overrides,
        "backbone": {"file": ours.model.backbone_weights, "sha256": file_sha256(ours.model.backbone_weights),
                     **load_report},
        "roi_align": {"aligned": bool(roi_layer.aligned), "sampling_ratio": int(roi_layer.sampling_ratio),
                      "use_torchvision": bool(roi_layer.use_torchvision)},
        "anchors_level0": [[round(float(v), 3) for v in row]
                           for row in model.rpn_head.prior_generator.base_anchors[0].tolist()],
        "batchnorm": {"layers": len(bns), "momentum": sorted({bn.momentum for bn in bns}),
                      "eps": sorted({bn.eps for bn in bns}),
                      "trainable": all(p.requires_grad for bn in bns for p in bn.parameters())},
        "frozen_parameters": [n for n, p in model.named_parameters() if not p.requires_grad],
        "lr_schedule_max_rel_diff_vs_ours": schedule_diff,
        "faster_vs_dynamic_config_diff": diff,
        "data_check": {"train": data_check(train_ann), "val": data_check(val_ann)},
        "checkpoint": str(out / f"iter_{runner.iter}.pth"), "model_state": str(out / "model_state.pth"),
        "AP": eval_record.get("AP"),
    }
    (out / "train_done.json").write_text(json.dumps(done, indent=2) + "\n")
    print(f"{args.method}: {runner.iter} iterations in {wall:.1f} s "
          f"(median {done['sec_per_iter_median']:.3f} s/iter); AP {eval_record['AP']} "
          f"AP50 {eval_record['AP50']} AP75 {eval_record['AP75']} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
