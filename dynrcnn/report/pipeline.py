"""The papermill mechanics of the studies (:mod:`dynrcnn.report.study`): planning the report's
steps, executing and rendering notebooks, running steps in parallel, the pretrained backbone.

For ``dynrcnn report --profile smoke|mini|coco`` (:func:`dynrcnn.report.studies.record.run_pipeline`)
it runs the notebooks in ``notebooks/`` in order: ``01_data`` -> one ``03_train`` per run of
the profile (up to ``--jobs`` in parallel, one thread each), each followed by that run's
``04_evaluate`` in the same queue -> every run's bootstrap samples (:mod:`.intervals`, ``--jobs``
processes) -> ``02_method`` -> ``05_results``; then renders every executed notebook to HTML, writes
``index.html`` (:mod:`.index`) and, for profiles that say so, README's results block
(:mod:`.text`).
"""

from __future__ import annotations

import os
import tempfile
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from dynrcnn.errors import DynrcnnError
from dynrcnn.report.evidence import Evidence
from dynrcnn.report.profiles import NOTEBOOK_DIR, REPO, Profile, param_path, repo_path, step_output
from dynrcnn.report.progress import WORK, ReportProgress, Tracked

STEP_KINDS = ("data", "train", "evaluate", "method", "results")
# the kernels log only errors (ipykernel's start-up warnings flooded the terminal with a line per notebook)
KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=ERROR"]
# the longest socket path prefix an ipc kernel gets: jupyter_client appends "-<n>" per channel
MAX_SOCKET_PREFIX = 96


def kernel_config(folder: Path):
    """A kernel whose channels are Unix sockets in ``folder`` (private to one notebook), not
    TCP ports. jupyter_client picks free ports, closes them and lets the kernel bind them later;
    a port taken in between (by a kernel started beside it, by any outgoing connection) fails
    the notebook before its first cell: the kernel dies, or, when it is the output channel's
    port, stays alive and never answers, and papermill gives up after 60 s ("Kernel didn't
    respond"). Two notebooks started side by side did the latter in a smoke report. TCP stays
    where ipc cannot serve: Windows (zmq has no ``ipc://`` there) and a temp folder whose path
    leaves no room for a socket's name (at most 104 bytes on macOS, 108 on Linux)."""
    from traitlets.config import Config

    prefix = str(Path(folder) / "kernel")
    if os.name == "nt" or len(os.fsencode(prefix)) > MAX_SOCKET_PREFIX:
        return Config()
    return Config({"KernelManager": {"transport": "ipc", "ip": prefix}})


class ReportError(DynrcnnError):
    """A notebook of the pipeline failed (message names the notebook and the cell)."""


@dataclass
class Step:
    kind: str  # one of STEP_KINDS
    notebook: str  # source notebook stem
    output: str  # executed notebook stem in OUT
    params: dict
    title: str
    work: float = 0.0  # its share of the report's bar (:func:`step_work`)


@dataclass
class PipelineResult:
    out: Path
    index: Path
    executed: list[Path] = field(default_factory=list)
    html: list[Path] = field(default_factory=list)
    figures_dir: Path | None = None
    runs_root: Path | None = None
    durations: dict[str, float] = field(default_factory=dict)
    wall_time_sec: float = 0.0
    evidence: Evidence | None = None  # the report's runs and what they show, built once the notebooks ran


def _abs(p) -> str:
    """A path parameter of a notebook: relative to the checkout when inside it (:func:`param_path`)."""
    return param_path(Path(p).expanduser().resolve())


def published_root(runs_root) -> Path:
    """Where converted published checkpoints go: beside the report's runs, never among them
    (they must not enter the report's own comparisons)."""
    runs_root = Path(runs_root)
    return runs_root.parent / f"{runs_root.name}_published"


def convert_published(files, runs_root, num_classes: int = 81) -> list[Path]:
    """Convert each downloaded MMDetection checkpoint into a run directory (kept when it is
    already there and was converted from the same file); returns the run directories."""
    if not files:
        return []
    from dynrcnn.checkpoint.convert import convert
    from dynrcnn.rundir.runs import PROVENANCE
    from dynrcnn.io import read_json
    from dynrcnn.io import file_sha256

    out = []
    for f in map(Path, files):
        run_dir = published_root(runs_root) / f.stem
        prov = read_json(run_dir / PROVENANCE) or {}
        if prov.get("sha256") != file_sha256(f):
            convert(f, run_dir, num_classes=num_classes)
        out.append(run_dir)
    return out


