"""The dynamic head: hand-computed statistics, update rule, edge cases, state, peer check."""

import copy
import io
import math
import warnings

import pytest
import torch
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import MultiScaleRoIAlign

from dynrcnn.config import DynamicConfig
from dynrcnn.modeling.dynamic_head import DynamicRoIHeads, kth_largest, kth_smallest_masked, smooth_l1
from dynrcnn.modeling.model import build_model
from dynrcnn.presets import get_preset

torch.set_num_threads(1)


def stock_heads(fg=0.5, batch=512, num_classes=4, channels=8):
    torch.manual_seed(0)
    return RoIHeads(
        MultiScaleRoIAlign(["0"], 7, 2),
        TwoMLPHead(channels * 49, 32),
        FastRCNNPredictor(32, num_classes),
        fg, fg, batch, 0.25, None, 0.05, 0.5, 100,
    )


def make_head(method="dynamic", convention="mmdet", k_i=3, k_beta=3, interval=2, box_beta=1.0, **kw):
    dla, dsl = method in ("dla", "dynamic"), method in ("dsl", "dynamic")
    cfg = DynamicConfig(k_i=k_i, k_beta=k_beta, interval=interval, convention=convention, **kw)
    head = DynamicRoIHeads.from_roi_heads(stock_heads(), use_dla=dla, use_dsl=dsl, dynamic=cfg, box_beta=box_beta)
    head.train()
    return head


def box(h, x0=0.0, y0=0.0, w=10.0):
    return [x0, y0, x0 + w, y0 + h]


# Image 1: GT [0,0,10,10]; proposals of height h share the GT's top edge, so IoU = h/10 and the
# centre error is mean(|t_x|, |t_y|) = |10 (5 - h/2) / h| / 2. The small centred box has IoU
# 0.04 (a negative) and centre error 0. Image 2: GT [0,0,10,10]; proposals h = 10, 4.5, 3.
IMAGE1 = [box(9), box(8), box(7), box(6), box(5), [4.0, 4.0, 6.0, 6.0]]
IMAGE2 = [box(10), box(4.5), box(3)]


def err(h):
    return abs(10 * (5 - h / 2) / h) / 2


