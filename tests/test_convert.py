"""``dynrcnn convert`` (MMDetection 2.x -> our model) and ``dynrcnn export`` (ours -> torchvision).

No download: a random-weight R50-FPN is written out in MMDetection 2.x's layout by
:func:`to_mmdet_layout`, a mapping written here independently of the converter (explicit
loops over MMDetection's module names, background class moved last, background regression
rows dropped), then converted back and compared tensor by tensor and detection by detection.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from dynrcnn.cli import main
from dynrcnn.config import Config, ModelConfig
from dynrcnn.checkpoint.convert import convert, convert_mmdet_state, converted_config
from dynrcnn.report.tables import published_weights_rows
from dynrcnn.errors import CheckpointError
from dynrcnn.modeling.model import MMDetAnchorGenerator, RoIAlignPooler, build_model
from tests.fixtures.data_helpers import CATEGORIES, write_dataset

NUM_CLASSES = len(CATEGORIES) + 1  # the fixture dataset's 3 classes + background


def _randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Random weights everywhere, BatchNorm statistics included (torchvision initialises
    frozen BatchNorm to the identity, which would hide a mix-up of its four tensors)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.ndim == 0:
                continue
            if name.endswith(("running_var", ".weight")) and t.ndim == 1:
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.75)
            elif t.ndim == 1:
                t.copy_(torch.randn(t.shape, generator=g) * 0.05)
            else:
                scale = 0.1 if name.startswith(("rpn.head.bbox_pred", "roi_heads.box_predictor")) else 1
                t.copy_(torch.randn(t.shape, generator=g) * scale * math.sqrt(1.0 / t[0].numel()))
        # BatchNorm statistics of a calibration image (data-dependent init): activations stay O(1)
        # through the random ResNet, so scores and boxes differ from RoI to RoI
        from torchvision.ops.misc import FrozenBatchNorm2d

        def calibrate(bn, inputs):
            bn.running_mean.copy_(inputs[0].mean((0, 2, 3)))
            bn.running_var.copy_(inputs[0].var((0, 2, 3)))

        hooks = [m.register_forward_pre_hook(calibrate) for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
        model.eval()
        model.backbone(model.transform([torch.rand(3, 96, 128, generator=g)])[0].tensors)
        for h in hooks:
            h.remove()
        # the background's regression rows do not exist in MMDetection's fc_reg
        model.roi_heads.box_predictor.bbox_pred.weight[:4] = 0
        model.roi_heads.box_predictor.bbox_pred.bias[:4] = 0


def to_mmdet_layout(sd: dict, blocks=(3, 4, 6, 3), convs=3) -> dict:
    """Our ResNet-FPN state dict (R50 by default; ``blocks`` per stage, ``convs`` per block) written
    with MMDetection's module names and conventions."""
    mm = {}

    def bn(ours: str, theirs: str) -> None:
        for p in ("weight", "bias", "running_mean", "running_var"):
            mm[f"{theirs}.{p}"] = sd[f"{ours}.{p}"].clone()
        mm[f"{theirs}.num_batches_tracked"] = torch.tensor(12345)

    mm["backbone.conv1.weight"] = sd["backbone.body.conv1.weight"].clone()
    bn("backbone.body.bn1", "backbone.bn1")
    for stage, n in zip((1, 2, 3, 4), blocks):
        for b in range(n):
            ours, theirs = f"backbone.body.layer{stage}.{b}", f"backbone.layer{stage}.{b}"
            for c in range(1, convs + 1):
                mm[f"{theirs}.conv{c}.weight"] = sd[f"{ours}.conv{c}.weight"].clone()
                bn(f"{ours}.bn{c}", f"{theirs}.bn{c}")
            if b == 0 and f"{ours}.downsample.0.weight" in sd:
                mm[f"{theirs}.downsample.0.weight"] = sd[f"{ours}.downsample.0.weight"].clone()
                bn(f"{ours}.downsample.1", f"{theirs}.downsample.1")
    for i in range(4):
        for p in ("weight", "bias"):
            mm[f"neck.lateral_convs.{i}.conv.{p}"] = sd[f"backbone.fpn.inner_blocks.{i}.0.{p}"].clone()
    for i in range(4):
        for p in ("weight", "bias"):
            mm[f"neck.fpn_convs.{i}.conv.{p}"] = sd[f"backbone.fpn.layer_blocks.{i}.0.{p}"].clone()
    for p in ("weight", "bias"):
        mm[f"rpn_head.rpn_conv.{p}"] = sd[f"rpn.head.conv.0.0.{p}"].clone()
        mm[f"rpn_head.rpn_cls.{p}"] = sd[f"rpn.head.cls_logits.{p}"].clone()
        mm[f"rpn_head.rpn_reg.{p}"] = sd[f"rpn.head.bbox_pred.{p}"].clone()
    for p in ("weight", "bias"):
        mm[f"roi_head.bbox_head.shared_fcs.0.{p}"] = sd[f"roi_heads.box_head.fc6.{p}"].clone()
        mm[f"roi_head.bbox_head.shared_fcs.1.{p}"] = sd[f"roi_heads.box_head.fc7.{p}"].clone()
    for p in ("weight", "bias"):
        cls = sd[f"roi_heads.box_predictor.cls_score.{p}"]
        mm[f"roi_head.bbox_head.fc_cls.{p}"] = torch.cat([cls[1:], cls[:1]]).clone()  # background last
        mm[f"roi_head.bbox_head.fc_reg.{p}"] = sd[f"roi_heads.box_predictor.bbox_pred.{p}"][4:].clone()
    return mm


