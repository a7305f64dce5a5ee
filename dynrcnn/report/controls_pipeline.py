"""``dynrcnn controls`` (``make report-controls``): the fixed-threshold, fixed-beta and
sensitivity controls of the report of record (:mod:`dynrcnn.report.controls`).

1. The report of record's complete runs (``runs/mini``, ``make report``) give the final threshold
   and beta the controls use, and are reused as the references (baseline at RPN NMS 0.85, DLA +
   DSL, DLA alone, DSL alone); nothing of them is retrained or changed.
2. The control runs (:func:`~dynrcnn.report.controls.control_specs`) are trained into
   ``runs/controls`` by the report's own train and evaluate notebooks, ``--jobs`` at a time with
   the live progress bar, from the same pinned backbone; complete runs are reused.
3. ``notebooks/07_controls.ipynb`` draws the figures and writes ``figures/controls/results.json``;
   the ``CONTROLS`` block of ``docs/controls.md`` is written from that file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from dynrcnn.errors import DynrcnnError
from dynrcnn.report import controls
from dynrcnn.report.profiles import NOTEBOOK_DIR, get_profile
from dynrcnn.report.text import replace_readme_block
from dynrcnn.io import relative_path

README_TAG = "CONTROLS"
DOC_PAGE = "docs/controls.md"  # the page whose README_TAG block this writes (under the report's root)


def _reference_runs(runs_root: Path):
    from dynrcnn.report.profiles import MINI_SEEDS
    from dynrcnn.rundir.runs import find_runs, is_complete

    runs = [r for r in find_runs(runs_root) if is_complete(r.path)]
    have = {(controls.base_name(r.path.name), int(r.seed)) for r in runs}
    missing = [f"{n} seed {s}" for n in ("baseline_nms085", "dynamic") for s in MINI_SEEDS if (n, s) not in have]
    missing += [f"{n} seed {MINI_SEEDS[0]}" for n in ("dla", "dsl") if (n, MINI_SEEDS[0]) not in have]
    if missing:
        raise DynrcnnError(f"{runs_root} lacks complete runs of the report of record ({', '.join(missing)}); "
                           "run 'make report' first")
    return runs


def readme_body(res: dict, figures: str, notebook: str, minutes: float) -> str:
    """The controls block of :data:`DOC_PAGE`, from ``results.json`` only."""
    lines = ["## The controls (written by `make report-controls`; do not edit by hand)", "",
             f"Fixed thresholds and betas from the first iteration against the schedules, with the report of record's "
             f"preset and seeds at RPN NMS 0.85 (DLA ends at threshold {res['final_threshold']:g}, DSL at beta "
             f"{res['final_beta']:g}).", "",
             f"![AP and AP90 against a fixed threshold, DLA across]({figures}/thresholds.png)", "",
             "| comparison | metric | schedule - fixed [95 % interval per benchmark] | status |", "|---|---|---|---|"]
    for c in res["claims"]:
        ivs = "; ".join(f"{'eval split' if k == 'own' else k} [{c[f'{k} low']:+.2f}, {c[f'{k} high']:+.2f}]"
                        for k in ("own", *sorted(k[:-4] for k in c if k.endswith(" low") and k != "own low"))
                        if c.get(f"{k} low") is not None)
        lines.append(f"| {c['claim']} | {c['metric']} | {c['delta']:+.2f}: {ivs} | {c['status']} |")
    lines += ["", res["interpretation"], "",
              f"Figures: `{figures}/` (thresholds, betas, positives per image); numbers: `{figures}/results.json`; "
              f"the notebook: `{notebook}`. This run took {minutes:.1f} min."]
    return "\n".join(lines)


def run_controls(root=None, runs_root=None, controls_root=None, figures_dir=None, out=None, jobs: int = 2,
                 device: str = "cpu", progress: bool = True, readme: bool = True) -> dict:
    """Train what is missing of the controls, evaluate them, run the notebook, write the
    block of :data:`DOC_PAGE`; returns the results (``figures/controls/results.json``)."""
    from dynrcnn.report.pipeline import (
        _notebook_env, _resolve_data_root, _run_steps, execute_notebook, plan, prepare_backbone, render_html,
        report_progress, report_root)
    from dynrcnn.report.progress import WORK

    t0 = time.perf_counter()
    record = get_profile("mini")  # the report of record
    root = report_root(root)
    runs_root = Path(runs_root or root / "runs" / record.name).resolve()
    controls_root = Path(controls_root or root / "runs" / "controls").resolve()
    figures_dir = Path(figures_dir or root / "figures" / "controls").resolve()
    out = Path(out or root / "build" / "report-controls").resolve()
    reference = _reference_runs(runs_root)
    threshold, beta, specs, _ = controls.plan_controls(reference, record.preset)
    data_root = _resolve_data_root(record, None, root)
    profile = dataclasses.replace(record, name="controls", runs=specs, readme=None, stats_methods=())
    # each run's own figures (AP per IoU, detections) stay with the executed notebooks, out of figures/
    steps = [s for s in plan(profile, out, controls_root, data_root, device, out / "figures", force=False)
             if s.kind in ("train", "evaluate")]
    threads = max(1, (os.cpu_count() or 1) // max(1, jobs))
    for p in (out, controls_root, figures_dir):
        p.mkdir(parents=True, exist_ok=True)
    print(f"controls of {runs_root}: DLA ends at {threshold:g}, DSL at {beta:g}; {len(specs)} runs in {controls_root}",
          file=sys.stderr)
    executed: list[Path] = []
    with report_progress("report[controls]", steps, progress, extra_work=WORK["notebook"] + WORK["render"]) as bar:
        pinned = prepare_backbone(profile, data_root, device, bar)
        for s in steps:
            if s.kind == "train":
                s.params["num_threads"] = threads
                s.params["overrides"] = [*s.params["overrides"], *pinned]
        with _notebook_env(threads):
            _run_steps(steps, out, max(1, jobs), bar, executed)
        with _notebook_env(os.cpu_count() or 1):
            bar.phase("controls notebook")
            nb = execute_notebook(NOTEBOOK_DIR / "07_controls.ipynb", out / "07_controls.ipynb",
                                  {"reference_root": str(runs_root), "controls_root": str(controls_root),
                                   "figures_dir": str(figures_dir)}, cwd=out)
            bar.done(WORK["notebook"], "rendering HTML")
            for path in [*executed, nb]:
                render_html(path)
            bar.done(WORK["render"] * (len(steps) + 1), "done")
    res = json.loads((figures_dir / "results.json").read_text())
    res["wall_time_sec"] = time.perf_counter() - t0
    if readme:
        page = root / DOC_PAGE  # its images are linked relative to the page's folder
        body = readme_body(res, Path(os.path.relpath(figures_dir, page.parent)).as_posix(),
                           relative_path(out / "07_controls.html", root), res["wall_time_sec"] / 60)
        replace_readme_block(page, README_TAG, body)
    return res


__all__ = ["run_controls", "readme_body", "README_TAG", "DOC_PAGE"]
