"""The tree-crown study (``make report-trees``, :mod:`dynrcnn.report.studies.trees`) end to end on
its tiny profile: a handful of generated tiles in the COCO format of ``dynrcnn data trees``
(nothing downloaded), 2 paired seeds x 4 iterations of each method, results.json, the executed
notebook, its figures and docs/trees.md's block; then the study's own figures drawn from those
runs, checked for legibility as the report's figures are."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dynrcnn.report import plots, trees
from dynrcnn.report.claims import STATUSES
from dynrcnn.report.study import RESULTS, StudyContext, get_study

FIGURES = ("data_samples", "ap_vs_iou", "trajectories", "detections")


def tiny_trees(root, n_train: int = 4, n_val: int = 3, size: int = 96, seed: int = 0):
    """``root`` as ``dynrcnn data trees`` writes it, on generated tiles: round green crowns (3 to
    6 a tile, some touching) on a brown ground with noise, one box each, one class ``tree``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "annotations").mkdir(parents=True)
    yy, xx = np.mgrid[0:size, 0:size]
    for split, n in (("train", n_train), ("val", n_val)):
        (root / split).mkdir()
        images, anns = [], []
        for i in range(n):
            pixels = np.clip(rng.normal((110, 85, 60), 12, (size, size, 3)), 0, 255)
            for _ in range(rng.integers(3, 7)):
                r = rng.uniform(7, 16)
                cx, cy = rng.uniform(r, size - r, 2)
                pixels[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = rng.normal((40, 120, 45), 10, 3)
                anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                             "bbox": [cx - r, cy - r, 2 * r, 2 * r], "area": 4 * r * r})
            name = f"tile_{split}_{i}.png"
            Image.fromarray(pixels.astype(np.uint8)).save(root / split / name)
            images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps({
            "info": {"description": "generated tree tiles (test)"}, "images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "tree", "supercategory": "plant"}]}))
    return root


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The tiny study run once under a scratch root (its own docs/trees.md with the markers)."""
    from dynrcnn.data import trees as tree_data
    from dynrcnn.report.studies.trees import run_trees

    root = tmp_path_factory.mktemp("trees_study")
    data = tiny_trees(root / "data")
    (root / "docs").mkdir()
    (root / "docs" / "trees.md").write_text("# Trees\n\n<!-- TREES:BEGIN -->\n<!-- TREES:END -->\n\nafter\n")
    (root / "README.md").write_text("# R\n\n<!-- TREES-HEADLINE:BEGIN -->\n<!-- TREES-HEADLINE:END -->\nend\n")

    def no_download(*a, **k):
        raise AssertionError("the tiny study must not fetch the wheel")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tree_data, "fetch_wheel", no_download)
        mp.setenv(tree_data.CACHE_ENV, str(root / "cache"))  # no wheel cached: no whole-photograph check
        res = run_trees(root=root, jobs=1, threads=1, progress=False, profile="tiny", data_root=data)
    return root, data, res


@pytest.mark.slow
def test_the_tiny_study_writes_results_from_the_package(study):
    root, data, res = study
    assert json.loads((root / "figures" / "trees" / RESULTS).read_text()) == json.loads(json.dumps(res))
    assert res["seeds_planned"] == [0, 1] and res["seeds_used"] == 2 and res["rpn_nms"] == 0.85
    assert {(r["method"], r["seed"]) for r in res["runs"]} == {(m, s) for m in ("baseline", "dynamic") for s in (0, 1)}
    for r in res["runs"]:
        assert all(math.isfinite(r[m]) and 0 <= r[m] <= 100 for m in ("AP", "AP50", "AP75", "AP90"))
        assert len(r["AP_per_iou"]) == 10 and r["AP90"] == r["AP_per_iou"][8] and r["iterations"] == 4
        fixed = r["method"] == "baseline"
        assert (r["final_threshold"], r["final_beta"]) == (0.5, 1.0) if fixed else math.isfinite(r["final_threshold"])
    assert [c["metric"] for c in res["comparisons"]] == ["AP", "AP50", "AP75", "AP90"]
    for c in res["comparisons"]:
        assert c["status"] in STATUSES and c["seeds"] == "2 vs 2 seeds, paired" and set(c["per_seed"]) == {"0", "1"}
        assert math.isfinite(c["low"]) and c["low"] <= c["estimate"] <= c["high"]
    assert len(res["per_iou_gain"]["estimate"]) == 10 and res["final_threshold"] is not None
    assert res["miniature"]["runs"] == 0 and res["authors"]["iou_threshold"] == [0.42, 0.49, 0.52, 0.54]
    assert res["data"]["train"]["tiles"] == 4 and res["data"]["val"]["tiles"] == 3
    assert "On real aerial photographs of tree crowns" in res["interpretation"]
    assert "the miniature's runs were not found" in res["interpretation"]
    assert res["readme_line"].startswith("- **Real photographs**") and "AP90" in res["readme_line"]
    assert res["whole_image"] is None and "wheel is not in the cache" in res["whole_image_text"]


@pytest.mark.slow
def test_the_tiny_study_executes_its_notebook_draws_its_figures_and_writes_the_block(study):
    import nbformat

    root, _, res = study
    for name in FIGURES:
        path = root / "figures" / "trees" / trees.FIGURE_FILES[name]
        assert path.is_file() and path.stat().st_size > 5000, path
    out = root / "build" / "report-trees"
    nb = nbformat.read(out / "08_trees.ipynb", as_version=4)
    for c in nb.cells:
        if c.cell_type == "code":
            assert c.execution_count is not None
            assert not [o for o in c.outputs if o.output_type == "error"], c.source[:80]
            streams = "".join(o.get("text", "") for o in c.outputs if o.output_type == "stream")
            assert "Warning" not in streams, c.source[:80]
    assert (out / "08_trees.html").stat().st_size > 10_000
    page = (root / "docs" / "trees.md").read_text()
    body = page.split("<!-- TREES:BEGIN -->")[1].split("<!-- TREES:END -->")[0]
    assert page.endswith("after\n") and "run_trees(profile='tiny')" in body
    assert "| AP90 |" in body and res["interpretation"] in body and "Written " in body
    assert "its 4 runs trained for" in body  # the runs' own training time beside this invocation's
    assert "![Detections on validation tiles](../figures/trees/detections.jpg)" in body
    readme = (root / "README.md").read_text()
    assert f"<!-- TREES-HEADLINE:BEGIN -->\n{res['readme_line']}\n<!-- TREES-HEADLINE:END -->\nend\n" in readme


@pytest.mark.slow
def test_a_second_study_has_nothing_to_train(study):
    root, data, _ = study
    ctx = StudyContext(root, root / "figures" / "trees", root / "build" / "report-trees", jobs=1,
                       state={"profile": "tiny", "data_root": data})
    work = get_study("trees").work(ctx)
    assert work.summary.startswith("0 of 4 runs to train or evaluate") and not work.tracked


@pytest.mark.slow
def test_the_tree_figures_are_legible_with_the_miniature_line(study):
    """The three figures drawn from the tiny runs, the miniature's line drawn from the same runs:
    at most 8 in wide, no text under 9 pt, nothing overlapping (the report's own check)."""
    from dynrcnn.data.datasets import load_dataset
    from dynrcnn.report.curves import authors_trajectory
    from dynrcnn.rundir.runs import find_runs
    from tests.test_plots import page_problems

    root, data, _ = study
    pair = trees.study_runs(find_runs(root / "runs" / "trees_tiny"), (0, 1))
    runs = pair["baseline"] + pair["dynamic"]
    trajs = trees.trajectories(runs, pair["dynamic"])
    assert [t["data"] for t in trajs] == ["tree crowns", "miniature"]
    figures = {
        "samples": plots.draw_crowns({s: load_dataset(data, s, train=False) for s in ("train", "val")}, cap="tiles"),
        "trajectories": plots.plot_trees_trajectories(trajs, authors_trajectory(), plots.runs_caption(runs)),
        "trajectories_note": plots.plot_trees_trajectories(trajs[:1], authors_trajectory(), "caption", note="no mini"),
        "detections": plots.draw_tree_detections([pair["baseline"][0], pair["dynamic"][0]],
                                                 ["Faster R-CNN", "Dynamic R-CNN"], data, summary="share line"),
    }
    from matplotlib.text import Text

    for name, fig in figures.items():
        assert fig.get_figwidth() <= plots.PAGE_WIDTH_IN + 1e-9, name
        small = [t.get_text()[:30] for t in fig.findobj(Text) if t.get_text().strip() and t.get_fontsize() < 9]
        assert not small, (name, small)
        assert not page_problems(fig), (name, page_problems(fig))


def test_match_is_greedy_one_to_one_by_score():
    """Hand-made: two detections on one crown (the higher score takes it), one on the other crown
    at IoU 0.81 (a hit at 0.5, not at 0.9), one on nothing."""
    truth = [[0, 0, 10, 10], [20, 0, 30, 10]]
    boxes = [[0, 0, 10, 10], [0, 0, 10, 9], [20, 0, 30, 8.1], [50, 50, 60, 60]]
    assert trees.match(boxes, truth, 0.5).tolist() == [True, False, True, False]
    assert trees.match(boxes, truth, 0.9).tolist() == [True, False, False, False]
    # the second detection takes the crown when the first is gone (it overlaps it at 0.9)
    assert trees.match(boxes[1:], truth, 0.9).tolist() == [True, False, False]
    assert trees.match([], truth, 0.5).tolist() == [] and trees.match(boxes, [], 0.5).tolist() == [False] * 4


@pytest.mark.slow
def test_the_whole_photograph_is_detected_in_tiles_and_scored_against_its_own_annotation(study, tmp_path):
    """A wheel holding one 200 x 150 px photograph of crowns: the tiny runs detect it in 96 px
    tiles; every number of the check follows from its boxes, and the figure is legible."""
    import io
    import zipfile

    from PIL import Image

    from dynrcnn.rundir.runs import find_runs
    from tests.test_plots import page_problems
    from tests.test_trees import voc

    root, _, _ = study
    rng = np.random.default_rng(1)
    pixels = np.clip(rng.normal((110, 85, 60), 12, (150, 200, 3)), 0, 255)
    crowns = [(20, 20, 50, 50), (120, 60, 150, 90), (60, 100, 84, 124)]
    for x0, y0, x1, y1 in crowns:
        pixels[y0:y1, x0:x1] = (40, 120, 45)
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, format="PNG")
    wheel = tmp_path / "photo.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("deepforest/data/photo.xml", voc(crowns, 200, 150, "photo.png"))
        z.writestr("deepforest/data/photo.png", buf.getvalue())
    pair = trees.study_runs(find_runs(root / "runs" / "trees_tiny"), (0, 1))
    whole = trees.whole_image(pair, wheel, "photo", tile=96, stride=48, score_thresh=0.0)
    assert (whole["width"], whole["height"], whole["crowns"]) == (200, 150, 3) and whole["truth"][0] == [20, 20, 50, 50]
    assert set(whole["methods"]) == {"baseline", "dynamic"}
    for e in whole["methods"].values():
        assert e["seed"] == 0 and e["detections"] == len(e["boxes"]) == len(e["tight"])
        hits = int(trees.match(e["boxes"], whole["truth"], 0.5).sum())
        assert e["recall50"] == pytest.approx(100 * hits / 3) and e["precision50"] == pytest.approx(
            100 * hits / max(1, e["detections"]))
        assert e["recall90"] <= e["recall50"] and sum(e["tight"]) == round(e["recall90"] * 3 / 100)
        assert all(0 <= b[0] <= b[2] <= 200 and 0 <= b[1] <= b[3] <= 150 for b in e["boxes"])
    text = trees.whole_image_text(whole)
    assert "photo (200 x 150 px, 3 annotated crowns)" in text and "96 px tiles at stride 48" in text
    fig = plots.draw_whole_image(whole, wheel, "caption")
    assert fig.get_figwidth() <= plots.PAGE_WIDTH_IN + 1e-9 and not page_problems(fig)
    with pytest.raises(Exception, match="not the photograph the study scored"):
        plots.draw_whole_image({**whole, "sha256": "0" * 64}, wheel)
