"""Where the time of evaluating one trained run goes, and what each evaluation lever buys.

The study runner evaluates every run on two benchmarks (``dynrcnn.evaluation.coco_eval.evaluate``:
decode the validation images, the detector's forward, COCO scoring), and the report then
recomputes each run's AP on 1000 image resamples (``dynrcnn.evaluation.stats``: one
``COCOeval.evaluate()`` for the per-image matches, then ``weighted_ap``). This script

1. times each phase once on the run (forward and decoding on ``--images`` validation images,
   scaled to the whole split; scoring and the bootstrap on the run's own ``detections.json``);
2. times each lever against what it replaces, side by side in this one process, interleaved (the
   order alternates every repetition), as min / median / max and the ratio of the medians, and
   checks that it is exact (the same detections, the same metrics to 1e-9) or says by how much it
   is not:

   * scorer: faster-coco-eval against pycocotools (``coco_metrics``);
   * bootstrap matches: ``COCOeval.evaluate()`` on the area range "all" only (what
     ``image_matches`` runs) against all four ranges;
   * forward: the run's ``eval_batch_size`` against batch size 2 and twice the run's; two threads
     against one; the backbone in channels-last; bf16 autocast (changes the numerics: reported, off).

The machine's load is printed: on a busy machine the absolute times stretch, the interleaved
ratios much less.

    python benchmarks/eval.py                                    # runs/mini/baseline on data/mini
    python benchmarks/eval.py --run RUN --data-root DIR --images 32 --reps 5 --page docs/performance.md
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dynrcnn.rundir.environment import machine_line
from step import DOC_PAGE

from dynrcnn.config import COCO_SUMMARY
from dynrcnn.evaluation import stats
from dynrcnn.evaluation.coco_eval import coco_metrics, detections_to_coco

BLOCK = "EVAL"  # the marked block of --page this script writes


def interleaved(fns: dict, reps: int) -> dict:
    """Seconds of each of ``fns`` (name -> callable), called in turn ``reps`` times; the order
    rotates every repetition. Returns name -> list of seconds."""
    names, out = list(fns), {k: [] for k in fns}
    for r in range(reps):
        for k in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            fns[k]()
            out[k].append(time.perf_counter() - t0)
    return out


def _row(name: str, t: list[float], ref: list[float], note: str) -> str:
    ms = f"{min(t):.3f} / {statistics.median(t):.3f} / {max(t):.3f}"
    return f"| {name} | {ms} | {statistics.median(t) / statistics.median(ref):.3f} | {min(t) / min(ref):.3f} | {note} |"


def matching(gt, detections, area_all_only: bool = False):
    """pycocotools' ``COCOeval.evaluate()`` (the per-image matches), optionally on the area range "all" only."""
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes([dict(d) for d in detections]), "bbox")
        if area_all_only:
            ev.params.areaRng, ev.params.areaRngLbl = ev.params.areaRng[:1], ev.params.areaRngLbl[:1]
        ev.evaluate()
    return ev


def _same_entry(a, b) -> bool:
    """Two ``COCOeval.evalImgs`` entries hold the same matches (``None``: no ground truth or detection)."""
    if a is None or b is None:
        return a is b
    return all(np.array_equal(np.asarray(a[k]), np.asarray(b[k]))
               for k in ("dtIds", "gtIds", "dtMatches", "gtMatches", "dtScores", "gtIgnore", "dtIgnore"))


def load_run(run: Path, data_root: str, n_images: int):
    """The run's model (fp32, eval mode), its config, the validation dataset, the first
    ``n_images`` decoded images (and the seconds that took) and the run's stored detections."""
    from dynrcnn.checkpoint.state import load_for_eval
    from dynrcnn.data.datasets import load_dataset
    from dynrcnn.modeling.model import build_model
    from dynrcnn.rundir import provenance, runs

    cfg = runs.read_config(run)
    tag = provenance.eval_tag(run, data_root if Path(data_root).resolve() != Path(cfg.data_root).resolve() else None)
    cfg.data_root = data_root
    ckpt = load_for_eval(runs.last_checkpoint(run), cfg)
    ds = load_dataset(data_root, cfg.val_split, train=False)
    t0 = time.perf_counter()
    items = [ds[i] for i in range(min(n_images, len(ds)))]
    decode = (time.perf_counter() - t0) / len(items)

    def model(channels_last: bool = False):
        m = build_model(cfg, ds.num_classes)
        m.load_state_dict(ckpt["model"])
        if channels_last:
            m.backbone.to(memory_format=torch.channels_last)
        return m.eval()

    stored = runs.detections_file(run, tag)
    detections = json.loads(stored.read_text()) if stored.is_file() else None
    return cfg, ds, items, decode, model, detections


