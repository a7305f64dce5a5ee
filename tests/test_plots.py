"""Figures from synthetic run directories (written here in the contract's run-directory format)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dynrcnn.report import plots
from dynrcnn.report import recompute_updates
from dynrcnn.rundir.run_summary import threshold_at
from dynrcnn.rundir.runs import load_run

IOUS = [float(t) for t in np.linspace(0.5, 0.95, 10)]


def write_gt(data_root, n_images=40, seed=0) -> Path:
    """A COCO annotation file ``DATA_ROOT/annotations/instances_val.json`` (no images: enough for
    the per-image matching behind the report's intervals)."""
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(1, n_images + 1):
        images.append({"id": i, "file_name": f"{i:06d}.png", "width": 128, "height": 128})
        for _ in range(int(rng.integers(1, 4))):
            x, y = rng.uniform(0, 70, 2)
            w, h = rng.uniform(15, 50, 2)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(rng.integers(1, 3)),
                         "bbox": [float(x), float(y), float(w), float(h)], "area": float(w * h), "iscrowd": 0})
    path = Path(data_root) / "annotations" / "instances_val.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}))
    return path


def write_detections(run: Path, data_root, jitter: float, seed: int) -> None:
    """``detections.json``: every ground-truth box, moved by ``jitter`` pixels (Gaussian) per
    coordinate; a smaller jitter gives a higher AP, the more so at high IoU."""
    gt = json.loads((Path(data_root) / "annotations" / "instances_val.json").read_text())
    rng = np.random.default_rng(seed)
    dets = []
    for a in gt["annotations"]:
        x, y, w, h = (v + jitter * rng.standard_normal() for v in a["bbox"])
        dets.append({"image_id": a["image_id"], "category_id": a["category_id"],
                     "bbox": [x, y, max(w, 1.0), max(h, 1.0)], "score": float(rng.uniform(0.3, 1.0))})
    (run / "detections.json").write_text(json.dumps(dets))