def inputs(images=(IMAGE1, IMAGE2), with_gt=(True, True)):
    proposals = [torch.tensor(p, dtype=torch.float32) for p in images]
    targets = []
    for has in with_gt:
        if has:
            targets.append({"boxes": torch.tensor([box(10)]), "labels": torch.tensor([1])})
        else:
            targets.append({"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64)})
    return proposals, targets


def features(n=2):
    torch.manual_seed(1)
    return {"0": torch.rand(n, 8, 16, 16)}


def step(head, images=(IMAGE1, IMAGE2), with_gt=(True, True)):
    proposals, targets = inputs(images, with_gt)
    return head(features(len(images)), proposals, [(64, 64)] * len(images), targets)[1]


def recorded(head):
    head.record_raw_stats = True
    step(head)
    return {k: float(v) for k, v in head.last_stats.items()}


def test_kth_helpers():
    v = torch.tensor([0.3, 0.9, 0.5, 0.7])
    assert float(kth_largest(v, 2)) == pytest.approx(0.7)
    assert float(kth_largest(v, 10)) == pytest.approx(0.3)  # K larger than the pool: pool size
    stat, ok = kth_smallest_masked(v, torch.tensor([True, True, False, True]), 2)
    assert float(stat) == pytest.approx(0.7) and bool(ok)
    stat, ok = kth_smallest_masked(v, torch.tensor([False, True, False, False]), 3)  # capped at #positives
    assert float(stat) == pytest.approx(0.9) and bool(ok)
    _, ok = kth_smallest_masked(v, torch.zeros(4, dtype=torch.bool), 3)
    assert not bool(ok)


def test_smooth_l1_matches_definition_and_torch():
    x = torch.tensor([-2.0, -0.3, 0.0, 0.2, 0.5, 3.0])
    for beta in (1.0, 0.5, 1 / 9):
        expected = [0.5 * v * v / beta if abs(v) < beta else abs(v) - 0.5 * beta for v in x.tolist()]
        assert smooth_l1(x, torch.tensor(beta)).tolist() == pytest.approx(expected)
        ref = torch.nn.functional.smooth_l1_loss(x, torch.zeros_like(x), beta=beta, reduction="none")
        assert torch.allclose(smooth_l1(x, beta), ref)


def test_mmdet_statistics_by_hand():
    stats = recorded(make_head(convention="mmdet"))
    # IoU, GT boxes in each image's pool as 1.0: image 1: 1 (GT) .9 .8 .7 .6 .5 .04 -> 3rd largest
    # .8; image 2: 1 (GT) 1 (h=10) .45 .3 -> .45
    assert stats["iou"] == pytest.approx((0.8 + 0.45) / 2, abs=1e-6)
    # Error over sampled positives (IoU >= 0.4, GT boxes included, error 0):
    # image 1: h=9..5 and its GT; image 2: h=10 (0), h=4.5, and its GT -> zeros 0,0,0 then err(9)...
    # k = K_beta x images = 6 -> 0, 0, 0, err(9), err(8), err(7)
    assert stats["error"] == pytest.approx(err(7), rel=1e-5)


def test_official_statistics_by_hand():
    stats = recorded(make_head(convention="official"))
    # IoU over all proposals of both images, GT boxes (IoU 1) included: 1, 1, 1(h=10), .9, .8, .7 ...
    # k = K_I x 2 = 6 -> .7
    assert stats["iou"] == pytest.approx(0.7, abs=1e-6)
    # Error over all proposals incl. GT and negatives: 0 (GT1), 0 (centred negative), 0 (GT2),
    # 0 (h=10), err(9), err(8) -> 6th smallest = err(8) (the mmdet convention gives err(7))
    assert stats["error"] == pytest.approx(err(8), rel=1e-5)


@pytest.mark.parametrize("convention,iou,beta", [("mmdet", 0.625, err(7)), ("official", 0.7, err(8))])
def test_update_rule_after_c_iterations(convention, iou, beta):
    head = make_head(convention=convention, interval=2)
    events = []
    head.update_callbacks.append(events.append)
    step(head)
    # the first C iterations: MMDetection's base assigner (0.5), the authors' WARMUP_IOU (T_init = 0.4)
    assert not events and float(head.iou_threshold) == pytest.approx({"mmdet": 0.5, "official": 0.4}[convention])
    step(head)
    assert len(events) == 1 and events[0].iteration == 2
    assert events[0].num_iou_stats == 2 and events[0].num_beta_stats == 2
    assert float(head.iou_threshold) == pytest.approx(max(0.4, iou), abs=1e-6)
    assert float(head.beta) == pytest.approx(min(1.0, beta), rel=1e-5)
    assert head.dynamic_state()["num_updates"] == 1


def test_threshold_never_below_init_and_beta_never_above_init():
    head = make_head(k_i=6, k_beta=50, interval=1)
    step(head)  # 6th largest IoU of image 2 (3 proposals) is .3 -> mean(.04?, .3) < 0.4
    assert float(head.iou_threshold) == pytest.approx(0.4)
    assert float(head.beta) <= 1.0


def test_median_is_numpy_median_over_iterations():
    head = make_head(interval=4, k_beta=3)
    for value in (0.1, 0.4, 0.2, 0.3):  # even count: numpy's median averages the middle two
        head._beta_record[head.step % 4] = value
        head._beta_valid[head.step % 4] = True
        head._iou_valid[head.step % 4] = False
        head.step += 1
    head.update()
    assert float(head.beta) == pytest.approx(0.25)


def test_dla_assignment_uses_current_threshold():
    head = make_head(method="dla", interval=100)
    proposals, targets = inputs()
    head.iou_threshold.fill_(0.75)
    props, _, labels, _ = head.select_training_samples(proposals, targets)
    ious = [0.9, 0.8, 0.7, 0.6, 0.5, 0.04, 1.0]  # image 1 proposals + its GT
    expected = sorted(1 if v >= 0.75 else 0 for v in ious)
    assert sorted(labels[0].tolist()) == expected


def test_images_without_ground_truth_contribute_nothing():
    head = make_head(interval=1)
    head.record_raw_stats = True
    step(head, with_gt=(True, False))
    # only image 1 counts: its 3rd largest IoU (GT included) is .8 (not averaged with a 0)
    assert float(head.iou_threshold) == pytest.approx(0.8, abs=1e-6)
    before = (float(head.iou_threshold), float(head.beta))
    step(head, with_gt=(False, False))  # nothing recorded: keep previous values
    assert (float(head.iou_threshold), float(head.beta)) == before
    assert not bool(head.last_stats["iou_valid"]) and not bool(head.last_stats["error_valid"])


def test_batch_without_positives_records_no_beta():
    # every image with ground truth has positives (its GT boxes join the proposals), so a batch
    # without positives is a batch without ground truth: nothing may be recorded for beta
    head = make_head(interval=1)
    head.record_raw_stats = True
    empty = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = head(features(1), [torch.tensor([[50.0, 50.0, 60.0, 60.0], [40.0, 40.0, 45.0, 45.0]])],
                  [(64, 64)], [empty])[1]
    assert not bool(head.last_stats["error_valid"]) and not bool(head.last_stats["iou_valid"])
    assert float(head.beta) == 1.0 and float(head.iou_threshold) == pytest.approx(head.warmup_iou)
    assert losses["loss_box_reg"].detach().item() == 0.0 and torch.isfinite(losses["loss_classifier"].detach())


def test_fewer_proposals_than_k():
    head = make_head(k_i=100, k_beta=100, interval=1)
    stats = recorded(head)
    # K capped at the pool (RPN proposals + GT): smallest IoU per image: .04 and .3
    assert stats["iou"] == pytest.approx((0.04 + 0.3) / 2, abs=1e-6)
    assert math.isfinite(stats["error"])


def test_median_below_eps_keeps_previous_beta():
    head = make_head(interval=1, k_beta=1)
    head.beta.fill_(0.37)
    step(head)  # the smallest positive errors are the GT boxes' own targets: exactly 0
    assert float(head.beta) == pytest.approx(0.37)


def test_nonfinite_statistics_are_skipped_and_warned_once():
    head = make_head(interval=2)
    head._iou_record[:] = torch.tensor([float("nan"), 0.6])
    head._iou_valid[:] = True
    head._beta_record[:] = torch.tensor([float("inf"), 0.3])
    head._beta_valid[:] = True
    with pytest.warns(RuntimeWarning, match="non-finite"):
        event = head.update()
    assert float(head.iou_threshold) == pytest.approx(0.6)
    assert float(head.beta) == pytest.approx(0.3)
    assert event.num_nonfinite == 2 and event.num_iou_stats == 1
    head._iou_record[:] = float("nan")
    head._iou_valid[:] = True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        head.update()  # second time: no warning, state kept
    assert float(head.iou_threshold) == pytest.approx(0.6)


@pytest.mark.parametrize("convention", ["mmdet", "official"])
def test_switches_fix_the_disabled_mechanism(convention):
    # before the first update DLA trains at the base assigner's 0.5 (mmdet) or T_init 0.4 (official)
    warmup = {"mmdet": 0.5, "official": 0.4}[convention]
    for method, moves_iou, moves_beta in (("dla", True, False), ("dsl", False, True), ("baseline", False, False)):
        head = make_head(method=method, interval=1, box_beta=0.5, k_beta=2, convention=convention)
        start = (float(head.iou_threshold), float(head.beta))
        assert start == pytest.approx((warmup if moves_iou else 0.5, 1.0 if moves_beta else 0.5))  # init vs fixed
        if convention == "official":  # its error statistic on these inputs is >= beta_init: nothing moves
            continue
        step(head)
        assert (float(head.iou_threshold) != start[0]) == moves_iou, method
        assert (float(head.beta) != start[1]) == moves_beta, method
        assert head.method == method


def test_losses_equal_torchvision_stock_when_dynamics_off():
    stock = stock_heads(fg=0.5, batch=8)
    ours = DynamicRoIHeads.from_roi_heads(copy.deepcopy(stock), use_dla=False, use_dsl=False,
                                          dynamic=DynamicConfig(), box_beta=1 / 9)
    stock.train()
    ours.train()
    proposals, targets = inputs()
    for seed in range(3):
        torch.manual_seed(seed)
        ref = stock(features(), [p.clone() for p in proposals], [(64, 64)] * 2, targets)[1]
        torch.manual_seed(seed)
        got = ours(features(), [p.clone() for p in proposals], [(64, 64)] * 2, targets)[1]
        for k in ref:
            assert torch.equal(ref[k], got[k]), k


def test_full_model_losses_equal_torchvision_builder():
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    torch.manual_seed(0)
    tv = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3, min_size=128, max_size=128)
    ours = copy.deepcopy(tv)
    ours.roi_heads = DynamicRoIHeads.from_roi_heads(ours.roi_heads, use_dla=False, use_dsl=False, box_beta=1 / 9)
    tv.train()
    ours.train()
    torch.manual_seed(1)
    images = [torch.rand(3, 128, 128) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 70.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[30.0, 20.0, 120.0, 90.0], [5.0, 5.0, 30.0, 30.0]]), "labels": torch.tensor([2, 1])}]
    torch.manual_seed(2)
    ref = tv(images, targets)
    torch.manual_seed(2)
    got = ours(images, targets)
    for k in ref:
        assert torch.equal(ref[k], got[k]), k


