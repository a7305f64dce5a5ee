"""Where the time of one training step of the report of record goes, and what each speed lever buys.

1. A ``torch.profiler`` breakdown of the fp32 eager step: the top ops by self CPU time.
2. Every variant as a ratio to fp32 eager, measured side by side in one process: one model
   per variant, all built from the same seed, their steps interleaved (the order rotates
   every step) on the same batches, medians over the timed steps after a warm-up.
   The reference ``fp32`` is the float32 eager step with torchvision's RoIAlign backward and NMS; the
   levers, alone and combined: ``sparse`` (the RoIAlign backward of ``dynrcnn/modeling/roi_align.py``),
   ``bf16`` autocast (CPU: oneDNN's bf16 convolutions/matmuls; the losses, box coding and the
   dynamic statistics stay float32), ``channels_last`` for the backbone + FPN,
   ``torch.compile`` of the backbone + FPN (its compile time is the first step's, apart), and
   ``nms``, the RPN's exact tiled NMS of ``dynrcnn/modeling/nms.py`` on its large FPN levels
   (without it, torchvision's ``batched_nms``); two levers measured and not kept: ``fused``, torch's
   fused CPU SGD (one pass over the parameters instead of four; not bit-identical), and ``mm``, the
   backbone's convolutions whose output maps have at most :data:`MM_MAX_POSITIONS` positions as
   unfold + matmul (oneDNN's bf16 convolutions are slow on 4 x 4 maps). The models are untrained, whose proposals make
   torchvision's NMS loop the slowest (``benchmarks/nms.py`` also measures a trained run's).
3. Where the preset's step goes by stage (anchors, box coding, proposal filtering, target
   matching, RoI sampling and pooling: the shares that bound what caching or vectorising each
   could buy), and work that is not the step: decoding a batch from the benchmark's PNGs.
4. Thread layout: two processes x one thread vs one process x two threads (steps per second
   of the whole machine; child processes of this script).

    python benchmarks/step.py                       # report-of-record preset (mini_long), CPU
    python benchmarks/step.py --steps 20 --skip-layout --variants fp32,bf16
    python benchmarks/step.py --device cuda --arch r50_fpn --size 800 --images 2

Batches come from the miniature benchmark when ``--data-root`` holds it (as the report trains),
otherwise from random images with random boxes.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import make_batch  # noqa: E402  (the sibling benchmark's helpers)
from dynrcnn.rundir.environment import machine_line  # noqa: E402

from dynrcnn.config import ARCHS  # noqa: E402
from dynrcnn.modeling.model import autocast_dtype  # noqa: E402
from dynrcnn.modeling.model import build_model  # noqa: E402
from dynrcnn.presets import get_preset  # noqa: E402
from dynrcnn.report.profiles import get_profile  # noqa: E402

REPORT_PRESET = get_profile("mini").preset  # the report of record's training preset
DOC_PAGE = "docs/performance.md"  # the page whose PERFORMANCE block make benchmark writes

# each variant is fp32 eager with torchvision's RoIAlign backward ("fp32", the reference) plus levers
LEVERS = ("sparse", "bf16", "channels_last", "compile", "nms", "fused", "mm")
VARIANTS = ("fp32", "bf16", "channels_last", "compile", "nms", "sparse", "sparse+bf16", "sparse+channels_last",
            "sparse+bf16+channels_last", "sparse+compile", "sparse+bf16+channels_last+nms",
            "sparse+bf16+channels_last+nms+fused", "sparse+bf16+channels_last+nms+mm")
MM_MAX_POSITIONS = 64  # the ``mm`` lever: convolutions with output maps of at most 8 x 8


class ConvAsMatmul(torch.nn.Module):
    """A ``Conv2d`` computed as unfold + one matmul of its weight ((N * H' * W', C * kh * kw) x
    (C * kh * kw, O)), returned channels-last: the ``mm`` lever (same function, another summation order)."""

    def __init__(self, conv: torch.nn.Conv2d):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        c, (n, _, h, w) = self.conv, x.shape
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = c.kernel_size, c.stride, c.padding, c.dilation
        ho, wo = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        cols = torch.nn.functional.unfold(x, c.kernel_size, c.dilation, c.padding, c.stride)  # (N, C*kh*kw, L)
        out = torch.nn.functional.linear(cols.transpose(1, 2).reshape(n * ho * wo, -1),
                                         c.weight.reshape(c.weight.shape[0], -1), c.bias)
        return out.view(n, ho, wo, -1).permute(0, 3, 1, 2)


def small_convs_as_matmul(module: torch.nn.Module, size: int) -> int:
    """Replace every ``Conv2d`` of ``module`` whose output map on a ``size`` px input has at most
    :data:`MM_MAX_POSITIONS` positions by :class:`ConvAsMatmul`; returns how many."""
    outputs = {}
    hooks = [m.register_forward_hook(lambda m, i, o: outputs.__setitem__(m, o.shape[-2] * o.shape[-1]))
             for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        module(torch.zeros(1, 3, size, size))
    for h in hooks:
        h.remove()
    small = [name for name, m in module.named_modules() if m in outputs and outputs[m] <= MM_MAX_POSITIONS]
    for name in small:
        *path, last = name.split(".")
        parent = module.get_submodule(".".join(path))
        setattr(parent, last, ConvAsMatmul(getattr(parent, last)))
    return len(small)


def load_batches(root: str, n_batches: int, images: int, device: str):
    """``n_batches`` training batches of the benchmark at ``root`` (None when it is not there),
    and the median seconds to decode one batch from its PNGs."""
    from dynrcnn.data.datasets import collate, load_dataset

    try:
        ds = load_dataset(root, "train", train=True)
    except Exception:
        return None, None
    batches, decode = [], []
    for b in range(n_batches):
        t0 = time.perf_counter()
        imgs, tgts = collate([ds[(b * images + k, False)] for k in range(images)])
        decode.append(time.perf_counter() - t0)
        batches.append(([i.to(device) for i in imgs],
                        [{k: v.to(device) for k, v in t.items() if torch.is_tensor(v)} for t in tgts]))
    return batches, statistics.median(decode)


def build(variant: str, arch: str, device: str, num_classes: int):
    levers = set(variant.split("+")) - {"fp32"}
    cfg = get_preset(REPORT_PRESET)
    cfg.model.arch = arch
    cfg.method = "dynamic"
    cfg.model.pretrained_backbone = False
    cfg.model.roi_align_backward = "sparse" if "sparse" in levers else "torchvision"
    torch.manual_seed(0)
    model = build_model(cfg, num_classes).to(device).train()
    model.rpn.exact_nms = "nms" in levers
    if "channels_last" in levers:
        model.backbone.to(memory_format=torch.channels_last)
    if "mm" in levers:
        small_convs_as_matmul(model.backbone.body, cfg.model.min_size)
    if "compile" in levers:
        model.backbone = torch.compile(model.backbone, dynamic=False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4, **({"fused": True} if "fused" in levers else {}))
    return {"model": model, "opt": opt, "amp": autocast_dtype(device, "bf16") if "bf16" in levers else None}


def step(v: dict, images, targets, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    ctx = torch.autocast(device, dtype=v["amp"]) if v["amp"] is not None else nullcontext()
    with ctx:
        losses = v["model"](images, targets)
    loss = sum(losses.values())
    v["opt"].zero_grad(set_to_none=True)
    loss.backward()
    v["opt"].step()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def profile_top(v: dict, batches, device: str, steps: int, top: int) -> list[tuple[str, float, float]]:
    """(op, self CPU ms per step, share of the profiled self time) for the ``top`` ops."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(steps):
            step(v, *batches[i % len(batches)], device)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [(e.key, e.self_cpu_time_total / 1000 / steps, e.self_cpu_time_total / total) for e in events[:top]]


