"""Loading COCO-format detection datasets (COCO 2017 or the miniature benchmark) for training.

Layout of a dataset folder (COCO 2017's and the miniature benchmark's)::

    ROOT/annotations/instances_{split}.json
    ROOT/{split}/<file_name of each image>

* :class:`CocoDetection` returns torchvision-style ``(image, target)`` pairs: boxes in absolute
  ``xyxy`` pixels, labels contiguous ``1..K`` with :attr:`CocoDetection.cat_ids` mapping back to the
  COCO category ids for evaluation. Crowd boxes are left out of the targets, degenerate boxes
  (no width or height after clipping to the image) are dropped and counted, and with
  ``train=True`` images left without any box are excluded.
* :class:`TrainSampler` is an infinite, deterministic batch sampler with aspect-ratio grouping:
  the stream of ``(index, flip)`` batches is a pure function of ``(seed, rank, world_size)``, so a
  resumed run sees exactly the batches the uninterrupted run would have seen
  (:meth:`TrainSampler.iter_from`).
* Malformed annotation files fail with :class:`~dynrcnn.errors.DataError` naming the file and the
  offending entry.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from dynrcnn.errors import DataError

log = logging.getLogger(__name__)

SPLIT_PAIRS = (("train", "val"), ("train2017", "val2017"))


# --------------------------------------------------------------------------------------------
# annotation files
# --------------------------------------------------------------------------------------------

def _entry(kind: str, i: int, item) -> str:
    if isinstance(item, dict) and "id" in item:
        return f"{kind}[{i}] (id {item['id']!r})"
    return f"{kind}[{i}]"


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def load_annotations(path, check_image_dir=None) -> dict:
    """Read and validate a COCO-format annotation file; returns the parsed dict.

    Checks: well-formed JSON; top-level ``images``, ``annotations``, ``categories`` lists; each
    entry's required keys and types; boxes of 4 numbers with non-negative size; known image and
    category ids; unique ids. With ``check_image_dir``, also that every image file exists there.
    Raises :class:`DataError` naming ``path`` and the offending entry.
    """
    path = Path(path)
    hint = "fix or regenerate the file (e.g. `dynrcnn data mini --out DIR` or `dynrcnn data coco --root DIR`)"
    if not path.is_file():
        raise DataError(f"annotation file {path} does not exist; {hint}")
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); {hint}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read annotation file {path}: {e}; {hint}") from e
    if not isinstance(data, dict):
        raise DataError(f"{path}: the top level must be a JSON object with 'images', 'annotations' "
                        f"and 'categories', found {type(data).__name__}; {hint}")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DataError(f"{path}: missing top-level key '{key}'; {hint}")
        if not isinstance(data[key], list):
            raise DataError(f"{path}: '{key}' must be a list, found {type(data[key]).__name__}; {hint}")

    def need(kind, i, item, keys):
        if not isinstance(item, dict):
            raise DataError(f"{path}: {kind}[{i}] must be an object, found {type(item).__name__}; {hint}")
        for k in keys:
            if k not in item:
                raise DataError(f"{path}: {_entry(kind, i, item)} is missing key '{k}'; {hint}")

    cat_ids = set()
    for i, c in enumerate(data["categories"]):
        need("categories", i, c, ("id", "name"))
        if not isinstance(c["id"], int) or isinstance(c["id"], bool):
            raise DataError(f"{path}: {_entry('categories', i, c)} has a non-integer id; {hint}")
        if c["id"] in cat_ids:
            raise DataError(f"{path}: {_entry('categories', i, c)} repeats category id {c['id']}; {hint}")
        cat_ids.add(c["id"])
    if not cat_ids:
        raise DataError(f"{path}: 'categories' is empty; {hint}")
    image_ids = set()
    for i, im in enumerate(data["images"]):
        need("images", i, im, ("id", "file_name", "width", "height"))
        if im["id"] in image_ids:
            raise DataError(f"{path}: {_entry('images', i, im)} repeats image id {im['id']!r}; {hint}")
        if not (_is_number(im["width"]) and _is_number(im["height"]) and im["width"] > 0 and im["height"] > 0):
            raise DataError(f"{path}: {_entry('images', i, im)} has an invalid width/height "
                            f"({im['width']!r} x {im['height']!r}); {hint}")
        if not isinstance(im["file_name"], str) or not im["file_name"]:
            raise DataError(f"{path}: {_entry('images', i, im)} has an invalid file_name; {hint}")
        image_ids.add(im["id"])
    ann_ids = set()
    for i, a in enumerate(data["annotations"]):
        need("annotations", i, a, ("id", "image_id", "category_id", "bbox"))
        where = _entry("annotations", i, a)
        if a["id"] in ann_ids:
            raise DataError(f"{path}: {where} repeats annotation id {a['id']!r}; {hint}")
        ann_ids.add(a["id"])
        b = a["bbox"]
        if not isinstance(b, list) or len(b) != 4 or not all(_is_number(v) for v in b):
            raise DataError(f"{path}: {where} has bbox {b!r}; a bbox must be 4 numbers [x, y, width, height]; {hint}")
        if b[2] < 0 or b[3] < 0:
            raise DataError(f"{path}: {where} has a negative box size in bbox {b!r}; {hint}")
        if a["category_id"] not in cat_ids:
            raise DataError(f"{path}: {where} has unknown category_id {a['category_id']!r} "
                            f"(known: {sorted(cat_ids)}); {hint}")
        if a["image_id"] not in image_ids:
            raise DataError(f"{path}: {where} refers to unknown image_id {a['image_id']!r}; {hint}")
        if "iscrowd" in a and a["iscrowd"] not in (0, 1, True, False):
            raise DataError(f"{path}: {where} has iscrowd {a['iscrowd']!r}; expected 0 or 1; {hint}")
    if check_image_dir is not None:
        check_images_exist(data, path, check_image_dir)
    return data


def check_images_exist(data: dict, ann_path, image_dir, limit: int | None = None) -> None:
    """Raise :class:`DataError` naming the first image entry whose file is missing."""
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise DataError(f"image folder {image_dir} (for {ann_path}) does not exist; "
                        "download or generate the images first")
    present = _list_files(image_dir)
    for i, im in enumerate(data["images"] if limit is None else data["images"][:limit]):
        name = im["file_name"]
        if name not in present and not (image_dir / name).is_file():
            raise DataError(f"{ann_path}: {_entry('images', i, im)} names image file {name!r}, "
                            f"which is missing from {image_dir}; restore the file or remove the entry")


def image_size_problem(path, size, width, height) -> str | None:
    """Why an image of ``size`` (PIL's ``(w, h)``) does not match its annotated ``width`` x
    ``height`` (boxes are scaled by those numbers), or ``None`` when it matches."""
    if tuple(size) == (round(float(width)), round(float(height))):
        return None
    return (f"image file {path} is {size[0]}x{size[1]} px but its annotation says "
            f"{round(float(width))}x{round(float(height))}")


def _list_files(folder: Path) -> set[str]:
    try:
        with os.scandir(folder) as it:
            return {e.name for e in it}
    except OSError:
        return set()


def coco_from_dict(data: dict):
    """A pycocotools ``COCO`` object built from an already parsed dict (silently)."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def load_coco(path):
    """pycocotools' ``COCO`` of an annotation file (silently, :func:`coco_from_dict`)."""
    return coco_from_dict(json.loads(Path(path).read_text()))


def annotation_file(root, split) -> Path:
    return Path(root) / "annotations" / f"instances_{split}.json"


def category_names(root, split) -> list[str] | None:
    """The category names of ``root``'s ``split`` in label order (sorted by category id, as
    :class:`CocoDetection` numbers them 1..K); None when the annotation file is not there."""
    path = annotation_file(root, split)
    if not path.is_file():
        return None
    return [str(c["name"]) for c in sorted(json.loads(path.read_text())["categories"], key=lambda c: c["id"])]


def split_names(root) -> tuple[str, str]:
    """``("train", "val")`` (miniature benchmark) or ``("train2017", "val2017")`` (COCO 2017),
    whichever has annotation files under ``root``."""
    root = Path(root)
    for pair in SPLIT_PAIRS:
        if any(annotation_file(root, s).is_file() for s in pair):
            return pair
    raise DataError(f"{root} holds no annotations/instances_{{train,val}}.json nor "
                    "annotations/instances_{train2017,val2017}.json; generate the miniature benchmark "
                    "(`dynrcnn data mini --out DIR`) or prepare COCO (`dynrcnn data coco --root DIR`)")


# --------------------------------------------------------------------------------------------
# the dataset
# --------------------------------------------------------------------------------------------

class CocoDetection(torch.utils.data.Dataset):
    """A COCO-format split as ``(image FloatTensor[3,H,W] in [0,1], target)`` pairs.

    ``dataset[i]`` or ``dataset[(i, flip)]``: ``flip=True`` mirrors image and boxes horizontally.
    ``target``: ``boxes`` float32 ``[N,4]`` xyxy pixels, ``labels`` int64 ``[N]`` in ``1..K``,
    ``image_id`` (int, the COCO id), ``area`` float32 ``[N]``, ``iscrowd`` int64 ``[N]`` (zeros:
    crowd boxes are not in targets; evaluation uses :attr:`coco`).
    """

    def __init__(self, root, split: str, train: bool = True, check_files: bool = True):
        self.root = Path(root)
        self.split = split
        self.train = bool(train)
        self.annotation_file = annotation_file(root, split)
        self.image_dir = self.root / split
        data = load_annotations(self.annotation_file, check_image_dir=self.image_dir if check_files else None)
        self.coco = coco_from_dict(data)
        cats = sorted(data["categories"], key=lambda c: c["id"])
        self.cat_ids = [c["id"] for c in cats]
        self.class_names = [str(c["name"]) for c in cats]
        self.label_to_cat_id = {i + 1: cid for i, cid in enumerate(self.cat_ids)}
        self.cat_id_to_label = {cid: i + 1 for i, cid in enumerate(self.cat_ids)}
        self.num_classes = len(self.cat_ids) + 1

        per_image: dict = {im["id"]: [] for im in data["images"]}
        for a in data["annotations"]:
            per_image[a["image_id"]].append(a)
        self.dropped_boxes = 0
        self.crowd_boxes = 0
        self._records = []
        for im in data["images"]:
            w, h = float(im["width"]), float(im["height"])
            boxes, labels, areas = [], [], []
            for a in per_image[im["id"]]:
                if a.get("iscrowd", 0):
                    self.crowd_boxes += 1
                    continue
                x, y, bw, bh = (float(v) for v in a["bbox"])
                x0, y0 = min(max(x, 0.0), w), min(max(y, 0.0), h)
                x1, y1 = min(max(x + bw, 0.0), w), min(max(y + bh, 0.0), h)
                if x1 - x0 <= 0 or y1 - y0 <= 0:
                    self.dropped_boxes += 1
                    continue
                boxes.append((x0, y0, x1, y1))
                labels.append(self.cat_id_to_label[a["category_id"]])
                areas.append(float(a.get("area", bw * bh)))
            if self.train and not boxes:
                continue
            self._records.append({
                "image_id": im["id"], "file_name": im["file_name"], "width": w, "height": h,
                "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                "labels": np.asarray(labels, dtype=np.int64),
                "area": np.asarray(areas, dtype=np.float32),
            })
        self.image_ids = [r["image_id"] for r in self._records]
        self.excluded_images = len(data["images"]) - len(self._records)
        if self.dropped_boxes:
            log.warning("%s: dropped %d degenerate box(es) (no width or height inside the image)",
                        self.annotation_file, self.dropped_boxes)
        if self.train and not self._records:
            raise DataError(f"{self.annotation_file}: no image has a usable box, nothing to train on; "
                            "check the annotations")

    def __len__(self) -> int:
        return len(self._records)

    def aspect_ratios(self) -> list[float]:
        """Width / height of each kept image, from the annotation file (no image decoding)."""
        return [r["width"] / r["height"] for r in self._records]

    def load_image(self, index: int) -> Image.Image:
        r = self._records[index]
        path = self.image_dir / r["file_name"]
        try:
            with Image.open(path) as im:
                problem = image_size_problem(path, im.size, r["width"], r["height"])
                rgb = im.convert("RGB")
        except (OSError, ValueError) as e:
            raise DataError(f"{self.annotation_file}: image id {r['image_id']!r} ({path}) cannot be read: {e}; "
                            "restore the file (re-download or regenerate the dataset)") from e
        if problem:
            raise DataError(f"{self.annotation_file}: image id {r['image_id']!r}: {problem}; restore the image "
                            "or correct its width/height entry ('dynrcnn data verify' lists every such image)")
        return rgb

    def __getitem__(self, key):
        if isinstance(key, (tuple, list)):
            index, flip = int(key[0]), bool(key[1])
        else:
            index, flip = int(key), False
        r = self._records[index]
        pil = self.load_image(index)
        arr = np.asarray(pil, dtype=np.uint8)
        image = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)
        boxes = torch.from_numpy(r["boxes"].copy())
        if flip:
            image = image.flip(-1)
            width = float(image.shape[-1])
            boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
        target = {
            "boxes": boxes,
            "labels": torch.from_numpy(r["labels"].copy()),
            "image_id": int(r["image_id"]),
            "area": torch.from_numpy(r["area"].copy()),
            "iscrowd": torch.zeros(len(r["labels"]), dtype=torch.int64),
        }
        return image, target

    def __repr__(self) -> str:
        return (f"CocoDetection({str(self.root)!r}, {self.split!r}, train={self.train}): {len(self)} images, "
                f"{self.num_classes - 1} classes, {self.dropped_boxes} degenerate boxes dropped")


