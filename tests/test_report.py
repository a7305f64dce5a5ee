"""Report tables, verdicts and profiles on synthetic run directories and hand-made numbers."""

from __future__ import annotations

import json
import math

import nbformat
import numpy as np
import pytest

from dynrcnn import reference, report
from dynrcnn.errors import DynrcnnError
from dynrcnn.rundir.integrity import train_action
from dynrcnn.presets import build_config
from dynrcnn.rundir.runs import find_runs, load_run
from tests.test_plots import write_gt, write_run  # synthetic run directories


# ------------------------------------------------------------------ verdicts on hand-made numbers

def test_verdict_delta_coco():
    assert report.verdict_delta(1.8, 1.9, 0.3).sentence.startswith("reproduced")
    assert report.verdict_delta(1.0, 1.9, 0.3).sentence.startswith("partly reproduced")
    assert report.verdict_delta(-0.5, 1.9, 0.3).sentence.startswith("not reproduced")
    assert report.verdict_delta(float("nan"), 1.9, 0.3).status == "not-testable"


def test_verdict_absolute_and_overhead():
    assert report.verdict_absolute(38.7, 38.9, "COCO").sentence.startswith("reproduced within ±0.3")
    assert report.verdict_absolute(37.9, 38.9, "COCO").sentence.startswith("not reproduced: -1.0")
    assert report.verdict_absolute(60.0, 38.9, "miniature").sentence.startswith("not testable")
    assert report.verdict_overhead(1.04, 0.05, "gpu").sentence.startswith("reproduced on GPU")
    bad = report.verdict_overhead(1.30, 0.10, "cpu")
    assert bad.status == "contradicted" and bad.sentence.startswith("not reproduced") and "+30.0%" in bad.sentence


def test_verdict_statuses():
    assert report.verdict_absolute(60.0, 38.9, "miniature").status == "not-testable"
    assert report.verdict_absolute(38.7, 38.9, "COCO").status == "reproduced"
    assert report.verdict_delta(-0.5, 1.9, 0.3).status == "contradicted"
    assert set(report.STATUSES) == {"reproduced", "contradicted", "inconclusive", "not-testable"}


# ------------------------------------------------------------------ tables from synthetic runs

@pytest.fixture()
def mini_runs(tmp_path):
    # detections are ground-truth boxes moved by `jitter` px: the dynamic runs localise better
    # (a clear gain, most of it at high IoU), DSL as well as the baselines
    root, data = tmp_path / "runs", tmp_path / "data"
    write_gt(data, n_images=40)
    kw = dict(data_root=str(data))
    for seed in (0, 1):
        suffix = "" if seed == 0 else f"_seed{seed}"
        write_run(root, "baseline" + suffix, "baseline", seed=seed, jitter=3.0, sec_per_iter=0.50, **kw)
        write_run(root, "dynamic" + suffix, "dynamic", seed=seed, jitter=1.0, sec_per_iter=0.52, rpn_nms=0.85, **kw)
        write_run(root, "baseline_nms085" + suffix, "baseline", seed=seed, jitter=2.9, rpn_nms=0.85,
                  sec_per_iter=0.5, **kw)
    write_run(root, "dla", "dla", jitter=1.5, sec_per_iter=0.51, rpn_nms=0.85, **kw)
    write_run(root, "dsl", "dsl", jitter=2.9, sec_per_iter=0.50, rpn_nms=0.85, **kw)
    return root


def _mean(runs, method, nms, key):
    vals = [r.eval[key] for r in runs if r.method == method and r.config.model.rpn_nms_thresh == nms]
    return sum(vals) / len(vals)


def test_ablation_table(mini_runs):
    runs = find_runs(mini_runs)
    ab = report.ablation_table(runs)
    assert list(ab["configuration"]) == ["baseline", "DLA only (RPN NMS 0.85)", "DSL only (RPN NMS 0.85)",
                                         "DLA + DSL (RPN NMS 0.85)", "baseline (RPN NMS 0.85)"]
    for col in ("AP", "AP50", "AP75", "AP90", "ΔAP vs baseline", "ΔAP 95% CI", "ΔAP90 95% CI", "scale"):
        assert col in ab
    row = ab.set_index("configuration").loc["DLA + DSL (RPN NMS 0.85)"]
    assert row["seeds"] == 2
    assert row["AP90"] == pytest.approx(_mean(runs, "dynamic", 0.85, "AP90"))  # AP_per_iou[8], by index
    # against the baseline at the same RPN NMS, with an interval that excludes 0 (jitter 1 vs 2.9 px)
    assert row["ΔAP vs baseline"] == pytest.approx(_mean(runs, "dynamic", 0.85, "AP") - _mean(runs, "baseline", 0.85, "AP"))
    low, high = (float(v) for v in row["ΔAP 95% CI"].strip("[]").split(","))
    assert 0 < low < row["ΔAP vs baseline"] < high
    assert (ab["scale"] == "miniature benchmark (not COCO)").all()
    assert list(ab["DLA"]) == ["", "yes", "", "yes", ""] and list(ab["DSL"]) == ["", "", "yes", "yes", ""]


