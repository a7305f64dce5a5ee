"""Intervals on AP differences: a paired, hierarchical bootstrap over seeds and images.

A difference of AP between two configurations (say Dynamic R-CNN and the baseline) varies with
the training seed and with the evaluation images. :func:`bootstrap_delta` gives its mean and a
95 % percentile interval by resampling both:

* **images** (the same resample for every run, so the comparison is paired image by image):
  each replicate draws the evaluation images with replacement and recomputes every run's COCO
  AP on that multiset of images;
* **seeds**: each replicate draws the seed pairs with replacement (pairs by seed when both
  configurations were trained with the same seeds; otherwise each configuration's seeds are
  drawn on their own) and averages the per-seed differences.

AP on a resampled image set is computed exactly as pycocotools' ``COCOeval.accumulate`` does
(area "all", 100 detections per image, 101 recall points, precision made monotone), from the
per-image matches of one ``COCOeval.evaluate()`` per run: drawing an image k times is the same
as giving its detections and ground truths weight k (:func:`weighted_ap`). With all weights 1
the result equals pycocotools' own AP (tested).

The report's intervals are no longer this bootstrap: they are built at the level of the training
seed (:mod:`dynrcnn.evaluation.seed_intervals`, which also holds the verdict rule), with this
module's :class:`APSamples` for the image part. :func:`bootstrap_contrast` stays as the method the
coverage test shows to under-cover with 3 seeds, and for ``benchmarks/before_after.py``.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import numpy as np

from dynrcnn.config import AP90_INDEX, REPORTED_METRICS, iou_index

METRIC_INDEX = {"AP50": iou_index(0.5), "AP75": iou_index(0.75), "AP90": AP90_INDEX}  # in IOU_THRESHOLDS
DEFAULT_BOOT = 1000


@dataclass
class CategoryMatches:
    """One category's detections over all images, in pycocotools' accumulation order."""

    det_image: np.ndarray  # [D] image index of each detection
    tp: np.ndarray  # [T, D] bool: matched to a non-ignored ground truth at threshold t
    fp: np.ndarray  # [T, D] bool: unmatched and not ignored
    gt_count: np.ndarray  # [I] non-ignored ground truths per image


@dataclass
class ImageMatches:
    """What AP needs from one run's evaluation: per-category matches on ``image_ids``."""

    image_ids: list[int]
    categories: list[CategoryMatches]
    num_thresholds: int


def image_matches(coco_gt, detections: list[dict]) -> ImageMatches:
    """Run ``COCOeval.evaluate()`` once and keep the per-image matches (area all, 100 dets).

    Only the area range "all" is evaluated: ``evaluate()`` matches every image and category once
    per area range, each range on its own, and AP reads range "all" alone, so the other three
    would be three quarters of the work for nothing."""
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes([dict(d) for d in detections]) if detections else None
        if coco_dt is None:  # no detection at all: every category has only ground truths
            return _empty_matches(coco_gt)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.areaRng, ev.params.areaRngLbl = ev.params.areaRng[:1], ev.params.areaRngLbl[:1]  # "all"
        ev.evaluate()
    p = ev.params
    n_img, n_area = len(p.imgIds), len(p.areaRng)
    max_det = p.maxDets[-1]
    cats = []
    for k in range(len(p.catIds)):
        entries = [ev.evalImgs[k * n_area * n_img + i] for i in range(n_img)]  # area index 0: all
        scores, images, matches, ignores = [], [], [], []
        gt_count = np.zeros(n_img, dtype=np.float64)
        for i, e in enumerate(entries):
            if e is None:
                continue
            scores.append(np.asarray(e["dtScores"][:max_det], dtype=np.float64))
            images.append(np.full(len(scores[-1]), i, dtype=np.int64))
            matches.append(np.asarray(e["dtMatches"])[:, :max_det])
            ignores.append(np.asarray(e["dtIgnore"])[:, :max_det])
            gt_count[i] = np.count_nonzero(np.asarray(e["gtIgnore"]) == 0)
        if not scores:
            cats.append(CategoryMatches(np.zeros(0, np.int64), np.zeros((len(p.iouThrs), 0), bool),
                                        np.zeros((len(p.iouThrs), 0), bool), gt_count))
            continue
        order = np.argsort(-np.concatenate(scores), kind="mergesort")  # as accumulate() does
        dtm = np.concatenate(matches, axis=1)[:, order]
        dtig = np.concatenate(ignores, axis=1)[:, order].astype(bool)
        cats.append(CategoryMatches(np.concatenate(images)[order], (dtm != 0) & ~dtig,
                                    (dtm == 0) & ~dtig, gt_count))
    return ImageMatches(list(p.imgIds), cats, len(p.iouThrs))


