"""``dynrcnn mmdet`` (``make mmdet``): MMDetection trained side by side with the report of record.

1. Our side: the report of record's Faster R-CNN at RPN NMS 0.85 and Dynamic R-CNN runs
   (``runs/mini``, ``make report``), which must be complete; their pinned pretrained backbone file
   is the one MMDetection starts from.
2. MMDetection's side: for each method and seed, ``peer_mmdet/train.py`` in the peer environment
   (``.venv-mmdet``, one thread, ``--jobs`` runs at a time) writes a run directory under
   ``runs/mmdet``; ``dynrcnn convert --preset --method`` adds our config and checkpoint to it and
   ``dynrcnn eval`` scores it on both benchmarks, like our runs. Complete runs are reused.
3. The package computes ``figures/mmdet/results.json`` (:func:`dynrcnn.report.peer.results`),
   ``notebooks/06_mmdet.ipynb`` (papermill) draws the figures and shows the tables, and the
   ``RESULTS-MMDET`` block of ``docs/mmdetection.md`` is written from that file. This module is
   the study's declaration (:data:`STUDY`); :func:`dynrcnn.report.study.run_study` runs it.

MMDetection is never imported here: it runs in its own interpreter.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from dynrcnn.errors import DynrcnnError
from dynrcnn.io import relative_path
from dynrcnn.report import peer
from dynrcnn.report.profiles import MINI_SEEDS, REPO, get_profile, param_path
from dynrcnn.report.study import Study, StudyContext, Work, attribution, run_study

RECORD = "mini"  # the profile of the report of record, whose runs MMDetection is trained beside

PEER_PYTHON = REPO / ".venv-mmdet" / "bin" / "python"
TRAIN_SCRIPT = REPO / "peer_mmdet" / "train.py"
README_TAG = "RESULTS-MMDET"
DOC_PAGE = "docs/mmdetection.md"  # the page whose README_TAG block this writes (under the report's root)
PEER_METHOD = {"baseline": "faster", "dynamic": "dynamic"}  # our method -> train.py's --method


@dataclass
class PeerRun:
    method: str
    seed: int
    run_dir: Path


def _ours(runs_root: Path, seeds) -> tuple[list, str, str]:
    """Our complete runs of the comparison, and the backbone file (path, SHA-256) they start from."""
    from dynrcnn.rundir.runs import find_runs, is_complete

    ours = [r for r in find_runs(runs_root) if is_complete(r.path)]
    groups = peer.Groups.build(ours, [])
    missing = [f"{m} seed {s}" for m in peer.METHODS for s in seeds if s not in groups.seeds("dynrcnn", m)]
    if missing:
        raise DynrcnnError(f"{runs_root} lacks complete runs of the report of record ({', '.join(missing)}); "
                           "run 'make report' first")
    model = groups[("dynrcnn", "dynamic")][0].config.model
    return ours, model.backbone_weights, model.backbone_sha256


def _complete(run: PeerRun, datasets: list[str]) -> bool:
    from dynrcnn.rundir import runs

    d = run.run_dir
    return all((d / f).is_file() for f in (runs.TRAIN_DONE, runs.CONFIG, runs.EVAL, peer.PEER_EVAL)) and all(
        runs.eval_file(d, name).is_file() for name in datasets)


def _set_aside_if_stale(run: PeerRun, backbone_sha256: str, peer_root: Path) -> None:
    """A peer run trained from another backbone than our runs start from (a rebuilt pretraining)
    is no longer side by side with them: move it, untouched, to ``stale/<its backbone's
    SHA-256[:12]>/`` under ``peer_root`` so that it is trained again from the current one."""
    from dynrcnn.rundir.runs import TRAIN_DONE
    from dynrcnn.io import read_json

    done = read_json(run.run_dir / TRAIN_DONE) or {}
    held = (done.get("backbone") or {}).get("sha256")
    if not held or held == backbone_sha256:
        return
    dest = peer_root / "stale" / held[:12] / run.run_dir.name
    if dest.exists():
        raise DynrcnnError(f"{run.run_dir} was trained from another backbone (SHA-256 {held[:12]}) and {dest} "
                           "already exists: move one of them away")
    dest.parent.mkdir(parents=True, exist_ok=True)
    run.run_dir.rename(dest)
    print(f"{run.run_dir.name}: trained from backbone {held[:12]}, ours now start from {backbone_sha256[:12]}; "
          f"moved to {dest}, training it again", file=sys.stderr)


def _train(run: PeerRun, data_root: Path, backbone: str, overrides, python: Path) -> None:
    cmd = [str(python), str(TRAIN_SCRIPT), "--method", PEER_METHOD[run.method], "--seed", str(run.seed),
           "--data-root", str(data_root), "--backbone", backbone, "--out", str(run.run_dir), "--threads", "1",
           *[a for o in overrides for a in ("--set", o)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    run.run_dir.mkdir(parents=True, exist_ok=True)
    with open(run.run_dir / "train.log", "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    if proc.returncode != 0:
        tail = (run.run_dir / "train.log").read_text().strip().splitlines()[-5:]
        raise DynrcnnError(f"MMDetection training of {run.run_dir.name} failed (exit {proc.returncode}); "
                           f"log {run.run_dir / 'train.log'}:\n  " + "\n  ".join(tail))


def _convert_and_evaluate(run: PeerRun, preset: str, data_root: Path, extra_roots: list[Path],
                          num_classes: int, device: str) -> None:
    from dynrcnn.checkpoint.convert import convert
    from dynrcnn.rundir.runs import last_checkpoint

    if not last_checkpoint(run.run_dir).is_file():
        convert(run.run_dir / "model_state.pth", run.run_dir, num_classes=num_classes, preset=preset,
                method=run.method, seed=run.seed, data_root=str(data_root))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for root in (None, *extra_roots):
        cmd = [sys.executable, "-m", "dynrcnn", "eval", str(run.run_dir), "--no-progress", "--device", device]
        if root is not None:
            cmd += ["--data-root", str(root)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
        if proc.returncode != 0:
            raise DynrcnnError(f"evaluating {run.run_dir.name} failed: {proc.stderr.strip()[-400:]}")


def _work(ctx: StudyContext, seeds=MINI_SEEDS, overrides=(), python=None) -> Work:
    from dynrcnn.data.datasets import load_dataset
    from dynrcnn.io import file_sha256
    from dynrcnn.presets import build_config
    from dynrcnn.report.pipeline import second_root
    from dynrcnn.report.progress import WORK, Tracked

    profile = get_profile(RECORD)
    runs_root = ctx.root / "runs" / profile.name
    peer_root = ctx.root / "runs" / "mmdet"
    python = Path(python or ctx.state.get("python") or PEER_PYTHON)
    if not python.is_file():
        raise DynrcnnError(f"no MMDetection peer environment at {python}: run 'make mmdet-env'")
    ours, backbone, backbone_sha = _ours(runs_root, seeds)
    data_root = Path(ours[0].config.data_root).resolve()
    extra = [p for p in ([second_root(profile, data_root)] if profile.second_benchmark else []) if p.is_dir()]
    num_classes = len(load_dataset(data_root, ours[0].config.val_split).class_names) + 1
    todo = [PeerRun(m, int(s), peer_root / peer.peer_run_name(m, s)) for s in seeds for m in peer.METHODS]
    backbone_sha = backbone_sha or file_sha256(backbone)
    for run in todo:
        _set_aside_if_stale(run, backbone_sha, peer_root)
    pending = [r for r in todo if not _complete(r, [p.name for p in extra])]
    ctx.state.update(ours_root=runs_root, peer_root=peer_root)
    overrides = list(ctx.state.get("overrides", overrides))
    planned = build_config(profile.preset, "baseline", overrides=overrides).max_iter

    def one(run: PeerRun, bar) -> None:
        from dynrcnn.rundir.runs import TRAIN_DONE

        if not (run.run_dir / TRAIN_DONE).is_file():
            _train(run, data_root, backbone, overrides, python)
        _convert_and_evaluate(run, profile.preset, data_root, extra, num_classes, "cpu")
        bar.done(WORK["evaluate"])

    def run(bar) -> None:
        bar.phase(f"training {len(pending)} MMDetection runs and evaluating them, {ctx.jobs} at a time")
        with ThreadPoolExecutor(max_workers=ctx.jobs) as pool:
            list(pool.map(lambda r: one(r, bar), pending))

    # an MMDetection run's conversion and evaluation on every benchmark: about one of ours
    return Work(run, WORK["evaluate"] * len(pending), [Tracked(r.run_dir, planned) for r in pending],
                f"{len(todo) - len(pending)} of {len(todo)} runs complete in {peer_root}; training {len(pending)}, "
                f"{ctx.jobs} at a time, from {backbone}")


def _groups(ctx: StudyContext):
    from dynrcnn.rundir.runs import find_runs

    return peer.Groups.build(find_runs(ctx.state["ours_root"]), find_runs(ctx.state["peer_root"]))


def _results(ctx: StudyContext) -> dict:
    from dynrcnn.report.intervals import extra_datasets

    groups = _groups(ctx)
    datasets = [None, *extra_datasets([r for v in groups.runs.values() for r in v])]
    from dynrcnn.report.results import environment_of

    res = peer.results(groups, datasets, peer.peer_versions(groups))
    res["environment"] = environment_of([r for (impl, _), v in groups.runs.items() if impl == "dynrcnn" for r in v])
    return res


def _params(ctx: StudyContext) -> dict:
    return {"ours_root": param_path(ctx.state["ours_root"]), "peer_root": param_path(ctx.state["peer_root"])}


def _block(res: dict, ctx: StudyContext) -> str:
    body = peer.readme_body(res, ctx.page_relative(ctx.figures, DOC_PAGE), "make mmdet")
    return body + (f"\nThe section's notebook is `{relative_path(ctx.out / '06_mmdet.html', ctx.root)}`; this run "
                   f"took {res['wall_time_sec'] / 60:.1f} min. {attribution(res)}\n")


STUDY = Study("mmdet", "06_mmdet", "figures/mmdet", "build/report-mmdet", _work, _results, _params,
              page=DOC_PAGE, blocks=lambda res, ctx: {README_TAG: _block(res, ctx)}, command="make mmdet")


def run_side_by_side(root=None, overrides=(), jobs: int = 2, python=None, progress: bool = True,
                     readme: bool = True) -> dict:
    """:func:`~dynrcnn.report.study.run_study` of :data:`STUDY` with MMDetection's ``--set``
    ``overrides`` and another peer interpreter when given; returns the results."""
    study = dataclasses.replace(STUDY, work=lambda ctx: _work(ctx, overrides=overrides, python=python))
    return run_study(study, root=root, jobs=jobs, progress=progress, write_block=readme)


__all__ = ["STUDY", "run_side_by_side", "README_TAG", "DOC_PAGE", "PEER_PYTHON"]