def test_state_dict_round_trip_restores_dynamic_state(tmp_path):
    head = make_head(interval=3)
    for _ in range(4):  # one update at 3, one statistic recorded after it
        step(head)
    path = tmp_path / "head.pth"
    torch.save(head.state_dict(), path)
    state = torch.load(path, weights_only=True)
    fresh = make_head(interval=3)
    fresh.load_state_dict(state)
    assert fresh.step == 4 and fresh.num_updates == 1
    assert torch.equal(fresh.iou_threshold, head.iou_threshold) and torch.equal(fresh.beta, head.beta)
    assert torch.equal(fresh._iou_record, head._iou_record) and torch.equal(fresh._iou_valid, head._iou_valid)
    assert torch.equal(fresh._beta_record, head._beta_record) and torch.equal(fresh._beta_valid, head._beta_valid)
    for h in (head, fresh):  # both continue identically to the next update
        step(h)
        step(h)
    assert torch.equal(fresh.iou_threshold, head.iou_threshold) and torch.equal(fresh.beta, head.beta)


def test_state_from_other_interval_is_refused():
    head = make_head(interval=3)
    with pytest.raises(ValueError, match="interval"):
        make_head(interval=5).load_state_dict(head.state_dict())


def test_model_state_dict_carries_dynamic_state():
    cfg = get_preset("mini_smoke")
    model = build_model(cfg, 4)
    keys = model.state_dict().keys()
    assert {"roi_heads.iou_threshold", "roi_heads.beta", "roi_heads._extra_state"} <= set(keys)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    torch.load(buf, weights_only=True)


