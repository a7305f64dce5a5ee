"""Method parity with MMDetection's own code: its ``DynamicRoIHead`` against our ``DynamicRoIHeads``.

Runs in the MMDetection peer environment (``.venv-mmdet``, ``make mmdet-env``); the main suite's
``tests/test_mmdet_peer.py`` runs this file there, so ``make test`` executes it on every machine.

Both heads get the same features' shapes, proposals, ground truths and configuration, iteration
after iteration from the very first, over several C-iteration updates. MMDetection's head is the
installed module, built from the installed ``configs/dynamic_rcnn/dynamic-rcnn_r50_fpn_1x_coco.py``
(its ``roi_head`` and ``train_cfg.rcnn``) with only sizes changed. Sampling is made exhaustive on
both sides (the sampler's ``num`` larger than any pool), so both heads see every proposal: the
random draws of the two samplers cannot be paired, and the statistics of a full pool are what the
rules define. Compared, with float tolerance: the foreground proposals and their labels at the
threshold in force, every per-iteration IoU and error statistic, and every update's threshold and
beta. Where we deviate on purpose (``docs/method.md`` section 3: an image without ground truth
contributes no statistic), the test checks the difference is exactly that.
"""

from __future__ import annotations

import copy
import os
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torchvision

import mmdet
from mmengine.config import Config
from mmengine.structures import InstanceData
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.utils import register_all_modules
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign

from dynrcnn.config import DynamicConfig
from dynrcnn.modeling.dynamic_head import DynamicRoIHeads

register_all_modules()

CONFIG = os.path.join(os.path.dirname(mmdet.__file__), ".mim", "configs", "dynamic_rcnn",
                      "dynamic-rcnn_r50_fpn_1x_coco.py")
NUM_CLASSES = 3  # foreground classes (ours adds background as class 0)
CHANNELS = 8
IMAGE = 64
STRIDE = 4
EXHAUSTIVE = 100_000  # sampler size larger than any pool: every proposal is sampled


def mmdet_head(k_i: int, k_beta: int, interval: int):
    """MMDetection's DynamicRoIHead from its own Dynamic R-CNN config, sizes changed only."""
    cfg = Config.fromfile(CONFIG)
    head_cfg = copy.deepcopy(cfg.model.roi_head)
    head_cfg.bbox_roi_extractor.roi_layer.update(use_torchvision=True)
    head_cfg.bbox_roi_extractor.update(out_channels=CHANNELS, featmap_strides=[STRIDE])
    head_cfg.bbox_head.update(in_channels=CHANNELS, fc_out_channels=16, num_classes=NUM_CLASSES)
    train_cfg = copy.deepcopy(cfg.model.train_cfg.rcnn)
    train_cfg.sampler.num = EXHAUSTIVE
    train_cfg.dynamic_rcnn.update(iou_topk=k_i, beta_topk=k_beta, update_iter_interval=interval)
    head_cfg.update(train_cfg=train_cfg, test_cfg=cfg.model.test_cfg.rcnn)
    head = MODELS.build(head_cfg)
    head.train()
    assert type(head).__module__ == "mmdet.models.roi_heads.dynamic_roi_head"  # the real module
    return head, train_cfg


def our_head(k_i: int, k_beta: int, interval: int, mm_train_cfg):
    """Our DynamicRoIHeads (convention mmdet) with MMDetection's thresholds and the same sizes."""
    assigner = mm_train_cfg.assigner
    assert assigner.pos_iou_thr == assigner.neg_iou_thr == assigner.min_pos_iou  # one threshold
    assert not assigner.match_low_quality and mm_train_cfg.sampler.add_gt_as_proposals
    pool = MultiScaleRoIAlign(["0"], output_size=7, sampling_ratio=0)
    head = DynamicRoIHeads(
        pool, TwoMLPHead(CHANNELS * 49, 16), FastRCNNPredictor(16, NUM_CLASSES + 1),
        assigner.pos_iou_thr, assigner.neg_iou_thr, EXHAUSTIVE, mm_train_cfg.sampler.pos_fraction,
        (10.0, 10.0, 5.0, 5.0), 0.05, 0.5, 100,
        use_dla=True, use_dsl=True,
        dynamic=DynamicConfig(k_i=k_i, k_beta=k_beta, interval=interval, init_iou=0.4, init_beta=1.0,
                              convention="mmdet"),
        box_beta=1.0,
    )
    head.train()
    head.record_raw_stats = True
    return head