def timed_variants(variants, batches, device: str, arch: str, num_classes: int, steps: int, warmup: int):
    built = {name: build(name, arch, device, num_classes) for name in variants}
    times = {name: [] for name in variants}
    for name, v in built.items():  # compile happens on the first call: timed apart from the steps
        t0 = time.perf_counter()
        step(v, *batches[0], device)
        v["first_step_s"] = time.perf_counter() - t0
    for i in range(warmup + steps):
        images, targets = batches[i % len(batches)]
        order = list(variants[i % len(variants):]) + list(variants[: i % len(variants)])
        for name in order:
            torch.manual_seed(1000 + i)  # same RoI sampling randomness for every variant
            t = step(built[name], images, targets, device)
            if i >= warmup:
                times[name].append(t)
    return built, times


# the detector's stages timed apart: label -> (module path on the model, method names)
STAGES = {
    "RPN anchors": ("rpn.anchor_generator", ("forward",)),
    "RPN box coding (encode + decode)": ("rpn.box_coder", ("encode", "decode")),
    "RPN proposal filtering (top-k, clip, NMS)": ("rpn", ("filter_proposals",)),
    "RPN anchor matching": ("rpn", ("assign_targets_to_anchors",)),
    "RoI sampling and targets": ("roi_heads", ("select_training_samples",)),
    "RoI pooling forward": ("roi_heads.box_roi_pool", ("forward",)),
}