def _small(model):
    model.transform.min_size, model.transform.max_size = (96,), 128
    return model.eval()


def _images():
    g = torch.Generator().manual_seed(1)
    return [torch.rand(3, 80, 112, generator=g), torch.rand(3, 120, 90, generator=g)]


def _assert_same_detections(a, b, exact=True):
    assert len(a) == len(b)
    for da, db in zip(a, b):
        assert len(da["boxes"]) > 0
        if exact:
            for k in ("boxes", "scores", "labels"):
                assert torch.equal(da[k], db[k]), k
        else:
            assert torch.equal(da["labels"], db["labels"])
            torch.testing.assert_close(da["boxes"], db["boxes"], atol=0.05, rtol=0)  # BatchNorm2d vs frozen: float rounding
            torch.testing.assert_close(da["scores"], db["scores"], atol=1e-3, rtol=0)


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A random Dynamic R-CNN-shaped model (converted-model settings), its MMDetection file."""
    torch.manual_seed(0)
    cfg = converted_config("dynamic_rcnn")
    model = build_model(cfg, NUM_CLASSES)
    _randomise(model)
    d = tmp_path_factory.mktemp("published")
    src = d / "dynamic_rcnn_r50_fpn_1x_fixture.pth"
    mm = to_mmdet_layout(model.state_dict())
    torch.save({"meta": {"mmdet_version": "2.25.0", "epoch": 12, "iter": 87960,
                         "config": "model = dict(roi_head=dict(type='DynamicRoIHead'))"},
                "state_dict": mm}, src)
    return model, src, mm


def test_round_trip_every_tensor_and_detections(published, tmp_path):
    model, src, _ = published
    run = convert(src, tmp_path / "run", num_classes=NUM_CLASSES)
    cfg = Config.from_dict(json.loads((run / "config.json").read_text()))
    assert cfg.method == "dynamic" and cfg.model.rpn_nms_thresh == 0.85
    assert (cfg.model.anchor_style, cfg.model.roi_align_aligned, cfg.model.roi_sampling_ratio) == ("mmdet", True, 0)
    assert (cfg.model.rpn_post_nms_top_n_test, cfg.model.box_score_thresh, cfg.model.box_nms_thresh,
            cfg.model.box_detections_per_img) == (1000, 0.05, 0.5, 100)
    ckpt = torch.load(run / "checkpoints" / "last.pth", map_location="cpu", weights_only=True)
    assert ckpt["iteration"] == 87960 and ckpt["method"] == "dynamic"
    expected = model.state_dict()
    assert list(ckpt["model"]) == list(expected)
    for k, v in expected.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(ckpt["model"][k], v), k
    converted = build_model(cfg, NUM_CLASSES)
    converted.load_state_dict(ckpt["model"], strict=True)
    with torch.no_grad():
        _assert_same_detections(_small(model)(_images()), _small(converted)(_images()))
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["source_file"] == src.name and prov["mapping_version"] == 1 and prov["model"] == "dynamic_rcnn"
    assert len(prov["sha256"]) == 64 and prov["mmdet_meta"]["mmdet_version"] == "2.25.0"


def test_class_order_is_mmdetection_semantics(published):
    """MMDetection's softmax over fc_cls has the background last; ours first: the same
    probabilities per class, and class c's deltas are fc_reg rows 4c..4c+3 (c from 0)."""
    model, _, mm = published
    x = torch.randn(7, 1024)
    theirs = torch.softmax(x @ mm["roi_head.bbox_head.fc_cls.weight"].T + mm["roi_head.bbox_head.fc_cls.bias"], -1)
    ours = torch.softmax(model.roi_heads.box_predictor.cls_score(x), -1)
    torch.testing.assert_close(ours[:, 1:], theirs[:, :-1])
    torch.testing.assert_close(ours[:, 0], theirs[:, -1])
    reg_theirs = x @ mm["roi_head.bbox_head.fc_reg.weight"].T + mm["roi_head.bbox_head.fc_reg.bias"]
    reg_ours = model.roi_heads.box_predictor.bbox_pred(x)
    torch.testing.assert_close(reg_ours[:, 4:], reg_theirs)


