"""The named presets (each a complete :class:`~dynrcnn.config.Config`) and
:func:`build_config`, the one place a run's config is assembled from (preset, method, seed,
data root, convention, ``--set`` overrides): ``dynrcnn train`` and the report both call it.
"""

from __future__ import annotations

import dataclasses

from dynrcnn.config import PRETRAINED_PREFIX, Config, DynamicConfig, ModelConfig, apply_overrides
from dynrcnn.errors import ConfigError


def _coco_1x(**over) -> Config:
    cfg = Config(
        preset="coco_r50_fpn_1x",
        train_split="train2017",
        val_split="val2017",
        max_iter=90000,
        ims_per_batch=16,
        reference_ims_per_batch=16,
        base_lr=0.02,
        lr_steps=(60000, 80000),
        warmup_iters=500,
        checkpoint_period=5000,
        log_period=20,
        num_workers=4,
        model=ModelConfig(arch="r50_fpn", pretrained_backbone=True, rpn_nms_thresh=0.7),
        dynamic=DynamicConfig(k_i=75, k_beta=10, interval=100, init_iou=0.4, init_beta=1.0),
    )
    return dataclasses.replace(cfg, **over)


def _mini(**over) -> Config:
    # The slim model on the generated miniature benchmark (128 px images, ~2.8 objects each),
    # fine-tuned from the project's pretrained backbone (as the paper fine-tunes from ImageNet):
    # model.backbone_weights=pretrained:mini_pretrain (dynrcnn/engine/pretrain.py); RPN and R-CNN head
    # start fresh in every run.
    # K_I = 23, K_beta = 6, C = 20: derived from the real proposal pool in docs/method.md sec. 5.
    cfg = Config(
        preset="mini",
        train_split="train",
        val_split="val",
        max_iter=300,
        ims_per_batch=4,
        reference_ims_per_batch=4,
        base_lr=0.02,
        lr_steps=(225, 270),
        warmup_iters=50,
        warmup_factor=1.0 / 3,
        checkpoint_period=100,
        keep_checkpoints=2,
        log_period=20,
        num_workers=1,
        eval_batch_size=8,
        tf32=False,
        # bf16 autocast, channels-last and the sparse RoIAlign backward together: about 0.55x the
        # fp32 eager step on a 2-core bf16 CPU; without bf16 (the other two kept) a step is about
        # 1.2x longer (benchmarks/step.py, docs/performance.md); a CPU without bf16 trains in
        # float32 (model.autocast_dtype)
        amp="bf16",
        channels_last=True,
        model=ModelConfig(
            arch="slim_r10_fpn",
            pretrained_backbone=False,
            trainable_backbone_layers=5,
            min_size=128,
            max_size=128,
            fpn_channels=64,
            representation_size=256,
            anchor_sizes=(16, 32, 64, 128, 256),  # 4x each FPN level's stride (docs/regime.md)
            rpn_nms_thresh=0.7,
            rpn_pre_nms_top_n_train=1000,
            rpn_post_nms_top_n_train=300,
            rpn_pre_nms_top_n_test=500,
            rpn_post_nms_top_n_test=300,
            rpn_batch_size_per_image=128,
            box_batch_size_per_image=128,
            backbone_weights=PRETRAINED_PREFIX + "mini_pretrain",
        ),
        dynamic=DynamicConfig(k_i=23, k_beta=6, interval=20, init_iou=0.4, init_beta=1.0),
    )
    return dataclasses.replace(cfg, **over)


def _mini_long() -> Config:
    # The mini preset with a three times longer fine-tune (900 iterations, lr steps at the same
    # fractions). Baseline AP90 grows with the fine-tune's length (docs/regime.md),
    # and this is the length at which it passes 10; 'make report' runs it (~3x the time of 'make report-quick').
    return _mini(preset="mini_long", max_iter=900, lr_steps=(675, 810), checkpoint_period=300)


def _mini_smoke() -> Config:
    cfg = _mini(preset="mini_smoke", max_iter=40, lr_steps=(30,), warmup_iters=10,
                checkpoint_period=20, log_period=5, num_workers=0)
    cfg.dynamic.interval = 10
    cfg.model.backbone_weights = ""  # from scratch (the smoke report pins pretrained:mini_pretrain_smoke)
    return cfg


