"""COCO metrics on hand-made cases, and evaluate() end to end on a tiny trained run."""

import contextlib
import io
import json

import numpy as np
import pytest

from dynrcnn.config import apply_overrides, default_evaluator
from dynrcnn.errors import CheckpointError, ConfigError
from dynrcnn.evaluation.coco_eval import IOU_THRESHOLDS, ap_per_iou, coco_metrics, evaluate
from dynrcnn.presets import get_preset

# three 100x100 images, two categories with non-contiguous ids, boxes of all three sizes
BOXES = {
    1: [(10, 10, 20, 20, 3), (50, 40, 60, 50, 7)],   # small (400 px^2), medium (3000)
    2: [(0, 0, 100, 100, 7)],                         # large
    3: [(30, 30, 40, 40, 3), (5, 60, 90, 30, 3)],
}


def gt_dict():
    images = [{"id": i, "file_name": f"{i}.png", "width": 200, "height": 200} for i in BOXES]
    anns = []
    for img, boxes in BOXES.items():
        for x, y, w, h, c in boxes:
            anns.append({"id": len(anns) + 1, "image_id": img, "category_id": c, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": 0})
    return {"images": images, "annotations": anns,
            "categories": [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}]}


def perfect():
    return [{"image_id": img, "category_id": c, "bbox": [x, y, w, h], "score": 0.9}
            for img, boxes in BOXES.items() for x, y, w, h, c in boxes]


def shifted(iou=0.8):
    # shift along x by d so that IoU = (w - d) / (w + d) = iou
    out = []
    for d in perfect():
        x, y, w, h = d["bbox"]
        dx = w * (1 - iou) / (1 + iou)
        out.append({**d, "bbox": [x + dx, y, w, h]})
    return out


def test_perfect_detections_give_100(tmp_path):
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt_dict()))
    for gt in (path, gt_dict()):
        m = coco_metrics(gt, perfect())
        for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AP90"):
            assert m[k] == pytest.approx(100.0), k
        assert m["AP_per_iou"] == pytest.approx([100.0] * 10)
        assert m["iou_thresholds"] == IOU_THRESHOLDS


def test_shifted_boxes_iou_08():
    m = coco_metrics(gt_dict(), shifted(0.8))
    per = dict(zip(m["iou_thresholds"], m["AP_per_iou"]))
    for t in (0.5, 0.55, 0.6, 0.65, 0.7, 0.75):
        assert per[t] == pytest.approx(100.0), t
    for t in (0.85, 0.9, 0.95):
        assert per[t] == pytest.approx(0.0), t
    assert m["AP50"] == pytest.approx(100.0) and m["AP75"] == pytest.approx(100.0)
    assert m["AP90"] == 0.0 and m["AP90"] == m["AP_per_iou"][8]
    # IoU 0.8 boxes match at 0.8 (>=) only up to rounding: 6 or 7 of the 10 thresholds pass
    assert m["AP"] == pytest.approx(np.mean(m["AP_per_iou"]))


def test_ap90_read_by_index_not_by_iouthr():
    # the pitfall: np.linspace(.5, .95, 10)[8] != 0.9, so a lookup by value fails; ours is by index
    assert np.linspace(0.5, 0.95, 10)[8] != 0.9
    m = coco_metrics(gt_dict(), shifted(0.92))
    assert m["AP90"] == pytest.approx(100.0) and m["AP_per_iou"][9] == pytest.approx(0.0)


def test_ap_per_iou_ignores_undefined_entries():
    p = -np.ones((10, 101, 2, 4, 3))
    p[:, :, 0, 0, 2] = 0.5
    assert ap_per_iou(p, 0, 2) == pytest.approx([50.0] * 10)
    assert ap_per_iou(-np.ones((10, 101, 2, 4, 3))) == [0.0] * 10


def test_empty_detections_do_not_crash():
    m = coco_metrics(gt_dict(), [])
    assert m["AP"] == 0.0 and m["AP90"] == 0.0 and m["AP_per_iou"] == [0.0] * 10