def test_claims_table_miniature(mini_runs):
    runs = find_runs(mini_runs)
    items = {c.key: c for c in report.claims(runs)}
    cl = report.claims_table(runs)
    assert list(cl.columns) == ["claim", "family", "source", "published", "ours", "difference", "tolerance",
                                "verdict", "scale", "compared"]
    assert cl["verdict"].map(bool).all() and cl["tolerance"].map(bool).all()
    ap = items["paper_delta_ap"]  # the paper's comparison: dynamic (0.85) vs the RPN NMS 0.7 baseline
    assert ap.ours == pytest.approx(_mean(runs, "dynamic", 0.85, "AP") - _mean(runs, "baseline", 0.7, "AP"))
    # one test, two published references (the paper's and the model zoo's gain): one row
    assert ap.source == "paper abstract (+1.9); MMDet model zoo (+1.5)" and ap.published == 1.9
    assert ap.status == "reproduced" and ap.family == "secondary" and "mmdet_delta_ap" not in items
    assert ap.sentence.startswith("direction reproduced at miniature scale") and "2 vs 2 seeds, paired" in ap.sentence
    assert ap.intervals["own"]["low"] > 0
    fair = items["paper_delta_ap_same_nms"]  # and against the baseline at the same RPN NMS: primary
    assert fair.status == "reproduced" and "(RPN NMS 0.85 vs 0.85)" in fair.compared and fair.family == "primary"
    assert 0 <= fair.intervals["own"]["p"] <= fair.intervals["own"]["p_holm"] < 0.05
    assert set(fair.intervals["own"]["per_seed"]) == {"0", "1"}
    # DLA alone has one seed: no seed variance, so no verdict beyond inconclusive
    dla = items["dla_alone_ap"]
    assert dla.family == "secondary" and dla.status == "inconclusive" and "one seed" in dla.sentence
    assert items["paper_delta_ap90"].status == "reproduced"
    assert items["paper_overhead"].ours == pytest.approx(0.52 / 0.50) and items["paper_overhead"].status == "reproduced"
    absolute = items["official_r50_1x"]
    assert absolute.status == "not-testable" and math.isnan(absolute.difference)
    assert set(cl["source"]) >= {"paper abstract", "official repo", "MMDet model zoo", "seed reproduction"}
    assert (cl["scale"] == "miniature benchmark (not COCO)").all()
    # the RPN NMS confound is reported next to the claims, with its interval
    ctx = cl[cl["claim"].str.startswith("(context) baseline RPN NMS 0.7 -> 0.85")]
    assert len(ctx) == 2 and ctx.iloc[0]["ours"] == pytest.approx(
        _mean(runs, "baseline", 0.85, "AP") - _mean(runs, "baseline", 0.7, "AP"))
    assert "[" in ctx.iloc[0]["verdict"] and (ctx["family"] == "exploratory").all()
    # "no effect" only with a declared margin: the context words are the three equivalence words
    assert ctx["verdict"].str.match(r"^(RPN NMS alone (raises|lowers) it|equivalent within ±[\d.]+|inconclusive)").all()


def test_claims_negative_result_reported(tmp_path):
    root, data = tmp_path / "runs", tmp_path / "data"
    write_gt(data, n_images=40)
    for seed in (0, 1, 2):
        suffix = "" if seed == 0 else f"_seed{seed}"
        write_run(root, "baseline" + suffix, "baseline", seed=seed, jitter=1.0, data_root=str(data))
        write_run(root, "dynamic" + suffix, "dynamic", seed=seed, jitter=3.5, data_root=str(data), sec_per_iter=0.8)
    items = {c.key: c for c in report.claims(find_runs(root))}
    assert items["paper_delta_ap"].ours < 0 and items["paper_delta_ap"].status == "contradicted"
    assert items["paper_delta_ap"].sentence.startswith("contradicted at miniature scale")
    assert items["paper_delta_ap90"].status == "contradicted"
    assert items["paper_overhead"].status == "contradicted"