def _mini_pretrain(**over) -> Config:
    # The backbone every mini run starts from (dynrcnn/engine/pretrain.py): the mini baseline at RPN NMS
    # 0.7, trained from scratch for 2500 iterations at a constant lr (after warm-up) on a benchmark
    # drawn with its own data seed; only its ResNet body and FPN are kept.
    cfg = _mini(preset="mini_pretrain", method="baseline", max_iter=2500, lr_steps=(),
                warmup_iters=100, checkpoint_period=500, keep_checkpoints=1, eval_at_end=True)
    cfg.model.backbone_weights = ""
    cfg.model.box_batch_size_per_image = 64  # its R-CNN head is discarded: half the RoIs, 15 % faster
    return dataclasses.replace(cfg, **over)


def _mini_pretrain_smoke() -> Config:
    cfg = _mini_pretrain(preset="mini_pretrain_smoke", max_iter=10, lr_steps=(8,), warmup_iters=2,
                         checkpoint_period=10, log_period=5, num_workers=0)
    return cfg


def _trees(**over) -> Config:
    # Aerial tree crowns (dynrcnn data trees: 400 px tiles, ~17 crowns per training tile, sides 15-71 px
    # from the 5th to the 95th percentile, median 39) from ImageNet EfficientNet-Lite0 weights installed as
    # a package (dynrcnn/modeling/efficientnet.py); frozen BatchNorm, stem and stride-4 stage frozen.
    # Tiles are seen at their own size; one anchor size per FPN level, 3x its stride (12-192 px: a
    # 10-120 px crown has an anchor within a factor 2 of its side). The dynamic settings follow the
    # rules of docs/method.md sec. 5: K_I is 7.4 % of the pool (500 proposals + ~17 crowns -> 38),
    # K_beta reaches ~2.7 proposals past the crowns (17 + 2.7 -> 20), C = 15 iterations (60 tiles)
    # gives 16 updates. 240 iterations (7 passes over the 133 training tiles) are what the measured
    # step time allows for 2 methods x 5 seeds in 60 min on 2 cores (docs/trees.md).
    # The engine settings are mini's (CPU: 4 images per step, bf16 autocast, channels-last). lr 0.005 is
    # the paper's 0.02 at 16 images scaled linearly to 4; at 0.01 the first two runs of the study (one
    # baseline, one Dynamic R-CNN) reached NaN losses at the end of the warm-up (iteration 21-40).
    cfg = _mini(preset="trees", max_iter=240, base_lr=0.005, lr_steps=(180, 216), warmup_iters=40,
                checkpoint_period=80, eval_batch_size=4,
                dynamic=DynamicConfig(k_i=38, k_beta=20, interval=15, init_iou=0.4, init_beta=1.0))
    cfg.model = dataclasses.replace(
        cfg.model, arch="efficientnet_lite0_fpn", pretrained_backbone=True, trainable_backbone_layers=3,
        min_size=400, max_size=400, anchor_sizes=(12, 24, 48, 96, 192), rpn_post_nms_top_n_train=500,
        rpn_pre_nms_top_n_test=1000, rpn_post_nms_top_n_test=500, rpn_batch_size_per_image=256,
        box_batch_size_per_image=256, box_detections_per_img=100, backbone_weights="")
    return dataclasses.replace(cfg, **over)


# where 'dynrcnn pretrain' (and a run naming pretrained:<preset>) keeps the weights, relative to the cwd
PRETRAINED_ROOT = "data/pretrained"
# images drawn (train, val) for the benchmark each pretraining preset trains on
PRETRAIN_DATA = {"mini_pretrain": (2000, 100), "mini_pretrain_smoke": (32, 8)}

PRESETS = {
    "coco_r50_fpn_1x": lambda: _coco_1x(),
    "coco_r50_fpn_1x_1gpu": lambda: _coco_1x(
        preset="coco_r50_fpn_1x_1gpu", ims_per_batch=2, reference_ims_per_batch=2, base_lr=0.0025,
        max_iter=720000, lr_steps=(480000, 640000), checkpoint_period=20000,
    ),
    "coco_r50_fpn_2x": lambda: _coco_1x(
        preset="coco_r50_fpn_2x", max_iter=180000, lr_steps=(120000, 160000)
    ),
    # your own COCO-format dataset (docs/training.md, "Your own dataset"): the paper's R50-FPN from torchvision's
    # ImageNet weights (downloaded by torchvision once), 640-px images, 2 images per step with the
    # paper's lr scaled linearly (0.02 at 16 -> 0.0025), a 20k-iteration step schedule; Dynamic
    # R-CNN at RPN NMS 0.85 as published. Image size and schedule are --set settings.
    "custom_r50_fpn": lambda: _coco_1x(
        preset="custom_r50_fpn", train_split="train", val_split="val", ims_per_batch=2, max_iter=20000,
        lr_steps=(15000, 18000), checkpoint_period=2000, num_workers=2,
        model=ModelConfig(arch="r50_fpn", pretrained_backbone=True, min_size=640, max_size=1066,
                          rpn_nms_thresh=0.85)),
    "mini": _mini,
    "mini_long": _mini_long,
    "mini_smoke": _mini_smoke,
    "mini_pretrain": _mini_pretrain,
    "mini_pretrain_smoke": _mini_pretrain_smoke,
    "trees": _trees,
}

