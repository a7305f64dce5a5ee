"""Training-step overhead of Dynamic R-CNN: median step time of ``dynamic`` / ``baseline``.

The paper claims "no extra overhead". Both models are built from the same seed (identical
weights), trained side by side in one process on the same inputs, with their steps
interleaved (alternating which goes first) so that drift in machine load hits both alike.
The update interval is short so that the C-iteration updates are part of what is timed.

    python benchmarks/overhead.py                   # slim model, CPU, 2 threads
    python benchmarks/overhead.py --device cuda --arch r50_fpn --images 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from dynrcnn.config import ARCHS
from dynrcnn.modeling.model import build_model
from dynrcnn.presets import get_preset
from dynrcnn.rundir.environment import cpu_model

MINI = get_preset("mini")  # the slim model and image size the miniature report trains


def make_batch(n: int, size: int, seed: int, device: str):
    """Random images with 2-6 random boxes each (sizes from 8 px to half the image)."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(n):
        images.append(torch.rand(3, size, size, generator=g).to(device))
        k = int(torch.randint(2, 7, (1,), generator=g))
        wh = torch.randint(8, size // 2, (k, 2), generator=g).float()
        xy = torch.rand(k, 2, generator=g) * (size - wh)
        boxes = torch.cat([xy, xy + wh], dim=1)
        targets.append({"boxes": boxes.to(device), "labels": torch.randint(1, 6, (k,), generator=g).to(device)})
    return images, targets


def build(method: str, arch: str, device: str, interval: int):
    cfg = get_preset("coco_r50_fpn_1x" if arch == "r50_fpn" else "mini")
    cfg.model.arch = arch
    cfg.method = method
    cfg.model.pretrained_backbone = False
    cfg.dynamic.interval = interval
    torch.manual_seed(0)
    model = build_model(cfg, 6).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4), cfg


def timed_step(model, opt, images, targets, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    loss = sum(model(images, targets).values())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default=MINI.model.arch, choices=list(ARCHS),
                   help="model: a slim CPU model (default: the mini preset's, %(default)s) or the paper's r50_fpn")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu or cuda (default: cuda when available)")
    p.add_argument("--steps", type=int, default=60, help="timed steps per method (default 60)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per method first (default 5)")
    p.add_argument("--images", type=int, default=4, help="images per step (default 4)")
    p.add_argument("--size", type=int, default=None,
                   help=f"image side in px (default: the mini preset's {MINI.model.min_size} for slim models, 800 for r50)")
    p.add_argument("--interval", type=int, default=10, help="dynamic update interval C (default 10)")
    p.add_argument("--batches", type=int, default=8, help="distinct input batches cycled through (default 8)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = args.size or (800 if args.arch == "r50_fpn" else MINI.model.min_size)
    batches = [make_batch(args.images, size, s, args.device) for s in range(args.batches)]
    models = {m: build(m, args.arch, args.device, args.interval) for m in ("baseline", "dynamic")}
    times = {m: [] for m in models}
    for i in range(args.warmup + args.steps):
        images, targets = batches[i % len(batches)]
        order = ("baseline", "dynamic") if i % 2 == 0 else ("dynamic", "baseline")
        for m in order:
            torch.manual_seed(1000 + i)  # same RoI sampling randomness for both
            t = timed_step(models[m][0], models[m][1], images, targets, args.device)
            if i >= args.warmup:
                times[m].append(t)
    med = {m: statistics.median(v) for m, v in times.items()}
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else cpu_model()
    print(f"machine: {device_name} ({os.cpu_count()} cores), {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print(f"model: {args.arch}, {args.images} images x {size} px, C={args.interval}, {args.steps} steps each")
    for m in ("baseline", "dynamic"):
        v = times[m]
        print(f"{m:9s} step time s: min {min(v):.4f}  median {med[m]:.4f}  max {max(v):.4f}")
    ratio = med["dynamic"] / med["baseline"]
    head = models["dynamic"][0].roi_heads.dynamic_state()
    print(f"dynamic head after the run: threshold {head['iou_threshold']:.3f}, beta {head['beta']:.3f}, "
          f"{head['num_updates']} updates")
    print(f"overhead ratio (median dynamic / median baseline): {ratio:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
