"""The premise the paper builds on, as targets a benchmark must show, and their measurements.

Dynamic R-CNN answers a paradox Cascade R-CNN measured on COCO: a detector trained at a fixed high
IoU threshold (0.7) is *worse* than one trained at 0.5, because positives vanish early and the
detector no longer matches the quality of its proposals (issue 32). The miniature benchmark lacks
it, so the project searches for one that has it, on baseline runs at fixed thresholds only
(:mod:`dynrcnn.report.premise`). This module declares what that search looks for, before any run,
each with its source and a criterion fixed here (:data:`TARGETS`; ``docs/premise.md`` shows the
table :func:`targets_markdown` writes), and measures it on run directories and datasets:

(a) :func:`paradox`: AP at fixed 0.7 minus AP at fixed 0.5, a paired t-interval over training seeds;
(b) :func:`positive_shortage`: RPN positives per ground-truth object at 0.7 (appended ground truth
    left out; ``metrics.jsonl``'s ``rpn_positives_per_object``) in the first 1 % and 10 % of
    training relative to the last 10 %;
(c) :func:`proposal_quality`: the share of RPN proposals at IoU >= 0.5 / 0.6 / 0.7, early and late
    (``proposal_ious.jsonl``, written with ``log_stats=true``);
(d) :func:`scene_statistics`: objects per image and the small / medium / large shares.

Where a COCO value could not be found, the target says so (``found``) and its criterion is this
project's declaration, named as such.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

#: the fixed R-CNN thresholds every candidate trains (baseline runs, ``model.fg_iou_thresh``)
THRESHOLDS = (0.5, 0.6, 0.7)
#: the share thresholds of target (c)
SHARE_IOUS = (0.5, 0.6, 0.7)
EARLY_FRACTIONS = (0.01, 0.10)  # target (b)'s early windows, as fractions of the run's iterations
LATE_FRACTION = 0.10  # the last 10 % of the run
LEVEL = 0.95  # target (a)'s interval

CASCADE = ("Cai & Vasconcelos, Cascade R-CNN: Delving into High Quality Object Detection, CVPR 2018 "
           "(arXiv 1712.00726)")
COCO_PAPER = "Lin et al., Microsoft COCO: Common Objects in Context, ECCV 2014 (arXiv 1405.0312)"
COCO_EVAL_PAGE = "cocodataset.org, Detection Evaluation page, note 4 of section 2 (Metrics)"

#: Cascade R-CNN, FPN+ ResNet-50 (its ablation detector, sec. 5.1.1) trained at a fixed u, COCO 2017
#: val AP in percent: the legends of Fig. 1(d) and Fig. 5(a) ("u=0.5 (AP=0.349) u=0.6 (AP=0.354)
#: u=0.7 (AP=0.319)"); its Table 1 gives the u = 0.5 baseline's AP90 as 7.1
CASCADE_FIXED_AP = {0.5: 34.9, 0.6: 35.4, 0.7: 31.9}
#: the same detectors with the ground-truth boxes added to the proposals at test time (Fig. 5(b)):
#: u = 0.7 then ranks first, the mismatch half of the paradox
CASCADE_FIXED_AP_GT_PROPOSALS = {0.5: 39.4, 0.6: 45.7, 0.7: 49.5}
#: Cascade R-CNN Fig. 4, first panel ("the output of RPN"): the share of training samples with IoU
#: above 0.5 / 0.6 / 0.7, in percent. The figure's nine red labels come out of the paper's text as
#: 16.7, 25.6, 21.7, 17.3, 28.0, 25.1, 21.7, 8.0, 2.9 without their panel; the only assignment that
#: falls with u inside each stage and rises with the stage at each u puts 16.7 / 8.0 / 2.9 in the first
#: panel (then 25.6 / 21.7 / 17.3 and 28.0 / 25.1 / 21.7): an inference, stated as one.
CASCADE_RPN_SHARES = {0.5: 16.7, 0.6: 8.0, 0.7: 2.9}
#: COCO's objects per image ("on average our dataset contains 3.5 categories and 7.7 instances per
#: image", COCO paper sec. 5, the 2014 release)
COCO_INSTANCES_PER_IMAGE = 7.7
#: COCO's object sizes: "approximately 41% of objects are small (area < 32^2), 34% are medium
#: (32^2 < area < 96^2), and 24% are large (area > 96^2)", area in segmentation-mask pixels
COCO_SIZE_SHARES = {"small": 0.41, "medium": 0.34, "large": 0.24}
#: the image area COCO's pixel thresholds are scaled by for (d)'s relative sizes: 640 x 480, the
#: common size of a COCO image (an assumption of this project: COCO images are at most 640 px on a
#: side; no source for the mean area was looked up)
COCO_IMAGE_AREA = 640 * 480

# the criteria, declared before any candidate ran (issue 32)
SHORTAGE_MAX_RATIO = {0.01: 0.25, 0.10: 0.5}  # (b): early / late positives per object at most this
SHARE_FACTOR = 2.0  # (c): late shares within this factor of Cascade R-CNN's first panel
DENSITY_TOLERANCE = 0.25  # (d): objects per image within +-25 % of COCO's
SIZE_TOLERANCE = 0.10  # (d): each size share within +-10 points of COCO's (relative sizes)


@dataclass(frozen=True)
class Target:
    """One thing the benchmark must show: what, the COCO reference (``None``: not found), its
    source, how it is judged (``criterion``), and whether the reference value was found."""

    key: str
    name: str
    statement: str
    reference: str
    source: str
    criterion: str
    found: str  # "yes", "partly" or "no"
    note: str = ""


TARGETS: tuple[Target, ...] = (
    Target(
        "a", "the paradox",
        "AP of the baseline trained at a fixed R-CNN threshold of 0.7 is below AP at 0.5",
        f"AP {CASCADE_FIXED_AP[0.5]:.1f} / {CASCADE_FIXED_AP[0.6]:.1f} / {CASCADE_FIXED_AP[0.7]:.1f} at "
        f"u = 0.5 / 0.6 / 0.7: 0.7 - 0.5 = {CASCADE_FIXED_AP[0.7] - CASCADE_FIXED_AP[0.5]:+.1f} AP "
        f"({(CASCADE_FIXED_AP[0.7] / CASCADE_FIXED_AP[0.5] - 1) * 100:+.0f} %), 0.6 - 0.5 = "
        f"{CASCADE_FIXED_AP[0.6] - CASCADE_FIXED_AP[0.5]:+.1f} AP",
        f"{CASCADE}, Fig. 1(d) and Fig. 5(a), sec. 5.2 (FPN+ ResNet-50, COCO 2017 val)",
        f"the {LEVEL:.0%} paired t-interval over training seeds of AP(0.7) - AP(0.5) lies below 0 "
        f"(>= 3 seeds)",
        "yes",
        "with the ground truth added to the proposals the order turns (AP "
        f"{CASCADE_FIXED_AP_GT_PROPOSALS[0.5]:.1f} / {CASCADE_FIXED_AP_GT_PROPOSALS[0.6]:.1f} / "
        f"{CASCADE_FIXED_AP_GT_PROPOSALS[0.7]:.1f}, Fig. 5(b)): the mismatch half of the paradox"),
    Target(
        "b", "early shortage of positives",
        "RPN positives per ground-truth object at 0.7 (appended ground truth left out) are scarce early "
        "in training",
        "not found: no per-iteration count of positives on COCO was found; Cascade R-CNN states the "
        "shortage in words (positives fall 'exponentially' with u, sec. 1)",
        f"{CASCADE}, sec. 1 (qualitative); the authors' threshold trajectory (official repository, "
        "issue #3) shows proposals improving within the first 0.6 % of training",
        "mean over the first 1 % / first 10 % of iterations divided by the mean over the last 10 % at "
        f"most {SHORTAGE_MAX_RATIO[0.01]:g} / {SHORTAGE_MAX_RATIO[0.10]:g} (this project's declaration)",
        "no"),
    Target(
        "c", "proposal quality, early and late",
        "the share of RPN proposals (ground truth left out) with IoU >= 0.5 / 0.6 / 0.7 early and late "
        "in training",
        f"{CASCADE_RPN_SHARES[0.5]:.1f} / {CASCADE_RPN_SHARES[0.6]:.1f} / {CASCADE_RPN_SHARES[0.7]:.1f} % "
        "(the RPN's output; the figure does not say at which iteration, read here as the trained "
        "model's: late); early values: not found",
        f"{CASCADE}, Fig. 4, first panel (the panel assignment of its labels is inferred, see "
        "dynrcnn.evaluation.premise.CASCADE_RPN_SHARES)",
        f"late shares within a factor {SHARE_FACTOR:g} of the reference at each IoU, and the early share "
        "at 0.7 below the late one (this project's declaration)",
        "partly",
        "Cascade R-CNN's 'training samples' may count another pool (its sampled RoIs or ground truth "
        "added); ours are all RPN proposals kept after NMS"),
    Target(
        "d", "scene density and object sizes",
        "objects per image and the small / medium / large shares of the instances",
        f"{COCO_INSTANCES_PER_IMAGE:g} objects per image; "
        + " / ".join(f"{v:.0%}" for v in COCO_SIZE_SHARES.values()) + " small / medium / large",
        f"{COCO_PAPER}, sec. 5 (objects per image, 2014 release); {COCO_EVAL_PAGE} (sizes)",
        f"objects per image within +-{DENSITY_TOLERANCE:.0%} of {COCO_INSTANCES_PER_IMAGE:g}; each size share "
        f"within +-{SIZE_TOLERANCE * 100:.0f} points, with COCO's 32^2 / 96^2 px thresholds scaled by the "
        f"image area over {COCO_IMAGE_AREA} px (640 x 480; this project's declaration)",
        "yes",
        "the 7.3 objects per image of train2017 quoted in issue 32 could not be checked here; "
        "scene_statistics() computes it from instances_train2017.json where COCO is present"),
)

BY_KEY = {t.key: t for t in TARGETS}


def targets_markdown() -> str:
    """The targets as the markdown table ``docs/premise.md`` shows (a test checks they agree)."""
    rows = ["| | target | COCO reference | source | criterion (declared before any run) | found |",
            "|---|---|---|---|---|---|"]
    for t in TARGETS:
        ref = t.reference + (f". {t.note[0].upper()}{t.note[1:]}" if t.note else "")
        rows.append(f"| ({t.key}) | **{t.name}**: {t.statement} | {ref} | {t.source} | {t.criterion} | {t.found} |")
    return "\n".join(rows)


# --------------------------------------------------------------------------------------------
# (a) the paradox


def paired_difference(a: dict[int, float], b: dict[int, float], level: float = LEVEL) -> dict:
    """``b - a`` over the seeds both hold: mean, the paired t-interval at ``level``, per-seed
    differences and ``n``; the bounds are NaN with fewer than two seeds."""
    from dynrcnn.evaluation.seed_intervals import seed_interval, seed_part

    seeds = sorted(set(a) & set(b))
    d = {s: float(b[s]) - float(a[s]) for s in seeds}
    if len(seeds) < 2:
        est = float(np.mean(list(d.values()))) if d else math.nan
        return {"estimate": est, "low": math.nan, "high": math.nan, "n": len(seeds), "per_seed": d}
    full = [np.array([[float(a[s])] for s in seeds]), np.array([[float(b[s])] for s in seeds])]
    est, var, df = seed_part(full, [-1.0, 1.0], paired=True)
    low, high = seed_interval(est[0], var[0], 0.0, df[0], level)
    return {"estimate": float(est[0]), "low": low, "high": high, "n": len(seeds), "per_seed": d}


def paradox(values: dict[float, dict[int, dict]], metrics=("AP", "AP90")) -> dict:
    """Target (a) from ``{threshold: {seed: eval metrics}}``: per metric, the paired differences
    0.7 - 0.5 and 0.6 - 0.5, the per-threshold means, and whether (a) holds (the AP interval of
    0.7 - 0.5 below 0; ``None`` without an interval)."""
    out = {"means": {}, "diff_070_050": {}, "diff_060_050": {}}
    for m in metrics:
        per = {t: {s: float(ev[m]) for s, ev in runs.items() if ev and ev.get(m) is not None}
               for t, runs in values.items()}
        out["means"][m] = {f"{t:g}": float(np.mean(list(v.values()))) if v else None for t, v in per.items()}
        if 0.5 in per and 0.7 in per:
            out["diff_070_050"][m] = paired_difference(per[0.5], per[0.7])
        if 0.5 in per and 0.6 in per:
            out["diff_060_050"][m] = paired_difference(per[0.5], per[0.6])
    d = out["diff_070_050"].get("AP")
    out["met"] = None if d is None or math.isnan(d["high"]) else bool(d["high"] < 0)
    return out


# --------------------------------------------------------------------------------------------
# (b) the early shortage of positives


def _window_mean(metrics, key: str, first: int, last: int) -> float | None:
    """The mean of ``key`` over iterations ``first..last`` from ``metrics.jsonl`` lines, each line
    the mean over the iterations since the previous one: only lines whose span lies inside the
    window count, weighted by their span; ``None`` when no line fits (logged too coarsely)."""
    if metrics is None or key not in metrics or "iteration" not in metrics:
        return None
    rows = metrics[["iteration", key]].dropna(subset=["iteration"]).sort_values("iteration")
    prev, num, den = 0, 0.0, 0
    for it, v in zip(rows["iteration"].astype(int), rows[key]):
        span_first, span = prev + 1, it - prev
        prev = it
        if v is None or (isinstance(v, float) and math.isnan(v)) or span <= 0:
            continue
        if span_first >= first and it <= last:
            num += float(v) * span
            den += span
    return num / den if den else None


def positive_shortage(metrics, max_iter: int, key: str = "rpn_positives_per_object") -> dict:
    """Target (b) on one run's ``metrics.jsonl`` (a DataFrame): the mean of ``key`` in the first
    1 % and 10 % of ``max_iter`` iterations, in the last 10 %, and their ratios (``None`` where the
    log is too coarse to resolve the window or the run lacks the key)."""
    late_first = int(math.floor((1 - LATE_FRACTION) * max_iter)) + 1
    late = _window_mean(metrics, key, late_first, max_iter)
    out = {"late": late}
    for f in EARLY_FRACTIONS:
        early = _window_mean(metrics, key, 1, max(1, int(math.ceil(f * max_iter))))
        out[f"first_{f:g}"] = early
        out[f"ratio_{f:g}"] = early / late if early is not None and late else None
    return out


def shortage_met(ratios: list[dict]) -> bool | None:
    """Whether (b) holds for runs' :func:`positive_shortage` results (their mean ratios against
    :data:`SHORTAGE_MAX_RATIO`); ``None`` when a window is unresolved in every run."""
    verdicts = []
    for f, limit in SHORTAGE_MAX_RATIO.items():
        vals = [r[f"ratio_{f:g}"] for r in ratios if r.get(f"ratio_{f:g}") is not None]
        if not vals:
            return None
        verdicts.append(float(np.mean(vals)) <= limit)
    return all(verdicts)


# --------------------------------------------------------------------------------------------
# (c) proposal quality early and late


def _shares(records: list[dict]) -> dict | None:
    if not records:
        return None
    counts = np.sum([np.asarray(r["counts"], dtype=np.float64) for r in records], axis=0)
    edges = np.asarray(records[0]["bin_edges"], dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return None
    return {f"{u:g}": float(counts[np.flatnonzero(np.isclose(edges[:-1], u) | (edges[:-1] > u))].sum() / total)
            for u in SHARE_IOUS}


def proposal_quality(proposal_ious: list[dict], max_iter: int) -> dict:
    """Target (c) on one run's ``proposal_ious.jsonl`` records (histograms of the RPN proposals'
    best IoU, ground truth left out): the shares at IoU >= 0.5 / 0.6 / 0.7 pooled over the records
    of the first 1 % and 10 % of training and of the last 10 % (``None`` where none was logged)."""
    out = {}
    for f in EARLY_FRACTIONS:
        last = max(1, int(math.ceil(f * max_iter)))
        out[f"first_{f:g}"] = _shares([r for r in proposal_ious if r["iteration"] <= last])
    late_first = int(math.floor((1 - LATE_FRACTION) * max_iter)) + 1
    out["late"] = _shares([r for r in proposal_ious if r["iteration"] >= late_first])
    return out


def quality_met(results: list[dict]) -> bool | None:
    """Whether (c) holds for runs' :func:`proposal_quality` results (means over runs)."""
    late = [r["late"] for r in results if r.get("late")]
    early = [r["first_0.1"] for r in results if r.get("first_0.1")]
    if not late or not early:
        return None
    ok = True
    for u, ref in CASCADE_RPN_SHARES.items():
        share = 100 * float(np.mean([s[f"{u:g}"] for s in late]))
        ok &= ref / SHARE_FACTOR <= share <= ref * SHARE_FACTOR
    return bool(ok and np.mean([s["0.7"] for s in early]) < np.mean([s["0.7"] for s in late]))


