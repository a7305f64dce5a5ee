"""``make report-premise`` (``dynrcnn study premise``): the schedule tested once on the benchmark
frozen by the premise search (issue 32, step 3; :mod:`dynrcnn.report.premise_test`).

1. The frozen benchmark (:data:`~dynrcnn.report.premise_test.FROZEN`) is drawn on the test's fresh
   data seed into ``data/premise`` when missing, and its annotations must hash to the pinned sha256
   (a folder holding another draw is refused, never replaced).
2. The runs: the baseline at fixed 0.5 / 0.6 / 0.7, DLA, DSL and Dynamic R-CNN, at RPN NMS 0.85,
   with every declared seed, on the frozen candidate's recipe from the pinned pretrained backbone;
   trained into ``runs/premise_test`` ``--jobs`` at a time (one core each, the bar counting their
   iterations) and evaluated; finished runs are reused, an interrupted one resumes.
3. The package computes ``figures/premise/results.json`` (:func:`dynrcnn.report.premise_test.results`),
   ``notebooks/09_premise.ipynb`` draws the figures, and the ``PREMISE-TEST`` block of
   ``docs/premise.md`` and README's ``PREMISE-HEADLINE`` line are written from that file.
"""

from __future__ import annotations

import os
from pathlib import Path

from dynrcnn.errors import DynrcnnError
from dynrcnn.io import relative_path, shown_path
from dynrcnn.report import premise_test as pt
from dynrcnn.report.profiles import param_path
from dynrcnn.report.progress import WORK, Tracked
from dynrcnn.report.study import Study, StudyContext, Work, run_study

README_TAG = "PREMISE-TEST"
HEADLINE_TAG = "PREMISE-HEADLINE"  # README's headline line of the study's outcome
DOC_PAGE = "docs/premise.md"
NOTEBOOK = "09_premise"
#: the bar's units (0.1 s of wall time each) of an iteration (0.2 s with one core) and an evaluation
#: (25 s) of a miniature run, and of drawing the benchmark (60 s)
UNITS = {"iteration": 2, "evaluate": 250, "data": 600}


def draw_test_data(candidate, data_root, n_train: int | None = None, n_val: int | None = None,
                   image_size: int | None = None, seed: int = pt.TEST_DATA_SEED) -> str:
    """Draw ``candidate``'s benchmark on the test's data seed into ``data_root`` when missing (an
    existing draw with other settings is refused); returns its annotations' sha256."""
    import json

    from dynrcnn.data.datasets import annotation_file
    from dynrcnn.data.mini import N_TRAIN, N_VAL, ensure_mini
    from dynrcnn.presets import build_config
    from dynrcnn.report.premise import PRESET, _annotation_sha256, candidate_overrides

    settings = candidate.settings()
    # drawn at the size the runs train at (a candidate may change it)
    size = image_size or build_config(PRESET, "baseline", overrides=list(candidate_overrides(candidate))).model.min_size
    ensure_mini(Path(data_root), seed=seed, n_train=N_TRAIN if n_train is None else n_train,
                n_val=N_VAL if n_val is None else n_val, image_size=size, settings=settings)
    info = json.loads(annotation_file(data_root, "train").read_text())["info"]
    if info.get("generator", {}) != settings.changed() or info.get("seed") != seed:
        raise DynrcnnError(f"{shown_path(data_root)} holds a benchmark drawn with other settings or seed than "
                           f"{candidate.name} on data seed {seed}; move it away")
    return _annotation_sha256(Path(data_root))


