"""Figures of the report, drawn from run directories (never from hard-coded numbers).

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot (so it works
under any backend, in threads and in batch), and every figure carries a caption naming the
run(s) it came from: preset, method, seed, iterations and device. :func:`save_figure` writes
a PNG (a JPEG for photographs); the notebooks display the written file.

Runs are :class:`dynrcnn.rundir.runs.Run` objects (``dynrcnn.rundir.runs.load_run``/``find_runs``). This
module draws only: numbers that need analysis (e.g. recomputed dynamic updates) are passed in
by the caller (the notebooks, from :mod:`dynrcnn.report`).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.patches  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from dynrcnn.rundir import runs as rundir  # noqa: E402
from dynrcnn.config import IOU_THRESHOLDS, METHOD_NAMES  # noqa: E402
from dynrcnn.data.datastats import dataset_statistics  # noqa: E402
from dynrcnn.reference import BASELINE_RPN_NMS  # noqa: E402
from dynrcnn.report.analysis import share_at_least  # noqa: E402
from dynrcnn.rundir.run_summary import rpn_nms, run_device, run_iterations, run_name, scale_label, threshold_at  # noqa: E402
from dynrcnn.errors import DynrcnnError  # noqa: E402

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


def _seed_ranges(seeds) -> str:
    """``0-4, 7`` for seeds 0, 1, 2, 3, 4, 7."""
    seeds, parts = sorted(set(int(x) for x in seeds)), []
    for x in seeds:
        if parts and x == parts[-1][1] + 1:
            parts[-1][1] = x
        else:
            parts.append([x, x])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in parts)


def runs_caption(runs) -> str:
    """One caption for several runs: shared fields once, then the run ids; the seeds of one
    configuration (``name``, ``name_seed1``, ...) once, as ``name[_seedN] (method, seeds 0-4)``."""
    runs = list(runs)
    if not runs:
        return "no runs"
    fields = {
        "preset": [r.config.preset for r in runs],
        "seed": [r.config.seed for r in runs],
        "iterations": [run_iterations(r) for r in runs],
        "device": [run_device(r) for r in runs],
    }
    groups: dict[tuple, list] = {}
    for r in runs:
        groups.setdefault((re.sub(r"_seed\d+$", "", run_name(r)), r.config.method), []).append(r)
    parts = []
    for k, vals in fields.items():
        uniq = list(dict.fromkeys(vals))
        if len(uniq) == 1:
            parts.append(f"{k} {uniq[0]}")
        elif k != "seed" or len(groups) == len(runs):  # seeds named with their groups below
            parts.append(f"{k} " + "/".join(map(str, vals)))
    names = []
    for (base, method), rs in groups.items():
        if len(rs) == 1:
            names.append(f"{run_name(rs[0])} ({method})")
        else:
            names.append(f"{base}[_seedN] ({method}, seeds {_seed_ranges(r.config.seed for r in rs)})")
    return f"runs {', '.join(names)}; " + ", ".join(parts) + f" [{scale_label(runs[0].config.preset)}]"


DPI = 110  # save_figure's resolution
JPEG_QUALITY = 85  # save_figure's JPEG quality (photographs): no visible artefact on the crowns' edges
#: the width a page shows a figure at: README's column on GitHub (about 880 CSS px); index.html's
#: column (1180 px) shows a figure this wide at its size too. A wider PNG is scaled down, and its text with it.
PAGE_WIDTH_PX = 880
PAGE_WIDTH_IN = PAGE_WIDTH_PX / DPI  # 8 in: the widest a figure is drawn, so that nothing is scaled down
#: the smallest text on the page: 9 pt, 12 CSS px (96 px per inch). tests/test_plots.py measures every
#: text of every figure at the size the page shows it (:func:`shown_px`).
MIN_TEXT_PX = 12
TEXT_PT = 8  # the smallest font used (legends, labels in panels): 8 pt at 110 dpi is 12.2 px
FOOTER_PT = 9  # provenance footer
TITLE_PT = 12  # the figure's title
PAD_IN = 0.06  # between the title, the panels, a figure legend and the footer


def shown_px(fontsize: float, fig_width_in: float, dpi: float = DPI) -> float:
    """The height in CSS px of text of ``fontsize`` pt in a figure ``fig_width_in`` wide saved at
    ``dpi``, as a page :data:`PAGE_WIDTH_PX` wide shows it (scaled down when the PNG is wider)."""
    width_px = fig_width_in * dpi
    return fontsize * dpi / 72 * min(1.0, PAGE_WIDTH_PX / width_px)


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


def _renderer(fig: Figure):
    """A renderer to measure ``fig``'s texts with (an Agg canvas attached when it has none)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    return fig.canvas.get_renderer()


def _fit_text(fig: Figure, artist, text: str, start: int) -> None:
    """Set ``text`` on ``artist`` wrapped at the most characters a line that fit the figure's width
    (measured, starting from ``start`` characters)."""
    r, width = _renderer(fig), 0.97 * fig.bbox.width
    chars = max(20, start)
    while True:
        artist.set_text("\n".join(_wrap(text, chars)))
        if artist.get_window_extent(r).width <= width or chars <= 20:
            return
        chars = max(20, int(chars * 0.92))