class Pair:
    """The two heads fed identical inputs; every iteration's observations of both."""

    def __init__(self, k_i=6, k_beta=2, interval=4):
        self.mm, self.mm_cfg = mmdet_head(k_i, k_beta, interval)
        self.ours = our_head(k_i, k_beta, interval, self.mm_cfg)
        self.interval = interval
        self.mm_updates: list[tuple[float, float]] = []
        self._mm_snapshot = None
        self._mm_positives = []
        original_update = self.mm.update_hyperparameters

        def update():  # keep the histories the update consumes, and its result
            self._mm_snapshot = (list(self.mm.iou_history), list(self.mm.beta_history))
            result = original_update()
            self.mm_updates.append(tuple(float(v) for v in result))
            return result

        self.mm.update_hyperparameters = update
        original_sample = self.mm.bbox_sampler.sample

        def sample(assign_result, *args, **kwargs):
            result = original_sample(assign_result, *args, **kwargs)
            self._mm_positives.append(_rows(result.pos_priors, result.pos_gt_labels + 1))
            return result

        self.mm.bbox_sampler.sample = sample

    def thresholds(self) -> tuple[float, float]:
        """The threshold each head assigns with now."""
        return float(self.mm.bbox_assigner.pos_iou_thr), float(self.ours.iou_threshold)

    def betas(self) -> tuple[float, float]:
        return float(self.mm.bbox_head.loss_bbox.beta), float(self.ours.beta)

    def step(self, proposals, gt_boxes, gt_labels) -> dict:
        """One training iteration of both heads; returns what each recorded."""
        n = len(proposals)
        feats = torch.randn(n, CHANNELS, IMAGE // STRIDE, IMAGE // STRIDE)
        thr_in_force = self.thresholds()
        # MMDetection
        rpn_results, samples = [], []
        for p, b, lab in zip(proposals, gt_boxes, gt_labels):
            r = InstanceData()
            r.bboxes = p.clone()
            r.scores = torch.rand(len(p))
            rpn_results.append(r)
            s = DetDataSample(metainfo=dict(img_shape=(IMAGE, IMAGE), ori_shape=(IMAGE, IMAGE)))
            s.gt_instances = InstanceData(bboxes=b.clone(), labels=lab.clone() - 1)  # mmdet: 0-based
            samples.append(s)
        self._mm_snapshot, self._mm_positives = None, []
        beta_len = len(self.mm.beta_history)
        self.mm.loss((feats,), rpn_results, samples)
        # at an update the histories were consumed: read this iteration's entries from the snapshot
        iou_hist, beta_hist = self._mm_snapshot or (self.mm.iou_history, self.mm.beta_history)
        mm_iou = iou_hist[-1]
        mm_beta = beta_hist[-1] if len(beta_hist) > beta_len else None  # appended only with positives
        # ours
        targets = [{"boxes": b.clone(), "labels": lab.clone()} for b, lab in zip(gt_boxes, gt_labels)]
        captured = {}
        original = self.ours.select_training_samples

        def select(props, tgts):
            out = original(props, tgts)
            captured["rows"] = [_rows(p[lab > 0], lab[lab > 0]) for p, lab in zip(out[0], out[2])]
            return out

        self.ours.select_training_samples = select
        try:
            self.ours(OrderedDict([("0", feats)]), [p.clone() for p in proposals], [(IMAGE, IMAGE)] * n, targets)
        finally:
            del self.ours.select_training_samples
        stats = self.ours.last_stats
        return {
            "threshold_in_force": thr_in_force,
            "mm_positives": self._mm_positives,
            "our_positives": captured["rows"],
            "mm_iou": mm_iou,
            "our_iou": float(stats["iou"]) if bool(stats["iou_valid"]) else None,
            "mm_beta": mm_beta,
            "our_beta": float(stats["error"]) if bool(stats["error_valid"]) else None,
            "updated": self._mm_snapshot is not None,
        }


def _rows(boxes: torch.Tensor, labels: torch.Tensor) -> list[tuple]:
    """Foreground proposals as sorted (x1, y1, x2, y2, label) rows, rounded for comparison."""
    return sorted(tuple(round(float(v), 3) for v in b) + (int(lab),) for b, lab in zip(boxes, labels))


def scene(rng: np.random.Generator, with_gt=True, num_proposals=40, spread=0.25):
    """One image: 1-3 ground truths and proposals jittered around them (plus random boxes)."""
    if not with_gt:
        gts = torch.zeros((0, 4))
        labels = torch.zeros(0, dtype=torch.int64)
    else:
        k = int(rng.integers(1, 4))
        xy = rng.uniform(2, IMAGE - 30, size=(k, 2))
        wh = rng.uniform(10, 26, size=(k, 2))
        gts = torch.tensor(np.concatenate([xy, xy + wh], 1), dtype=torch.float32)
        labels = torch.tensor(rng.integers(1, NUM_CLASSES + 1, size=k), dtype=torch.int64)
    props = []
    for _ in range(num_proposals):
        if len(gts) and rng.random() < 0.8:
            g = gts[int(rng.integers(len(gts)))].numpy()
            w, h = g[2] - g[0], g[3] - g[1]
            j = rng.normal(0, spread, size=4) * np.array([w, h, w, h])
            b = g + j
        else:
            xy = rng.uniform(0, IMAGE - 12, size=2)
            b = np.concatenate([xy, xy + rng.uniform(4, 20, size=2)])
        x1, x2 = sorted(np.clip(b[[0, 2]], 0, IMAGE))
        y1, y2 = sorted(np.clip(b[[1, 3]], 0, IMAGE))
        props.append([x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)])
    return torch.tensor(props, dtype=torch.float32), gts, labels


