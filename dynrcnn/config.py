"""Run configuration: plain dataclasses, ``--set`` overrides, JSON round trip.

The presets, each a complete config, and :func:`~dynrcnn.presets.build_config` are in
:mod:`dynrcnn.presets`. ``--set key=value`` overrides any field by its dotted
name (``dynamic.k_i``, ``model.rpn_nms_thresh``); unknown names are refused with the list
of valid ones. The method (``baseline``, ``dla``, ``dsl``, ``dynamic``) decides which of
the two dynamic mechanisms are switched on; everything else about the head is in
:class:`DynamicConfig`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import asdict, dataclass, field, fields

from dynrcnn.errors import ConfigError

METHODS = ("baseline", "dla", "dsl", "dynamic")
#: how tables and figures name each method (the ablation's rows)
METHOD_NAMES = {"baseline": "baseline", "dla": "DLA only", "dsl": "DSL only", "dynamic": "DLA + DSL"}
CONVENTIONS = ("mmdet", "official")
PRETRAINED_PREFIX = "pretrained:"  # model.backbone_weights=pretrained:<preset>: the project's own weights


def method_switches(method: str) -> tuple[bool, bool]:
    """Return ``(use_dla, use_dsl)`` for a method name."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return method in ("dla", "dynamic"), method in ("dsl", "dynamic")


