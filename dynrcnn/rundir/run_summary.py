"""Describing runs read by :mod:`dynrcnn.rundir.runs`: names, iterations, device and scale for
captions, the IoU threshold in effect at an iteration, and ``runs_table(runs)``, the
one-line-per-run summary that ``dynrcnn runs DIR`` prints.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dynrcnn.config import REPORTED_METRICS
from dynrcnn.presets import scale_label  # noqa: F401 (captions and notebooks read it here)
from dynrcnn.rundir.runs import Run
from dynrcnn.io import shown_path


def run_name(run) -> str:
    """The run's directory name (the profile's run id, e.g. ``dynamic`` or ``baseline_nms085``)."""
    return Path(run.path).name


def run_iterations(run) -> int | None:
    """Iterations trained, or the configured ``max_iter`` when nothing was logged."""
    return run.iterations or run.config.max_iter


def run_device(run) -> str:
    env = run.env or {}
    dev = env.get("device") or "?"
    name = env.get("device_name")
    if name and str(dev).startswith("cuda"):
        return f"{dev} ({name})"
    return str(dev)


def rpn_nms(run) -> float | None:
    return run.config.model.rpn_nms_thresh


def threshold_at(run, iteration: int) -> tuple[float, float]:
    """``(iou_threshold, beta)`` in effect during ``iteration`` (last update before it)."""
    d = run.dynamic
    if d is None or not len(d):
        return float("nan"), float("nan")
    rows = d[d["iteration"] < iteration]
    row = rows.iloc[-1] if len(rows) else d.iloc[0]
    return float(row["iou_threshold"]), float(row["beta"])


def runs_table(runs: list[Run]) -> pd.DataFrame:
    """One row per run: method, preset, seed, iterations, AP, AP50, AP75, AP90, wall time."""
    rows = []
    for r in runs:
        ev = r.eval or {}
        done = r.done or {}
        wall = done.get("wall_time_sec")
        rows.append({
            "run": shown_path(r.path), "method": r.method, "preset": r.preset, "convention": r.convention,
            "seed": r.seed, "iterations": r.iterations, "finished": r.finished,
            **{k: ev.get(k) for k in REPORTED_METRICS},
            "wall_min": None if wall is None else wall / 60.0,
            "img_per_s": done.get("images_per_sec"),
        })
    columns = ["run", "method", "preset", "convention", "seed", "iterations", "finished", *REPORTED_METRICS,
               "wall_min", "img_per_s"]
    table = pd.DataFrame(rows, columns=columns)
    for c in (*REPORTED_METRICS, "wall_min", "img_per_s"):
        table[c] = pd.to_numeric(table[c], errors="coerce")
    return table


def format_table(table: pd.DataFrame) -> str:
    """The table as text (``dynrcnn runs``)."""
    if table.empty:
        return "(no runs)"
    return table.to_string(index=False, float_format=lambda v: f"{v:.2f}", na_rep="-")


