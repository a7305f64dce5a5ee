"""Report tables, verdicts and profiles on synthetic run directories and hand-made numbers."""

from __future__ import annotations

import json
import math

import nbformat
import numpy as np
import pytest

from dynrcnn import reference, report
from dynrcnn.errors import DynrcnnError
from dynrcnn.config import build_config
from dynrcnn.runs import find_runs, load_run, train_action
from tests.test_plots import write_run  # synthetic run directories


# ------------------------------------------------------------------ verdicts on hand-made numbers

def test_verdict_delta_miniature():
    assert report.verdict_delta(3.0, 1.9, "miniature", 1.0).sentence.startswith("direction reproduced at miniature scale")
    assert "magnitude not comparable to COCO" in report.verdict_delta(3.0, 1.9, "miniature", 1.0).sentence
    neg = report.verdict_delta(-2.5, 1.9, "miniature", 1.0)
    assert neg.status == "contradicted" and neg.sentence.startswith("not reproduced") and "-2.5" in neg.sentence
    assert report.verdict_delta(0.4, 1.9, "miniature", 1.0).sentence.startswith("inconclusive")
    assert report.verdict_delta(-0.4, 1.9, "miniature", 1.0).sentence.startswith("inconclusive")
    assert report.verdict_delta(float("nan"), 1.9, "miniature", 1.0).sentence.startswith("not measured")


def test_verdict_delta_coco():
    assert report.verdict_delta(1.8, 1.9, "COCO", 0.3).sentence.startswith("reproduced")
    assert report.verdict_delta(1.0, 1.9, "COCO", 0.3).sentence.startswith("partly reproduced")
    assert report.verdict_delta(-0.5, 1.9, "COCO", 0.3).sentence.startswith("not reproduced")


def test_verdict_absolute_and_overhead():
    assert report.verdict_absolute(38.7, 38.9, "COCO").sentence.startswith("reproduced within ±0.3")
    assert report.verdict_absolute(37.9, 38.9, "COCO").sentence.startswith("not reproduced: -1.0")
    assert report.verdict_absolute(60.0, 38.9, "miniature").sentence.startswith("not testable")
    assert report.verdict_overhead(1.04, 0.05, "gpu").sentence.startswith("reproduced on GPU")
    bad = report.verdict_overhead(1.30, 0.10, "cpu")
    assert bad.status == "contradicted" and bad.sentence.startswith("not reproduced") and "+30.0%" in bad.sentence


def test_verdict_statuses():
    assert report.verdict_delta(3.0, 1.9, "miniature", 1.0).status == "reproduced"
    assert report.verdict_delta(0.4, 1.9, "miniature", 1.0).status == "inconclusive"
    assert report.verdict_delta(float("nan"), 1.9, "miniature", 1.0).status == "not-testable"
    assert report.verdict_absolute(60.0, 38.9, "miniature").status == "not-testable"
    assert report.verdict_absolute(38.7, 38.9, "COCO").status == "reproduced"
    assert set(report.STATUSES) == {"reproduced", "contradicted", "inconclusive", "not-testable"}


def test_noise_tolerance():
    tol, text = report.noise_tolerance("AP", [1.0], [2.0])
    assert tol == report.MINI_NOISE["AP"] and "assumed" in text
    tol, text = report.noise_tolerance("AP", [30.0, 31.0, 32.0], [29.0, 29.5, 30.0])
    se = math.sqrt(np.var([30, 31, 32], ddof=1) / 3 + np.var([29, 29.5, 30], ddof=1) / 3)
    assert tol == pytest.approx(max(2 * se, 0.5)) and "3+3 seeds" in text


# ------------------------------------------------------------------ tables from synthetic runs

@pytest.fixture()
def mini_runs(tmp_path):
    root = tmp_path / "runs"
    per_iou_b = [50, 48, 45, 42, 38, 33, 27, 20, 10, 2]
    per_iou_d = [49, 48, 46, 44, 41, 37, 31, 25, 16, 4]  # gain at high IoU
    write_run(root, "baseline", "baseline", ap=31.5, ap_per_iou=per_iou_b, sec_per_iter=0.50)
    write_run(root, "dla", "dla", ap=32.0, sec_per_iter=0.51)
    write_run(root, "dsl", "dsl", ap=31.0, sec_per_iter=0.50)
    write_run(root, "dynamic", "dynamic", ap=33.1, ap_per_iou=per_iou_d, sec_per_iter=0.52)
    write_run(root, "baseline_nms085", "baseline", ap=33.5, rpn_nms=0.85, sec_per_iter=0.5)
    return root