def forward(model, items, batch_size: int, amp=None) -> list[dict]:
    """The detector's outputs on ``items``, ``batch_size`` images per forward (``predict``'s loop)."""
    outs = []
    with torch.no_grad(), (torch.autocast("cpu", dtype=amp) if amp else contextlib.nullcontext()):
        for b in range(0, len(items), batch_size):
            outs += model([im for im, _ in items[b:b + batch_size]])
    return outs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="runs/mini/baseline", help="a trained run (default runs/mini/baseline)")
    p.add_argument("--data-root", default=None, help="benchmark to evaluate on (default: the run's own)")
    p.add_argument("--images", type=int, default=32, help="validation images the forward is timed on (default 32)")
    p.add_argument("--reps", type=int, default=5, help="interleaved repetitions per lever (default 5)")
    p.add_argument("--boot", type=int, default=stats.DEFAULT_BOOT,
                   help=f"bootstrap resamples (default {stats.DEFAULT_BOOT}, as the report)")
    p.add_argument("--skip-forward", action="store_true", help="only scoring and the bootstrap")
    p.add_argument("--page", default=None, help=f"also write the tables into this page's {BLOCK} block ({DOC_PAGE})")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # as the report evaluates: two runs side by side, one thread each
    from dynrcnn.data.datasets import load_coco
    from dynrcnn.rundir import runs

    run = Path(args.run)
    data_root = args.data_root or runs.read_config(run).data_root
    cfg, ds, items, decode, build, detections = load_run(run, data_root, args.images)
    if detections is None:
        detections = detections_to_coco(forward(build(), items, cfg.eval_batch_size),
                                        [int(t["image_id"]) for _, t in items], ds.label_to_cat_id)
    n_all = len(ds)
    shown_run, shown_data = f"runs/{run.parent.name}/{run.name}", f"data/{Path(data_root).name}"  # no machine paths
    out = [(f"Machine: {machine_line(os.getloadavg()[0])}, "
           f"1 thread unless a row says otherwise, torch {torch.__version__}. Run `{shown_run}` on `{shown_data}` "
           f"({n_all} images, {len(detections)} stored detections); forward on the first {len(items)} images. "
           f"{args.reps} interleaved repetitions per lever; seconds as min / median / max; ratios to the first row "
           "of each lever, of the medians and of the minima (below 1: faster; a preempted call lengthens the "
           "median, the minima do not see it).")]

    gt = load_coco(ds.annotation_file)
    weights = stats.image_weights(n_all, args.boot, 0)
    phases = {}  # one pass of each phase, seconds for the whole split
    t0 = time.perf_counter()
    matches = stats.image_matches(gt, detections)
    phases["bootstrap matches (`image_matches`)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    stats.weighted_ap(matches, weights)
    phases[f"bootstrap AP ({args.boot} resamples, `weighted_ap`)"] = time.perf_counter() - t0
    for ev in ("pycocotools", "faster-coco-eval"):
        t0 = time.perf_counter()
        coco_metrics(str(ds.annotation_file), detections, evaluator=ev)
        phases[f"scoring, {ev}"] = time.perf_counter() - t0
    phases["decoding the images (`dataset[i]`)"] = decode * n_all

    rows = []
    # scorer
    py = coco_metrics(str(ds.annotation_file), detections, evaluator="pycocotools")
    fast = coco_metrics(str(ds.annotation_file), detections, evaluator="faster-coco-eval")
    worst = max(abs(py[k] - fast[k]) for k in COCO_SUMMARY if py[k] is not None)
    worst = max(worst, float(np.max(np.abs(np.subtract(py["AP_per_iou"], fast["AP_per_iou"])))))
    t = interleaved({"py": lambda: coco_metrics(str(ds.annotation_file), detections, evaluator="pycocotools"),
                     "fast": lambda: coco_metrics(str(ds.annotation_file), detections, evaluator="faster-coco-eval")},
                    args.reps)
    rows += [_row("scoring: pycocotools `coco_metrics` (reference)", t["py"], t["py"], ""),
             _row("scoring: faster-coco-eval", t["fast"], t["py"], f"exact: metrics differ by at most {worst:.1e}")]
    # bootstrap matches
    full, alone = matching(gt, detections), matching(gt, detections, area_all_only=True)
    n_img = len(full.params.imgIds)
    same = all(_same_entry(full.evalImgs[k * 4 * n_img + i], alone.evalImgs[k * n_img + i])
               for k in range(len(full.params.catIds)) for i in range(n_img))
    t = interleaved({"all4": lambda: matching(gt, detections),
                     "all": lambda: matching(gt, detections, area_all_only=True)}, args.reps)
    rows += [_row("bootstrap matches: `COCOeval.evaluate()`, 4 area ranges (before)", t["all4"], t["all4"], ""),
             _row("bootstrap matches: area range \"all\" only", t["all"], t["all4"],
                  f"exact: per-image matches {'identical' if same else 'DIFFER'}")]

    if not args.skip_forward:
        ids = [int(tg["image_id"]) for _, tg in items]
        ref_model, cl_model = build(), build(channels_last=True)
        reference = detections_to_coco(forward(ref_model, items, cfg.eval_batch_size), ids, ds.label_to_cat_id)
        phases[f"forward, batch {cfg.eval_batch_size}"] = None  # filled below from the interleaved median
        variants = {
            f"batch {cfg.eval_batch_size} (the run's `eval_batch_size`)": lambda: forward(ref_model, items, cfg.eval_batch_size),
            "batch 2 (the config default)": lambda: forward(ref_model, items, 2),
            f"batch {2 * cfg.eval_batch_size}": lambda: forward(ref_model, items, 2 * cfg.eval_batch_size),
            "channels-last backbone": lambda: forward(cl_model, items, cfg.eval_batch_size),
            "bf16 autocast": lambda: forward(ref_model, items, cfg.eval_batch_size, torch.bfloat16),
        }

        def two_threads():
            torch.set_num_threads(2)
            try:
                return forward(ref_model, items, cfg.eval_batch_size)
            finally:
                torch.set_num_threads(1)

        variants["2 threads"] = two_threads
        t = interleaved(variants, args.reps)
        first = next(iter(variants))
        for name, fn in variants.items():
            dets = detections_to_coco(fn(), ids, ds.label_to_cat_id)
            if dets == reference:
                note = "exact: identical detections"
            else:
                m_ref = coco_metrics(str(ds.annotation_file), reference)
                m = coco_metrics(str(ds.annotation_file), dets)
                moved = sum(a != b for a, b in zip(dets, reference)) + abs(len(dets) - len(reference))
                note = (f"changes numerics: {moved} of {len(reference)} detections differ; AP "
                        f"{m['AP'] - m_ref['AP']:+.3f}, AP90 {m['AP90'] - m_ref['AP90']:+.3f} on these {len(items)} images")
            rows.append(_row(f"forward: {name}", t[name], t[first], note))
        phases[f"forward, batch {cfg.eval_batch_size}"] = statistics.median(t[first]) / len(items) * n_all

    total = sum(v for k, v in phases.items() if v is not None and "faster-coco-eval" not in k)
    out += ["", (f"One pass of each phase, seconds for the {n_all} images (share: of the sum with pycocotools "
                 "scoring, the evaluation before this change):"), "", "| phase | s | share |", "|---|---|---|"]
    out += [f"| {k} | {v:.2f} | {v / total:.1%} |" for k, v in phases.items() if v is not None]
    out += ["", "| lever | s (min / median / max) | ratio of medians | ratio of minima | exact? |",
            "|---|---|---|---|---|", *rows]
    text = "\n".join(out)
    print(text)
    if args.page:
        from dynrcnn.report.text import write_page_block

        again = f"python benchmarks/eval.py --run {shown_run} --images {args.images} --reps {args.reps} --page {DOC_PAGE}"
        return write_page_block(args.page, BLOCK, text + f"\n\nRe-measure: `{again}`.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
