"""Issue 32, the premise: the targets declared in code agree with docs/premise.md, the measurements
(a)-(d) on synthetic records, the head's count of RPN positives per object, and the candidate search
end to end on the smoke preset (baseline runs only)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dynrcnn.errors import ConfigError, DynrcnnError
from dynrcnn.evaluation import premise
from dynrcnn.evaluation.premise import TARGETS, targets_markdown

REPO = Path(__file__).resolve().parent.parent
PAGE = REPO / "docs" / "premise.md"


def test_the_page_shows_the_targets_of_the_code():
    from dynrcnn.report.text import readme_markers

    text = PAGE.read_text()
    begin, end = readme_markers("PREMISE-TARGETS")
    block = text.split(begin, 1)[1].split(end, 1)[0].strip()
    assert block == targets_markdown(), "run: dynrcnn premise targets --write docs/premise.md"
    assert [t.key for t in TARGETS] == ["a", "b", "c", "d"]
    assert all(t.source and t.criterion and t.found in ("yes", "partly", "no") for t in TARGETS)


def test_the_page_names_every_declared_candidate():
    from dynrcnn.report.premise import CANDIDATES

    text = PAGE.read_text()
    assert all(f"`{name}`" in text for name in CANDIDATES)


def test_the_page_shows_the_search_record_as_committed():
    """The candidates table is written from docs/premise_candidates.jsonl, never edited by hand."""
    from dynrcnn.report.premise import candidates_markdown, read_records
    from dynrcnn.report.text import readme_markers

    begin, end = readme_markers("PREMISE-CANDIDATES")
    block = PAGE.read_text().split(begin, 1)[1].split(end, 1)[0].strip()
    assert block == candidates_markdown(read_records(REPO / "docs" / "premise_candidates.jsonl"))


def test_the_cascade_numbers_are_those_of_its_figures():
    # Fig. 1(d) / 5(a): u=0.5 (AP=0.349) u=0.6 (AP=0.354) u=0.7 (AP=0.319); Fig. 4's first panel
    assert premise.CASCADE_FIXED_AP == {0.5: 34.9, 0.6: 35.4, 0.7: 31.9}
    assert premise.CASCADE_RPN_SHARES[0.7] < premise.CASCADE_RPN_SHARES[0.6] < premise.CASCADE_RPN_SHARES[0.5]
    assert sum(premise.COCO_SIZE_SHARES.values()) == pytest.approx(0.99)


# ----------------------------------------------------------------------------------------------
# (a)


def test_paradox_is_a_paired_t_interval_over_seeds():
    from scipy import stats

    ap = {0.5: [50.0, 52.0, 51.0], 0.6: [50.5, 52.2, 51.9], 0.7: [47.0, 49.5, 49.0]}
    values = {t: {s: {"AP": v, "AP90": v / 10} for s, v in enumerate(vals)} for t, vals in ap.items()}
    out = premise.paradox(values)
    d = np.array(ap[0.7]) - np.array(ap[0.5])
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
    got = out["diff_070_050"]["AP"]
    assert got["estimate"] == pytest.approx(d.mean())
    assert (got["low"], got["high"]) == pytest.approx((d.mean() - half, d.mean() + half))
    assert out["met"] is True and out["means"]["AP"]["0.7"] == pytest.approx(np.mean(ap[0.7]))
    # one seed: no interval, no verdict
    one = premise.paradox({t: {0: v[0]} for t, v in values.items()})
    assert one["met"] is None and math.isnan(one["diff_070_050"]["AP"]["high"])


# ----------------------------------------------------------------------------------------------
# (b) and (c)


def test_positive_shortage_windows_weight_each_log_line_by_its_span():
    # 200 iterations logged every 2: positives per object ramp from 0.2 to 5
    its = np.arange(2, 201, 2)
    metrics = pd.DataFrame({"iteration": its, "rpn_positives_per_object": np.where(its <= 20, 0.5, 5.0)})
    out = premise.positive_shortage(metrics, 200)
    assert out["first_0.01"] == pytest.approx(0.5) and out["late"] == pytest.approx(5.0)
    assert out["ratio_0.01"] == pytest.approx(0.1) and out["ratio_0.1"] == pytest.approx(0.1)
    assert premise.shortage_met([out]) is True
    # logged every 20: the first 1 % has no line of its own
    coarse = premise.positive_shortage(metrics[metrics.iteration % 20 == 0], 200)
    assert coarse["first_0.01"] is None and coarse["ratio_0.1"] == pytest.approx(0.1)
    assert premise.shortage_met([coarse]) is None
    # a run from before the key existed
    assert premise.positive_shortage(metrics.drop(columns="rpn_positives_per_object"), 200)["late"] is None


def test_proposal_quality_shares_from_the_histograms():
    edges = torch.linspace(0, 1, 21).tolist()  # as StatsHook writes them

    def rec(it, high):  # 100 proposals, `high` of them at IoU 0.75-0.8, 10 at 0.55, the rest at 0.1
        counts = [0] * 20
        counts[2], counts[11], counts[15] = 90 - high, 10, high
        return {"iteration": it, "bin_edges": edges, "counts": counts}

    records = [rec(1, 1), rec(5, 2), rec(95, 8), rec(100, 10)]
    out = premise.proposal_quality(records, 100)
    assert out["first_0.01"] == {"0.5": pytest.approx(0.11), "0.6": pytest.approx(0.01), "0.7": pytest.approx(0.01)}
    assert out["first_0.1"]["0.7"] == pytest.approx(0.015) and out["late"]["0.7"] == pytest.approx(0.09)
    assert premise.quality_met([out]) is False  # 9 % above 0.7 late: more than twice Cascade R-CNN's 2.9 %


# ----------------------------------------------------------------------------------------------
# (d)


def test_scene_statistics_scale_cocos_thresholds_to_the_image():
    images = [{"id": i, "width": 128, "height": 128, "file_name": f"{i}.png"} for i in (1, 2)]
    # at 128 px, COCO's 32^2 px (of a 640 x 480 image) is 54.6 px^2 and 96^2 is 491.5 px^2
    areas = [40, 50, 100, 400, 600, 5000, 30, 200]
    anns = [{"id": k, "image_id": 1 + k % 2, "category_id": 1, "bbox": [0, 0, 10, 10], "area": a, "iscrowd": 0}
            for k, a in enumerate(areas)]
    data = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "x"}]}
    out = premise.scene_statistics(data)
    assert out["objects_per_image"] == 4.0
    assert out["relative"] == {"small": 3 / 8, "medium": 3 / 8, "large": 2 / 8}
    assert out["absolute"]["large"] == 0.0 and out["met"] is False  # 4 objects per image: too sparse


# ----------------------------------------------------------------------------------------------
# the head's count of RPN positives per object (metrics.jsonl's rpn_positives_per_object)


def test_rpn_positives_per_object_leave_the_appended_ground_truth_out():
    from dynrcnn.modeling.model import build_model, dynamic_head
    from dynrcnn.presets import build_config
    from dynrcnn.rundir.runs import POSITIVE_KEYS

    assert POSITIVE_KEYS[-1] == "rpn_positives_per_object"
    cfg = build_config("mini_smoke", "baseline", overrides=["model.fg_iou_thresh=0.6"])
    head = dynamic_head(build_model(cfg, 3)).train()
    gt1 = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    gt2 = torch.tensor([[0.0, 0.0, 10.0, 10.0], [40.0, 40.0, 60.0, 60.0]])
    # image 1: IoU 0.81, 0.64, 0.55 with its box; image 2: one proposal at IoU 1.0 on its second box
    p1 = torch.tensor([[0.0, 0.0, 9.0, 9.0], [0.0, 0.0, 8.0, 8.0], [0.0, 0.0, 10.0, 5.5]])
    p2 = torch.tensor([[40.0, 40.0, 60.0, 60.0], [100.0, 100.0, 110.0, 110.0]])
    head.select_training_samples([p1, p2], [{"boxes": gt1, "labels": torch.tensor([1])},
                                            {"boxes": gt2, "labels": torch.tensor([1, 2])}])
    assert float(head.rpn_positives_per_object) == pytest.approx(3 / 3)  # 2 + 1 RPN positives, 3 objects
    assert float(head.positives_per_image) == pytest.approx((3 + 3) / 2)  # ground truth included


def test_measure_refuses_any_run_but_the_baseline():
    from types import SimpleNamespace

    run = SimpleNamespace(method="dynamic", path="runs/x")
    with pytest.raises(DynrcnnError, match="baseline runs only"):
        premise.candidate_runs([run])


def test_a_candidate_may_not_change_the_method():
    from dynrcnn.report.premise import CANDIDATES, Candidate, candidate_from_json

    for c in CANDIDATES.values():
        c.check()
    with pytest.raises(ConfigError, match="changes the method"):
        Candidate("x", "", {}, ("method=dynamic",)).check()
    with pytest.raises(ConfigError):
        candidate_from_json('{"generator": {}}')


def test_the_record_is_strict_json_with_intervals_of_one_seed(tmp_path):
    from dynrcnn.report.premise import append_record, read_records

    path = tmp_path / "r.jsonl"
    one = premise.paradox({t: {0: {"AP": 50.0, "AP90": 5.0}} for t in (0.5, 0.6, 0.7)})
    append_record({"measured": {"a": one}}, path)
    assert "NaN" not in path.read_text()
    assert read_records(path)[0]["measured"]["a"]["diff_070_050"]["AP"]["high"] is None


# ----------------------------------------------------------------------------------------------
# the search, end to end on the smoke preset


TINY = ("max_iter=2", "lr_steps=1", "warmup_iters=1", "ims_per_batch=2", "num_workers=0", "model.min_size=64",
        "model.max_size=64", "model.rpn_pre_nms_top_n_train=200", "model.rpn_post_nms_top_n_train=100",
        "model.rpn_pre_nms_top_n_test=100", "model.rpn_post_nms_top_n_test=50", "eval_batch_size=4")


def test_search_end_to_end_on_the_smoke_preset(tmp_path, capsys):
    from dynrcnn.cli import main
    from dynrcnn.report.premise import read_records
    from dynrcnn.rundir.runs import find_runs

    page = tmp_path / "premise.md"
    page.write_text("# x\n<!-- PREMISE-CANDIDATES:BEGIN -->\n<!-- PREMISE-CANDIDATES:END -->\n")
    record = tmp_path / "candidates.jsonl"
    cand = json.dumps({"name": "tiny_dense", "description": "plumbing check",
                       "generator": {"min_objects": 3, "max_objects": 5, "distractors": 1}})
    argv = ["premise", "search", "--candidate-json", cand, "--root", str(tmp_path / "search"), "--record",
            str(record), "--page", str(page), "--preset", "mini_smoke", "--seeds", "0", "1", "2", "--train", "6",
            "--val", "3", "--device", "cpu"] + [a for item in TINY for a in ("--set", item)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "tiny_dense: AP(0.7) - AP(0.5)" in out
    (rec,) = read_records(record)
    assert rec["generator"] == {"min_objects": 3, "max_objects": 5, "distractors": 1}
    assert rec["measured"]["seeds"] == {"0.5": [0, 1, 2], "0.6": [0, 1, 2], "0.7": [0, 1, 2]}
    assert set(rec["met"]) == {"a", "b", "c", "d"} and rec["data"]["seed"] == 3
    runs = find_runs(tmp_path / "search")
    assert len(runs) == 9 and {r.method for r in runs} == {"baseline"}
    assert sorted({r.config.model.fg_iou_thresh for r in runs}) == [0.5, 0.6, 0.7]
    r = runs[0]
    assert r.config.log_stats and r.config.log_period == 1 and r.proposal_ious and r.eval is not None
    assert r.metrics["rpn_positives_per_object"].notna().all()
    b = rec["measured"]["b"]["runs"][0]
    assert b["late"] is not None and b["first_0.01"] is not None
    assert rec["measured"]["c"]["runs"][0]["late"] is not None
    assert "| tiny_dense | mini_smoke, 2, 3 |" in page.read_text()
    # a second search reuses the finished runs and appends a second line
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "search").rglob("eval.json")}
    assert main(argv) == 0
    assert len(read_records(record)) == 2
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "search").rglob("eval.json")} == before