def test_faster_rcnn_test_settings_and_bare_state_dict(published, tmp_path):
    _, _, mm = published
    src = tmp_path / "faster_rcnn_r50_fpn_1x_coco_fixture.pth"
    torch.save(mm, src)  # a bare state dict, model told by the file name
    run = convert(src, tmp_path / "run", num_classes=NUM_CLASSES)
    cfg = Config.from_dict(json.loads((run / "config.json").read_text()))
    assert cfg.method == "baseline" and cfg.model.rpn_nms_thresh == 0.7


def test_anchors_match_mmdetection_formula():
    """MMDetection 2.x AnchorGenerator (scales=[8], ratios=[0.5, 1, 2], strides 4..64):
    base = stride * 8 * (1/sqrt(r), sqrt(r)) centred on 0, unrounded; location-major, then
    ratio; level k at multiples of its stride. torchvision rounds and infers P6's stride."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.image_list import ImageList

    sizes, ratios = ((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5
    image = ImageList(torch.zeros(1, 3, 800, 1216), [(800, 1216)])
    feats = [torch.zeros(1, 1, math.ceil(800 / s), math.ceil(1216 / s)) for s in (4, 8, 16, 32, 64)]
    ours = MMDetAnchorGenerator(sizes, ratios)(image, feats)[0]
    ref = []
    for stride, f in zip((4, 8, 16, 32, 64), feats):
        base = []
        for r in (0.5, 1.0, 2.0):
            w, h = stride * 8 / math.sqrt(r), stride * 8 * math.sqrt(r)
            base.append([-0.5 * w, -0.5 * h, 0.5 * w, 0.5 * h])
        base = torch.tensor(base)
        ys, xs = torch.meshgrid(torch.arange(f.shape[-2]) * stride, torch.arange(f.shape[-1]) * stride, indexing="ij")
        shifts = torch.stack([xs, ys, xs, ys], -1).reshape(-1, 1, 4).float()
        ref.append((shifts + base[None]).reshape(-1, 4))
    torch.testing.assert_close(ours, torch.cat(ref))
    tv = AnchorGenerator(sizes, ratios)(image, feats)[0]
    n6 = feats[-1].shape[-2] * feats[-1].shape[-1] * 3
    assert (tv[:-n6] - ours[:-n6]).abs().max() <= 0.5  # rounding only, P2-P6 of the same grid
    assert tv[-1, 1] - ours[-1, 1] < -30  # P6: 800 // 13 = 61 px stride instead of 64


def test_pooler_unaligned_is_torchvision_and_aligned_matches_roi_align():
    from torchvision.ops import MultiScaleRoIAlign, roi_align

    g = torch.Generator().manual_seed(0)
    feats = {str(i): torch.randn(1, 4, 64 // 2 ** i, 64 // 2 ** i, generator=g) for i in range(4)}
    boxes = [torch.tensor([[3.3, 4.1, 40.7, 30.2], [10.0, 12.0, 250.0, 240.0]])]
    shapes = [(256, 256)]
    plain = RoIAlignPooler(list(feats), 7, 2)(feats, boxes, shapes)
    assert torch.equal(plain, MultiScaleRoIAlign(list(feats), 7, 2)(feats, boxes, shapes))
    aligned = RoIAlignPooler(list(feats), 7, 0, aligned=True)(feats, boxes, shapes)
    # MMDetection's level of a box: floor(log2(sqrt(area) / 56)) clamped to 0..3
    for i, box in enumerate(boxes[0]):
        level = int(min(3, max(0, math.floor(math.log2(math.sqrt((box[2] - box[0]) * (box[3] - box[1])) / 56)))))
        ref = roi_align(feats[str(level)], [box[None]], 7, 1 / 4 / 2 ** level, 0, aligned=True)
        torch.testing.assert_close(aligned[i:i + 1], ref)
    assert not torch.allclose(aligned, plain)


# ---------------------------------------------------------------------------------- refusals

def _refusal(mm: dict, edit) -> str:
    mm = dict(mm)
    edit(mm)
    model_sd = build_model(converted_config("faster_rcnn"), NUM_CLASSES).state_dict()
    with pytest.raises(CheckpointError) as e:
        convert_mmdet_state(mm, model_sd, NUM_CLASSES)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_refuses_other_architecture(published):
    _, _, mm = published

    def retinanet(d):
        for k in [k for k in d if not k.startswith(("backbone.", "neck."))]:
            del d[k]
        d["bbox_head.retina_cls.weight"] = torch.zeros(720, 256, 3, 3)
    assert "'bbox_head.retina_cls.weight'" in _refusal(mm, retinanet)
    msg = _refusal(mm, lambda d: d.update({"roi_head.mask_head.convs.0.conv.weight": torch.zeros(1)}))
    assert msg.startswith("unexpected key 'roi_head.mask_head.convs.0.conv.weight'") and "Mask R-CNN" in msg


def test_refuses_missing_extra_and_wrong_shape(published):
    _, _, mm = published
    assert _refusal(mm, lambda d: d.pop("neck.fpn_convs.2.conv.bias")).startswith(
        "missing key 'neck.fpn_convs.2.conv.bias'")
    assert _refusal(mm, lambda d: d.update({"roi_head.bbox_head.fc_iou.weight": torch.zeros(1)})).startswith(
        "unexpected key 'roi_head.bbox_head.fc_iou.weight'")
    msg = _refusal(mm, lambda d: d.update({"roi_head.bbox_head.fc_cls.weight": torch.zeros(81, 1024)}))
    assert msg.startswith("key 'roi_head.bbox_head.fc_cls.weight' has shape (81, 1024)") and "--num-classes" in msg
    msg = _refusal(mm, lambda d: d.update({"rpn_head.rpn_conv.weight": torch.zeros(256, 256, 1, 1)}))
    assert msg.startswith("key 'rpn_head.rpn_conv.weight' has shape (256, 256, 1, 1)")


def test_cli_refusals_are_one_line(published, tmp_path, capsys):
    _, src, mm = published
    small = tmp_path / "faster_rcnn_small.pth"
    torch.save({"state_dict": {k: mm[k] for k in list(mm)[:20]}, "meta": {}}, small)
    assert main(["convert", str(small), "--from", "mmdet", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: missing key 'backbone.layer1.0.bn3.bias'") and "\n" not in err
    truncated = tmp_path / "faster_rcnn_truncated.pth"
    truncated.write_bytes(small.read_bytes()[:100_000])
    assert main(["convert", str(truncated), "--from", "mmdet", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: faster_rcnn_truncated.pth is not a readable PyTorch checkpoint") and "\n" not in err
    renamed = tmp_path / "faster_rcnn_r50_fpn_1x_coco_20200130-deadbeef.pth"
    renamed.write_bytes(small.read_bytes())
    assert main(["convert", str(renamed), "--from", "mmdet", "--out", str(tmp_path / "c")]) == 2
    assert "does not match the deadbeef in its name" in capsys.readouterr().err
    assert not (tmp_path / "a" / "checkpoints" / "last.pth").exists()


# ---------------------------------------------------------------------------------- eval and export

def test_cli_convert_then_eval(published, tmp_path, capsys):
    _, src, _ = published
    root = tmp_path / "data"
    images = [{"id": 1, "width": 64, "height": 48}, {"id": 2, "width": 48, "height": 64}]
    anns = [{"image_id": 1, "category_id": 3, "bbox": [4, 6, 20, 16]},
            {"image_id": 2, "category_id": 10, "bbox": [10, 20, 30, 30]}]
    write_dataset(root, "val2017", images, anns)
    run = tmp_path / "run"
    assert main(["convert", str(src), "--from", "mmdet", "--out", str(run), "--num-classes", str(NUM_CLASSES),
                 "--data-root", str(root)]) == 0
    cfg = json.loads((run / "config.json").read_text())
    cfg["model"]["min_size"], cfg["model"]["max_size"] = 64, 96  # CPU-sized test; COCO keeps 800/1333
    cfg["num_workers"] = 0
    (run / "config.json").write_text(json.dumps(cfg))
    assert main(["eval", str(run), "--no-progress", "--device", "cpu"]) == 0
    ev = json.loads((run / "eval.json").read_text())
    assert ev["num_images"] == 2 and len(ev["AP_per_iou"]) == 10
    rows = published_weights_rows([run, tmp_path / "missing"])
    assert len(rows) == 1 and rows[0]["model"] == "dynamic_rcnn" and rows[0]["published_ap"] == 38.9
    assert rows[0]["delta_ap"] == pytest.approx(rows[0]["AP"] - 38.9) and rows[0]["sha256"]


def test_export_loads_into_plain_torchvision(tmp_path, capsys):
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    cfg = Config(preset="mini_export_test", method="dynamic", model=ModelConfig(pretrained_backbone=False))
    model = build_model(cfg, NUM_CLASSES)
    _randomise(model, seed=3)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(cfg.to_json())
    torch.save({"format": 1, "iteration": 5, "model": model.state_dict(), "preset": cfg.preset,
                "method": cfg.method, "convention": cfg.dynamic.convention}, run / "checkpoints" / "last.pth")
    assert "roi_heads.iou_threshold" in model.state_dict()
    out = tmp_path / "tv.pth"
    assert main(["export", str(run), "--to", "torchvision", "--out", str(out)]) == 0
    assert "note:" in capsys.readouterr().out
    tv = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=NUM_CLASSES)
    tv.load_state_dict(torch.load(out, weights_only=True), strict=True)
    with torch.no_grad():
        _assert_same_detections(_small(model)(_images()), _small(tv)(_images()), exact=False)


def test_export_refuses_slim_model(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    from dynrcnn.presets import get_preset

    (run / "config.json").write_text(get_preset("mini").to_json())
    assert main(["export", str(run), "--to", "torchvision", "--out", str(tmp_path / "x.pth")]) == 2
    assert "only the R50-FPN model" in capsys.readouterr().err


def test_report_converts_and_plans_published_weights(published, tmp_path):
    from dynrcnn.report import get_profile, plan
    from dynrcnn.report.pipeline import convert_published, published_root

    _, src, _ = published
    runs_root = tmp_path / "runs" / "coco"
    dirs = convert_published([src], runs_root, num_classes=NUM_CLASSES)
    assert dirs == [published_root(runs_root) / src.stem] and (dirs[0] / "provenance.json").is_file()
    mtime = (dirs[0] / "provenance.json").stat().st_mtime_ns
    assert convert_published([src], runs_root, num_classes=NUM_CLASSES) == dirs  # same file: kept, not converted again
    assert (dirs[0] / "provenance.json").stat().st_mtime_ns == mtime
    steps = plan(get_profile("coco"), tmp_path / "out", runs_root, tmp_path / "coco", "cpu", tmp_path / "fig",
                 False, published=dirs)
    ev = [s for s in steps if s.output == f"evaluate_published_{src.stem}"]
    assert len(ev) == 1 and ev[0].params["run_dir"] == str(dirs[0].resolve())
    assert steps[-1].params["published_root"] == str(published_root(runs_root).resolve())


def test_convert_a_peer_checkpoint_of_the_slim_preset(tmp_path):
    """A checkpoint MMDetection trained with the mini_long preset's settings (peer_mmdet/train.py:
    slim_r10_fpn, trainable BatchNorm, a bare state dict) converts into a run of that preset with
    MMDetection's anchors and RoIAlign, every tensor in place."""
    from dynrcnn.checkpoint.convert import peer_config

    cfg = peer_config("mini_long", "dynamic")
    assert (cfg.preset, cfg.method, cfg.model.arch) == ("mini_long", "dynamic", "slim_r10_fpn")
    assert (cfg.model.anchor_style, cfg.model.roi_align_aligned, cfg.model.roi_sampling_ratio) == ("mmdet", True, 0)
    assert cfg.model.rpn_nms_thresh == 0.85 and cfg.model.backbone_weights == ""
    assert peer_config("mini_long", "baseline").model.rpn_nms_thresh == 0.85  # the peer's fair baseline
    torch.manual_seed(0)
    model = build_model(cfg, NUM_CLASSES)
    with torch.no_grad():
        for t in model.state_dict().values():
            if isinstance(t, torch.Tensor) and t.is_floating_point() and t.ndim:
                t.copy_(torch.randn(t.shape) * 0.1)
        model.roi_heads.box_predictor.bbox_pred.weight[:4] = 0
        model.roi_heads.box_predictor.bbox_pred.bias[:4] = 0
    src = tmp_path / "model_state.pth"
    torch.save(to_mmdet_layout(model.state_dict(), blocks=(1, 1, 1, 1), convs=2), src)
    out = convert(src, tmp_path / "run", num_classes=NUM_CLASSES, preset="mini_long", method="dynamic")
    record = torch.load(out / "checkpoints" / "last.pth", weights_only=True)
    for k, v in model.state_dict().items():
        if not k.endswith("num_batches_tracked") and not k.startswith("roi_heads._extra") and k not in (
                "roi_heads.iou_threshold", "roi_heads.beta"):
            assert torch.equal(record["model"][k], v), k
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["source_format"] == "mmdet3" and prov["published_ap"] is None and "mini_long" in prov["label"]
    assert json.loads((out / "config.json").read_text())["model"]["anchor_style"] == "mmdet"
