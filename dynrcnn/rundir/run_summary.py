"""Describing runs read by :mod:`dynrcnn.rundir.runs`: names, iterations, device and scale for
captions, the IoU threshold in effect at an iteration, and ``runs_table(runs)``, the
one-line-per-run summary that ``dynrcnn runs DIR`` prints: what tells runs apart (method, RPN
NMS, seed, schedule), their results, and where a run was trained in segments whose environment
changed (:mod:`dynrcnn.rundir.history`).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dynrcnn.config import REPORTED_METRICS
from dynrcnn.presets import scale_label  # noqa: F401 (captions and notebooks read it here)
from dynrcnn.rundir import history
from dynrcnn.rundir.runs import Run
from dynrcnn.io import shown_path


def run_name(run) -> str:
    """The run's directory name (the profile's run id, e.g. ``dynamic`` or ``baseline_nms085``)."""
    return Path(run.path).name


def run_iterations(run) -> int | None:
    """Iterations trained, or the configured ``max_iter`` when nothing was logged."""
    return run.iterations or run.config.max_iter


def _device_of(env: dict) -> str:
    dev = env.get("device") or "?"
    name = env.get("device_name")
    if name and str(dev).startswith("cuda"):
        return f"{dev} ({name})"
    return str(dev)


def run_device(run) -> str:
    """The device the run trained on; a run resumed on another device names each segment's,
    in order (``cpu -> cuda:0 (NVIDIA H200)``)."""
    shown = []
    for seg in history.segments(run) or [{}]:
        d = _device_of(seg)
        if not shown or shown[-1] != d:
            shown.append(d)
    return " -> ".join(shown)


def run_numeric_path(run) -> str | None:
    """The numeric path(s) the run trained on (``bf16 (AMX)``, ``fp32``, ...; segments that
    differ joined by ``->``); ``None`` when the record does not say."""
    paths = []
    for p in history.numeric_paths(run):
        if p is not None and (not paths or paths[-1] != p):
            paths.append(p)
    return " -> ".join(paths) if paths else None


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
    """One row per run: what tells it apart (method, preset, convention, RPN NMS, seed, schedule
    ``max_iter``), iterations trained, AP, AP50, AP75, AP90, wall time, speed, the numeric path
    and, for a run trained in segments, what changed between them (``environment``)."""
    rows = []
    for r in runs:
        ev = r.eval or {}
        done = r.done or {}
        wall = done.get("wall_time_sec")
        rows.append({
            "run": shown_path(r.path), "method": r.method, "preset": r.preset, "convention": r.convention,
            "rpn_nms": rpn_nms(r), "seed": r.seed, "max_iter": r.config.max_iter,
            "iterations": r.iterations, "finished": r.finished,
            **{k: ev.get(k) for k in REPORTED_METRICS},
            "wall_min": None if wall is None else wall / 60.0,
            "img_per_s": done.get("images_per_sec"),
            "numeric_path": run_numeric_path(r), "environment": history.describe(r),
        })
    columns = ["run", "method", "preset", "convention", "rpn_nms", "seed", "max_iter", "iterations", "finished",
               *REPORTED_METRICS, "wall_min", "img_per_s", "numeric_path", "environment"]
    table = pd.DataFrame(rows, columns=columns)
    for c in (*REPORTED_METRICS, "wall_min", "img_per_s"):
        table[c] = pd.to_numeric(table[c], errors="coerce")
    return table


def format_table(table: pd.DataFrame) -> str:
    """The table as text (``dynrcnn runs``)."""
    if table.empty:
        return "(no runs)"
    return table.to_string(index=False, float_format=lambda v: f"{v:.2f}", na_rep="-")


