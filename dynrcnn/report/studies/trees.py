"""``make report-trees`` (``dynrcnn study trees``): Faster R-CNN against Dynamic R-CNN on real
aerial photographs of tree crowns (issue 33; :mod:`dynrcnn.report.trees`).

1. The data: ``data/trees`` is prepared by ``dynrcnn data trees`` when it is missing (the pinned
   ``deepforest`` wheel from the package index, :func:`dynrcnn.data.trees.prepare_trees`).
2. The runs (:data:`dynrcnn.report.trees.PROFILES`): the baseline and Dynamic R-CNN, both at RPN
   NMS 0.85, each with the declared seeds, trained into ``runs/trees`` with the ``trees`` preset
   (``--jobs`` processes at a time, one core each, the live progress bar counting their
   iterations) and evaluated on the validation tiles; finished runs are reused read-only, an
   interrupted one resumes from its checkpoint. Runs are trained in worker processes, not by the
   report's train notebook per run: a tree run's own figures add nothing the study's notebook
   does not show, and the tiny profile's end-to-end test stays within seconds of CPU.
3. The package computes ``figures/trees/results.json`` (:func:`dynrcnn.report.trees.results`),
   ``notebooks/08_trees.ipynb`` draws the figures, and the ``TREES`` block of ``docs/trees.md``
   is written from that file. This module is the study's declaration (:data:`STUDY`);
   :func:`dynrcnn.report.study.run_study` runs it.
"""

from __future__ import annotations

import os
from pathlib import Path

from dynrcnn.errors import DynrcnnError
from dynrcnn.io import relative_path, shown_path
from dynrcnn.report import trees
from dynrcnn.report.profiles import Profile, param_path
from dynrcnn.report.progress import WORK, Tracked
from dynrcnn.report.study import Study, StudyContext, Work, run_study

README_TAG = "TREES"
HEADLINE_TAG = "TREES-HEADLINE"  # README's headline line of the study's outcome
DOC_PAGE = "docs/trees.md"  # the page whose README_TAG block this writes (under the report's root)
NOTEBOOK = "08_trees"
#: the bar's units (:data:`~dynrcnn.report.progress.WORK`: 0.1 s of wall time each) of a tree run's
#: iteration (1.9 s of CPU) and evaluation (13 s of CPU), and of preparing the data (10 s):
#: docs/trees.md's measurement
UNITS = {"iteration": 19, "evaluate": 130, "data": 100}


def _profile(ctx: StudyContext) -> Profile:
    p = ctx.state.get("profile") or "trees"
    return trees.PROFILES[p] if isinstance(p, str) else p


def _seeds(profile: Profile) -> tuple[int, ...]:
    return tuple(sorted({int(r.seed) for r in profile.runs}))


def train_and_evaluate(job: tuple) -> str:
    """Train (or resume, or reuse) one run and evaluate it: ``(run_dir, config, device, threads)``.
    A folder holding a run of another config is refused, never replaced; one of the same config
    interrupted before its first checkpoint starts again (:func:`dynrcnn.rundir.integrity.train_action`
    and :func:`~dynrcnn.rundir.integrity.refuse_replacing`, the train notebook's rule)."""
    import torch

    from dynrcnn.engine.trainer import train
    from dynrcnn.evaluation.coco_eval import ensure_evaluated
    from dynrcnn.rundir import integrity

    run_dir, cfg, device, threads = job
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        action, why = integrity.train_action(run_dir, cfg)
        integrity.refuse_replacing(run_dir, action, why, "move it away or give the study another runs folder")
        if action != "reuse":
            train(cfg, run_dir, resume=action == "resume", device=device, progress=False)
        ensure_evaluated(run_dir, device=device)
    finally:
        torch.set_num_threads(before)
    return str(run_dir)


def train_in_workers(jobs: list[tuple], workers: int, done=lambda run_dir: None) -> None:
    """:func:`train_and_evaluate` each job, ``workers`` processes at a time (spawned: each sets its
    own torch threads), calling ``done(run_dir)`` as each finishes, in order."""
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            done(train_and_evaluate(job))
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        for run_dir in pool.map(train_and_evaluate, jobs):
            done(run_dir)


def _jobs(profile: Profile, runs_root: Path, data_root: Path, device: str, threads: int) -> list[tuple]:
    from dynrcnn.presets import build_config

    return [(runs_root / spec.name, build_config(profile.preset, spec.method, seed=spec.seed, data_root=str(data_root),
                                                 overrides=profile.run_overrides(spec)), device, threads)
            for spec in profile.runs]


