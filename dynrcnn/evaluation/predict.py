"""Inference on your own images: :class:`Detector` and ``dynrcnn predict``.

``Detector.from_run(RUN_DIR)`` builds the run's model from its ``config.json`` and its last
checkpoint (a trained run, a run made by ``dynrcnn convert``), or ``Detector.from_state_dict``
from an exported torchvision state dict; ``detector(image)`` returns boxes (xyxy pixels), labels,
class names and scores above the score threshold. Class names come from the run's record
(:func:`dynrcnn.rundir.runs.class_names`): recorded at training time from the training annotations, written by
``dynrcnn convert`` (COCO's 80 names for published weights); a run without them names its
classes ``class <label>``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from dynrcnn.rundir import runs
from dynrcnn.rundir.runs import class_names
from dynrcnn.errors import DataError, DynrcnnError
from dynrcnn.data.datasets import coco_class_names

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DRAW_MIN_SIDE = 512  # small images (the miniature benchmark's 128 px) are drawn enlarged to stay readable


@dataclass
class Detections:
    boxes: torch.Tensor  # [N, 4] xyxy pixels
    labels: torch.Tensor  # [N] 1..K
    names: list[str]
    scores: torch.Tensor  # [N]


class Detector:
    """A trained detector on one device; ``detector(image)`` -> :class:`Detections`.

    ``image``: a ``[3, H, W]`` float tensor in [0, 1], a PIL image or a path."""

    def __init__(self, model: torch.nn.Module, names: list[str], device: str = "cpu", score_thresh: float = 0.5):
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.names = list(names)
        self.score_thresh = float(score_thresh)

    @classmethod
    def from_run(cls, run_dir, checkpoint=None, device: str = "cpu", score_thresh: float = 0.5) -> "Detector":
        from dynrcnn.checkpoint.state import read_checkpoint
        from dynrcnn.modeling.model import build_model

        run_dir = Path(run_dir)
        cfg = runs.read_config(run_dir)
        path = Path(checkpoint) if checkpoint else runs.last_checkpoint(run_dir)
        if not path.is_file():
            raise DynrcnnError(f"no checkpoint {path}; train the run first or pass --checkpoint")
        state = read_checkpoint(path)["model"]
        num_classes = _num_classes(state, path)
        cfg.model.backbone_weights = ""  # the checkpoint holds the whole model
        model = build_model(cfg, num_classes)
        model.load_state_dict(state)
        names = class_names(run_dir) or _names_of_training_data(cfg, num_classes) or [
            f"class {k}" for k in range(1, num_classes)]
        if len(names) != num_classes - 1:
            raise DataError(f"{run_dir / runs.CONFIG} names {len(names)} classes but {path} predicts "
                            f"{num_classes - 1}")
        return cls(model, names, device, score_thresh)

    @classmethod
    def from_state_dict(cls, path, names: list[str] | None = None, device: str = "cpu",
                        score_thresh: float = 0.5) -> "Detector":
        """An exported torchvision ``fasterrcnn_resnet50_fpn`` state dict (``dynrcnn export``)."""
        from torchvision.models.detection import fasterrcnn_resnet50_fpn

        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise DynrcnnError(f"{path} is not a readable state dict ({type(e).__name__}: {e})") from None
        num_classes = _num_classes(state, path)
        model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_classes)
        model.load_state_dict(state)
        names = names or (coco_class_names() if num_classes == 81 else [f"class {k}" for k in range(1, num_classes)])
        return cls(model, names, device, score_thresh)

    @torch.no_grad()
    def __call__(self, image) -> Detections:
        img = load_image(image) if not torch.is_tensor(image) else image
        out = self.model([img.to(self.device)])[0]
        keep = out["scores"] >= self.score_thresh
        boxes, labels, scores = out["boxes"][keep].cpu(), out["labels"][keep].cpu(), out["scores"][keep].cpu()
        return Detections(boxes, labels, [self.names[int(k) - 1] for k in labels], scores)


def detect_tiled(detector: Detector, image, tile: int, stride: int | None = None, margin: float = 8.0) -> Detections:
    """Detections on an image larger than the detector was trained on (e.g. a 2299 x 2472 px aerial
    image with a model trained on 400 px tiles), in the image's coordinates.

    The image is cut as ``dynrcnn data trees`` cuts it (``tile`` px windows every ``stride`` px, by
    default half a tile, plus one flush with the far edge). A detection within ``margin`` px of a
    tile edge that is not an image edge is dropped: it may be a crown cut by the tile, and with
    stride <= tile / 2 an object up to ``tile - stride - 2 * margin`` px is whole, away from the cut
    edges, in another tile. The detections kept from every tile are then merged by class-wise NMS at
    the model's own ``box_nms_thresh`` (an object whole in two overlapping tiles is found twice)."""
    from torchvision.ops import batched_nms

    from dynrcnn.data.trees import tile_origins

    img = load_image(image) if not torch.is_tensor(image) else image
    stride = stride or max(1, tile // 2)
    if tile < 1 or not 1 <= stride <= tile:
        raise DataError(f"--tile must be a positive pixel size and --tile-stride between 1 and it (got {tile} "
                        f"and {stride}); a stride longer than the tile leaves pixels unseen")
    h, w = img.shape[-2:]
    kept = []
    for y0 in tile_origins(h, tile, stride):
        for x0 in tile_origins(w, tile, stride):
            crop = img[:, y0:y0 + tile, x0:x0 + tile]
            th, tw = crop.shape[-2:]
            d = detector(crop)
            b = d.boxes
            cut = torch.zeros(len(b), dtype=torch.bool)
            if x0 > 0:
                cut |= b[:, 0] < margin
            if y0 > 0:
                cut |= b[:, 1] < margin
            if x0 + tw < w:
                cut |= b[:, 2] > tw - margin
            if y0 + th < h:
                cut |= b[:, 3] > th - margin
            kept.append((b[~cut] + torch.tensor([x0, y0, x0, y0], dtype=b.dtype), d.labels[~cut], d.scores[~cut]))
    boxes, labels, scores = (torch.cat(parts) for parts in zip(*kept))
    keep = batched_nms(boxes, scores, labels, float(detector.model.roi_heads.nms_thresh))
    boxes, labels, scores = boxes[keep], labels[keep], scores[keep]
    return Detections(boxes, labels, [detector.names[int(k) - 1] for k in labels], scores)


def _names_of_training_data(cfg, num_classes: int) -> list[str] | None:
    """For a run that does not record its class names (older runs): those of the data it names,
    while that is still on disk and has as many classes as the model."""
    from dynrcnn.data.datasets import category_names

    names = category_names(cfg.data_root, cfg.val_split) if cfg.data_root else None
    return names if names and len(names) == num_classes - 1 else None


def _num_classes(state: dict, path) -> int:
    from dynrcnn.modeling.model import num_classes_of

    n = num_classes_of(state)
    if n is None:
        raise DynrcnnError(f"{path} holds no Faster R-CNN classifier (roi_heads.box_predictor.cls_score)")
    return n


def load_image(path) -> torch.Tensor:
    """An image file (or PIL image) as a ``[3, H, W]`` float tensor in [0, 1]; :class:`DataError`
    naming the file when it cannot be read."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.functional import pil_to_tensor

    if isinstance(path, Image.Image):
        return pil_to_tensor(path.convert("RGB")).float() / 255
    try:
        with Image.open(path) as im:
            return pil_to_tensor(im.convert("RGB")).float() / 255
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"cannot read image {path} ({type(e).__name__}: {e})") from None


def image_files(paths) -> list[Path]:
    """The image files named, folders expanded (sorted); :class:`DataError` for a missing path."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"no such image or folder: {p}")
    return out


def draw(image: torch.Tensor, det: Detections, path) -> Path:
    """The image with its detections (box, class name, score) as a PNG; small images enlarged."""
    from PIL import Image, ImageDraw, ImageFont
    from torchvision.transforms.functional import to_pil_image

    pil = to_pil_image(image.clamp(0, 1))
    scale = max(1.0, DRAW_MIN_SIDE / min(pil.size))
    if scale > 1:
        pil = pil.resize((round(pil.width * scale), round(pil.height * scale)), Image.NEAREST)
    canvas = ImageDraw.Draw(pil)
    try:  # a scalable default font (Pillow >= 10.1), about 1/28 of the picture's short side
        font = ImageFont.load_default(size=max(14, min(pil.size) // 28))
    except TypeError:
        font = ImageFont.load_default()
    palette = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324"]
    for box, label, name, score in zip(det.boxes.tolist(), det.labels.tolist(), det.names, det.scores.tolist()):
        color = palette[int(label) % len(palette)]
        x0, y0, x1, y1 = (v * scale for v in box)
        canvas.rectangle((x0, y0, x1, y1), outline=color, width=3)
        text = f"{name} {score:.2f}"
        left, top, right, bottom = canvas.textbbox((0, 0), text, font=font)
        tx, ty = x0 + 2, max(0.0, y0 - (bottom - top) - 4)
        canvas.rectangle(canvas.textbbox((tx, ty), text, font=font), fill=color)
        canvas.text((tx, ty), text, fill="white", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pil.save(path)
    return path


def predict_images(detector: Detector, files, out, keep_going: bool = False, progress: bool = True,
                   tile: int | None = None, stride: int | None = None) -> dict:
    """Detections of every image drawn to ``OUT/<stem>.png`` plus ``OUT/detections.json``
    (COCO results with ``file_name`` and ``category_name``); an unreadable image stops the run
    unless ``keep_going`` (then it is listed under ``skipped``). With ``tile``, each image is
    detected tile by tile and the detections merged (:func:`detect_tiled`)."""
    from tqdm import tqdm

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file; give a folder")
    results, skipped, drawn = [], [], []
    for i, f in enumerate(tqdm(files, desc="predict", unit="image", disable=not progress)):
        try:
            img = load_image(f)
        except DataError as e:
            if not keep_going:
                raise
            skipped.append({"file": str(f), "error": str(e)})
            continue
        det = detect_tiled(detector, img, tile, stride) if tile else detector(img)
        drawn.append(str(draw(img, det, out / f"{Path(f).stem}.png")))
        for box, label, name, score in zip(det.boxes.tolist(), det.labels.tolist(), det.names, det.scores.tolist()):
            results.append({"image_id": i, "file_name": str(f), "category_id": int(label), "category_name": name,
                            "bbox": [round(box[0], 2), round(box[1], 2), round(box[2] - box[0], 2),
                                     round(box[3] - box[1], 2)], "score": round(float(score), 4)})
    out.mkdir(parents=True, exist_ok=True)
    (out / "detections.json").write_text(json.dumps(results, indent=1) + "\n")
    return {"images": len(files) - len(skipped), "detections": len(results), "drawn": drawn, "skipped": skipped,
            "json": str(out / "detections.json")}


__all__ = ["Detector", "Detections", "coco_class_names", "load_image", "image_files", "draw",
           "predict_images", "detect_tiled"]
