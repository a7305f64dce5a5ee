"""The sparse RoIAlign backward against torchvision's own autograd, and the float32 guards of autocast."""

import pytest
import torch
from torchvision.ops import roi_align as tv_roi_align

from dynrcnn.modeling import model as model_mod
from dynrcnn.modeling import roi_align as ra
from dynrcnn.modeling.model import RoIAlignPooler, build_model
from dynrcnn.presets import get_preset

# boxes on the border, beyond it, degenerate (zero area, a line), inverted, and one inside; on the
# 13 x 17 map at scale 1/4 (unaligned, ratio 1) [66, 50, 66, 50] puts a sampling point exactly on
# y = H, x = W and [-6, -6, -6, -6] one exactly on y = x = -1, the two limits of the valid range
EDGE_BOXES = [[0, 0, 0, 0], [-20, -20, -5, -5], [60, 45, 90, 70], [10, 10, 10, 30], [67.9, 51.9, 68, 52],
              [30, 30, 20, 20], [0, 0, 68, 52], [-3, 2, 5, 9], [66, 50, 72, 60], [12.3, 7.7, 40.1, 33.3],
              [66, 50, 66, 50], [-6, -6, -6, -6]]


def _boxes(n_img: int, k: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(k, 2, generator=g, dtype=dtype) * 80 - 10
    wh = torch.rand(k, 2, generator=g, dtype=dtype) * 40 - 2
    boxes = torch.cat([xy, xy + wh], 1)
    boxes[: len(EDGE_BOXES)] = torch.tensor(EDGE_BOXES, dtype=dtype)
    batch = torch.randint(0, n_img, (k, 1), generator=g).to(dtype)
    return torch.cat([batch, boxes], 1)


def _grads(feat64, rois64, grad64, sampling_ratio, aligned, output_size=(7, 5)):
    """torchvision's float64 gradient (the reference), torchvision's float32 one, ours (float32)."""
    ref = feat64.clone().requires_grad_()
    tv_roi_align(ref, rois64, output_size, 0.25, sampling_ratio, aligned).backward(grad64)
    tv32 = feat64.float().requires_grad_()
    tv_roi_align(tv32, rois64.float(), output_size, 0.25, sampling_ratio, aligned).backward(grad64.float())
    ours = feat64.float().requires_grad_()
    ra.roi_align(ours, rois64.float(), output_size, 0.25, sampling_ratio, aligned, backward="sparse").backward(
        grad64.float())
    return ref.grad, tv32.grad, ours.grad


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [2, 1, 0])
def test_gradient_equals_torchvisions_on_random_and_edge_boxes(aligned, sampling_ratio):
    torch.manual_seed(0)
    feat = torch.randn(3, 4, 13, 17, dtype=torch.float64)
    rois = _boxes(3, 120, seed=1)
    grad = torch.randn(120, 4, 7, 5, dtype=torch.float64)
    ref, tv32, ours = _grads(feat, rois, grad, sampling_ratio, aligned)
    assert ref.abs().max() > 1  # the gradient is not trivially zero
    scale = ref.abs().max()
    # as close to the float64 reference as torchvision's own float32 backward is
    assert (ours.double() - ref).abs().max() <= 2 * (tv32.double() - ref).abs().max() + 1e-6 * scale
    torch.testing.assert_close(ours.double(), ref, rtol=0, atol=1e-5 * scale)


def test_forward_is_torchvisions_bit_for_bit_and_backward_is_deterministic():
    torch.manual_seed(0)
    feat = torch.randn(2, 8, 32, 32, requires_grad=True)
    rois = _boxes(2, 300, seed=2, dtype=torch.float32)
    grad = torch.randn(300, 8, 7, 7)
    out = ra.roi_align(feat, rois, (7, 7), 0.25, 2, False, backward="sparse")
    assert torch.equal(out, tv_roi_align(feat, rois, (7, 7), 0.25, 2, False))
    g1 = torch.autograd.grad(out, feat, grad)[0]
    g2 = torch.autograd.grad(ra.roi_align(feat, rois, (7, 7), 0.25, 2, False, backward="sparse"), feat, grad)[0]
    assert torch.equal(g1, g2)


def test_a_level_without_rois_and_the_large_grid_fallback(monkeypatch):
    feat = torch.randn(1, 2, 8, 8, requires_grad=True)
    empty = torch.zeros(0, 5)
    out = ra.roi_align(feat, empty, (7, 7), 1.0, 2, False, backward="sparse")
    assert out.shape == (0, 2, 7, 7)
    (g,) = torch.autograd.grad(out.sum() + 0 * feat.sum(), feat)  # through the sparse backward of no RoIs
    assert g.shape == feat.shape and not g.any()
    assert not ra.roi_align_backward(torch.zeros(0, 2, 7, 7), empty, feat.shape, 1.0, (7, 7), 2, False).any()
    rois = torch.tensor([[0, 0.0, 0.0, 7.0, 7.0]])
    monkeypatch.setattr(ra, "MAX_SAMPLES", 10)  # forces torchvision's backward
    assert ra.sampling_matrix(rois, 8, 8, 1.0, (7, 7), 0, True) is None
    ours = torch.autograd.grad(ra.roi_align(feat, rois, (7, 7), 1.0, 0, True, backward="sparse").sum(), feat)[0]
    ref = torch.autograd.grad(tv_roi_align(feat, rois, (7, 7), 1.0, 0, True).sum(), feat)[0]
    assert torch.equal(ours, ref)


