"""COCO bbox evaluation of a run: ``detections.json`` and ``eval.json``.

``evaluate(run_dir)`` loads the run's ``config.json`` and a checkpoint (``last.pth`` by
default), runs the detector over the validation split and scores it with faster-coco-eval where it is
installed, else pycocotools (:func:`dynrcnn.config.default_evaluator`; the same metrics, tested). ``eval.json`` holds AP, AP50, AP75,
AP_S/M/L and AP at each IoU threshold 0.50:0.05:0.95, all in percent like the paper's
tables, plus inference images/s.

AP at one IoU threshold is read from ``COCOeval.eval["precision"]`` by *index*
(``np.linspace(.5, .95, 10)[8]`` is 0.8999999999999999, so ``_summarize(iouThr=.9)``
finds no threshold and returns -1): the mean of ``precision[t, :, :, area=all,
maxDets=100]`` over the defined entries (> -1), times 100.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path

import numpy as np
import torch

from dynrcnn.rundir import integrity
from dynrcnn.rundir import provenance
from dynrcnn.rundir import runs
from dynrcnn.checkpoint.state import load_for_eval
from dynrcnn.config import COCO_SUMMARY, EVALUATORS, IOU_THRESHOLDS, check_device, default_evaluator
from dynrcnn.errors import CheckpointError, ConfigError, DataError
from dynrcnn.io import file_sha256, read_json, shown_path


def _coco_classes(evaluator: str):
    """``(COCO, COCOeval)`` classes of the requested evaluator."""
    if evaluator == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        return COCO, COCOeval
    if evaluator == "faster-coco-eval":
        try:
            from faster_coco_eval import COCO, COCOeval_faster
        except ImportError:
            raise ConfigError("evaluator 'faster-coco-eval' needs the faster-coco-eval package: "
                              "pip install 'dynrcnn[fast]' (or faster-coco-eval), or use pycocotools") from None
        return COCO, COCOeval_faster
    raise ConfigError(f"unknown evaluator {evaluator!r}; choose one of {', '.join(EVALUATORS)}")


def _load_gt(gt, COCO):
    if isinstance(gt, (str, Path)):
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(gt))
    if isinstance(gt, dict):
        coco = COCO()
        coco.dataset = json.loads(json.dumps(gt))
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco
    return gt  # already a COCO object


def ap_per_iou(precision: np.ndarray, area_index: int = 0, maxdet_index: int = -1) -> list[float]:
    """AP (percent) at each IoU threshold from ``COCOeval.eval["precision"]``
    (shape ``[T, R, K, A, M]``), selected by index; 0 where nothing is defined."""
    out = []
    for t in range(precision.shape[0]):
        p = precision[t, :, :, area_index, maxdet_index]
        p = p[p > -1]
        out.append(float(p.mean() * 100) if p.size else 0.0)
    return out


def coco_metrics(gt, detections: list[dict], evaluator: str | None = None, verbose: bool = False) -> dict:
    """COCO bbox metrics of ``detections`` (results format, xywh) against ``gt`` (annotation
    file path, dataset dict or COCO object). AP values in percent; undefined ones
    (e.g. no small objects) are ``None``; no detections at all give AP 0. ``evaluator``: a name
    in :data:`EVALUATORS` (None: :func:`~dynrcnn.config.default_evaluator`)."""
    COCO, COCOeval = _coco_classes(evaluator or default_evaluator())
    coco_gt = _load_gt(gt, COCO)
    keys = COCO_SUMMARY
    if not detections:
        res = {k: 0.0 for k in keys}
        res.update({"AP_per_iou": [0.0] * 10, "iou_thresholds": IOU_THRESHOLDS, "AP90": 0.0, "num_detections": 0})
        return res
    sink = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with sink:
        coco_dt = coco_gt.loadRes([dict(d) for d in detections])
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [float(s) for s in ev.stats[:6]]
    res = {k: (None if s < 0 else s * 100) for k, s in zip(keys, stats)}
    maxdets = list(ev.params.maxDets)
    m = maxdets.index(100) if 100 in maxdets else len(maxdets) - 1
    thresholds = [float(t) for t in ev.params.iouThrs]
    per_iou = ap_per_iou(np.asarray(ev.eval["precision"]), 0, m)
    res["AP_per_iou"] = per_iou
    res["iou_thresholds"] = [round(t, 2) for t in thresholds]
    idx90 = int(np.argmin(np.abs(np.asarray(thresholds) - 0.9)))
    res["AP90"] = per_iou[idx90]
    if res["AP"] is None:
        res["AP"] = 0.0
    res["per_class"] = per_class_ap(np.asarray(ev.eval["precision"]), coco_gt, list(ev.params.catIds), m, idx90)
    res["num_detections"] = len(detections)
    return res


def per_class_ap(precision: np.ndarray, coco_gt, cat_ids: list, maxdet_index: int, idx90: int) -> list[dict]:
    """AP, AP50 and AP90 (percent) of each category (MMDetection's ``classwise``, detectron2's
    per-category table) from ``COCOeval.eval["precision"]``; None where a category has no ground truth."""
    out = []
    for k, cid in enumerate(cat_ids):
        p = precision[:, :, k, 0, maxdet_index]  # [T, R]
        out.append({"category_id": int(cid), "name": str(coco_gt.loadCats([cid])[0].get("name", cid)),
                    "AP": _defined_mean(p), "AP50": _defined_mean(p[0]), "AP90": _defined_mean(p[idx90])})
    return out


def _defined_mean(p: np.ndarray) -> float | None:
    """Mean precision (percent) over the defined entries (COCOeval marks undefined ones -1)."""
    return float(p[p > -1].mean() * 100) if (p > -1).any() else None


def detections_to_coco(outputs: list[dict], image_ids: list[int], label_to_cat_id) -> list[dict]:
    """torchvision detector outputs (xyxy, labels 1..K) -> COCO results (xywh, category ids)."""
    results = []
    for out, image_id in zip(outputs, image_ids):
        boxes = out["boxes"].detach().float().cpu()
        if boxes.numel() == 0:
            continue
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        for box, label, score in zip(xywh, out["labels"].tolist(), out["scores"].float().cpu().tolist()):
            results.append({"image_id": int(image_id), "category_id": int(label_to_cat_id[int(label)]),
                            "bbox": [round(float(v), 3) for v in box], "score": round(float(score), 5)})
    return results


@torch.no_grad()
def predict(model, dataset, batch_size: int = 2, device: str = "cpu", num_workers: int = 0,
            amp: str = "none", progress: bool = False) -> tuple[list[dict], float]:
    """Run ``model`` over ``dataset`` (eval loader); return COCO results and images/s."""
    from dynrcnn.data.datasets import build_eval_loader

    dev = torch.device(device)
    model.eval().to(dev)
    loader = build_eval_loader(dataset, batch_size=batch_size, num_workers=num_workers)
    from dynrcnn.modeling.model import autocast_dtype

    dtype = autocast_dtype(dev.type, amp) if dev.type == "cuda" else None  # CPU evaluation: float32 boxes
    use_amp = dtype is not None
    results, n_images, busy = [], 0, 0.0
    from tqdm import tqdm

    bar = tqdm(total=len(dataset), desc="eval", dynamic_ncols=True, disable=not progress)
    for images, targets in loader:
        t0 = time.perf_counter()
        images = [im.to(dev, non_blocking=True) for im in images]
        with torch.autocast(dev.type, dtype=dtype) if use_amp else contextlib.nullcontext():
            outputs = model(images)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        busy += time.perf_counter() - t0
        ids = [int(t["image_id"]) for t in targets]
        results += detections_to_coco(outputs, ids, dataset.label_to_cat_id)
        n_images += len(images)
        bar.update(len(images))
    bar.close()
    return results, (n_images / busy if busy > 0 else 0.0)


def _check_num_classes(state: dict, dataset, ckpt_path) -> None:
    """Refuse data whose number of classes differs from the checkpoint's classifier."""
    from dynrcnn.modeling.model import num_classes_of

    n = num_classes_of(state)
    if n is not None and n != dataset.num_classes:
        raise DataError(f"the checkpoint predicts {n - 1} classes but {dataset.annotation_file} has "
                        f"{dataset.num_classes - 1} ({ckpt_path}); evaluate on data with the run's categories")


