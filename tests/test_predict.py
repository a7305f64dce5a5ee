"""Using the detector: class names recorded with the model, ``dynrcnn predict`` and the Python API,
and ``eval``'s refusal of data whose class names differ."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from dynrcnn.cli import main
from dynrcnn.checkpoint.convert import convert, converted_config
from dynrcnn.engine.trainer import train_model
from dynrcnn.errors import DataError
from dynrcnn.modeling.model import build_model
from dynrcnn.evaluation.predict import Detector, image_files, predict_images
from dynrcnn.data.datasets import coco_class_names
from dynrcnn.rundir.runs import class_names
from tests.test_convert import to_mmdet_layout
from tests.test_engine import tiny_cfg, tiny_root  # noqa: F401  (the module's tiny benchmark fixture)


@pytest.fixture(scope="module")
def run(tiny_root, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("predict_run")
    train_model(tiny_cfg(tiny_root, "max_iter=4", "eval_at_end=false"), out, progress=False)
    return out


def test_the_run_records_its_class_names_and_predict_draws_them(run, tiny_root, tmp_path, capsys):  # noqa: F811
    from dynrcnn.data.datasets import load_dataset

    names = load_dataset(tiny_root, "val", train=False).class_names
    assert class_names(run) == names
    det = Detector.from_run(run, score_thresh=0.0)
    files = image_files([tiny_root / "val"])
    assert len(files) == 6
    d = det(files[0])
    assert len(d.boxes) == len(d.names) == len(d.scores) > 0 and set(d.names) <= set(names)
    assert (d.boxes[:, 2:] >= d.boxes[:, :2]).all() and (d.boxes <= 64).all()
    assert main(["predict", str(run), str(tiny_root / "val"), "--out", str(tmp_path / "pred"), "--no-progress",
                 "--score-thresh", "0.0"]) == 0
    results = json.loads((tmp_path / "pred" / "detections.json").read_text())
    assert {r["category_name"] for r in results} <= set(names) and all(r["score"] >= 0 for r in results)
    assert sorted(p.name for p in (tmp_path / "pred").glob("*.png")) == sorted(f"{f.stem}.png" for f in files)
    from PIL import Image

    with Image.open(tmp_path / "pred" / f"{files[0].stem}.png") as im:
        assert min(im.size) >= 512  # 64 px images are drawn enlarged, readable
    assert "detections on 6 images" in capsys.readouterr().out


def test_an_unreadable_image_is_named_and_can_be_skipped(run, tiny_root, tmp_path, capsys):  # noqa: F811
    bad = tmp_path / "imgs"
    bad.mkdir()
    shutil.copy(next((tiny_root / "val").iterdir()), bad / "good.png")
    (bad / "broken.png").write_bytes(b"not a png")
    det = Detector.from_run(run)
    with pytest.raises(DataError, match="cannot read image .*broken.png"):
        predict_images(det, image_files([bad]), tmp_path / "out", progress=False)
    res = predict_images(det, image_files([bad]), tmp_path / "out2", keep_going=True, progress=False)
    assert res["images"] == 1 and [s["file"] for s in res["skipped"]] == [str(bad / "broken.png")]
    assert main(["predict", str(run), str(bad / "nope.jpg"), "--out", str(tmp_path / "o")]) == 2
    assert "no such image or folder" in capsys.readouterr().err


def test_eval_refuses_data_with_other_class_names(run, tiny_root, tmp_path, capsys):  # noqa: F811
    other = tmp_path / "renamed"
    shutil.copytree(tiny_root, other)
    ann = other / "annotations" / "instances_val.json"
    data = json.loads(ann.read_text())
    cats = sorted(data["categories"], key=lambda c: c["id"])
    first = cats[1]["name"]
    cats[1]["name"] = "zebra"
    ann.write_text(json.dumps(data))
    assert main(["eval", str(run), "--data-root", str(other), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"class 2 is 'zebra', the model's is '{first}'" in err and err.count("\n") == 1
    assert not (run / "eval-renamed.json").exists()  # nothing written
    assert main(["eval", str(run), "--data-root", str(other), "--no-progress", "--allow-class-mismatch"]) == 0
    assert (run / "eval-renamed.json").is_file()


def test_converted_coco_weights_carry_coco_names(tmp_path):
    torch.manual_seed(0)
    cfg = converted_config("faster_rcnn")
    model = build_model(cfg, 81)
    src = tmp_path / "faster_rcnn_r50_fpn_1x_fixture.pth"
    torch.save({"meta": {"mmdet_version": "2.25.0"}, "state_dict": to_mmdet_layout(model.state_dict())}, src)
    out = convert(src, tmp_path / "run", num_classes=81)
    names = class_names(out)
    assert names == coco_class_names() and len(names) == 80 and names[0] == "person" and names[-1] == "toothbrush"
    det = Detector.from_run(out, score_thresh=0.0)
    det.model.transform.min_size, det.model.transform.max_size = (96,), 128  # CPU-sized
    d = det(torch.rand(3, 80, 100))
    assert all(n in names for n in d.names)
