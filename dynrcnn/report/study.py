"""One runner for every study of the report: a study is *declared*, :func:`run_study` runs it.

A :class:`Study` says which runs it needs, how to train and evaluate what is missing of them,
how its numbers are computed from those runs (``results.json``, by the package), which notebook
shows them, and which block of which page (README or a ``docs/`` page) it writes. The runner does
the same for every study, in this order:

1. ``study.work(ctx)`` plans what is missing (:class:`Work`: a callable and the progress it
   reports); it raises :class:`~dynrcnn.errors.DynrcnnError` naming what to run first when a
   prerequisite (another study's runs) is missing;
2. runs it under the report's one progress bar;
3. ``study.results(ctx)`` computes the study's numbers from its runs and the runner writes them to
   ``<figures>/results.json`` (atomically, with the wall time): notebooks display, they never
   compute or write results;
4. executes ``study.notebook`` with papermill (its parameters: ``study.params(ctx)`` plus
   ``figures_dir``) and renders it to HTML next to the executed copy;
5. ``study.finish(results, ctx)`` when declared (the report of record's ``index.html``), then
   writes each of ``study.blocks(results, ctx)`` (tag -> markdown) between the page's
   ``<!-- TAG:BEGIN/END -->`` markers (only where the page has them).

The report of record, the controls and the MMDetection comparison are three declarations
(:mod:`dynrcnn.report.studies`); a new study is one more module there plus its notebook, and runs
with ``dynrcnn study NAME``.
"""

from __future__ import annotations

import importlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from dynrcnn.errors import DynrcnnError
from dynrcnn.io import atomic_write_bytes
from dynrcnn.report.pipeline import _notebook_env, _run_steps, execute_notebook, render_html, report_root
from dynrcnn.report.profiles import NOTEBOOK_DIR
from dynrcnn.report.progress import WORK, ReportProgress
from dynrcnn.report.text import replace_readme_block

RESULTS = "results.json"  # a study's numbers, in its figures folder
README = "README.md"  # the front page: the report of record's blocks and each study's headline line


@dataclass
class StudyContext:
    """Where a study runs: the report's root and the study's folders (absolute), the runner's
    settings, and ``state``: what ``work`` found that ``results``/``params``/``block`` reuse."""

    root: Path
    figures: Path
    out: Path
    jobs: int = 2
    device: str = "cpu"
    state: dict = field(default_factory=dict)

    def page_relative(self, path, page: str) -> str:
        """``path`` as a link from ``page`` (a page's images are linked relative to its folder)."""
        return Path(os.path.relpath(Path(path), (self.root / page).parent)).as_posix()


@dataclass
class Work:
    """What a study trains and evaluates: ``run(bar)`` does it; ``units`` is what it adds to the
    bar beside the iterations of ``tracked`` (:class:`~dynrcnn.report.progress.Tracked` runs)."""

    run: Callable[[ReportProgress], None]
    units: float = 0.0
    tracked: list = field(default_factory=list)
    summary: str = ""


@dataclass(frozen=True)
class Study:
    """A study's declaration (see the module docstring). Paths are relative to the report's root;
    ``page``/``tag`` name the generated block (None: none)."""

    name: str
    notebook: str  # the section's notebook: a stem in notebooks/, or a path to an .ipynb
    figures: str | None  # e.g. "figures/controls"; None: ``<out>/figures``
    out: str  # e.g. "build/report-controls": executed notebooks and their HTML
    work: Callable[[StudyContext], Work]
    results: Callable[[StudyContext], dict]
    params: Callable[[StudyContext], dict]
    page: str | None = None  # the page holding the generated blocks (README.md or docs/...)
    blocks: Callable[[dict, StudyContext], dict] | None = None  # tag -> markdown body
    readme: Callable[[dict], dict] | None = None  # tag -> a line of README.md's headline (its outcome)
    finish: Callable[[dict, StudyContext], None] | None = None  # after the notebook, inside the bar
    command: str = ""  # what a reader types to run it (named in the blocks)


