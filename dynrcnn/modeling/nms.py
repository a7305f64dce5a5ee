"""Exact NMS for the RPN's large FPN levels on CPU: torchvision's indices without its scalar loop.

torchvision's CPU ``nms`` walks the boxes in score order and compares each kept box with every
later unsuppressed one, a scalar loop; the RPN of the ``mini`` presets runs it per image on each
FPN level's pre-NMS top-k (1000 + 768 + 192 + 48 + 12 boxes at training), 18 % of a training step
(``benchmarks/step.py``'s profile). :func:`batched_nms` returns the same indices in the same
order, computing the large groups (:data:`MIN_BOXES` boxes or more; below it torchvision's kernel
is faster, ``benchmarks/nms.py``) as follows:

1. Tiles. A group's boxes are ordered along strips (x1 strips, y1 within them, a snake) and cut
   into tiles of :data:`TILE` boxes. A box suppresses another only when ``IoU > t >= 0``, which
   needs both boxes' width and height positive and bounds every corner difference below
   ``(1 - t) * max(side)`` (``IoU <= w_inter / max(w_a, w_b)``, likewise in y); two tiles whose
   corner ranges are farther apart than that, widened by :data:`MARGIN` (far above float
   rounding), hold no suppressing pair and are skipped.
2. The IoU of every pair of two near tiles, dense, with the operations of torchvision's kernel in
   its order (``inter / (area_a + area_b - inter)``, areas ``(x2 - x1) * (y2 - y1)``) in the
   input's dtype, and ``> t`` decided as the kernel compares a float with a double.
3. The greedy pass: a box is kept when no kept box earlier in the kernel's order (scores
   descending, ties by index: its stable sort) suppresses it. A vectorised Jacobi iteration over
   the suppressing pairs reaches that unique fixed point (a round that changes nothing has found
   it); past :data:`ROUNDS` rounds a sequential pass over the suppressing boxes finishes.

The dispatch is torchvision's ``batched_nms``'s: above 4000 coordinates its per-group loop and its
sort of the kept indices (``scores.sort(descending=True)``, the same call, so ties come out
alike), at or below it the coordinate trick (one NMS on boxes shifted by ``group * (max + 1)``,
whose rounding is part of the result). Inputs this module does not handle go to torchvision:
other devices, dtypes other than float32/float64 (torchvision's CPU kernel has none; under
autocast its wrapper casts to float32, and the RPN's boxes are float32), non-finite coordinates
and negative thresholds. ``tests/test_nms.py`` compares the indices with torchvision's on random,
tied-score, degenerate and empty inputs and the losses of a model trained with each.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import boxes as box_ops

#: groups of fewer boxes go to torchvision's kernel (cheaper there: ``benchmarks/nms.py``)
MIN_BOXES = 600
TILE = 16  # boxes per tile
CHUNK = 64  # tile pairs per dense block (keeps the block in cache)
ROUNDS = 64  # Jacobi rounds of the greedy pass before the sequential pass
MARGIN = 1e-3  # relative widening of the candidate bound; an IoU's float rounding is below 1e-6
VANILLA_ABOVE = 4000  # torchvision's batched_nms: its per-group loop above this many coordinates on CPU


def _below(threshold: float, dtype) -> float:
    """The threshold to compare ``dtype`` values with so that ``v > it`` iff ``double(v) > threshold``."""
    if dtype != np.float32:
        return threshold
    t = np.float32(threshold)
    return float(np.nextafter(t, np.float32(-np.inf)) if float(t) > threshold else t)


def _tiles(c: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each group's boxes as tiles of TILE indices along a snake of strips (padded with ``len(c)``,
    a dummy box), and each tile's group."""
    n = len(c)
    ng = int(groups.max()) + 1
    count = np.bincount(groups, minlength=ng)
    x1, y1 = c[:, 0].astype(np.float64), c[:, 1].astype(np.float64)
    lo_x, hi_x, lo_y, hi_y = np.full(ng, np.inf), np.full(ng, -np.inf), np.full(ng, np.inf), np.full(ng, -np.inf)
    np.minimum.at(lo_x, groups, x1)
    np.maximum.at(hi_x, groups, x1)
    np.minimum.at(lo_y, groups, y1)
    np.maximum.at(hi_y, groups, y1)
    width = np.sqrt(TILE * (hi_x - lo_x + 1) * (hi_y - lo_y + 1) / np.maximum(count, 1))  # square-ish tiles
    strip = np.floor((x1 - lo_x[groups]) / width[groups])
    along = np.where(strip % 2 == 0, y1 - lo_y[groups], hi_y[groups] - y1)
    key = (groups * (strip.max() + 2) + strip) * (float((hi_y - lo_y).max()) + 1) + along
    order = np.argsort(key, kind="stable")
    tiles = (count + TILE - 1) // TILE
    first_slot, first_box = (np.cumsum(tiles) - tiles) * TILE, np.cumsum(count) - count
    g = groups[order]
    members = np.full(int(tiles.sum()) * TILE, n, dtype=np.int64)
    members[first_slot[g] + np.arange(n) - first_box[g]] = order
    return members.reshape(-1, TILE), np.repeat(np.arange(ng), tiles)