def write_run(root, name, method, *, seed=0, preset="mini", ap=30.0, ap_per_iou=None, sec_per_iter=0.5,
              rpn_nms=0.7, iters=100, interval=10, log_stats=True, device="cpu", data_root="",
              jitter=None) -> Path:
    """A complete run directory as dynrcnn.engine.trainer/evaluation write it (values synthetic). With
    ``jitter`` (and a ``data_root`` holding :func:`write_gt`'s annotations), ``detections.json``
    and eval.json's AP come from ground-truth boxes moved by that many pixels."""
    from dynrcnn.presets import build_config as make_config

    run = Path(root) / name
    run.mkdir(parents=True)
    cfg = make_config("mini" if preset == "mini" else preset, method, seed=seed, data_root=data_root,
                      overrides=[f"max_iter={iters}", f"dynamic.interval={interval}", f"model.rpn_nms_thresh={rpn_nms}",
                                 f"log_stats={'true' if log_stats else 'false'}", "log_period=10"])
    cfg.preset = preset
    cfg.lr = cfg.base_lr
    d = cfg.to_dict()
    d.update(images_per_update=cfg.ims_per_batch * interval, world_size=1)
    (run / "config.json").write_text(json.dumps(d))
    (run / "env.json").write_text(json.dumps({
        "python": "3.11", "torch": "2.x", "torchvision": "0.x", "numpy": "1.x", "device": device,
        "device_name": "test-cpu", "num_processes": 1, "torch_threads": 1, "git_commit": "abc",
        "hostname": "h", "cpu_count": 2, "platform": "linux"}))
    rng = np.random.default_rng(seed + len(name))
    dla, dsl = method in ("dla", "dynamic"), method in ("dsl", "dynamic")
    with open(run / "metrics.jsonl", "w") as f:
        for it in range(10, iters + 1, 10):
            f.write(json.dumps({"iteration": it, "lr": 0.02, "loss": 2.0 / (1 + it / 50), "loss_classifier": 0.5,
                                "loss_box_reg": 0.4, "loss_objectness": 0.2, "loss_rpn_box_reg": 0.1,
                                "iou_threshold": 0.4, "beta": 1.0, "positives_per_image": 12.0 - 4.0 * it / iters,
                                "sampled_positives_per_image": 10.0, "sec_per_iter": sec_per_iter,
                                "images_per_sec": 4 / sec_per_iter, "peak_memory_mb": 100.0,
                                "elapsed_sec": it * sec_per_iter}) + "\n")
    stats = []
    for it in range(1, iters + 1):
        stats.append({"iteration": it, "iou_stat": 0.3 + 0.4 * it / iters + 0.02 * rng.standard_normal(),
                      "error_stat": 1.5 - 1.2 * it / iters + 0.05 * rng.standard_normal()})
    thr, beta = (0.4, 1.0) if (dla or dsl) else (0.5, 1.0)
    dyn = [{"iteration": 0, "iou_threshold": thr, "beta": beta, "num_iou_stats": 0, "num_beta_stats": 0}]
    if not (dla or dsl):
        dyn[0]["fixed"] = True
    else:
        for it in range(interval, iters + 1, interval):
            win = [s for s in stats if it - interval < s["iteration"] <= it]
            if dla:
                thr = max(0.4, float(np.mean([s["iou_stat"] for s in win])))
            if dsl:
                beta = min(1.0, float(np.median([s["error_stat"] for s in win])))
            dyn.append({"iteration": it, "iou_threshold": thr, "beta": beta, "num_iou_stats": len(win),
                        "num_beta_stats": len(win)})
    (run / "dynamic.jsonl").write_text("".join(json.dumps(r) + "\n" for r in dyn))
    if log_stats:
        (run / "stats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stats))
        edges = [float(e) for e in np.linspace(0, 1, 21)]
        with open(run / "proposal_ious.jsonl", "w") as f:
            for it in range(10, iters + 1, 10):
                counts = rng.poisson(50 * np.exp(-np.linspace(0, 1, 20) * (6 - 3 * it / iters))).tolist()
                f.write(json.dumps({"iteration": it, "bin_edges": edges, "counts": counts}) + "\n")
    (run / "train_done.json").write_text(json.dumps({"iterations": iters, "wall_time_sec": iters * sec_per_iter,
                                                      "sec_per_iter_median": sec_per_iter,
                                                      "images_per_sec": 4 / sec_per_iter}))
    if jitter is not None:
        from dynrcnn.evaluation.coco_eval import coco_metrics

        write_detections(run, data_root, jitter, seed * 1000 + len(name))
        m = coco_metrics(Path(data_root) / "annotations" / "instances_val.json",
                         json.loads((run / "detections.json").read_text()))
        ap, ap_per_iou = m["AP"], m["AP_per_iou"]
    per_iou = list(ap_per_iou) if ap_per_iou is not None else [ap + 25 - 5 * i for i in range(10)]
    (run / "eval.json").write_text(json.dumps({
        "AP": ap, "AP50": per_iou[0], "AP75": per_iou[5], "APs": ap - 10, "APm": ap, "APl": ap + 10,
        "AP_per_iou": per_iou, "iou_thresholds": IOUS, "AP90": per_iou[8], "images_per_sec": 20.0,
        "evaluator": "pycocotools", "checkpoint": "checkpoints/last.pth", "num_images": 10}))
    return run


@pytest.fixture()
def two_runs(tmp_path):
    b = write_run(tmp_path / "runs", "baseline", "baseline", ap=30.0)
    d = write_run(tmp_path / "runs", "dynamic", "dynamic", ap=31.0)
    return load_run(b), load_run(d)


def _png(path: Path):
    assert path.is_file() and path.stat().st_size > 5000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_caption_names_the_run(two_runs):
    _, d = two_runs
    cap = plots.caption(d)
    for part in ("run dynamic", "preset mini", "method dynamic", "seed 0", "100 iterations", "device cpu",
                 "miniature benchmark (not COCO)"):
        assert part in cap
    multi = plots.runs_caption(two_runs)
    assert "baseline (baseline)" in multi and "dynamic (dynamic)" in multi and "iterations 100" in multi


def test_result_figures_written(two_runs, tmp_path):
    out = tmp_path / "figures"
    for name, fig in (("trend", plots.trend_figure(two_runs)), ("losses", plots.losses_figure(two_runs)),
                      ("ap_run", plots.ap_per_iou_run_figure(two_runs[1])),
                      ("smooth_l1", plots.smooth_l1_figure()),
                      ("proposal_iou", plots.proposal_iou_figure(two_runs[1], n_panels=3)),
                      ("stats", plots.stats_figure(two_runs[1], recompute_updates(two_runs[1])))):
        _png(plots.save_figure(fig, out / f"{name}.png"))
        # every figure says where it came from, in a footer inside the canvas at a legible size
        texts = [t.get_text() for t in fig.texts]
        assert texts and texts[-1]
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        footer = fig.texts[-1]
        box = footer.get_window_extent(canvas.get_renderer())
        assert footer.get_fontsize() >= 9, name
        assert box.x0 >= 0 and box.x1 <= fig.bbox.width and box.y0 >= 0, (name, box, fig.bbox)
        # and no axes overlaps it
        for ax in fig.axes:
            if ax.get_visible() and ax.axison:
                assert ax.get_tightbbox(canvas.get_renderer()).y0 >= box.y1 - 1, (name, ax.get_title())


def test_the_losses_legend_sits_in_the_free_panel(two_runs):
    fig = plots.losses_figure(two_runs)
    with_legend = [ax for ax in fig.axes if ax.get_legend() is not None]
    assert len(with_legend) == 1 and not with_legend[0].axison and not with_legend[0].lines


def test_method_figures_need_stats(tmp_path):
    run = load_run(write_run(tmp_path, "b", "baseline", log_stats=False))
    with pytest.raises(ValueError, match="log_stats"):
        plots.proposal_iou_figure(run)
    with pytest.raises(ValueError, match="log_stats"):
        plots.stats_figure(run)


def test_threshold_at_and_pick_iterations(two_runs):
    _, d = two_runs
    thr0, beta0 = threshold_at(d, 5)
    assert (thr0, beta0) == (0.4, 1.0)
    thr, _ = threshold_at(d, 21)  # after the update logged at iteration 20
    row = d.dynamic[d.dynamic.iteration == 20].iloc[0]
    assert thr == pytest.approx(row.iou_threshold)
    assert plots.pick_iterations(range(10, 101, 10), 4) == [10, 40, 70, 100]
    assert plots.pick_iterations([5, 10], 4) == [5, 10]


def test_detections_figure(tmp_path):
    from PIL import Image

    root = tmp_path / "data"
    (root / "annotations").mkdir(parents=True)
    (root / "val").mkdir()
    images, anns = [], []
    for i in range(2):
        Image.new("RGB", (64, 48), (i * 80, 100, 50)).save(root / "val" / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": 64, "height": 48})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [5, 5, 20, 10], "area": 200,
                     "iscrowd": 0})
    (root / "annotations" / "instances_val.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "box"}]}))
    run = write_run(tmp_path / "runs", "dynamic", "dynamic", data_root=str(root))
    (run / "detections.json").write_text(json.dumps([
        {"image_id": 1, "category_id": 1, "bbox": [6, 5, 20, 11], "score": 0.9},
        {"image_id": 2, "category_id": 1, "bbox": [1, 1, 5, 5], "score": 0.1}]))
    fig = plots.detections_figure(load_run(run), n=2, score_thresh=0.5)
    _png(plots.save_figure(fig, tmp_path / "det.png"))
    titles = [ax.get_title() for ax in fig.axes]
    # IoU of [6, 5, 20, 11] with [5, 5, 20, 10]: 190 / 230 = 0.83, under 0.9
    assert "0.png\ndynamic: 1, 0 at IoU >= 0.9" in titles and "0.png\nground truth (1)" in titles
    assert "1.png\ndynamic: 0, 0 at IoU >= 0.9" in titles  # the 0.1 detection is under the score threshold
    # two runs on the same images: one column each, tight boxes drawn solid
    base = write_run(tmp_path / "runs", "baseline", "baseline", data_root=str(root))
    (base / "detections.json").write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 10],
                                                       "score": 0.8}]))
    fig = plots.detections_figure([load_run(base), load_run(run)], n=2, labels=["B", "D"], summary="all images: X")
    assert len(fig.axes) == 6 and fig._suptitle.get_text().endswith("\nall images: X")
    titles = [ax.get_title() for ax in fig.axes]
    assert "0.png\nB: 1, 1 at IoU >= 0.9" in titles and "0.png\nD: 1, 0 at IoU >= 0.9" in titles
    styles = {ax.get_title(): [p.get_linestyle() for p in ax.patches] for ax in fig.axes}
    assert styles["0.png\nB: 1, 1 at IoU >= 0.9"] == ["-"] and styles["0.png\nD: 1, 0 at IoU >= 0.9"] == ["--"]