@dataclass
class DynamicConfig:
    """Hyper-parameters of Dynamic Label Assignment (DLA) and Dynamic SmoothL1 (DSL).

    ``k_i``/``k_beta`` pick the order statistics (per image), ``interval`` is C (iterations
    between updates), ``init_iou``/``init_beta`` are T_init and beta_init, ``convention``
    selects how the statistics are computed (``mmdet`` or ``official``, docs/method.md).
    """

    k_i: int = 75
    k_beta: int = 10
    interval: int = 100
    init_iou: float = 0.4
    init_beta: float = 1.0
    convention: str = "mmdet"

    def validate(self) -> None:
        if self.convention not in CONVENTIONS:
            raise ConfigError(
                f"dynamic.convention must be one of {', '.join(CONVENTIONS)}, got {self.convention!r}"
            )
        for name in ("k_i", "k_beta", "interval"):
            if getattr(self, name) < 1:
                raise ConfigError(f"dynamic.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.init_iou < 1.0:
            raise ConfigError(f"dynamic.init_iou must be in (0, 1), got {self.init_iou}")
        if self.init_beta <= 0:
            raise ConfigError(f"dynamic.init_beta must be > 0, got {self.init_beta}")


ARCHS = ("r50_fpn", "slim_r18_fpn", "slim_r10_fpn", "efficientnet_lite0_fpn")
ROI_ALIGN_BACKWARDS = ("auto", "sparse", "torchvision")  # dynrcnn/modeling/roi_align.py


@dataclass
class ModelConfig:
    """Detector architecture. ``arch`` is ``r50_fpn`` (the paper's baseline) or one of the slim
    CPU models: ``slim_r18_fpn`` (ResNet-18 body) or ``slim_r10_fpn`` (the same with one residual
    block per stage instead of two; no ImageNet weights exist for it), or ``efficientnet_lite0_fpn``
    (EfficientNet-Lite0, ImageNet weights from the package index: dynrcnn/modeling/efficientnet.py).

    ``box_beta`` is the box-head SmoothL1 beta when DSL is off (the paper's frameworks use
    1.0; torchvision's default is 1/9). ``fg_iou_thresh`` is the fixed R-CNN threshold when
    DLA is off. ``rpn_nms_thresh`` is independent of the method (the paper used 0.85 for
    Dynamic R-CNN and its baselines used 0.7).
    """

    arch: str = "r50_fpn"
    pretrained_backbone: bool = False
    trainable_backbone_layers: int = 3
    min_size: int = 800
    max_size: int = 1333
    fpn_channels: int = 256
    representation_size: int = 1024
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    # anchors and RoI pooling of the framework whose weights are loaded (docs/method.md sec. 4;
    # docs/published_weights.md): torchvision rounds its base anchors and infers each level's
    # stride from the padded image, pools unaligned with 2x2 samples per bin (as the authors'
    # maskrcnn-benchmark); MMDetection 2.x keeps fractional anchors at fixed strides 4..64 and
    # pools with aligned=True, sampling_ratio=0 (adaptive)
    anchor_style: str = "torchvision"  # or "mmdet"
    roi_align_aligned: bool = False
    roi_sampling_ratio: int = 2
    # RoIAlign's input gradient (dynrcnn/modeling/roi_align.py): 'auto' is the sparse-product backward on
    # CPU (5x faster than torchvision's there, equal to float rounding) and torchvision's on CUDA
    roi_align_backward: str = "auto"
    rpn_nms_thresh: float = 0.7
    rpn_pre_nms_top_n_train: int = 2000
    # proposals kept per image after RPN NMS (MMDetection 2.x: 1000 at train and test time; the
    # authors' code keeps 1000 x images per GPU ranked over the batch, which torchvision's
    # per-image RPN does not do: both conventions keep 1000 per image, see docs/method.md)
    rpn_post_nms_top_n_train: int = 1000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 512
    box_positive_fraction: float = 0.25
    fg_iou_thresh: float = 0.5
    box_beta: float = 1.0
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 100
    backbone_weights: str = ""  # backbone (+FPN) state dict to start from (``dynrcnn pretrain``)
    backbone_sha256: str = ""  # its expected SHA-256; a mismatch refuses to train

    def validate(self) -> None:
        if self.arch not in ARCHS:
            raise ConfigError(f"model.arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        if self.arch == "slim_r10_fpn" and self.pretrained_backbone:
            raise ConfigError("model.pretrained_backbone=true needs ImageNet weights, which exist for r50_fpn and "
                              "slim_r18_fpn, not for slim_r10_fpn (use model.backbone_weights)")
        if not 0.0 < self.rpn_nms_thresh <= 1.0:
            raise ConfigError(f"model.rpn_nms_thresh must be in (0, 1], got {self.rpn_nms_thresh}")
        if self.box_beta <= 0:
            raise ConfigError(f"model.box_beta must be > 0, got {self.box_beta}")
        for name in ("fg_iou_thresh", "box_positive_fraction"):  # open interval: 0 and 1 leave no fg or no bg
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ConfigError(f"model.{name} must be in (0, 1), got {value} (--set model.{name}=...)")
        for name in ("box_score_thresh", "box_nms_thresh"):  # 0 keeps every box / suppresses every overlap
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"model.{name} must be in [0, 1], got {value} (--set model.{name}=...)")
        for name in ("min_size", "max_size", "fpn_channels", "representation_size", "rpn_pre_nms_top_n_train",
                     "rpn_post_nms_top_n_train", "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_test",
                     "rpn_batch_size_per_image", "box_batch_size_per_image", "box_detections_per_img"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be >= 1, got {getattr(self, name)} (--set model.{name}=...)")
        if self.max_size < self.min_size:
            raise ConfigError(f"model.max_size ({self.max_size}) must be >= model.min_size ({self.min_size})")
        if not self.anchor_sizes or min(self.anchor_sizes) < 1:
            raise ConfigError(f"model.anchor_sizes must be positive sizes, got {list(self.anchor_sizes)}")
        if self.anchor_style not in ("torchvision", "mmdet"):
            raise ConfigError(f"model.anchor_style must be 'torchvision' or 'mmdet', got {self.anchor_style!r}")
        if not 0 <= self.trainable_backbone_layers <= 5:
            raise ConfigError(f"model.trainable_backbone_layers must be in 0..5, got {self.trainable_backbone_layers}")
        if self.roi_align_backward not in ROI_ALIGN_BACKWARDS:
            raise ConfigError(f"model.roi_align_backward must be one of {', '.join(ROI_ALIGN_BACKWARDS)}, "
                              f"got {self.roi_align_backward!r}")
        if self.roi_sampling_ratio < 0:
            raise ConfigError(f"model.roi_sampling_ratio must be >= 0 (0: adaptive), got {self.roi_sampling_ratio}")


@dataclass
class Config:
    """A complete training/evaluation configuration (what ``config.json`` holds).

    ``ims_per_batch`` counts images per iteration over all processes. ``base_lr`` is the
    learning rate at ``reference_ims_per_batch`` images per iteration; the engine scales it
    linearly when ``ims_per_batch`` differs (see :func:`scaled_lr`) and records the result in
    ``lr``. ``lr_steps`` are iterations at which the lr is multiplied by ``lr_gamma``.
    """

    preset: str = "custom"
    method: str = "dynamic"
    seed: int = 0
    data_root: str = ""
    train_split: str = "train"
    val_split: str = "val"
    max_iter: int = 90000
    ims_per_batch: int = 16
    reference_ims_per_batch: int = 16
    base_lr: float = 0.02
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_steps: tuple[int, ...] = (60000, 80000)
    lr_gamma: float = 0.1
    warmup_iters: int = 500
    warmup_factor: float = 1.0 / 3
    hflip_prob: float = 0.5
    num_workers: int = 4
    checkpoint_period: int = 5000
    keep_checkpoints: int = 3
    log_period: int = 20
    log_stats: bool = False
    eval_at_end: bool = True
    eval_batch_size: int = 2
    # validation during training (MMDetection's evaluation interval, detectron2's TEST.EVAL_PERIOD):
    # every eval_period iterations the model is scored on val_split, the AP numbers go to
    # metrics.jsonl and TensorBoard, and checkpoints/best.pth keeps the best by best_metric; 0: off
    eval_period: int = 0
    best_metric: str = "AP"
    # experiment tracking besides TensorBoard: "wandb" logs losses, lr, threshold, beta and the
    # evaluations to Weights & Biases (pip install -e ".[wandb]"; offline when no API key is set)
    tracker: str = "none"
    # mixed precision: bf16 (CUDA; CPUs with AVX512-BF16/AMX, else float32) or fp16 (CUDA only,
    # with a gradient scaler); the losses, box coding and dynamic statistics stay float32
    amp: str = "none"
    channels_last: bool = False  # backbone + FPN in channels-last memory layout
    tf32: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)
    dynamic: DynamicConfig = field(default_factory=DynamicConfig)

    def validate(self) -> None:
        method_switches(self.method)
        self.model.validate()
        self.dynamic.validate()
        if self.amp not in ("none", "bf16", "fp16"):
            raise ConfigError(f"amp must be one of none, bf16, fp16, got {self.amp!r}")
        for name in ("max_iter", "ims_per_batch", "reference_ims_per_batch", "checkpoint_period", "log_period",
                     "keep_checkpoints", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)} (--set {name}=...)")
        if self.tracker not in ("none", "wandb"):
            raise ConfigError(f"tracker must be none or wandb, got {self.tracker!r}")
        if self.eval_period < 0:
            raise ConfigError(f"eval_period must be >= 0 (0: no validation during training), got {self.eval_period}")
        if self.best_metric not in REPORTED_METRICS:
            raise ConfigError(f"best_metric must be one of AP, AP50, AP75, AP90, got {self.best_metric!r}")
        if self.num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0 (0: load data in the training process), got "
                              f"{self.num_workers} (--set num_workers=...)")
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"lr must be > 0 or none (scaled from base_lr), got {self.lr} (--set lr=...)")
        if list(self.lr_steps) != sorted(self.lr_steps):
            raise ConfigError(f"lr_steps must be increasing, got {list(self.lr_steps)}")
        if self.lr_steps and min(self.lr_steps) < 1:
            raise ConfigError(f"lr_steps must be iterations >= 1, got {list(self.lr_steps)} (--set lr_steps=...)")
        if self.base_lr <= 0:
            raise ConfigError(f"base_lr must be > 0, got {self.base_lr} (--set base_lr=...)")
        for name in ("momentum", "warmup_factor"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {value} (--set {name}=...)")
        if not 0.0 < self.lr_gamma <= 1.0:
            raise ConfigError(f"lr_gamma must be in (0, 1], got {self.lr_gamma} (--set lr_gamma=...)")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay} (--set weight_decay=...)")
        if self.warmup_iters < 0:
            raise ConfigError(f"warmup_iters must be >= 0, got {self.warmup_iters} (--set warmup_iters=...)")
        if not 0.0 <= self.hflip_prob <= 1.0:
            raise ConfigError(f"hflip_prob must be in [0, 1], got {self.hflip_prob} (--set hflip_prob=...)")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed} (--seed or --set seed=...)")

    @property
    def use_dla(self) -> bool:
        return method_switches(self.method)[0]

    @property
    def use_dsl(self) -> bool:
        return method_switches(self.method)[1]

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        return _from_dict(cls, d, prefix="")


