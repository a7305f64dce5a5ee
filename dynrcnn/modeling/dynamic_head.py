"""Dynamic R-CNN's second stage: Dynamic Label Assignment and Dynamic SmoothL1 on torchvision.

:class:`DynamicRoIHeads` subclasses torchvision's ``RoIHeads`` and changes only training:

* **DLA**: a proposal is foreground iff its best IoU with a ground-truth box is ``>= T_now``
  (one threshold, no ignore band, no low-quality matches). Every iteration one IoU
  statistic is recorded; every ``C`` iterations ``T_now = max(T_init, mean(record))``.
  Before the first update the conventions differ: ``mmdet`` trains at the base assigner's
  fixed threshold (``fg_iou_thresh``, 0.5: MMDetection's head writes its assigner's
  thresholds only at an update), ``official`` at ``T_init`` (the authors' WARMUP_IOU, 0.4).
* **DSL**: the box loss is SmoothL1 with ``beta_now``. Every iteration one error statistic
  (the proposals' own regression targets on the centre, ``mean(|t_x|, |t_y|)``) is
  recorded; every ``C`` iterations ``beta_now = min(beta_init, median(record))``, keeping
  the previous beta when the median is below 1e-15.

How the two statistics are computed follows one of two conventions (``docs/method.md``
gives each rule with the reference file it comes from):

``mmdet`` (MMDetection 2.x ``DynamicRoIHead``)
    Pool: per image, the RPN proposals plus the ground-truth boxes (MMDetection's sampler
    appends them as proposals, each with IoU 1.0). IoU: per image with ground truth the
    ``min(K_I, pool)``-th largest max-IoU, averaged over those images. Error: the
    ``min(K_beta x images, positives)``-th smallest error over the *sampled positives*.
    Update: ``beta = min(beta_init, numpy median)`` (mean of the two middle values for even C).
    The first C iterations train at ``fg_iou_thresh`` (the base assigner's 0.5).
``official`` (the authors' code)
    Pool: the proposals of all images of the batch, ground-truth boxes appended. A proposal
    records its IoU with its *matched* ground truth; a background proposal (max IoU below
    ``T_now``, matcher index -1) is clamped to ground truth #0 of its image and records its IoU
    with that box. IoU: the ``(K_I x n)``-th largest over the pool of the n images with ground
    truth. Error: the ``min(K_beta x n, pool)``-th smallest error over *all* proposals,
    background ones encoded toward ground truth #0. Update: ``beta = min(beta_init,
    sorted(record)[len // 2])``, the upper middle value. The first C iterations train at
    ``T_init``.

Images without ground truth contribute no statistic; a batch without sampled positives
records no error statistic; NaN/inf statistics are skipped with one warning.

State and speed. The threshold and beta are registered buffers; the per-iteration records
(fixed-size tensors of length C with validity masks), the step and the update count are
the module's *extra state*. Both travel in ``state_dict()`` and load with
``torch.load(weights_only=True)``. The records are deliberately not buffers: DDP
broadcasts buffers from rank 0 before every forward, which would overwrite each rank's own
record. Statistics stay on the device; the only host synchronisation the head adds is at
the C-iteration update, where under ``torch.distributed`` the records of all ranks are
gathered first so every rank computes the same threshold and beta.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import boxes as box_ops

from dynrcnn.config import DynamicConfig

BETA_EPS = 1e-15
RECORDS = ("iou", "beta", "fg")  # per-iteration records: IoU statistic, error statistic, fg fraction
STAT_NAMES = {"iou": "iou", "beta": "error", "fg": "fg_fraction"}  # their names in ``last_stats``


@dataclass
class DynamicUpdate:
    """One C-iteration update, as passed to ``update_callbacks``."""

    iteration: int
    iou_threshold: float
    beta: float
    num_iou_stats: int
    num_beta_stats: int
    num_nonfinite: int = 0
    fg_fraction: float = math.nan  # mean share of RPN proposals at or above the threshold used


def smooth_l1(diff: Tensor, beta: Tensor | float) -> Tensor:
    """Element-wise SmoothL1 of ``diff``: ``0.5 x^2 / beta`` if ``|x| < beta`` else ``|x| - beta/2``.

    Unlike ``F.smooth_l1_loss`` this accepts ``beta`` as a 0-d tensor, so a beta that
    lives on the device needs no host synchronisation.
    """
    n = diff.abs()
    return torch.where(n < beta, 0.5 * n * n / beta, n - 0.5 * beta)


def kth_largest(values: Tensor, k: int) -> Tensor:
    """The k-th largest entry of a 1-d tensor (``k`` capped at its length, >= 1)."""
    k = min(k, values.numel())
    return torch.topk(values, k, sorted=True).values[-1]


def kth_smallest_masked(values: Tensor, mask: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``min(k, mask.sum())``-th smallest of ``values[mask]`` without a host sync.

    Returns ``(statistic, valid)``; ``valid`` is False (a 0-d bool tensor) when the mask is
    empty.
    """
    k = min(k, values.numel())
    count = mask.sum()
    inf = torch.full_like(values, math.inf)
    smallest = torch.topk(torch.where(mask, values, inf), k, largest=False, sorted=True).values
    idx = (count.clamp(max=k) - 1).clamp(min=0)
    return smallest.gather(0, idx.reshape(1)).squeeze(0), count > 0