def suppressing_pairs(c: np.ndarray, groups: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Every pair (a, b), a != b, of one group whose IoU exceeds ``threshold`` as torchvision's CPU
    kernel computes it (a pair may come twice)."""
    side = np.maximum(np.maximum(c[:, 2] - c[:, 0], c[:, 3] - c[:, 1]), 0).astype(np.float64)
    reach = (1 - threshold + MARGIN) * (1 + MARGIN) * side
    members, tile_group = _tiles(c, groups)
    padded = np.concatenate([c, np.array([[0, 0, -1, -1]], dtype=c.dtype)])  # the dummy meets no box
    real = (members < len(c))[..., None]
    corners = padded[members].astype(np.float64)
    lo, hi = np.where(real, corners, np.inf).min(1), np.where(real, corners, -np.inf).max(1)
    tile_reach = np.concatenate([reach, [0.0]])[members].max(1)
    first, second = [], []
    bounds = np.searchsorted(tile_group, np.arange(tile_group[-1] + 2))
    for start, end in zip(bounds[:-1].tolist(), bounds[1:].tolist()):  # a group's tiles against each other
        lo_g, hi_g, reach_g = lo[start:end], hi[start:end], tile_reach[start:end]
        gap = np.maximum(lo_g[None] - hi_g[:, None], lo_g[:, None] - hi_g[None]).max(2)
        f, s = np.nonzero(np.triu(gap < np.maximum(reach_g[:, None], reach_g[None])))
        first.append(f + start)
        second.append(s + start)
    first, second = np.concatenate(first), np.concatenate(second)
    ta, tb = members[first], members[second]
    ca, cb = padded[ta], padded[tb]
    area = (padded[:, 2] - padded[:, 0]) * (padded[:, 3] - padded[:, 1])
    aa, ab = area[ta], area[tb]
    limit = _below(threshold, c.dtype)
    found_a, found_b = [], []
    with np.errstate(invalid="ignore", divide="ignore"):  # 0 / 0 of empty boxes: NaN, never above
        for k in range(0, len(ta), CHUNK):
            a, b = ca[k:k + CHUNK, :, None], cb[k:k + CHUNK, None]
            inter = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
            np.maximum(inter, 0, out=inter)
            h = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
            np.maximum(h, 0, out=h)
            inter *= h
            union = aa[k:k + CHUNK, :, None] + ab[k:k + CHUNK, None]
            union -= inter
            inter /= union
            p, i, j = np.nonzero(inter > limit)
            found_a.append(ta[k + p, i])
            found_b.append(tb[k + p, j])
    a, b = np.concatenate(found_a), np.concatenate(found_b)
    return a[a != b], b[a != b]


def greedy_keep(rank: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Greedy NMS's survivors, given each box's place in the order and the suppressing pairs."""
    n = len(rank)
    first = rank[a] < rank[b]
    src, dst = np.where(first, a, b), np.where(first, b, a)
    keep = np.ones(n, dtype=bool)
    for _ in range(ROUNDS):
        new = np.ones(n, dtype=bool)
        new[dst[keep[src]]] = False
        if np.array_equal(new, keep):
            return keep
        keep = new
    keep = np.ones(n, dtype=bool)  # a long chain of suppressions: in order of the suppressing box
    by_src = np.argsort(rank[src], kind="stable")
    for s, d in zip(src[by_src].tolist(), dst[by_src].tolist()):
        if keep[s]:
            keep[d] = False
    return keep


def handled(boxes: Tensor, threshold: float) -> bool:
    """Whether the tiled NMS reproduces torchvision's on these inputs (else torchvision runs)."""
    return (boxes.device.type == "cpu" and boxes.dtype in (torch.float32, torch.float64) and threshold >= 0
            and len(boxes) > 0 and bool(torch.isfinite(boxes).all()))


def keep_mask(boxes: Tensor, scores: Tensor, groups: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy NMS within each group (``groups``: 0..G-1), as a mask over the boxes."""
    order = scores.sort(stable=True, dim=0, descending=True)[1].numpy()  # the kernel's order
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return greedy_keep(rank, *suppressing_pairs(boxes.detach().numpy(), groups, threshold))


def tiled_nms(boxes: Tensor, scores: Tensor, threshold: float) -> Tensor:
    """``torchvision.ops.nms`` by the tiled method at any size (inputs it does not handle: torchvision's)."""
    if not handled(boxes, threshold):
        return box_ops.nms(boxes, scores, threshold)
    keep = torch.from_numpy(keep_mask(boxes, scores, np.zeros(len(boxes), dtype=np.int64), threshold))
    order = scores.sort(stable=True, dim=0, descending=True)[1]
    return order[keep[order]]


def nms(boxes: Tensor, scores: Tensor, threshold: float) -> Tensor:
    """``torchvision.ops.nms``: the tiled method from :data:`MIN_BOXES` boxes, torchvision's below."""
    if len(boxes) < MIN_BOXES:
        return box_ops.nms(boxes, scores, threshold)
    return tiled_nms(boxes, scores, threshold)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, threshold: float) -> Tensor:
    """``torchvision.ops.batched_nms``: the same indices in the same order (kept indices by
    decreasing score); groups of :data:`MIN_BOXES` boxes or more by the tiled method."""
    if not handled(boxes, threshold):
        return box_ops.batched_nms(boxes, scores, idxs, threshold)
    if boxes.numel() <= VANILLA_ABOVE:  # torchvision's coordinate trick, with the shifted boxes' rounding
        shift = idxs.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes))
        return nms(boxes + shift[:, None], scores, threshold)
    _, groups, counts = torch.unique(idxs, return_inverse=True, return_counts=True)
    large = counts >= MIN_BOXES
    keep = torch.zeros(len(boxes), dtype=torch.bool)
    for g in torch.nonzero(~large).flatten().tolist():  # torchvision's per-group loop for the small groups
        members = torch.where(groups == g)[0]
        keep[members[box_ops.nms(boxes[members], scores[members], threshold)]] = True
    if bool(large.any()):
        members = torch.where(large[groups])[0]
        renumber = torch.cumsum(large.long(), 0) - 1
        mask = keep_mask(boxes[members], scores[members], renumber[groups[members]].numpy(), threshold)
        keep[members[torch.from_numpy(mask)]] = True
    kept = torch.where(keep)[0]
    return kept[scores[kept].sort(descending=True)[1]]