def test_detection_images_are_picked_by_a_rule_fixed_in_advance():
    names = {10 + i: f"{i:06d}.png" for i in range(100)}
    assert plots.pick_images(names, 3) == [35, 60, 84]  # positions 25, 50, 74 of 0..99 by file name, never the ends
    assert plots.pick_images({1: "b.png", 2: "a.png"}, 3) == [2, 1]


def test_tight_flags_hand_computed():
    from dynrcnn.evaluation.coco_eval import tight_flags

    gt = [{"bbox": [0, 0, 10, 9], "category_id": 1}, {"bbox": [50, 50, 10, 10], "category_id": 2}]
    dets = [{"bbox": [0, 0, 10, 10], "category_id": 1},  # IoU 90 / 100 = 0.9: counts at 0.9
            {"bbox": [0, 0, 10, 10], "category_id": 2},  # the same box, another class: no
            {"bbox": [50, 50, 10, 11], "category_id": 2},  # IoU 100 / 110 = 0.909
            {"bbox": [52, 50, 10, 10], "category_id": 2}]  # IoU 80 / 120 = 0.667
    assert tight_flags(dets, gt, 0.9) == [True, False, True, False]
    assert tight_flags(dets, gt, 0.95) == [False, False, False, False]
    assert tight_flags(dets, gt, 0.6) == [True, False, True, True]
    assert tight_flags(dets, [], 0.9) == [False] * 4 and tight_flags([], gt) == []


