"""Dataset statistics of a COCO-format split (the figures drawn from them are in :mod:`dynrcnn.report.plots`)."""

from __future__ import annotations

import numpy as np

#: COCO's object size thresholds (pixel area), as in pycocotools' ``areaRng``.
SMALL_MAX = 32 ** 2
LARGE_MIN = 96 ** 2
#: the same limits scaled to an image's area where that makes them smaller (images under 192 px a
#: side), as the miniature benchmark draws its sizes (``dynrcnn.data.mini._area_bands``): at 128 px no
#: object can reach COCO's absolute 96^2 px (56 % of the image), so those limits alone call nothing large
SMALL_MAX_SHARE = 1 / 36
LARGE_MIN_SHARE = 1 / 4
SIZE_NAMES = ("small", "medium", "large")


def _source_dict(source) -> tuple[dict, str]:
    from dynrcnn.data.datasets import CocoDetection, load_annotations

    if isinstance(source, CocoDetection):
        return source.coco.dataset, str(source.annotation_file)
    if isinstance(source, dict):
        return source, "<dict>"
    return load_annotations(source), str(source)


def dataset_statistics(source) -> dict:
    """Statistics of a COCO-format split (a :class:`~dynrcnn.data.datasets.CocoDetection`, an annotation
    file path, or a parsed dict). Crowd annotations are not counted as instances.

    Keys: ``images``, ``instances``, ``classes``, ``per_class`` (DataFrame: class, instances,
    images), ``instances_per_image`` (DataFrame: objects, images), ``mean_instances_per_image``,
    ``max_instances_per_image``, ``images_without_instances``, ``sizes`` (small/medium/large
    counts, COCO's thresholds on the annotation ``area``: what AP_S/AP_M/AP_L use), ``size_fractions``,
    ``relative_sizes`` / ``relative_size_fractions`` (the same with the limits scaled to each image,
    :data:`SMALL_MAX_SHARE` / :data:`LARGE_MIN_SHARE`), ``areas`` (numpy array), ``box_aspect_ratios``
    (w/h numpy array), ``crowd``.
    """
    import pandas as pd

    data, name = _source_dict(source)
    cats = sorted(data["categories"], key=lambda c: c["id"])
    anns = [a for a in data["annotations"] if not a.get("iscrowd", 0)]
    per_img = {im["id"]: 0 for im in data["images"]}
    per_cat = {c["id"]: 0 for c in cats}
    imgs_cat = {c["id"]: set() for c in cats}
    image_area = {im["id"]: float(im.get("width", 0)) * float(im.get("height", 0)) for im in data["images"]}
    areas = np.empty(len(anns), dtype=np.float64)
    aspect = np.empty(len(anns), dtype=np.float64)
    small_max = np.empty(len(anns), dtype=np.float64)
    large_min = np.empty(len(anns), dtype=np.float64)
    for i, a in enumerate(anns):
        per_img[a["image_id"]] += 1
        per_cat[a["category_id"]] += 1
        imgs_cat[a["category_id"]].add(a["image_id"])
        w, h = float(a["bbox"][2]), float(a["bbox"][3])
        areas[i] = float(a.get("area", w * h))
        aspect[i] = w / h if h > 0 else np.nan
        full = image_area.get(a["image_id"]) or np.inf  # no image size: COCO's limits
        small_max[i], large_min[i] = min(SMALL_MAX, SMALL_MAX_SHARE * full), min(LARGE_MIN, LARGE_MIN_SHARE * full)
    counts = np.array(list(per_img.values()), dtype=np.int64)
    sizes = _size_counts(areas, SMALL_MAX, LARGE_MIN)
    relative = _size_counts(areas, small_max, large_min)
    n = max(1, len(anns))
    hist = np.bincount(counts) if counts.size else np.zeros(1, dtype=np.int64)
    return {
        "source": name,
        "images": len(data["images"]),
        "instances": len(anns),
        "crowd": len(data["annotations"]) - len(anns),
        "classes": len(cats),
        "per_class": pd.DataFrame({"class": [c["name"] for c in cats],
                                   "instances": [per_cat[c["id"]] for c in cats],
                                   "images": [len(imgs_cat[c["id"]]) for c in cats]}),
        "instances_per_image": pd.DataFrame({"objects": np.arange(len(hist)), "images": hist}),
        "mean_instances_per_image": float(counts.mean()) if counts.size else 0.0,
        "max_instances_per_image": int(counts.max()) if counts.size else 0,
        "images_without_instances": int((counts == 0).sum()),
        "sizes": sizes,
        "size_fractions": {k: v / n for k, v in sizes.items()},
        "relative_sizes": relative,
        "relative_size_fractions": {k: v / n for k, v in relative.items()},
        "areas": areas,
        "box_aspect_ratios": aspect,
    }


def _size_counts(areas: np.ndarray, small_max, large_min) -> dict:
    return {"small": int((areas < small_max).sum()),
            "medium": int(((areas >= small_max) & (areas < large_min)).sum()),
            "large": int((areas >= large_min).sum())}


def _shares(fractions: dict) -> str:
    small, medium, large = (f"{100 * fractions[k]:.0f} %" for k in SIZE_NAMES)
    return f"{small} are small, {medium} medium and {large} large"


def size_sentence(stats: dict, split: str = "the split") -> str:
    """What :func:`dataset_statistics`' size counts say, in words computed from them: the shares by
    COCO's pixel limits (what AP_S / AP_M / AP_L score), which ranges hold no object (and so leave
    that AP with nothing to score), and, where the image-scaled limits differ, the shares by those."""
    if not stats["instances"]:
        return f"{split} has no objects."
    text = (f"Of {split}'s objects, {_shares(stats['size_fractions'])} by COCO's pixel limits "
            f"(area < 32² px small, ≥ 96² px large: what AP_S / AP_M / AP_L score)")
    empty = [k for k in SIZE_NAMES if not stats["sizes"][k]]
    if empty:
        aps = " and ".join(f"AP_{k[0].upper()}" for k in empty)
        text += (f"; no object is {' or '.join(empty)} by them, so {aps} {'has' if len(empty) == 1 else 'have'} "
                 f"nothing to score")
    else:
        text += ", so all three of COCO's size ranges are represented"
    rel = stats.get("relative_sizes")
    if rel is not None and rel != stats["sizes"]:
        text += (f". With the limits scaled to the image ({SMALL_MAX_SHARE * 100:.1f} % and "
                 f"{LARGE_MIN_SHARE * 100:.0f} % of its area where that is less, the ranges the miniature "
                 f"benchmark draws its sizes from), {_shares(stats['relative_size_fractions'])}")
    return text + "."
