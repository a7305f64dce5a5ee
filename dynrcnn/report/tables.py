"""Tables the notebooks show: a run's settings, the dataset, COCO metrics, AP per IoU,
compute cost, environment, and papermill's notebook durations (all DataFrames)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from dynrcnn.config import COCO_SUMMARY, resolved_lr
from dynrcnn.report.analysis import iou_thresholds
from dynrcnn.report.profiles import step_output
from dynrcnn.rundir.run_summary import run_device, run_iterations, run_name, scale_label
from dynrcnn.rundir.runs import ENV, EVAL, PROVENANCE
from dynrcnn.io import shown_path


def config_table(cfg) -> pd.DataFrame:
    """The settings of a run that matter for the comparison, one row each."""
    lr = resolved_lr(cfg)
    rows = [
        ("preset", cfg.preset), ("scale", scale_label(cfg.preset)), ("method", cfg.method),
        ("DLA (dynamic label assignment)", cfg.use_dla), ("DSL (dynamic SmoothL1)", cfg.use_dsl),
        ("statistics convention", cfg.dynamic.convention), ("K_I / K_beta", f"{cfg.dynamic.k_i} / {cfg.dynamic.k_beta}"),
        ("update interval C (iterations)", cfg.dynamic.interval),
        ("images per update", cfg.ims_per_batch * cfg.dynamic.interval),
        ("T_init / beta_init", f"{cfg.dynamic.init_iou} / {cfg.dynamic.init_beta}"),
        ("fixed IoU threshold / beta (when off)", f"{cfg.model.fg_iou_thresh} / {cfg.model.box_beta}"),
        ("RPN NMS threshold", cfg.model.rpn_nms_thresh), ("architecture", cfg.model.arch),
        ("iterations", cfg.max_iter), ("images per iteration", cfg.ims_per_batch),
        ("learning rate (linearly scaled)", f"{lr:g} (base {cfg.base_lr:g} at {cfg.reference_ims_per_batch} img/iter)"),
        ("lr steps", list(cfg.lr_steps)), ("seed", cfg.seed), ("log_stats", cfg.log_stats),
        ("data root", shown_path(cfg.data_root)),
    ]
    return pd.DataFrame(rows, columns=["setting", "value"]).astype({"value": str})


def dataset_table(stats: dict) -> pd.DataFrame:
    """Summary of ``dynrcnn.data.datastats.dataset_statistics`` results, one column per split
    (``stats`` maps split name -> statistics dict)."""
    rows = {}
    for split, st in stats.items():
        frac = st.get("size_fractions") or {}
        rows[split] = {
            "images": st.get("images"), "instances": st.get("instances"), "classes": st.get("classes"),
            "instances / image (mean)": st.get("mean_instances_per_image"),
            "instances / image (max)": st.get("max_instances_per_image"),
            "images without instances": st.get("images_without_instances"),
            "small objects (< 32² px)": frac.get("small"), "medium objects": frac.get("medium"),
            "large objects (≥ 96² px)": frac.get("large"),
        }
    df = pd.DataFrame(rows)
    df.index.name = "statistic"
    return df.reset_index()


def eval_table(runs) -> pd.DataFrame:
    """COCO metrics of each evaluated run (AP in %), with the scale."""
    rows = []
    for r in runs:
        e = r.eval or {}
        rows.append({"run": run_name(r), "method": r.config.method,
                     **{k: e.get(k) for k in (*COCO_SUMMARY, "AP90")},
                     "images": e.get("num_images"), "evaluator": e.get("evaluator"),
                     "scale": scale_label(r.config.preset)})
    return pd.DataFrame(rows)


def ap_per_iou_table(runs) -> pd.DataFrame:
    """AP at every IoU threshold 0.50:0.05:0.95, one row per evaluated run."""
    rows = []
    for r in runs:
        if not r.eval:
            continue
        rows.append({"run": run_name(r), **{f"AP@{t:.2f}": v for t, v in zip(iou_thresholds(r), r.eval["AP_per_iou"])}})
    return pd.DataFrame(rows)


def notebook_durations(report_dir) -> dict[str, float]:
    """Papermill's recorded duration (seconds) of every executed notebook in ``report_dir``."""
    import nbformat

    out = {}
    for p in sorted(Path(report_dir).glob("*.ipynb")) if report_dir and Path(report_dir).is_dir() else []:
        try:
            nb = nbformat.read(p, as_version=4)
        except Exception:  # a notebook being written right now
            continue
        d = nb.metadata.get("papermill", {}).get("duration")
        if d is not None:
            out[p.stem] = float(d)
    return out