def _work(ctx: StudyContext) -> Work:
    from dynrcnn.data.datasets import annotation_file
    from dynrcnn.report.intervals import precompute
    from dynrcnn.rundir.runs import is_evaluated, is_finished, load_run

    s, profile = ctx.state, _profile(ctx)
    if not (s.get("data_root") or profile.data_root):
        raise DynrcnnError(f"the {profile.name} profile has no data folder of its own: give it one (data_root)")
    data_root = Path(s.get("data_root") or ctx.root / profile.data_root).resolve()
    runs_root = Path(s.get("runs_root") or ctx.root / "runs" / profile.name).resolve()
    mini_root = Path(s.get("mini_root") or ctx.root / trees.MINI_ROOT).resolve()
    s.update(data_root=data_root, runs_root=runs_root, mini_root=mini_root, seeds=_seeds(profile))
    threads = s.get("threads") or (max(1, (os.cpu_count() or 1) // ctx.jobs) if ctx.device == "cpu" else 1)
    jobs = _jobs(profile, runs_root, data_root, ctx.device, threads)
    todo = [j for j in jobs if not (is_finished(j[0]) and is_evaluated(j[0]))]
    missing_data = not annotation_file(data_root, "val").is_file()

    def run(bar) -> None:
        if missing_data:
            from dynrcnn.data.trees import prepare_trees

            bar.phase(f"preparing the tree crowns in {shown_path(data_root)} (dynrcnn data trees)")
            prepare_trees(data_root)
            bar.done(UNITS["data"])
        bar.phase(f"training and evaluating {len(todo)} runs, {ctx.jobs} at a time")
        train_in_workers(todo, ctx.jobs, lambda _: bar.done(UNITS["evaluate"]))
        bar.phase(f"bootstrap samples of {len(jobs)} runs")
        precompute([load_run(j[0]) for j in jobs], jobs=ctx.jobs)
        bar.done(WORK["bootstrap"] * len(jobs))

    units = UNITS["data"] * missing_data + (UNITS["evaluate"] + WORK["bootstrap"]) * len(todo)
    tracked = [Tracked(j[0], j[1].max_iter, weight=UNITS["iteration"]) for j in todo]
    return Work(run, units, tracked, summary=f"{len(todo)} of {len(jobs)} runs to train or evaluate in "
                                             f"{shown_path(runs_root)} ({profile.description})")


def _results(ctx: StudyContext) -> dict:
    from dynrcnn.data.trees import cached_wheel
    from dynrcnn.rundir.runs import find_runs

    s = ctx.state
    return trees.results(find_runs(s["runs_root"]), trees.mini_runs(s["mini_root"]), s["data_root"], s["seeds"],
                         command=ctx.state.get("command") or STUDY.command, wheel=cached_wheel())


def _params(ctx: StudyContext) -> dict:
    s = ctx.state
    return {"runs_root": param_path(s["runs_root"]), "data_root": param_path(s["data_root"]),
            "mini_root": param_path(s["mini_root"]), "seeds": list(s["seeds"])}


def _blocks(res: dict, ctx: StudyContext) -> dict:
    return {README_TAG: trees.block(res, ctx.page_relative(ctx.figures, DOC_PAGE),
                                    relative_path(ctx.out / f"{NOTEBOOK}.html", ctx.root), res["wall_time_sec"] / 60)}


STUDY = Study("trees", NOTEBOOK, "figures/trees", "build/report-trees", _work, _results, _params, page=DOC_PAGE,
              blocks=_blocks, readme=lambda res: {HEADLINE_TAG: res["readme_line"]}, command="make report-trees")


def run_trees(root=None, jobs: int = 2, device: str = "cpu", progress: bool = True, readme: bool = True,
              profile: str | Profile = "trees", data_root=None, runs_root=None, mini_root=None, figures=None,
              out=None, threads: int | None = None) -> dict:
    """:func:`~dynrcnn.report.study.run_study` of :data:`STUDY` with ``profile`` (a name of
    :data:`dynrcnn.report.trees.PROFILES` or a profile): prepare the data when missing, train and
    evaluate what is missing of the runs, write ``results.json``, run the notebook, write the block
    of :data:`DOC_PAGE`; returns the results. Folders not given are the profile's under ``root``;
    ``threads``: each run's torch threads (default: the cores shared among ``jobs``)."""
    name = profile if isinstance(profile, str) else profile.name
    if isinstance(profile, str) and profile not in trees.PROFILES:
        raise DynrcnnError(f"no tree profile {profile!r}; choose one of {', '.join(trees.PROFILES)}")
    command = STUDY.command if name == "trees" else f"run_trees(profile={name!r})"
    state = {"profile": profile, "data_root": data_root, "runs_root": runs_root, "mini_root": mini_root,
             "command": command, "threads": threads}
    return run_study(STUDY, root=root, jobs=jobs, device=device, progress=progress, write_block=readme, out=out,
                     figures=figures, state=state)


__all__ = ["STUDY", "run_trees", "train_and_evaluate", "train_in_workers", "README_TAG", "DOC_PAGE"]