def _from_dict(cls, d: dict, prefix: str):
    known = {f.name: f for f in fields(cls)}
    unknown = set(d) - set(known)
    if unknown:
        raise ConfigError(f"unknown config keys {sorted(prefix + k for k in unknown)}")
    kwargs = {}
    for name, value in d.items():
        factory = known[name].default_factory  # nested configs are dataclass default factories
        if dataclasses.is_dataclass(factory):
            kwargs[name] = _from_dict(factory, value, prefix + name + ".")
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def scaled_lr(base_lr: float, ims_per_batch: int, reference_ims_per_batch: int) -> float:
    """Linear scaling rule (Goyal et al.): lr proportional to images per iteration."""
    return base_lr * ims_per_batch / reference_ims_per_batch


def resolved_lr(cfg: Config) -> float:
    """The learning rate a run trains with: ``cfg.lr`` when set, else :func:`scaled_lr`."""
    return cfg.lr if cfg.lr is not None else scaled_lr(cfg.base_lr, cfg.ims_per_batch, cfg.reference_ims_per_batch)


def resolve_lr(cfg: Config) -> tuple[Config, str]:
    """A copy of ``cfg`` with ``lr`` filled by the linear scaling rule unless it was set (``cfg`` is left alone),
    and the sentence the engine prints at start."""
    cfg = copy.deepcopy(cfg)
    if cfg.lr is not None:  # set explicitly (--set lr=...): used as given
        return cfg, f"lr {cfg.lr:g} at {cfg.ims_per_batch} img/iter (set explicitly, not scaled)"
    cfg.lr = scaled_lr(cfg.base_lr, cfg.ims_per_batch, cfg.reference_ims_per_batch)
    if cfg.ims_per_batch == cfg.reference_ims_per_batch:
        return cfg, f"lr {cfg.lr:g} at {cfg.ims_per_batch} img/iter (the preset's reference)"
    return cfg, (f"lr scaled from {cfg.base_lr:g} at {cfg.reference_ims_per_batch} img/iter "
                 f"to {cfg.lr:g} at {cfg.ims_per_batch} img/iter (linear scaling rule)")