def compute_table(runs, durations: dict[str, float] | None = None) -> pd.DataFrame:
    """Per run: device, iterations, wall time, median s/iter, images/s (train and inference),
    peak memory (``peak memory of``: "this run" where training reset the high-water mark at the run's
    start, :func:`dynrcnn.engine.hooks.reset_peak_memory`; "its process" for runs trained before that, or
    where it could not: then a run shares the peak of whatever its process did before), and the
    papermill durations of its train/evaluate notebooks."""
    durations = durations or {}
    rows = []
    for r in runs:
        done, ev = r.done or {}, r.eval or {}
        m = r.metrics
        peak = float(m["peak_memory_mb"].max()) if m is not None and "peak_memory_mb" in m and len(m) else None
        name = run_name(r)
        wall = done.get("wall_time_sec")
        rows.append({
            "run": name, "method": r.config.method, "preset": r.config.preset,
            "device": run_device(r), "processes": (r.env or {}).get("num_processes"),
            "threads": (r.env or {}).get("torch_threads"),
            "iterations": run_iterations(r), "images/iter": r.config.ims_per_batch,
            "train wall (min)": None if wall is None else wall / 60,
            "s/iter (median)": done.get("sec_per_iter_median"),
            "train img/s": done.get("images_per_sec"),
            "eval img/s": ev.get("images_per_sec"),
            "peak memory (MB)": peak,
            "peak memory of": None if peak is None else
            ("this run" if done.get("peak_memory_scope") == "run" else "its process"),
            "train notebook (min)": durations.get(step_output("train", name), float("nan")) / 60,
            "evaluate notebook (min)": durations.get(step_output("evaluate", name), float("nan")) / 60,
        })
    return pd.DataFrame(rows)


def environment_table(runs) -> pd.DataFrame:
    """Package versions and hardware: from each run's env.json, plus the report's own tools."""
    import platform
    from importlib.metadata import version

    keys = ("python", "torch", "torchvision", "numpy", "device", "device_name", "num_processes",
            "torch_threads", "cpu_count", "hostname", "platform", "git_commit")
    rows = []
    seen = set()
    for r in runs:
        env = r.env or {}
        sig = tuple(str(env.get(k)) for k in keys if k not in ("torch_threads",))
        if sig in seen:
            continue
        seen.add(sig)
        rows.append({"source": f"run {run_name(r)} ({ENV})", **{k: env.get(k) for k in keys}})
    tools = {"source": "report pipeline (this process)", "python": platform.python_version(),
             "platform": platform.platform(), "cpu_count": os.cpu_count()}
    for pkg in ("papermill", "nbconvert", "matplotlib", "pandas", "pycocotools"):
        try:
            tools[pkg] = version(pkg)
        except Exception:
            tools[pkg] = None
    rows.append(tools)
    return pd.DataFrame(rows)


def json_value(v):
    """A table cell as JSON: numpy scalars as Python numbers, NaN/inf as None."""
    if isinstance(v, (np.floating, np.integer)):
        v = v.item()
    return None if isinstance(v, float) and not math.isfinite(v) else v


def json_records(df: pd.DataFrame) -> list[dict]:
    """A table's rows for a ``results.json`` (:func:`json_value` per cell)."""
    return [{k: json_value(v) for k, v in row.items()} for row in df.to_dict("records")]


def styled(df: pd.DataFrame, digits: int = 2):
    """A DataFrame styled for notebooks/HTML: floats to ``digits`` decimals, NaN as '-', text
    left-aligned (a sentence right-aligned in its cell reads badly; numbers stay right-aligned)."""
    fmt = {c: (lambda v, d=digits: "-" if v is None or (isinstance(v, float) and not math.isfinite(v))
               else f"{v:.{d}f}") for c in df.columns if pd.api.types.is_float_dtype(df[c])}
    text = [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]
    return df.style.format(fmt, na_rep="-").hide(axis="index").set_properties(subset=text, **{"text-align": "left"})


def published_weights_rows(run_dirs) -> list[dict]:
    """One row per converted run directory that has been evaluated: the published model, its
    source file and SHA-256, the published AP and our AP, AP50, AP75, AP_S/M/L, AP90 and AP at
    every IoU 0.50:0.05:0.95 (``AP_per_iou``), and ``delta_ap`` (ours - published).
    Run directories without ``provenance.json`` or ``eval.json`` are skipped."""
    rows = []
    for run in map(Path, run_dirs):
        try:
            prov = json.loads((run / PROVENANCE).read_text())
            ev = json.loads((run / EVAL).read_text())
        except (OSError, ValueError):
            continue
        row = {"run": shown_path(run), "model": prov.get("model"), "label": prov.get("label"),
               "source_file": prov.get("source_file"), "sha256": prov.get("sha256"),
               "mapping_version": prov.get("mapping_version"), "published_ap": prov.get("published_ap"),
               "split": ev.get("split"), "num_images": ev.get("num_images")}
        for k in (*COCO_SUMMARY, "AP90", "AP_per_iou", "iou_thresholds"):
            row[k] = ev.get(k)
        pub = prov.get("published_ap")
        row["delta_ap"] = None if pub is None or ev.get("AP") is None else ev["AP"] - pub
        rows.append(row)
    return rows


__all__ = ["published_weights_rows", "json_value", "json_records", "config_table", "dataset_table", "eval_table", "ap_per_iou_table", "notebook_durations",
           "compute_table", "environment_table", "styled"]