def test_slim_model_training_moves_threshold_and_beta():
    cfg = get_preset("mini_smoke")
    cfg.dynamic.interval = 4
    cfg.dynamic.k_i = 2
    cfg.dynamic.k_beta = 3
    cfg.model.min_size = cfg.model.max_size = 128
    torch.manual_seed(0)
    model = build_model(cfg, 3)
    model.train()
    events = []
    model.roi_heads.update_callbacks.append(events.append)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    for _ in range(8):
        images = [torch.rand(3, 128, 128, generator=g) for _ in range(2)]
        targets = [{"boxes": torch.tensor([[8.0, 8.0, 100.0, 110.0], [40.0, 30.0, 120.0, 90.0]]),
                    "labels": torch.tensor([1, 2])} for _ in range(2)]
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert [e.iteration for e in events] == [4, 8]
    assert float(model.roi_heads.iou_threshold) > 0.4
    assert float(model.roi_heads.beta) < 1.0
    assert all(math.isfinite(e.iou_threshold) and math.isfinite(e.beta) for e in events)


# ---------------------------------------------------------------------------------------------
# One test per row of the conventions table (docs/method.md). Two ground truths in image A, so
# that "max IoU" and "IoU with ground truth #0" differ:
#   GT0 = [0,0,10,10], GT1 = [20,0,30,10]
#   p1 = [0,0,10,9]   IoU .9 with GT0                 (foreground at T = 0.4)
#   p2 = [20,0,30,6]  IoU .6 with GT1, 0 with GT0     (foreground)
#   p3 = [20,0,30,3]  IoU .3 with GT1, 0 with GT0     (background: official records IoU(GT0) = 0)
#   p4 = [0,0,10,2]   IoU .2 with GT0                 (background)
# Centre errors mean(|t_x|, |t_y|) with weights (10, 10, 5, 5): a box sharing a GT's x-range and
# top edge with height h has err(h) = |10 (5 - h/2) / h| / 2; p3 encoded toward GT0 has
# t_x = 10 (5 - 25) / 10 = -20 and t_y = 10 (5 - 1.5) / 3, so (20 + 35/3) / 2.
GTS_A = [[0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 30.0, 10.0]]
PROPS_A = [[0.0, 0.0, 10.0, 9.0], [20.0, 0.0, 30.0, 6.0], [20.0, 0.0, 30.0, 3.0], [0.0, 0.0, 10.0, 2.0]]
ERR_P3_TO_GT0 = (20 + 35 / 3) / 2