def test_ablation_table(mini_runs):
    ab = report.ablation_table(find_runs(mini_runs))
    assert list(ab["configuration"]) == ["baseline", "DLA only", "DSL only", "DLA + DSL", "baseline (RPN NMS 0.85)"]
    for col in ("AP", "AP50", "AP75", "AP90", "ΔAP vs baseline", "scale"):
        assert col in ab
    row = ab.set_index("configuration").loc["DLA + DSL"]
    assert row["AP90"] == 16  # AP_per_iou[8]: IoU 0.90 selected by index
    assert row["ΔAP90 vs baseline"] == pytest.approx(6)
    assert row["ΔAP vs baseline"] == pytest.approx(1.6)
    assert (ab["scale"] == "miniature benchmark (not COCO)").all()
    assert list(ab["DLA"]) == ["", "yes", "", "yes", ""] and list(ab["DSL"]) == ["", "", "yes", "yes", ""]


def test_claims_table_miniature(mini_runs):
    cl = report.claims_table(find_runs(mini_runs))
    assert list(cl.columns) == ["claim", "source", "published", "ours", "difference", "tolerance", "verdict",
                                "scale", "compared"]
    assert cl["verdict"].map(bool).all() and cl["tolerance"].map(bool).all()
    by = cl.set_index("claim")
    ap = by.loc[reference.get("paper_delta_ap").description]
    assert ap["ours"] == pytest.approx(1.6) and ap["source"] == "paper abstract" and ap["published"] == 1.9
    assert ap["verdict"].startswith("direction reproduced at miniature scale")
    ap90 = by.loc[reference.get("paper_delta_ap90").description]
    assert ap90["ours"] == pytest.approx(6) and ap90["verdict"].startswith("direction reproduced")
    over = by.loc[reference.get("paper_overhead").description]
    assert over["ours"] == pytest.approx(0.52 / 0.50) and over["verdict"].startswith("reproduced")
    absolute = by.loc[reference.get("official_r50_1x").description]
    assert absolute["verdict"].startswith("not testable") and math.isnan(absolute["difference"])
    assert set(cl["source"]) >= {"paper abstract", "official repo", "MMDet model zoo", "seed reproduction"}
    assert (cl["scale"] == "miniature benchmark (not COCO)").all()
    # the RPN NMS confound is reported next to the claims
    ctx = cl[cl["claim"].str.startswith("(context) baseline RPN NMS 0.7 -> 0.85")]
    assert len(ctx) == 2 and ctx.iloc[0]["ours"] == pytest.approx(2.0)


def test_claims_negative_result_reported(tmp_path):
    root = tmp_path / "runs"
    write_run(root, "baseline", "baseline", ap=33.0, ap_per_iou=[50, 48, 45, 42, 38, 33, 27, 20, 12, 2])
    write_run(root, "dynamic", "dynamic", ap=30.0, ap_per_iou=[47, 45, 42, 39, 35, 30, 24, 17, 9, 1],
              sec_per_iter=0.8)
    cl = report.claims_table(find_runs(root)).set_index("claim")
    ap = cl.loc[reference.get("paper_delta_ap").description]
    assert ap["ours"] == pytest.approx(-3.0) and ap["verdict"].startswith("not reproduced at miniature scale")
    ap90 = cl.loc[reference.get("paper_delta_ap90").description]
    assert ap90["verdict"].startswith("not reproduced")
    assert cl.loc[reference.get("paper_overhead").description, "verdict"].startswith("not reproduced")


def test_claims_coco_scale(tmp_path):
    root = tmp_path / "runs"
    write_run(root, "baseline", "baseline", preset="coco_r50_fpn_1x", ap=37.3)
    write_run(root, "dynamic", "dynamic", preset="coco_r50_fpn_1x", ap=38.8, rpn_nms=0.85, device="cuda:0")
    runs = find_runs(root)
    assert report.profile_scale(runs) == "COCO"
    cl = report.claims_table(runs).set_index("claim")
    assert cl.loc[reference.get("official_r50_1x").description, "verdict"].startswith("reproduced within")
    assert cl.loc[reference.get("mmdet_faster_r50_1x").description, "ours"] == pytest.approx(37.3)
    assert cl.loc[reference.get("paper_delta_ap").description, "verdict"].startswith("partly reproduced")
    assert (cl["scale"] == "COCO").all()
    assert "RPN NMS 0.85 vs 0.7" in cl.iloc[0]["compared"]


def test_missing_runs_are_not_measured(tmp_path):
    write_run(tmp_path / "runs", "baseline", "baseline")
    cl = report.claims_table(find_runs(tmp_path / "runs"))
    assert cl.iloc[0]["verdict"].startswith("not measured")
    assert report.claims_table([]).shape[0] == len(reference.CLAIM_KEYS)