def test_second_benchmark_must_agree(mini_runs, tmp_path):
    # the same runs "evaluated" on a second benchmark where dynamic is worse: the verdict that
    # holds on one benchmark only is inconclusive
    other = tmp_path / "other"
    write_gt(other, n_images=40, seed=5)
    from tests.test_plots import write_detections

    for r in find_runs(mini_runs):
        jitter = 4.0 if r.method == "dynamic" else 1.0
        write_detections(r.path, other, jitter, r.seed)
        (r.path / "detections.json").rename(r.path / "detections-other.json")
        write_detections(r.path, r.config.data_root, 1.0 if r.method == "dynamic" else 3.0, r.seed)
        (r.path / "eval-other.json").write_text(json.dumps({**r.eval, "data_root": str(other), "split": "val"}))
    items = {c.key: c for c in report.claims(find_runs(mini_runs))}
    ap = items["paper_delta_ap"]
    assert set(ap.intervals) == {"own", "other"}
    assert ap.intervals["own"]["status"] == "reproduced" and ap.intervals["other"]["status"] == "contradicted"
    assert ap.status == "inconclusive" and "the benchmarks disagree" in ap.sentence


def test_missing_detections_are_not_testable(tmp_path):
    write_run(tmp_path / "runs", "baseline", "baseline")
    write_run(tmp_path / "runs", "dynamic", "dynamic")
    items = {c.key: c for c in report.claims(find_runs(tmp_path / "runs"))}
    assert items["paper_delta_ap"].status == "not-testable"


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
    assert cost.loc["baseline", "peak memory of"] == "its process"  # no peak_memory_scope: trained before it
    env = report.environment_table(runs)
    assert "papermill" in env and env["torch"].iloc[0] == "2.x"
    md = report.readme_table(mini_runs)
    assert "miniature benchmark (not COCO)" in md and "| DLA + DSL (RPN NMS 0.85) |" in md
    assert "this report (miniature)" in md and "published (COCO)" in md
    table_lines = [line for line in md.splitlines() if line.startswith("|")]
    assert len({line.count("|") for line in table_lines[:7]}) == 1  # ablation rows well formed


def test_ap_per_iou_table_and_eval_table(mini_runs):
    runs = find_runs(mini_runs)
    t = report.ap_per_iou_table(runs).set_index("run")
    assert list(t.columns)[8] == "AP@0.90"
    assert t.loc["dynamic", "AP@0.90"] == load_run(mini_runs / "dynamic").eval["AP_per_iou"][8]
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
    gain = _mean(runs, "dynamic", 0.85, "AP90") - _mean(runs, "baseline", 0.7, "AP90")
    assert f"{gain:+.1f} at 0.90" in s and "miniature" in s


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
    n = len(report.get_profile("mini").runs)
    assert n == 35  # baseline 0.85 and dynamic x 10 seeds; baseline 0.7, DLA and DSL alone x 5
    assert kinds == ["data"] + ["train"] * n + ["evaluate"] * n + ["method", "results"]
    assert steps[-2].params["run_dir"].endswith("dynamic")
    # every run is also evaluated on the second benchmark (another data seed)
    assert steps[0].params["second_seed"] == 2 and steps[0].params["second_root"].endswith("data-seed2")
    assert all(s.params["extra_data_roots"] == [steps[0].params["second_root"]] for s in steps if s.kind == "evaluate")
    assert all(set(s.params) <= _notebook_params(s.notebook) for s in steps)