def _fig_legend(fig: Figure, handles, labels):
    """A figure legend in as many columns as fit the figure's width."""
    r = _renderer(fig)
    for ncol in range(len(labels), 0, -1):
        leg = fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=TEXT_PT, frameon=False,
                         columnspacing=1.2, handlelength=1.8)
        if ncol == 1 or leg.get_window_extent(r).width <= 0.97 * fig.bbox.width:
            return leg
        leg.remove()


def _legend_right(ax, **kw):
    """The panel's legend outside it, on its right (where it covers no data)."""
    return ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=TEXT_PT, frameon=False, **kw)


def _legend_below(ax, ncol: int = 1, **kw):
    """The panel's legend outside it, under its x label (where it covers no data)."""
    from matplotlib.transforms import offset_copy

    below = offset_copy(ax.transAxes, fig=ax.figure, y=-2.8 * plt_text_pt(), units="points")
    return ax.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), bbox_transform=below, fontsize=TEXT_PT,
                     frameon=False, ncol=ncol, **kw)


def plt_text_pt() -> float:
    """The default font size (tick and axis labels), in points."""
    return float(matplotlib.rcParams["font.size"])


def _finish(fig: Figure, title: str, cap: str, legend=None) -> Figure:
    """Title, an optional figure legend (``(handles, labels)``, shared by the panels: under them)
    and the provenance caption as a footer inside the canvas, wrapped to the figure's width at
    :data:`FOOTER_PT`. The figure grows by what they take, so the panels keep the height the
    caller gave them, and tight_layout places the panels in the rest."""
    r = _renderer(fig)
    dpi = fig.dpi
    sup = fig.suptitle(title, fontsize=TITLE_PT, va="top")
    footer = fig.text(0.5, 0.0, "", ha="center", va="bottom", fontsize=FOOTER_PT, color="0.25")
    _fit_text(fig, footer, cap, int(fig.get_figwidth() * 72 / (FOOTER_PT * 0.5)))
    leg = _fig_legend(fig, *legend) if legend and legend[1] else None
    foot_in = footer.get_window_extent(r).height / dpi + 2 * PAD_IN
    leg_in = leg.get_window_extent(r).height / dpi + PAD_IN if leg is not None else 0.0
    top_in = sup.get_window_extent(r).height / dpi + 3 * PAD_IN
    height = fig.get_figheight() + foot_in + leg_in + top_in
    fig.set_figheight(height)
    footer.set_y(PAD_IN / height)
    sup.set_y(1 - PAD_IN / height)
    if leg is not None:
        leg.set_bbox_to_anchor((0.5, foot_in / height), transform=fig.transFigure)
    for _ in range(2):  # a second pass settles what the first moved (tick labels, legends outside panels)
        # tight_layout makes room for the title itself; the rect keeps a gap under it
        fig.tight_layout(rect=(0, (foot_in + leg_in) / height, 1, 1 - 2 * PAD_IN / height), pad=0.4, w_pad=1.0,
                         h_pad=0.8)
    return fig