def test_group_figures_from_curves(tmp_path):
    from dynrcnn.report.curves import authors_trajectory

    x = [0.5 + 0.05 * i for i in range(10)]
    curves = [{"label": "baseline (RPN NMS 0.7)", "method": "baseline", "nms": 0.7, "x": x, "seeds": 3,
               "mean": np.linspace(80, 10, 10), "low": np.linspace(78, 8, 10), "high": np.linspace(82, 12, 10)}]
    gains = [{"label": "dynamic - baseline", "x": x, "estimate": np.linspace(0, 5, 10), "low": np.linspace(-1, 3, 10),
              "high": np.linspace(1, 7, 10), "seeds": "3 vs 3 seeds"}]
    _png(plots.save_figure(plots.ap_gain_figure(curves, gains, "caption"), tmp_path / "gain.png"))
    its = np.array([0.0, 20.0, 40.0])
    traj = [{"label": "DLA + DSL", "method": "dynamic", "seeds": 3, "max_iter": 40,
             "iou_threshold": (its, np.array([0.4, 0.45, 0.52])), "beta": (its, np.array([1.0, 0.8, 0.6])),
             "fg_fraction": (its, np.array([np.nan, 0.05, 0.08]))}]
    authors = authors_trajectory()
    assert authors["progress"][0] == pytest.approx(100 / 90000)
    _png(plots.save_figure(plots.trajectory_figure(traj, authors, "caption"), tmp_path / "traj.png"))


def test_tight_share_figure_one_bar_per_configuration(tmp_path):
    shares = [{"label": "baseline (RPN NMS 0.7)", "method": "baseline", "nms": 0.7, "mean": 0.2, "low": 0.18,
               "high": 0.22, "seeds": 3},
              {"label": "DLA + DSL (RPN NMS 0.85)", "method": "dynamic", "nms": 0.85, "mean": 0.3, "low": 0.3,
               "high": 0.3, "seeds": 1}]
    fig = plots.tight_share_figure(shares, "runs a, b")
    _png(plots.save_figure(fig, tmp_path / "tight.png"))
    ax = fig.axes[0]
    assert [round(p.get_height(), 6) for p in ax.patches] == [20.0, 30.0]
    assert [t.get_text() for t in ax.texts] == ["20.0%", "30.0%"] and ax.get_ylim()[1] > 30.0 * 1.1