def _notebook_params(stem):
    nb = nbformat.read(report.NOTEBOOK_DIR / f"{stem}.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    return {line.split("=")[0].strip() for line in cell.source.splitlines() if "=" in line}


def test_train_action(mini_runs):
    run_dir = mini_runs / "dynamic"
    cfg = build_config("mini", "dynamic", data_root=str(mini_runs.parent / "data"),
                       overrides=["max_iter=100", "dynamic.interval=10", "log_stats=true", "log_period=10",
                                  "model.rpn_nms_thresh=0.85"])
    assert train_action(run_dir, cfg)[0] == "reuse"
    assert train_action(run_dir, cfg, force=True)[0] == "train"
    other = build_config("mini", "dynamic", overrides=["max_iter=200"])
    action, why = train_action(run_dir, other)
    assert action == "train" and "another config" in why
    assert train_action(mini_runs / "missing", cfg)[0] == "train"
    # the benchmark was regenerated since the run trained on it: the run is stale
    record = json.loads((run_dir / "config.json").read_text())
    record["data"] = {"data_root": cfg.data_root, "split": "train", "annotation_sha256": "0" * 64}
    (run_dir / "config.json").write_text(json.dumps(record))
    ann = mini_runs.parent / "data" / "annotations" / "instances_train.json"
    ann.parent.mkdir(parents=True, exist_ok=True)
    ann.write_text("{}")
    action, why = train_action(run_dir, cfg)
    assert action == "train" and "other data" in why


def test_cli_registers_report():
    from dynrcnn.cli import build_parser

    args = build_parser().parse_args(["report", "--profile", "smoke", "--jobs", "1", "--overwrite"])
    assert args.profile == "smoke" and args.jobs == 1 and args.overwrite and callable(args.func)


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


def test_each_profile_writes_only_its_own_readme_block(mini_runs, tmp_path):
    from dynrcnn.report.text import readme_markers

    readme = tmp_path / "README.md"
    long_begin, long_end = readme_markers("RESULTS-LONG")
    readme.write_text(f"{report.README_BEGIN}\nmain 11.1\n{report.README_END}\n{long_begin}\nlong 22.2\n{long_end}\n")
    assert report.update_readme(readme, mini_runs, tmp_path / "figures" / "quick", tag="RESULTS-LONG",
                                title="Long results", index=tmp_path / "build" / "report-long" / "index.html")
    text = readme.read_text()
    assert "main 11.1" in text and "long 22.2" not in text  # the main block is untouched
    long_block = text.split(long_begin)[1]
    assert "## Long results (written by" in long_block and "figures/quick/trend.png" in long_block
    assert "`build/report-long/index.html`" in long_block


def test_report_of_record_is_the_long_fine_tune_and_quick_repeats_its_runs_at_300():
    record, quick = report.get_profile("mini"), report.get_profile("mini_quick")
    assert (record.preset, record.figures_dir, record.readme) == ("mini_long", "figures", "RESULTS")
    assert quick.readme is None and quick.figures_dir == "figures/quick"
    assert [(r.name, r.method, r.seed, r.overrides) for r in record.runs] == \
        [(r.name, r.method, r.seed, r.overrides) for r in quick.runs]
    short, longer = build_config(quick.preset, "baseline"), build_config(record.preset, "baseline")
    assert (short.max_iter, longer.max_iter) == (300, 900)
    # lr steps at the same fractions of training; everything else equal
    assert [s / longer.max_iter for s in longer.lr_steps] == [s / short.max_iter for s in short.lr_steps]
    assert longer.model == short.model and longer.dynamic == short.dynamic


def test_extra_seeds_repeat_every_configuration(tmp_path):
    base = report.get_profile("mini")
    n = len(base.runs)
    # the first five seeds of every configuration come first (a partial report has them all), then
    # the headline pair's seeds 5-9
    assert [r.name for r in base.runs[:5]] == ["baseline", "baseline_nms085", "dynamic", "dla", "dsl"]
    assert [r.name for r in base.runs[-2:]] == ["baseline_nms085_seed9", "dynamic_seed9"]
    prof = base.with_seeds([10])
    names = [r.name for r in prof.runs]
    assert names[:n] == [r.name for r in base.runs]
    assert names[n:] == ["baseline_seed10", "baseline_nms085_seed10", "dynamic_seed10", "dla_seed10", "dsl_seed10"]
    assert {r.seed for r in prof.runs[n:]} == {10}
    assert base.with_seeds([0]) == base  # seeds the profile already has add nothing
    assert [r.name for r in base.with_seeds([7]).runs][n:] == ["baseline_seed7", "dla_seed7", "dsl_seed7"]
    steps = report.plan(prof, tmp_path / "out", tmp_path / "runs", tmp_path / "data", "cpu", tmp_path / "fig", False)
    train = {s.output: s.params for s in steps if s.kind == "train"}
    assert train["train_dynamic_seed10"]["seed"] == 10 and train["train_dynamic_seed10"]["method"] == "dynamic"
    assert "log_stats=true" in train["train_dynamic_seed10"]["overrides"]
    assert report.NMS_085 in train["train_dynamic_seed10"]["overrides"]
    assert report.NMS_085 in train["train_baseline_nms085_seed10"]["overrides"]
    assert report.NMS_085 not in train["train_baseline_seed10"]["overrides"]


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


def test_results_json(mini_runs, tmp_path):
    from dynrcnn.report.results import write_results

    path = write_results(find_runs(mini_runs), tmp_path / "results.json", command="test")
    res = json.loads(path.read_text())
    assert res["generated_by"] == "test" and res["benchmarks"] == ["own"]
    configs = {c["name"]: c for c in res["configurations"]}
    dyn = configs["DLA + DSL (RPN NMS 0.85)"]
    assert dyn["seeds"] == [0, 1] and len(dyn["runs"][0]["metrics"]["AP_per_iou"]) == 10
    assert {"iou_threshold_end", "beta_end", "crossed_0.5_at", "fg_fraction_end"} <= set(dyn["runs"][0]["dynamic"])
    comps = {c["comparison"]: c for c in res["comparisons"]}
    fair = comps["DLA + DSL (RPN NMS 0.85) - baseline (RPN NMS 0.85)"]
    assert fair["metrics"]["AP"]["low"] <= fair["metrics"]["AP"]["estimate"] <= fair["metrics"]["AP"]["high"]
    assert len(fair["per_iou"]["low"]) == 10 and fair["paired_seeds"]
    assert "DLA + DSL (RPN NMS 0.85) - baseline (RPN NMS 0.7)" in comps  # the paper's comparison
    assert "baseline (RPN NMS 0.85) - baseline (RPN NMS 0.7)" in comps  # the RPN NMS change alone
    statuses = {c["key"]: c["status"] for c in res["claims"] if c["key"]}
    assert statuses["paper_delta_ap"] == "reproduced" and statuses["official_r50_1x"] == "not-testable"
    assert set(statuses.values()) <= {"reproduced", "contradicted", "inconclusive", "not-testable"}


def test_ap_samples_are_cached_beside_the_runs(mini_runs):
    from dynrcnn.report import intervals

    runs = find_runs(mini_runs)
    intervals.precompute(runs, jobs=1, n_boot=50)
    files = sorted((mini_runs / intervals.CACHE_DIR).glob("*.npz"))
    assert len(files) == len(runs)  # one per run and benchmark (here: the own split only)
    first = intervals.run_samples(runs[0], n_boot=50)
    assert np.array_equal(first.boot, intervals.ap_samples(intervals.run_matches(runs[0]), 50, 0).boot)
    path = intervals.samples_file(runs[0], n_boot=50)
    path.write_bytes(b"torn")  # a damaged cache file is recomputed, not trusted
    assert np.array_equal(intervals.run_samples(runs[0], n_boot=50).boot, first.boot)
    assert intervals.samples_file(runs[0], n_boot=60) != path  # other settings: another file


def test_report_progress_counts_work_not_reuse(mini_runs, tmp_path):
    from dynrcnn.report.progress import ReportProgress, Tracked, iterations_done

    done = mini_runs / "dynamic"  # finished: train_done.json
    running = tmp_path / "running"
    running.mkdir()
    (running / "config.json").write_text(json.dumps({"max_iter": 300}))
    (running / "metrics.jsonl").write_text(json.dumps({"iteration": 120}) + "\n")
    pending = tmp_path / "pending"  # not started: counts with its planned iterations
    assert iterations_done(done, 5)[:2] == (True, True)
    assert iterations_done(running, 5) == (True, False, 120, 300)  # config.json's max_iter, not the plan
    assert iterations_done(pending, 250) == (False, False, 0, 250)
    bar = ReportProgress("t", work=200, tracked=[Tracked(done, 100), Tracked(running, 300),
                                                 Tracked(pending, 250, start=40)], progress=False)
    # the finished run is reused: no work, so it neither fills the bar nor speeds up the ETA
    s = bar.state()
    assert (s["runs_done"], s["runs"], s["iterations"], s["iterations_total"]) == (0, 2, 120, 550)
    assert (s["units"], s["units_total"]) == (120, 550 + 40 + 200)
    bar.done(100)
    (pending / "checkpoints").mkdir(parents=True)
    (pending / "config.json").write_text(json.dumps({"max_iter": 250}))  # started: what it needed first is done
    assert bar.state()["units"] == 120 + 100 + 40


def test_report_progress_times_each_phase(monkeypatch):
    """Each phase lasts until the next begins (a key that comes back adds up); before the first: planning."""
    from dynrcnn.report import progress
    from dynrcnn.report.study import timing_line

    clock = iter([100.0, 103.0, 110.0, 130.0, 131.0, 200.0])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    bar = progress.ReportProgress("t", progress=False)  # starts at 100
    bar.phase("train a", key="train")  # 103
    bar.phase("data")  # 110
    bar.done(5, "train b")  # 130: what runs next, keyed by its text
    bar.phase("train c", key="train")  # 131
    assert bar.phase_seconds() == {"planning": 3.0, "train": 7.0 + 69.0, "data": 20.0, "train b": 1.0}  # now: 200
    t = {"wall_time_sec": 600.0, "phases_sec": {"planning": 6.0, "data": 30.0, "training and evaluation": 480.0,
                                                "notebooks": 84.0}, "runs_trained": 3, "machine": "CPU X",
         "cores": 2, "load_average_at_start": 0.25, "written_at": "2026-12-05 12:00 UTC"}
    assert timing_line(t, "make it") == (
        "**Time** (written by `make it`): 10 min on CPU X (2 cores, load average 0.2 at the start), 3 runs trained "
        "in it (a pretraining counts as one; finished runs are reused); minutes per phase: data 0.5, training and "
        "evaluation 8.0, notebooks and pages 1.5. Written 2026-12-05 12:00 UTC.")


def test_report_progress_units_of_a_report(tmp_path):
    """Every step of a plan has its share: evaluations with results on disk and existing data cost a kernel."""
    from dynrcnn.report.pipeline import plan, report_progress
    from dynrcnn.report.progress import WORK

    profile = report.get_profile("smoke")
    steps = plan(profile, tmp_path / "out", tmp_path / "runs", tmp_path / "data", "cpu", tmp_path / "f", False)
    bar = report_progress("t", steps, progress=False, extra_work=7)
    kinds = [s.kind for s in steps]
    expected = (WORK["data"] + kinds.count("evaluate") * (WORK["evaluate"] + WORK["bootstrap"]) + WORK["method"]
                + WORK["results"] + WORK["render"] * len(steps) + 7)
    iterations = sum(t.planned for t in bar.tracked)
    assert len(bar.tracked) == kinds.count("train") and iterations > 0
    assert bar.state()["units_total"] == expected + iterations


def test_seed_summaries_read_as_sentences():
    from dynrcnn.report.text import _fmt_mean

    assert _fmt_mean([13.3, 13.3, 13.3], ".0f", " % of training") == "13 % of training in all 3 seeds"
    assert _fmt_mean([0.576, 0.581, 0.58]) == "0.579 (0.576-0.581 over 3 seeds)"
    assert _fmt_mean([6.7, 8.0], ".1f", " %") == "7.3 % (6.7-8.0 % over 2 seeds)"
    assert _fmt_mean([0.5]) == "0.500" and _fmt_mean([None, float("nan")]) == "-"


def test_context_effect_says_what_each_benchmark_shows_when_they_disagree():
    from types import SimpleNamespace

    from dynrcnn.report.claims import INCONCLUSIVE, REPRODUCED, context_effect

    up = SimpleNamespace(status=REPRODUCED, equivalence="different", estimate=1.2)
    flat = SimpleNamespace(status=INCONCLUSIVE, equivalence="inconclusive", estimate=0.3)
    same = SimpleNamespace(status=INCONCLUSIVE, equivalence="equivalent within ±1", estimate=0.1)
    assert context_effect({None: up, "mini-seed2": up}) == "RPN NMS alone raises it"
    assert context_effect({None: flat, "mini-seed2": flat}) == "inconclusive"  # holding 0 is not "no effect"
    assert context_effect({None: same, "mini-seed2": same}) == "equivalent within ±1"
    assert context_effect({None: up, "mini-seed2": flat}) == (
        "the benchmarks disagree (RPN NMS alone raises it on the evaluation split; "
        "inconclusive on benchmark mini-seed2)")
    assert context_effect({}) == ""


def test_signed_never_prints_negative_zero():
    from dynrcnn.evaluation.stats import signed

    assert [signed(v) for v in (-0.004, -0.0, 0.0, 1.266, -0.006)] == ["+0.00", "+0.00", "+0.00", "+1.27", "-0.01"]


def test_index_counts_the_seeds_of_each_configuration():
    from types import SimpleNamespace

    from dynrcnn.report.index import seeds_text

    def run(method, seed, nms=0.85):
        return SimpleNamespace(method=method, seed=seed, config=SimpleNamespace(model=SimpleNamespace(rpn_nms_thresh=nms)))

    three = [run(m, s) for m in ("baseline", "dynamic") for s in (0, 1, 2)]
    assert seeds_text(three) == "3 seeds per configuration"
    assert seeds_text(three + [run("dla", 0)]) == "1-3 seeds per configuration"
    assert seeds_text([run("dynamic", 0)]) == "1 seed per configuration"


def test_the_headline_comes_from_the_same_nms_claims(mini_runs, tmp_path):
    from dynrcnn.report.claims import claims, find_claim
    from dynrcnn.report.text import headline, summary_lines
    from dynrcnn.rundir.runs import find_runs

    items = claims(find_runs(mini_runs))
    line = headline(items)
    ap = find_claim(items, "paper_delta_ap_same_nms").intervals["own"]
    assert line.startswith("Dynamic R-CNN vs Faster R-CNN at the same RPN NMS (2 vs 2 seeds, paired; seed-level 95% "
                           "intervals): ") and "Primary family of 2 tests, Holm-corrected" in line
    assert f"{ap['estimate']:+.2f} AP [{ap['low']:+.2f}, {ap['high']:+.2f}]" in line and "AP90" in line
    assert "(evaluation split)" in line and "Verdicts: AP: reproduced" in line
    assert summary_lines(mini_runs)[-1].startswith("claims: ") and "reproduced" in summary_lines(mini_runs)[-1]
    assert headline([]) is None
    readme = tmp_path / "README.md"
    from dynrcnn.report.text import readme_markers

    b, e = readme_markers("RESULTS-HEADLINE")
    readme.write_text(f"# T\n{b}\n{e}\n{report.README_BEGIN}\n{report.README_END}\n")
    assert report.update_readme(readme, mini_runs, tmp_path / "figures", tag="RESULTS")
    assert line in readme.read_text()


def test_index_claims_table_is_compact_with_badges_and_merged_sources(mini_runs):
    from dynrcnn.report.claims import claims
    from dynrcnn.report.index import _results, merged_claims
    from dynrcnn.rundir.runs import find_runs

    runs = find_runs(mini_runs)
    items = claims(runs)
    rows = merged_claims(items)
    testable = [c for c in items if c.status != "not-testable"]
    assert len(rows) == len(testable)  # the abstract's and the model zoo's AP gain: one row, two sources
    both = [r for r in rows if {s for s, _ in r["sources"]} == {"paper abstract", "MMDet model zoo"}]
    assert both and all(r["claim"].compared == both[0]["claim"].compared for r in both[:1])
    page = _results(runs, items)
    assert page.split("</table>")[0].count("<tr>") == len(rows) + 1  # the claims table: header + one row each
    assert 'class="badge reproduced"' in page and "<details><summary>why</summary>" in page
    assert "absolute COCO numbers this scale cannot test" in page


def test_plan_passes_checkout_paths_relative():
    """A report inside the checkout (``make report``) passes every path relative to it, so the
    rendered parameters cells name no machine folder; the notebooks read them back."""
    from dynrcnn.report.pipeline import plan

    root = report.REPO
    steps = plan(report.get_profile("smoke"), root / "build" / "x", root / "build" / "x-runs", root / "build" / "x-data",
                 "cpu", root / "build" / "x-figures", False)
    paths = [v for s in steps for k, v in s.params.items() if k.endswith(("_root", "_dir")) and v]
    assert paths and all(not str(v).startswith("/") for v in paths), paths
    assert all(report.repo_path(v) == root / v for v in paths)
    assert report.param_path("/elsewhere/data") == "/elsewhere/data"


def test_backbone_pin_is_a_name_and_a_hash_looked_up_where_the_pipeline_built_it(tmp_path):
    from dynrcnn.report.pipeline import backbone_pin, plan, pretrained_root

    assert backbone_pin("mini_pretrain", "ab" * 32) == [
        "model.backbone_weights=pretrained:mini_pretrain", f"model.backbone_sha256={'ab' * 32}"]
    assert pretrained_root(tmp_path / "data" / "mini") == tmp_path / "data" / "pretrained"
    steps = plan(report.get_profile("smoke"), tmp_path / "out", tmp_path / "runs", tmp_path / "data" / "x", "cpu",
                 tmp_path / "f", False)
    trains = [s for s in steps if s.kind == "train"]
    assert trains and all(s.params["pretrained_root"] == str(tmp_path / "data" / "pretrained") for s in trains)


def test_resolve_backbone_refuses_another_file_than_the_pinned_one(tmp_path, monkeypatch):
    import dataclasses

    from dynrcnn.engine import pretrain
    from dynrcnn.errors import CheckpointError
    from dynrcnn.presets import build_config

    monkeypatch.setattr(pretrain, "ensure_pretrained", lambda *a, **k: (tmp_path / "b.pth", "11" * 32))
    cfg = build_config("mini", "dynamic")
    assert pretrain.resolve_backbone(cfg).model.backbone_sha256 == "11" * 32
    pinned = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, backbone_sha256="22" * 32))
    with pytest.raises(CheckpointError, match="pins 222222222222"):
        pretrain.resolve_backbone(pinned)