def save_figure(fig: Figure, path) -> Path:
    """Write ``fig`` to ``path`` (parent folders created) at :data:`DPI`, as its suffix says: PNG
    for plots, JPEG (quality :data:`JPEG_QUALITY`) for photographs; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    jpeg = path.suffix.lower() in (".jpg", ".jpeg")
    fig.savefig(path, dpi=DPI, **({"pil_kwargs": {"quality": JPEG_QUALITY}} if jpeg else {}))
    return path


def _color(run, i: int = 0):
    return _group_color(run.config.method, rpn_nms(run), i)


def _label(run) -> str:
    m = run.config.method
    lab = METHOD_LABELS.get(m, m)
    name = run_name(run)
    return lab if name == m else f"{lab} [{name}]"


def _run_labels(runs) -> list:
    """One legend label per run, or, for a configuration (method, RPN NMS) that several runs share,
    one label on its first run (``None`` on the others): a legend by configuration, not by run."""
    key = [(r.config.method, rpn_nms(r)) for r in runs]
    count, nms_values, seen, out = Counter(key), {k[1] for k in key}, set(), []
    for run, k in zip(runs, key):
        if count[k] == 1:
            out.append(_label(run))
        elif k in seen:
            out.append(None)
        else:
            nms = f" (RPN NMS {k[1]:g})" if len(nms_values) > 1 and k[1] is not None else ""
            out.append(f"{METHOD_LABELS.get(k[0], k[0])}{nms}, {count[k]} runs")
        seen.add(k)
    return out


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
    fig = Figure(figsize=(PAGE_WIDTH_IN, 3.0))
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
    return _finish(fig, "SmoothL1: smaller beta gives small errors a larger gradient",
                   "computed with dynrcnn.modeling.dynamic_head.smooth_l1 and torch.autograd (no training run)",
                   legend=ax1.get_legend_handles_labels())


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
    ncol = min(2, len(its))
    nrow = math.ceil(len(its) / ncol)
    fig = Figure(figsize=(PAGE_WIDTH_IN, 2.6 * nrow))
    axes = np.atleast_1d(fig.subplots(nrow, ncol, sharey=True, squeeze=False)).ravel()
    for ax in axes[len(its):]:
        ax.set_visible(False)
    for ax, it in zip(axes, its):
        rec = records[it]
        edges = np.asarray(rec["bin_edges"], dtype=float)
        counts = np.asarray(rec["counts"], dtype=float)
        frac = counts / max(counts.sum(), 1.0)
        ax.bar(edges[:-1], frac, width=np.diff(edges), align="edge", color="tab:blue", alpha=0.7,
               edgecolor="white")
        thr, _ = threshold_at(run, it)
        above = share_at_least(rec, thr)
        ax.axvline(thr, color="tab:red", lw=2, label="foreground threshold in effect")
        ax.axvline(0.5, color="0.3", lw=1, ls="--", label="the baseline's fixed 0.5")
        ax.set_yscale("log")
        ax.set_title(f"iteration {it}: threshold {thr:.3f}, {100 * above:.1f}% at or above", fontsize=10)
        if ax.get_subplotspec().is_last_row() or it == its[-1]:
            ax.set_xlabel("max IoU of proposal with GT")
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel("fraction (log)")
    return _finish(fig, "Proposal quality during training and the foreground threshold", caption(run),
                   legend=axes[0].get_legend_handles_labels())


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
    fig = Figure(figsize=(PAGE_WIDTH_IN, 3.0))
    ax1, ax2 = fig.subplots(1, 2)
    for ax, stat, key, name in ((ax1, "iou_stat", "iou_threshold", "IoU threshold"),
                                (ax2, "error_stat", "beta", "beta")):
        s = stats.dropna(subset=[stat]) if stat in stats else stats.iloc[0:0]
        ax.plot(s["iteration"], s[stat], ".", ms=3, color="0.6", label="per-iteration statistic")
        its = list(d["iteration"]) + [last]
        vals = list(d[key]) + [d[key].iloc[-1]]
        ax.step(its, vals, where="post", color="tab:red", lw=2, label="threshold / beta logged by the head")
        if len(re):
            ax.plot(re["iteration"], re[f"{key}_recomputed"], "x", color="black", ms=6,
                    label="recomputed from the statistics")
        ax.set(xlabel="iteration", ylabel=name)
        ax.grid(alpha=0.3)
    ax1.set_title("T = max(T_init, mean of IoU stats)", fontsize=10)
    ax2.set_title("beta = min(beta_init, median of errors)", fontsize=10)
    return _finish(fig, "How the statistics turn into threshold and beta", caption(run),
                   legend=ax1.get_legend_handles_labels())


# --------------------------------------------------------------------------------------------
# results across runs


def trend_figure(runs) -> Figure:
    """IoU threshold and beta against iteration: dynamic methods vs the baseline's fixed values
    (the paper's trend figure)."""
    runs = list(runs)
    fig = Figure(figsize=(PAGE_WIDTH_IN, 3.0))
    ax1, ax2 = fig.subplots(1, 2)
    for i, (run, label) in enumerate(zip(runs, _run_labels(runs))):
        d = run.dynamic
        if d is None or not len(d):
            continue
        last = run_iterations(run) or int(d["iteration"].max())
        fixed = run.config.method == "baseline"
        for ax, key in ((ax1, "iou_threshold"), (ax2, "beta")):
            its = list(d["iteration"]) + [last]
            vals = list(d[key]) + [d[key].iloc[-1]]
            ax.step(its, vals, where="post", color=_color(run, i), lw=1.5 if fixed else 2,
                    ls="--" if fixed else "-", label=label and label + (" (fixed)" if fixed else ""))
    ax1.set(xlabel="iteration", ylabel="R-CNN IoU threshold", title="label assignment threshold")
    ax2.set(xlabel="iteration", ylabel="SmoothL1 beta", title="regression loss beta")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    return _finish(fig, "Dynamic threshold and beta during training", runs_caption(runs),
                   legend=ax1.get_legend_handles_labels())


def losses_figure(runs) -> Figure:
    """Training losses against iteration (``metrics.jsonl``), one line per run."""
    runs = list(runs)
    keys = [k for k in LOSS_KEYS if any(r.metrics is not None and k in r.metrics for r in runs)]
    keys = keys or ["loss"]
    labels = _run_labels(runs)
    ncol = min(2, len(keys))
    nrow = math.ceil(len(keys) / ncol)
    fig = Figure(figsize=(PAGE_WIDTH_IN, 2.0 * nrow))
    axes = np.atleast_1d(fig.subplots(nrow, ncol)).ravel()
    for ax, key in zip(axes, keys):
        for i, (run, label) in enumerate(zip(runs, labels)):
            m = run.metrics
            if m is None or key not in m:
                continue
            ax.plot(m["iteration"], m[key], color=_color(run, i), label=label, lw=1)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    if len(keys) < len(axes):  # the legend in the free panel, where it covers no curve
        spare = axes[len(keys)]
        spare.set_visible(True)
        spare.axis("off")
        spare.legend(handles, labels, loc="center", fontsize=TEXT_PT, frameon=False)
        return _finish(fig, "Training losses (mean over each logging interval)", runs_caption(runs))
    return _finish(fig, "Training losses (mean over each logging interval)", runs_caption(runs),
                   legend=(handles, labels))


def _group_color(method: str, nms, i: int = 0):
    """A configuration's colour: the method's, black for a baseline at another RPN NMS."""
    if method == "baseline" and nms not in (None, BASELINE_RPN_NMS):
        return "black"
    return METHOD_COLORS.get(method, f"C{i}")


def tight_share_figure(shares: list[dict], cap: str, iou: float = 0.9) -> Figure:
    """One bar per configuration: the share of its detections at IoU >= ``iou`` with their
    ground truth (mean over seeds; whiskers: the seeds' range). ``shares`` come from
    :func:`dynrcnn.report.curves.tight_shares`."""
    fig = Figure(figsize=(PAGE_WIDTH_IN, 3.0))
    ax = fig.subplots()
    for i, s in enumerate(shares):
        ax.bar(i, 100 * s["mean"], color=_group_color(s["method"], s["nms"], i), alpha=0.85)
        ax.errorbar(i, 100 * s["mean"], yerr=[[100 * (s["mean"] - s["low"])], [100 * (s["high"] - s["mean"])]],
                    color="k", capsize=3, lw=1)
        ax.text(i, 100 * s["high"] + 0.5, f"{100 * s['mean']:.1f}%", ha="center", va="bottom", fontsize=TEXT_PT)
    ax.set_xticks(range(len(shares)), [f"{s['label'].replace(' (', chr(10) + '(')}\n{s['seeds']} seed(s)"
                                       for s in shares], fontsize=TEXT_PT)
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
    fig = Figure(figsize=(PAGE_WIDTH_IN, 2.6 * max(1, len(metrics))))
    axes = np.atleast_1d(fig.subplots(max(1, len(metrics)), 1))
    rng = np.random.default_rng(0)
    nms = {c["nms"] for c in configs}

    def tick(c) -> str:  # the RPN NMS only where the configurations differ in it
        name = c["label"].split(" (")[0]
        return name if len(nms) == 1 else f"{name}, NMS {c['nms']:g}"

    for ax, m in zip(axes, metrics):
        for i, c in enumerate(configs):
            vals = np.array(list(c["values"][m].values()), dtype=float)
            col = _group_color(c["method"], c["nms"], i)
            ax.scatter(i + rng.uniform(-0.15, 0.15, len(vals)), vals, s=18, color=col, alpha=0.8, zorder=3)
            ax.hlines(vals.mean(), i - 0.3, i + 0.3, color="k", lw=2, zorder=4)
        ax.set_xticks(range(len(configs)), [f"{tick(c)}\nn={len(c['values'][m])}" for c in configs],
                      fontsize=TEXT_PT + 1)
        ax.set_ylabel(f"{m} (%)")
        ax.set_title(f"{m}: a dot per seed, bar = mean", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[-1].set_xlabel("configuration (method, RPN NMS) and its seeds" if len(nms) != 1 else
                        f"configuration (all at RPN NMS {next(iter(nms)):g}) and its seeds", fontsize=9)
    return _finish(fig, "Seed by seed: the spread the intervals are built from", cap)


def ap_gain_figure(curves: list[dict], gains: list[dict], cap: str) -> Figure:
    """Left: AP at each IoU threshold per configuration (mean over seeds, band: the seeds'
    range). Right: the AP difference at each threshold with its 95 % interval (band).
    ``curves``/``gains`` come from :mod:`dynrcnn.report.curves`."""
    fig = Figure(figsize=(PAGE_WIDTH_IN, 5.6))
    ax1, ax2 = fig.subplots(2, 1)
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
    ax1.set(xlabel="IoU threshold", ylabel="AP (%)")
    ax1.set_title("AP at each IoU threshold (band: range over seeds)", fontsize=10)
    ax2.set(xlabel="IoU threshold", ylabel="AP difference (points)")
    ax2.set_title("Dynamic R-CNN minus baseline (band: 95% interval)", fontsize=10)
    for ax, ncol in ((ax1, 2), (ax2, 1)):
        ax.grid(alpha=0.3)
        _legend_below(ax, ncol=ncol)
    return _finish(fig, "Where the gain is: AP against IoU threshold", cap)


def trajectory_figure(trajs: list[dict], authors: dict | None, cap: str) -> Figure:
    """IoU threshold, SmoothL1 beta and the share of proposals at or above the threshold in use,
    against training progress (fraction of the schedule, log scale), mean over seeds per
    configuration; the authors' published threshold points for comparison."""
    fig = Figure(figsize=(PAGE_WIDTH_IN, 5.2))
    grid = fig.subplots(2, 2)
    axes, spare = [grid[0, 0], grid[0, 1], grid[1, 0]], grid[1, 1]
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
    axes[0].set(ylabel="R-CNN IoU threshold")
    axes[1].set(ylabel="SmoothL1 beta")
    axes[2].set(ylabel="share of RPN proposals")
    for ax, title in zip(axes, ("label assignment threshold", "regression loss beta",
                                "proposals at or above the threshold")):
        ax.set_title(title, fontsize=10)
        ax.set_xscale("log")
        ax.set_xlabel("fraction of the schedule (log)")
        ax.grid(alpha=0.3, which="both")
    spare.axis("off")  # the legend in the free panel, where it covers no curve
    spare.legend(*axes[0].get_legend_handles_labels(), loc="center", fontsize=TEXT_PT, frameon=False)
    return _finish(fig, "Dynamic threshold and beta against training progress,\nwith the authors' trajectory", cap)


IMPLEMENTATION_STYLES = {"dynrcnn": ("C0", "-"), "mmdet": ("C3", "--")}  # colour, line style


def peer_trajectory_figure(trajs: list[dict], labels: dict, cap: str) -> Figure:
    """IoU threshold and SmoothL1 beta after every update, one line per seed and implementation
    (``trajs`` from :func:`dynrcnn.report.peer.trajectories`)."""
    fig = Figure(figsize=(PAGE_WIDTH_IN, 3.0))
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
    return _finish(fig, "Dynamic R-CNN's threshold and beta:\ndynrcnn and MMDetection on the same data", cap,
                   legend=axes[0].get_legend_handles_labels())


def peer_gain_figure(table, labels: dict, cap: str) -> Figure:
    """Each implementation's Dynamic - Faster gain per metric with its 95 % interval
    (``table`` from :func:`dynrcnn.report.peer.agreement`)."""
    fig = Figure(figsize=(PAGE_WIDTH_IN, 3.0))
    ax = fig.subplots()
    x = np.arange(len(table))
    for k, impl in enumerate(("dynrcnn", "mmdet")):
        col, _ = IMPLEMENTATION_STYLES[impl]
        est = table[f"{impl} gain"].to_numpy(float)
        err = np.vstack([est - table[f"{impl} low"].to_numpy(float), table[f"{impl} high"].to_numpy(float) - est])
        ax.errorbar(x + (k - 0.5) * 0.25, est, yerr=err, fmt="o", color=col, capsize=4, label=labels.get(impl, impl))
    ax.axhline(0, color="0.4", lw=1)
    ax.set_xticks(x, list(table["metric"]))
    ax.set(ylabel="Dynamic - Faster (points)", title="gain with its 95 % interval")
    ax.grid(alpha=0.3, axis="y")
    _legend_right(ax)
    return _finish(fig, "The gain of Dynamic R-CNN in each implementation", cap)


def control_figure(table, x: str, schedule: str, cap: str) -> Figure:
    """AP and AP90 against a fixed setting (``x``: ``threshold`` or ``beta``), seeds' mean with
    their range, with the schedule's (``schedule``: DLA or DSL) mean and range drawn across
    (``table``: one benchmark's rows of :func:`dynrcnn.report.controls.threshold_table` / ``beta_table``)."""
    fig = Figure(figsize=(PAGE_WIDTH_IN, 3.0))
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
    return _finish(fig, f"A fixed {x} against {schedule}", cap, legend=axes[0].get_legend_handles_labels())


def schedule_figure(table, cap: str) -> Figure:
    """Dynamic R-CNN's gain over the baseline (both at RPN NMS 0.85) against the schedule's
    length, AP and AP90, one line per benchmark with the seed-level 95 % intervals
    (``table``: :func:`dynrcnn.report.controls.schedule_table`)."""
    fig = Figure(figsize=(PAGE_WIDTH_IN, 3.0))
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
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # the lengths only, no 4x10^2 between
        ax.set(xlabel="fine-tune length (iterations)", ylabel=f"{m} gain (points)", title=m)
        ax.grid(alpha=0.3)
    return _finish(fig, "Dynamic R-CNN's gain over the baseline against the schedule's length", cap,
                   legend=axes[0].get_legend_handles_labels())


def positives_figure(curves: list[dict], cap: str,
                     ylabel: str = "positives per image\n(proposals + ground truth)") -> Figure:
    """Positive proposals per image (before sampling) over training, per fixed threshold and DLA
    (``curves`` from :func:`dynrcnn.report.controls.positives_curves`; ``ylabel``: what they
    count, e.g. :func:`dynrcnn.report.premise_test.positives_curves`'s per object)."""
    fig = Figure(figsize=(PAGE_WIDTH_IN, 3.0))
    ax = fig.subplots()
    fixed = [c for c in curves if c["label"] != "DLA"]
    for i, c in enumerate(curves):
        style = dict(color="black", lw=2, ls="--") if c["label"] == "DLA" else dict(color=f"C{fixed.index(c)}")
        ax.plot(c["iteration"], c["positives"], label=f"{c['label']} ({c['seeds']} seeds)", **style)
    ax.set(xlabel="iteration", ylabel=ylabel, title="positives at the training threshold")
    ax.grid(alpha=0.3)
    _legend_right(ax)
    return _finish(fig, "How many positives each threshold leaves", cap)


def ap_per_iou_run_figure(run) -> Figure:
    """AP at each IoU threshold of one run (bars)."""
    e = run.eval
    x = np.asarray(e.get("iou_thresholds") or IOU_THRESHOLDS, dtype=float)
    y = np.asarray(e["AP_per_iou"], dtype=float)
    fig = Figure(figsize=(PAGE_WIDTH_IN, 3.0))
    ax = fig.subplots()
    ax.bar([f"{t:.2f}" for t in x], y, color=_color(run))
    for xi, yi in enumerate(y):
        ax.text(xi, yi, f"{yi:.1f}", ha="center", va="bottom", fontsize=TEXT_PT)
    if len(y):
        ax.set_ylim(0, 1.12 * max(float(np.nanmax(y)), 1.0))  # room for the labels above the bars
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
        ax.text(x, 0.97, f" {lab}", transform=ax.get_xaxis_transform(), va="top", fontsize=TEXT_PT)
    s = stats["sizes"]
    ax.set_title(f"object sizes: small {s['small']}, medium {s['medium']}, large {s['large']}", fontsize=9)
    ax.set_xlabel("sqrt(object area), pixels")
    ax.set_ylabel("objects")
    fig.tight_layout()
    return fig


def _box_label(ax, box, shape, text: str, color, alpha: float) -> None:
    """A box's label at :data:`TEXT_PT`: above its top-left corner, inside the box where that would
    leave the image (top rows, right half), clipped to the panel so that it never reaches the next."""
    x, y, w, h = box
    height, width = shape
    right = x > 0.55 * width
    top = y < 0.15 * height
    ax.text(x + w if right else x, y, text, color="white", fontsize=TEXT_PT, ha="right" if right else "left",
            va="top" if top else "bottom", clip_on=True, bbox={"facecolor": color, "alpha": alpha, "pad": 0.5, "lw": 0})


def draw_samples(dataset, n: int = 8, seed: int = 0, cols: int = 4, figure=None, size: float | None = None,
                 title: str = ""):
    """Draw ``n`` random images of a :class:`~dynrcnn.data.datasets.CocoDetection` with their boxes and
    class names, titled by their file names, under ``title``; returns the matplotlib Figure (never
    shown). ``size``: a panel's side in inches (default: ``cols`` panels fill :data:`PAGE_WIDTH_IN`)."""
    n = min(n, len(dataset))
    size = size or PAGE_WIDTH_IN / cols
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
            _box_label(ax, (x0, y0, x1 - x0, y1 - y0), image.shape[1:], dataset.class_names[label - 1], c, 0.8)
        image_id = int(target["image_id"])
        info = dataset.coco.imgs.get(image_id, {}) if hasattr(dataset, "coco") else {}
        ax.set_title(info.get("file_name", f"image {image_id}"), fontsize=TEXT_PT + 1)
        ax.axis("off")
    top = 1.0
    if title:
        sup = fig.suptitle(title, fontsize=10, va="top", y=1 - PAD_IN / fig.get_figheight())
        top = 1 - (sup.get_window_extent(_renderer(fig)).height / fig.dpi + 3 * PAD_IN) / fig.get_figheight()
    for _ in range(2):  # a second pass settles what the first moved
        fig.tight_layout(pad=0.3, h_pad=0.6, rect=(0, 0, 1, top))
    return fig


def save_sample_figure(root, path, split: str = "val", n: int = 8, seed: int = 0, dpi: int = DPI,
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

    side = PAGE_WIDTH_IN / (1 + len(runs))
    fig = Figure(figsize=(PAGE_WIDTH_IN, (side + 0.35) * len(chosen)))
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
                _box_label(ax, (x, y, w, h), img.shape[:2], label, color, 0.6)
            ax.set_title(f"{info['file_name']}\n{title}", fontsize=TEXT_PT + 1)
            ax.axis("off")
    what = " next to ground truth" if len(runs) == 1 else ": " + " vs ".join(labels) + ", same images"
    summary_lines = _wrap(summary, int(fig.get_figwidth() * 72 / (TITLE_PT * 0.55))) if summary else []
    return _finish(fig, "\n".join([*_wrap(f"Detections{what} (validation)", 70),
                                    f"solid: a ground-truth box of its class at IoU >= {tight_iou:g}; dashed: none",
                                    *summary_lines]),
                   caption(first) if len(runs) == 1 else runs_caption(runs))



# --------------------------------------------------------------------------------------------
# the tree crowns (issue 33, notebook 08): at most 8 in wide, no text under 9 pt

TREES_PT = 9  # the smallest text of a tree figure
#: the detections picture's boxes: ground truth; a detection at IoU >= the tight threshold with one; any other
TREES_BOXES = {"truth": ("yellow", "-", 1.2), "tight": ("cyan", "-", 1.8), "loose": ("red", "--", 0.9)}


def _image_panel(ax, pixels, boxes, title: str, styles) -> None:
    """An image without axes, its boxes (``xyxy``) drawn in ``styles`` (one (colour, line style,
    width) per box) and a title at :data:`TREES_PT`."""
    ax.imshow(pixels, interpolation="nearest")
    for (x0, y0, x1, y1), (color, ls, lw) in zip(boxes, styles):
        ax.add_patch(matplotlib.patches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=color, ls=ls, lw=lw))
    ax.set_title(title, fontsize=TREES_PT)
    ax.axis("off")


def _tile_name(info: dict) -> str:
    """A tile's short title: ``YELL crop2 x200 y1200`` for a tile of ``dynrcnn data trees`` (a NEON
    source's site code and last word, the tile's origin), else its file name (its last 24 characters)."""
    if "source" not in info:
        return info["file_name"][-24:]
    source = re.sub(r"^\d{4}_([A-Z]{4})_.*_([^_]+)$", r"\1 \2", info["source"])
    return f"{source} x{info['x0']} y{info['y0']}"


def draw_crowns(datasets: dict, per_split: int = 3, seed: int = 0, title: str = "", cap: str = "") -> Figure:
    """``per_split`` tiles of each dataset of ``datasets`` (split name -> a
    :class:`~dynrcnn.data.datasets.CocoDetection`) in a row, drawn at random with ``seed`` before
    looking at them, every crown's box drawn without a label (a tile holds up to 61), each titled by
    its file name and crown count."""
    rows = max(1, len(datasets))
    side = PAGE_WIDTH_IN / per_split
    fig = Figure(figsize=(PAGE_WIDTH_IN, rows * (side + 0.45)))
    axes = np.atleast_2d(fig.subplots(rows, per_split, squeeze=False))
    for row, (split, ds) in zip(axes, datasets.items()):
        picks = np.random.default_rng(seed).choice(len(ds), size=min(per_split, len(ds)), replace=False)
        for ax in row[len(picks):]:
            ax.set_visible(False)
        for ax, idx in zip(row, sorted(picks.tolist())):
            image, target = ds[idx]
            boxes = target["boxes"].tolist()
            name = _tile_name(ds.coco.imgs[int(target["image_id"])])
            _image_panel(ax, image.permute(1, 2, 0).numpy(), boxes, f"{split}: {name}\n{len(boxes)} crowns",
                         [TREES_BOXES["truth"]] * len(boxes))
    return _finish(fig, title or "Tree-crown tiles with every annotated crown", cap)


def plot_trees_trajectories(trajs: list[dict], authors: dict | None, cap: str, note: str = "",
                            title: str = "Dynamic R-CNN's threshold and beta: tree crowns, miniature, COCO") -> Figure:
    """The IoU threshold and SmoothL1 beta of Dynamic R-CNN against training progress (fraction of
    the schedule, log scale), one line per dataset (``trajs``: ``label``, ``data``, ``seeds``,
    ``max_iter``, ``iou_threshold`` / ``beta`` as (iterations, mean over seeds); from
    :func:`dynrcnn.report.trees.trajectories`), the authors' COCO threshold points beside them and
    ``note`` (e.g. why a line is missing) under the legend."""
    note = "\n".join(_wrap(note, 100)) if note else ""
    extra = 0.2 * (note.count("\n") + 1) if note else 0.0  # room for the note, above the legend
    fig = Figure(figsize=(PAGE_WIDTH_IN, 4.2 + extra))
    grid = fig.add_gridspec(2, 2, height_ratios=(3.0, 1.0 + extra))
    first = fig.add_subplot(grid[0, 0])
    panels = (first, fig.add_subplot(grid[0, 1], sharex=first))
    colors = {"tree crowns": "tab:green", "miniature": "tab:red"}
    starts = list(authors["progress"]) if authors is not None else []  # the x axis shows whole decades from here
    for i, t in enumerate(trajs):
        for ax, key in zip(panels, ("iou_threshold", "beta")):
            if t.get(key) is None:
                continue
            its, vals = (np.asarray(v, dtype=float) for v in t[key])
            keep = np.isfinite(vals) & (its > 0)
            starts += list(its[keep][:1] / t["max_iter"])
            ax.step(its[keep] / t["max_iter"], vals[keep], where="post", lw=2, color=colors.get(t["data"], f"C{i}"),
                    label=f"{t['label']} ({t['max_iter']} iterations, mean of {t['seeds']} seeds)")
    if authors is not None:
        panels[0].plot(authors["progress"], authors["iou_threshold"], "k*", ms=9, label=authors["label"])
    panels[0].axhline(0.5, color="0.4", ls="--", lw=1, label="Faster R-CNN's fixed 0.5 (beta 1.0)")
    for ax, what in zip(panels, ("R-CNN IoU threshold", "SmoothL1 beta")):
        ax.set_xscale("log")
        ax.set_xlabel("fraction of the schedule (log)", fontsize=TREES_PT)
        ax.set_ylabel(what, fontsize=TREES_PT)
        ax.tick_params(labelsize=TREES_PT)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # decades only: minor labels collide
        ax.grid(alpha=0.3, which="both")
    panels[0].set_xlim(min(starts, default=1e-3) / 1.5, 1.5)
    key = fig.add_subplot(grid[1, :])
    key.axis("off")
    key.legend(*panels[0].get_legend_handles_labels(), loc="upper center", fontsize=TREES_PT, frameon=False,
               title=note or None, title_fontsize=TREES_PT)
    return _finish(fig, title, cap)


def draw_whole_image(whole: dict, wheel, cap: str = "") -> Figure:
    """The whole held-out photograph of :func:`dynrcnn.report.trees.whole_image`, one panel per
    method: the annotated crowns in yellow, the method's detections (merged from its tiles) solid in
    cyan where matched one-to-one to a crown at IoU >= 0.9, dashed red otherwise. ``wheel``: the
    pinned deepforest wheel the photograph is read from (its SHA-256 is checked against ``whole``)."""
    from dynrcnn.data.trees import read_sources

    images, shas = read_sources(Path(wheel), (whole["source"],))
    if shas[whole["source"]] != whole["sha256"]:
        raise DynrcnnError(f"{whole['source']} in {wheel} is not the photograph the study scored; rerun the study")
    pixels = images[whole["source"]][0]
    methods = list(whole["methods"].values())
    cols = max(1, len(methods))
    side = PAGE_WIDTH_IN / cols
    fig = Figure(figsize=(PAGE_WIDTH_IN, side * whole["height"] / whole["width"] + 0.6))
    axes = np.atleast_1d(fig.subplots(1, cols, squeeze=False)[0])
    for ax, e in zip(axes, methods):
        styles = [TREES_BOXES["truth"]] * len(whole["truth"]) + [TREES_BOXES["tight" if t else "loose"]
                                                                 for t in e["tight"]]
        _image_panel(ax, pixels, whole["truth"] + e["boxes"], f"{e['label']} (seed {e['seed']}): "
                     f"{e['detections']} detections,\n{sum(e['tight'])} of {whole['crowns']} crowns at IoU >= 0.9", styles)
    chars = int(fig.get_figwidth() * 72 / (TITLE_PT * 0.6))
    head = (f"The whole held-out photograph ({whole['width']} x {whole['height']} px) in {whole['tile']} px tiles, "
            f"score >= {whole['score_thresh']:g}; yellow: annotated crowns")
    return _finish(fig, "\n".join(_wrap(head, chars)), cap)


def draw_tree_detections(runs, labels, data_root=None, n: int = 3, score_thresh: float = 0.5,
                         tight_iou: float = 0.9, summary: str = "") -> Figure:
    """Ground truth, then each run's detections (score >= ``score_thresh``) on the same ``n``
    validation tiles, chosen by :func:`pick_images` (sorted file names at evenly spaced positions,
    fixed before any detection is seen). A detection at IoU >= ``tight_iou`` with a ground-truth box
    (:func:`dynrcnn.evaluation.coco_eval.tight_flags`) is drawn solid in cyan, any other dashed in
    red; every title counts both. Boxes carry no labels (a tile holds dozens of crowns)."""
    from PIL import Image

    from dynrcnn.data.datasets import annotation_file, load_coco
    from dynrcnn.evaluation.coco_eval import tight_flags

    runs = list(runs)
    data_root = Path(data_root or runs[0].config.data_root)
    split = runs[0].config.val_split
    coco = load_coco(annotation_file(data_root, split))
    found = [rundir.detections_by_image(r.path, min_score=score_thresh) for r in runs]
    chosen = pick_images({i: coco.imgs[i]["file_name"] for i in coco.getImgIds()}, n)
    cols = 1 + len(runs)
    side = PAGE_WIDTH_IN / cols
    fig = Figure(figsize=(PAGE_WIDTH_IN, len(chosen) * (side + 0.45)))
    axes = np.atleast_2d(fig.subplots(len(chosen), cols, squeeze=False))

    def xyxy(items):
        return [(x, y, x + w, y + h) for x, y, w, h in (a["bbox"] for a in items)]

    for row, img_id in zip(axes, chosen):
        info = coco.imgs[img_id]
        pixels = np.asarray(Image.open(data_root / split / info["file_name"]).convert("RGB"))
        truth = coco.loadAnns(coco.getAnnIds(imgIds=img_id, iscrowd=None))
        _image_panel(row[0], pixels, xyxy(truth), f"{_tile_name(info)}\nground truth: {len(truth)}",
                     [TREES_BOXES["truth"]] * len(truth))
        for ax, label, by_image in zip(row[1:], labels, found):
            det = by_image.get(img_id, [])
            tight = tight_flags(det, truth, tight_iou)
            _image_panel(ax, pixels, xyxy(det), f"{label}: {len(det)}\n{sum(tight)} at IoU >= {tight_iou:g}",
                         [TREES_BOXES["tight" if t else "loose"] for t in tight])
    chars = int(fig.get_figwidth() * 72 / (TITLE_PT * 0.6))  # a title line that fits the figure's width
    head = (f"Detections on validation tiles (score >= {score_thresh:g}); solid cyan: IoU >= {tight_iou:g} with a "
            f"crown, dashed red: below")
    return _finish(fig, "\n".join(_wrap(head, chars) + (_wrap(summary, chars) if summary else [])), runs_caption(runs))
