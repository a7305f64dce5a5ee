"""``dynrcnn controls`` (``make report-controls``): the fixed-threshold, fixed-beta and
sensitivity controls of the report of record (:mod:`dynrcnn.report.controls`).

1. The report of record's complete runs (``runs/mini``, ``make report``) give the final threshold
   and beta the controls use, and are reused as the references (baseline at RPN NMS 0.85, DLA +
   DSL, DLA alone, DSL alone); nothing of them is retrained or changed.
2. The control runs (:func:`~dynrcnn.report.controls.control_specs`) are trained into
   ``runs/controls`` by the report's own train and evaluate notebooks, ``--jobs`` at a time with
   the live progress bar, from the same pinned backbone; complete runs are reused.
3. The package computes ``figures/controls/results.json`` (:func:`dynrcnn.report.controls.results`),
   ``notebooks/07_controls.ipynb`` draws the figures and shows the tables, and the ``CONTROLS``
   block of ``docs/controls.md`` is written from that file. This module is the study's
   declaration (:data:`STUDY`); :func:`dynrcnn.report.study.run_study` runs it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from dynrcnn.errors import DynrcnnError
from dynrcnn.io import relative_path
from dynrcnn.report import controls
from dynrcnn.report.pipeline import _resolve_data_root
from dynrcnn.report.profiles import ABLATION_SEEDS, HEADLINE_SEEDS, get_profile, param_path
from dynrcnn.report.study import Study, StudyContext, Work, attribution, notebook_work, run_study

RECORD = "mini"  # the profile of the report of record, whose runs the controls start from

README_TAG = "CONTROLS"
DOC_PAGE = "docs/controls.md"  # the page whose README_TAG block this writes (under the report's root)


def _reference_runs(runs_root: Path):
    from dynrcnn.rundir.runs import find_runs, is_complete

    runs = [r for r in find_runs(runs_root) if is_complete(r.path)]
    have = {(controls.base_name(r.path.name), int(r.seed)) for r in runs}
    missing = [f"{n} seed {s}" for n in ("baseline_nms085", "dynamic") for s in range(HEADLINE_SEEDS)
               if (n, s) not in have]
    missing += [f"{n} seed {s}" for n in ("dla", "dsl") for s in range(ABLATION_SEEDS) if (n, s) not in have]
    if missing:
        raise DynrcnnError(f"{runs_root} lacks complete runs of the report of record ({', '.join(missing)}); "
                           "run 'make report' first")
    return runs


def readme_body(res: dict, figures: str, notebook: str, minutes: float) -> str:
    """The controls block of :data:`DOC_PAGE`, from ``results.json`` only."""
    lines = ["## The controls (written by `make report-controls`; do not edit by hand)", "",
             f"Fixed thresholds and betas from the first iteration against the schedules, with the report of record's "
             f"preset at RPN NMS 0.85 and {res['seeds_used']} of the {res['seeds_planned']} seeds declared (DLA alone ends at threshold "
             f"{res['final_threshold']:g}, DSL alone at beta {res['final_beta']:g}, DLA + DSL at beta "
             f"{res['final_dynamic_beta']:g}; each fixed control fixes the value of the schedule it is compared with; "
             f"a best fixed value is chosen on {res['selection_benchmark']} and tested on the evaluation split).", "",
             f"![AP and AP90 against a fixed threshold, DLA across]({figures}/thresholds.png)", "",
             "| comparison | metric | seeds | schedule - fixed [95 % interval per benchmark] | status | equivalence |",
             "|---|---|---|---|---|---|"]
    for c in res["claims"]:
        ivs = "; ".join(f"{'eval split' if k == 'own' else k} [{c[f'{k} low']:+.2f}, {c[f'{k} high']:+.2f}]"
                        for k in ("own", *sorted(k[:-4] for k in c if k.endswith(" low") and k != "own low"))
                        if c.get(f"{k} low") is not None)
        lines.append(f"| {c['claim']} | {c['metric']} | {c['seeds']} | {c['delta']:+.2f}: {ivs} | {c['status']} | "
                     f"{c.get('equivalence', '')} |")
    sched = [r for r in res.get("schedule", []) if r["benchmark"] == "evaluation split"]
    if sched:
        lines += ["", "Dynamic R-CNN minus the baseline (RPN NMS 0.85) against the fine-tune's length, evaluation "
                  "split: " + "; ".join(f"{r['iterations']} iterations ({r['seeds']} seeds) {r['AP gain']:+.2f} AP "
                                         f"[{r['AP low']:+.2f}, {r['AP high']:+.2f}], {r['AP90 gain']:+.2f} AP90 "
                                         f"[{r['AP90 low']:+.2f}, {r['AP90 high']:+.2f}]" for r in sched) + ".",
                  "", f"![the gain against the schedule's length]({figures}/schedule.png)"]
    lines += ["", res["interpretation"], "", attribution(res), "",
              f"Figures: `{figures}/` (thresholds, betas, positives per image, gain against the schedule's length); "
              f"numbers: `{figures}/results.json`; "
              f"the notebook: `{notebook}`. This run took {minutes:.1f} min."]
    return "\n".join(lines)


def _work(ctx: StudyContext) -> Work:
    record = get_profile(RECORD)
    runs_root = ctx.root / "runs" / record.name
    controls_root = ctx.root / "runs" / "controls"
    reference = _reference_runs(runs_root)
    seeds = controls.SEEDS[:ctx.state.get("seeds") or len(controls.SEEDS)]
    final, specs, _ = controls.plan_controls(reference, record.preset, seeds)
    data_root = _resolve_data_root(record, None, ctx.root)
    profile = dataclasses.replace(record, name="controls", runs=specs, readme=None, stats_methods=())
    ctx.state.update(reference_root=runs_root, controls_root=controls_root)
    work = notebook_work(ctx, profile, controls_root, data_root)
    work.summary = (f"DLA ends at {final.threshold:g}, DSL at {final.beta:g}, DLA + DSL at beta {final.dynamic_beta:g}; "
                    f"{len(specs)} runs in {controls_root}")
    return work


def _results(ctx: StudyContext) -> dict:
    return controls.results(controls.load_groups(ctx.state["reference_root"], ctx.state["controls_root"],
                                                 seeds=ctx.state.get("seeds")))


def _params(ctx: StudyContext) -> dict:
    return {"reference_root": param_path(ctx.state["reference_root"]),
            "controls_root": param_path(ctx.state["controls_root"]), "seeds": ctx.state.get("seeds")}


def _block(res: dict, ctx: StudyContext) -> str:
    return readme_body(res, ctx.page_relative(ctx.figures, DOC_PAGE),
                       relative_path(ctx.out / "07_controls.html", ctx.root), res["wall_time_sec"] / 60)


STUDY = Study("controls", "07_controls", "figures/controls", "build/report-controls", _work, _results, _params,
              page=DOC_PAGE, blocks=lambda res, ctx: {README_TAG: _block(res, ctx)}, command="make report-controls")


def run_controls(root=None, jobs: int = 2, device: str = "cpu", progress: bool = True, readme: bool = True,
                 seeds: int | None = None, train: bool = True) -> dict:
    """:func:`~dynrcnn.report.study.run_study` of :data:`STUDY`: train what is missing of the
    controls, evaluate them, write ``figures/controls/results.json``, run the notebook, write the
    block of :data:`DOC_PAGE`; returns the results. ``seeds``: the first that many of
    :data:`~dynrcnn.report.controls.SEEDS` (default all; fewer is a smaller study, said in its block);
    ``train`` False: nothing is trained, the study is written from the complete runs."""
    return run_study(STUDY, root=root, jobs=jobs, device=device, progress=progress, write_block=readme,
                     state={"seeds": seeds}, train=train)


__all__ = ["STUDY", "run_controls", "readme_body", "README_TAG", "DOC_PAGE"]