def steps_work(ctx: StudyContext, profile, data_root: Path, steps: list, extra_units: float = 0.0) -> Work:
    """The :class:`Work` of running the pipeline's ``steps`` (data, train, evaluate, method) of
    ``profile``, ``ctx.jobs`` at a time (:func:`~dynrcnn.report.pipeline._run_steps`), every training
    run starting from the profile's pinned pretrained backbone (built first when missing); finished
    runs are reused read-only. ``extra_units``: the bar's share of what follows the steps."""
    from dynrcnn.report.pipeline import prepare_backbone, report_progress

    threads = max(1, (os.cpu_count() or 1) // ctx.jobs) if ctx.device == "cpu" else 1
    probe = report_progress("", steps, progress=False)  # each step's share of the bar, and the runs to track

    def run(bar: ReportProgress) -> None:
        pinned = prepare_backbone(profile, data_root, ctx.device, bar)
        for s in steps:
            if s.kind == "train":
                s.params["num_threads"] = threads
                s.params["overrides"] = [*s.params["overrides"], *pinned]
        with _notebook_env(threads):
            _run_steps(steps, ctx.out, ctx.jobs, bar, ctx.state.setdefault("executed", []))

    return Work(run, sum(s.work for s in steps) + WORK["render"] * len(steps) + extra_units, list(probe.tracked))


def notebook_work(ctx: StudyContext, profile, runs_root: Path, data_root: Path) -> Work:
    """The :class:`Work` of training and evaluating ``profile``'s runs under ``runs_root`` with the
    report's own notebooks (``03_train`` then ``04_evaluate`` per run): :func:`steps_work` of those
    steps; complete runs are reused."""
    from dynrcnn.report.pipeline import plan

    steps = [s for s in plan(profile, ctx.out, runs_root, data_root, ctx.device, ctx.out / "figures", force=False)
             if s.kind in ("train", "evaluate")]
    work = steps_work(ctx, profile, data_root, steps)
    work.summary = f"{len(profile.runs)} runs in {runs_root}"
    return work


def notebook_path(notebook: str) -> Path:
    """A study's notebook: ``notebooks/<stem>.ipynb`` for a stem, else the path itself."""
    return Path(notebook) if notebook.endswith(".ipynb") else NOTEBOOK_DIR / f"{notebook}.ipynb"


def write_results(res: dict, figures: Path) -> Path:
    """``<figures>/results.json``, atomically."""
    figures.mkdir(parents=True, exist_ok=True)
    path = figures / RESULTS
    atomic_write_bytes(path, (json.dumps(res, indent=1) + "\n").encode())
    return path


def utc_minute() -> str:
    """Now, as a block dates itself: ``2026-12-05 14:30 UTC``."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


TIMINGS = "timings.json"  # <out>/timings.json: where one invocation of a study spent its wall time
# the phases a timing line names; the rest (planning, the notebooks, the HTML pages, the blocks) is summed
MAIN_PHASES = ("pretraining", "data", "training and evaluation", "bootstrap")  # the order they run in


def timings(ctx: StudyContext) -> dict:
    """This invocation's wall time by phase (:meth:`ReportProgress.phase_seconds`), the runs it
    trained (a reused run is no work) and the machine, as ``<out>/timings.json`` holds them."""
    from dynrcnn.rundir.environment import cpu_model

    bar = ctx.state["bar"]
    return {"wall_time_sec": time.perf_counter() - ctx.state["t0"], "phases_sec": bar.phase_seconds(),
            "runs_trained": len(bar.tracked), "machine": cpu_model(), "cores": os.cpu_count(),
            "load_average_at_start": ctx.state["load"], "written_at": utc_minute()}


def timing_line(t: dict, command: str) -> str:
    """README's account of a report's wall time from :func:`timings`: the total, the machine and its
    load when it began, the runs it trained, and minutes per phase."""
    phases = t["phases_sec"]
    parts = [f"{k} {phases[k] / 60:.1f}" for k in MAIN_PHASES if k in phases]
    parts.append(f"notebooks and pages {sum(v for k, v in phases.items() if k not in MAIN_PHASES) / 60:.1f}")
    from dynrcnn.rundir.environment import machine_line

    return (f"**Time** (written by `{command}`): {t['wall_time_sec'] / 60:.0f} min on "
            f"{machine_line(t['load_average_at_start'], t['machine'], t['cores'])}, "
            f"{t['runs_trained']} runs trained in it (a pretraining counts as one; finished runs are reused); "
            f"minutes per phase: {', '.join(parts)}. Written {t['written_at']}.")


def attribution(res: dict) -> str:
    """When and from what a study's block was written: its date, its runs' machines and the
    environment check (:func:`~dynrcnn.report.results.environment_line`), from ``results.json``."""
    from dynrcnn.report.results import environment_line

    when = f"Written {res['written_at']}" if res.get("written_at") else "Written"
    return when + (f". {environment_line(res['environment'])}" if res.get("environment") else ".")


def run_times(run) -> dict:
    """A run's median seconds per iteration and its training's wall minutes (``train_done.json``;
    NaN while it has not finished): the timing columns of a study's run rows."""
    done = run.done or {}
    return {"sec_per_iter": float(done.get("sec_per_iter_median", float("nan"))),
            "train_minutes": float(done.get("wall_time_sec", float("nan"))) / 60}


def training_text(rows: list[dict]) -> str:
    """A study block's account of its runs' training, from rows carrying ``train_minutes``:
    ``; its 60 runs trained for 62 run-minutes (0.9 / 1.0 / 1.2 min each)`` from the runs' own
    ``train_done.json`` (a study that reuses finished runs takes less than their training did)."""
    import math
    import statistics

    mins = [r["train_minutes"] for r in rows if math.isfinite(r.get("train_minutes", math.nan))]
    if not mins:
        return ""
    return (f"; its {len(mins)} runs trained for {sum(mins):.0f} run-minutes ({min(mins):.1f} / "
            f"{statistics.median(mins):.1f} / {max(mins):.1f} min each, min / median / max)")


def run_study(study: Study, root=None, jobs: int = 2, device: str = "cpu", progress: bool = True,
              write_block: bool = True, out=None, figures=None, state: dict | None = None, log=print,
              train: bool = True) -> dict:
    """Run ``study`` (module docstring); returns its results (what ``results.json`` holds).
    ``out`` / ``figures`` replace the study's folders; ``state`` seeds :attr:`StudyContext.state`
    (a declaration's own settings, e.g. the report's profile)."""
    t0 = time.perf_counter()
    root = report_root(root)
    out = Path(out or root / study.out).resolve()
    figures = Path(figures or (root / study.figures if study.figures else out / "figures")).resolve()
    ctx = StudyContext(root, figures, out, max(1, int(jobs)), device, state if state is not None else {})
    ctx.out.mkdir(parents=True, exist_ok=True)
    ctx.state["t0"], ctx.state["load"] = t0, os.getloadavg()[0]
    work = study.work(ctx)
    if work.summary:
        log(f"{study.name}: {work.summary}")
    extra = WORK["notebook"] + WORK["render"] * (1 + len(ctx.state.get("steps", ())))
    if not train:  # the results, notebook and block from the complete runs only (e.g. while others train)
        log(f"{study.name}: nothing trained (train=False); the study is written from its complete runs")
    with ReportProgress(f"report[{study.name}]", (work.units if train else 0.0) + extra,
                        work.tracked if train else [], progress) as bar:
        ctx.state["bar"] = bar
        if train:
            work.run(bar)
        bar.phase(f"{study.name}: results", key="results")
        res = study.results(ctx)
        res["wall_time_sec"] = time.perf_counter() - t0
        res["written_at"] = utc_minute()  # blocks date themselves
        write_results(res, ctx.figures)
        with _notebook_env(os.cpu_count() or 1):
            bar.phase(f"{study.notebook} notebook", key="notebook")
            source = notebook_path(study.notebook)
            nb = execute_notebook(source, ctx.out / source.name, {**study.params(ctx), "figures_dir": str(ctx.figures)},
                                  cwd=ctx.out)
            bar.done(WORK["notebook"], "rendering HTML")
            executed = ctx.state.setdefault("executed", [])
            executed.append(nb)
            ctx.state["html"] = [render_html(path) for path in executed]
            bar.done(WORK["render"] * len(executed))
            if study.finish is not None:
                study.finish(res, ctx)
            bar.done(0.0, "done")
    ctx.state["timings"] = timings(ctx)  # once: the blocks (README's Time line) and timings.json say the same
    if write_block and study.page and study.blocks is not None:
        for tag, body in study.blocks(res, ctx).items():
            replace_readme_block(root / study.page, tag, body)
    if write_block and study.readme is not None:
        for tag, body in study.readme(res).items():
            replace_readme_block(root / README, tag, body)
    atomic_write_bytes(ctx.out / TIMINGS, (json.dumps(ctx.state["timings"], indent=1) + "\n").encode())
    return res


def get_study(name: str) -> Study:
    """The study declared in ``dynrcnn.report.studies.<name>`` (its module-level ``STUDY``)."""
    if not name.isidentifier():
        raise DynrcnnError(f"{name!r} is not a study name")
    try:
        module = importlib.import_module(f"dynrcnn.report.studies.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"dynrcnn.report.studies.{name}":
            raise
        raise DynrcnnError(f"no study {name!r}: declare one in dynrcnn/report/studies/{name}.py "
                           f"(choose one of {', '.join(study_names())})") from None
    return module.STUDY


def study_names() -> list[str]:
    """The studies declared in :mod:`dynrcnn.report.studies` (one module each)."""
    import pkgutil

    from dynrcnn.report import studies

    return sorted(m.name for m in pkgutil.iter_modules(studies.__path__))


__all__ = ["Study", "StudyContext", "Work", "RESULTS", "TIMINGS", "timings", "timing_line", "attribution", "run_times", "training_text", "steps_work", "notebook_work", "notebook_path", "write_results", "run_study", "get_study",
           "study_names"]
