"""The RPN's NMS: torchvision's CPU kernel against ``dynrcnn/modeling/nms.py``'s tiled NMS.

torchvision's CPU ``nms`` compares each kept box with every later unsuppressed one in a scalar
loop; the RPN of the report preset runs it per image on each FPN level's pre-NMS top-k (1000 +
768 + 192 + 48 + 12 boxes at training). This script captures the inputs the preset's model hands
to ``batched_nms`` (training and evaluation forwards: the RPN's and the RoI head's), checks that
``dynrcnn.modeling.nms`` returns torchvision's indices on every one of them (each group apart
too), and times both, interleaved, per call and per FPN level: the per-level rows time the tiled
method at every size (``tiled_nms``), which is where ``MIN_BOXES`` (the size from which the model
uses it) comes from; the per-call rows time what the model calls (``batched_nms``).

How fast torchvision's loop is depends on the boxes: on an untrained RPN's proposals (near the
anchors, few suppressed) it does the most work; ``--checkpoint`` measures a trained run's.

    python benchmarks/nms.py                        # report preset, untrained model, data/mini
    python benchmarks/nms.py --checkpoint runs/mini/baseline/checkpoints/last.pth --page docs/performance.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torchvision.ops.boxes as tv_boxes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import make_batch  # noqa: E402  (the sibling benchmarks' helpers)
from dynrcnn.rundir.environment import machine_line  # noqa: E402
from step import DOC_PAGE, REPORT_PRESET, build, load_batches  # noqa: E402

from dynrcnn.modeling import nms as ours  # noqa: E402
from dynrcnn.presets import get_preset  # noqa: E402


def check(calls) -> int:
    """Assert ``dynrcnn.modeling.nms`` returns torchvision's indices on every captured call and group."""
    for kind, b, s, i, t in calls:
        assert torch.equal(ours.batched_nms(b, s, i, t), tv_boxes.batched_nms(b, s, i, t)), kind
        for level in torch.unique(i).tolist():
            bl, sl = b[i == level], s[i == level]
            assert torch.equal(ours.tiled_nms(bl, sl, t), tv_boxes.nms(bl, sl, t)), f"{kind}, group {level}"
    return len(calls)


@contextmanager
def recording(calls: list, kind: dict):
    """Record every ``batched_nms`` call the detector makes (the RPN's and the RoI head's)."""
    original = tv_boxes.batched_nms

    def record(boxes, scores, idxs, threshold):
        calls.append((kind["now"], boxes.detach().clone(), scores.detach().clone(), idxs.clone(), threshold))
        return original(boxes, scores, idxs, threshold)

    tv_boxes.batched_nms = record
    try:
        yield
    finally:
        tv_boxes.batched_nms = original


def capture(args, checkpoint: str | None) -> tuple[list, str]:
    """The preset model's NMS inputs (RPN at training, RPN and RoI head at evaluation), with
    ``checkpoint``'s weights or untrained ones."""
    cfg = get_preset(REPORT_PRESET)
    batches, _ = load_batches(args.data_root, args.batches, cfg.ims_per_batch, "cpu")
    source = f"`{args.data_root}` (train split)"
    if batches is None:
        batches = [make_batch(cfg.ims_per_batch, cfg.model.min_size, s, "cpu") for s in range(args.batches)]
        source = f"random {cfg.model.min_size} px images"
    num_classes = 1 + max(int(t["labels"].max()) for _, ts in batches for t in ts)
    v = build("sparse+bf16+channels_last", cfg.model.arch, "cpu", num_classes)  # torchvision's NMS in the RPN
    model, weights = v["model"], "untrained (the preset's initialisation)"
    if checkpoint:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        model.load_state_dict(state.get("model", state))
        weights = f"a trained run's, `{checkpoint}`"
    calls, kind = [], {}
    amp = torch.autocast("cpu", dtype=v["amp"]) if v["amp"] is not None else torch.autocast("cpu", enabled=False)
    with recording(calls, kind), amp, torch.no_grad():
        for mode in ("train", "eval"):
            model.train(mode == "train")
            for images, targets in batches:
                kind["now"] = f"RPN, {mode}"
                filter_proposals = model.rpn.filter_proposals

                def rpn_then_head(*a, _f=filter_proposals, **k):
                    out = _f(*a, **k)
                    kind["now"] = "RoI head, eval"
                    return out

                model.rpn.filter_proposals = rpn_then_head
                model(images, targets) if mode == "train" else model(images)
                del model.rpn.filter_proposals
    return calls, f"{weights}; batches from {source}"