def test_seed_strip_figure_shows_every_seed(tmp_path):
    configs = [{"label": "baseline (RPN NMS 0.85)", "method": "baseline", "nms": 0.85,
                "values": {"AP": {0: 60.0, 1: 61.0, 2: 61.0}, "AP90": {0: 12.0, 1: 13.0, 2: 11.0}}},
               {"label": "DLA + DSL (RPN NMS 0.85)", "method": "dynamic", "nms": 0.85,
                "values": {"AP": {0: 63.0, 1: 62.5}, "AP90": {0: 20.0, 1: 19.0}}}]
    fig = plots.seed_strip_figure(configs, "runs a, b")
    _png(plots.save_figure(fig, tmp_path / "seeds.png"))
    from matplotlib.collections import PathCollection

    dots = [c for c in fig.axes[0].collections if isinstance(c, PathCollection)]
    assert [len(c.get_offsets()) for c in dots] == [3, 2]  # a dot a seed
    assert sorted(float(y) for c in dots for _, y in c.get_offsets()) == [60.0, 61.0, 61.0, 62.5, 63.0]


# ------------------------------------------------------------------------------------------------
# every figure legible on the page: text size as shown, nothing overlapping, no legend over data


def page_problems(fig, dpi: float = plots.DPI) -> list[str]:
    """What a reader would not read in ``fig`` shown :data:`plots.PAGE_WIDTH_PX` wide: texts under
    :data:`plots.MIN_TEXT_PX` at that size, panels / legends / title / footer overlapping each other
    or leaving the canvas, a legend inside a panel covering a plotted point or line, an
    annotation over a legend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.lines import Line2D
    from matplotlib.text import Text

    FigureCanvasAgg(fig)
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    problems = []
    width_in = fig.get_figwidth()
    for t in fig.findobj(Text):
        if not (t.get_visible() and t.get_text().strip()) or (t.axes is not None and not t.axes.get_visible()):
            continue
        px = plots.shown_px(t.get_fontsize(), width_in, dpi)
        assert px == pytest.approx(t.get_fontsize() * dpi / 72 * min(1, plots.PAGE_WIDTH_PX / (width_in * dpi)))
        if px < plots.MIN_TEXT_PX - 1e-9:
            problems.append(f"text {t.get_text()[:40]!r}: {t.get_fontsize():g} pt is {px:.1f} px on the page")
    boxes = [(f"panel {ax.get_title()[:30]!r}", ax.get_tightbbox(r)) for ax in fig.axes if ax.get_visible()]
    boxes += [("figure legend", leg.get_window_extent(r)) for leg in fig.legends]
    boxes += [(f"figure text {t.get_text()[:30]!r}", t.get_window_extent(r)) for t in fig.texts
              if t.get_visible() and t.get_text().strip() and t is not fig._suptitle]
    if fig._suptitle is not None and fig._suptitle.get_text():
        boxes.append(("title", fig._suptitle.get_window_extent(r)))
    W, H = fig.bbox.width, fig.bbox.height
    for name, b in boxes:
        if b.x0 < -1 or b.y0 < -1 or b.x1 > W + 1 or b.y1 > H + 1:
            problems.append(f"{name} leaves the canvas: {b} of {W:.0f} x {H:.0f}")
    for i, (n1, b1) in enumerate(boxes):
        for n2, b2 in boxes[i + 1:]:
            if min(b1.x1, b2.x1) - max(b1.x0, b2.x0) > 1 and min(b1.y1, b2.y1) - max(b1.y0, b2.y0) > 1:
                problems.append(f"{n1} overlaps {n2}")
    for ax in fig.axes:  # the tick labels an axis draws, side by side
        for axis in (ax.xaxis, ax.yaxis) if ax.get_visible() and ax.axison else ():
            labels = [t.label1.get_window_extent(r) for t in axis._update_ticks()
                      if t.label1.get_visible() and t.label1.get_text().strip()]
            for i, b1 in enumerate(labels):
                if any(min(b1.x1, b2.x1) - max(b1.x0, b2.x0) > 1 and min(b1.y1, b2.y1) - max(b1.y0, b2.y0) > 1
                       for b2 in labels[i + 1:]):
                    problems.append(f"tick labels overlap on an axis of panel {ax.get_title()[:30]!r}")
                    break
    for ax in fig.axes:
        leg = ax.get_legend()
        if leg is None or not ax.get_visible() or not ax.axison:
            continue
        lb = leg.get_window_extent(r)
        if not ax.bbox.overlaps(lb):
            continue  # outside the panel
        pts = []
        for line in ax.lines:
            if not isinstance(line, Line2D) or not line.get_visible():
                continue
            xy = ax.transData.transform(np.asarray(line.get_xydata(), dtype=float))
            xy = xy[np.isfinite(xy).all(axis=1)]
            if line.get_drawstyle().startswith("steps-post") and len(xy) > 1:  # the corners of the steps
                xy = np.repeat(xy, 2, axis=0)[1:]
                xy[1::2, 1] = xy[0::2, 1][: len(xy[1::2])]
            pts.append(xy)
            if line.get_linestyle() not in ("None", "", " ") and len(xy) > 1:  # points along the segments
                t = np.linspace(0, 1, 20)[:, None, None]
                pts.append((xy[:-1] + t * (xy[1:] - xy[:-1])).reshape(-1, 2))
        for c in ax.collections:
            off = c.get_offsets()
            if len(off):
                pts.append(c.get_offset_transform().transform(np.asarray(off, dtype=float)))
        if pts:
            xy = np.concatenate(pts)
            inside = ((xy[:, 0] > lb.x0) & (xy[:, 0] < lb.x1) & (xy[:, 1] > lb.y0) & (xy[:, 1] < lb.y1)
                      & (xy[:, 0] > ax.bbox.x0) & (xy[:, 0] < ax.bbox.x1)  # drawn: inside the panel
                      & (xy[:, 1] > ax.bbox.y0) & (xy[:, 1] < ax.bbox.y1))
            if inside.any():
                problems.append(f"the legend of panel {ax.get_title()[:30]!r} covers {int(inside.sum())} plotted points")
        for t in ax.texts:
            if t.get_visible() and t.get_window_extent(r).overlaps(lb):
                problems.append(f"text {t.get_text()!r} under the legend of panel {ax.get_title()[:30]!r}")
    return problems


CONFIGS = [("baseline", 0.7, 5), ("baseline", 0.85, 10), ("dla", 0.85, 5), ("dsl", 0.85, 5), ("dynamic", 0.85, 10)]


def _label(method, nms):
    from dynrcnn.report.curves import config_label

    return config_label((method, nms))


@pytest.fixture(scope="module")
def report_like(tmp_path_factory):
    """Runs as the report of record has them: five configurations, several seeds each, so the
    legends and captions are as long as the report's."""
    root = tmp_path_factory.mktemp("report")
    runs = []
    for method, nms, seeds in CONFIGS:
        base = method if nms == 0.85 or method != "baseline" else "baseline"
        base = "baseline_nms085" if method == "baseline" and nms == 0.85 else base
        for s in range(min(seeds, 3)):
            name = base if s == 0 else f"{base}_seed{s}"
            runs.append(load_run(write_run(root, name, method, seed=s, rpn_nms=nms, iters=900, interval=100)))
    return runs