def plan(profile: Profile, out, runs_root, data_root, device: str, figures_dir, force: bool,
         seed: int | None = None, published=()) -> list[Step]:
    """The pipeline's steps, in order, with every notebook's parameters (``published``: converted
    run directories of published checkpoints, evaluated like the report's runs)."""
    gen = profile.generate
    figs = _abs(figures_dir)
    run_figs = _abs(Path(out) / "figures")  # each run's own figures stay with the executed notebooks, out of figures/
    steps = [Step("data", "01_data", "01_data", {
        "profile": profile.name, "data_root": _abs(data_root), "generate": gen is not None,
        "n_train": gen[0] if gen else 0, "n_val": gen[1] if gen else 0, "image_size": profile.image_size if gen else 0,
        "seed": 0, "figures_dir": figs,
        "train_split": "train" if gen else "train2017", "val_split": "val" if gen else "val2017",
        "second_root": _abs(second_root(profile, data_root)) if profile.second_benchmark else "",
        "second_seed": profile.second_benchmark[0] if profile.second_benchmark else 0,
        "second_n_val": profile.second_benchmark[1] if profile.second_benchmark else 0,
    }, "data")]
    for spec in profile.runs:
        steps.append(Step("train", "03_train", step_output("train", spec.name), {
            "profile": profile.name, "preset": profile.preset, "method": spec.method,
            "seed": spec.seed if seed is None else seed, "data_root": _abs(data_root),
            "run_dir": _abs(Path(runs_root) / spec.name), "pretrained_root": _abs(pretrained_root(data_root)),
            "device": device, "overrides": profile.run_overrides(spec), "convention": "", "force": bool(force), "num_threads": 1,
        }, f"train {spec.name}"))
    for spec in profile.runs:
        steps.append(Step("evaluate", "04_evaluate", step_output("evaluate", spec.name), {
            "run_dir": _abs(Path(runs_root) / spec.name), "data_root": _abs(data_root), "device": device,
            "force": False, "figures_dir": run_figs, "n_images": 3,
            "extra_data_roots": [_abs(second_root(profile, data_root))] if profile.second_benchmark else [],
        }, f"evaluate {spec.name}"))
    for run_dir in map(Path, published):
        steps.append(Step("evaluate", "04_evaluate", f"evaluate_published_{run_dir.name}", {
            "run_dir": _abs(run_dir), "data_root": _abs(data_root), "device": device, "force": False,
            "figures_dir": run_figs, "n_images": 3, "extra_data_roots": [],
        }, f"evaluate published {run_dir.name}"))
    dyn = [s for s in profile.runs if s.method == "dynamic"]
    steps.append(Step("method", "02_method", "02_method", {
        "run_dir": _abs(Path(runs_root) / (dyn[0].name if dyn else profile.runs[-1].name)), "figures_dir": figs,
    }, "method"))
    steps.append(Step("results", "05_results", "05_results", {
        "profile": profile.name, "runs_root": _abs(runs_root), "report_dir": _abs(out), "figures_dir": figs,
        "published_root": _abs(published_root(runs_root)) if published else "",
    }, "results"))
    return steps


def second_root(profile: Profile, data_root) -> Path:
    """Where the profile's second benchmark (another data seed, validation images only) lives:
    next to the main one, ``<data_root>-seed<N>``."""
    data_root = Path(data_root)
    return data_root.parent / f"{data_root.name}-seed{profile.second_benchmark[0]}"


def prepare_backbone(profile: Profile, data_root, device: str, bar: ReportProgress) -> list[str]:
    """Build (or find and check) the pretrained backbone the profile's preset starts from, using
    every core, before the runs start in parallel; return the ``--set`` overrides that pin the
    file and its SHA-256 in every run's config (nothing when the preset trains from scratch).
    A build is part of the report's bar: its iterations, and the drawing of its benchmark."""
    import torch

    from dynrcnn.presets import build_config, get_preset
    from dynrcnn.engine.pretrain import build_dir, ensure_pretrained, find_pretrained, pretrain_preset

    preset = pretrain_preset(build_config(profile.preset, "baseline", overrides=profile.overrides).model.backbone_weights)
    if preset is None:
        return []
    root = pretrained_root(data_root)
    if find_pretrained(preset, root) is None:
        bar.track([Tracked(build_dir(preset, root), get_preset(preset).max_iter, weight=WORK["pretrain_iteration"],
                           start=WORK["pretrain_data"])])
        bar.phase(f"pretraining the backbone ({preset})", key="pretraining")
    else:
        bar.phase(f"checking the pretrained backbone ({preset})", key="pretraining")
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        _, sha = ensure_pretrained(preset, root, device=device, progress=False, log=bar.write)
    finally:
        torch.set_num_threads(threads)
    return backbone_pin(preset, sha)


def pretrained_root(data_root) -> Path:
    """Where a report builds and finds its pretrained backbone: beside its data,
    ``<data root>/../pretrained`` (``data/pretrained`` for the checkout's ``data/mini``)."""
    from dynrcnn.presets import PRETRAINED_ROOT

    return Path(data_root).parent / Path(PRETRAINED_ROOT).name