def test_evidence_makes_each_comparison_once_and_keeps_nothing_at_module_level(mini_runs, monkeypatch):
    from dynrcnn.report import evidence as ev_mod, intervals

    runs = find_runs(mini_runs)
    calls = []
    real = intervals.seed_delta
    monkeypatch.setattr(intervals, "seed_delta", lambda *a, **k: calls.append(1) or real(*a, **k))
    ev = ev_mod.Evidence(runs, n_boot=50)
    assert len(ev) == len(runs) and list(ev) == runs and ev[0] is runs[0]
    base, dyn = ev.groups[ev_mod.main_key(ev.groups, "baseline")], ev.groups[ev_mod.main_key(ev.groups, "dynamic")]
    first = ev.compare(base, dyn)
    assert ev.compare(base, dyn) is first and len(calls) == 1  # made once per evidence
    again = ev_mod.Evidence(runs, n_boot=50).compare(base, dyn)  # a new evidence reads the runs anew
    assert len(calls) == 2 and np.array_equal(again.per_iou, first.per_iou)
    first_claims = report.claims(ev)
    n = len(calls)
    assert first_claims == report.claims(ev) and first_claims is not report.claims(ev)  # copies of the one list
    assert len(calls) == n  # checked once per evidence: no comparison made again
    assert not [n for n, v in vars(intervals).items() if n.startswith("_") and not n.startswith("__") and isinstance(v, dict)]