def test_compute_environment_and_readme(mini_runs, tmp_path):
    runs = find_runs(mini_runs)
    nb = nbformat.v4.new_notebook()
    nb.metadata["papermill"] = {"duration": 120.0}
    nbformat.write(nb, tmp_path / "train_dynamic.ipynb")
    durations = report.notebook_durations(tmp_path)
    assert durations == {"train_dynamic": 120.0}
    cost = report.compute_table(runs, durations).set_index("run")
    assert cost.loc["dynamic", "train notebook (min)"] == 2.0 and cost.loc["dynamic", "s/iter (median)"] == 0.52
    assert cost.loc["baseline", "device"] == "cpu" and cost.loc["baseline", "peak memory (MB)"] == 100.0
    env = report.environment_table(runs)
    assert "papermill" in env and env["torch"].iloc[0] == "2.x"
    md = report.readme_table(mini_runs)
    assert "miniature benchmark (not COCO)" in md and "| DLA + DSL |" in md
    assert "this report (miniature)" in md and "published (COCO)" in md
    table_lines = [line for line in md.splitlines() if line.startswith("|")]
    assert len({line.count("|") for line in table_lines[:7]}) == 1  # ablation rows well formed


def test_ap_per_iou_table_and_eval_table(mini_runs):
    runs = find_runs(mini_runs)
    t = report.ap_per_iou_table(runs).set_index("run")
    assert list(t.columns)[8] == "AP@0.90" and t.loc["dynamic", "AP@0.90"] == 16
    e = report.eval_table(runs)
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl", "AP90", "scale"} <= set(e.columns)


def test_recompute_updates_matches_logged(mini_runs):
    run = load_run(mini_runs / "dynamic")
    re = report.recompute_updates(run)
    assert len(re) == 10 and (re["n_iou"] == 10).all()
    assert np.allclose(re["iou_threshold_logged"], re["iou_threshold_recomputed"])
    assert np.allclose(re["beta_logged"], re["beta_recomputed"])


def test_sentences(mini_runs):
    runs = find_runs(mini_runs)
    assert "same directions as the paper" in report.trend_sentence(runs)
    s = report.ap_sentence(runs)
    assert "+6.0 at 0.90" in s and "miniature" in s


# ------------------------------------------------------------------ profiles, configs, reuse

def test_profiles():
    smoke, mini, coco = (report.get_profile(n) for n in ("smoke", "mini", "coco"))
    assert [r.method for r in smoke.runs] == ["baseline", "dynamic"] and smoke.preset == "mini_smoke"
    assert {r.method for r in mini.runs} == {"baseline", "dla", "dsl", "dynamic"}
    assert any("model.rpn_nms_thresh=0.85" in r.overrides for r in mini.runs)
    assert coco.preset == "coco_r50_fpn_1x" and coco.generate is None
    spec = smoke.runs[1]
    assert "log_stats=true" in smoke.run_overrides(spec)
    assert "log_stats=true" not in smoke.run_overrides(smoke.runs[0])
    for p in (smoke, mini):  # every profile's overrides are valid config keys
        for s in p.runs:
            build_config(p.preset, s.method, overrides=p.run_overrides(s))
    with pytest.raises(DynrcnnError):
        report.get_profile("nope")
    with pytest.raises(DynrcnnError, match="data-root"):
        report.run_pipeline("coco", out="/nonexistent/x", progress=False)


def test_plan_order(tmp_path):
    steps = report.plan(report.get_profile("mini"), tmp_path / "out", tmp_path / "runs", tmp_path / "data", "cpu",
                        tmp_path / "fig", force=False)
    kinds = [s.kind for s in steps]
    assert kinds == ["data"] + ["train"] * 5 + ["evaluate"] * 5 + ["method", "results"]
    assert steps[-2].params["run_dir"].endswith("dynamic")
    assert all(set(s.params) <= _notebook_params(s.notebook) for s in steps)