def test_auto_is_sparse_on_cpu_and_torchvision_when_asked(monkeypatch):
    calls = []
    real = ra.roi_align_backward
    monkeypatch.setattr(ra, "roi_align_backward", lambda *a, **k: calls.append(1) or real(*a, **k))
    feat = torch.randn(1, 2, 8, 8, requires_grad=True)
    rois = torch.tensor([[0, 1.0, 1.0, 6.0, 6.0]])
    for backward, expected in (("auto", 1), ("torchvision", 1), ("sparse", 2)):
        ra.roi_align(feat, rois, (2, 2), 1.0, 2, False, backward=backward).sum().backward()
        assert len(calls) == expected, backward
    with pytest.raises(ValueError, match="backward must be one of"):
        ra.roi_align(feat, rois, (2, 2), backward="fast")


def test_the_pooler_is_torchvisions_multiscale_roi_align_bit_for_bit():
    """No zero fill: every RoI row is written by its level, and the output and the features'
    gradients equal torchvision's MultiScaleRoIAlign exactly (torchvision's backward, not aligned);
    a NaN box, which no level claims, gives a zero row as in torchvision."""
    from torchvision.ops import MultiScaleRoIAlign

    torch.manual_seed(0)
    feats = {str(k): torch.randn(2, 4, 32 >> k, 32 >> k, requires_grad=True) for k in range(4)}
    boxes = [_boxes(1, 60, seed=s, dtype=torch.float32)[:, 1:].clamp(0, 127) for s in (3, 4)]
    boxes = [torch.cat([b[:, :2].minimum(b[:, 2:]), b[:, :2].maximum(b[:, 2:]) + 1], 1) * 2 for b in boxes]
    boxes[1][5] = float("nan")
    outs, grads = [], []
    for pool in (MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2),
                 RoIAlignPooler(["0", "1", "2", "3"], 7, 2, backward="torchvision")):
        out = pool(feats, boxes, [(256, 256)] * 2)
        outs.append(out)
        grads.append(torch.autograd.grad(out, list(feats.values()), torch.arange(out.numel()).reshape(out.shape)
                                         .float().sin()))
    assert torch.equal(outs[0], outs[1]) and outs[1][60 + 5].abs().sum() == 0
    assert all(torch.equal(a, b) for a, b in zip(grads[0], grads[1]))


@pytest.mark.parametrize("aligned", [False, True])
def test_the_pooler_gives_torchvisions_gradients(aligned):
    torch.manual_seed(0)
    feats = {str(k): torch.randn(2, 4, 32 >> k, 32 >> k, requires_grad=True) for k in range(4)}
    boxes = [_boxes(1, 60, seed=s, dtype=torch.float32)[:, 1:].clamp(0, 127) for s in (3, 4)]
    boxes = [torch.cat([b[:, :2].minimum(b[:, 2:]), b[:, :2].maximum(b[:, 2:]) + 1], 1) * 2 for b in boxes]
    grads = {}
    for backward in ("torchvision", "sparse"):
        pool = RoIAlignPooler(["0", "1", "2", "3"], 7, 2, aligned=aligned, backward=backward)
        out = pool(feats, boxes, [(128, 128)] * 2)
        grads[backward] = torch.autograd.grad(out, list(feats.values()), torch.ones_like(out))
    for a, b in zip(grads["torchvision"], grads["sparse"]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * a.abs().max())


def test_autocast_dtype_falls_back_to_float32(monkeypatch):
    assert model_mod.autocast_dtype("cpu", "none") is None
    assert model_mod.autocast_dtype("cpu", "fp16") is None
    assert model_mod.autocast_dtype("cuda", "fp16") is torch.float16
    assert model_mod.autocast_dtype("cuda", "bf16") is torch.bfloat16
    monkeypatch.setattr(model_mod, "cpu_has_bf16", lambda: False)
    assert model_mod.autocast_dtype("cpu", "bf16") is None
    monkeypatch.setattr(model_mod, "cpu_has_bf16", lambda: True)
    assert model_mod.autocast_dtype("cpu", "bf16") is torch.bfloat16


def test_under_bf16_autocast_the_predictors_and_losses_stay_float32():
    cfg = get_preset("mini_smoke")
    torch.manual_seed(0)
    model = build_model(cfg, 3).train()
    seen = {}
    model.rpn.head.register_forward_hook(lambda m, i, o: seen.update(rpn=o[1][0].dtype))
    model.roi_heads.box_predictor.register_forward_hook(lambda m, i, o: seen.update(box=o[1].dtype))
    images = [torch.rand(3, 128, 128) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 70.0, 90.0]]), "labels": torch.tensor([1])}] * 2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(images, targets)
        stem = model.backbone.body.conv1(images[0][None])
    assert stem.dtype == torch.bfloat16  # the convolutions do run in bf16
    assert seen == {"rpn": torch.float32, "box": torch.float32}  # hooks registered later see the cast
    assert all(v.dtype == torch.float32 for v in losses.values())