def two_gt_stats(convention, k_i=4, k_beta=5, images=1):
    """Raw statistics of one iteration on ``images`` copies of image A (plus image B if 2)."""
    head = make_head(convention=convention, k_i=k_i, k_beta=k_beta, interval=100)
    head.record_raw_stats = True
    proposals = [torch.tensor(PROPS_A)]
    targets = [{"boxes": torch.tensor(GTS_A), "labels": torch.tensor([1, 2])}]
    if images == 2:  # image B: one GT [0,0,10,10], proposals of IoU 1.0, .5, .1
        proposals.append(torch.tensor([box(10), box(5), box(1)]))
        targets.append({"boxes": torch.tensor([box(10)]), "labels": torch.tensor([1])})
    head(features(images), proposals, [(64, 64)] * images, targets)
    return {k: float(v) for k, v in head.last_stats.items()}


def test_row_pool_mmdet_includes_ground_truth_as_iou_one():
    # pool of image A: GT0 1, GT1 1, .9, .6, .3, .2 -> 4th largest .6
    # (without the GT boxes it would be the smallest of .9 .6 .3 .2 = .2)
    assert two_gt_stats("mmdet", k_i=4)["iou"] == pytest.approx(0.6, abs=1e-6)


def test_row_iou_official_clamps_background_to_ground_truth_zero():
    # recorded IoUs: GT0 1, GT1 1, p1 .9, p2 .6, p3 IoU(GT0) = 0, p4 .2 -> 5th largest .2
    # (the max IoU would give .3; mmdet's pool gives .3)
    assert two_gt_stats("official", k_i=5)["iou"] == pytest.approx(0.2, abs=1e-6)
    assert two_gt_stats("mmdet", k_i=5)["iou"] == pytest.approx(0.3, abs=1e-6)