def every_figure(runs) -> dict:
    """Every figure function of plots.py, on inputs shaped as the report's."""
    from dynrcnn.report.curves import authors_trajectory
    import pandas as pd

    cap = plots.runs_caption(runs)
    x = [float(v) for v in IOUS]
    curves = [{"label": _label(m, n), "method": m, "nms": n, "x": x, "seeds": s,
               "mean": np.linspace(88 - i, 1, 10), "low": np.linspace(86 - i, 0, 10), "high": np.linspace(90 - i, 2, 10)}
              for i, (m, n, s) in enumerate(CONFIGS)]
    gains = [{"label": f"{_label('dynamic', 0.85)} - {_label('baseline', n)}", "x": x, "seeds": seeds,
              "estimate": np.r_[np.linspace(0, 8, 9), 1.0], "low": np.r_[np.linspace(-1, 6, 9), 0.0],
              "high": np.r_[np.linspace(1, 9, 9), 2.0]}
             for n, seeds in ((0.85, "10 vs 10 seeds, paired"), (0.7, "10 vs 5 seeds"))]
    its = np.array([0.0, 20.0, 40.0, 100.0, 200.0, 400.0, 900.0])
    trajs = [{"label": _label(m, n), "method": m, "seeds": s, "max_iter": 900,
              "iou_threshold": (its, np.linspace(0.4, 0.65, 7) if m != "dsl" else np.full(7, 0.5)),
              "beta": (its, np.full(7, 1.0) if m == "dla" else np.linspace(0.6, 0.3, 7)),
              "fg_fraction": (its, np.r_[0.05, 0.17, np.linspace(0.08, 0.07, 5)]) if m != "dsl" else None}
             for m, n, s in CONFIGS if m != "baseline"]
    shares = [{"label": _label(m, n), "method": m, "nms": n, "mean": 0.2 + 0.02 * i, "low": 0.18 + 0.02 * i,
               "high": 0.22 + 0.02 * i, "seeds": s} for i, (m, n, s) in enumerate(CONFIGS)]
    seeds = [{"label": _label(m, n), "method": m, "nms": n,
              "values": {"AP": {k: 60.0 + k % 3 for k in range(s)}, "AP90": {k: 12.0 + k % 4 for k in range(s)}}}
             for m, n, s in CONFIGS]
    peer_its = np.arange(0, 901, 100)
    peer = [{"implementation": impl, "seed": s, "iteration": peer_its, "iou_threshold": np.linspace(0.4, 0.6 + 0.01 * s, 10),
             "beta": np.linspace(1.0, 0.3 + 0.02 * s, 10)} for impl in ("dynrcnn", "mmdet") for s in range(3)]
    peer_table = pd.DataFrame({"metric": ["AP", "AP50", "AP75", "AP90"],
                               **{f"{impl} {k}": np.array([1.0, 0.2, 2.0, 7.0]) + d
                                  for impl in ("dynrcnn", "mmdet") for k, d in (("gain", 0.0), ("low", -1.0), ("high", 1.0))}})
    control = pd.DataFrame([{"schedule": "fixed", "threshold": t, "AP": 60 + 10 * t, "AP min": 59 + 10 * t,
                             "AP max": 61 + 10 * t, "AP90": 10 + 5 * t, "AP90 min": 9 + 5 * t, "AP90 max": 11 + 5 * t,
                             "seeds": 7} for t in (0.5, 0.6, 0.65, 0.7)]
                           + [{"schedule": "DLA", "threshold": np.nan, "AP": 66.0, "AP min": 65.0, "AP max": 67.0,
                               "AP90": 13.0, "AP90 min": 12.0, "AP90 max": 14.0, "seeds": 7}])
    sched = pd.DataFrame([{"benchmark": b, "iterations": n, "AP gain": g, "AP low": g - 1, "AP high": g + 1,
                           "AP90 gain": 3 * g, "AP90 low": 3 * g - 2, "AP90 high": 3 * g + 2, "seeds": 3}
                          for b in ("mini (data seed 0)", "evaluation split (data seed 2)")
                          for n, g in ((300, 0.5), (900, 2.5), (1800, 3.0))])
    pos_its = np.arange(0, 901, 50)
    positives = [{"label": f"fixed {t:g}", "iteration": pos_its, "positives": 20 - 20 * t + 2 * np.sin(pos_its / 100), "seeds": 7}
                 for t in (0.5, 0.6, 0.65, 0.7)] + [{"label": "DLA", "iteration": pos_its,
                                                     "positives": np.linspace(14, 7, len(pos_its)), "seeds": 7}]
    dyn = next(r for r in runs if r.config.method == "dynamic")
    return {
        "smooth_l1": plots.smooth_l1_figure(),
        "proposal_iou": plots.proposal_iou_figure(dyn),
        "stats": plots.stats_figure(dyn, recompute_updates(dyn)),
        "trend_one_run": plots.trend_figure([dyn]),
        "trend": plots.trend_figure(runs),
        "losses_one_run": plots.losses_figure([dyn]),
        "losses": plots.losses_figure(runs),
        "tight_share": plots.tight_share_figure(shares, cap),
        "seeds": plots.seed_strip_figure(seeds, cap),
        "ap_vs_iou": plots.ap_gain_figure(curves, gains, cap),
        "trajectories": plots.trajectory_figure(trajs, authors_trajectory(), cap),
        "peer_trajectories": plots.peer_trajectory_figure(peer, {"dynrcnn": "dynrcnn (ours)",
                                                                 "mmdet": "MMDetection 3.3.0"}, cap),
        "peer_gains": plots.peer_gain_figure(peer_table, {"dynrcnn": "dynrcnn (ours)", "mmdet": "MMDetection 3.3.0"}, cap),
        "thresholds": plots.control_figure(control, "threshold", "DLA", cap),
        "schedule": plots.schedule_figure(sched, cap),
        "positives": plots.positives_figure(positives, cap),
        "ap_run": plots.ap_per_iou_run_figure(dyn),
    }