def test_styled_tables_left_align_text_and_keep_numbers_right():
    import pandas as pd

    import re

    html = report.styled(pd.DataFrame({"claim": ["a sentence"], "ours": [1.2345]})).to_html()
    left = re.findall(r"_row0_(col\d)[^{]*\{\s*text-align: left", html)
    assert left == ["col0"]  # the sentence column only; the number keeps the default right alignment
    assert "1.23" in html and "a sentence" in html


def test_results_name_the_machines_and_flag_a_run_that_changed_numeric_path(mini_runs):
    from dynrcnn.report.results import environment_line, environment_of, results
    from dynrcnn.rundir.runs import find_runs

    env_file = mini_runs / "dynamic" / "env.json"
    env = json.loads(env_file.read_text()) if env_file.is_file() else {}
    env.update(cpu_model="Intel Xeon (AMX)", numeric_path="bf16 (AMX)",
               resumes=[{"iteration": 200, "cpu_model": "AMD EPYC", "numeric_path": "bf16 (AVX512-BF16)"}])
    env_file.write_text(json.dumps(env))
    runs = find_runs(mini_runs)
    got = environment_of(runs)
    assert got["runs"]["mixed_numeric_paths"] == ["dynamic"]
    assert {"bf16 (AMX)", "bf16 (AVX512-BF16)"} <= set(got["runs"]["numeric_paths"])
    assert got["report"]["sentence"].startswith("ran with")
    line = environment_line(got)
    assert "AMD EPYC" in line and "Runs resumed on another numeric path: dynamic." in line
    assert results(runs)["environment"]["runs"]["mixed_numeric_paths"] == ["dynamic"]


