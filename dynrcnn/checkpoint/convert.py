"""Published weights in, our weights out: ``dynrcnn convert`` and ``dynrcnn export``.

``convert`` reads an MMDetection 2.x Faster R-CNN or Dynamic R-CNN R50-FPN checkpoint (the
two are the same network; ``DynamicRoIHead`` has no parameters of its own) and writes a normal
run directory, so that ``dynrcnn eval`` evaluates it like a trained run:

- ``config.json``: our R50-FPN with the published model's test settings (RPN NMS 0.7 for Faster
  R-CNN, 0.85 for Dynamic R-CNN; 1000 proposals; score 0.05, NMS 0.5, 100 detections) and
  MMDetection's anchors (fractional, fixed strides) and RoIAlign (aligned, adaptive sampling);
- ``checkpoints/last.pth``: ``{"model": state_dict, "iteration": ...}`` as ``dynrcnn train``
  writes it (loads with ``strict=True`` and ``torch.load(weights_only=True)``);
- ``provenance.json``: source file name, SHA-256, mapping version, MMDetection's meta.

What the mapping does (checked against MMDetection 2.x's source, see docs/published_weights.md):
key renames only, except the box predictor: MMDetection puts the background class *last* in
``fc_cls`` (torchvision: first) and has no background rows in ``fc_reg`` (class-specific
regression, 4 x 80 rows; torchvision: 4 x 81, the background's 4 rows unused and set to 0).
Box deltas are (dx, dy, dw, dh) in both, with target_stds (0.1, 0.1, 0.2, 0.2) = torchvision's
weights (10, 10, 5, 5) for the R-CNN and (1, 1, 1, 1) for the RPN; anchors per location are
ratios (0.5, 1, 2) x one scale in both; RGB input normalised with the same ImageNet mean/std
(MMDetection's 0-255 values are torchvision's 0-1 values x 255). Anything else (another
architecture, a missing or extra key, a wrong shape, an unreadable file) is refused with a
one-line :class:`~dynrcnn.errors.CheckpointError` naming the first offending key.

``export`` writes a run's weights as a plain state dict for
``torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None,
num_classes=N)`` (``strict=True``): the dynamic head's ``iou_threshold``, ``beta`` and extra
state are dropped and the BatchNorm ``num_batches_tracked`` counters that torchvision's
untrained builder expects are added.
"""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path

from dynrcnn.rundir import runs
from dynrcnn.errors import CheckpointError, ConfigError
from dynrcnn.io import file_sha256, write_json

#: bump when the key mapping or the tensor transforms change (recorded in provenance.json)
MAPPING_VERSION = 1

#: the published models this converter knows: test settings from MMDetection's configs
#: (configs/_base_/models/faster_rcnn_r50_fpn.py, configs/dynamic_rcnn/dynamic_rcnn_r50_fpn_1x_coco.py)
PUBLISHED = {
    "faster_rcnn": {
        "method": "baseline", "rpn_nms_thresh": 0.7, "published_ap": 37.4,
        "label": "Faster R-CNN R50-FPN 1x (MMDetection model zoo)",
        "url": "https://download.openmmlab.com/mmdetection/v2.0/faster_rcnn/faster_rcnn_r50_fpn_1x_coco/"
               "faster_rcnn_r50_fpn_1x_coco_20200130-047c8118.pth",
    },
    "dynamic_rcnn": {
        "method": "dynamic", "rpn_nms_thresh": 0.85, "published_ap": 38.9,
        "label": "Dynamic R-CNN R50-FPN 1x (MMDetection model zoo)",
        "url": "https://download.openmmlab.com/mmdetection/v2.0/dynamic_rcnn/dynamic_rcnn_r50_fpn_1x/"
               "dynamic_rcnn_r50_fpn_1x-62a3f276.pth",
    },
}

#: keys of our model that are not weights of the network (the dynamic head's state)
DYNAMIC_HEAD_KEYS = ("roi_heads.iou_threshold", "roi_heads.beta", "roi_heads._extra_state")