#: COCO's IoU thresholds 0.50:0.05:0.95, the order of ``AP_per_iou`` in eval.json
IOU_THRESHOLDS = [round(0.5 + 0.05 * i, 2) for i in range(10)]
#: the metrics the report compares (AP90: AP at IoU 0.90, the paper's high-IoU measure) and the
#: six of COCOeval's summary that eval.json also records
REPORTED_METRICS = ("AP", "AP50", "AP75", "AP90")


def iou_index(iou: float) -> int:
    """Where IoU ``iou`` sits in :data:`IOU_THRESHOLDS` (and so in ``AP_per_iou``)."""
    return IOU_THRESHOLDS.index(round(float(iou), 2))


#: AP90's place in ``AP_per_iou``
AP90_INDEX = iou_index(0.9)
COCO_SUMMARY = ("AP", "AP50", "AP75", "APs", "APm", "APl")
#: the COCO evaluators ``dynrcnn eval --evaluator`` accepts, the default first when it is installed
#: (:func:`default_evaluator`): both give the same metrics (tests/test_evaluation.py), faster-coco-eval's
#: C++ matching and accumulation in a fraction of pycocotools' time (benchmarks/eval.py)
EVALUATORS = ("faster-coco-eval", "pycocotools")


def default_evaluator() -> str:
    """The COCO evaluator used when none is named: faster-coco-eval where it is installed (the
    locked environment holds it, the ``fast`` extra), else pycocotools."""
    import importlib.util

    return EVALUATORS[0] if importlib.util.find_spec("faster_coco_eval") is not None else EVALUATORS[1]