def test_unknown_or_missing_evaluator():
    with pytest.raises(ConfigError, match="unknown evaluator"):
        coco_metrics(gt_dict(), perfect(), evaluator="nope")
    try:
        import faster_coco_eval  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="faster-coco-eval"):
            coco_metrics(gt_dict(), perfect(), evaluator="faster-coco-eval")
    else:
        m = coco_metrics(gt_dict(), shifted(0.8), evaluator="faster-coco-eval")
        assert m["AP50"] == pytest.approx(100.0) and m["AP90"] == pytest.approx(0.0)


def scorers():
    """pycocotools (the reference) and faster-coco-eval (skipped where it is not installed)."""
    from dynrcnn.evaluation.coco_eval import _coco_classes

    pytest.importorskip("faster_coco_eval")
    return _coco_classes("pycocotools"), _coco_classes("faster-coco-eval")


def noisy():
    """Detections with localisation error, wrong classes, duplicates and tied scores (all AP terms in play)."""
    rng = np.random.default_rng(0)
    out = []
    for d in perfect() * 3:
        x, y, w, h = d["bbox"]
        jit = rng.normal(0, 0.15, 4) * [w, h, w, h]
        out.append({**d, "bbox": [x + jit[0], y + jit[1], w * (1 + abs(jit[2]) / w), h * (1 + abs(jit[3]) / h)],
                    "category_id": d["category_id"] if rng.random() < 0.8 else 10 - d["category_id"],
                    "score": float(rng.choice([0.3, 0.6, 0.9]))})
    return out


@pytest.mark.parametrize("dets", [perfect, lambda: shifted(0.8), noisy], ids=["perfect", "shifted", "noisy"])
def test_faster_coco_eval_gives_pycocotools_stats(dets):
    # the default scorer against the reference: COCOeval's 12 summary stats and the precision
    # array that AP per IoU threshold and per class are read from
    results = []
    for COCO, COCOeval in scorers():
        gt = COCO()
        gt.dataset = gt_dict()
        with contextlib.redirect_stdout(io.StringIO()):
            gt.createIndex()
            ev = COCOeval(gt, gt.loadRes(dets()), "bbox")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        results.append((np.asarray(ev.stats[:12]), np.asarray(ev.eval["precision"])))
    (stats_py, prec_py), (stats_fast, prec_fast) = results
    assert len(stats_py) == len(stats_fast) == 12
    np.testing.assert_allclose(stats_fast, stats_py, rtol=0, atol=1e-12)
    np.testing.assert_allclose(prec_fast, prec_py, rtol=0, atol=1e-12)
    py, fast = (coco_metrics(gt_dict(), dets(), evaluator=e) for e in ("pycocotools", "faster-coco-eval"))
    assert fast["AP_per_iou"] == pytest.approx(py["AP_per_iou"], abs=1e-9)
    assert [c["AP"] for c in fast["per_class"]] == pytest.approx([c["AP"] for c in py["per_class"]], abs=1e-9)


def test_default_evaluator_is_faster_coco_eval_where_installed(monkeypatch):
    import importlib.util

    from dynrcnn import config

    real = importlib.util.find_spec
    assert config.default_evaluator() == ("faster-coco-eval" if real("faster_coco_eval") else "pycocotools")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "faster_coco_eval" else real(name, *a))
    assert config.default_evaluator() == "pycocotools"