def mmdet_name(ours: str) -> str | None:
    """The MMDetection 2.x key of one of our R50-FPN keys (``None`` for the dynamic head's state)."""
    if ours in DYNAMIC_HEAD_KEYS:
        return None
    rules = (
        (r"backbone\.body\.(.*)", r"backbone.\1"),
        (r"backbone\.fpn\.inner_blocks\.(\d)\.0\.(weight|bias)", r"neck.lateral_convs.\1.conv.\2"),
        (r"backbone\.fpn\.layer_blocks\.(\d)\.0\.(weight|bias)", r"neck.fpn_convs.\1.conv.\2"),
        (r"rpn\.head\.conv\.0\.0\.(weight|bias)", r"rpn_head.rpn_conv.\1"),
        (r"rpn\.head\.cls_logits\.(weight|bias)", r"rpn_head.rpn_cls.\1"),
        (r"rpn\.head\.bbox_pred\.(weight|bias)", r"rpn_head.rpn_reg.\1"),
        (r"roi_heads\.box_head\.fc6\.(weight|bias)", r"roi_head.bbox_head.shared_fcs.0.\1"),
        (r"roi_heads\.box_head\.fc7\.(weight|bias)", r"roi_head.bbox_head.shared_fcs.1.\1"),
        (r"roi_heads\.box_predictor\.cls_score\.(weight|bias)", r"roi_head.bbox_head.fc_cls.\1"),
        (r"roi_heads\.box_predictor\.bbox_pred\.(weight|bias)", r"roi_head.bbox_head.fc_reg.\1"),
    )
    for pattern, repl in rules:
        if re.fullmatch(pattern, ours):
            return re.sub(pattern, repl, ours)
    raise CheckpointError(f"no MMDetection name for our key {ours!r} (mapping version {MAPPING_VERSION})")


def _hint(key: str) -> str:
    if key.startswith("roi_head.mask_head"):
        return " (a Mask R-CNN checkpoint)"
    if re.match(r"roi_head\.bbox_head\.\d", key):
        return " (a Cascade R-CNN checkpoint)"
    if re.match(r"backbone\.layer3\.(6|[1-9]\d)\.", key):
        return " (a deeper ResNet than R50)"
    if key.startswith("bbox_head."):
        return " (a one-stage detector, or an MMDetection 1.x checkpoint: upgrade it with MMDetection's " \
               "tools/model_converters/upgrade_model_version.py)"
    return ""