def test_row_iou_statistic_per_image_mean_vs_batch_order_statistic():
    # K_I = 2. mmdet: image A pool 1 1 .9 .6 .3 .2 -> 1.0; image B pool 1 (GT) 1 .5 .1 -> 1.0;
    # mean 1.0. K_I = 3: A -> .9, B -> .5, mean .7.
    assert two_gt_stats("mmdet", k_i=3, images=2)["iou"] == pytest.approx(0.7, abs=1e-6)
    # official, K_I x 2 = 6th largest over the batch: 1 1 1 1 .9 .6 (.5 .2 .1 0) -> .6
    assert two_gt_stats("official", k_i=3, images=2)["iou"] == pytest.approx(0.6, abs=1e-6)


def test_row_error_mmdet_sampled_positives_official_all_proposals_toward_gt0():
    # mmdet: positives GT0 0, GT1 0, p1 err(9), p2 err(6); k = min(5 x 1, 4) = 4th -> err(6)
    assert two_gt_stats("mmdet", k_beta=5)["error"] == pytest.approx(err(6), rel=1e-5)
    # official: all six: 0, 0, err(9), err(6), p4 err(2) = 10, p3 toward GT0 = 15.83 -> 5th = 10,
    # 6th = 15.83 (matching p3 to GT1 instead would give err(3) = 5.83 as 5th)
    assert two_gt_stats("official", k_beta=5)["error"] == pytest.approx(err(2), rel=1e-5)
    assert two_gt_stats("official", k_beta=6)["error"] == pytest.approx(ERR_P3_TO_GT0, rel=1e-5)


@pytest.mark.parametrize("convention,expected", [("mmdet", 0.5), ("official", 0.6)])
def test_row_median_numpy_vs_upper_middle(convention, expected):
    head = make_head(convention=convention, interval=4)
    values = torch.tensor([0.2, 0.8, 0.4, 0.6])  # sorted .2 .4 .6 .8: numpy .5, sorted[4 // 2] = .6
    assert head.median(values) == pytest.approx(expected)
    head._beta_record[:] = values
    head._beta_valid[:] = True
    head.update()
    assert float(head.beta) == pytest.approx(expected)
    assert make_head(convention=convention).median(torch.tensor([0.3, 0.1, 0.2])) == pytest.approx(0.2)


@pytest.mark.parametrize("convention", ["mmdet", "official"])
def test_row_beta_guard_applies_to_both_conventions(convention):
    head = make_head(convention=convention, interval=2)
    head.beta.fill_(0.37)
    head._beta_record[:] = torch.tensor([0.0, 0.0])
    head._beta_valid[:] = True
    head.update()
    assert float(head.beta) == pytest.approx(0.37)


def test_row_proposals_kept_after_rpn_nms_follow_the_reference():
    for name in ("coco_r50_fpn_1x", "coco_r50_fpn_1x_1gpu", "coco_r50_fpn_2x"):
        cfg = get_preset(name)
        assert cfg.model.rpn_post_nms_top_n_train == 1000 and cfg.model.rpn_post_nms_top_n_test == 1000
        assert cfg.model.rpn_pre_nms_top_n_train == 2000 and cfg.model.rpn_pre_nms_top_n_test == 1000


@pytest.mark.parametrize("convention", ["mmdet", "official"])
def test_row_images_without_ground_truth_are_left_out(convention):
    head = make_head(convention=convention, k_i=2, k_beta=1, interval=100)
    head.record_raw_stats = True
    empty = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64)}
    one_gt = {"boxes": torch.tensor([box(10)]), "labels": torch.tensor([1])}
    head(features(2), [torch.tensor([box(10), box(5), box(1)]), torch.tensor([box(9)])], [(64, 64)] * 2,
         [one_gt, empty])
    # only the first image counts: pool 1 (GT) 1 .5 .1 -> 2nd largest 1.0 (an empty image would
    # add a 0 to the mmdet mean or 2 x K_I to the official rank)
    assert float(head.last_stats["iou"]) == pytest.approx(1.0)


def test_fg_fraction_is_share_of_rpn_proposals_at_the_threshold():
    stats = two_gt_stats("mmdet")
    # RPN proposals of image A (GT not counted): .9 .6 .3 .2 -> 2 of 4 at T = 0.4
    assert stats["fg_fraction"] == pytest.approx(0.5)