def held_evaluation(run_dir, tag: str | None, ckpt_path: Path, data_root, split: str, evaluator: str | None,
                    device: str) -> dict | None:
    """The evaluation ``eval[-<tag>].json`` already holds when it is this one: the same checkpoint
    (its SHA-256; an older record without it: the same file name, not modified since: a run
    directory may have moved), the same data
    (folder, split and annotation SHA-256), evaluator (``None``: either, as they give the same
    metrics) and device type, with its detections file present. ``None`` otherwise. The reuse rule of ``evaluate``: a finished run's results are
    not written again for the same question."""
    from dynrcnn.data.datasets import annotation_file

    path = runs.eval_file(run_dir, tag)
    held = read_json(path)
    if not held or not runs.detections_file(run_dir, tag).is_file():
        return None
    ann = annotation_file(data_root, split)
    same_data = (held.get("split") == split and held.get("data_root") and provenance.same_path(held["data_root"], data_root)
                 and ann.is_file() and held.get("annotation_sha256") == file_sha256(ann))
    same_setup = (evaluator in (None, held.get("evaluator"))
                  and torch.device(str(held.get("device", "cpu"))).type == torch.device(device).type)
    if not (same_data and same_setup and held.get("checkpoint")):
        return None
    if held.get("checkpoint_sha256"):
        same_ckpt = held["checkpoint_sha256"] == file_sha256(ckpt_path)
    else:
        same_ckpt = (Path(held["checkpoint"]).name == ckpt_path.name
                     and ckpt_path.stat().st_mtime <= path.stat().st_mtime)
    return held if same_ckpt else None