def _notebook_params(stem):
    nb = nbformat.read(report.NOTEBOOK_DIR / f"{stem}.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    return {line.split("=")[0].strip() for line in cell.source.splitlines() if "=" in line}


def test_train_action(mini_runs):
    run_dir = mini_runs / "dynamic"
    cfg = build_config("mini", "dynamic", overrides=["max_iter=100", "dynamic.interval=10",
                                                           "log_stats=true", "log_period=10"])
    assert train_action(run_dir, cfg)[0] == "reuse"
    assert train_action(run_dir, cfg, force=True)[0] == "train"
    other = build_config("mini", "dynamic", overrides=["max_iter=200"])
    action, why = train_action(run_dir, other)
    assert action == "train" and "another config" in why
    assert train_action(mini_runs / "missing", cfg)[0] == "train"


def test_cli_registers_report():
    from dynrcnn.cli import build_parser

    args = build_parser().parse_args(["report", "--profile", "smoke", "--jobs", "1", "--force"])
    assert args.profile == "smoke" and args.jobs == 1 and args.force and callable(args.func)


def test_update_readme_replaces_only_the_marked_block(mini_runs, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\n{report.README_BEGIN}\nold numbers 99.9\n{report.README_END}\n\n## Quick start\n")
    assert report.update_readme(readme, mini_runs, tmp_path / "figures")
    text = readme.read_text()
    assert "old numbers" not in text and text.startswith("# Title") and text.endswith("## Quick start\n")
    assert "figures/trend.png" in text and "figures/ap_vs_iou.png" in text
    assert report.readme_table(mini_runs, "runs") in text and "Runs under `runs`" in text
    assert report.update_readme(readme, mini_runs, tmp_path / "figures")  # idempotent: one block
    assert readme.read_text().count(report.README_BEGIN) == 1
    unmarked = tmp_path / "OTHER.md"
    unmarked.write_text("no markers\n")
    assert not report.update_readme(unmarked, mini_runs, tmp_path / "figures")
    assert unmarked.read_text() == "no markers\n"


def test_extra_seeds_repeat_baseline_and_dynamic(tmp_path):
    prof = report.get_profile("mini").with_seeds([1, 2])
    names = [r.name for r in prof.runs]
    assert names[:5] == [r.name for r in report.get_profile("mini").runs]
    assert names[5:] == ["baseline_nms085_seed1", "dynamic_seed1", "baseline_nms085_seed2", "dynamic_seed2"]
    assert {r.seed for r in prof.runs[5:]} == {1, 2} and report.get_profile("mini").with_seeds([0]) == report.get_profile("mini")
    steps = report.plan(prof, tmp_path / "out", tmp_path / "runs", tmp_path / "data", "cpu", tmp_path / "fig", False)
    train = {s.output: s.params for s in steps if s.kind == "train"}
    assert train["train_dynamic_seed2"]["seed"] == 2 and train["train_dynamic_seed2"]["method"] == "dynamic"
    assert "log_stats=true" in train["train_dynamic_seed2"]["overrides"]
    assert report.NMS_085 in train["train_dynamic_seed2"]["overrides"]
    assert report.NMS_085 in train["train_baseline_nms085_seed1"]["overrides"]


def test_ablation_delta_uses_the_baseline_at_the_same_rpn_nms(tmp_path):
    root = tmp_path / "runs"
    write_run(root, "baseline", "baseline", ap=30.0)
    write_run(root, "baseline_nms085", "baseline", ap=32.0, rpn_nms=0.85)
    write_run(root, "dynamic", "dynamic", ap=33.0, rpn_nms=0.85)
    ab = report.ablation_table(find_runs(root)).set_index("configuration")
    dyn = ab.loc[[c for c in ab.index if c.startswith("DLA + DSL")][0]]
    assert dyn["ΔAP vs baseline"] == pytest.approx(1.0) and dyn["Δ vs"] == "baseline (RPN NMS 0.85)"
    assert ab.loc["baseline", "Δ vs"] == "baseline (RPN NMS 0.7)"


def test_trend_sentence_says_when_the_threshold_stays_below_the_baseline(mini_runs):
    lines = [{"iteration": i * 10, "iou_threshold": t, "beta": b, "num_iou_stats": 10, "num_beta_stats": 10}
             for i, (t, b) in enumerate([(0.4, 1.0), (0.45, 0.9), (0.48, 0.8)])]
    (mini_runs / "dynamic" / "dynamic.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    s = report.trend_sentence(find_runs(mini_runs))
    assert "0.400 -> 0.480" in s and "never reached the baseline's fixed 0.50 (maximum 0.480)" in s


def test_overhead_compares_against_the_baseline_at_the_same_rpn_nms(tmp_path):
    root = tmp_path / "runs"
    write_run(root, "baseline", "baseline", ap=30.0, sec_per_iter=0.80)  # trained under other load
    write_run(root, "baseline_nms085", "baseline", ap=32.0, rpn_nms=0.85, sec_per_iter=0.50)
    write_run(root, "dynamic", "dynamic", ap=33.0, rpn_nms=0.85, sec_per_iter=0.51)
    claims = report.claims_table(find_runs(root))
    row = claims[claims["claim"].str.startswith("No extra")].iloc[0]
    assert row["ours"] == pytest.approx(0.51 / 0.50) and "baseline_nms085" in row["compared"]