def test_every_figure_is_legible_at_the_size_the_page_shows_it(report_like, tmp_path):
    names = {n for n in dir(plots) if n.endswith("_figure") and n not in ("save_figure", "save_sample_figure")}
    figures = every_figure(report_like)
    drawn = {"smooth_l1": "smooth_l1_figure", "proposal_iou": "proposal_iou_figure", "stats": "stats_figure",
             "trend": "trend_figure", "losses": "losses_figure", "tight_share": "tight_share_figure",
             "seeds": "seed_strip_figure", "ap_vs_iou": "ap_gain_figure", "trajectories": "trajectory_figure",
             "peer_trajectories": "peer_trajectory_figure", "peer_gains": "peer_gain_figure",
             "thresholds": "control_figure", "schedule": "schedule_figure", "positives": "positives_figure",
             "ap_run": "ap_per_iou_run_figure"}
    assert names - set(drawn.values()) == {"detections_figure"}  # drawn in the next test, on images
    problems = {}
    for name, fig in figures.items():
        plots.save_figure(fig, tmp_path / f"{name}.png")
        assert fig.get_figwidth() * plots.DPI <= plots.PAGE_WIDTH_PX + 1e-6, name  # never scaled down
        problems.update({name: p for p in [page_problems(fig)] if p})
    assert not problems, problems


