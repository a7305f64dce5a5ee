"""RoIAlign with a fast CPU backward: torchvision's forward, its gradient as one sparse product.

torchvision's CPU ``roi_align`` backward walks every RoI, channel, bin and sampling point in
one thread and adds four bilinear weights at a time into the input's gradient; on the
miniature benchmark it was 38 % of a training step (``benchmarks/step.py``). The gradient is
linear in the output's gradient: ``grad_input = S^T grad_output``, where row ``(r, bin)`` of the
sparse matrix ``S`` holds, for each sampling point of the bin and each of its four neighbouring
pixels, the bilinear weight divided by the number of sampling points. This module builds
``S`` with vectorised tensor ops (the same sampling points, clamps and empty-sample rule as
torchvision's ``roi_align_kernel.cpp``: a point beyond ``[-1, H] x [-1, W]`` contributes
nothing, coordinates below 0 clamp to 0, a low index at the last row/column clamps both
neighbours to it) and multiplies once with ``torch.sparse.mm``.

The forward is torchvision's op itself, so outputs are bit-identical; gradients agree with
torchvision's to float rounding (the summation order differs), are closer to a float64
reference on random boxes, and are deterministic (``tests/test_roi_align.py`` checks random
and edge-case boxes, fixed and adaptive sampling, aligned and not). By default (``auto``) CUDA
keeps torchvision's backward; so do inputs without grad and adaptive sampling whose padded grid
would exceed :data:`MAX_SAMPLES`.
"""

from __future__ import annotations

import torch
from torchvision.ops import roi_align as tv_roi_align

from dynrcnn.config import ROI_ALIGN_BACKWARDS

# the most (RoI x bin x sampling point) entries one sparse backward builds; beyond it (huge RoIs
# on a fine level with adaptive sampling) torchvision's own backward runs
MAX_SAMPLES = 1 << 22


def _axis(v: torch.Tensor, size: int):
    """torchvision's bilinear rule along one axis: (valid, low, high, weight of low, weight of high)."""
    valid = (v >= -1.0) & (v <= size)
    v = v.clamp(min=0)
    low = v.floor().long()
    top = low >= size - 1
    low = torch.where(top, torch.full_like(low, size - 1), low)
    high = torch.where(top, low, low + 1)
    v = torch.where(top, low.to(v.dtype), v)
    frac = v - low.to(v.dtype)
    return valid, low, high, 1.0 - frac, frac


def sampling_matrix(rois: torch.Tensor, height: int, width: int, spatial_scale: float,
                    output_size: tuple[int, int], sampling_ratio: int, aligned: bool):
    """(pixel index, weight) of shape ``(R * ph * pw, K)``: the ``K`` (sampling point x corner)
    entries of each output row of ``S``; the pixel index counts over ``(batch, y, x)`` of the
    input. Returns None when the padded adaptive grid would exceed :data:`MAX_SAMPLES`."""
    ph, pw = output_size
    r = rois.shape[0]
    rois, dev = rois.float(), rois.device
    offset = 0.5 if aligned else 0.0
    x1, y1 = rois[:, 1] * spatial_scale - offset, rois[:, 2] * spatial_scale - offset
    roi_w, roi_h = rois[:, 3] * spatial_scale - offset - x1, rois[:, 4] * spatial_scale - offset - y1
    if not aligned:  # torchvision forces malformed RoIs to 1x1
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    bin_h, bin_w = roi_h / ph, roi_w / pw
    if sampling_ratio > 0:
        grid_h = grid_w = torch.full((r,), sampling_ratio, dtype=torch.long, device=dev)
    else:
        grid_h, grid_w = torch.ceil(roi_h / ph).long(), torch.ceil(roi_w / pw).long()
    gh, gw = (max(int(grid_h.max()), 1), max(int(grid_w.max()), 1)) if r else (1, 1)
    if r * ph * pw * gh * gw > MAX_SAMPLES:
        return None
    count = (grid_h * grid_w).clamp(min=1).float()
    sy = torch.arange(gh, dtype=torch.float32, device=dev)
    sx = torch.arange(gw, dtype=torch.float32, device=dev)
    # (R, ph, gh) and (R, pw, gw): torchvision's y = start + p * bin + (i + .5) * bin / grid
    y = (y1[:, None, None] + torch.arange(ph, dtype=torch.float32, device=dev)[None, :, None] * bin_h[:, None, None]
         + (sy[None, None, :] + 0.5) * bin_h[:, None, None] / grid_h.clamp(min=1)[:, None, None].float())
    x = (x1[:, None, None] + torch.arange(pw, dtype=torch.float32, device=dev)[None, :, None] * bin_w[:, None, None]
         + (sx[None, None, :] + 0.5) * bin_w[:, None, None] / grid_w.clamp(min=1)[:, None, None].float())
    vy, ylo, yhi, wylo, wyhi = _axis(y, height)
    vx, xlo, xhi, wxlo, wxhi = _axis(x, width)
    vy = vy & (sy[None, None, :] < grid_h[:, None, None])  # padding of the adaptive grid
    vx = vx & (sx[None, None, :] < grid_w[:, None, None])
    # corners in torchvision's order: (ylo, xlo), (ylo, xhi), (yhi, xlo), (yhi, xhi)
    yi = torch.stack([ylo, ylo, yhi, yhi], -1)[:, :, :, None, None, :]
    xi = torch.stack([xlo, xhi, xlo, xhi], -1)[:, None, None, :, :, :]
    wy = torch.stack([wylo, wylo, wyhi, wyhi], -1) * vy[..., None]
    wx = torch.stack([wxlo, wxhi, wxlo, wxhi], -1) * vx[..., None]
    weight = wy[:, :, :, None, None, :] * wx[:, None, None, :, :, :] / count[:, None, None, None, None, None]
    batch = rois[:, 0].long()[:, None, None, None, None, None]
    index = (batch * height + yi) * width + xi
    # (R, ph, gh, pw, gw, 4) -> rows (R, ph, pw), entries (gh, gw, 4)
    shape = (r, ph, gh, pw, gw, 4)
    weight = weight.expand(shape).permute(0, 1, 3, 2, 4, 5).reshape(r * ph * pw, gh * gw * 4)
    index = index.expand(shape).permute(0, 1, 3, 2, 4, 5).reshape(r * ph * pw, gh * gw * 4)
    return index, weight