def test_share_at_least_counts_the_part_of_the_bin_that_holds_the_level():
    from dynrcnn.report.analysis import share_at_least

    rec = {"bin_edges": [0.0, 0.5, 0.6, 0.7, 1.0], "counts": [50, 20, 20, 10]}  # 100 proposals
    assert share_at_least(rec, 0.6) == pytest.approx(0.30)  # a bin edge: the two top bins
    assert share_at_least(rec, 0.65) == pytest.approx(0.20)  # half of [0.6, 0.7) and all of [0.7, 1.0]
    assert share_at_least(rec, 0.0) == pytest.approx(1.0) and share_at_least(rec, 1.0) == pytest.approx(0.0)
    assert math.isnan(share_at_least(rec, float("nan")))


def test_variance_decomposition_splits_seed_and_image_noise():
    from dynrcnn.evaluation.stats import APSamples
    from dynrcnn.evaluation.seed_intervals import variance_decomposition

    rng = np.random.default_rng(0)
    n_img, n_boot, seeds = 200, 300, range(6)
    w = rng.multinomial(n_img, np.full(n_img, 1 / n_img), size=n_boot) / n_img  # shared image resamples
    common = rng.normal(0, 4, n_img)  # an image x configuration effect: common to every seed of B

    def run(mu, seed_sd, extra=0.0):
        x = mu + rng.normal(0, seed_sd) + rng.normal(0, 6, n_img) + extra
        full = np.full(10, x.mean())
        return APSamples(list(range(n_img)), full, np.repeat((w @ x)[:, None], 10, axis=1), n_boot, 0)

    a = {s: run(50, 1.0) for s in seeds}
    b = {s: run(52, 1.0, common) for s in seeds}
    v = variance_decomposition(a, b, "AP")
    assert v["n_seeds"] == 6 and v["n_images"] == 200
    # the image noise of one seed's pair: 2 x 36 / 200 = 0.36; the common part: 16 / 200 = 0.08
    assert 0.2 < v["image_within_seed"] < 0.55 and 0.02 < v["image_common"] < 0.2
    assert v["se_at"]["800"] < v["se_at"]["400"] < v["se_now"] == v["se_at"]["200"]
    assert variance_decomposition({0: a[0]}, {0: b[0]}) is None


def test_each_run_is_evaluated_as_soon_as_it_is_trained():
    """Two workers, four runs: a run's evaluation starts before later runs' training (not after
    the last one), so a study stopped early has its finished runs evaluated on every benchmark."""
    import threading
    import time

    from dynrcnn.report.pipeline import Step, _run_parallel

    started, lock = [], threading.Lock()

    def run_step(step):
        with lock:
            started.append(step.output)
        time.sleep(0.05 if step.kind == "train" else 0.01)
        return step.output

    class Bar:
        def done(self, work, *args):
            pass

    trains = [Step("train", "03_train", f"train_{n}", {"run_dir": n}, n) for n in "abcd"]
    evals = {n: Step("evaluate", "04_evaluate", f"evaluate_{n}", {"run_dir": n}, n) for n in "abcd"}
    executed = []
    _run_parallel(run_step, trains, 2, Bar(), executed, after=evals)
    assert sorted(executed) == sorted([f"train_{n}" for n in "abcd"] + [f"evaluate_{n}" for n in "abcd"])
    assert started.index("evaluate_a") < started.index("train_d")  # not queued behind every training
    assert all(started.index(f"evaluate_{n}") > started.index(f"train_{n}") for n in "abcd")
