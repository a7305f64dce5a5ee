"""Dataset statistics and sample pictures for the report (matplotlib, Agg-safe: never shows)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: COCO's object size thresholds (pixel area), as in pycocotools' ``areaRng``.
SMALL_MAX = 32 ** 2
LARGE_MIN = 96 ** 2


def _source_dict(source) -> tuple[dict, str]:
    from dynrcnn.data import CocoDetection, load_annotations

    if isinstance(source, CocoDetection):
        return source.coco.dataset, str(source.annotation_file)
    if isinstance(source, dict):
        return source, "<dict>"
    return load_annotations(source), str(source)


def size_category(area: float) -> str:
    """COCO's size range of an object area: ``small`` (< 32^2), ``medium``, ``large`` (>= 96^2)."""
    return "small" if area < SMALL_MAX else "large" if area >= LARGE_MIN else "medium"


def dataset_statistics(source) -> dict:
    """Statistics of a COCO-format split (a :class:`~dynrcnn.data.CocoDetection`, an annotation
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


def plot_box_size_histogram(source, ax=None, bins: int = 40):
    """Histogram of sqrt(area) of the objects with COCO's 32 / 96 px limits; returns the Figure."""
    import matplotlib.figure

    stats = source if isinstance(source, dict) and "areas" in source else dataset_statistics(source)
    if ax is None:
        fig = matplotlib.figure.Figure(figsize=(5, 3.2), dpi=100)
        ax = fig.add_subplot(1, 1, 1)
    else:
        fig = ax.figure
    side = np.sqrt(stats["areas"])
    if side.size:
        ax.hist(side, bins=np.geomspace(max(1.0, side.min()), side.max() + 1, bins), color="#4c72b0")
        ax.set_xscale("log")
    for x, lab in ((32, "32 px"), (96, "96 px")):
        ax.axvline(x, color="k", ls="--", lw=1)
        ax.text(x, 0.97, f" {lab}", transform=ax.get_xaxis_transform(), va="top", fontsize=8)
    s = stats["sizes"]
    ax.set_title(f"object sizes: small {s['small']}, medium {s['medium']}, large {s['large']}", fontsize=9)
    ax.set_xlabel("sqrt(object area), pixels")
    ax.set_ylabel("objects")
    fig.tight_layout()
    return fig


def draw_samples(dataset, n: int = 8, seed: int = 0, cols: int = 4, figure=None, size: float = 2.4):
    """Draw ``n`` random images of a :class:`~dynrcnn.data.CocoDetection` with their boxes and
    class names; returns the matplotlib Figure (never shown)."""
    import matplotlib.figure
    from matplotlib import patches

    n = min(n, len(dataset))
    rng = np.random.default_rng(seed)
    picks = sorted(rng.choice(len(dataset), size=n, replace=False).tolist()) if n else []
    rows = max(1, (n + cols - 1) // cols)
    fig = figure if figure is not None else matplotlib.figure.Figure(figsize=(cols * size, rows * size), dpi=100)
    colours = ["#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00", "#ffff33", "#a65628", "#f781bf"]
    for k, idx in enumerate(picks):
        ax = fig.add_subplot(rows, cols, k + 1)
        image, target = dataset[idx]
        ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
        for box, label in zip(target["boxes"].tolist(), target["labels"].tolist()):
            x0, y0, x1, y1 = box
            c = colours[(label - 1) % len(colours)]
            ax.add_patch(patches.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec=c, lw=1.2))
            ax.text(x0, y0 - 1, dataset.class_names[label - 1], color="white", fontsize=6, va="bottom",
                    bbox={"facecolor": c, "alpha": 0.8, "pad": 0.5, "lw": 0})
        ax.set_title(f"image {target['image_id']}", fontsize=7)
        ax.axis("off")
    fig.tight_layout(pad=0.3)
    return fig


def save_sample_figure(root, path, split: str = "val", n: int = 8, seed: int = 0, dpi: int = 80,
                       colours: int | None = 256) -> Path:
    """Draw :func:`draw_samples` for ``root``'s ``split`` and save it as a PNG at ``path``.

    ``colours``: quantise to a palette of this many colours to keep the file small (None: keep
    full colour).
    """
    import io

    from PIL import Image

    from dynrcnn.data import load_dataset

    ds = load_dataset(root, split, train=False)
    fig = draw_samples(ds, n=n, seed=seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    buf.seek(0)
    with Image.open(buf) as im:
        im = im.convert("RGB")
        if colours:
            im = im.quantize(colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        im.save(path, format="PNG", optimize=True)
    return path