def _work(ctx: StudyContext) -> Work:
    from dynrcnn.engine.pretrain import resolve_backbone
    from dynrcnn.presets import PRETRAINED_ROOT, build_config
    from dynrcnn.rundir.runs import is_evaluated, is_finished

    s = ctx.state
    frozen = s.get("frozen") or pt.FROZEN
    candidate = s.get("candidate") or pt.frozen_candidate(frozen)
    profile = s.get("profile") or pt.premise_profile(candidate)
    data_root = Path(s.get("data_root") or ctx.root / pt.DATA_ROOT).resolve()
    runs_root = Path(s.get("runs_root") or ctx.root / pt.RUNS_ROOT).resolve()
    seeds = tuple(sorted({int(r.seed) for r in profile.runs}))
    s.update(frozen=frozen, data_root=data_root, runs_root=runs_root, seeds=seeds)
    threads = s.get("threads") or (max(1, (os.cpu_count() or 1) // ctx.jobs) if ctx.device == "cpu" else 1)
    configs = [(runs_root / spec.name, build_config(profile.preset, spec.method, seed=spec.seed,
                                                    data_root=str(data_root), overrides=profile.run_overrides(spec)))
               for spec in profile.runs]
    todo = [(out, cfg) for out, cfg in configs if not (is_finished(out) and is_evaluated(out))]

    def run(bar) -> None:
        from dynrcnn.report.intervals import precompute
        from dynrcnn.report.studies.trees import train_in_workers
        from dynrcnn.rundir.runs import load_run

        bar.phase(f"the frozen benchmark {candidate.name} in {shown_path(data_root)}")
        sha = draw_test_data(candidate, data_root, s.get("n_train"), s.get("n_val"), configs[0][1].model.min_size)
        if sha != frozen.test_sha256:
            raise DynrcnnError(f"{shown_path(data_root)}: its annotations hash to {sha[:12]}, the frozen benchmark "
                               f"pins {frozen.test_sha256[:12]}; move the folder away and run again")
        bar.done(UNITS["data"])
        jobs = [(out, resolve_backbone(cfg, ctx.root / PRETRAINED_ROOT, device=ctx.device, progress=False),
                 ctx.device, threads) for out, cfg in todo]
        bar.phase(f"training and evaluating {len(jobs)} runs, {ctx.jobs} at a time")
        train_in_workers(jobs, ctx.jobs, lambda _: bar.done(UNITS["evaluate"]))
        bar.phase(f"bootstrap samples of {len(configs)} runs")
        precompute([load_run(out) for out, _ in configs if is_evaluated(out)], jobs=ctx.jobs)
        bar.done(WORK["bootstrap"] * len(configs))

    units = UNITS["data"] + (UNITS["evaluate"] + WORK["bootstrap"]) * len(todo)
    tracked = [Tracked(out, cfg.max_iter, weight=UNITS["iteration"]) for out, cfg in todo]
    return Work(run, units, tracked, summary=f"{len(todo)} of {len(configs)} runs to train or evaluate in "
                                             f"{shown_path(runs_root)} ({profile.description})")


def _record(frozen) -> dict | None:
    """The frozen candidate's line of the search's record (the one with the pinned sha256)."""
    from dynrcnn.report.premise import RECORD, read_records
    from dynrcnn.io import CHECKOUT

    lines = [r for r in read_records(CHECKOUT / RECORD) if r["candidate"] == frozen.candidate
             and r["data"]["annotation_sha256"] == frozen.search_sha256]
    return lines[-1] if lines else None


def _results(ctx: StudyContext) -> dict:
    from dynrcnn.rundir.runs import find_runs

    s = ctx.state
    return pt.results(find_runs(s["runs_root"]) if Path(s["runs_root"]).is_dir() else [], s["data_root"],
                      s["frozen"], s.get("record") or _record(s["frozen"]), s["seeds"],
                      command=s.get("command") or STUDY.command)


def _params(ctx: StudyContext) -> dict:
    s = ctx.state
    return {"runs_root": param_path(s["runs_root"]), "data_root": param_path(s["data_root"]),
            "seeds": list(s["seeds"])}


def _blocks(res: dict, ctx: StudyContext) -> dict:
    return {README_TAG: pt.block(res, ctx.page_relative(ctx.figures, DOC_PAGE),
                                 relative_path(ctx.out / f"{NOTEBOOK}.html", ctx.root), res["wall_time_sec"] / 60)}


STUDY = Study("premise", NOTEBOOK, pt.FIGURES, "build/report-premise", _work, _results, _params, page=DOC_PAGE,
              blocks=_blocks, readme=lambda res: {HEADLINE_TAG: res["readme_line"]}, command="make report-premise")


def run_premise(root=None, jobs: int = 2, device: str = "cpu", progress: bool = True, readme: bool = True,
                frozen=None, candidate=None, profile=None, data_root=None, runs_root=None, figures=None, out=None,
                threads: int | None = None, n_train: int | None = None, n_val: int | None = None,
                record: dict | None = None, command: str | None = None) -> dict:
    """:func:`~dynrcnn.report.study.run_study` of :data:`STUDY`: draw the frozen benchmark when
    missing, train and evaluate what is missing of the runs, write ``results.json``, run the
    notebook, write the block of :data:`DOC_PAGE` and README's line; returns the results.
    ``frozen``/``candidate``/``profile``/``record`` replace the declared ones (the end-to-end
    test's tiny study)."""
    state = {"frozen": frozen, "candidate": candidate, "profile": profile, "data_root": data_root, "runs_root": runs_root,
             "threads": threads, "n_train": n_train, "n_val": n_val, "record": record, "command": command}
    return run_study(STUDY, root=root, jobs=jobs, device=device, progress=progress, write_block=readme, out=out,
                     figures=figures, state=state)


__all__ = ["STUDY", "run_premise", "draw_test_data", "README_TAG", "HEADLINE_TAG", "DOC_PAGE"]