def stage_times(v: dict, batches, device: str, steps: int) -> tuple[dict[str, float], float]:
    """Seconds per step in each of :data:`STAGES` and in the whole step, means over ``steps`` steps."""
    spent = dict.fromkeys(STAGES, 0.0)
    wrapped = []
    for label, (path, methods) in STAGES.items():
        owner = v["model"]
        for part in path.split("."):
            owner = getattr(owner, part)
        for name in methods:
            def timed(*a, _f=getattr(owner, name), _label=label, **k):
                t0 = time.perf_counter()
                out = _f(*a, **k)
                spent[_label] += time.perf_counter() - t0
                return out
            object.__setattr__(owner, name, timed)  # an instance attribute, removed below
            wrapped.append((owner, name))
    try:
        times = [step(v, *batches[i % len(batches)], device) for i in range(steps)]
    finally:
        for owner, name in wrapped:
            object.__delattr__(owner, name)
    return {k: t / steps for k, t in spent.items()}, statistics.mean(times)


def preset_variant(device: str) -> str:
    """The variant the report-of-record preset trains with here (read from its config)."""
    cfg = get_preset(REPORT_PRESET)
    levers = []
    if cfg.model.roi_align_backward == "sparse" or (cfg.model.roi_align_backward == "auto" and device == "cpu"):
        levers.append("sparse")
    if autocast_dtype(device, cfg.amp) == torch.bfloat16:
        levers.append("bf16")
    if cfg.channels_last:
        levers.append("channels_last")
    if device == "cpu":  # the model's RPN always takes dynrcnn/modeling/nms.py's NMS on CPU
        levers.append("nms")
    return "+".join(levers) or "fp32"


