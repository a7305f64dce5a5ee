"""The tree-crown study (issue 33, ``make report-trees``): does Dynamic R-CNN help on real
photographs of dense, small objects?

Faster R-CNN and Dynamic R-CNN at the same RPN NMS (0.85, the report's headline pair,
:data:`~dynrcnn.report.profiles.HEADLINE_RUNS`) are trained with the ``trees`` preset
(EfficientNet-Lite0-FPN from ImageNet, docs/trees.md) on the tiles of ``dynrcnn data trees``,
with the training seeds :data:`SEEDS`, paired. :func:`results` (``figures/trees/results.json``)
holds every run's AP, AP50, AP75, AP90, AP per IoU, final threshold and beta and time per
iteration; the difference of the two methods on each metric with the report's seed-level 95 %
interval and its status and equivalence words (:func:`~dynrcnn.report.claims.interval_verdict`,
as the controls); the AP difference at every IoU; the thresholds and betas the schedules end at,
beside the miniature's (its report of record's Dynamic R-CNN runs, when present) and the
authors' COCO trajectory (:data:`dynrcnn.reference.AUTHORS_TRAJECTORY`).

:data:`PROFILES` are the study's two sizes: ``trees`` (the study) and ``tiny`` (2 seeds x 4
iterations at 96 px on a handful of tiles: the end-to-end test; its numbers mean nothing).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from dynrcnn.config import IOU_THRESHOLDS
from dynrcnn.data.trees import STRIDE, TILE, VAL_SOURCES
from dynrcnn.reference import DYNAMIC_RPN_NMS
from dynrcnn.report.claims import interval_verdict
from dynrcnn.report.curves import authors_trajectory, trajectories as config_trajectories
from dynrcnn.report.evidence import Evidence
from dynrcnn.report.intervals import per_iou
from dynrcnn.report.profiles import HEADLINE_RUNS, Profile, seeded_runs
from dynrcnn.rundir.run_summary import rpn_nms
from dynrcnn.evaluation.seed_intervals import METRICS
from dynrcnn.evaluation.stats import signed

SEEDS = tuple(range(10))  # the training seeds of both methods, paired (five at first; 5-9 added later)
LABELS = {"baseline": "Faster R-CNN", "dynamic": "Dynamic R-CNN"}
WHOLE_IMAGE = VAL_SOURCES[0]  # the held-out YELL crop (1249 x 1035 px): the whole-photograph check
WHOLE_SCORE = 0.5  # the score a map of crowns keeps (dynrcnn predict's default)
WHOLE_IOUS = (0.5, 0.9)  # recall and precision on the whole photograph at these IoUs (the last: the figure's)
MINI_ROOT = "runs/mini"  # the miniature's report of record (make report): its Dynamic R-CNN trajectory
#: the study's figures by name: the photographs as JPEG (a tenth of their PNG size in git), the plots as PNG
FIGURE_FILES = {"data_samples": "data_samples.jpg", "ap_vs_iou": "ap_vs_iou.png", "trajectories": "trajectories.png",
                "detections": "detections.jpg", "whole_image": "whole_image.jpg"}
#: the tiny profile's settings: 4 iterations of 2 tiles at 96 px, few proposals (a pipeline check)
TINY_OVERRIDES = ("max_iter=4", "lr_steps=3", "warmup_iters=1", "checkpoint_period=4", "log_period=1",
                  "dynamic.interval=2", "ims_per_batch=2", "eval_batch_size=4", "num_workers=0",
                  "model.min_size=96", "model.max_size=96", "model.rpn_pre_nms_top_n_train=200",
                  "model.rpn_post_nms_top_n_train=100", "model.rpn_pre_nms_top_n_test=200",
                  "model.rpn_post_nms_top_n_test=100", "model.box_batch_size_per_image=64")


def trees_profile(name: str = "trees", seeds=SEEDS, overrides=(), data_root: str | None = "data/trees",
                  description: str = "") -> Profile:
    """The study's runs as a :class:`~dynrcnn.report.profiles.Profile`: the headline pair at RPN
    NMS 0.85, each with every seed (``<name>_seed<N>``), on the ``trees`` preset; no run logs the
    per-iteration statistics (the study reads the threshold and beta each run logs anyway)."""
    return Profile(name=name, preset="trees", runs=seeded_runs(HEADLINE_RUNS, seeds), data_root=data_root,
                   generate=None, overrides=tuple(overrides), stats_methods=(), figures_dir="figures/trees",
                   description=description or f"aerial tree crowns, {len(seeds)} paired seeds")


PROFILES = {
    "trees": trees_profile(description="aerial tree crowns (dynrcnn data trees), EfficientNet-Lite0-FPN from "
                                       f"ImageNet, {len(SEEDS)} paired seeds of each method, CPU"),
    # no data folder of its own: it runs on the handful of tiles it is given (the test writes them)
    "tiny": trees_profile("trees_tiny", SEEDS[:2], TINY_OVERRIDES, None,
                          "pipeline check: 2 seeds x 4 iterations at 96 px; numbers meaningless"),
}


# --------------------------------------------------------------------------------------------
# the runs


def study_runs(runs, seeds=SEEDS) -> dict[str, list]:
    """The evaluated runs of the pair (``{"baseline": [...], "dynamic": [...]}``, each sorted by
    seed, only ``seeds``, only at RPN NMS 0.85)."""
    out: dict[str, list] = {"baseline": [], "dynamic": []}
    for r in runs:
        if r.eval and r.method in out and int(r.seed) in seeds and rpn_nms(r) == DYNAMIC_RPN_NMS:
            out[r.method].append(r)
    return {m: sorted(rs, key=lambda r: int(r.seed)) for m, rs in out.items()}


def mini_runs(mini_root) -> list:
    """The miniature's Dynamic R-CNN runs at RPN NMS 0.85 under ``mini_root`` (evaluated ones;
    ``[]`` when the folder or its runs are missing)."""
    from dynrcnn.rundir.runs import find_runs

    root = Path(mini_root)
    if not root.is_dir():
        return []
    return [r for r in find_runs(root) if r.eval and r.method == "dynamic" and rpn_nms(r) == DYNAMIC_RPN_NMS]


def final_of(run, key: str) -> float:
    """The value of ``key`` (``iou_threshold``, ``beta``) a run ends at (the last logged update;
    a baseline logs its fixed values)."""
    d = run.dynamic
    return float(d.sort_values("iteration")[key].iloc[-1]) if d is not None and len(d) else math.nan


def _mean_final(runs, key: str) -> float | None:
    vals = [v for v in (final_of(r, key) for r in runs) if math.isfinite(v)]
    return round(float(np.mean(vals)), 3) if vals else None


def trajectories(runs, mini) -> list[dict]:
    """The threshold / beta trajectories (mean over seeds, :func:`dynrcnn.report.curves.trajectories`)
    of the trees' Dynamic R-CNN runs and, when given, the miniature's, each labelled by its data:
    ``label``, ``data`` (``trees`` / ``miniature``), ``seeds``, ``max_iter``, ``iou_threshold`` and
    ``beta`` as (iterations, values)."""
    out = []
    for data, rs in (("tree crowns", runs), ("miniature", mini)):
        for t in config_trajectories([r for r in rs if r.method == "dynamic"]):
            out.append({**t, "data": data, "label": f"{data}: {LABELS['dynamic']}"})
    return out


def authors_points() -> dict:
    """The authors' COCO threshold points (:data:`dynrcnn.reference.AUTHORS_TRAJECTORY`, as
    :func:`dynrcnn.report.curves.authors_trajectory` gives them: fractions of their schedule), as lists."""
    a = authors_trajectory()
    return {**a, "progress": a["progress"].tolist(), "iou_threshold": a["iou_threshold"].tolist()}


# --------------------------------------------------------------------------------------------
# the numbers


def run_rows(pair: dict[str, list]) -> list[dict]:
    """One row per run: its name, method, seed, AP, AP50, AP75, AP90, AP per IoU, the final
    threshold and beta, and its median time per iteration."""
    from dynrcnn.report.study import run_times

    rows = []
    for method, rs in pair.items():
        for r in rs:
            e = r.eval
            rows.append({"run": r.path.name, "method": method, "seed": int(r.seed),
                         **{m: float(e[m]) for m in METRICS}, "AP_per_iou": [float(v) for v in e["AP_per_iou"]],
                         "final_threshold": final_of(r, "iou_threshold"), "final_beta": final_of(r, "beta"),
                         **run_times(r), "iterations": int(r.iterations)})
    return rows


def comparisons(ev: Evidence, pair: dict[str, list]) -> list[dict]:
    """Dynamic R-CNN minus Faster R-CNN on each of AP, AP50, AP75, AP90: the report's seed-level
    95 % interval, its status (the paper's direction: Dynamic R-CNN higher) and equivalence words,
    the per-seed differences (:func:`~dynrcnn.report.claims.interval_verdict`)."""
    out = []
    for m in METRICS:
        est, verdict, record = interval_verdict(ev, pair["baseline"], pair["dynamic"], m)
        iv = record.get("own", {})
        out.append({"metric": m, "estimate": est, "low": iv.get("low", math.nan), "high": iv.get("high", math.nan),
                    "status": verdict.status, "equivalence": iv.get("equivalence", ""), "seeds": iv.get("seeds", ""),
                    "per_seed": iv.get("per_seed", {}), "margin": iv.get("margin", math.nan)})
    return out


def comparison_text(c: dict) -> str:
    """``+1.27 AP [-0.40, +2.94] (5 vs 5 seeds, paired): inconclusive, inconclusive``."""
    if not math.isfinite(c["estimate"]):
        return f"{c['metric']}: not measured"
    bounds = f" [{signed(c['low'])}, {signed(c['high'])}]" if math.isfinite(c["low"]) else " (no interval)"
    return f"{signed(c['estimate'])} {c['metric']}{bounds} ({c['seeds']}): {c['status']}, {c['equivalence']}"


def match(boxes, truth, iou: float):
    """``[D]`` bool: is detection ``d`` (``boxes`` ``[D, 4]`` xyxy, highest score first) matched
    one-to-one to a crown of ``truth`` ``[G, 4]``? Each detection in turn takes the unmatched crown
    it overlaps most, if at IoU >= ``iou``: COCO's greedy matching, for one class and one image."""
    import torch
    from torchvision.ops import box_iou

    hits = torch.zeros(len(boxes), dtype=torch.bool)
    if len(boxes) and len(truth):
        overlap = box_iou(torch.as_tensor(boxes, dtype=torch.float32), torch.as_tensor(truth, dtype=torch.float32))
        for d in range(len(boxes)):
            j = int(overlap[d].argmax())
            if overlap[d, j] >= iou:
                hits[d] = True
                overlap[:, j] = -1.0  # taken
    return hits


def whole_image(pair: dict[str, list], wheel, source: str = WHOLE_IMAGE, tile: int = TILE, stride: int = STRIDE,
                score_thresh: float = WHOLE_SCORE) -> dict:
    """The first seed of each method on one whole held-out photograph, as an ecologist runs it
    (``dynrcnn predict RUN photo.png --tile 400``: :func:`~dynrcnn.evaluation.predict.detect_tiled`),
    against the photograph's own annotation from the pinned wheel (not its tiles'): for each method
    the detections at score >= ``score_thresh``, recall and precision at IoU 0.5 and 0.9 with
    :func:`match`, the seconds it took, and the boxes (``xyxy``, rounded to 0.1 px) with their
    IoU-0.9 matches for the figure."""
    import time

    import torch

    from dynrcnn.data.trees import read_sources
    from dynrcnn.evaluation.predict import Detector, detect_tiled

    images, shas = read_sources(Path(wheel), (source,))
    pixels, voc = images[source]
    truth = torch.as_tensor(voc.boxes, dtype=torch.float32).reshape(-1, 4)
    image = torch.from_numpy(np.array(pixels)).permute(2, 0, 1).float() / 255
    out = {"source": source, "sha256": shas[source], "width": voc.width, "height": voc.height, "crowns": len(truth),
           "tile": tile, "stride": stride, "score_thresh": score_thresh, "methods": {}}
    for method, rs in pair.items():
        if not rs:
            continue
        detector = Detector.from_run(rs[0].path, score_thresh=score_thresh)
        t0 = time.perf_counter()
        det = detect_tiled(detector, image, tile, stride)
        seconds = time.perf_counter() - t0
        boxes = det.boxes[det.scores.argsort(descending=True, stable=True)]
        entry = {"label": LABELS[method], "run": rs[0].path.name, "seed": int(rs[0].seed), "detections": len(boxes),
                 "seconds": round(seconds, 2)}
        for iou in WHOLE_IOUS:
            matched = match(boxes, truth, iou)
            entry[f"recall{iou * 100:.0f}"] = 100.0 * int(matched.sum()) / max(1, len(truth))
            entry[f"precision{iou * 100:.0f}"] = 100.0 * int(matched.sum()) / max(1, len(boxes))
        entry["boxes"] = [[round(float(v), 1) for v in b] for b in boxes]
        entry["tight"] = matched.tolist()  # the last IoU of WHOLE_IOUS: the figure's
        out["methods"][method] = entry
    out["truth"] = [[round(float(v), 1) for v in b] for b in truth]
    return out


def whole_image_text(whole: dict | None) -> str:
    """One sentence on the whole photograph from :func:`whole_image`'s numbers."""
    if not whole or not whole["methods"]:
        return ("The whole-photograph check did not run: the pinned wheel is not in the cache "
                "(dynrcnn data trees puts it there).")
    parts = [f"{e['label']} finds {e['recall50']:.0f} % of them at IoU >= 0.5 and {e['recall90']:.0f} % at IoU >= 0.9 "
             f"(precision {e['precision50']:.0f} % / {e['precision90']:.0f} %, {e['detections']} detections, "
             f"{e['seconds']:.0f} s)" for e in whole["methods"].values()]
    return (f"On the whole held-out photograph {whole['source']} ({whole['width']} x {whole['height']} px, "
            f"{whole['crowns']} annotated crowns), detected in {whole['tile']} px tiles at stride {whole['stride']} "
            f"and merged, at score >= {whole['score_thresh']:g}: " + "; ".join(parts) + ".")


def data_summary(data_root) -> dict:
    """Tiles and boxes of each split of the dataset (from its COCO files) and its provenance
    (``trees.json`` of ``dynrcnn data trees``, when there)."""
    import json

    from dynrcnn.data.datasets import annotation_file
    from dynrcnn.data.trees import MANIFEST, SPLITS
    from dynrcnn.io import read_json

    out = {}
    for split in SPLITS:
        coco = json.loads(annotation_file(data_root, split).read_text())
        out[split] = {"tiles": len(coco["images"]), "boxes": len(coco["annotations"])}
    manifest = read_json(Path(data_root) / MANIFEST) or {}
    out["wheel_sha256"] = manifest.get("wheel_sha256")
    out["sources"] = {s: v.get("split") for s, v in manifest.get("sources", {}).items()}
    return out


def interpretation(res: dict) -> str:
    """The study's one sentence, from ``results.json``'s numbers."""
    by = {c["metric"]: c for c in res["comparisons"]}
    parts = [comparison_text(by[m]) for m in ("AP", "AP90") if m in by]
    end = (f"Its threshold ends at {res['final_threshold']:.3f} and beta at {res['final_beta']:.3f} on the tree crowns"
           if res["final_threshold"] is not None else "No Dynamic R-CNN run has been evaluated")
    mini = res["miniature"]
    end += (f" (the miniature's: {mini['final_threshold']:.3f} and {mini['final_beta']:.3f}; "
            if mini["runs"] else " (the miniature's runs were not found; ")
    a = res["authors"]
    end += f"the authors' COCO threshold is {a['iou_threshold'][-1]:.2f} after {a['progress'][-1]:.2%} of their schedule)."
    return (f"On real aerial photographs of tree crowns, Dynamic R-CNN minus Faster R-CNN at RPN NMS "
            f"{DYNAMIC_RPN_NMS:g}: " + "; ".join(parts) + f". {end}")


def readme_line(res: dict) -> str:
    """The one line README's headline can carry once the study has run."""
    by = {c["metric"]: c for c in res["comparisons"]}
    parts = "; ".join(comparison_text(by[m]) for m in ("AP", "AP90") if m in by)
    return (f"- **Real photographs** (aerial tree crowns, {res['seeds_used']} paired seeds, "
            f"[docs/trees.md](docs/trees.md)): Dynamic R-CNN minus Faster R-CNN at the same RPN NMS: {parts}.")


def results(runs, mini=(), data_root=None, seeds=SEEDS, command: str = "make report-trees", wheel=None) -> dict:
    """Everything the study reports (``figures/trees/results.json``): ``runs`` are the study's
    run folders' runs, ``mini`` the miniature's Dynamic R-CNN runs (may be empty); with the
    pinned ``wheel``, the whole-photograph check (:func:`whole_image`)."""
    from dynrcnn.report.results import environment_of

    pair = study_runs(runs, seeds)
    ev = Evidence(pair["baseline"] + pair["dynamic"])
    comps = comparisons(ev, pair)
    delta = ev.compare(pair["baseline"], pair["dynamic"]) if pair["baseline"] and pair["dynamic"] else None
    rows = run_rows(pair)
    shared = sorted({int(r.seed) for r in pair["baseline"]} & {int(r.seed) for r in pair["dynamic"]})
    mini = list(mini)
    res = {
        "command": command, "scale": "aerial tree crowns, real photographs (not COCO)",
        "rpn_nms": DYNAMIC_RPN_NMS, "seeds_planned": list(seeds), "seeds_used": len(shared), "seeds": shared,
        "environment": environment_of(ev) if len(ev) else None,
        "data": data_summary(data_root) if data_root is not None else None,
        "runs": rows,
        "methods": {m: {"label": LABELS[m], "runs": len(rs), **{k: float(np.mean([r.eval[k] for r in rs])) if rs
                        else math.nan for k in METRICS},
                        "AP_per_iou": np.mean([r.eval["AP_per_iou"] for r in rs], axis=0).tolist() if rs else []}
                    for m, rs in pair.items()},
        "iou_thresholds": list(IOU_THRESHOLDS),
        "comparisons": comps,
        "per_iou_gain": per_iou(delta),
        "final_threshold": _mean_final(pair["dynamic"], "iou_threshold"),
        "final_beta": _mean_final(pair["dynamic"], "beta"),
        "miniature": {"runs": len(mini), "final_threshold": _mean_final(mini, "iou_threshold"),
                      "final_beta": _mean_final(mini, "beta"),
                      "iterations": int(mini[0].config.max_iter) if mini else None},
        "authors": authors_points(),
        "sec_per_iter": {m: float(np.nanmedian([r["sec_per_iter"] for r in rows if r["method"] == m]))
                         for m in pair if pair[m]},
    }
    res["whole_image"] = whole_image(pair, wheel) if wheel is not None else None
    res["whole_image_text"] = whole_image_text(res["whole_image"])
    res["interpretation"] = interpretation(res)
    res["readme_line"] = readme_line(res)
    return res


def block(res: dict, figures: str, notebook: str, minutes: float) -> str:
    """The ``TREES`` block of docs/trees.md, from ``results.json`` only (``figures``: the figures
    folder as the page links it)."""
    from dynrcnn.report.study import attribution, training_text

    lines = [f"## The study (written by `{res['command']}`; do not edit by hand)", "",
             f"Faster R-CNN and Dynamic R-CNN, both at RPN NMS {res['rpn_nms']:g}, {res['seeds_used']} paired seeds "
             f"({len(res['seeds_planned'])} declared), on the validation tiles of the two held-out images "
             f"[{res['scale']}].", "",
             "| run | seed | AP | AP50 | AP75 | AP90 | final threshold | final beta | s / iteration |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in res["runs"]:
        lines.append(f"| {r['run']} | {r['seed']} | {r['AP']:.2f} | {r['AP50']:.2f} | {r['AP75']:.2f} | "
                     f"{r['AP90']:.2f} | {r['final_threshold']:.3f} | {r['final_beta']:.3f} | {r['sec_per_iter']:.2f} |")
    for m, s in res["methods"].items():
        if s["runs"]:
            lines.append(f"| **{s['label']}, mean** | {s['runs']} seeds | {s['AP']:.2f} | {s['AP50']:.2f} | "
                         f"{s['AP75']:.2f} | {s['AP90']:.2f} | | | |")
    lines += ["", "| Dynamic R-CNN - Faster R-CNN | difference [95 % seed-level interval] | seeds | status | equivalence |",
              "|---|---|---|---|---|"]
    for c in res["comparisons"]:
        bounds = f"[{signed(c['low'])}, {signed(c['high'])}]" if math.isfinite(c["low"]) else "(no interval)"
        lines.append(f"| {c['metric']} | {signed(c['estimate'])} {bounds} | {c['seeds']} | {c['status']} | "
                     f"{c['equivalence']} |")
    lines += ["", res["interpretation"], "",
              f"![AP against IoU]({figures}/{FIGURE_FILES['ap_vs_iou']})", "",
              f"![Threshold and beta against training progress]({figures}/{FIGURE_FILES['trajectories']})", "",
              f"![Detections on validation tiles]({figures}/{FIGURE_FILES['detections']})", "",
              res["whole_image_text"], "",
              *([f"![The whole held-out photograph]({figures}/{FIGURE_FILES['whole_image']})", ""]
                if res["whole_image"] else []),
              attribution(res), "",
              f"Figures: `{figures}/` (data samples, AP against IoU, trajectories, detections); numbers: "
              f"`{figures}/results.json`; the notebook: `{notebook}`. This run took {minutes:.1f} min"
              f"{training_text(res['runs'])}."]
    return "\n".join(lines)


__all__ = ["SEEDS", "LABELS", "FIGURE_FILES", "WHOLE_IMAGE", "WHOLE_SCORE", "WHOLE_IOUS", "MINI_ROOT", "PROFILES", "TINY_OVERRIDES", "trees_profile", "study_runs",
           "mini_runs", "final_of", "trajectories", "authors_points", "run_rows", "comparisons", "comparison_text",
           "data_summary", "match", "whole_image", "whole_image_text", "interpretation", "readme_line", "results", "block"]