def read_source(path: str | Path) -> tuple[dict, dict, str]:
    """``(state_dict, meta, sha256)`` of an MMDetection checkpoint (``{'state_dict', 'meta'}``
    or a bare state dict), read with ``weights_only=True``."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    digest = file_sha256(path)
    m = re.search(r"-([0-9a-f]{8})\.pth$", path.name)
    if m and not digest.startswith(m.group(1)):  # MMDetection names published files by their SHA-256 prefix
        raise CheckpointError(f"{path.name}: SHA-256 {digest[:8]}... does not match the {m.group(1)} in its "
                              f"name: the download is damaged or incomplete, download it again")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, not a torch file, pickled objects
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(f"{path.name} is not a readable PyTorch checkpoint (truncated or damaged?): "
                              f"{type(e).__name__}: {msg}"[:400]) from None
    if isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict):
        state, meta = ckpt["state_dict"], ckpt.get("meta") or {}
    elif isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        state, meta = ckpt, {}
    else:
        raise CheckpointError(f"{path.name} holds neither {{'state_dict': ...}} nor a bare state dict")
    return state, (meta if isinstance(meta, dict) else {}), digest


def convert_mmdet_state(source: dict, target: dict, num_classes: int) -> dict:
    """Our state dict from an MMDetection 2.x Faster R-CNN R50-FPN ``source`` state dict.

    ``target`` is the state dict of the model to fill (its keys, order and shapes are the
    specification; the dynamic head's state is taken from it). Refuses, naming the first
    offending key: an unexpected key (in the source's order), a missing key (in our order),
    a non-tensor or a wrong shape.
    """
    import torch

    names = {ours: mmdet_name(ours) for ours in target}
    expected = {mm: ours for ours, mm in names.items() if mm is not None}
    optional = {mm.rsplit(".", 1)[0] + ".num_batches_tracked" for mm in expected if mm.endswith(".running_mean")}
    what = f"an MMDetection 2.x Faster R-CNN / Dynamic R-CNN R50-FPN with {num_classes - 1} classes"
    for key in source:
        if key not in expected and key not in optional:
            raise CheckpointError(f"unexpected key {key!r}{_hint(key)}: not {what}")
    for mm in expected:
        if mm not in source:
            raise CheckpointError(f"missing key {mm!r}: not {what}")
    out = {}
    for ours, mm in names.items():
        if mm is None:
            out[ours] = target[ours]
            continue
        value = source[mm]
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"key {mm!r} holds a {type(value).__name__}, not a tensor")
        shape = tuple(target[ours].shape)
        if mm.startswith("roi_head.bbox_head.fc_reg"):
            shape = (shape[0] - 4,) + shape[1:]  # no background rows
        if tuple(value.shape) != shape:
            raise CheckpointError(f"key {mm!r} has shape {tuple(value.shape)}, {what} has {shape}"
                                  + (" (pass --num-classes)" if "fc_cls" in mm or "fc_reg" in mm else ""))
        value = value.detach().to(dtype=target[ours].dtype).clone()
        if mm.startswith("roi_head.bbox_head.fc_cls"):  # background last -> first
            value = torch.cat([value[-1:], value[:-1]])
        elif mm.startswith("roi_head.bbox_head.fc_reg"):  # class-specific deltas, none for background
            value = torch.cat([value.new_zeros((4,) + value.shape[1:]), value])
        out[ours] = value
    return out


def _guess_model(src: Path, meta: dict, model: str) -> str:
    if model != "auto":
        if model not in PUBLISHED:
            raise ConfigError(f"--model must be auto, {' or '.join(PUBLISHED)}, got {model!r}")
        return model
    text = str(meta.get("config", ""))
    if "DynamicRoIHead" in text:
        return "dynamic_rcnn"
    if "StandardRoIHead" in text:
        return "faster_rcnn"
    name = src.name.lower()
    for key in PUBLISHED:
        if name.startswith(key):
            return key
    raise ConfigError(f"cannot tell whether {src.name} is Faster R-CNN or Dynamic R-CNN (no config in its meta); "
                      f"pass --model faster_rcnn or --model dynamic_rcnn")


def converted_config(model: str, data_root: str = ""):
    """The run config of a converted published model: the COCO R50-FPN 1x preset with the
    published model's test settings, MMDetection's anchors and RoIAlign, no backbone download."""
    from dynrcnn.presets import get_preset

    spec = PUBLISHED[model]
    cfg = get_preset("coco_r50_fpn_1x")
    cfg.preset = f"mmdet_{model}_r50_fpn_1x"
    cfg.method = spec["method"]
    cfg.data_root = data_root
    m = cfg.model
    m.pretrained_backbone = False
    m.anchor_style, m.roi_align_aligned, m.roi_sampling_ratio = "mmdet", True, 0
    m.min_size, m.max_size = 800, 1333
    m.rpn_nms_thresh = spec["rpn_nms_thresh"]
    m.rpn_pre_nms_top_n_test, m.rpn_post_nms_top_n_test = 1000, 1000
    m.box_score_thresh, m.box_nms_thresh, m.box_detections_per_img = 0.05, 0.5, 100
    cfg.validate()
    return cfg


def peer_config(preset: str, method: str, data_root: str = "", seed: int | None = None):
    """The run config of a model MMDetection trained with ``preset``'s settings
    (``peer_mmdet/train.py``): the preset, with MMDetection's anchors (not rounded) and RoIAlign
    (aligned, adaptive sampling), RPN NMS 0.85 for both methods as the peer trains them, and no
    backbone file (every weight comes from the checkpoint)."""
    from dynrcnn.presets import build_config
    from dynrcnn.reference import DYNAMIC_RPN_NMS

    cfg = build_config(preset, method, seed=seed, overrides=[f"model.rpn_nms_thresh={DYNAMIC_RPN_NMS}"])
    cfg.data_root = data_root
    m = cfg.model
    m.anchor_style, m.roi_align_aligned, m.roi_sampling_ratio = "mmdet", True, 0
    m.backbone_weights, m.backbone_sha256 = "", ""
    cfg.validate()
    return cfg


def _json_safe(meta: dict) -> dict:
    keep = {}
    for k in ("mmdet_version", "epoch", "iter", "time", "CLASSES"):
        if k in meta:
            v = meta[k]
            keep[k] = list(v) if isinstance(v, (tuple, list)) else (v if isinstance(v, (int, float, str)) else str(v))
    return keep


def converted_class_names(meta: dict, num_classes: int, data_root: str = "", split: str = "val") -> list[str] | None:
    """The class names a converted model predicts: the checkpoint's own (``meta['CLASSES']``, or
    ``dataset_meta['classes']`` in MMDetection 3), else those of the data a peer run trained on,
    else COCO's 80 for an 81-way classifier; None when none of these is known."""
    for names in (meta.get("CLASSES"), (meta.get("dataset_meta") or {}).get("classes")):
        if names and len(names) == num_classes - 1:
            return [str(n) for n in names]
    if data_root:
        from dynrcnn.data.datasets import category_names

        names = category_names(data_root, split)
        if names and len(names) == num_classes - 1:
            return names
    if num_classes == 81:
        from dynrcnn.data.datasets import coco_class_names

        return coco_class_names()
    return None


def convert(src: str | Path, out: str | Path, num_classes: int = 81, model: str = "auto",
            data_root: str | None = None, force: bool = False, preset: str | None = None,
            method: str | None = None, seed: int | None = None) -> Path:
    """Convert the MMDetection checkpoint ``src`` into the run directory ``out`` (see module doc).

    With ``preset`` and ``method`` the checkpoint is one MMDetection trained with that preset's
    settings (``peer_mmdet/train.py``, e.g. ``mini_long`` with its ``slim_r10_fpn``), converted with
    :func:`peer_config`; otherwise a published R50-FPN model (``model``)."""
    import torch

    from dynrcnn.checkpoint.state import CHECKPOINT_FORMAT
    from dynrcnn.modeling.model import build_model

    src, out = Path(src), Path(out)
    if num_classes < 2:
        raise ConfigError(f"--num-classes counts the background too (81 for COCO), got {num_classes}")
    ckpt_path = runs.last_checkpoint(out)
    if ckpt_path.exists() and not force:
        raise CheckpointError(f"{out} already holds a checkpoint; pass --overwrite to replace it")
    state, meta, digest = read_source(src)
    root = str(Path(data_root).expanduser().resolve()) if data_root else ""
    if preset:
        kind = "dynamic_rcnn" if method == "dynamic" else "faster_rcnn"
        cfg = peer_config(preset, "dynamic" if method == "dynamic" else "baseline", root, seed)
        label = f"MMDetection {'Dynamic' if method == 'dynamic' else 'Faster'} R-CNN, preset {preset} (peer_mmdet/train.py)"
        published = {"label": label, "url": None, "published_ap": None}
    else:
        kind = _guess_model(src, meta, model)
        cfg = converted_config(kind, root)
        published = PUBLISHED[kind]
    target = build_model(cfg, num_classes).state_dict()
    ours = convert_mmdet_state(state, target, num_classes)
    iteration = int(meta.get("iter", 0) or 0)
    record = {
        "format": CHECKPOINT_FORMAT, "iteration": iteration, "model": ours,
        "preset": cfg.preset, "method": cfg.method, "convention": cfg.dynamic.convention,
        "config": json.loads(json.dumps(cfg.to_dict())), "converted_from": src.name,
    }
    ckpt_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = ckpt_path.with_suffix(".tmp")
    torch.save(record, tmp)
    tmp.replace(ckpt_path)
    record = cfg.to_dict()
    names = converted_class_names(meta, num_classes, root if preset else "", cfg.val_split)
    if names:
        record[runs.DATA_RECORD] = {"class_names": names}
    write_json(out / runs.CONFIG, record)
    provenance = {
        "source_file": src.name, "source_path": str(src.resolve()), "sha256": digest,
        "source_format": "mmdet3" if preset else "mmdet2", "model": kind, "label": published["label"],
        "published_url": published["url"], "published_ap": published["published_ap"],
        "mapping_version": MAPPING_VERSION, "num_classes": num_classes, "mmdet_meta": _json_safe(meta),
        "converted_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    (out / runs.PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n")
    for stale in (runs.EVAL, runs.DETECTIONS):
        (out / stale).unlink(missing_ok=True)
    return out


# --------------------------------------------------------------------------------------
# export to plain torchvision


def export_torchvision(run_dir: str | Path, out: str | Path, checkpoint: str | Path | None = None) -> list[str]:
    """Write the run's weights as a state dict for torchvision's ``fasterrcnn_resnet50_fpn``
    (checked by loading it with ``strict=True`` before writing). Returns notes on the run's
    settings that torchvision's builder does not reproduce by default."""
    import torch
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    from dynrcnn.checkpoint.state import read_checkpoint
    from dynrcnn.config import ModelConfig, config_from_dict

    run = Path(run_dir)
    if not (run / runs.CONFIG).is_file():
        raise CheckpointError(f"{run} is not a run directory (no config.json)")
    cfg = config_from_dict(json.loads((run / runs.CONFIG).read_text()))
    m, default = cfg.model, ModelConfig()
    if (m.arch, m.fpn_channels, m.representation_size, tuple(m.anchor_sizes)) != (
            "r50_fpn", 256, 1024, tuple(default.anchor_sizes)):
        raise ConfigError(f"{run}: only the R50-FPN model (fpn_channels 256, 1024-d head, anchors 32-512) has a "
                          f"torchvision counterpart; this run is {m.arch} with fpn_channels {m.fpn_channels}")
    path = Path(checkpoint) if checkpoint else runs.last_checkpoint(run)
    state = read_checkpoint(path)["model"]
    num_classes = int(state["roi_heads.box_predictor.cls_score.weight"].shape[0])
    tv = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_classes)
    wanted = tv.state_dict()
    exported = {}
    for key, ref in wanted.items():
        if key in state:
            exported[key] = state[key].detach().clone()
        elif key.endswith(".num_batches_tracked"):  # torchvision's untrained builder uses BatchNorm2d
            exported[key] = torch.zeros_like(ref)
        else:
            raise CheckpointError(f"{path}: missing key {key!r} that torchvision's fasterrcnn_resnet50_fpn needs")
    for key in state:
        if key not in wanted and key not in DYNAMIC_HEAD_KEYS:
            raise CheckpointError(f"{path}: key {key!r} has no place in torchvision's fasterrcnn_resnet50_fpn")
    try:
        tv.load_state_dict(exported, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"torchvision refuses the exported weights: {str(e).splitlines()[0]}") from None
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save(exported, tmp)
    tmp.replace(out)
    notes = []
    builder = {"rpn_nms_thresh": 0.7, "rpn_pre_nms_top_n_test": 1000, "rpn_post_nms_top_n_test": 1000,
               "box_score_thresh": 0.05, "box_nms_thresh": 0.5, "box_detections_per_img": 100,
               "min_size": 800, "max_size": 1333}
    kwargs = {k: getattr(m, k) for k, v in builder.items() if getattr(m, k) != v}
    if kwargs:
        notes.append("this run was evaluated with " + ", ".join(f"{k}={v}" for k, v in kwargs.items())
                     + ": pass the same keyword arguments to fasterrcnn_resnet50_fpn")
    if m.anchor_style != "torchvision" or m.roi_align_aligned or m.roi_sampling_ratio != 2:
        notes.append(f"this run uses anchor_style={m.anchor_style}, RoIAlign aligned={m.roi_align_aligned} "
                     f"sampling_ratio={m.roi_sampling_ratio}, which torchvision's builder cannot set: its detections "
                     f"will differ slightly (see docs/published_weights.md)")
    notes.append("torchvision builds BatchNorm2d (not frozen) without pretrained weights: call model.eval() for "
                 "inference")
    return notes


__all__ = ["convert", "convert_mmdet_state", "converted_config", "export_torchvision", "mmdet_name",
           "read_source", "MAPPING_VERSION", "PUBLISHED"]