def batch(rng, images=2, with_gt=(True, True), spread=None):
    spread = spread if spread is not None else float(rng.uniform(0.08, 0.3))  # proposals improve / worsen
    parts = [scene(rng, g, spread=spread) for g in with_gt[:images]]
    return [p[0] for p in parts], [p[1] for p in parts], [p[2] for p in parts]


def close(a, b, rel=1e-5, abs_=1e-6) -> bool:
    return a == pytest.approx(b, rel=rel, abs=abs_)


# ------------------------------------------------------------------------------------------------


def test_stand_in_ops_equal_torchvision():
    """The stand-in mmcv._ext changes nothing on the box branch: mmcv's nms / batched_nms and
    RoIAlign(use_torchvision=True) return torchvision's results on the same inputs."""
    from mmcv.ops import RoIAlign, batched_nms, nms

    g = torch.Generator().manual_seed(0)
    xy = torch.rand(200, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 5 + torch.rand(200, 2, generator=g) * 40], 1)
    scores = torch.rand(200, generator=g)
    idxs = torch.randint(0, 4, (200,), generator=g)
    for thr in (0.3, 0.5, 0.7, 0.85):
        dets, keep = nms(boxes, scores, thr)
        assert torch.equal(keep, torchvision.ops.nms(boxes, scores, thr))
        assert torch.equal(dets[:, :4], boxes[keep]) and torch.equal(dets[:, 4], scores[keep])
        _, bkeep = batched_nms(boxes, scores, idxs, dict(type="nms", iou_threshold=thr))
        assert torch.equal(bkeep, torchvision.ops.batched_nms(boxes, scores, idxs, thr))
    feats = torch.randn(2, 4, 16, 16, generator=g)
    rois = torch.cat([torch.randint(0, 2, (30, 1), generator=g).float(), boxes[:30] / 2], 1)
    for aligned in (False, True):
        for ratio in (0, 2):
            layer = RoIAlign(7, spatial_scale=0.25, sampling_ratio=ratio, aligned=aligned, use_torchvision=True)
            want = torchvision.ops.roi_align(feats, rois, 7, 0.25, ratio, aligned)
            assert torch.equal(layer(feats, rois), want)
    with pytest.raises(NotImplementedError, match="not available"):
        RoIAlign(7, use_torchvision=False)(feats, rois)


