"""Tiled prediction on an image larger than the training tiles (dynrcnn/evaluation/predict.py,
``dynrcnn predict --tile``): every object found once, in the image's coordinates, whatever tiles cut it."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from dynrcnn.cli import main
from dynrcnn.errors import DataError
from dynrcnn.evaluation.predict import Detector, detect_tiled
from dynrcnn.presets import build_config
from tests.test_engine import tiny_root  # noqa: F401  (the module's tiny benchmark fixture)
from tests.test_predict import run  # noqa: F401  (a tiny trained run)

W, H = 700, 520
#: objects in the image's coordinates: inside one tile, across a cut at x = 200 and at y = 200,
#: across both, by the image's edges
OBJECTS = torch.tensor([[20.0, 30.0, 60.0, 80.0], [180.0, 40.0, 230.0, 90.0], [300.0, 170.0, 360.0, 240.0],
                        [370.0, 380.0, 440.0, 430.0], [650.0, 470.0, 700.0, 520.0], [0.0, 300.0, 40.0, 350.0]])


class Oracle(torch.nn.Module):
    """A detector that finds every object of :data:`OBJECTS` a crop shows, clipped to the crop (as a
    trained one reports a crown a tile cuts). It reads where the crop lies from its pixels: channel 0
    holds x / W, channel 1 y / H."""

    def __init__(self):
        super().__init__()
        self.roi_heads = type("Heads", (), {"nms_thresh": 0.5})()

    def forward(self, images):
        out = []
        for img in images:
            x0, y0 = round(float(img[0, 0, 0]) * W), round(float(img[1, 0, 0]) * H)
            h, w = img.shape[-2:]
            b = OBJECTS - torch.tensor([x0, y0, x0, y0])
            b[:, [0, 2]] = b[:, [0, 2]].clamp(0, w)
            b[:, [1, 3]] = b[:, [1, 3]].clamp(0, h)
            seen = ((b[:, 2] - b[:, 0]) > 0) & ((b[:, 3] - b[:, 1]) > 0)
            out.append({"boxes": b[seen], "labels": torch.ones(int(seen.sum()), dtype=torch.int64),
                        "scores": torch.linspace(0.9, 0.6, len(OBJECTS))[seen]})
        return out


def coordinate_image() -> torch.Tensor:
    img = torch.zeros(3, H, W)
    img[0] = torch.arange(W).float()[None, :] / W
    img[1] = torch.arange(H).float()[:, None] / H
    return img


def test_every_object_is_found_once_whole_in_image_coordinates():
    det = detect_tiled(Detector(Oracle(), ["tree"], score_thresh=0.0), coordinate_image(), tile=400)
    order = det.boxes[:, 0].argsort()
    assert torch.equal(det.boxes[order], OBJECTS[OBJECTS[:, 0].argsort()])
    assert det.names == ["tree"] * len(OBJECTS)


def test_untiled_and_whole_image_tiles_agree():
    oracle = Detector(Oracle(), ["tree"], score_thresh=0.0)
    det = detect_tiled(oracle, coordinate_image(), tile=800)  # one tile holds the image
    assert torch.equal(det.boxes, oracle(coordinate_image()).boxes)


@pytest.mark.parametrize("tile, stride", [(0, None), (400, 500), (-3, None)])
def test_bad_tiles_are_refused(tile, stride):
    with pytest.raises(DataError, match="--tile"):
        detect_tiled(Detector(Oracle(), ["tree"]), coordinate_image(), tile=tile, stride=stride)


def test_a_small_model_predicts_tile_by_tile():
    from dynrcnn.modeling.model import build_model

    torch.manual_seed(0)
    model = build_model(build_config("mini_smoke", "baseline"), num_classes=3)
    det = detect_tiled(Detector(model, ["a", "b"], score_thresh=0.0), torch.rand(3, 200, 300), tile=128)
    assert len(det.boxes) > 0 and (det.boxes[:, 2:] > det.boxes[:, :2]).all()
    assert (det.boxes[:, [0, 2]] <= 300).all() and (det.boxes[:, [1, 3]] <= 200).all()


def test_predict_command_tiles_a_large_image(run, tiny_root, tmp_path, capsys):  # noqa: F811
    # the tiny benchmark's 64 px validation images side by side: 192 x 128 px, tiles of 64
    tiles = sorted((tiny_root / "val").iterdir())[:6]
    large = Image.new("RGB", (192, 128))
    for k, path in enumerate(tiles):
        with Image.open(path) as im:
            large.paste(im.convert("RGB"), (64 * (k % 3), 64 * (k // 3)))
    large.save(tmp_path / "large.png")
    assert main(["predict", str(run), str(tmp_path / "large.png"), "--out", str(tmp_path / "pred"), "--tile", "64",
                 "--score-thresh", "0.0", "--no-progress"]) == 0
    results = json.loads((tmp_path / "pred" / "detections.json").read_text())
    assert results and max(r["bbox"][0] + r["bbox"][2] for r in results) > 64  # beyond the first tile
    assert all(r["bbox"][0] + r["bbox"][2] <= 192.01 and r["bbox"][1] + r["bbox"][3] <= 128.01 for r in results)
    assert "detections on 1 images" in capsys.readouterr().out