def backbone_pin(preset: str, sha: str) -> list[str]:
    """The overrides that make every run start from the same backbone: by name
    (``pretrained:<preset>``, which the training notebook looks up in its ``pretrained_root``,
    the folder the pipeline built it in), so a rendered parameters cell names no machine path,
    and by SHA-256 (:func:`dynrcnn.engine.pretrain.resolve_backbone` refuses another file)."""
    from dynrcnn.config import PRETRAINED_PREFIX

    return [f"model.backbone_weights={PRETRAINED_PREFIX}{preset}", f"model.backbone_sha256={sha}"]


def _planned_iterations(params: dict) -> int:
    """``max_iter`` of the run a train step will write (for the live ETA before it starts)."""
    from dynrcnn.presets import build_config

    return build_config(params["preset"], params["method"], seed=params["seed"],
                        overrides=params["overrides"]).max_iter


def step_work(step: Step) -> float:
    """What ``step`` adds to the report's bar beside training iterations (:data:`WORK`): an
    evaluation with results already on disk, or a data step whose benchmarks exist, costs only
    its kernel; a training step counts through its run's iterations."""
    p = step.params
    if step.kind == "train":
        return 0.0
    if step.kind == "evaluate":
        from dynrcnn.evaluation.coco_eval import missing_evaluations

        if not p["force"] and not missing_evaluations(repo_path(p["run_dir"]), repo_path(p["data_root"]),
                                                      [repo_path(e) for e in p["extra_data_roots"]]):
            return WORK["kernel"]
        return WORK["evaluate"] + WORK["bootstrap"]
    if step.kind == "data":
        from dynrcnn.data.datasets import annotation_file

        roots = [p["data_root"], p["second_root"]] if p["second_root"] else [p["data_root"]]
        there = all(annotation_file(repo_path(r), p["val_split"]).is_file() for r in roots)
        return WORK["kernel"] if there else WORK["data"]
    return WORK[step.kind]


def report_progress(desc: str, steps: list[Step], progress: bool, extra_work: float = 0.0) -> ReportProgress:
    """The one bar of a report made of ``steps``: each training run's iterations (runs already
    trained are left out: a reused run is no work and must not speed up the ETA), every other
    step's :func:`step_work`, its HTML page, and ``extra_work``."""
    for s in steps:
        s.work = step_work(s)
    trains = [Tracked(repo_path(s.params["run_dir"]), _planned_iterations(s.params)) for s in steps if s.kind == "train"]
    return ReportProgress(desc, sum(s.work for s in steps) + WORK["render"] * len(steps) + extra_work,
                          trains, progress)


def execute_notebook(source: Path, output: Path, params: dict, cwd=None) -> Path:
    """Run one notebook with papermill, its kernel in ``cwd`` (default: ``output``'s folder); on a
    failing cell raise :class:`ReportError` naming the notebook and the cell (the partial
    executed notebook is kept at ``output``).

    The kernel is started in ``cwd`` (nbclient's ``resources`` path), not through papermill's
    ``cwd=``, which changes the working directory of this whole process while the notebook runs:
    with notebooks run side by side in threads (:func:`_run_parallel`) one thread's restore
    undid another's, and the report left its caller in a report folder."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    source, output = Path(source).resolve(), Path(output).resolve()
    try:
        with tempfile.TemporaryDirectory(prefix="dynrcnn-kernel-") as sockets:
            pm.execute_notebook(str(source), str(output), parameters=params, kernel_name="python3",
                                progress_bar=False, log_output=False, extra_arguments=KERNEL_ARGUMENTS,
                                config=kernel_config(Path(sockets)),
                                resources={"metadata": {"path": str(Path(cwd or output.parent).resolve())}})
    except PapermillExecutionError as e:
        first = str(e.evalue).splitlines()[0] if e.evalue else ""
        raise ReportError(
            f"notebook {source.name} failed in cell {e.cell_index} of the executed notebook "
            f"(execution count {e.exec_count}): {e.ename}: {first}\n"
            f"  partial executed notebook kept at {output}\n"
            f"  failing cell source:\n    " + "\n    ".join(str(e.source).splitlines()[:12])
        ) from None
    return output


# a rendered page fits its window: long code lines (papermill's parameters cell) wrap, wide
# tables (the environment, the runs) scroll inside their own box instead of running off the page
PAGE_STYLE = (".jp-InputArea-editor pre, .highlight pre { white-space: pre-wrap; overflow-wrap: anywhere; }\n"
              ".jp-RenderedHTMLCommon table { display: block; max-width: 100%; overflow-x: auto; }")


def render_html(notebook: Path) -> Path:
    """Render an executed notebook to ``<same name>.html`` next to it (images embedded, the
    page's own :data:`PAGE_STYLE`)."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(notebook, as_version=4)
    body, _ = HTMLExporter(embed_images=True).from_notebook_node(nb)
    body = body.replace("</head>", f"<style>{PAGE_STYLE}</style>\n</head>", 1)
    out = notebook.with_suffix(".html")
    out.write_text(body, encoding="utf-8")
    return out


@contextmanager
def _notebook_env(threads: int):
    """Thread counts, a headless matplotlib and this checkout on the kernels' path; restored after."""
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MPLBACKEND", "PYTHONPATH")
    saved = {k: os.environ.get(k) for k in names}
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    os.environ["MPLBACKEND"] = "Agg"
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), saved["PYTHONPATH"]]))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def report_root(root=None) -> Path:
    """Where the report's default outputs go (``build/report``, ``runs/``, ``figures/``, the
    generated data, README's results block): ``root`` when given, else this checkout when the
    working directory is inside it, else the working directory."""
    if root is not None:
        return Path(root).expanduser().resolve()
    cwd = Path.cwd().resolve()
    return REPO if cwd == REPO or REPO in cwd.parents else cwd


