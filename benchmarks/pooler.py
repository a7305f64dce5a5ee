"""The multi-level RoIAlign's output without a zero fill: before and after, side by side.

torchvision's ``MultiScaleRoIAlign`` allocates its ``[R, C, 7, 7]`` output with ``torch.zeros`` and
writes each level's RoIs into it; every row is written by exactly one level, so
:class:`dynrcnn.modeling.model.RoIAlignPooler` allocates it empty (bit-identical outputs and
gradients, ``tests/test_roi_align.py``). This times the pooler both ways, interleaved in one
process on one thread, at the report preset's shapes: an evaluation batch (``eval_batch_size``
images x ``rpn_post_nms_top_n_test`` proposals, forward, float32) and a training step's RoIs
(``ims_per_batch`` x ``box_batch_size_per_image``, forward and backward, in the preset's autocast
dtype when the CPU has bf16). Prints min / median / max seconds and the ratio of medians and of
minima (after / before)::

    python benchmarks/pooler.py --reps 30
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--preset", default="mini_long", help="the preset whose shapes are timed (default mini_long)")
    p.add_argument("--reps", type=int, default=30, help="timed calls per variant and case (default 30)")
    return p.parse_args(argv)


def zero_filled(pooler_cls):
    """The pooler as torchvision allocates its output (``torch.zeros``): the *before*."""

    class ZeroFilled(pooler_cls):
        def forward(self, x, boxes, image_shapes):
            orig = torch.Tensor.new_empty
            try:
                torch.Tensor.new_empty = torch.Tensor.new_zeros  # the one allocation the pooler makes
                return super().forward(x, boxes, image_shapes)
            finally:
                torch.Tensor.new_empty = orig

    return ZeroFilled


def cases(cfg, channels: int, seed: int = 0):
    """(name, features, boxes, image shapes, train?) at the preset's image size."""
    g = torch.Generator().manual_seed(seed)
    size = cfg.model.min_size

    def batch(images: int, rois: int):
        feats = {str(k): torch.randn(images, channels, size >> (k + 2), size >> (k + 2), generator=g)
                 for k in range(4)}
        boxes = []
        for _ in range(images):
            xy = torch.rand(rois, 2, generator=g) * size * 0.8
            wh = torch.rand(rois, 2, generator=g) * size * 0.5 + 4
            boxes.append(torch.cat([xy, (xy + wh).clamp(max=size)], 1))
        return feats, boxes, [(size, size)] * images

    return [("evaluation forward", *batch(cfg.eval_batch_size, cfg.model.rpn_post_nms_top_n_test), False),
            ("training forward + backward", *batch(cfg.ims_per_batch, cfg.model.box_batch_size_per_image), True)]


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    from dynrcnn.modeling.model import RoIAlignPooler, build_model, cpu_has_bf16
    from dynrcnn.presets import get_preset
    from dynrcnn.rundir.environment import machine_line

    cfg = get_preset(args.preset)
    channels = build_model(cfg, 7).backbone.out_channels
    variants = {"before (zero-filled)": zero_filled(RoIAlignPooler), "after (empty)": RoIAlignPooler}
    amp = cpu_has_bf16()
    print(f"machine: {machine_line(os.getloadavg()[0])}, "
          f"{platform.platform()}; 1 thread, torch {torch.__version__}; preset {args.preset}, {channels} channels")
    for name, feats, boxes, shapes, train in cases(cfg, channels):
        pools = {v: cls(["0", "1", "2", "3"], 7, cfg.model.roi_sampling_ratio) for v, cls in variants.items()}
        times = {v: [] for v in pools}
        for i in range(args.reps + 2):
            for v in (list(pools) if i % 2 == 0 else list(pools)[::-1]):
                x = {k: t.clone().requires_grad_(train) for k, t in feats.items()}
                t0 = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=train and amp):
                    out = pools[v](x, boxes, shapes)
                if train:
                    out.float().sum().backward()
                if i >= 2:  # two warm-up rounds
                    times[v].append(time.perf_counter() - t0)
        rois = sum(len(b) for b in boxes)
        print(f"\n{name}: {rois} RoIs, output {tuple(out.shape)} {out.dtype}")
        med = {v: statistics.median(t) for v, t in times.items()}
        for v, t in times.items():
            print(f"  {v}: {min(t):.4f} / {med[v]:.4f} / {max(t):.4f} s (min / median / max)")
        before, after = list(times)
        print(f"  after / before: medians {med[after] / med[before]:.3f}, minima "
              f"{min(times[after]) / min(times[before]):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
