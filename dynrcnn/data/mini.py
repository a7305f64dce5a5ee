"""The miniature detection benchmark: procedurally drawn shapes, written in COCO format.

The benchmark exists so that every claim of the paper can be checked on a CPU in minutes. It is
built to make *localisation quality* matter (the paper's gains are at high IoU):

* 6 classes of filled shapes with sharp (not anti-aliased) edges: rectangle, ellipse, triangle,
  star, cross and ring;
* every object has a random size (log-uniform inside COCO's small (< 32^2 px), medium and large
  (> 96^2 px) ranges scaled to the image, drawn 15 / 50 / 35 % of the time; no object smaller
  than 1/150 of the image, about 10 x 10 px at 128 px), aspect ratio, rotation and colour,
  sometimes a colour gradient or a speckle texture inside;
* 2-6 objects planned per image; later objects may partially hide earlier ones, but an object is
  never more than 20 % hidden (placements that would hide more are redrawn elsewhere), so that a
  box covering hidden parts stays predictable; an object that finds no such place in its tries is
  dropped (about one image in six holds a single object; 2.8 objects per image on average);
* subdued backgrounds (smooth noise, gradients, stripes or checkerboards at 40 % of their
  contrast), clutter lines and arcs that are not objects, and pixel noise; objects keep a
  minimum colour contrast to what lies beneath;
* boxes are the tight box of the *whole* object's rendered pixel mask (also where it is partly
  hidden), in COCO's ``[x, y, w, h]`` pixel-edge convention; ``area`` is the object's pixel count.

Candidate settings (:class:`MiniSettings`, issue 32's search for a benchmark where the premise of the
paper holds): denser scenes, more occlusion, distractor shapes that are no class, a wider range of
object sizes, more classes and harder appearance are options; their defaults draw today's benchmark
byte for byte (a test pins its hash), and a benchmark drawn with other settings records them in
its annotation files' ``info.generator``.

Determinism: each image is drawn from its own random generator seeded with
``(seed, split, index)``, PNGs are written with fixed settings and no metadata, and the JSON is
written with sorted keys, so the same arguments give byte-identical files whatever the number of
worker processes.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from dynrcnn.data.datasets import annotation_file
from dynrcnn.errors import DataError

CLASSES = ("rectangle", "ellipse", "triangle", "star", "cross", "ring")
SPLITS = ("train", "val")
_SPLIT_CODE = {"train": 1, "val": 2}
FORMAT_VERSION = 4
#: the benchmark of the report of record: training and validation images, and their side in pixels
#: (the ``mini`` preset's ``min_size``; tests/test_mini.py checks that they agree)
N_TRAIN, N_VAL, IMAGE_SIZE = 2000, 500, 128
SIZE_MIX = (0.15, 0.5, 0.35)  # how often an object is drawn small, medium, large (COCO ranges)
BACKGROUND_CONTRAST = 0.4  # backgrounds keep this fraction of their contrast around their mean
MIN_CONTRAST = 180  # summed |RGB difference| an object keeps from what lies beneath (if it can)
MAX_OCCLUDED = 0.2  # an object may lose at most this fraction of its pixels to later objects
#: shapes that become classes when MiniSettings.n_classes > len(CLASSES) (in this order)
EXTRA_CLASSES = ("pentagon", "hexagon", "arrow", "trapezoid", "half_disc", "l_shape")


@dataclass(frozen=True)
class MiniSettings:
    """How the generator draws a benchmark; the defaults are the report's benchmark (format 4).

    ``min_objects``/``max_objects``: objects planned per image (uniform); ``size_mix``: how often an
    object is planned small, medium or large (COCO's ranges scaled to the image); ``large_max``: the
    large band's upper end as a fraction of the image area; ``max_occluded``: the fraction of an
    object later objects may hide; ``n_classes``: the first ``n`` of :data:`CLASSES` +
    :data:`EXTRA_CLASSES`; ``distractors``: at most this many non-class shapes (irregular blobs)
    painted under the objects (0 to n per image, uniform); ``min_contrast``: summed RGB difference
    an object keeps from what lies beneath; ``background_contrast``: the fraction of their contrast
    backgrounds keep; ``clutter_max``: at most this many clutter lines or arcs; ``noise_max``: the
    largest pixel-noise standard deviation (drawn in ``[1, noise_max]``). ``size_bands``: ``mini``
    (the benchmark's bands: no object under 1/150 of the image) or ``coco`` (COCO's 32^2 / 96^2 px
    thresholds of a 640 x 480 image scaled to this image's area: at 128 px a small object is under 7 x 7
    px, so these bands want larger images).
    """

    min_objects: int = 2
    max_objects: int = 6
    size_mix: tuple[float, float, float] = SIZE_MIX
    large_max: float = 0.4
    max_occluded: float = MAX_OCCLUDED
    n_classes: int = len(CLASSES)
    distractors: int = 0
    min_contrast: float = MIN_CONTRAST
    background_contrast: float = BACKGROUND_CONTRAST
    clutter_max: int = 3
    noise_max: float = 4.0
    size_bands: str = "mini"

    def __post_init__(self):
        object.__setattr__(self, "size_mix", tuple(float(v) for v in self.size_mix))
        self.validate()

    def validate(self) -> None:
        if not 1 <= self.min_objects <= self.max_objects:
            raise DataError(f"generator: need 1 <= min_objects <= max_objects (got {self.min_objects}, "
                            f"{self.max_objects})")
        if len(self.size_mix) != 3 or min(self.size_mix) < 0 or abs(sum(self.size_mix) - 1.0) > 1e-6:
            raise DataError(f"generator: size_mix must be three shares summing to 1 (got {self.size_mix})")
        if not 0.0 <= self.max_occluded < 1.0:
            raise DataError(f"generator: max_occluded must be in [0, 1) (got {self.max_occluded})")
        if not 0.0 < self.large_max <= 1.0:
            raise DataError(f"generator: large_max must be in (0, 1] (got {self.large_max})")
        if not 1 <= self.n_classes <= len(CLASSES) + len(EXTRA_CLASSES):
            raise DataError(f"generator: n_classes must be in [1, {len(CLASSES) + len(EXTRA_CLASSES)}] "
                            f"(got {self.n_classes})")
        if self.size_bands not in ("mini", "coco"):
            raise DataError(f"generator: size_bands must be 'mini' or 'coco' (got {self.size_bands!r})")
        if self.distractors < 0 or self.clutter_max < 0 or self.noise_max < 1.0:
            raise DataError("generator: distractors and clutter_max must be >= 0, noise_max >= 1")

    @property
    def classes(self) -> tuple[str, ...]:
        return (CLASSES + EXTRA_CLASSES)[: self.n_classes]

    def changed(self) -> dict:
        """The settings that differ from the defaults (what a benchmark's record names)."""
        default = MiniSettings()
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()
                if v != getattr(default, k)}

    @classmethod
    def from_dict(cls, values: dict) -> "MiniSettings":
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise DataError(f"generator: unknown setting(s) {', '.join(sorted(unknown))}; valid: "
                            f"{', '.join(f.name for f in fields(cls))}")
        return cls(**values)


DEFAULT_SETTINGS = MiniSettings()


# --------------------------------------------------------------------------------------------
# shapes: polygons in a unit frame ([-1, 1]^2), scaled, rotated and translated later
# --------------------------------------------------------------------------------------------

def _circle(n: int = 48) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return np.stack([np.cos(t), np.sin(t)], axis=1)


_UNIT = {
    "rectangle": np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64),
    "ellipse": _circle(),
    "triangle": np.array([[0.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]),
    "cross": np.array([[-0.3, -1], [0.3, -1], [0.3, -0.3], [1, -0.3], [1, 0.3], [0.3, 0.3],
                       [0.3, 1], [-0.3, 1], [-0.3, 0.3], [-1, 0.3], [-1, -0.3], [-0.3, -0.3]]),
}


def _star(rng: np.random.Generator) -> np.ndarray:
    k = int(rng.integers(5, 8))
    inner = rng.uniform(0.4, 0.55)
    t = np.arange(2 * k) * np.pi / k - np.pi / 2
    r = np.where(np.arange(2 * k) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _regular(n: int) -> np.ndarray:
    t = np.arange(n) * 2.0 * np.pi / n - np.pi / 2
    return np.stack([np.cos(t), np.sin(t)], axis=1)


_EXTRA_UNIT = {
    "pentagon": _regular(5),
    "hexagon": _regular(6),
    "arrow": np.array([[-1, -0.3], [0.2, -0.3], [0.2, -0.8], [1, 0], [0.2, 0.8], [0.2, 0.3], [-1, 0.3]]),
    "trapezoid": np.array([[-1, 1], [1, 1], [0.5, -1], [-0.5, -1]], dtype=np.float64),
    "half_disc": _circle(48)[:25],  # angles 0..pi: the upper half of the unit disc
    "l_shape": np.array([[-1, -1], [-0.3, -1], [-0.3, 0.4], [1, 0.4], [1, 1], [-1, 1]], dtype=np.float64),
}


def _blob(rng: np.random.Generator) -> np.ndarray:
    """An irregular star-shaped polygon: a distractor that is no class."""
    k = int(rng.integers(7, 13))
    t = np.sort(rng.uniform(0, 2 * np.pi, size=k))
    r = rng.uniform(0.45, 1.0, size=k)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _shape_polygons(cls: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """Outer polygon and optional hole polygon of a shape in the unit frame."""
    if cls in _EXTRA_UNIT:
        return _EXTRA_UNIT[cls], None
    if cls == "blob":
        return _blob(rng), None
    if cls == "star":
        return _star(rng), None
    if cls == "ring":
        outer = _circle()
        return outer, outer * rng.uniform(0.45, 0.65)
    if cls == "cross":
        w = rng.uniform(0.22, 0.4)
        p = _UNIT["cross"].copy()
        p[np.abs(p) == 0.3] = np.sign(p[np.abs(p) == 0.3]) * w
        return p, None
    if cls == "triangle":
        p = _UNIT["triangle"].copy()
        p[0, 0] = rng.uniform(-0.8, 0.8)  # apex position: varied triangles
        return p, None
    return _UNIT[cls], None


def _poly_area(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _area_bands(size: int, large_max: float = 0.4, bands: str = "mini") -> list[tuple[float, float]]:
    """COCO's small / medium / large object areas, scaled to images of ``size`` px (the large band
    ends at ``large_max`` of the image area); ``bands="coco"``: scaled by the image area over a
    640 x 480 COCO image's, smallest 16 px."""
    full = float(size * size)
    if bands == "coco":
        r = full / (640 * 480)
        small = (max(16.0, 36 * r), 32.0 ** 2 * r)
        medium = (small[1], 96.0 ** 2 * r)
        return [small, medium, (medium[1], max(medium[1] * 1.2, large_max * full))]
    small = (full / 150, min(32.0 ** 2, full / 36))
    medium = (small[1], min(96.0 ** 2, full / 4))
    large = (medium[1], max(medium[1] * 1.2, large_max * full))
    return [small, medium, large]


def _transform(poly: np.ndarray, sx: float, sy: float, angle: float, cx: float, cy: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    x = poly[:, 0] * sx
    y = poly[:, 1] * sy
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


# --------------------------------------------------------------------------------------------
# backgrounds
# --------------------------------------------------------------------------------------------

def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    small = rng.integers(0, 256, size=(cells, cells, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.BICUBIC), dtype=np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    kind = int(rng.integers(0, 4))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == 0:  # smooth colour noise
        img = _smooth_noise(rng, size, int(rng.integers(3, 10)))
    elif kind == 1:  # linear gradient between two colours
        a, b = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
        th = rng.uniform(0, 2 * np.pi)
        t = (np.cos(th) * xx + np.sin(th) * yy)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        img = a + (b - a) * t[..., None]
    elif kind == 2:  # stripes
        a, b = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
        th = rng.uniform(0, np.pi)
        period = rng.uniform(6, 30) / size
        t = 0.5 + 0.5 * np.sin(2 * np.pi * (np.cos(th) * xx + np.sin(th) * yy) / period)
        img = a + (b - a) * t[..., None]
    else:  # checkerboard blended with smooth noise
        a, b = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
        cell = int(rng.integers(8, 32))
        t = (((np.arange(size)[:, None] // cell) + (np.arange(size)[None, :] // cell)) % 2).astype(np.float32)
        img = 0.6 * (a + (b - a) * t[..., None]) + 0.4 * _smooth_noise(rng, size, 4)
    return img


def _clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int, most: int = 3) -> None:
    for _ in range(int(rng.integers(0, most + 1))):
        col = tuple(int(v) for v in rng.integers(0, 256, size=3))
        width = int(rng.integers(1, 3))
        if rng.random() < 0.7:
            pts = [tuple(float(v) for v in rng.uniform(-10, size + 10, size=2)) for _ in range(2)]
            draw.line(pts, fill=col, width=width)
        else:
            x0, y0 = rng.uniform(-20, size, size=2)
            r = rng.uniform(10, size / 2)
            a0 = float(rng.uniform(0, 360))
            draw.arc([float(x0), float(y0), float(x0 + r), float(y0 + r)], a0,
                     a0 + float(rng.uniform(40, 200)), fill=col, width=width)


# --------------------------------------------------------------------------------------------
# one image
# --------------------------------------------------------------------------------------------

def _canvas(rng: np.random.Generator, size: int, settings: MiniSettings = DEFAULT_SETTINGS) -> np.ndarray:
    """The subdued background with its clutter, as a float32 ``[H, W, 3]`` array."""
    background = _background(rng, size)
    mean = background.mean(axis=(0, 1), keepdims=True)
    background = mean + settings.background_contrast * (background - mean)  # subdued, so objects stand out
    canvas = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8))
    _clutter(ImageDraw.Draw(canvas), rng, size, settings.clutter_max)
    return np.asarray(canvas, dtype=np.float32).copy()


def _place_object(rng: np.random.Generator, size: int, band: int, shrink: float,
                  settings: MiniSettings = DEFAULT_SETTINGS, cls: str | None = None) -> tuple[str, np.ndarray] | None:
    """A random shape of size ``band`` placed in the image: ``(class, pixel mask)``, or ``None`` if too
    large. ``cls``: draw this shape (a distractor) instead of a random class."""
    if cls is None:
        classes = settings.classes
        cls = classes[int(rng.integers(0, len(classes)))]
    # object area (pixels): log-uniform inside its planned band (shrunk after failed fits)
    a_lo, a_hi = _area_bands(size, settings.large_max, settings.size_bands)[band]
    target_area = shrink * math.exp(rng.uniform(math.log(a_lo), math.log(a_hi)))
    aspect = math.exp(rng.uniform(-0.9, 0.9))  # width / height before rotation
    if cls in ("star", "cross", "ring") and rng.random() < 0.5:
        aspect = math.exp(rng.uniform(-0.25, 0.25))
    angle = rng.uniform(0, 2 * np.pi) if rng.random() < 0.7 else rng.choice([0.0, np.pi / 2])
    outer, hole = _shape_polygons(cls, rng)
    unit_area = _poly_area(outer) - (_poly_area(hole) if hole is not None else 0.0)
    sxy = target_area / unit_area
    sx, sy = math.sqrt(sxy * aspect), math.sqrt(sxy / aspect)
    p = _transform(outer, sx, sy, angle, 0.0, 0.0)
    (minx, miny), (maxx, maxy) = p.min(axis=0), p.max(axis=0)
    if maxx - minx > size - 2 or maxy - miny > size - 2:
        return None
    cx = rng.uniform(-minx + 1, size - 1 - maxx)
    cy = rng.uniform(-miny + 1, size - 1 - maxy)
    m_img = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(m_img)
    d.polygon([tuple(v) for v in (p + [cx, cy]).tolist()], fill=255)
    if hole is not None:
        h = _transform(hole, sx, sy, angle, cx, cy)
        d.polygon([tuple(v) for v in h.tolist()], fill=0)
    return cls, np.asarray(m_img) > 0


def _hides_too_much(owner: np.ndarray, mask: np.ndarray, areas: list[int], limit: float = MAX_OCCLUDED) -> bool:
    """Whether drawing ``mask`` would leave an earlier object more than ``limit`` hidden."""
    hidden = owner[mask]
    hidden = hidden[hidden >= 0]
    if not hidden.size:
        return False
    counts = np.bincount(hidden, minlength=len(areas))
    owned = owner[owner >= 0]
    visible = np.bincount(owned, minlength=len(areas)) - counts
    return bool(np.any(visible < (1.0 - limit) * np.asarray(areas)))


def _paint(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray,
           min_contrast: float = MIN_CONTRAST) -> tuple[np.ndarray, np.ndarray]:
    """Fill ``mask`` in ``img`` in a colour that contrasts with what lies beneath; returns ``(ys, xs)``."""
    under = img[mask].mean(axis=0)
    colour = rng.uniform(0, 255, size=3)
    for _ in range(8):
        if np.abs(colour - under).sum() > min_contrast:
            break
        colour = rng.uniform(0, 255, size=3)
    style = rng.random()
    ys, xs = np.nonzero(mask)
    if style < 0.25:  # gradient fill
        colour2 = np.clip(colour + rng.uniform(-90, 90, size=3), 0, 255)
        t = (xs - xs.min()) / max(1, xs.max() - xs.min())
        fill = colour[None, :] + (colour2 - colour)[None, :] * t[:, None]
    elif style < 0.45:  # speckle texture
        fill = colour[None, :] + rng.normal(0, 10, size=(xs.size, 1))
    else:
        fill = np.broadcast_to(colour, (xs.size, 3))
    img[ys, xs] = fill
    return ys, xs


def _distractors(rng: np.random.Generator, img: np.ndarray, size: int, settings: MiniSettings) -> None:
    """Paint 0..``settings.distractors`` irregular blobs (no class, no box) into ``img``."""
    for _ in range(int(rng.integers(0, settings.distractors + 1))):
        placed = _place_object(rng, size, int(rng.choice(3, p=settings.size_mix)), 1.0, settings, cls="blob")
        if placed is not None:
            _paint(rng, img, placed[1], settings.min_contrast)


def render_image(seed: int, split: str, index: int, image_size: int = IMAGE_SIZE,
                 min_objects: int | None = None, max_objects: int | None = None, return_masks: bool = False,
                 settings: MiniSettings | None = None):
    """Draw image ``index`` of ``split``: a uint8 ``[H, W, 3]`` array and its objects.

    Each object is ``{"category": name, "bbox": [x, y, w, h], "area": pixels}`` with the tight box
    of the whole object's pixel mask. Pure function of its arguments. With ``return_masks``, a
    third item lists each object's full (also hidden) boolean pixel mask. ``settings``: the
    generator's options (default: the report's benchmark); ``min_objects``/``max_objects``, when
    given, replace theirs.
    """
    settings = settings or DEFAULT_SETTINGS
    min_objects = settings.min_objects if min_objects is None else min_objects
    max_objects = settings.max_objects if max_objects is None else max_objects
    rng = np.random.default_rng([int(seed), _SPLIT_CODE[split], int(index)])
    size = int(image_size)
    img = _canvas(rng, size, settings)
    if settings.distractors:
        _distractors(rng, img, size, settings)
    owner = np.full((size, size), -1, dtype=np.int16)
    areas: list[int] = []
    objects: list[dict] = []
    masks: list[np.ndarray] = []
    n_target = int(rng.integers(min_objects, max_objects + 1))
    # planned size band of each object (COCO small / medium / large); mostly large ones first,
    # so that small objects are not all rejected for hiding too much of a large one
    bands = rng.choice(3, size=n_target, p=settings.size_mix)
    if rng.random() < 0.75:
        bands = np.sort(bands)[::-1]
    plan = [int(b) for b in bands]
    shrink = 1.0
    attempts = 0
    while plan and attempts < 6 * n_target:
        attempts += 1
        placed = _place_object(rng, size, plan[0], shrink, settings)
        if placed is None:  # larger than the image: try smaller
            shrink *= 0.85
            continue
        cls, mask = placed
        area = int(mask.sum())
        if area < 16 or _hides_too_much(owner, mask, areas, settings.max_occluded):
            continue
        ys, xs = _paint(rng, img, mask, settings.min_contrast)
        owner[mask] = len(objects)
        areas.append(area)
        plan.pop(0)
        shrink = 1.0
        if return_masks:
            masks.append(mask)
        x0, x1 = int(xs.min()), int(xs.max()) + 1
        y0, y1 = int(ys.min()), int(ys.max()) + 1
        objects.append({"category": cls, "bbox": [x0, y0, x1 - x0, y1 - y0], "area": area})

    noise = rng.normal(0, rng.uniform(1, settings.noise_max), size=img.shape)
    img = np.clip(img + noise, 0, 255).astype(np.uint8)
    if return_masks:
        return img, objects, masks
    return img, objects


def _file_name(index: int) -> str:
    return f"{index:06d}.png"


def _render_and_write(job: tuple) -> tuple[int, list[dict]]:
    seed, split, index, image_size, out_dir, settings = job
    img, objects = render_image(seed, split, index, image_size, settings=settings)
    path = os.path.join(out_dir, split, _file_name(index))
    Image.fromarray(img).save(path, format="PNG", compress_level=1, optimize=False)
    return index, objects


# --------------------------------------------------------------------------------------------
# the benchmark
# --------------------------------------------------------------------------------------------

def _dump_json(obj: dict, path: Path) -> None:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text + "\n", encoding="ascii")
    os.replace(tmp, path)


def _coco_dict(split: str, seed: int, image_size: int, results: list[tuple[int, list[dict]]],
               settings: MiniSettings = DEFAULT_SETTINGS) -> dict:
    classes = settings.classes
    cat_id = {name: i + 1 for i, name in enumerate(classes)}
    images, annotations = [], []
    ann_id = 1
    for index, objects in sorted(results):
        image_id = index + 1
        images.append({"id": image_id, "file_name": _file_name(index),
                       "width": image_size, "height": image_size})
        for obj in objects:
            annotations.append({"id": ann_id, "image_id": image_id,
                                "category_id": cat_id[obj["category"]], "bbox": obj["bbox"],
                                "area": obj["area"], "iscrowd": 0})
            ann_id += 1
    info = {"description": f"dynrcnn miniature shapes benchmark ({split})",
            "version": str(FORMAT_VERSION), "seed": seed, "image_size": image_size,
            "url": "generated by `dynrcnn data mini`"}
    if settings.changed():  # the report's benchmark keeps its files as they were
        info["generator"] = settings.changed()
    return {
        "info": info,
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": cat_id[n], "name": n, "supercategory": "shape"} for n in classes],
    }


def _foreign_files(out: Path) -> list[str]:
    """Files under ``out`` that ``generate_mini`` did not write (anything but its annotation
    files and the images they list), as paths relative to ``out``."""
    ours = set()
    for split in SPLITS:
        ann = annotation_file("", split)  # relative to out
        try:
            data = json.loads((out / ann).read_text())
            if "dynrcnn data mini" in str(data["info"]["url"]):
                ours |= {ann.as_posix()} | {f"{split}/{im['file_name']}" for im in data["images"]}
        except (OSError, ValueError, KeyError, TypeError):
            continue
    files = (p.relative_to(out).as_posix() for p in out.rglob("*") if not p.is_dir())
    return sorted(f for f in files if f not in ours)


def staging_folder(out: Path, what: str) -> Path:
    """A new hidden folder next to ``out`` to write ``what`` (e.g. "the miniature benchmark")
    into before :func:`publish_folder` moves it to ``out``; a folder that cannot be written is
    one :class:`DataError` line."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as e:
        raise DataError(f"cannot write {what} to {out}: {e}; "
                        "choose another --out or fix the folder's permissions") from e


def publish_folder(tmp: Path, out: Path) -> None:
    """Give the finished :func:`staging_folder` ``tmp`` the permissions ``mkdir`` would have
    (``mkdtemp`` makes it 0o700) and move it to ``out`` (replacing an earlier dataset there): a
    reader sees the old dataset or the new one, never a mixture."""
    import shutil

    os.chmod(tmp, 0o777 & ~_umask())
    if out.exists() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        os.rename(tmp, out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def ensure_mini(out, seed: int = 0, n_train: int = N_TRAIN, n_val: int = N_VAL, image_size: int = IMAGE_SIZE,
                split: str = "val", progress: bool = False, settings: MiniSettings | None = None) -> bool:
    """Generate the miniature benchmark under ``out`` unless its ``split`` annotations are
    already there (a finished generation: :func:`generate_mini` publishes atomically); returns
    whether it generated."""
    if annotation_file(out, split).is_file():
        return False
    generate_mini(out, seed=seed, n_train=n_train, n_val=n_val, image_size=image_size, progress=progress,
                  settings=settings)
    return True


def generate_mini(out, seed: int = 0, n_train: int = N_TRAIN, n_val: int = N_VAL,
                  image_size: int = IMAGE_SIZE, workers: int | None = None, progress: bool = True,
                  settings: MiniSettings | None = None) -> dict:
    """Generate the miniature benchmark under ``out``; returns a summary dict.

    ``settings``: the generator's options (:class:`MiniSettings`; default: the report's benchmark).

    Writes ``out/annotations/instances_{train,val}.json`` and ``out/{train,val}/NNNNNN.png``.
    ``workers``: processes used for drawing (default: the number of CPU cores; 0 or 1 draws in
    this process). Same arguments give byte-identical files.

    The benchmark is drawn into a fresh temporary folder next to ``out`` and published when
    complete (an interrupted run leaves ``out`` as it was). ``out`` must be missing, empty or an
    earlier benchmark written by this function: a folder holding any other file is refused.
    """
    import shutil

    out = Path(out)
    if n_train < 0 or n_val < 0:
        raise DataError(f"--train and --val must be >= 0 (got {n_train} and {n_val})")
    if image_size < 32:
        raise DataError(f"--image-size must be at least 32 px (got {image_size})")
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file, not a folder; choose another --out")
    foreign = _foreign_files(out) if out.is_dir() else []
    if foreign:
        raise DataError(f"{out} holds files that 'dynrcnn data mini' did not write ({foreign[0]}, "
                        f"{len(foreign)} in all); choose an empty or new --out")
    tmp = staging_folder(out, "the miniature benchmark")
    try:
        annotation_file(tmp, SPLITS[0]).parent.mkdir()
        for split in SPLITS:
            (tmp / split).mkdir()
        if workers is None:
            workers = os.cpu_count() or 1
        workers = max(0, int(workers))
        counts = {"train": n_train, "val": n_val}
        settings = settings or DEFAULT_SETTINGS
        jobs = [(int(seed), split, i, int(image_size), str(tmp), settings)
                for split in SPLITS for i in range(counts[split])]
        t0 = time.perf_counter()
        from tqdm import tqdm

        results: dict[str, list] = {s: [] for s in SPLITS}
        with tqdm(total=len(jobs), desc="drawing mini benchmark", unit="img", disable=not progress) as bar:
            if workers <= 1 or len(jobs) < 50:
                it = map(_render_and_write, jobs)
                pool = None
            else:
                method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
                pool = mp.get_context(method).Pool(workers)
                it = pool.imap(_render_and_write, jobs, chunksize=16)
            for job, res in zip(jobs, it):
                results[job[1]].append(res)
                bar.update(1)
            if pool is not None:
                pool.close()
                pool.join()
        summary = {"out": str(out), "seed": seed, "image_size": image_size, "classes": list(settings.classes)}
        if settings.changed():
            summary["generator"] = settings.changed()
        for split in SPLITS:
            coco = _coco_dict(split, int(seed), int(image_size), results[split], settings)
            _dump_json(coco, annotation_file(tmp, split))
            summary[split] = {"images": len(coco["images"]), "annotations": len(coco["annotations"])}
        publish_folder(tmp, out)
    except OSError as e:
        raise DataError(f"cannot write the miniature benchmark to {out}: {e}; "
                        "choose another --out or fix the folder's permissions (nothing was changed)") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
