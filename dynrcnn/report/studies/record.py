"""The report of record (``make report``: ``dynrcnn report --profile mini``) as a study.

Its work is the papermill pipeline of :mod:`dynrcnn.report.pipeline`: ``01_data`` -> the
profile's pretrained backbone -> one ``03_train`` then ``04_evaluate`` per run (``--jobs`` at a
time) -> every run's bootstrap samples -> ``02_method``. Its results are
:func:`dynrcnn.report.results.results` of the runs (``<figures>/results.json``), its notebook
``05_results`` shows them, :func:`_finish` writes ``index.html``, and README's ``RESULTS`` and
``RESULTS-HEADLINE`` blocks come from the same evidence. Every profile (smoke, mini, mini_quick,
coco) is this declaration with another profile (:func:`record_study`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from dynrcnn.report.evidence import Evidence
from dynrcnn.report.index import write_index
from dynrcnn.report.pipeline import PipelineResult, _resolve_data_root, convert_published, plan
from dynrcnn.report.profiles import Profile, get_profile
from dynrcnn.report.progress import WORK
from dynrcnn.report.results import results
from dynrcnn.report.study import README, Study, StudyContext, Work, steps_work, timing_line
from dynrcnn.report.tables import notebook_durations
from dynrcnn.report.text import readme_blocks
from dynrcnn.rundir.runs import find_runs

PAGE = README  # the page of the report of record's blocks


def _profile(ctx: StudyContext) -> Profile:
    return ctx.state["profile"]


def _work(ctx: StudyContext) -> Work:
    s = ctx.state
    profile = _profile(ctx)
    runs_root = Path(s.get("runs_root") or ctx.root / "runs" / profile.name).resolve()
    data_root = _resolve_data_root(profile, s.get("data_root"), ctx.root)
    for p in (runs_root, ctx.figures):
        p.mkdir(parents=True, exist_ok=True)
    published = convert_published(s.get("published", ()), runs_root)
    steps = plan(profile, ctx.out, runs_root, data_root, ctx.device, ctx.figures, s.get("force", False),
                 seed=s.get("seed"), published=published)
    body = [st for st in steps if st.kind != "results"]  # the results notebook is the study's notebook
    s.update(runs_root=runs_root, data_root=data_root, steps=steps, results_params=steps[-1].params)
    return steps_work(ctx, profile, data_root, body, extra_units=WORK["results"] + WORK["index"])


def _command(ctx: StudyContext) -> str:
    extra = ctx.state.get("extra_seeds", ())
    return f"dynrcnn report --profile {_profile(ctx).name}" + (
        f" --extra-seeds {' '.join(map(str, extra))}" if extra else "")


def _results(ctx: StudyContext) -> dict:
    ctx.state["evidence"] = evidence = Evidence(find_runs(ctx.state["runs_root"]))
    return results(evidence, _command(ctx))


def _params(ctx: StudyContext) -> dict:
    return {k: v for k, v in ctx.state["results_params"].items() if k != "figures_dir"}


def _finish(res: dict, ctx: StudyContext) -> None:
    """``index.html``, from the same evidence as ``results.json``."""
    s = ctx.state
    result = PipelineResult(out=ctx.out, index=ctx.out / "index.html", executed=s["executed"], html=s["html"],
                            figures_dir=ctx.figures, runs_root=s["runs_root"], durations=notebook_durations(ctx.out),
                            wall_time_sec=res["wall_time_sec"], evidence=s["evidence"])
    write_index(result, _profile(ctx), s["steps"])
    s["result"] = result


def _blocks(res: dict, ctx: StudyContext) -> dict:
    profile, s = _profile(ctx), ctx.state
    blocks = readme_blocks(ctx.root / PAGE, s["runs_root"], ctx.figures, _command(ctx), tag=profile.readme,
                           title=profile.readme_title, index=ctx.out / "index.html", evidence=s["evidence"])
    t = ctx.state["timings"]  # run_study's, the wall time up to the blocks
    if t["runs_trained"]:  # a report that only reused finished runs keeps the line of the one that trained them
        blocks[f"{profile.readme}-TIME"] = timing_line(t, _command(ctx))
    return blocks


def record_study(profile: str | Profile = "mini") -> Study:
    """The report of ``profile`` as a study (its README blocks only for profiles that name one)."""
    profile = get_profile(profile) if isinstance(profile, str) else profile
    return Study(profile.name, "05_results", profile.figures_dir, "build/report", _work, _results,
                 _params, page=PAGE if profile.readme else None, blocks=_blocks if profile.readme else None,
                 finish=_finish, command=f"dynrcnn report --profile {profile.name}")


STUDY = dataclasses.replace(record_study("mini"), name="record")


def run_pipeline(profile: str | Profile = "mini", out=None, runs_root=None, data_root=None,
                 device: str | None = None, jobs: int | None = None, force: bool = False,
                 figures_dir=None, progress: bool = True, seed: int | None = None,
                 extra_seeds=(), root=None, published=()) -> PipelineResult:
    """Run the whole report for ``profile`` (:func:`~dynrcnn.report.study.run_study` of
    :func:`record_study`); returns where it went. ``extra_seeds`` repeats the profile's runs with
    those seeds. ``published`` are downloaded MMDetection checkpoints (Faster / Dynamic R-CNN
    R50-FPN): each is converted into a run directory under ``<runs_root>_published`` and evaluated
    next to the report's own runs. Outputs not given explicitly go under ``root``
    (:func:`~dynrcnn.report.pipeline.report_root`)."""
    from dynrcnn.report.pipeline import report_root
    from dynrcnn.report.study import run_study

    profile = (get_profile(profile) if isinstance(profile, str) else profile).with_seeds(extra_seeds)
    device = device or profile.default_device
    jobs = max(1, int(jobs if jobs is not None else (2 if device == "cpu" else 1)))
    root = report_root(root)
    state = {"profile": profile, "runs_root": runs_root, "data_root": data_root, "force": force, "seed": seed,
             "extra_seeds": tuple(extra_seeds), "published": tuple(published)}
    run_study(record_study(profile), root=root, jobs=jobs, device=device, progress=progress, out=out,
              figures=figures_dir, state=state, log=lambda _: None)
    return state["result"]


__all__ = ["record_study", "run_pipeline"]
