"""Numbers derived from run directories: grouping runs, means over seeds, the ablation,
AP differences per IoU threshold, and the checks of the method on a run's logs (dynamic
updates recomputed from the logged statistics, proposal quality, SmoothL1 gradients).

Every function reads :class:`dynrcnn.rundir.runs.Run` objects and returns numbers or DataFrames;
nothing here decides a verdict (:mod:`.claims`) or writes text (:mod:`.text`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from dynrcnn.config import IOU_THRESHOLDS, METHOD_NAMES, REPORTED_METRICS, method_switches
from dynrcnn.modeling.dynamic_head import convention_median
from dynrcnn.reference import BASELINE_RPN_NMS
from dynrcnn.report.evidence import evidence_of, main_key
from dynrcnn.report.intervals import interval
from dynrcnn.presets import scale_label, scale_of
from dynrcnn.rundir.run_summary import run_name, threshold_at

METRICS = REPORTED_METRICS
ABLATION_ORDER = ("baseline", "dla", "dsl", "dynamic")
ABLATION_NAMES = METHOD_NAMES  # config.METHOD_NAMES: the rows of the ablation


# --------------------------------------------------------------------------------------------
# groups of runs and their values


def same_nms_pair(runs) -> tuple | None:
    """``(baseline, dynamic)``: the first seed of Dynamic R-CNN and of the baseline at its RPN
    NMS (the headline comparison), for figures that show the two on the same images; None when
    either is missing."""
    groups = evidence_of(runs).groups
    dyn = main_key(groups, "dynamic")
    if dyn is None or ("baseline", dyn[1]) not in groups:
        return None
    return tuple(min(groups[k], key=lambda r: r.config.seed or 0) for k in (("baseline", dyn[1]), dyn))


def tight_share(run, score_thresh: float = 0.5, iou: float = 0.9) -> float:
    """The share of a run's detections with score >= ``score_thresh`` on its validation split
    that overlap a ground-truth box of their class at IoU >= ``iou`` (nan without detections)."""
    from dynrcnn.data.datasets import annotation_file, load_coco
    from dynrcnn.evaluation.coco_eval import tight_flags
    from dynrcnn.rundir.runs import detections_by_image

    coco = load_coco(annotation_file(run.config.data_root, run.config.val_split))
    flags = [f for img, dets in detections_by_image(run.path, min_score=score_thresh).items()
             for f in tight_flags(dets, coco.loadAnns(coco.getAnnIds(imgIds=img, iscrowd=None)), iou)]
    return float(np.mean(flags)) if flags else float("nan")


def values(runs, metric: str) -> list[float]:
    """The finite values of ``metric`` (an eval.json key, or ``sec_per_iter``) over ``runs``."""
    out = []
    for r in runs:
        if metric == "sec_per_iter":
            v = (r.done or {}).get("sec_per_iter_median")
        else:
            v = (r.eval or {}).get(metric)
        if v is not None and math.isfinite(float(v)):
            out.append(float(v))
    return out


def mean(vals) -> float:
    return float(np.mean(vals)) if vals else float("nan")


def names(runs) -> str:
    """``a+b`` of the runs' names, ``-`` when there are none."""
    return "+".join(run_name(r) for r in runs) or "-"


def profile_scale(runs) -> str:
    """The runs' common :func:`~dynrcnn.presets.scale_of` (``COCO`` only when every run is);
    ``miniature`` for none or a mix."""
    scales = {scale_of(r.config.preset) for r in runs}
    return scales.pop() if len(scales) == 1 else "miniature"


def device_kind(runs) -> str:
    devs = {str((r.env or {}).get("device", "cpu")) for r in runs}
    return "gpu" if devs and all(d.startswith("cuda") for d in devs) else "cpu"


# --------------------------------------------------------------------------------------------
# the ablation and AP per IoU


def _ablation_row(ev, key, base_key) -> dict:
    groups = ev.groups
    method, nms = key
    rs = groups[key]
    use_dla, use_dsl = method_switches(method) if method in ABLATION_ORDER else (False, False)
    name = ABLATION_NAMES.get(method, method)
    if nms != BASELINE_RPN_NMS:
        name += f" (RPN NMS {nms:g})"
    row = {"configuration": name, "runs": ", ".join(run_name(r) for r in rs),
           "DLA": "yes" if use_dla else "", "DSL": "yes" if use_dsl else "", "RPN NMS": nms, "seeds": len(rs)}
    for m in METRICS:
        row[m] = mean(values(rs, m))
    ref_key = ("baseline", nms) if ("baseline", nms) in groups else base_key
    base = {m: mean(values(groups[ref_key], m)) for m in ("AP", "AP90")} if ref_key else {}
    delta = ev.compare(groups[ref_key], rs) if ref_key and ref_key != key else None
    for m in ("AP", "AP90"):
        row[f"Δ{m} vs baseline"] = row[m] - base[m] if base else float("nan")
        iv = interval(delta, m)
        row[f"Δ{m} 95% CI"] = ("one seed" if math.isnan(iv.low) else f"[{iv.low:+.2f}, {iv.high:+.2f}]") if iv else "-"
    row["Δ vs"] = f"baseline (RPN NMS {ref_key[1]:g})" if ref_key else "-"
    row["scale"] = scale_label(rs[0].config.preset)
    return row