def evaluate(run_dir: str | Path, checkpoint: str | Path | None = None, data_root: str | None = None,
             device: str = "cpu", evaluator: str | None = None, progress: bool = False,
             name: str | None = None, allow_class_mismatch: bool = False, force: bool = False) -> dict:
    """Evaluate a run's checkpoint (default ``checkpoints/last.pth``) on its validation split.

    Writes ``RUN_DIR/detections.json`` and ``RUN_DIR/eval.json``; returns the eval dict. A
    ``checkpoint`` other than the run's last one writes ``eval-<checkpoint name>.json`` instead
    (``eval-<data name>-<checkpoint name>.json`` on other data), marked ``final_model: false``.
    ``data_root`` overrides the dataset folder recorded in ``config.json``: when it is another
    folder, the results go to ``eval-<name>.json`` and ``detections-<name>.json`` (``name``: the
    folder's name, see :func:`provenance.eval_tag`) and the run's own ``eval.json`` is left alone.
    Data whose class names differ from those the run recorded is refused unless
    ``allow_class_mismatch`` (the count of classes is always checked).
    ``name`` forces the tag. Every eval file records ``data_root``, ``split``, the annotation
    file's SHA-256 and the checkpoint's. An eval file that already holds this evaluation (same
    checkpoint, data, evaluator and device type: :func:`held_evaluation`) is returned as it is,
    not written again, unless ``force``. ``evaluator``: a name in :data:`EVALUATORS`; ``None``
    scores with :func:`~dynrcnn.config.default_evaluator` and reuses a held evaluation of either.
    """
    from dynrcnn.data.datasets import load_dataset
    from dynrcnn.modeling.model import build_model

    _coco_classes(evaluator or default_evaluator())  # fail early with a clear message
    check_device(device)
    run = Path(run_dir)
    cfg = runs.read_config(run)
    tag = runs.sanitise_tag(name) if name is not None else provenance.eval_tag(run, data_root)
    if data_root is not None:
        cfg.data_root = str(data_root)
    ckpt_path = Path(checkpoint) if checkpoint is not None else runs.last_checkpoint(run)
    if not ckpt_path.is_file():
        hint = ("check the path passed to --checkpoint" if checkpoint is not None
                else "train the run first or pass --checkpoint")
        raise CheckpointError(f"no checkpoint {ckpt_path}; {hint}")
    final = ckpt_path.resolve() == runs.last_checkpoint(run).resolve()
    if not final and name is None:  # another checkpoint never replaces the final model's results
        tag = runs.sanitise_tag(f"{tag}-{ckpt_path.stem}" if tag else ckpt_path.stem)
    integrity.check_unlocked(run)  # not while another process trains or evaluates it (reuse included)
    held = None if force else held_evaluation(run, tag, ckpt_path, cfg.data_root, cfg.val_split, evaluator, device)
    if held is not None:
        print(f"{shown_path(runs.eval_file(run, tag))} already holds this evaluation (same checkpoint, data and "
              "evaluator): reused, not written again (--overwrite evaluates again)")
        return held
    ckpt = load_for_eval(ckpt_path, cfg)
    dataset = load_dataset(cfg.data_root, cfg.val_split, train=False)
    _check_num_classes(ckpt["model"], dataset, ckpt_path)
    if not allow_class_mismatch:
        provenance.check_class_names(runs.class_names(run), dataset, run / runs.CONFIG)
    data = provenance.data_record(dataset)
    if name is None:
        provenance.check_eval_target(run, tag, data)
    model = build_model(cfg, dataset.num_classes)
    model.load_state_dict(ckpt["model"])
    with integrity.RunLock(run):  # not while another process trains or evaluates this run
        detections, ips = predict(model, dataset, batch_size=cfg.eval_batch_size, device=device,
                                  num_workers=min(cfg.num_workers, 2), amp=cfg.amp, progress=progress)
        runs.write_detections(run, detections, tag)
        scorer = evaluator or default_evaluator()
        metrics = coco_metrics(dataset.annotation_file, detections, evaluator=scorer)
        metrics.update({
            "images_per_sec": ips,
            "evaluator": scorer,
            "checkpoint": str(ckpt_path),
            "checkpoint_iteration": int(ckpt["iteration"]),
            "checkpoint_sha256": file_sha256(ckpt_path),
            "final_model": final,  # False: an intermediate checkpoint (left out of the report's benchmarks)
            "num_images": len(dataset),
            **data,  # data_root, split, annotation_sha256
            "device": str(device),
        })
        path = runs.write_eval(run, metrics, tag)
        # the summary line is printed with or without the bar: batch logs need it
        print(f"AP {metrics['AP']:.1f}  AP50 {metrics['AP50']:.1f}  AP75 {metrics['AP75']:.1f}  "
              f"AP90 {metrics['AP90']:.1f}  ({len(dataset)} images, {ips:.1f} img/s) -> {shown_path(path)}")
        if metrics.get("per_class"):
            print("per class AP: " + ", ".join(f"{c['name']} {c['AP']:.1f}" for c in metrics["per_class"]
                                               if c["AP"] is not None))
        return metrics