def interleaved(f, g, reps: int) -> tuple[list[float], list[float]]:
    """Seconds of ``f()`` and ``g()``, called alternately (the first of each pair alternates)."""
    tf, tg = [], []
    f(), g()
    for r in range(reps):
        for fn, out in ((f, tf), (g, tg)) if r % 2 == 0 else ((g, tg), (f, tf)):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return tf, tg


def _ms(v: list[float]) -> str:
    return f"{1000 * min(v):.3f} / {1000 * statistics.median(v):.3f} / {1000 * max(v):.3f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default="data/mini", help="benchmark to draw batches from (default data/mini)")
    p.add_argument("--checkpoint", action="append", help="also a run's checkpoint's weights (repeatable; "
                   "untrained weights always)")
    p.add_argument("--batches", type=int, default=2, help="batches captured per mode (default 2)")
    p.add_argument("--reps", type=int, default=40, help="timed calls per input and implementation (default 40)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, as the report trains)")
    p.add_argument("--page", default=None, help=f"also write the tables into this page's NMS block ({DOC_PAGE})")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    out = [f"Machine: {machine_line(load)}, "
           f"{torch.get_num_threads()} thread(s), torch {torch.__version__}. Preset `{REPORT_PRESET}`: the "
           "inputs its model hands to `batched_nms` in training and evaluation forwards. "
           f"{args.reps} calls each, interleaved; ms as min / median / max; ratios ours / torchvision of the "
           "medians and of the minima (below 1: ours is faster; on a loaded machine a long call is preempted "
           "more often than a short one, which the minima do not see). Per level: the tiled method at every size (`tiled_nms`); "
           f"per call: what the model calls (`batched_nms`, the tiled method from {ours.MIN_BOXES} boxes per "
           "group, torchvision's below)."]
    for checkpoint in [None] + (args.checkpoint or []):
        calls, source = capture(args, checkpoint)
        n_calls = check(calls)
        out += ["", f"Weights {source}. `dynrcnn.modeling.nms` returned torchvision's indices on all "
                f"{n_calls} captured calls, each group apart too.", "",
                "| NMS input | boxes | torchvision ms | ours ms | ratio of medians | ratio of minima |",
                "|---|---|---|---|---|---|"]
        chosen = {}  # the first call of the RPN's at training and at evaluation, the RoI head's largest
        for call in calls:
            if call[0] not in chosen or (call[0].startswith("RoI") and len(call[1]) > len(chosen[call[0]][1])):
                chosen[call[0]] = call
        for kind, b, s, i, t in chosen.values():
            rows = [(f"{kind}, one image's `batched_nms`", b, s, i)]
            if kind.startswith("RPN"):
                rows += [(f"{kind}, level {k} `nms`", b[i == k], s[i == k], None) for k in torch.unique(i).tolist()]
            for name, rb, rs, ri in rows:
                if ri is None:
                    tv, mine = interleaved(lambda: tv_boxes.nms(rb, rs, t), lambda: ours.tiled_nms(rb, rs, t),
                                           args.reps)
                else:
                    tv, mine = interleaved(lambda: tv_boxes.batched_nms(rb, rs, ri, t),
                                           lambda: ours.batched_nms(rb, rs, ri, t), args.reps)
                out.append(f"| {name} | {len(rb)} | {_ms(tv)} | {_ms(mine)} | "
                           f"{statistics.median(mine) / statistics.median(tv):.2f} | {min(mine) / min(tv):.2f} |")
    text = "\n".join(out)
    print(text)
    if args.page:
        from dynrcnn.report.text import write_page_block

        again = "".join(f" --checkpoint {c}" for c in args.checkpoint or [])
        return write_page_block(args.page, "NMS", text + f"\n\nRe-measure: `python benchmarks/nms.py{again} --page "
                                f"{DOC_PAGE}` (`make benchmark`).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
