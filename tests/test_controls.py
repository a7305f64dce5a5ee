"""The controls (``dynrcnn.report.controls``): which runs, that they train at their fixed setting,
and the section's notebook on synthetic runs."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from dynrcnn.config import DynamicConfig
from dynrcnn.modeling.model import build_model, dynamic_head
from dynrcnn.presets import build_config, get_preset
from dynrcnn.report import controls
from dynrcnn.report.studies.controls import readme_body
from dynrcnn.report.study import write_results
from dynrcnn.report.profiles import ABLATION_SEEDS, NMS_085
from dynrcnn.rundir.runs import find_runs
from tests.test_plots import write_gt, write_run


def test_the_control_runs_and_their_settings():
    preset = get_preset("mini_long")
    final = controls.FinalValues(threshold=0.65, beta=0.25, dynamic_beta=0.2)
    specs, about = controls.control_specs(final, preset, seeds=tuple(range(7)))
    by = {s.name: s for s in specs}
    assert by["fixed_iou65_seed2"].overrides == (NMS_085, "model.fg_iou_thresh=0.65")
    assert by["fixed_iou60"].method == "baseline" and "fixed_iou70_seed6" in by
    assert by["fixed_beta25_seed1"].overrides == (NMS_085, "model.box_beta=0.25") and "fixed_beta50" in by
    # DLA + a fixed beta fixes the beta DLA + DSL ends at, not DSL alone's
    assert by["dla_beta20"].method == "dla" and by["dla_beta20"].overrides[-1] == "model.box_beta=0.2"
    # DLA / DSL alone: the seeds the report of record does not train (it trains ABLATION_SEEDS)
    assert {n for n in by if n.startswith(("dla_seed", "dsl_seed"))} == {
        f"{m}_seed{s}" for m in ("dla", "dsl") for s in range(ABLATION_SEEDS, 7)}
    sens = {n: (a["setting"], a["value"]) for n, a in about.items() if a["kind"] == "sensitivity"}
    # K_I and C halved and doubled; the paper's K_beta 8 and 15 scaled as 10 -> 6
    assert sorted(sens.values()) == [("interval", 10), ("interval", 40), ("k_beta", 5), ("k_beta", 9),
                                     ("k_i", 12), ("k_i", 46)]
    assert all(not n.endswith("_seed1") for n in by if n.startswith("sens_"))  # one seed each
    # the schedule's length: the pair at 300 and 1800 iterations, lr steps at the same fractions, three seeds
    assert by["iter1800_dynamic_seed2"].overrides == (NMS_085, "max_iter=1800", "lr_steps=1350,1620",
                                                      "checkpoint_period=600")
    assert by["iter300_baseline_nms085"].method == "baseline" and "iter300_dynamic_seed3" not in by
    assert len(specs) == 6 * 7 + 2 * (7 - ABLATION_SEEDS) + 6 + 4 * 3
    # seed by seed: a partial study has every configuration of the seeds it reached
    seeds = [s.seed for s in specs]
    assert seeds == sorted(seeds) and specs[0].name == "iter1800_baseline_nms085"
    # DLA's final value equal to a fixed one: trained once
    specs, _ = controls.control_specs(controls.FinalValues(0.6, 0.5, 0.3), preset, seeds=(0,))
    assert [s.name for s in specs if s.name.startswith("fixed_")] == ["fixed_iou60", "fixed_iou70", "fixed_beta50"]


def test_a_fixed_threshold_control_assigns_at_it_from_the_first_iteration():
    cfg = build_config("mini_smoke", "baseline", overrides=["model.fg_iou_thresh=0.6"])
    head = dynamic_head(build_model(cfg, 3)).train()
    assert float(head.iou_threshold) == pytest.approx(0.6) and not head.use_dla
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    # IoU with the ground truth: 0.81, 0.64, 0.55, 0.0 (and the appended ground truth itself, 1.0)
    props = torch.tensor([[0.0, 0.0, 9.0, 9.0], [0.0, 0.0, 8.0, 8.0], [0.0, 0.0, 10.0, 5.5], [20.0, 20.0, 30.0, 30.0]])
    head.select_training_samples([props], [{"boxes": gt, "labels": torch.tensor([1])}])
    assert float(head.positives_per_image) == 3  # 0.81, 0.64 and the ground truth; 0.55 is background at 0.6


def test_a_fixed_beta_control_uses_that_beta_in_the_box_loss():
    cfg = build_config("mini_smoke", "baseline", overrides=["model.box_beta=0.25"])
    head = dynamic_head(build_model(cfg, 3))
    torch.manual_seed(0)
    logits, reg = torch.randn(6, 3), torch.randn(6, 12)
    labels, targets = [torch.tensor([1, 2, 0, 1, 0, 0])], [torch.randn(6, 4)]
    _, box = head.box_loss(logits, reg, labels, targets)
    pos = torch.tensor([0, 1, 3])
    pred = reg.reshape(6, 3, 4)[pos, labels[0][pos]]
    assert float(box) == pytest.approx(float(F.smooth_l1_loss(pred, targets[0][pos], beta=0.25, reduction="sum") / 6))
    assert float(box) != pytest.approx(float(F.smooth_l1_loss(pred, targets[0][pos], beta=1.0, reduction="sum") / 6))


def _reference(root, data, seeds=(0, 1, 2)):
    for s in seeds:
        sfx = "" if s == 0 else f"_seed{s}"
        write_run(root, f"baseline_nms085{sfx}", "baseline", seed=s, rpn_nms=0.85, data_root=str(data), jitter=3.0)
        write_run(root, f"dynamic{sfx}", "dynamic", seed=s, rpn_nms=0.85, data_root=str(data), jitter=1.5)
        for m in ("dla", "dsl"):
            write_run(root, f"{m}{sfx}", m, seed=s, rpn_nms=0.85, data_root=str(data), jitter=1.0)
    write_run(root, "baseline", "baseline", rpn_nms=0.7, data_root=str(data), jitter=3.0)  # not a reference
    return find_runs(root)


def test_the_section_notebook_on_synthetic_runs(tmp_path):
    """Notebook 07 (papermill) on a report of record and its controls: figures, results.json, the CONTROLS block."""
    from dynrcnn.report import NOTEBOOK_DIR
    from dynrcnn.report.pipeline import execute_notebook

    data = tmp_path / "data"
    write_gt(data, n_images=20)
    ref = _reference(tmp_path / "ref", data)
    final, specs, about = controls.plan_controls(ref, "mini_long", seeds=(0, 1, 2))
    jitter = {"threshold": 4.0, "beta": 4.0, "dla_fixed_beta": 2.0, "reference": 1.0, "sensitivity": 1.2}
    for s in specs:
        a = about[controls.base_name(s.name)]
        j = jitter.get(a["kind"]) or (1.5 if a.get("reference") == "dynamic" else 3.0)
        write_run(tmp_path / "ctrl", s.name, s.method, seed=s.seed, rpn_nms=0.85, data_root=str(data), jitter=j)
    figures = tmp_path / "figures"
    params = {"reference_root": str(tmp_path / "ref"), "controls_root": str(tmp_path / "ctrl"),
              "figures_dir": str(figures)}
    execute_notebook(NOTEBOOK_DIR / "07_controls.ipynb", tmp_path / "07.ipynb", params, cwd=tmp_path)
    assert not (figures / "results.json").exists()  # the notebook displays; the study's runner writes the numbers
    write_results(controls.results(controls.load_groups(tmp_path / "ref", tmp_path / "ctrl")), figures)
    res = json.loads((figures / "results.json").read_text())
    for name in ("thresholds", "betas", "positives", "schedule"):
        assert (figures / f"{name}.png").stat().st_size > 0
    assert res["final_threshold"] == final.threshold and res["final_dynamic_beta"] == final.dynamic_beta
    assert res["runs"]["dla"] == [0, 1, 2] and res["runs"]["dynamic"] == [0, 1, 2]
    keys = {c["key"] for c in res["claims"]}
    assert keys == {"dla_vs_fixed_threshold_60", "dla_vs_fixed_threshold_70", "dla_vs_best_fixed_threshold",
                    "dla_vs_fixed_final_threshold", "dsl_vs_fixed_beta", "dsl_vs_best_fixed_beta",
                    "dsl_vs_fixed_final_beta", "dynamic_vs_dla_fixed_final_beta", "paradox_fixed_07_vs_05"}
    # DLA (jitter 1.0) localises better than every fixed threshold (3.0, 4.0): reproduced on AP (AP90 on 20
    # images with 3 seeds is too noisy for a seed-level interval to exclude 0, but it points the same way)
    dla = {c["metric"]: c for c in res["claims"] if c["key"] == "dla_vs_best_fixed_threshold"}
    assert dla["AP"]["status"] == "reproduced" and dla["AP"]["own low"] > 0 and dla["AP"]["equivalence"] == "different"
    assert dla["AP90"]["delta"] > 0 and dla["AP"]["seeds"] == 3
    assert [c["label"] for c in res["positives"]][-1] == "DLA"
    assert len([r for r in res["sensitivity"] if r["benchmark"] == "evaluation split"]) == 6
    # the gain at each schedule length: 300, the record's 900, 1800
    assert [r["iterations"] for r in res["schedule"]] == [300, 900, 1800]
    assert all(r["AP gain"] > 0 and r["seeds"] == 3 for r in res["schedule"])
    assert res["seeds_used"] == 3 and res["seeds_planned"] == len(controls.SEEDS)
    # a smaller study: the first two seeds on every side, so that every comparison pairs the same seeds
    two = controls.load_groups(tmp_path / "ref", tmp_path / "ctrl", seeds=2)
    assert {tuple(int(r.seed) for r in rs) for rs in two.runs.values() if len(rs) > 1} == {(0, 1)}
    # ... with the final values (hence the control runs' names) of the plan, read from every reference run
    assert two.final == final and {c["key"] for c in controls.comparisons(two)} == keys
    block = readme_body(res, "figures/controls", "build/report-controls/07_controls.html", 1.0)
    assert "figures/controls/thresholds.png" in block and "figures/controls/schedule.png" in block
    assert "900 iterations (3 seeds)" in block
    assert "Runs trained on" in block and "lock" in block  # the block names the machine it came from
    assert f"| {dla['AP90']['claim']} | AP90 | 3 | {dla['AP90']['delta']:+.2f}" in block