def load_dataset(root, split: str, train: bool = True) -> CocoDetection:
    """``CocoDetection(root, split, train)``; ``split`` may be ``"train"``/``"val"`` for either layout."""
    if not annotation_file(root, split).is_file() and split in ("train", "val"):
        pair = split_names(root)
        split = pair[0] if split == "train" else pair[1]
    return CocoDetection(root, split, train=train)


# --------------------------------------------------------------------------------------------
# sampling and loading
# --------------------------------------------------------------------------------------------

class TrainSampler(torch.utils.data.Sampler):
    """Infinite deterministic batch sampler with aspect-ratio grouping, for one process.

    Epoch ``e`` permutes all images with ``torch.Generator().manual_seed(seed + e)`` and draws one
    flip decision per position from the same generator; rank ``r`` of ``world_size`` takes
    positions ``r, r + world_size, ...``. Images go into two groups (``w/h >= 1`` and ``< 1``) and a
    group yields a batch when it holds ``batch_size`` images; partial groups carry over into the
    next epoch (as detectron2's grouped sampler does). Each batch is a list of ``(index, flip)``.
    """

    def __init__(self, aspect_ratios: Sequence[float], batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, hflip_prob: float = 0.5, start_batch: int = 0):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        if len(aspect_ratios) < world_size:
            raise DataError(f"{len(aspect_ratios)} training images cannot be split across {world_size} processes")
        self.groups = [0 if float(a) >= 1.0 else 1 for a in aspect_ratios]
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.hflip_prob = float(hflip_prob)
        self.start_batch = int(start_batch)

    def _epoch(self, epoch: int) -> Iterator[tuple[int, bool]]:
        n = len(self.groups)
        g = torch.Generator().manual_seed(self.seed + epoch)
        perm = torch.randperm(n, generator=g)
        flips = torch.rand(n, generator=g) < self.hflip_prob
        mine = slice(self.rank, None, self.world_size)
        return zip(perm[mine].tolist(), flips[mine].tolist())

    def iter_from(self, start_batch: int = 0) -> Iterator[list[tuple[int, bool]]]:
        """The batch stream starting at batch number ``start_batch`` (0-based)."""
        buckets: list[list] = [[], []]
        count = 0
        epoch = 0
        while True:
            for index, flip in self._epoch(epoch):
                bucket = buckets[self.groups[index]]
                bucket.append((index, bool(flip)))
                if len(bucket) == self.batch_size:
                    if count >= start_batch:
                        yield list(bucket)
                    count += 1
                    bucket.clear()
            epoch += 1

    def __iter__(self):
        return self.iter_from(self.start_batch)


def collate(batch):
    """``[(image, target), ...]`` to ``(list of images, list of targets)``."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)


def build_train_loader(dataset: CocoDetection, batch_size: int, seed: int, start_batch: int = 0,
                       num_workers: int = 2, rank: int = 0, world_size: int = 1,
                       hflip_prob: float = 0.5) -> torch.utils.data.DataLoader:
    """Infinite training loader; batch ``k`` of the stream is the same whatever ``start_batch``."""
    sampler = TrainSampler(dataset.aspect_ratios(), batch_size, seed, rank=rank, world_size=world_size,
                           hflip_prob=hflip_prob, start_batch=start_batch)
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers,
        persistent_workers=num_workers > 0, pin_memory=False,
    )


def build_eval_loader(dataset: CocoDetection, batch_size: int = 1, num_workers: int = 2) -> torch.utils.data.DataLoader:
    """Sequential loader over every image of ``dataset`` (build it with ``train=False``)."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=num_workers,
        persistent_workers=False, drop_last=False,
    )


def coco_class_names() -> list[str]:
    """COCO's 80 category names in label order 1..80 (torchvision's weights metadata, no download)."""
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    return [c for c in FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"] if c not in ("__background__", "N/A")]