# --------------------------------------------------------------------------------------------
# (d) scene statistics


def scene_statistics(source) -> dict:
    """Target (d) on a COCO-format split (anything :func:`dynrcnn.data.datastats.dataset_statistics`
    reads): objects per image, the size shares with COCO's pixel thresholds (what AP_S/M/L use) and
    with them scaled to the image area (``relative``), and whether (d) holds."""
    from dynrcnn.data.datastats import LARGE_MIN, SMALL_MAX, _source_dict, dataset_statistics

    data, _ = _source_dict(source)
    stats = dataset_statistics(data)
    area_of = {im["id"]: float(im["width"]) * float(im["height"]) for im in data["images"]}
    anns = [a for a in data["annotations"] if not a.get("iscrowd", 0)]
    rel = np.array([float(a.get("area", a["bbox"][2] * a["bbox"][3])) * COCO_IMAGE_AREA / area_of[a["image_id"]]
                    for a in anns])
    n = max(1, rel.size)
    relative = {"small": float((rel < SMALL_MAX).sum() / n),
                "medium": float(((rel >= SMALL_MAX) & (rel < LARGE_MIN)).sum() / n),
                "large": float((rel >= LARGE_MIN).sum() / n)}
    per_image = stats["mean_instances_per_image"]
    met = (abs(per_image / COCO_INSTANCES_PER_IMAGE - 1) <= DENSITY_TOLERANCE
           and all(abs(relative[k] - v) <= SIZE_TOLERANCE + 1e-9 for k, v in COCO_SIZE_SHARES.items()))
    return {"images": stats["images"], "instances": stats["instances"], "classes": stats["classes"],
            "objects_per_image": per_image, "absolute": dict(stats["size_fractions"]), "relative": relative,
            "met": bool(met)}