def _empty_matches(coco_gt) -> ImageMatches:
    img_ids = sorted(coco_gt.getImgIds())
    index = {i: n for n, i in enumerate(img_ids)}
    cats = []
    for cat in sorted(coco_gt.getCatIds()):
        count = np.zeros(len(img_ids))
        for ann in coco_gt.loadAnns(coco_gt.getAnnIds(catIds=[cat], iscrowd=False)):
            count[index[ann["image_id"]]] += 1
        cats.append(CategoryMatches(np.zeros(0, np.int64), np.zeros((10, 0), bool), np.zeros((10, 0), bool), count))
    return ImageMatches(img_ids, cats, 10)


def weighted_ap(m: ImageMatches, weights: np.ndarray) -> np.ndarray:
    """AP (percent) at each IoU threshold for each row of image ``weights`` ``[B, I]``: ``[B, T]``.

    Row b is the image multiset in which image i appears ``weights[b, i]`` times; a row of
    ones is the evaluation set itself. Categories without ground truth in a row are left out
    of that row's mean, as pycocotools leaves them out (precision -1).
    """
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    n_boot, n_thr = weights.shape[0], m.num_thresholds
    rec_thrs = np.linspace(0.0, 1.0, 101)
    total = np.zeros((n_boot, n_thr))
    defined = np.zeros((n_boot, 1))
    for c in m.categories:
        npig = weights @ c.gt_count  # [B]
        has = npig > 0
        defined[:, 0] += has
        if c.det_image.size == 0:
            continue
        w = weights[:, c.det_image]  # [B, D]
        for t in range(n_thr):
            tp = np.cumsum(w * c.tp[t], axis=1)
            fp = np.cumsum(w * c.fp[t], axis=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                rc = tp / npig[:, None]
            pr = tp / (fp + tp + np.spacing(1))
            pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]  # monotone from the right
            for b in np.nonzero(has)[0]:
                idx = np.searchsorted(rc[b], rec_thrs, side="left")
                ok = idx < rc.shape[1]
                total[b, t] += pr[b, idx[ok]].sum() / len(rec_thrs)
    with np.errstate(invalid="ignore"):
        return np.where(defined > 0, 100.0 * total / np.maximum(defined, 1), 0.0)


def metric_of(ap_per_thr: np.ndarray, metric: str) -> np.ndarray:
    """AP, AP50, AP75 or AP90 from ``[..., T]`` AP-per-threshold values."""
    if metric == "AP":
        return ap_per_thr.mean(axis=-1)
    return ap_per_thr[..., METRIC_INDEX[metric]]


@dataclass
class Delta:
    """``mean(B) - mean(A)`` with its 95 % interval, per IoU threshold and per summary metric."""

    per_iou: np.ndarray  # [T] point estimates
    per_iou_low: np.ndarray
    per_iou_high: np.ndarray
    metrics: dict  # name -> (estimate, low, high)
    seeds_a: int
    seeds_b: int
    paired_seeds: bool
    n_boot: int


@dataclass
class APSamples:
    """One run's AP per IoU threshold on its evaluation images (``full``, ``[T]``) and on each
    of ``n_boot`` image resamples (``boot``, ``[B, T]``). The resamples depend only on the
    number of images, ``n_boot`` and ``seed`` (:func:`image_weights`), so every run evaluated
    on the same images sees the same draws and runs can be paired image by image."""

    image_ids: list[int]
    full: np.ndarray
    boot: np.ndarray
    n_boot: int
    seed: int