def roi_align_backward(grad: torch.Tensor, rois: torch.Tensor, input_shape, spatial_scale: float,
                       output_size: tuple[int, int], sampling_ratio: int, aligned: bool) -> torch.Tensor:
    """The gradient of ``roi_align``'s input, ``S^T grad`` (float32, on ``grad``'s device)."""
    n, c, h, w = input_shape
    ph, pw = output_size
    built = sampling_matrix(rois, h, w, spatial_scale, output_size, sampling_ratio, aligned)
    if built is None:
        return torch.ops.torchvision._roi_align_backward(
            grad.float(), rois.float(), spatial_scale, ph, pw, n, c, h, w, sampling_ratio, aligned)
    index, weight = built
    rows = torch.arange(index.shape[0], device=index.device).repeat_interleave(index.shape[1])
    s_t = torch.sparse_coo_tensor(torch.stack([index.reshape(-1), rows]), weight.reshape(-1),
                                  (n * h * w, index.shape[0]), check_invariants=False)
    g = grad.float().permute(0, 2, 3, 1).reshape(-1, c)  # (R * ph * pw, C)
    return torch.sparse.mm(s_t, g).view(n, h, w, c).permute(0, 3, 1, 2)


class _RoIAlignSparseBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, rois, spatial_scale, output_size, sampling_ratio, aligned):
        ctx.save_for_backward(rois)
        ctx.args = (tuple(input.shape), input.dtype, spatial_scale, output_size, sampling_ratio, aligned)
        return tv_roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (rois,) = ctx.saved_tensors
        shape, dtype, spatial_scale, output_size, sampling_ratio, aligned = ctx.args
        g = roi_align_backward(grad, rois, shape, spatial_scale, output_size, sampling_ratio, aligned)
        return g.to(dtype), None, None, None, None, None


def roi_align(input: torch.Tensor, rois: torch.Tensor, output_size: tuple[int, int], spatial_scale: float = 1.0,
              sampling_ratio: int = -1, aligned: bool = False, backward: str = "auto") -> torch.Tensor:
    """``torchvision.ops.roi_align`` (``rois`` as a ``(K, 5)`` tensor of batch index and box),
    whose input gradient is computed by :func:`roi_align_backward` when ``backward`` is
    ``sparse``, or ``auto`` on a CPU input (on CUDA ``auto`` keeps torchvision's atomic-add
    backward, which is fast there); ``torchvision`` keeps torchvision's backward everywhere."""
    if backward not in ROI_ALIGN_BACKWARDS:
        raise ValueError(f"backward must be one of {', '.join(ROI_ALIGN_BACKWARDS)}, got {backward!r}")
    sparse = backward == "sparse" or (backward == "auto" and input.device.type == "cpu")
    if not (sparse and input.requires_grad and torch.is_grad_enabled()):
        return tv_roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned)
    return _RoIAlignSparseBackward.apply(input, rois, spatial_scale, tuple(output_size), sampling_ratio, aligned)


__all__ = ["roi_align", "roi_align_backward", "sampling_matrix"]
