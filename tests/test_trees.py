"""The tree-crown data (dynrcnn/data/trees.py) on hand-made VOC files and small generated images:
the parser (clipping, refusals naming file and object), the tiles, the rule for boxes cut by a
tile edge, the split by source image, and the preparation's refusals (nothing half-written)."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dynrcnn.cli import main
from dynrcnn.data import trees
from dynrcnn.data.datasets import load_annotations
from dynrcnn.errors import DataError
from dynrcnn.io import file_sha256


def voc(boxes, width=100, height=80, filename="img.png", names=None) -> bytes:
    objs = "".join(
        f"<object><name>{(names or ['Tree'] * len(boxes))[i]}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for i, b in enumerate(boxes))
    return (f"<annotation><filename>{filename}</filename><size><width>{width}</width><height>{height}</height>"
            f"<depth>3</depth></size>{objs}</annotation>").encode()


def test_parser_reads_boxes_and_labels(tmp_path):
    path = tmp_path / "a.xml"
    path.write_bytes(voc([(10, 20, 30, 45), (0, 0, 5.5, 7)], names=["Alive", "Dead"]))
    v = trees.parse_voc(path)
    assert (v.width, v.height, v.filename) == (100, 80, "img.png")
    assert v.boxes.tolist() == [[10, 20, 30, 45], [0, 0, 5.5, 7]]
    assert v.labels == ["Alive", "Dead"]


def test_parser_clips_boxes_to_the_image():
    v = trees.parse_voc(voc([(-5, 10, 50, 90), (90, -3, 130, 20)]), name="clip.xml")
    assert v.boxes.tolist() == [[0, 10, 50, 80], [90, 0, 100, 20]]


@pytest.mark.parametrize("box", [(10, 10, 10, 20), (30, 10, 20, 20), (120, 10, 140, 20), (10, -9, 20, -1)])
def test_parser_refuses_a_degenerate_box_naming_file_and_object(box):
    with pytest.raises(DataError) as e:
        trees.parse_voc(voc([(1, 1, 9, 9), (2, 2, 8, 8), box]), name="crowns.xml")
    msg = str(e.value)
    assert msg.startswith("crowns.xml object 2 (Tree): degenerate box") and "\n" not in msg


@pytest.mark.parametrize("text, said", [
    (b"<annotation><size>", "not valid XML"),
    (b"<annotation><object/></annotation>", "no <size>"),
    (voc([(1, "x", 3, 4)]), "object 0: <ymin> is 'x', not a number"),
    (b"<annotation><size><width>10</width><height>10</height></size><object><name>T</name></object></annotation>",
     "object 0: no <bndbox>"),
])
def test_parser_refuses_malformed_files(text, said):
    with pytest.raises(DataError, match=said):
        trees.parse_voc(text, name="bad.xml")


def test_tile_origins_cover_every_pixel():
    assert trees.tile_origins(400) == [0]
    assert trees.tile_origins(300) == [0]
    assert trees.tile_origins(800) == [0, 200, 400]
    assert trees.tile_origins(1035) == [0, 200, 400, 600, 635]
    for size in (401, 999, 1249, 2472):
        starts = trees.tile_origins(size)
        assert starts[-1] + trees.TILE == size and all(b - a <= trees.STRIDE for a, b in zip(starts, starts[1:]))


def test_edge_rule_keeps_a_box_half_inside_clipped_and_drops_less():
    boxes = np.array([
        [10, 10, 50, 50],    # inside
        [380, 10, 420, 50],  # half inside (20 of 40 px wide): kept, clipped
        [385, 10, 425, 50],  # 15 of 40 px inside: dropped
        [390, 390, 430, 430],  # a quarter inside (corner): dropped
        [-30, 100, 50, 140],  # 50 of 80 px inside (left edge): kept
    ], dtype=float)
    kept, idx = trees.boxes_in_tile(boxes, 0, 0, 400, 400)
    assert idx.tolist() == [0, 1, 4]
    assert kept.tolist() == [[10, 10, 50, 50], [380, 10, 400, 50], [0, 100, 50, 140]]
    # the same boxes seen from the tile to the right, in its own coordinates
    kept, idx = trees.boxes_in_tile(boxes, 200, 0, 400, 400)
    assert idx.tolist() == [1, 2] and kept[0].tolist() == [180, 10, 220, 50]
    kept, idx = trees.boxes_in_tile(boxes, 200, 200, 400, 400)  # the corner box, whole
    assert idx.tolist() == [3] and kept.tolist() == [[190, 190, 230, 230]]


def image(w, h, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_tiles_are_split_by_source_image():
    big = trees.parse_voc(voc([(100, 100, 140, 140), (390, 390, 420, 420)], width=800, height=600), name="big.xml")
    small = trees.parse_voc(voc([(5, 5, 25, 25)], width=400, height=400), name="small.xml")
    other = trees.parse_voc(voc([(5, 5, 25, 25)], width=500, height=400), name="other.xml")
    images = {"big": (image(800, 600), big), "small": (image(400, 400, 1), small), "other": (image(500, 400, 2), other)}
    split = trees.tile_split(images, val_sources=("big",))
    assert {t["source"] for t in split["val"]} == {"big"}
    assert {t["source"] for t in split["train"]} == {"small", "other"}
    assert len(split["val"]) == 3 * 2 and len(split["train"]) == 1 + 2
    for t in split["val"]:
        assert np.array_equal(t["pixels"], images["big"][0][t["y0"]:t["y0"] + 400, t["x0"]:t["x0"] + 400])
    # the crown at (390, 390, 420, 420) is whole in tile (200, 200), two thirds inside tile
    # (400, 200) (kept, clipped) and a third or less inside every other tile (dropped)
    held = {(t["x0"], t["y0"]): t["boxes"].tolist() for t in split["val"] if len(t["boxes"])}
    assert held == {(0, 0): [[100, 100, 140, 140]], (200, 200): [[190, 190, 220, 220]],
                    (400, 200): [[0, 190, 20, 220]]}


def test_tile_split_refuses_a_size_mismatch_and_an_unknown_val_source():
    v = trees.parse_voc(voc([(5, 5, 25, 25)], width=400, height=300), name="m.xml")
    with pytest.raises(DataError, match="gives the image size 400 x 300, but its image is 400 x 400"):
        trees.tile_split({"m": (image(400, 400), v)}, val_sources=())
    with pytest.raises(DataError, match="validation source 'x'"):
        trees.tile_split({"m": (image(400, 300), v)}, val_sources=("x",))


# --------------------------------------------------------------------------------------------
# preparation from a hand-made wheel

SOURCES = ("A", "B")


def fake_wheel(path, boxes_a=((10, 10, 60, 60), (380, 100, 420, 140)), broken_png=False):
    with zipfile.ZipFile(path, "w") as z:
        for name, w, h, boxes in (("A", 600, 400, boxes_a), ("B", 400, 400, ((1, 1, 30, 30),))):
            z.writestr(f"deepforest/data/{name}.xml", voc(boxes, w, h, f"{name}.png"))
            buf = io.BytesIO()
            Image.fromarray(image(w, h)).save(buf, format="PNG")
            z.writestr(f"deepforest/data/{name}.png", b"not a png" if broken_png else buf.getvalue())
    return path


def prepare(out, wheel, **kw):
    return trees.prepare_trees(out, wheel=wheel, sha256=file_sha256(wheel), sources=SOURCES, val_sources=("B",), **kw)


def test_prepare_writes_coco_split_by_source_with_checksums(tmp_path):
    wheel = fake_wheel(tmp_path / "w.whl")
    s = prepare(tmp_path / "trees", wheel)
    assert (s["train"]["images"], s["val"]["images"]) == (2, 1)
    train = load_annotations(tmp_path / "trees/annotations/instances_train.json",
                             check_image_dir=tmp_path / "trees/train")
    assert {im["source"] for im in train["images"]} == {"A"}
    # A's second crown is half in tile x0=0 (kept, clipped to 20 px wide) and whole in tile x0=200
    boxes = sorted((im["x0"], a["bbox"][2]) for a in train["annotations"] for im in train["images"]
                   if im["id"] == a["image_id"])
    assert boxes == [(0, 20), (0, 50), (200, 40)]
    manifest = json.loads((tmp_path / "trees/trees.json").read_text())
    assert manifest["wheel_sha256"] == file_sha256(wheel)
    assert manifest["sources"]["B"]["split"] == "val" and len(manifest["sources"]["A"]["sha256"]) == 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trees", "w.whl"]  # no temporary folder left
    prepare(tmp_path / "trees", wheel)  # an earlier output of the command is replaced


def test_prepare_refuses_a_folder_it_did_not_write(tmp_path):
    wheel = fake_wheel(tmp_path / "w.whl")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="did not write \\(notes.txt, 1 in all\\)"):
        prepare(tmp_path / "out", wheel)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("kw, said", [
    ({"boxes_a": ((10, 10, 60, 60), (50, 50, 50, 90))}, "deepforest/data/A.xml object 1 \\(Tree\\): degenerate box"),
    ({"broken_png": True}, "deepforest/data/A.png in .* is not a readable image"),
])
def test_bad_input_leaves_nothing_behind(tmp_path, kw, said):
    wheel = fake_wheel(tmp_path / "w.whl", **kw)
    with pytest.raises(DataError, match=said):
        prepare(tmp_path / "out", wheel)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.whl"]


def test_a_wheel_with_another_checksum_is_refused_in_one_line(tmp_path, capsys):
    wheel = fake_wheel(tmp_path / "w.whl")
    code = main(["data", "trees", "--out", str(tmp_path / "out"), "--wheel", str(wheel), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "not the pinned 8c2798d8e9be" in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_the_wheel_is_fetched_with_pip_and_checked(tmp_path, monkeypatch):
    calls = []

    def pip(content, rc=0, stderr=""):
        def run(cmd, **kw):
            calls.append(cmd)
            if content is not None:
                (Path(cmd[cmd.index("-d") + 1]) / trees.WHEEL).write_bytes(content)
            return subprocess.CompletedProcess(cmd, rc, "", stderr)
        return run

    cache = tmp_path / "cache"
    monkeypatch.setattr(trees.subprocess, "run", pip(b"tampered"))
    with pytest.raises(DataError, match="not the pinned"):
        trees.fetch_wheel(cache)
    assert calls[0][1:6] == ["-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    assert "deepforest==2.1.0" in calls[0]
    assert not list(cache.iterdir())  # the mismatching download is not kept
    monkeypatch.setattr(trees.subprocess, "run", pip(None, 1, "ERROR: offline"))
    with pytest.raises(DataError, match="pip download deepforest==2.1.0 failed \\(ERROR: offline\\)"):
        trees.fetch_wheel(cache)
    good = b"the pinned wheel"
    monkeypatch.setattr(trees.subprocess, "run", pip(good))
    assert trees.fetch_wheel(cache, hashlib.sha256(good).hexdigest()).read_bytes() == good
    monkeypatch.setattr(trees.subprocess, "run", pip(None, 1, "must not run"))
    assert trees.fetch_wheel(cache, hashlib.sha256(good).hexdigest()) == cache / trees.WHEEL  # cached: no pip
    assert len(calls) == 3


def test_the_trees_preset_fits_the_tiles_and_the_crowns():
    from dynrcnn.presets import get_preset

    cfg = get_preset("trees")
    assert (cfg.model.min_size, cfg.model.max_size) == (trees.TILE, trees.TILE)  # tiles seen at their own size
    assert cfg.model.arch == "efficientnet_lite0_fpn" and cfg.model.pretrained_backbone
    for side in range(10, 121):  # every crown side from 10 to 120 px has an anchor within a factor 2
        assert min(max(a / side, side / a) for a in cfg.model.anchor_sizes) <= 2, side
    assert cfg.max_iter // cfg.dynamic.interval >= 15  # a dozen or more threshold / beta updates