def test_evaluate_end_to_end(tmp_path, capsys):
    from dynrcnn.engine.trainer import train
    from dynrcnn.data.mini import generate_mini

    root = tmp_path / "data"
    generate_mini(root, seed=1, n_train=8, n_val=4, image_size=64, workers=0, progress=False)
    cfg = get_preset("mini_smoke")
    cfg.data_root = str(root)
    apply_overrides(cfg, ["max_iter=4", "ims_per_batch=2", "model.min_size=64", "model.max_size=64",
                          "checkpoint_period=4", "eval_at_end=true", "num_workers=0", "eval_batch_size=2"])
    run = train(cfg, tmp_path / "run", progress=False)
    ev = json.loads((run / "eval.json").read_text())
    for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AP_per_iou", "iou_thresholds", "AP90",
              "images_per_sec", "evaluator", "checkpoint", "num_images"):
        assert k in ev, k
    assert ev["num_images"] == 4 and ev["evaluator"] == default_evaluator() and len(ev["AP_per_iou"]) == 10
    assert all(np.isfinite(v) for v in ev["AP_per_iou"]) and 0 <= ev["AP"] <= 100 and ev["images_per_sec"] > 0
    dets = json.loads((run / "detections.json").read_text())
    gt = json.loads((root / "annotations" / "instances_val.json").read_text())
    cat_ids = {c["id"] for c in gt["categories"]}
    img_ids = {i["id"] for i in gt["images"]}
    for d in dets[:50]:
        assert d["category_id"] in cat_ids and d["image_id"] in img_ids and len(d["bbox"]) == 4
        assert d["bbox"][2] >= 0 and d["bbox"][3] >= 0
    # evaluating again with an explicit checkpoint and data root gives the same numbers
    capsys.readouterr()
    again = evaluate(run, checkpoint=run / "checkpoints" / "iter_0000004.pth", data_root=root, progress=False)
    assert capsys.readouterr().out.startswith(f"AP {again['AP']:.1f}  AP50 ")  # batch logs keep the summary
    assert again["AP_per_iou"] == ev["AP_per_iou"]
    # a --checkpoint that does not exist is named, with the hint that fits it
    with pytest.raises(CheckpointError, match=r"no checkpoint .*nope\.pth; check the path passed to --checkpoint"):
        evaluate(run, checkpoint=run / "nope.pth", data_root=root)


def test_per_class_ap_equals_cocoeval_restricted_to_that_class():
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    dets = [d for d in shifted(0.8) if d["category_id"] == 3] + [d for d in perfect() if d["category_id"] == 7]
    m = coco_metrics(gt_dict(), dets)
    by = {c["name"]: c for c in m["per_class"]}
    assert [c["category_id"] for c in m["per_class"]] == [3, 7]
    assert by["b"]["AP"] == pytest.approx(100.0) and by["a"]["AP90"] == pytest.approx(0.0)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = gt_dict()
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.params.catIds = [3]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert by["a"]["AP"] == pytest.approx(ev.stats[0] * 100) and by["a"]["AP50"] == pytest.approx(ev.stats[1] * 100)


def test_held_evaluation_of_either_evaluator_is_reused_by_default(tmp_path):
    # the two evaluators give the same metrics: an eval file scored by pycocotools satisfies an
    # evaluation that names none (the default), not one that names the other evaluator
    from dynrcnn.evaluation.coco_eval import held_evaluation
    from dynrcnn.io import file_sha256

    root, run = tmp_path / "data", tmp_path / "run"
    (root / "annotations").mkdir(parents=True)
    ann = root / "annotations" / "instances_val.json"
    ann.write_text(json.dumps(gt_dict()))
    ckpt = run / "checkpoints" / "last.pth"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"weights")
    (run / "detections.json").write_text("[]")
    (run / "eval.json").write_text(json.dumps({
        "evaluator": "pycocotools", "split": "val", "data_root": str(root), "annotation_sha256": file_sha256(ann),
        "checkpoint": str(ckpt), "checkpoint_sha256": file_sha256(ckpt), "device": "cpu"}))
    assert held_evaluation(run, None, ckpt, root, "val", None, "cpu")["evaluator"] == "pycocotools"
    assert held_evaluation(run, None, ckpt, root, "val", "pycocotools", "cpu") is not None
    assert held_evaluation(run, None, ckpt, root, "val", "faster-coco-eval", "cpu") is None
