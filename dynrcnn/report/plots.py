"""Figures of the report, drawn from run directories (never from hard-coded numbers).

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot (so it works
under any backend, in threads and in batch), and every figure carries a caption naming the
run(s) it came from: preset, method, seed, iterations and device. :func:`save_figure` writes
a PNG; the notebooks display the written file.

Runs are :class:`dynrcnn.rundir.runs.Run` objects (``dynrcnn.rundir.runs.load_run``/``find_runs``). This
module draws only: numbers that need analysis (e.g. recomputed dynamic updates) are passed in
by the caller (the notebooks, from :mod:`dynrcnn.report`).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.patches  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from dynrcnn.rundir import runs as rundir  # noqa: E402
from dynrcnn.config import IOU_THRESHOLDS, METHOD_NAMES  # noqa: E402
from dynrcnn.data.datastats import dataset_statistics  # noqa: E402
from dynrcnn.reference import BASELINE_RPN_NMS  # noqa: E402
from dynrcnn.report.analysis import share_at_least  # noqa: E402
from dynrcnn.rundir.run_summary import rpn_nms, run_device, run_iterations, run_name, scale_label, threshold_at  # noqa: E402

LOSS_KEYS = ("loss", *rundir.LOSS_KEYS)
METHOD_COLORS = {"baseline": "tab:gray", "dla": "tab:blue", "dsl": "tab:green", "dynamic": "tab:red"}
METHOD_LABELS = {**METHOD_NAMES, "dynamic": f"{METHOD_NAMES['dynamic']} (Dynamic R-CNN)"}


# --------------------------------------------------------------------------------------------
# run descriptions


def caption(run) -> str:
    """``run <name>: preset P, method M, seed S, N iterations, device D``."""
    conv = run.config.dynamic.convention
    extra = f", convention {conv}" if conv and run.config.method != "baseline" else ""
    return (f"run {run_name(run)}: preset {run.config.preset}, method {run.config.method}, "
            f"seed {run.config.seed}, {run_iterations(run)} iterations, device {run_device(run)}, "
            f"RPN NMS {rpn_nms(run)}{extra} [{scale_label(run.config.preset)}]")


def runs_caption(runs) -> str:
    """One caption for several runs: shared fields once, then the run ids."""
    runs = list(runs)
    if not runs:
        return "no runs"
    fields = {
        "preset": [r.config.preset for r in runs],
        "seed": [r.config.seed for r in runs],
        "iterations": [run_iterations(r) for r in runs],
        "device": [run_device(r) for r in runs],
    }
    parts = []
    for k, vals in fields.items():
        uniq = list(dict.fromkeys(vals))
        parts.append(f"{k} {uniq[0]}" if len(uniq) == 1 else f"{k} " + "/".join(map(str, vals)))
    names = ", ".join(f"{run_name(r)} ({r.config.method})" for r in runs)
    return f"runs {names}; " + ", ".join(parts) + f" [{scale_label(runs[0].config.preset)}]"


FOOTER_PT = 9  # provenance footer font size: legible when the PNG is shown at its size


def _wrap(text: str, width: int) -> list[str]:
    """``text`` in lines of at most ``width`` characters, broken at spaces; a word longer than a
    line (a list of 35 seeds joined by '/') is cut into pieces that fit."""
    words, lines, line = [], [], ""
    for w in text.split(" "):
        words += [w[i:i + width] for i in range(0, len(w), width)] or [w]
    for w in words:
        if line and len(line) + 1 + len(w) > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    return lines + [line]


def _finish(fig: Figure, title: str, cap: str) -> Figure:
    """Title, and the provenance caption as a footer inside the canvas: wrapped to the figure's
    width at :data:`FOOTER_PT` (about 0.55 em per character), with room made for it below the axes."""
    fig.suptitle(title, fontsize=12)
    width = max(20, int(fig.get_figwidth() * 72 / (FOOTER_PT * 0.55)))
    lines = _wrap(cap, width)
    fig.text(0.5, 0.005, "\n".join(lines), ha="center", va="bottom", fontsize=FOOTER_PT, color="0.25")
    footer = (len(lines) * FOOTER_PT * 1.3 + 8) / 72 / fig.get_figheight()
    fig.tight_layout(rect=(0, min(0.45, footer), 1, 0.95))
    return fig


def save_figure(fig: Figure, path) -> Path:
    """Write ``fig`` as PNG to ``path`` (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _color(run, i: int = 0):
    return _group_color(run.config.method, rpn_nms(run), i)


def _label(run) -> str:
    m = run.config.method
    lab = METHOD_LABELS.get(m, m)
    name = run_name(run)
    return lab if name == m else f"{lab} [{name}]"


# --------------------------------------------------------------------------------------------
# the method


def smooth_l1_figure(betas=(1.0, 0.5, 0.25, 0.11)) -> Figure:
    """SmoothL1 loss and its gradient for several beta (``dynrcnn.modeling.dynamic_head.smooth_l1``).

    A smaller beta makes the loss L1-like sooner: the gradient of small errors is larger
    (``x / beta``), which is what DSL exploits as proposals get better.
    """
    import torch

    from dynrcnn.modeling.dynamic_head import smooth_l1

    x = torch.linspace(-2.0, 2.0, 801, dtype=torch.float64, requires_grad=True)
    fig = Figure(figsize=(10, 4))
    ax1, ax2 = fig.subplots(1, 2)
    for i, beta in enumerate(betas):
        y = smooth_l1(x, float(beta))
        (g,) = torch.autograd.grad(y.sum(), x)
        xs = x.detach().numpy()
        ax1.plot(xs, y.detach().numpy(), color=f"C{i}", label=f"beta = {beta:g}")
        ax2.plot(xs, g.numpy(), color=f"C{i}", label=f"beta = {beta:g}")
    ax1.set(xlabel="regression error x", ylabel="SmoothL1(x)", title="loss")
    ax2.set(xlabel="regression error x", ylabel="d SmoothL1 / dx", title="gradient (autograd)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _finish(fig, "SmoothL1: smaller beta gives small errors a larger gradient",
                   "computed with dynrcnn.modeling.dynamic_head.smooth_l1 and torch.autograd (no training run)")


def pick_iterations(available, n: int) -> list[int]:
    """``n`` iterations spread evenly over ``available`` (first and last included)."""
    available = sorted(set(int(a) for a in available))
    if len(available) <= n:
        return available
    idx = np.unique(np.round(np.linspace(0, len(available) - 1, n)).astype(int))
    return [available[i] for i in idx]


def proposal_iou_figure(run, n_panels: int = 4) -> Figure:
    """Histogram of the proposals' max IoU with ground truth at several iterations of a run,
    with the R-CNN foreground threshold in effect drawn on it (from ``proposal_ious.jsonl``
    and ``dynamic.jsonl``)."""
    records = {int(r["iteration"]): r for r in (run.proposal_ious or [])}
    its = pick_iterations(records, n_panels)
    if not its:
        raise ValueError(f"run {run.path} has no {rundir.PROPOSAL_IOUS} records (train with log_stats=true)")
    fig = Figure(figsize=(3.2 * len(its), 3.6))
    axes = np.atleast_1d(fig.subplots(1, len(its), sharey=True))
    for ax, it in zip(axes, its):
        rec = records[it]
        edges = np.asarray(rec["bin_edges"], dtype=float)
        counts = np.asarray(rec["counts"], dtype=float)
        frac = counts / max(counts.sum(), 1.0)
        ax.bar(edges[:-1], frac, width=np.diff(edges), align="edge", color="tab:blue", alpha=0.7,
               edgecolor="white")
        thr, _ = threshold_at(run, it)
        above = share_at_least(rec, thr)
        ax.axvline(thr, color="tab:red", lw=2, label=f"threshold {thr:.3f}")
        ax.axvline(0.5, color="0.3", lw=1, ls="--", label="fixed 0.5")
        ax.set_yscale("log")
        ax.set(title=f"iteration {it}", xlabel="max IoU of proposal with GT")
        ax.text(0.98, 0.97, f"{100 * above:.1f}% >= thr", transform=ax.transAxes, ha="right", va="top",
                fontsize=8)
        ax.legend(fontsize=7, loc="center right")
    axes[0].set_ylabel("fraction of proposals (log)")
    return _finish(fig, "Proposal quality during training and the foreground threshold", caption(run))


def stats_figure(run, recomputed=None) -> Figure:
    """Per-iteration statistics (``stats.jsonl``) and the threshold/beta they produce
    (``dynamic.jsonl``), with ``recomputed`` (the updates recomputed from the statistics,
    :func:`dynrcnn.report.recompute_updates`) overlaid as a check when given."""
    stats = run.stats
    if stats is None or not len(stats):
        raise ValueError(f"run {run.path} has no {rundir.STATS} (train with log_stats=true)")
    re = recomputed if recomputed is not None else []
    d = run.dynamic
    last = run_iterations(run) or int(stats["iteration"].max())
    fig = Figure(figsize=(11, 4))
    ax1, ax2 = fig.subplots(1, 2)
    for ax, stat, key, name in ((ax1, "iou_stat", "iou_threshold", "IoU threshold"),
                                (ax2, "error_stat", "beta", "beta")):
        s = stats.dropna(subset=[stat]) if stat in stats else stats.iloc[0:0]
        ax.plot(s["iteration"], s[stat], ".", ms=3, color="0.6", label=f"per-iteration {stat}")
        its = list(d["iteration"]) + [last]
        vals = list(d[key]) + [d[key].iloc[-1]]
        ax.step(its, vals, where="post", color="tab:red", lw=2, label=f"{name} (logged by the head)")
        if len(re):
            ax.plot(re["iteration"], re[f"{key}_recomputed"], "x", color="black", ms=6,
                    label=f"{name} recomputed from stats")
        ax.set(xlabel="iteration", ylabel=name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax1.set_title("T = max(T_init, mean of IoU statistics)")
    ax2.set_title("beta = min(beta_init, median of error statistics)")
    return _finish(fig, "How the statistics turn into threshold and beta", caption(run))


# --------------------------------------------------------------------------------------------
# results across runs


def trend_figure(runs) -> Figure:
    """IoU threshold and beta against iteration: dynamic methods vs the baseline's fixed values
    (the paper's trend figure)."""
    runs = list(runs)
    fig = Figure(figsize=(11, 4))
    ax1, ax2 = fig.subplots(1, 2)
    for i, run in enumerate(runs):
        d = run.dynamic
        if d is None or not len(d):
            continue
        last = run_iterations(run) or int(d["iteration"].max())
        fixed = run.config.method == "baseline"
        for ax, key in ((ax1, "iou_threshold"), (ax2, "beta")):
            its = list(d["iteration"]) + [last]
            vals = list(d[key]) + [d[key].iloc[-1]]
            ax.step(its, vals, where="post", color=_color(run, i), lw=1.5 if fixed else 2,
                    ls="--" if fixed else "-", label=_label(run) + (" (fixed)" if fixed else ""))
    ax1.set(xlabel="iteration", ylabel="R-CNN IoU threshold", title="label assignment threshold")
    ax2.set(xlabel="iteration", ylabel="SmoothL1 beta", title="regression loss beta")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _finish(fig, "Dynamic threshold and beta during training", runs_caption(runs))


def losses_figure(runs) -> Figure:
    """Training losses against iteration (``metrics.jsonl``), one line per run."""
    runs = list(runs)
    keys = [k for k in LOSS_KEYS if any(r.metrics is not None and k in r.metrics for r in runs)]
    keys = keys or ["loss"]
    ncol = min(3, len(keys))
    nrow = math.ceil(len(keys) / ncol)
    fig = Figure(figsize=(4 * ncol, 3.2 * nrow))
    axes = np.atleast_1d(fig.subplots(nrow, ncol)).ravel()
    for ax, key in zip(axes, keys):
        for i, run in enumerate(runs):
            m = run.metrics
            if m is None or key not in m:
                continue
            ax.plot(m["iteration"], m[key], color=_color(run, i), label=_label(run))
        ax.set(title=key, xlabel="iteration")
        ax.grid(alpha=0.3)
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    if len(keys) < len(axes):  # the legend in the free panel, where it covers no curve
        spare = axes[len(keys)]
        spare.set_visible(True)
        spare.axis("off")
        spare.legend(handles, labels, loc="center", fontsize=8, frameon=False)
    else:
        fig.legend(handles, labels, loc="upper right", fontsize=7, frameon=False)
    return _finish(fig, "Training losses (mean over each logging interval)", runs_caption(runs))


def _group_color(method: str, nms, i: int = 0):
    """A configuration's colour: the method's, black for a baseline at another RPN NMS."""
    if method == "baseline" and nms not in (None, BASELINE_RPN_NMS):
        return "black"
    return METHOD_COLORS.get(method, f"C{i}")


def tight_share_figure(shares: list[dict], cap: str, iou: float = 0.9) -> Figure:
    """One bar per configuration: the share of its detections at IoU >= ``iou`` with their
    ground truth (mean over seeds; whiskers: the seeds' range). ``shares`` come from
    :func:`dynrcnn.report.curves.tight_shares`."""
    fig = Figure(figsize=(max(6.0, 1.6 * len(shares)), 3.8))
    ax = fig.subplots()
    for i, s in enumerate(shares):
        ax.bar(i, 100 * s["mean"], color=_group_color(s["method"], s["nms"], i), alpha=0.85)
        ax.errorbar(i, 100 * s["mean"], yerr=[[100 * (s["mean"] - s["low"])], [100 * (s["high"] - s["mean"])]],
                    color="k", capsize=3, lw=1)
        ax.text(i, 100 * s["high"] + 0.5, f"{100 * s['mean']:.1f}%", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(shares)), [f"{s['label'].replace(' (', chr(10) + '(')}\n{s['seeds']} seed(s)"
                                       for s in shares], fontsize=7)
    ax.set_ylabel(f"detections at IoU >= {iou:g} (%)")
    highs = [s["high"] for s in shares if math.isfinite(s["high"])]
    if highs:  # room for the labels above the whiskers
        ax.set_ylim(0, 115 * max(highs) + 1)
    ax.grid(axis="y", alpha=0.3)
    return _finish(fig, f"Detections (score >= 0.5) at IoU >= {iou:g} with their ground truth", cap)


def seed_strip_figure(configs: list[dict], cap: str) -> Figure:
    """One panel per metric, one column per configuration: a dot per training seed (spread
    sideways so that equal values stay visible) and a bar at the mean. ``configs`` come from
    :func:`dynrcnn.report.curves.seed_values`."""
    metrics = list(configs[0]["values"]) if configs else []
    fig = Figure(figsize=(max(8.0, 1.1 * len(configs) * max(1, len(metrics))), 4.6))
    axes = np.atleast_1d(fig.subplots(1, max(1, len(metrics))))
    rng = np.random.default_rng(0)
    for ax, m in zip(axes, metrics):
        for i, c in enumerate(configs):
            vals = np.array(list(c["values"][m].values()), dtype=float)
            col = _group_color(c["method"], c["nms"], i)
            ax.scatter(i + rng.uniform(-0.15, 0.15, len(vals)), vals, s=18, color=col, alpha=0.8, zorder=3)
            ax.hlines(vals.mean(), i - 0.3, i + 0.3, color="k", lw=2, zorder=4)
        ax.set_xticks(range(len(configs)), [f"{c['label'].split(' (')[0]}\n{c['nms']:g}\nn={len(c['values'][m])}"
                                            for c in configs], fontsize=9)
        ax.set(ylabel=f"{m} (%)", title=f"{m}: a dot per seed, bar = mean")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_xlabel("configuration, RPN NMS, seeds", fontsize=9)
    return _finish(fig, "Seed by seed: the spread the intervals are built from", cap)


def ap_gain_figure(curves: list[dict], gains: list[dict], cap: str) -> Figure:
    """Left: AP at each IoU threshold per configuration (mean over seeds, band: the seeds'
    range). Right: the AP difference at each threshold with its 95 % interval (band).
    ``curves``/``gains`` come from :mod:`dynrcnn.report.curves`."""
    fig = Figure(figsize=(11, 4.2))
    ax1, ax2 = fig.subplots(1, 2)
    for i, c in enumerate(curves):
        col = _group_color(c["method"], c["nms"], i)
        ax1.plot(c["x"], c["mean"], "o-", color=col, ms=3.5, label=f"{c['label']}, {c['seeds']} seed(s)")
        if c["seeds"] > 1:
            ax1.fill_between(c["x"], c["low"], c["high"], color=col, alpha=0.15)
    for i, g in enumerate(gains):
        col = f"C{i + 3}"
        ax2.plot(g["x"], g["estimate"], "o-", color=col, ms=3.5, label=f"{g['label']} ({g['seeds']})")
        ax2.fill_between(g["x"], g["low"], g["high"], color=col, alpha=0.2)
    ax2.axhline(0, color="0.3", lw=1)
    ax1.set(xlabel="IoU threshold", ylabel="AP (%)", title="AP at each IoU threshold (band: range over seeds)")
    ax2.set(xlabel="IoU threshold", ylabel="difference in AP (points)",
            title="Dynamic R-CNN minus baseline (band: 95% interval)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5)
    return _finish(fig, "Where the gain is: AP against IoU threshold", cap)


def trajectory_figure(trajs: list[dict], authors: dict | None, cap: str) -> Figure:
    """IoU threshold, SmoothL1 beta and the share of proposals at or above the threshold in use,
    against training progress (fraction of the schedule, log scale), mean over seeds per
    configuration; the authors' published threshold points for comparison."""
    fig = Figure(figsize=(13, 4))
    axes = fig.subplots(1, 3)
    for i, t in enumerate(trajs):
        col = METHOD_COLORS.get(t["method"], f"C{i}")
        for ax, key in zip(axes, ("iou_threshold", "beta", "fg_fraction")):
            if t.get(key) is None:
                continue
            it, val = t[key]
            ok = np.isfinite(val) & (it > 0)
            if ok.any():
                ax.step(it[ok] / t["max_iter"], val[ok], where="post", color=col, lw=2,
                        label=f"{t['label']}, mean of {t['seeds']} seed(s)")
    if authors is not None:
        axes[0].plot(authors["progress"], authors["iou_threshold"], "k*", ms=9, label=authors["label"])
    axes[0].axhline(0.5, color="0.4", ls="--", lw=1, label="baseline's fixed 0.5")
    axes[0].set(ylabel="R-CNN IoU threshold", title="label assignment threshold")
    axes[1].set(ylabel="SmoothL1 beta", title="regression loss beta")
    axes[2].set(ylabel="share of RPN proposals", title="proposals at or above the threshold")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("training progress (fraction of the schedule, log scale)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6.5)
    return _finish(fig, "Dynamic threshold and beta against training progress, with the authors' trajectory", cap)


IMPLEMENTATION_STYLES = {"dynrcnn": ("C0", "-"), "mmdet": ("C3", "--")}  # colour, line style


def peer_trajectory_figure(trajs: list[dict], labels: dict, cap: str) -> Figure:
    """IoU threshold and SmoothL1 beta after every update, one line per seed and implementation
    (``trajs`` from :func:`dynrcnn.report.peer.trajectories`)."""
    fig = Figure(figsize=(12, 4.2))
    axes = fig.subplots(1, 2)
    seen = set()
    for t in trajs:
        col, ls = IMPLEMENTATION_STYLES.get(t["implementation"], ("C7", ":"))
        label = None if t["implementation"] in seen else labels.get(t["implementation"], t["implementation"])
        seen.add(t["implementation"])
        for ax, key in zip(axes, ("iou_threshold", "beta")):
            ax.step(t["iteration"], t[key], where="post", color=col, ls=ls, lw=1.5, alpha=0.8,
                    label=f"{label}, one line per seed" if label else None)
    axes[0].axhline(0.5, color="0.5", ls=":", lw=1)
    axes[0].set(ylabel="R-CNN IoU threshold", title="label assignment threshold")
    axes[1].set(ylabel="SmoothL1 beta", title="regression loss beta")
    for ax in axes:
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    return _finish(fig, "Dynamic R-CNN's threshold and beta: dynrcnn and MMDetection on the same data", cap)


def peer_gain_figure(table, labels: dict, cap: str) -> Figure:
    """Each implementation's Dynamic - Faster gain per metric with its 95 % interval
    (``table`` from :func:`dynrcnn.report.peer.agreement`)."""
    fig = Figure(figsize=(8, 4.2))
    ax = fig.subplots()
    x = np.arange(len(table))
    for k, impl in enumerate(("dynrcnn", "mmdet")):
        col, _ = IMPLEMENTATION_STYLES[impl]
        est = table[f"{impl} gain"].to_numpy(float)
        err = np.vstack([est - table[f"{impl} low"].to_numpy(float), table[f"{impl} high"].to_numpy(float) - est])
        ax.errorbar(x + (k - 0.5) * 0.25, est, yerr=err, fmt="o", color=col, capsize=4, label=labels.get(impl, impl))
    ax.axhline(0, color="0.4", lw=1)
    ax.set_xticks(x, list(table["metric"]))
    ax.set(ylabel="Dynamic R-CNN - Faster R-CNN (points)", title="gain with its 95 % interval")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="upper left")
    return _finish(fig, "The gain of Dynamic R-CNN in each implementation", cap)


def control_figure(table, x: str, schedule: str, cap: str) -> Figure:
    """AP and AP90 against a fixed setting (``x``: ``threshold`` or ``beta``), seeds' mean with
    their range, with the schedule's (``schedule``: DLA or DSL) mean and range drawn across
    (``table``: one benchmark's rows of :func:`dynrcnn.report.controls.threshold_table` / ``beta_table``)."""
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    fixed = table[table["schedule"] == "fixed"].sort_values(x)
    sched = table[table["schedule"] == schedule]
    for ax, m in zip(axes, ("AP", "AP90")):
        xs = fixed[x].to_numpy(float)
        est = fixed[m].to_numpy(float)
        err = np.vstack([est - fixed[f"{m} min"].to_numpy(float), fixed[f"{m} max"].to_numpy(float) - est])
        ax.errorbar(xs, est, yerr=err, fmt="o-", color="tab:gray", capsize=4, label=f"fixed {x} (seeds' mean, range)")
        if len(sched):
            r = sched.iloc[0]
            ax.axhline(r[m], color="tab:red", lw=1.5, label=f"{schedule} ({int(r['seeds'])} seeds' mean, range)")
            ax.axhspan(r[f"{m} min"], r[f"{m} max"], color="tab:red", alpha=0.15)
        ax.set(xlabel=f"fixed {x} from iteration 0", ylabel=m, title=m)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _finish(fig, f"A fixed {x} against {schedule}", cap)


def schedule_figure(table, cap: str) -> Figure:
    """Dynamic R-CNN's gain over the baseline (both at RPN NMS 0.85) against the schedule's
    length, AP and AP90, one line per benchmark with the seed-level 95 % intervals
    (``table``: :func:`dynrcnn.report.controls.schedule_table`)."""
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    for ax, m in zip(axes, ("AP", "AP90")):
        for i, (bench, rows) in enumerate(table.groupby("benchmark", sort=False)):
            xs = rows["iterations"].to_numpy(float) * (1 + 0.03 * i)  # side by side, not on top
            est = rows[f"{m} gain"].to_numpy(float)
            err = np.vstack([est - rows[f"{m} low"].to_numpy(float), rows[f"{m} high"].to_numpy(float) - est])
            seeds = f"{int(rows['seeds'].min())}-{int(rows['seeds'].max())}"
            ax.errorbar(xs, est, yerr=err, fmt="o-", capsize=4, color=f"C{i}", label=f"{bench} ({seeds} seeds)")
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xscale("log")
        ax.set_xticks(sorted(table["iterations"].unique()), [str(int(v)) for v in sorted(table["iterations"].unique())])
        ax.set(xlabel="fine-tune length (iterations)", ylabel=f"{m}: Dynamic R-CNN - baseline", title=m)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _finish(fig, "The gain against the schedule's length", cap)


def positives_figure(curves: list[dict], cap: str) -> Figure:
    """Positive proposals per image (before sampling) over training, per fixed threshold and DLA
    (``curves`` from :func:`dynrcnn.report.controls.positives_curves`)."""
    fig = Figure(figsize=(8, 4.2))
    ax = fig.subplots()
    fixed = [c for c in curves if c["label"] != "DLA"]
    for i, c in enumerate(curves):
        style = dict(color="black", lw=2, ls="--") if c["label"] == "DLA" else dict(color=f"C{fixed.index(c)}")
        ax.plot(c["iteration"], c["positives"], label=f"{c['label']} ({c['seeds']} seeds)", **style)
    ax.set(xlabel="iteration", ylabel="positives per image (proposals + ground truth)",
           title="positives at the training threshold")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _finish(fig, "How many positives each threshold leaves", cap)


def ap_per_iou_run_figure(run) -> Figure:
    """AP at each IoU threshold of one run (bars)."""
    e = run.eval
    x = np.asarray(e.get("iou_thresholds") or IOU_THRESHOLDS, dtype=float)
    y = np.asarray(e["AP_per_iou"], dtype=float)
    fig = Figure(figsize=(7, 3.6))
    ax = fig.subplots()
    ax.bar([f"{t:.2f}" for t in x], y, color=_color(run))
    for xi, yi in enumerate(y):
        ax.text(xi, yi, f"{yi:.1f}", ha="center", va="bottom", fontsize=7)
    ax.set(xlabel="IoU threshold", ylabel="AP (%)")
    ax.grid(alpha=0.3, axis="y")
    return _finish(fig, f"AP at each IoU threshold: AP {e['AP']:.1f}, AP50 {e['AP50']:.1f}, "
                        f"AP90 {e['AP90']:.1f}", caption(run))


# --------------------------------------------------------------------------------------------
# detections


# --------------------------------------------------------------------------------------------
# the data (notebook 01)


def plot_box_size_histogram(source, ax=None, bins: int = 40):
    """Histogram of sqrt(area) of the objects with COCO's 32 / 96 px limits; returns the Figure."""
    stats = source if isinstance(source, dict) and "areas" in source else dataset_statistics(source)
    if ax is None:
        fig = Figure(figsize=(5, 3.2), dpi=100)
        ax = fig.add_subplot(1, 1, 1)
    else:
        fig = ax.figure
    side = np.sqrt(stats["areas"])
    if side.size:
        ax.hist(side, bins=np.geomspace(max(1.0, side.min()), side.max() + 1, bins), color="#4c72b0")
        ax.set_xscale("log")
    for x, lab in ((32, "32 px"), (96, "96 px")):
        ax.axvline(x, color="k", ls="--", lw=1)
        ax.text(x, 0.97, f" {lab}", transform=ax.get_xaxis_transform(), va="top", fontsize=8)
    s = stats["sizes"]
    ax.set_title(f"object sizes: small {s['small']}, medium {s['medium']}, large {s['large']}", fontsize=9)
    ax.set_xlabel("sqrt(object area), pixels")
    ax.set_ylabel("objects")
    fig.tight_layout()
    return fig


def draw_samples(dataset, n: int = 8, seed: int = 0, cols: int = 4, figure=None, size: float = 2.4):
    """Draw ``n`` random images of a :class:`~dynrcnn.data.datasets.CocoDetection` with their boxes and
    class names; returns the matplotlib Figure (never shown)."""
    n = min(n, len(dataset))
    rng = np.random.default_rng(seed)
    picks = sorted(rng.choice(len(dataset), size=n, replace=False).tolist()) if n else []
    rows = max(1, (n + cols - 1) // cols)
    fig = figure if figure is not None else Figure(figsize=(cols * size, rows * size), dpi=100)
    colours = ["#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00", "#ffff33", "#a65628", "#f781bf"]
    for k, idx in enumerate(picks):
        ax = fig.add_subplot(rows, cols, k + 1)
        image, target = dataset[idx]
        ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
        for box, label in zip(target["boxes"].tolist(), target["labels"].tolist()):
            x0, y0, x1, y1 = box
            c = colours[(label - 1) % len(colours)]
            ax.add_patch(matplotlib.patches.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec=c, lw=1.2))
            ax.text(x0, y0 - 1, dataset.class_names[label - 1], color="white", fontsize=6, va="bottom",
                    bbox={"facecolor": c, "alpha": 0.8, "pad": 0.5, "lw": 0})
        ax.set_title(f"image {target['image_id']}", fontsize=7)
        ax.axis("off")
    fig.tight_layout(pad=0.3)
    return fig


def save_sample_figure(root, path, split: str = "val", n: int = 8, seed: int = 0, dpi: int = 80,
                       colours: int | None = 256) -> Path:
    """Draw :func:`draw_samples` for ``root``'s ``split`` and save it as a PNG at ``path``.

    ``colours``: quantise to a palette of this many colours to keep the file small (None: keep
    full colour).
    """
    import io

    from PIL import Image

    from dynrcnn.data.datasets import load_dataset

    ds = load_dataset(root, split, train=False)
    fig = draw_samples(ds, n=n, seed=seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    buf.seek(0)
    with Image.open(buf) as im:
        im = im.convert("RGB")
        if colours:
            im = im.quantize(colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        im.save(path, format="PNG", optimize=True)
    return path


def pick_images(file_names: dict, n: int) -> list:
    """The images a detections figure shows, by a rule fixed before looking at any detection
    (so a picture cannot be chosen for what it shows): the validation images sorted by file
    name, taken at ``n`` evenly spaced positions (never the first or the last). ``file_names``:
    image id -> file name."""
    order = sorted(file_names, key=lambda i: file_names[i])
    if len(order) <= n:
        return order
    pos = np.linspace(0, len(order) - 1, n + 2)[1:-1].round().astype(int)
    return [order[i] for i in pos]


def detections_figure(runs, data_root=None, n: int = 4, score_thresh: float = 0.5, seed: int = 0,
                      labels=None, tight_iou: float = 0.9, summary: str = "") -> Figure:
    """Ground truth (left) next to the detections with score >= ``score_thresh`` of one run, or
    of each of several runs on the same ``n`` validation images (``detections.json``, images
    read from the first run's data root). A box drawn solid overlaps a ground-truth box of its
    class at IoU >= ``tight_iou`` (AP90's threshold), a dashed one does not; each panel's title
    counts both, so where Dynamic R-CNN localises better shows as more solid boxes. The images
    are chosen by :func:`pick_images` and titled by their file names; ``summary`` (the share of
    tight detections over *all* validation images, :func:`dynrcnn.report.curves.tight_share_line`)
    heads the figure, so a few images cannot stand for the whole. ``seed`` is unused (kept for
    callers)."""
    from PIL import Image

    from dynrcnn.data.datasets import annotation_file, load_coco
    from dynrcnn.evaluation.coco_eval import tight_flags

    runs = list(runs) if isinstance(runs, (list, tuple)) else [runs]
    labels = list(labels) if labels is not None else [run_name(r) for r in runs]
    first = runs[0]
    data_root = Path(data_root or first.config.data_root)
    split = first.config.val_split
    coco = load_coco(annotation_file(data_root, split))
    by_run = [rundir.detections_by_image(run.path, min_score=score_thresh) for run in runs]
    chosen = pick_images({i: coco.loadImgs(i)[0]["file_name"] for i in coco.getImgIds()}, n)
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}

    fig = Figure(figsize=(3 * (1 + len(runs)), 3 * len(chosen)))
    axes = np.atleast_2d(fig.subplots(len(chosen), 1 + len(runs)))
    for row, img_id in zip(axes, chosen):
        info = coco.loadImgs(img_id)[0]
        img = np.asarray(Image.open(data_root / split / info["file_name"]).convert("RGB"))
        gts = coco.loadAnns(coco.getAnnIds(imgIds=img_id, iscrowd=None))
        panels = [(row[0], gts, f"ground truth ({len(gts)})", "lime", [True] * len(gts))]
        for ax, label, by_image in zip(row[1:], labels, by_run):
            det = by_image.get(img_id, [])
            tight = tight_flags(det, gts, tight_iou)
            panels.append((ax, det, f"{label}: {len(det)}, {sum(tight)} at IoU >= {tight_iou:g}", "red", tight))
        for ax, items, title, color, solid in panels:
            ax.imshow(img)
            for a, full in zip(items, solid):
                x, y, w, h = a["bbox"]
                ax.add_patch(matplotlib.patches.Rectangle((x, y), w, h, fill=False, color=color, lw=1.2,
                                                          ls="-" if full else "--"))
                label = names.get(a["category_id"], a["category_id"])
                if "score" in a:
                    label = f"{label} {a['score']:.2f}"
                ax.text(x, y, label, color="white", fontsize=5, va="bottom",
                        bbox=dict(facecolor=color, alpha=0.6, pad=0.5, lw=0))
            ax.set_title(f"{info['file_name']}: {title}", fontsize=7)
            ax.axis("off")
    what = " next to ground truth" if len(runs) == 1 else ": " + " vs ".join(labels) + ", same images"
    summary_lines = _wrap(summary, int(fig.get_figwidth() * 72 / (12 * 0.55))) if summary else []
    return _finish(fig, f"Detections{what} (validation)\nsolid: a ground-truth box of its class at IoU >= "
                        f"{tight_iou:g}; dashed: none" + "".join(f"\n{line}" for line in summary_lines),
                   caption(first) if len(runs) == 1 else runs_caption(runs))