def image_weights(n_img: int, n_boot: int = DEFAULT_BOOT, seed: int = 0) -> np.ndarray:
    """``[n_boot, n_img]`` multiplicities of the images in each bootstrap resample."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_img, np.full(n_img, 1.0 / n_img), size=n_boot).astype(np.float64)


def ap_samples(m: ImageMatches, n_boot: int = DEFAULT_BOOT, seed: int = 0) -> APSamples:
    """A run's :class:`APSamples`: the costly half of :func:`bootstrap_delta`, done once per run
    (the report caches it on disk, :mod:`dynrcnn.report.intervals`)."""
    n_img = len(m.image_ids)
    full = weighted_ap(m, np.ones((1, n_img)))[0]
    return APSamples(list(m.image_ids), full, weighted_ap(m, image_weights(n_img, n_boot, seed)), n_boot, seed)


def bootstrap_contrast(groups: list[dict], weights, n_boot: int = DEFAULT_BOOT, seed: int = 0,
                       level: float = 0.95) -> Delta:
    """``sum_i weights[i] x mean(groups[i])`` of AP averaged over seeds, with a hierarchical
    bootstrap interval (images resampled once for all runs; seeds resampled per group, with one
    draw shared by all groups when they hold the same seeds, which pairs them).

    Each group maps a training seed to that run's :class:`ImageMatches` (or its
    :class:`APSamples`, made with the same ``n_boot`` and ``seed``); all runs must be evaluated on
    the same images. ``[A, B]`` with weights ``[-1, 1]`` is :func:`bootstrap_delta`; four groups
    with ``[1, -1, -1, 1]`` give a difference of two differences (e.g. one implementation's gain
    minus another's).
    """
    if len(groups) != len(weights) or not groups or not all(groups):
        raise ValueError("bootstrap_contrast needs one weight per group and at least one run in each group")
    groups = [{s: v if isinstance(v, APSamples) else ap_samples(v, n_boot, seed) for s, v in g.items()}
              for g in groups]
    images = next(iter(groups[0].values())).image_ids
    for m in (m for g in groups for m in g.values()):
        if m.image_ids != images:
            raise ValueError("all runs of a comparison must be evaluated on the same images")
        if (m.n_boot, m.seed) != (n_boot, seed):
            raise ValueError(f"AP samples drawn with n_boot={m.n_boot}, seed={m.seed}; "
                             f"this comparison needs n_boot={n_boot}, seed={seed}")
    seeds = [sorted(g) for g in groups]
    paired = all(s == seeds[0] for s in seeds)
    rng = np.random.default_rng([seed, 1])  # the seed level, drawn apart from the image level
    first = rng.integers(0, len(seeds[0]), size=(n_boot, len(seeds[0])))
    rows = np.arange(n_boot)[:, None]
    point = np.zeros_like(groups[0][seeds[0][0]].full)
    reps = np.zeros_like(groups[0][seeds[0][0]].boot)  # [B, T]
    for i, (g, s, w) in enumerate(zip(groups, seeds, weights)):
        pick = first if (paired or i == 0) else rng.integers(0, len(s), size=(n_boot, len(s)))
        full = np.stack([g[k].full for k in s])
        boot = np.stack([g[k].boot for k in s])  # [runs, B, T]
        reps = reps + w * boot[pick, rows].mean(axis=1)
        point = point + w * full.mean(axis=0)
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    lo, hi = np.percentile(reps, q, axis=0)
    metrics = {}
    for name in REPORTED_METRICS:
        r = metric_of(reps, name)
        mlo, mhi = np.percentile(r, q)
        metrics[name] = (float(metric_of(point, name)), float(mlo), float(mhi))
    return Delta(point, lo, hi, metrics, len(seeds[0]), len(seeds[-1]), paired, n_boot)


def bootstrap_delta(a: dict, b: dict, n_boot: int = DEFAULT_BOOT, seed: int = 0, level: float = 0.95) -> Delta:
    """Difference ``B - A`` of AP averaged over seeds, with a hierarchical bootstrap interval.

    ``a`` and ``b`` map a training seed to that run's :class:`ImageMatches` (or its
    :class:`APSamples`, made with the same ``n_boot`` and ``seed``); all runs must be evaluated
    on the same images. Seeds present in both are paired. (:func:`bootstrap_contrast` of
    ``[a, b]`` with weights ``[-1, 1]``.)
    """
    if not a or not b:
        raise ValueError("bootstrap_delta needs at least one run on each side")
    return bootstrap_contrast([a, b], [-1.0, 1.0], n_boot=n_boot, seed=seed, level=level)


def signed(value: float, digits: int = 2) -> str:
    """A difference as text with its sign (``+1.27``), never ``-0.00``: a value that rounds to 0 prints ``+0.00``."""
    return f"{0.0 if round(value, digits) == 0 else value:+.{digits}f}"