def ablation_table(runs) -> pd.DataFrame:
    """Baseline / DLA / DSL / DLA+DSL (and the baseline at another RPN NMS when present):
    AP, AP50, AP75, AP90 (mean over seeds), the gain over the baseline *at the same RPN NMS*
    when there is one (else the reference baseline), so a row shows the method's own effect,
    with its 95 % interval (paired bootstrap over seeds and images, :mod:`.intervals`)."""
    ev = evidence_of(runs)
    groups = ev.groups
    base_key = main_key(groups, "baseline")
    order = {m: i for i, m in enumerate(ABLATION_ORDER)}
    keys = sorted(groups, key=lambda k: (k[1] != BASELINE_RPN_NMS and k[0] == "baseline", order.get(k[0], 9), k[1]))
    rows = [_ablation_row(ev, key, base_key) for key in keys]
    cols = ["configuration", "DLA", "DSL", "RPN NMS", "seeds", *METRICS, "ΔAP vs baseline", "ΔAP 95% CI",
            "ΔAP90 vs baseline", "ΔAP90 95% CI", "Δ vs", "runs", "scale"]
    return pd.DataFrame(rows, columns=cols)


def iou_thresholds(run) -> list[float]:
    """The IoU thresholds of a run's ``AP_per_iou`` (recorded in eval.json, else COCO's)."""
    return list((run.eval or {}).get("iou_thresholds") or IOU_THRESHOLDS)


def ap_gain_per_iou(runs):
    """``(thresholds, dynamic - baseline AP at each, scale label)`` of the main baseline and
    dynamic groups (means over seeds), or ``None`` when either is missing."""
    groups = evidence_of(runs).groups
    b, d = main_key(groups, "baseline"), main_key(groups, "dynamic")
    if not b or not d:
        return None
    base = np.mean([r.eval["AP_per_iou"] for r in groups[b]], axis=0)
    dyn = np.mean([r.eval["AP_per_iou"] for r in groups[d]], axis=0)
    return np.asarray(IOU_THRESHOLDS), dyn - base, scale_label(groups[d][0].config.preset)


# --------------------------------------------------------------------------------------------
# the dynamic trajectory of a run: when the threshold crossed 0.5, where threshold and beta ended

CROSSING = 0.5  # the baseline's fixed threshold


def dynamic_facts(run) -> dict:
    """Threshold and beta at the end of ``run``, the first update at which the threshold
    exceeded 0.5 (iteration and fraction of training; None if never), and the share of RPN
    proposals at or above the threshold in use over the last update window (``fg_fraction``)."""
    d = run.dynamic
    out = {"iou_threshold_end": None, "beta_end": None, "crossed_0.5_at": None, "crossed_0.5_fraction": None,
           "fg_fraction_end": None, "updates": 0}
    if d is None or not len(d) or "iou_threshold" not in d:
        return out
    d = d.sort_values("iteration")
    total = int(run.config.max_iter or d["iteration"].max() or 1)
    out["iou_threshold_end"] = float(d["iou_threshold"].iloc[-1])
    out["beta_end"] = float(d["beta"].iloc[-1])
    out["updates"] = int(len(d) - 1)
    above = d[d["iou_threshold"] > CROSSING]
    if len(above):
        it = int(above["iteration"].iloc[0])
        out["crossed_0.5_at"], out["crossed_0.5_fraction"] = it, it / total
    if "fg_fraction" in d:
        fg = pd.to_numeric(d["fg_fraction"], errors="coerce").dropna()
        out["fg_fraction_end"] = float(fg.iloc[-1]) if len(fg) else None
    return out


def dynamic_facts_table(runs) -> pd.DataFrame:
    """:func:`dynamic_facts` of every run that uses DLA or DSL, one row per run."""
    rows = [{"run": run_name(r), "method": r.config.method, "seed": r.seed, **dynamic_facts(r)}
            for r in runs if r.config.method in ("dla", "dsl", "dynamic")]
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# the method, checked on one run's logs


def _finite(series) -> np.ndarray:
    if series is None:
        return np.array([])
    v = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)
    return v[np.isfinite(v)]