#: top-level fields the engine adds to the recorded config (not Config fields)
CONFIG_EXTRAS = ("images_per_update", "world_size", "data")  # "data": runs.DATA_RECORD


def flat_dict(d: dict, prefix: str = "") -> dict:
    """A nested config dict flattened to dotted keys (``{"model": {"min_size": 128}}`` ->
    ``{"model.min_size": 128}``): how ``--set`` names a setting."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat_dict(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def config_record(cfg: Config, world_size: int) -> dict:
    """What a run directory records of ``cfg``: its fields plus :data:`CONFIG_EXTRAS`."""
    record = cfg.to_dict()
    record["images_per_update"] = cfg.ims_per_batch * cfg.dynamic.interval
    record["world_size"] = world_size
    return record


def config_from_dict(d: dict) -> Config:
    """A :class:`Config` from a recorded config (:data:`CONFIG_EXTRAS` dropped)."""
    return Config.from_dict({k: v for k, v in d.items() if k not in CONFIG_EXTRAS})


def default_device() -> str:
    """``cuda`` when a GPU is available, else ``cpu``."""
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover
        return "cpu"


def check_device(device: str) -> str:
    """``device`` if this machine has it; :class:`ConfigError` (one line) otherwise."""
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r} (--device); use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ConfigError(f"--device {device}: this machine has no usable CUDA GPU; use --device cpu")
        if dev.index is not None and dev.index >= n:
            raise ConfigError(f"--device {device}: this machine has {n} CUDA GPU(s) (cuda:0..cuda:{n - 1})")
    return device


def valid_keys(cfg: Config | None = None) -> list[str]:
    """Every dotted field name that ``--set`` accepts."""
    cfg = cfg or Config()
    keys = []
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            keys += [f"{f.name}.{g.name}" for g in fields(value)]
        else:
            keys.append(f.name)
    return keys


def _parse_value(text: str, current):
    """Parse ``text`` to the type of ``current`` (bools, ints, floats, tuples, None)."""
    if isinstance(current, bool):
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true/false, got {text!r}")
    if isinstance(current, tuple):
        text = text.strip().strip("[]()")
        if not text:
            return ()
        kind = type(current[0]) if current else float
        return tuple(kind(float(v)) if kind is int else kind(v) for v in text.split(","))
    try:
        if isinstance(current, int):
            number = float(text)
            if not number.is_integer():
                raise ValueError
            return int(number)
        if isinstance(current, float) or current is None:
            if current is None and text.lower() in ("none", "null"):
                return None
            return float(text)
    except ValueError:
        kind = "an integer" if isinstance(current, int) else "a number"
        raise ValueError(f"expected {kind}, got {text!r}") from None
    return text


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``key=value`` strings (dotted names) to ``cfg`` in place and return it."""
    keys = valid_keys(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        key = key.strip()
        if key not in keys:
            import difflib

            close = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
            close = close or [k for k in keys if k.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1]][:1]
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"unknown config key {key!r} (--set {item}); {hint}valid keys: {', '.join(keys)}")
        target = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            target = getattr(target, p)
        try:
            setattr(target, leaf, _parse_value(text.strip(), getattr(target, leaf)))
        except ValueError as e:
            raise ConfigError(f"bad value for {key}: {e}") from None
    return cfg