def _resolve_data_root(profile: Profile, data_root, root: Path = REPO) -> Path:
    if data_root is None:
        if profile.data_root is None:
            raise DynrcnnError(f"profile {profile.name!r} needs --data-root (a COCO 2017 folder with "
                               "annotations/instances_{train2017,val2017}.json and the image folders)")
        data_root = root / profile.data_root
    data_root = Path(data_root).resolve()
    if profile.generate is None and not (data_root / "annotations").is_dir():
        raise DynrcnnError(f"{data_root} has no annotations/ folder: not a COCO-format dataset")
    return data_root


def _run_parallel(run_step, group: list[Step], jobs: int, bar, executed: list[Path],
                  after: dict[str, Step] | None = None) -> None:
    """Run ``group`` ``jobs`` at a time, in order; when a step finishes, the step ``after`` names
    for its run directory (its evaluation) goes to the front of the queue, so each run is
    evaluated (on every benchmark) as soon as it is trained, not after the last training: a
    study stopped early has its finished runs evaluated, and a core freed at the end of training
    evaluates instead of idling. The first failure stops starting new steps."""
    after = dict(after or {})
    queue = deque(group)
    error = None
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        pending: dict = {}

        def fill() -> None:
            while queue and len(pending) < jobs and error is None:
                step = queue.popleft()
                pending[pool.submit(run_step, step)] = step

        fill()
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                step = pending.pop(f)
                try:
                    executed.append(f.result())
                except ReportError as e:
                    error = error or e
                bar.done(step.work)
                follow = after.pop(step.params.get("run_dir"), None) if step.kind == "train" else None
                if follow is not None and error is None:
                    queue.appendleft(follow)
            fill()
    if error is not None:
        raise error


def _run_steps(steps: list[Step], out: Path, jobs: int, bar, executed: list[Path]) -> None:
    def run_step(step: Step) -> Path:
        output = out / f"{step.output}.ipynb"
        return execute_notebook(NOTEBOOK_DIR / f"{step.notebook}.ipynb", output, step.params, cwd=out)

    def sequential(group: list[Step]) -> None:
        for s in group:
            bar.phase(s.title, key=s.kind)
            executed.append(run_step(s))
            bar.done(s.work)

    of = {kind: [s for s in steps if s.kind == kind] for kind in STEP_KINDS}
    sequential(of["data"])
    trains, evals = of["train"], of["evaluate"]
    if jobs > 1 and len(trains) + len(evals) > 1:
        # training and evaluation in one queue: each run's evaluation follows its training
        trained = {s.params["run_dir"] for s in trains}
        after = {s.params["run_dir"]: s for s in evals if s.params["run_dir"] in trained}
        first = trains + [s for s in evals if s.params["run_dir"] not in trained]
        bar.phase(f"training {len(trains)} runs and evaluating them, {jobs} at a time", key="training and evaluation")
        _run_parallel(run_step, first, jobs, bar, executed, after=after)
    else:
        sequential(trains + evals)
    if evals:
        _precompute_intervals(evals, jobs, bar)
    sequential(of["method"] + of["results"])


def _precompute_intervals(group: list[Step], jobs: int, bar) -> None:
    """Every evaluated run's bootstrap AP samples, ``jobs`` at a time, cached for the results
    notebook and the index (:func:`dynrcnn.report.intervals.precompute`)."""
    from dynrcnn.report.intervals import precompute
    from dynrcnn.rundir.runs import load_run

    bar.phase(f"bootstrap samples of {len(group)} runs, {jobs} at a time", key="bootstrap")
    precompute([load_run(repo_path(s.params["run_dir"])) for s in group], jobs=jobs)


__all__ = ["ReportError", "Step", "PipelineResult", "plan", "execute_notebook", "render_html",
           "STEP_KINDS", "published_root", "convert_published"]