def centre_error(regression_targets: Tensor) -> Tensor:
    """``mean(|t_x|, |t_y|)`` of encoded regression targets ``[N, 4]``."""
    return regression_targets[:, :2].abs().mean(dim=1)


def convention_median(values, convention: str) -> float:
    """The median at the beta update: ``mmdet`` takes numpy's (the mean of the two middle
    values for an even count), ``official`` ``sorted(values)[len // 2]`` (the upper middle)."""
    ordered = sorted(float(v) for v in values)
    n = len(ordered)
    if convention == "official":
        return ordered[n // 2]
    return ordered[n // 2] if n % 2 else 0.5 * (ordered[n // 2 - 1] + ordered[n // 2])


class DynamicRoIHeads(RoIHeads):
    """torchvision ``RoIHeads`` with switchable DLA and DSL (Faster R-CNN box branch only).

    With ``use_dla=False`` the foreground threshold is fixed at ``fg_iou_thresh`` (same
    assignment as torchvision with ``fg_iou_thresh == bg_iou_thresh``); with
    ``use_dsl=False`` the SmoothL1 beta is fixed at ``box_beta``. With both off and
    ``box_beta=1/9`` the losses equal torchvision's stock ``RoIHeads``.

    Observation hooks for callers (none cost anything unless used):

    * ``update_callbacks``: callables receiving a :class:`DynamicUpdate` at each update;
    * ``record_raw_stats = True``: ``last_stats`` holds this iteration's raw statistics
      (device tensors: ``iou``, ``iou_valid``, ``error``, ``error_valid``);
    * ``record_proposal_ious = True``: ``last_proposal_ious`` holds the max IoU of every
      RPN proposal of this iteration's images with ground truth (detached).
    """

    def __init__(
        self,
        *args,
        use_dla: bool = True,
        use_dsl: bool = True,
        dynamic: DynamicConfig | None = None,
        box_beta: float = 1.0,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if self.has_mask() or self.has_keypoint():
            raise ValueError("DynamicRoIHeads supports the Faster R-CNN box branch only")
        dynamic = dynamic or DynamicConfig()
        dynamic.validate()
        self.use_dla = bool(use_dla)
        self.use_dsl = bool(use_dsl)
        self.k_i = int(dynamic.k_i)
        self.k_beta = int(dynamic.k_beta)
        self.interval = int(dynamic.interval)
        self.init_iou = float(dynamic.init_iou)
        self.init_beta = float(dynamic.init_beta)
        self.convention = dynamic.convention
        self.fixed_iou = float(self.proposal_matcher.high_threshold)
        self.fixed_beta = float(box_beta)
        if self.proposal_matcher.low_threshold != self.proposal_matcher.high_threshold:
            raise ValueError("DynamicRoIHeads uses one threshold: fg_iou_thresh must equal bg_iou_thresh")

        # the threshold before the first update (see the module docstring)
        self.warmup_iou = self.fixed_iou if self.convention == "mmdet" else self.init_iou
        start_iou = self.warmup_iou if self.use_dla else self.fixed_iou
        start_beta = self.init_beta if self.use_dsl else self.fixed_beta
        self.register_buffer("iou_threshold", torch.tensor(start_iou, dtype=torch.float32))
        self.register_buffer("beta", torch.tensor(start_beta, dtype=torch.float32))
        c = self.interval
        for name in RECORDS:
            setattr(self, f"_{name}_record", torch.zeros(c))
            setattr(self, f"_{name}_valid", torch.zeros(c, dtype=torch.bool))
        self.step = 0
        self.num_updates = 0

        self.update_callbacks: list[Callable[[DynamicUpdate], None]] = []
        self.record_raw_stats = False
        self.record_proposal_ious = False
        self.last_stats: dict[str, Tensor] | None = None
        self.last_proposal_ious: Tensor | None = None
        self.positives_per_image = self.sampled_positives_per_image = torch.zeros(())  # the last batch's
        self.rpn_positives_per_object = torch.zeros(())
        self._warned_nonfinite = False

    @classmethod
    def from_roi_heads(cls, heads: RoIHeads, *, use_dla: bool, use_dsl: bool,
                       dynamic: DynamicConfig | None = None, box_beta: float = 1.0) -> "DynamicRoIHeads":
        """Build from a stock ``RoIHeads``, sharing its RoI pooler, box head and predictor."""
        sampler = heads.fg_bg_sampler
        return cls(
            heads.box_roi_pool, heads.box_head, heads.box_predictor,
            heads.proposal_matcher.high_threshold, heads.proposal_matcher.low_threshold,
            sampler.batch_size_per_image, sampler.positive_fraction, heads.box_coder.weights,
            heads.score_thresh, heads.nms_thresh, heads.detections_per_img,
            use_dla=use_dla, use_dsl=use_dsl, dynamic=dynamic, box_beta=box_beta,
        )

    # ------------------------------------------------------------------ state

    @property
    def method(self) -> str:
        return {(False, False): "baseline", (True, False): "dla", (False, True): "dsl",
                (True, True): "dynamic"}[(self.use_dla, self.use_dsl)]

    def _apply(self, fn, *args, **kwargs):
        # keep the records (extra state, not buffers) on the module's device
        super()._apply(fn, *args, **kwargs)
        for name in RECORDS:
            record = fn(getattr(self, f"_{name}_record"))
            setattr(self, f"_{name}_record", record)
            setattr(self, f"_{name}_valid", getattr(self, f"_{name}_valid").to(record.device))
        return self

    def get_extra_state(self) -> dict:
        state = {"step": self.step, "num_updates": self.num_updates, "interval": self.interval}
        for name in RECORDS:
            state[f"{name}_record"] = getattr(self, f"_{name}_record").detach().clone()
            state[f"{name}_valid"] = getattr(self, f"_{name}_valid").clone()
        return state

    def set_extra_state(self, state: dict) -> None:
        if int(state["interval"]) != self.interval:
            raise ValueError(
                f"checkpoint was recorded with dynamic.interval={state['interval']}, "
                f"this head has {self.interval}"
            )
        self.step = int(state["step"])
        self.num_updates = int(state["num_updates"])
        for name in RECORDS:
            for part in ("record", "valid"):
                key = f"{name}_{part}"
                if key in state:  # checkpoints written before the proposal-quality record lack "fg"
                    getattr(self, f"_{key}").copy_(state[key])

    def dynamic_state(self) -> dict:
        """Current values as Python numbers (synchronises with the device: call at log time)."""
        return {
            "method": self.method,
            "convention": self.convention,
            "iteration": self.step,
            "num_updates": self.num_updates,
            "iou_threshold": float(self.iou_threshold),
            "beta": float(self.beta),
        }

    # ------------------------------------------------------------------ training

    def select_training_samples(self, proposals, targets):
        """Assign with the current threshold, sample, encode, and record the statistics."""
        self.check_targets(targets)
        dtype = proposals[0].dtype
        device = proposals[0].device
        gt_boxes = [t["boxes"].to(dtype) for t in targets]
        gt_labels = [t["labels"] for t in targets]
        num_rpn = [p.shape[0] for p in proposals]
        proposals = self.add_gt_proposals(proposals, gt_boxes)  # appended after the RPN proposals

        max_ious, matched_ious, matched_idxs, labels = [], [], [], []
        for props, gts, gt_lab in zip(proposals, gt_boxes, gt_labels):
            if gts.numel() == 0:
                n = props.shape[0]
                max_ious.append(None)
                matched_ious.append(None)
                matched_idxs.append(torch.zeros(n, dtype=torch.int64, device=device))
                labels.append(torch.zeros(n, dtype=torch.int64, device=device))
                continue
            iou = box_ops.box_iou(gts, props)
            vals, idx = iou.max(dim=0)
            # torch.where, not masked assignment: no host synchronisation on CUDA
            fg = vals >= self.iou_threshold
            lab = torch.where(fg, gt_lab[idx].to(torch.int64), 0)
            # a background proposal is matched to ground truth #0 (the official convention's
            # clamp of the matcher's -1); its regression target is never used by the loss
            idx = torch.where(fg, idx, 0)
            max_ious.append(vals)
            matched_ious.append(torch.where(fg, vals, iou[0]))
            matched_idxs.append(idx)
            labels.append(lab)

        with_gt = [i for i, v in enumerate(max_ious) if v is not None]
        if self.use_dla or self.record_proposal_ious:
            self._record_iou(max_ious, matched_ious, num_rpn, with_gt)

        sampled_inds = self.subsample(labels)
        # positives per image before and after sampling (device tensors; LogHook averages them):
        # the mechanism the paper names, fewer positives as the threshold rises
        self.positives_per_image = torch.stack([(lab > 0).sum() for lab in labels]).float().mean()
        # the same without the appended ground-truth boxes (always positive), per ground-truth object
        # of the batch: the early shortage of positives the premise is about (docs/premise.md)
        rpn_pos = torch.stack([(lab[:n] > 0).sum() for lab, n in zip(labels, num_rpn)]).sum()
        self.rpn_positives_per_object = rpn_pos.float() / max(1, sum(g.shape[0] for g in gt_boxes))
        matched_gt_boxes, sampled_props, sampled_labels, sampled_matched = [], [], [], []
        for i, inds in enumerate(sampled_inds):
            sampled_props.append(proposals[i][inds])
            sampled_labels.append(labels[i][inds])
            sampled_matched.append(matched_idxs[i][inds])
            gts = gt_boxes[i]
            if gts.numel() == 0:
                gts = torch.zeros((1, 4), dtype=dtype, device=device)
            matched_gt_boxes.append(gts[sampled_matched[i]])
        regression_targets = self.box_coder.encode(matched_gt_boxes, sampled_props)
        self.sampled_positives_per_image = torch.stack([(lab > 0).sum() for lab in sampled_labels]).float().mean()

        if self.use_dsl:
            labels_cat = torch.cat(sampled_labels)
            positives = labels_cat > 0
            if self.convention == "mmdet":
                errors = centre_error(torch.cat(regression_targets))
                stat, valid = kth_smallest_masked(errors, positives, self.k_beta * len(targets))
            else:
                stat, valid = self._official_error(proposals, matched_idxs, gt_boxes, with_gt)
                valid = valid & positives.any()
            self._store("beta", stat, valid)
        return sampled_props, sampled_matched, sampled_labels, regression_targets

    def _record_iou(self, max_ious, matched_ious, num_rpn, with_gt) -> None:
        device = self.iou_threshold.device
        if self.record_proposal_ious:
            parts = [max_ious[i][: num_rpn[i]].detach() for i in with_gt]
            self.last_proposal_ious = torch.cat(parts) if parts else torch.zeros(0, device=device)
        if not self.use_dla:
            return
        yes = torch.ones((), dtype=torch.bool, device=device)
        if with_gt:
            # proposal quality: the share of RPN proposals (ground truth not counted) that are
            # foreground at the current threshold, averaged over the images with ground truth
            rpn = [max_ious[i][: num_rpn[i]] for i in with_gt if num_rpn[i] > 0]
            if rpn:
                frac = torch.stack([(v >= self.iou_threshold).float().mean() for v in rpn]).mean()
                self._store("fg", frac, yes)
            if self.convention == "mmdet":
                # ground-truth boxes are part of each image's pool, each with IoU 1.0
                per_image = [kth_largest(max_ious[i], self.k_i) for i in with_gt]
                self._store("iou", torch.stack(per_image).mean(), yes)
            else:
                pool = torch.cat([matched_ious[i] for i in with_gt])
                self._store("iou", kth_largest(pool, self.k_i * len(with_gt)), yes)
            return
        no = torch.zeros((), dtype=torch.bool, device=device)
        self._store("iou", torch.zeros((), device=device), no)
        self._store("fg", torch.zeros((), device=device), no)

    def _official_error(self, proposals, matched_idxs, gt_boxes, with_gt):
        device = self.beta.device
        if not with_gt:
            return torch.zeros((), device=device), torch.zeros((), dtype=torch.bool, device=device)
        # every proposal (ground truth included) encoded toward its matched ground truth;
        # background proposals toward ground truth #0
        targets = self.box_coder.encode(
            [gt_boxes[i][matched_idxs[i]] for i in with_gt], [proposals[i] for i in with_gt]
        )
        errors = centre_error(torch.cat(targets))
        k = min(self.k_beta * len(with_gt), errors.numel())
        return torch.topk(errors, k, largest=False, sorted=True).values[-1], torch.ones((), dtype=torch.bool, device=device)

    def _store(self, which: str, stat: Tensor, valid: Tensor) -> None:
        slot = self.step % self.interval
        record = getattr(self, f"_{which}_record")
        record[slot] = stat.detach().to(record.dtype)
        getattr(self, f"_{which}_valid")[slot] = valid
        if self.record_raw_stats:
            if self.last_stats is None:
                self.last_stats = {}
            self.last_stats[STAT_NAMES[which]] = stat.detach()
            self.last_stats[STAT_NAMES[which] + "_valid"] = valid

    def box_loss(self, class_logits, box_regression, labels, regression_targets):
        """Cross-entropy + SmoothL1 (current beta) summed over positives / number of samples
        (float32 under autocast too: the model's predictors return float32, see
        :func:`dynrcnn.modeling.model.float32_outputs`)."""
        labels = torch.cat(labels, dim=0)
        regression_targets = torch.cat(regression_targets, dim=0)
        classification_loss = F.cross_entropy(class_logits, labels)
        pos = torch.where(labels > 0)[0]
        n = class_logits.shape[0]
        box_regression = box_regression.reshape(n, box_regression.size(-1) // 4, 4)
        pred = box_regression[pos, labels[pos]]
        if self.use_dsl:
            # a copy: the update at the end of this forward changes self.beta in place before backward
            box_loss = smooth_l1(pred - regression_targets[pos], self.beta.to(pred.dtype, copy=True)).sum()
        else:
            box_loss = F.smooth_l1_loss(pred, regression_targets[pos], beta=self.fixed_beta, reduction="sum")
        return classification_loss, box_loss / labels.numel()

    def forward(self, features, proposals, image_shapes, targets=None):
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)
        if targets is None:
            raise ValueError("targets are required in training mode")
        for t in targets:
            if not t["boxes"].is_floating_point():
                raise TypeError(f"target boxes must be of float type, got {t['boxes'].dtype}")
            if t["labels"].dtype != torch.int64:
                raise TypeError(f"target labels must be int64, got {t['labels'].dtype}")
        if self.record_raw_stats:
            self.last_stats = None
        proposals, _, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        loss_classifier, loss_box_reg = self.box_loss(class_logits, box_regression, labels, regression_targets)
        self.step += 1
        if (self.use_dla or self.use_dsl) and self.step % self.interval == 0:
            self.update()
        return [], {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}

    # ------------------------------------------------------------------ update

    def _gathered(self) -> dict[str, Tensor]:
        """The valid entries of each record, pooled over all ranks (one all_gather)."""
        first = self._iou_record
        packed = torch.stack([t for name in RECORDS for t in
                              (getattr(self, f"_{name}_record"), getattr(self, f"_{name}_valid").to(first.dtype))])
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            parts = [torch.empty_like(packed) for _ in range(dist.get_world_size())]
            dist.all_gather(parts, packed)
            packed = torch.cat(parts, dim=1)
        return {name: packed[2 * i][packed[2 * i + 1] > 0.5] for i, name in enumerate(RECORDS)}

    def median(self, values: Tensor) -> float:
        """The median of the error record as this convention's reference computes it."""
        return convention_median(values.detach().double().cpu().tolist(), self.convention)

    def update(self) -> DynamicUpdate:
        """Apply the C-iteration update from the records (all ranks) and clear them."""
        values = self._gathered()
        iou_vals, beta_vals = values["iou"], values["beta"]
        bad = int((~torch.isfinite(iou_vals)).sum()) + int((~torch.isfinite(beta_vals)).sum())
        if bad and not self._warned_nonfinite:
            warnings.warn(f"Dynamic R-CNN: skipped {bad} non-finite statistic(s) at iteration {self.step} "
                          "(warned once)", RuntimeWarning, stacklevel=2)
            self._warned_nonfinite = True
        iou_vals = iou_vals[torch.isfinite(iou_vals)]
        beta_vals = beta_vals[torch.isfinite(beta_vals)]
        if self.use_dla and iou_vals.numel():
            self.iou_threshold.fill_(max(self.init_iou, float(iou_vals.double().mean())))
        if self.use_dsl and beta_vals.numel():
            median = self.median(beta_vals)
            if median >= BETA_EPS:  # our guard against beta -> 0 (both conventions)
                self.beta.fill_(min(self.init_beta, median))
        for name in RECORDS:
            getattr(self, f"_{name}_valid").zero_()
        self.num_updates += 1
        fg = values["fg"]
        event = DynamicUpdate(self.step, float(self.iou_threshold), float(self.beta),
                              int(iou_vals.numel()), int(beta_vals.numel()), bad,
                              float(fg.double().mean()) if fg.numel() else math.nan)
        for callback in self.update_callbacks:
            callback(event)
        return event