def test_parity_over_several_updates_from_the_first_iteration():
    """All images with ground truth: assignment, every statistic and every update agree."""
    rng = np.random.default_rng(0)
    pair = Pair(k_i=6, k_beta=8, interval=4)
    assert pair.thresholds() == (0.5, 0.5)  # before the first update: the base assigner's 0.5
    assert pair.betas() == (1.0, 1.0)
    updates = 0
    for it in range(1, 15):
        obs = pair.step(*batch(rng))
        assert obs["threshold_in_force"][0] == pytest.approx(obs["threshold_in_force"][1], abs=1e-6)
        assert obs["mm_positives"] == obs["our_positives"], f"iteration {it}: foreground sets differ"
        assert close(obs["mm_iou"], obs["our_iou"]), (it, obs["mm_iou"], obs["our_iou"])
        assert obs["our_beta"] is not None and close(obs["mm_beta"], obs["our_beta"]), it
        thr, beta = pair.thresholds(), pair.betas()
        assert close(thr[0], thr[1]) and close(beta[0], beta[1]), (it, thr, beta)
        if it % pair.interval == 0:
            assert obs["updated"]
            updates += 1
    assert updates == 3 and len(pair.mm_updates) == 3
    # the statistics really moved the threshold and beta (else the test could not fail)
    assert pair.thresholds()[1] != 0.5 and pair.betas()[1] < 1.0
    assert len({round(t, 4) for t, _ in pair.mm_updates}) > 1


def test_image_without_ground_truth_is_our_documented_deviation():
    """MMDetection records a 0 for an image without ground truth (its max overlaps are all 0)
    and averages it in; we leave the image out. Per iteration the difference is exactly that
    factor; the error statistic (positives only) agrees. (MMDetection's data pipeline drops such
    images, filter_empty_gt=True, so on its own data this never happens.)"""
    rng = np.random.default_rng(1)
    pair = Pair(k_i=6, k_beta=8, interval=3)
    ours, theirs = [], []
    for it in range(1, 4):  # up to the first update: after it the thresholds differ by design
        with_gt = (True, False) if it % 2 else (True, True)
        obs = pair.step(*batch(rng, with_gt=with_gt))
        assert obs["mm_positives"] == obs["our_positives"]
        n_gt = sum(with_gt)
        assert close(obs["mm_iou"], obs["our_iou"] * n_gt / len(with_gt)), it
        assert close(obs["mm_beta"], obs["our_beta"]), it
        ours.append(obs["our_iou"])
        theirs.append(obs["mm_iou"])
    (mm_thr, mm_beta), = pair.mm_updates
    assert close(mm_thr, max(0.4, np.mean(theirs))) and close(pair.thresholds()[1], max(0.4, np.mean(ours)))
    assert pair.thresholds()[1] > mm_thr  # MMDetection's zeros pull its threshold down
    assert close(mm_beta, pair.betas()[1])


def test_batch_without_ground_truth_records_no_error_statistic_in_either():
    """A batch without ground truth has no positives: neither head records an error statistic,
    and the update keeps beta. MMDetection records IoU 0 (its mean over the history then counts it);
    we record nothing (documented deviation), so thresholds differ only by that entry."""
    rng = np.random.default_rng(2)
    pair = Pair(k_i=6, k_beta=2, interval=2)
    obs = pair.step(*batch(rng))
    assert close(obs["mm_iou"], obs["our_iou"])
    obs = pair.step(*batch(rng, with_gt=(False, False)))
    assert obs["mm_positives"] == obs["our_positives"] == [[], []]
    assert obs["our_beta"] is None and obs["mm_beta"] is None
    assert obs["our_iou"] is None and obs["mm_iou"] == 0.0
    (mm_thr, mm_beta), = pair.mm_updates
    first = pair._mm_snapshot[0][0]  # the history the update consumed: [the real statistic, 0.0]
    assert close(mm_thr, max(0.4, first / 2))  # MMDetection: mean(first, 0)
    assert close(pair.thresholds()[1], max(0.4, first))  # ours: the real statistic alone
    assert close(pair.betas()[0], pair.betas()[1])  # beta from the one recorded error in both


def test_median_below_eps_keeps_beta_in_both():
    """Proposals equal to their ground truths: the K_beta-th smallest error is exactly 0 every
    iteration, so the median is below 1e-15 and both heads keep the previous beta."""
    rng = np.random.default_rng(3)
    pair = Pair(k_i=3, k_beta=1, interval=2)
    for _ in range(4):
        props, gts, labels = batch(rng)
        props = [torch.cat([g, p]) for g, p in zip(gts, props)]  # ground truths among the proposals
        obs = pair.step(props, gts, labels)
        assert obs["mm_beta"] == 0.0 and obs["our_beta"] == 0.0
        assert obs["mm_positives"] == obs["our_positives"]
    assert len(pair.mm_updates) == 2
    assert pair.betas() == (1.0, 1.0)
    assert close(pair.thresholds()[0], pair.thresholds()[1])