def _image_data(root, n=6, size=128):
    from PIL import Image

    (root / "annotations").mkdir(parents=True)
    (root / "val").mkdir()
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(n):
        Image.new("RGB", (size, size), (i * 40, 100, 50)).save(root / "val" / f"{i:06d}.png")
        images.append({"id": i + 1, "file_name": f"{i:06d}.png", "width": size, "height": size})
        for k in range(6):  # six objects: crowded, boxes at every edge
            x, y = rng.uniform(0, size - 20, 2)
            w, h = rng.uniform(10, 60, 2)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1 + k % 3, "iscrowd": 0,
                         "bbox": [float(x), float(y), float(min(w, size - x)), float(min(h, size - y))],
                         "area": float(w * h)})
    cats = [{"id": 1, "name": "rectangle"}, {"id": 2, "name": "triangle"}, {"id": 3, "name": "ellipse"}]
    (root / "annotations" / "instances_val.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                                         "categories": cats}))
    return anns


def test_image_figures_are_legible_at_the_size_the_page_shows_them(tmp_path):
    from dynrcnn.data.datasets import load_dataset
    from dynrcnn.data.datastats import dataset_statistics

    data = tmp_path / "data"
    anns = _image_data(data)
    runs = []
    for name, method, shift in (("baseline_nms085", "baseline", 3.0), ("dynamic", "dynamic", 0.5)):
        run = write_run(tmp_path / "runs", name, method, data_root=str(data))
        (run / "detections.json").write_text(json.dumps([
            {"image_id": a["image_id"], "category_id": a["category_id"], "score": 0.93,
             "bbox": [a["bbox"][0] + shift, a["bbox"][1], a["bbox"][2], a["bbox"][3]]} for a in anns]))
        runs.append(load_run(run))
    summary = ("all validation images, detections at IoU >= 0.9: baseline (RPN NMS 0.85) 18.6% (17.4-20.3%, 10 seeds); "
               "DLA + DSL (RPN NMS 0.85) 28.3% (26.5-29.8%, 10 seeds)")
    ds = load_dataset(data, "val", train=False)
    figures = {"detections_compare": (plots.detections_figure(runs, n=3, labels=["baseline", "Dynamic R-CNN"],
                                                              summary=summary), plots.DPI),
               "detections_one_run": (plots.detections_figure(runs[1], n=4), plots.DPI),
               "data_samples": (plots.draw_samples(ds, n=6, title="mini: data/val, 6 random images (seed 0) "
                                                                  "with ground truth"), plots.DPI),
               "data_box_sizes": (plots.plot_box_size_histogram(dataset_statistics(ds)), plots.DPI)}
    problems = {}
    for name, (fig, dpi) in figures.items():
        assert fig.get_figwidth() * dpi <= plots.PAGE_WIDTH_PX + 1e-6, name
        problems.update({name: p for p in [page_problems(fig, dpi)] if p})
    assert not problems, problems
    # save_sample_figure draws at the resolution the page shows
    path = plots.save_sample_figure(data, tmp_path / "samples.png", n=4)
    from PIL import Image

    assert Image.open(path).size[0] <= plots.PAGE_WIDTH_PX