def recompute_updates(run) -> pd.DataFrame:
    """Recompute every dynamic update of ``run`` from its per-iteration statistics.

    ``T = max(T_init, mean(IoU statistics))`` and ``beta = min(beta_init, median(error
    statistics))`` (the run's convention's median; previous beta kept when the median is below 1e-15) over the statistics of
    the iterations since the previous update, next to what the head logged in
    ``dynamic.jsonl``. Requires ``stats.jsonl`` (``log_stats=true``).
    """
    d, stats = run.dynamic, run.stats
    cols = ["iteration", "n_iou", "n_beta", "iou_threshold_logged", "iou_threshold_recomputed",
            "beta_logged", "beta_recomputed"]
    if d is None or stats is None or not len(d) or not len(stats):
        return pd.DataFrame(columns=cols)
    dyn = run.config.dynamic
    use_dla, use_dsl = method_switches(run.config.method)
    t_init, b_init = float(dyn.init_iou), float(dyn.init_beta)
    d = d.sort_values("iteration")
    thr, beta = float(d.iloc[0]["iou_threshold"]), float(d.iloc[0]["beta"])
    prev, rows = int(d.iloc[0]["iteration"]), []
    for _, row in d.iloc[1:].iterrows():
        it = int(row["iteration"])
        win = stats[(stats["iteration"] > prev) & (stats["iteration"] <= it)]
        ious = _finite(win.get("iou_stat"))
        errs = _finite(win.get("error_stat"))
        if use_dla and len(ious):
            thr = max(t_init, float(np.mean(ious)))
        if use_dsl and len(errs):
            med = convention_median(errs, dyn.convention)
            if med >= 1e-15:
                beta = min(b_init, med)
        rows.append({"iteration": it, "n_iou": len(ious), "n_beta": len(errs),
                     "iou_threshold_logged": float(row["iou_threshold"]), "iou_threshold_recomputed": thr,
                     "beta_logged": float(row["beta"]), "beta_recomputed": beta})
        prev = it
    return pd.DataFrame(rows, columns=cols)


def share_at_least(rec: dict, level: float) -> float:
    """Share of a ``proposal_ious.jsonl`` record's proposals whose max IoU is >= ``level``: the
    histogram's bins above ``level`` plus the part of the bin that holds ``level`` (proposals
    taken as uniform within a 0.05-wide bin). Counting only bins whose lower edge is >= ``level``
    (what the figure did) leaves that bin out: 3.3 % instead of about 7.5 % at threshold 0.63."""
    if not math.isfinite(level):
        return float("nan")
    edges = np.asarray(rec["bin_edges"], dtype=float)
    counts = np.asarray(rec["counts"], dtype=float)
    lo, hi = edges[:-1], edges[1:]
    part = np.clip((hi - level) / np.maximum(hi - lo, 1e-12), 0.0, 1.0)  # 1 above level, 0 below
    return float((counts * part).sum() / max(counts.sum(), 1.0))


def proposal_quality(run, thresholds=(0.5, 0.7, 0.9)) -> pd.DataFrame:
    """From ``proposal_ious.jsonl``: per logged iteration, the threshold in effect and the
    share of proposals whose max IoU reaches it (and fixed levels), by :func:`share_at_least`."""
    rows = []
    for rec in run.proposal_ious or []:
        it = int(rec["iteration"])
        thr, beta = threshold_at(run, it)
        row = {"iteration": it, "proposals": int(sum(rec["counts"])), "threshold": thr, "beta": beta,
               "≥ threshold": share_at_least(rec, thr)}
        for t in thresholds:
            row[f"≥ {t}"] = share_at_least(rec, t)
        rows.append(row)
    return pd.DataFrame(rows)


def smooth_l1_gradient(x: float, betas) -> dict[float, float]:
    """d SmoothL1(x; beta) / dx for each beta (``dynrcnn.modeling.dynamic_head.smooth_l1``, autograd)."""
    import torch

    from dynrcnn.modeling.dynamic_head import smooth_l1

    out = {}
    for b in betas:
        t = torch.tensor(float(x), dtype=torch.float64, requires_grad=True)
        (g,) = torch.autograd.grad(smooth_l1(t, float(b)), t)
        out[float(b)] = float(g)
    return out


__all__ = ["METRICS", "ABLATION_ORDER", "ABLATION_NAMES", "same_nms_pair", "tight_share", "values", "mean", "names",
           "profile_scale", "device_kind", "ablation_table", "iou_thresholds", "ap_gain_per_iou",
           "recompute_updates", "proposal_quality", "smooth_l1_gradient", "CROSSING", "dynamic_facts",
           "dynamic_facts_table"]