class ExactNMSRPN(RegionProposalNetwork):
    """torchvision's RPN whose proposal filtering calls :func:`batched_nms` on CPU (the same
    proposals in the same order); ``exact_nms = False`` restores torchvision's NMS call."""

    exact_nms = True

    @classmethod
    def from_rpn(cls, rpn: RegionProposalNetwork) -> "ExactNMSRPN":
        rpn.__class__ = cls  # the same module, parameters and state dict keys
        return rpn

    def filter_proposals(self, proposals, objectness, image_shapes, num_anchors_per_level):
        """torchvision's ``RegionProposalNetwork.filter_proposals``, its NMS call aside."""
        if not self.exact_nms or proposals.device.type != "cpu":
            return super().filter_proposals(proposals, objectness, image_shapes, num_anchors_per_level)
        num_images = proposals.shape[0]
        objectness = objectness.detach().reshape(num_images, -1)
        levels = torch.cat([torch.full((n,), idx, dtype=torch.int64) for idx, n in enumerate(num_anchors_per_level)])
        levels = levels.reshape(1, -1).expand_as(objectness)
        top_n_idx = self._get_top_n_idx(objectness, num_anchors_per_level)
        batch_idx = torch.arange(num_images)[:, None]
        objectness, levels = objectness[batch_idx, top_n_idx], levels[batch_idx, top_n_idx]
        proposals = proposals[batch_idx, top_n_idx]
        final_boxes, final_scores = [], []
        for boxes, scores, lvl, img_shape in zip(proposals, torch.sigmoid(objectness), levels, image_shapes):
            boxes = box_ops.clip_boxes_to_image(boxes, img_shape)
            keep = box_ops.remove_small_boxes(boxes, self.min_size)
            boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
            keep = torch.where(scores >= self.score_thresh)[0]
            boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
            keep = batched_nms(boxes, scores, lvl, self.nms_thresh)[: self.post_nms_top_n()]
            final_boxes.append(boxes[keep])
            final_scores.append(scores[keep])
        return final_boxes, final_scores


__all__ = ["ExactNMSRPN", "MIN_BOXES", "batched_nms", "greedy_keep", "handled", "keep_mask", "nms",
           "suppressing_pairs", "tiled_nms"]