PRESET_HELP = {
    "coco_r50_fpn_1x": "paper recipe: R50-FPN, 16 img/iter (8 GPUs x 2), lr 0.02, 90k iters, steps 60k/80k",
    "coco_r50_fpn_1x_1gpu": "seed reproduction: 1 GPU x 2 img, lr 0.0025, same epochs (720k iters)",
    "coco_r50_fpn_2x": "paper 2x schedule: 180k iters, steps 120k/160k",
    "custom_r50_fpn": "your own COCO-format data: R50-FPN from ImageNet, 640 px, 2 img/iter, lr 0.0025, 20k iters",
    "mini": "slim R10-FPN from the pretrained backbone on the miniature benchmark: 300 iters x 4 img, CPU ~1 min",
    "mini_long": "the mini preset fine-tuned 3x longer (900 iters x 4 img): baseline AP90 above 10, CPU ~3 min (one thread)",
    "mini_smoke": "40 iterations of the mini preset, for tests",
    "mini_pretrain": "the baseline whose backbone every mini run starts from (dynrcnn pretrain)",
    "mini_pretrain_smoke": "10 iterations of mini_pretrain, for tests",
    "trees": "EfficientNet-Lite0-FPN from ImageNet on the tree crowns (dynrcnn data trees): 400 px tiles, "
             "240 iters x 4 img",
}


#: what a preset's numbers are, as pages say it (:func:`scale_of`)
SCALE_LABELS = {"COCO": "COCO", "miniature": "miniature benchmark (not COCO)", "own dataset": "own dataset (not COCO)",
                "tree crowns": "aerial tree crowns, real photographs (not COCO)"}


def scale_of(preset: str | None) -> str:
    """``COCO`` for the paper's recipes (``coco_*``), ``own dataset`` for ``custom_*``, ``tree
    crowns`` for ``trees*``, else ``miniature`` (the generated benchmark): only COCO numbers are
    compared with the paper's."""
    name = str(preset or "")
    prefixes = {"coco": "COCO", "custom": "own dataset", "trees": "tree crowns"}
    return next((scale for prefix, scale in prefixes.items() if name.startswith(prefix)), "miniature")


def scale_label(preset: str | None) -> str:
    return SCALE_LABELS[scale_of(preset)]


def get_preset(name: str) -> Config:
    """A fresh copy of a named preset."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()


def build_config(preset: str, method: str, seed: int | None = None, data_root=None, overrides=(),
                 convention: str | None = None) -> Config:
    """The resolved, validated config of a run: ``preset`` with ``method``, ``seed``,
    ``data_root`` and ``convention`` (each when given) and the ``--set`` ``overrides`` applied
    last. The one place a run's config is assembled (``dynrcnn train`` and the report)."""
    cfg = get_preset(preset)
    cfg.method = method
    if seed is not None:
        cfg.seed = int(seed)
    if data_root is not None:
        cfg.data_root = str(data_root)
    if convention:
        cfg.dynamic.convention = convention
    apply_overrides(cfg, list(overrides or []))
    cfg.validate()
    _check_overrides_apply(cfg, overrides or [])
    return cfg


def _check_overrides_apply(cfg: Config, overrides) -> None:
    """Refuse a ``--set`` the run would ignore (every override is honoured or refused)."""
    keys = {item.split("=", 1)[0].strip() for item in overrides}
    if "model.trainable_backbone_layers" in keys and not cfg.model.pretrained_backbone:
        raise ConfigError("model.trainable_backbone_layers applies only with model.pretrained_backbone=true (a "
                          "backbone without ImageNet weights trains every layer); drop that --set")
