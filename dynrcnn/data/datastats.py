"""Dataset statistics of a COCO-format split (the figures drawn from them are in :mod:`dynrcnn.report.plots`)."""

from __future__ import annotations

import numpy as np

#: COCO's object size thresholds (pixel area), as in pycocotools' ``areaRng``.
SMALL_MAX = 32 ** 2
LARGE_MIN = 96 ** 2


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
    counts, COCO's thresholds on the annotation ``area``), ``size_fractions``, ``areas`` (numpy
    array), ``box_aspect_ratios`` (w/h numpy array), ``crowd``.
    """
    import pandas as pd

    data, name = _source_dict(source)
    cats = sorted(data["categories"], key=lambda c: c["id"])
    anns = [a for a in data["annotations"] if not a.get("iscrowd", 0)]
    per_img = {im["id"]: 0 for im in data["images"]}
    per_cat = {c["id"]: 0 for c in cats}
    imgs_cat = {c["id"]: set() for c in cats}
    areas = np.empty(len(anns), dtype=np.float64)
    aspect = np.empty(len(anns), dtype=np.float64)
    for i, a in enumerate(anns):
        per_img[a["image_id"]] += 1
        per_cat[a["category_id"]] += 1
        imgs_cat[a["category_id"]].add(a["image_id"])
        w, h = float(a["bbox"][2]), float(a["bbox"][3])
        areas[i] = float(a.get("area", w * h))
        aspect[i] = w / h if h > 0 else np.nan
    counts = np.array(list(per_img.values()), dtype=np.int64)
    sizes = {"small": int((areas < SMALL_MAX).sum()),
             "medium": int(((areas >= SMALL_MAX) & (areas < LARGE_MIN)).sum()),
             "large": int((areas >= LARGE_MIN).sum())}
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
        "areas": areas,
        "box_aspect_ratios": aspect,
    }