# --------------------------------------------------------------------------------------------
# a candidate's runs, all four


@dataclass
class CandidateRuns:
    """The baseline runs of one candidate: ``evals[threshold][seed]`` (eval metrics), and per run
    at 0.7 its metrics DataFrame, proposal-IoU records and length."""

    evals: dict = field(default_factory=dict)
    at_070: list = field(default_factory=list)  # (metrics DataFrame, proposal_ious records, max_iter)


def candidate_runs(runs) -> CandidateRuns:
    """Group :class:`~dynrcnn.rundir.runs.Run` objects of fixed-threshold baselines by threshold.
    Any other method is refused: the search never looks at Dynamic R-CNN, DLA or DSL."""
    from dynrcnn.errors import DynrcnnError

    out = CandidateRuns()
    for r in runs:
        if r.method != "baseline":
            raise DynrcnnError(f"{r.path}: a {r.method} run; the premise search uses baseline runs only")
        t = round(float(r.config.model.fg_iou_thresh), 4)
        out.evals.setdefault(t, {})[r.seed] = r.eval
        if math.isclose(t, 0.7):
            out.at_070.append((r.metrics, r.proposal_ious, int(r.config.max_iter)))
    return out


def measure(runs, train_split) -> dict:
    """(a)-(d) of a candidate: its baseline runs (:func:`candidate_runs`) and its training split
    (for (d)); each part with ``met`` (True, False, or None when not measurable)."""
    g = candidate_runs(runs)
    shortage = [positive_shortage(m, n) for m, _, n in g.at_070]
    quality = [proposal_quality(p, n) for _, p, n in g.at_070]
    scenes = scene_statistics(train_split)
    return {
        "a": paradox(g.evals),
        "b": {"runs": shortage, "met": shortage_met(shortage)},
        "c": {"runs": quality, "met": quality_met(quality)},
        "d": scenes,
        "seeds": {f"{t:g}": sorted(v) for t, v in sorted(g.evals.items())},
    }
