"""RoIAlign's forward as a sparse product: the lever named after the sparse backward, measured.

``dynrcnn/modeling/roi_align.py`` computes RoIAlign's input gradient as ``S^T grad`` with the
sparse sampling matrix ``S`` (:func:`~dynrcnn.modeling.roi_align.sampling_matrix`) and keeps
torchvision's forward. The forward is ``S x`` with the same matrix, so it could be one CSR
product, and the backward could reuse the forward's ``S`` instead of building it again. This
times, interleaved in one process on one thread, at a training step's shapes of the report
preset (``ims_per_batch`` images x ``box_batch_size_per_image`` RoIs, ``fpn_channels``, the
stride-4 level, float32 as torchvision's op computes under autocast):

* ``torchvision``: ``torchvision.ops.roi_align``'s forward (what the model runs);
* ``build S``: :func:`sampling_matrix` alone (what reusing it in the backward would save);
* ``sparse``: building ``S`` and the CSR product, i.e. the forward the lever would run;
* ``product``: the CSR product alone, ``S`` built beforehand.

It checks that the sparse forward equals torchvision's to float rounding, then prints min /
median / max milliseconds and each variant's ratio of medians to torchvision's::

    python benchmarks/roi_align_forward.py --reps 40
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import torch
from torchvision.ops import roi_align as tv_roi_align

BLOCK = "ROI-ALIGN-FORWARD"  # the block of the page --page writes


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--preset", default="mini_long", help="the preset whose shapes are timed (default mini_long)")
    p.add_argument("--reps", type=int, default=40, help="timed calls per variant (default 40)")
    p.add_argument("--page", default=None, help=f"also write the lines into this page's {BLOCK} block")
    return p.parse_args(argv)


def sparse_matrix(rois: torch.Tensor, shape, scale: float, size, sampling: int) -> torch.Tensor:
    """``S`` as a CSR matrix of shape ``(R * ph * pw, N * H * W)`` (rows: output bins)."""
    from dynrcnn.modeling.roi_align import sampling_matrix

    n, _, h, w = shape
    index, weight = sampling_matrix(rois, h, w, scale, size, sampling, False)
    rows, k = index.shape
    return torch.sparse_csr_tensor(torch.arange(0, rows * k + 1, k), index.reshape(-1), weight.reshape(-1),
                                   (rows, n * h * w), check_invariants=False)


def sparse_forward(x: torch.Tensor, s: torch.Tensor, r: int, size) -> torch.Tensor:
    """``S x`` reshaped to RoIAlign's ``(R, C, ph, pw)``."""
    c = x.shape[1]
    return (s @ x.permute(0, 2, 3, 1).reshape(-1, c)).view(r, *size, c).permute(0, 3, 1, 2)


def main(argv=None) -> int:
    args = parse_args(argv)
    from dynrcnn.presets import get_preset
    from dynrcnn.rundir.environment import machine_line

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    cfg = get_preset(args.preset)
    n, c, side = cfg.ims_per_batch, cfg.model.fpn_channels, cfg.model.min_size // 4
    r, size, scale, sampling = n * cfg.model.box_batch_size_per_image, (7, 7), 0.25, 2
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, side, side, generator=g)
    xy = torch.rand(r, 2, generator=g) * cfg.model.min_size * 0.8
    wh = torch.rand(r, 2, generator=g) * cfg.model.min_size * 0.5 + 4
    rois = torch.cat([torch.randint(0, n, (r, 1), generator=g).float(), xy, xy + wh], 1)
    built = sparse_matrix(rois, x.shape, scale, size, sampling)
    variants = {
        "torchvision": lambda: tv_roi_align(x, rois, size, scale, sampling, False),
        "build S": lambda: sparse_matrix(rois, x.shape, scale, size, sampling),
        "sparse": lambda: sparse_forward(x, sparse_matrix(rois, x.shape, scale, size, sampling), r, size),
        "product": lambda: sparse_forward(x, built, r, size),
    }
    diff = float((variants["sparse"]() - variants["torchvision"]()).abs().max())
    load = os.getloadavg()[0]
    times = {k: [] for k in variants}
    for i in range(args.reps + 5):
        for name in list(variants)[i % len(variants):] + list(variants)[: i % len(variants)]:
            t0 = time.perf_counter()
            variants[name]()
            if i >= 5:
                times[name].append(1000 * (time.perf_counter() - t0))
    ref = statistics.median(times["torchvision"])
    lines = [f"Machine: {machine_line(load)}, 1 thread, "
             f"torch {torch.__version__}. Preset `{args.preset}`: {r} RoIs on {n} x {c} x {side} x {side} features, "
             f"{args.reps} calls per variant, interleaved. The sparse forward's largest difference from "
             f"torchvision's: {diff:.1e}.", "", "| variant | min ms | median ms | max ms | ratio to torchvision |",
             "|---|---|---|---|---|"]
    lines += [f"| {name} | {min(ts):.2f} | {statistics.median(ts):.2f} | {max(ts):.2f} | "
              f"{statistics.median(ts) / ref:.2f} |" for name, ts in times.items()]
    text = "\n".join(lines)
    print(text)
    if args.page:
        from dynrcnn.report.text import write_page_block

        return write_page_block(args.page, BLOCK, text + f"\n\nRe-measure: `python benchmarks/roi_align_forward.py "
                                                         f"--page {args.page}`.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
