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
    assert "0.png: dynamic: 1, 0 at IoU >= 0.9" in titles and "0.png: ground truth (1)" in titles
    assert "1.png: dynamic: 0, 0 at IoU >= 0.9" in titles  # the 0.1 detection is under the score threshold
    # two runs on the same images: one column each, tight boxes drawn solid
    base = write_run(tmp_path / "runs", "baseline", "baseline", data_root=str(root))
    (base / "detections.json").write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 10],
                                                       "score": 0.8}]))
    fig = plots.detections_figure([load_run(base), load_run(run)], n=2, labels=["B", "D"], summary="all images: X")
    assert len(fig.axes) == 6 and fig._suptitle.get_text().endswith("\nall images: X")
    titles = [ax.get_title() for ax in fig.axes]
    assert "0.png: B: 1, 1 at IoU >= 0.9" in titles and "0.png: D: 1, 0 at IoU >= 0.9" in titles
    styles = {ax.get_title(): [p.get_linestyle() for p in ax.patches] for ax in fig.axes}
    assert styles["0.png: B: 1, 1 at IoU >= 0.9"] == ["-"] and styles["0.png: D: 1, 0 at IoU >= 0.9"] == ["--"]


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