def tight_flags(detections: list[dict], ground_truth: list[dict], iou: float = 0.9) -> list[bool]:
    """For each COCO-format detection of one image: does a ground-truth box of its class
    overlap it at IoU >= ``iou``? (The test AP at that threshold applies, without the
    one-to-one matching: a figure's and a sentence's measure of tight boxes.)"""
    from torchvision.ops import box_iou

    def xyxy(items):
        return torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in items)],
                            dtype=torch.float32).reshape(-1, 4)

    if not detections or not ground_truth:
        return [False] * len(detections)
    overlap = box_iou(xyxy(detections), xyxy(ground_truth)) >= iou
    same = torch.tensor([[d["category_id"] == g["category_id"] for g in ground_truth] for d in detections])
    return (overlap & same).any(dim=1).tolist()


def missing_evaluations(run_dir: str | Path, data_root=None, extra_data_roots=()) -> list:
    """The data roots a run has no evaluation on yet: ``None`` for its own validation split
    (``eval.json``), then each of ``extra_data_roots`` without its ``eval-<tag>.json``. The
    reuse rule of the report's evaluation step (training's lives in :mod:`dynrcnn.rundir.integrity`)."""
    wanted = [(None, data_root)] + [(provenance.eval_tag(run_dir, e), e) for e in extra_data_roots]
    return [root for tag, root in wanted if read_json(runs.eval_file(run_dir, tag)) is None]


def ensure_evaluated(run_dir: str | Path, data_root=None, extra_data_roots=(), device: str = "cpu",
                     force: bool = False):
    """Evaluate a finished run where it has no results yet (everything with ``force``): on its
    own validation split (or ``data_root``) and on each of ``extra_data_roots``; returns the
    reloaded :class:`~dynrcnn.rundir.runs.Run`."""
    roots = [data_root, *extra_data_roots] if force else missing_evaluations(run_dir, data_root, extra_data_roots)
    for root in roots:
        evaluate(run_dir, data_root=None if root is None else str(root), device=device, force=force)
    return runs.load_run(Path(run_dir))


__all__ = ["evaluate", "held_evaluation", "ensure_evaluated", "missing_evaluations", "tight_flags", "coco_metrics", "ap_per_iou", "per_class_ap", "detections_to_coco", "predict", "EVALUATORS",
           "IOU_THRESHOLDS"]