def layout(args, variant: str) -> dict:
    """Steps per second of the machine: one process x all threads vs one process per core x 1 thread."""
    cores = os.cpu_count() or 1
    base = [sys.executable, __file__, "--json", "--variants", ",".join(dict.fromkeys(["fp32", variant])),
            "--skip-layout", "--no-profile", "--steps", str(args.steps), "--warmup", str(args.warmup),
            "--data-root", args.data_root]
    env = dict(os.environ)

    def run(n_proc: int, threads: int) -> float:
        env["OMP_NUM_THREADS"] = str(threads)
        procs = [subprocess.Popen(base + ["--threads", str(threads)], stdout=subprocess.PIPE, env=env, text=True)
                 for _ in range(n_proc)]
        medians = [json.loads(p.communicate()[0].strip().splitlines()[-1])["median_s"][variant] for p in procs]
        return sum(1 / m for m in medians)

    return {f"1 process x {cores} threads": run(1, cores), f"{cores} processes x 1 thread": run(cores, 1)}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)  # kept for the page's Re-measure line
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default=get_preset(REPORT_PRESET).model.arch, choices=list(ARCHS))
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--data-root", default="data/mini", help="benchmark to draw batches from (default data/mini)")
    p.add_argument("--images", type=int, default=None, help="images per step (default: the preset's batch)")
    p.add_argument("--size", type=int, default=None, help="random-image side when no benchmark (default: preset's)")
    p.add_argument("--steps", type=int, default=50, help="timed steps per variant (default 50)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per variant first (default 5)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--top", type=int, default=10, help="ops in the profile (default 10)")
    p.add_argument("--no-profile", action="store_true", help="skip the torch.profiler breakdown")
    p.add_argument("--skip-layout", action="store_true", help="skip the thread-layout measurement")
    p.add_argument("--json", action="store_true", help="print one JSON line only")
    p.add_argument("--page", "--readme", dest="page", default=None,
                   help=f"also write the tables into this page's PERFORMANCE block (make benchmark: {DOC_PAGE})")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted({lever for v in variants for lever in v.split("+")} - set(LEVERS) - {"fp32"})
    if unknown or not variants or variants[0] != "fp32":
        p.error(f"--variants must start with fp32 (the reference), each a '+'-joined set of {', '.join(LEVERS)}; "
                f"got {args.variants}")
    cfg = get_preset(REPORT_PRESET)
    n_img = args.images or cfg.ims_per_batch
    batches, decode_s = load_batches(args.data_root, 8, n_img, args.device)
    source = f"`{args.data_root}` (train split)"
    if batches is None:
        size = args.size or cfg.model.min_size
        batches = [make_batch(n_img, size, s, args.device) for s in range(8)]
        source = f"random {size} px images"
    num_classes = 1 + max(int(t["labels"].max()) for _, ts in batches for t in ts)
    load = os.getloadavg()[0]  # other processes share the cores when this is above 0
    built, times = timed_variants(variants, batches, args.device, args.arch, num_classes, args.steps, args.warmup)
    med = {n: statistics.median(v) for n, v in times.items()}
    if args.json:
        print(json.dumps({"median_s": med}))
        return 0
    kept = preset_variant(args.device)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else None
    out = [f"Machine: {machine_line(load, device_name)}, "
           f"{torch.get_num_threads()} threads, "
           f"torch {torch.__version__}. Preset `{REPORT_PRESET}` ({args.arch}), {n_img} images per step from "
           f"{source}; {args.steps} timed steps per variant after {args.warmup} warm-up, interleaved in one "
           f"process. The preset trains as `{kept}`.", "",
           "| variant | min s | median s | max s | ratio to fp32 | first step s |", "|---|---|---|---|---|---|"]
    for n in variants:
        v = times[n]
        name = f"**{n}** (the preset)" if n == kept else n
        out.append(f"| {name} | {min(v):.4f} | {med[n]:.4f} | {max(v):.4f} | {med[n] / med['fp32']:.3f} | "
                   f"{built[n]['first_step_s']:.2f} |")
    out += ["", "Ratio: median step time over fp32 eager's (torchvision's RoIAlign backward and NMS); below 1 is faster. "
            "The first step includes `torch.compile`'s compilation."]
    if not args.no_profile:
        steps = min(20, args.steps)
        for n in dict.fromkeys(["fp32", kept]):
            if n not in built:
                continue
            out += ["", f"Top {args.top} ops by self CPU time, `{n}` ({steps} profiled steps):", "",
                    "| op | ms per step | share |", "|---|---|---|"]
            for op, ms, share in profile_top(built[n], batches, args.device, steps, args.top):
                out.append(f"| `{op}` | {ms:.2f} | {100 * share:.1f} % |")
    if kept in built:
        steps = min(20, args.steps)
        spent, step_s = stage_times(built[kept], batches, args.device, steps)
        out += ["", f"Stages of a `{kept}` step ({steps} steps, mean {step_s:.4f} s; each stage's share of "
                "it bounds what making the stage free would save):", "",
                "| stage | ms per step | share of the step |", "|---|---|---|"]
        out += [f"| {label} | {1000 * t:.2f} | {100 * t / step_s:.1f} % |" for label, t in spent.items()]
    if decode_s is not None:
        out += ["", f"Decoding one batch of {n_img} PNGs: {decode_s * 1000:.1f} ms "
                f"({decode_s / med[kept if kept in med else 'fp32']:.3f} of a `{kept if kept in med else 'fp32'}` step)."]
    if not args.skip_layout and args.device == "cpu":
        out += ["", f"Thread layout (`{kept}`, training steps per second of the whole machine):", "",
                "| layout | steps/s |", "|---|---|"]
        out += [f"| {name} | {rate:.2f} |" for name, rate in layout(args, kept).items()]
    text = "\n".join(out)
    print(text)
    if args.page:
        from dynrcnn.report.text import write_page_block

        return write_page_block(args.page, "PERFORMANCE", text + f"\n\nRe-measure: `python benchmarks/step.py "
                                                               f"{shlex.join(argv)}`.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
