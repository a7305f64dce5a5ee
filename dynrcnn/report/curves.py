"""The data behind the report's group figures (:mod:`dynrcnn.report.plots` draws them).

With several seeds per configuration, the figures show configurations, not runs: AP at each
IoU threshold (mean over seeds, with the seeds' range), the AP difference at each threshold
with its 95 % interval, and the threshold / beta / proposal-quality trajectories (mean over
seeds) next to the authors' published trajectory.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dynrcnn.config import IOU_THRESHOLDS
from dynrcnn.reference import AUTHORS_TRAJECTORY
from dynrcnn.report.analysis import ABLATION_NAMES, tight_share
from dynrcnn.report.evidence import evidence_of, main_key
from dynrcnn.report.intervals import seeds_text


def config_label(key) -> str:
    method, nms = key
    return f"{ABLATION_NAMES.get(method, method)} (RPN NMS {nms:g})"


def ap_curves(runs) -> list[dict]:
    """Per configuration: ``label``, ``method``, ``nms``, ``x`` (IoU thresholds), ``mean``,
    ``low``/``high`` (the seeds' min and max) of AP at each threshold, ``seeds``."""
    out = []
    for key, rs in sorted(evidence_of(runs).groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        y = np.array([r.eval["AP_per_iou"] for r in rs], dtype=float)
        out.append({"label": config_label(key), "method": key[0], "nms": key[1], "x": list(IOU_THRESHOLDS),
                    "mean": y.mean(axis=0), "low": y.min(axis=0), "high": y.max(axis=0), "seeds": len(rs)})
    return out


def seed_values(runs, metrics=("AP", "AP90")) -> list[dict]:
    """Per configuration: ``label``, ``method``, ``nms`` and ``values`` (metric -> {seed: the
    run's value}), so a figure can show every seed, not only the mean."""
    out = []
    for key, rs in sorted(evidence_of(runs).groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        out.append({"label": config_label(key), "method": key[0], "nms": key[1],
                    "values": {m: {int(r.seed): float(r.eval[m]) for r in rs} for m in metrics}})
    return out


def gain_curves(runs, dataset: str | None = None) -> list[dict]:
    """Dynamic R-CNN minus each baseline (the one at its RPN NMS and the reference one) at each
    IoU threshold, with the 95 % interval: ``label``, ``x``, ``estimate``, ``low``, ``high``."""
    ev = evidence_of(runs)
    groups = ev.groups
    d_key = main_key(groups, "dynamic")
    out = []
    if not d_key:
        return out
    for b_key in dict.fromkeys([("baseline", d_key[1]), main_key(groups, "baseline")]):
        if not b_key or b_key not in groups:
            continue
        delta = ev.compare(groups[b_key], groups[d_key], dataset)
        if delta is None:
            continue
        out.append({"label": f"{config_label(d_key)} - {config_label(b_key)}", "x": list(IOU_THRESHOLDS),
                    "estimate": np.asarray(delta.per_iou), "low": np.asarray(delta.per_iou_low),
                    "high": np.asarray(delta.per_iou_high),
                    "seeds": seeds_text(delta)})
    return out


def _mean_trajectory(rs, column: str) -> tuple[np.ndarray, np.ndarray] | None:
    series = []
    for r in rs:
        d = r.dynamic
        if d is None or column not in d or not len(d):
            continue
        s = pd.to_numeric(d.set_index("iteration")[column], errors="coerce")
        series.append(s[~s.index.duplicated()])
    if not series:
        return None
    df = pd.concat(series, axis=1).sort_index()
    return df.index.to_numpy(dtype=float), df.mean(axis=1, skipna=True).to_numpy(dtype=float)


def mean_curve(runs, key: str) -> dict | None:
    """``key`` of the runs' ``metrics.jsonl`` against the iteration, mean over the runs that log it:
    ``{"iteration": [...], "values": [...], "seeds": n}``; None when none logs it."""
    frames = [r.metrics[["iteration", key]].dropna() for r in runs if r.metrics is not None and key in r.metrics]
    if not frames:
        return None
    mean = pd.concat(frames).groupby("iteration")[key].mean()
    return {"iteration": mean.index.astype(int).tolist(), "values": mean.astype(float).tolist(), "seeds": len(frames)}


def labelled_mean_curves(configurations, key: str) -> list[dict]:
    """:func:`mean_curve` of ``key`` per ``(label, run name, runs)`` of ``configurations``, as the rows
    the positives plot reads: ``{"label", "run", "iteration", "positives", "seeds"}``; a
    configuration whose runs do not log ``key`` is left out."""
    rows = []
    for label, name, runs in configurations:
        c = mean_curve(runs, key)
        if c is not None:
            rows.append({"label": label, "run": name, "iteration": c["iteration"], "positives": c["values"],
                         "seeds": c["seeds"]})
    return rows


def trajectories(runs) -> list[dict]:
    """Per dynamic configuration: ``label``, ``method``, ``max_iter`` and, for ``iou_threshold``,
    ``beta`` and ``fg_fraction``, the update iterations and the mean over seeds."""
    out = []
    for key, rs in sorted(evidence_of(runs).groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if key[0] == "baseline":
            continue
        item = {"label": config_label(key), "method": key[0], "seeds": len(rs),
                "max_iter": int(rs[0].config.max_iter or 1)}
        for col in ("iou_threshold", "beta", "fg_fraction"):
            item[col] = _mean_trajectory(rs, col)
        out.append(item)
    return out


def tight_shares(runs, iou: float = 0.9) -> list[dict]:
    """Per configuration: the share of its detections (score >= 0.5, validation split) that
    overlap a ground-truth box of their class at IoU >= ``iou`` (:func:`~.analysis.tight_share`),
    the mean over seeds and the seeds' range: ``label``, ``method``, ``nms``, ``mean``, ``low``,
    ``high``, ``seeds``."""
    out = []
    for key, rs in sorted(evidence_of(runs).groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        shares = np.array([tight_share(r, iou=iou) for r in rs], dtype=float)
        shares = shares[np.isfinite(shares)]  # a run without detections above the score has no share
        mean, low, high = (shares.mean(), shares.min(), shares.max()) if len(shares) else (np.nan,) * 3
        out.append({"label": config_label(key), "method": key[0], "nms": key[1], "mean": float(mean),
                    "low": float(low), "high": float(high), "seeds": len(rs)})
    return out


def tight_share_line(shares: list[dict], iou: float = 0.9) -> str:
    """One line for the detections figure: each configuration's share of detections at IoU >=
    ``iou`` over all validation images (mean over seeds, the seeds' range), from :func:`tight_shares`."""
    parts = [f"{s['label']} {100 * s['mean']:.1f}% ({100 * s['low']:.1f}-{100 * s['high']:.1f}%, {s['seeds']} seeds)"
             for s in shares if np.isfinite(s["mean"])]
    return f"all validation images, detections at IoU >= {iou:g}: " + "; ".join(parts) if parts else ""


def authors_trajectory() -> dict:
    """The authors' published threshold points as fractions of their schedule."""
    a = AUTHORS_TRAJECTORY
    return {"label": "authors (COCO, 90k iterations)", "source": a["source"],
            "progress": np.asarray(a["iteration"], dtype=float) / a["max_iter"],
            "iou_threshold": np.asarray(a["iou_threshold"], dtype=float)}


__all__ = ["mean_curve", "tight_shares", "tight_share_line", "config_label", "ap_curves", "seed_values", "gain_curves", "trajectories", "authors_trajectory"]
