"""``dynrcnn mmdet`` (``make mmdet``): MMDetection trained side by side with the report of record.

1. Our side: the report of record's Faster R-CNN at RPN NMS 0.85 and Dynamic R-CNN runs
   (``runs/mini``, ``make report``), which must be complete; their pinned pretrained backbone file
   is the one MMDetection starts from.
2. MMDetection's side: for each method and seed, ``peer_mmdet/train.py`` in the peer environment
   (``.venv-mmdet``, one thread, ``--jobs`` runs at a time) writes a run directory under
   ``runs/mmdet``; ``dynrcnn convert --preset --method`` adds our config and checkpoint to it and
   ``dynrcnn eval`` scores it on both benchmarks, like our runs. Complete runs are reused.
3. ``notebooks/06_mmdet.ipynb`` (papermill) draws the figures and writes ``figures/mmdet/results.json``;
   the ``RESULTS-MMDET`` block of ``docs/mmdetection.md`` is written from that file.

MMDetection is never imported here: it runs in its own interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from dynrcnn.errors import DynrcnnError
from dynrcnn.report import peer
from dynrcnn.report.profiles import MINI_SEEDS, NOTEBOOK_DIR, REPO, get_profile
from dynrcnn.report.text import replace_readme_block
from dynrcnn.io import relative_path

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


def run_side_by_side(root=None, runs_root=None, peer_root=None, figures_dir=None, out=None, seeds=MINI_SEEDS,
                     overrides=(), jobs: int = 2, python=None, progress: bool = True, readme: bool = True) -> dict:
    """Train what is missing of MMDetection's side, evaluate it, run the notebook, write the
    block of :data:`DOC_PAGE`; returns the results (``figures/mmdet/results.json``)."""
    from dynrcnn.data.datasets import load_dataset
    from dynrcnn.io import file_sha256
    from dynrcnn.report.pipeline import (
        _notebook_env, execute_notebook, render_html, report_root, second_root)
    from dynrcnn.report.progress import WORK, ReportProgress, Tracked

    t0 = time.perf_counter()
    profile = get_profile("mini")  # the report of record
    root = report_root(root)
    runs_root = Path(runs_root or root / "runs" / profile.name).resolve()
    peer_root = Path(peer_root or root / "runs" / "mmdet").resolve()
    figures_dir = Path(figures_dir or root / "figures" / "mmdet").resolve()
    out = Path(out or root / "build" / "report-mmdet").resolve()
    python = Path(python or PEER_PYTHON)
    if not python.is_file():
        raise DynrcnnError(f"no MMDetection peer environment at {python}: run 'make mmdet-env'")
    ours, backbone, backbone_sha = _ours(runs_root, seeds)
    data_root = Path(ours[0].config.data_root).resolve()
    extra = [second_root(profile, data_root)] if profile.second_benchmark else []
    extra = [p for p in extra if p.is_dir()]
    num_classes = len(load_dataset(data_root, ours[0].config.val_split).class_names) + 1
    todo = [PeerRun(m, int(s), peer_root / peer.peer_run_name(m, s)) for s in seeds for m in peer.METHODS]
    backbone_sha = backbone_sha or file_sha256(backbone)
    for run in todo:
        _set_aside_if_stale(run, backbone_sha, peer_root)
    names = [p.name for p in extra]
    pending = [r for r in todo if not _complete(r, names)]
    print(f"MMDetection side by side: {len(todo) - len(pending)} of {len(todo)} runs complete in {peer_root}; "
          f"training {len(pending)}, {jobs} at a time, from {backbone}", file=sys.stderr)
    from dynrcnn.presets import build_config

    planned = build_config(profile.preset, "baseline", overrides=list(overrides)).max_iter
    # an MMDetection run's conversion and evaluation on every benchmark: about one of ours
    work = WORK["evaluate"] * len(pending) + WORK["notebook"] + WORK["render"]
    bar = ReportProgress("report[mmdet]", work, [Tracked(r.run_dir, planned) for r in pending], progress)

    def one(run: PeerRun) -> None:
        from dynrcnn.rundir.runs import TRAIN_DONE

        if not (run.run_dir / TRAIN_DONE).is_file():
            _train(run, data_root, backbone, overrides, python)
        _convert_and_evaluate(run, profile.preset, data_root, extra, num_classes, "cpu")
        bar.done(WORK["evaluate"])

    with bar:
        bar.phase(f"training {len(pending)} MMDetection runs and evaluating them, {jobs} at a time")
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            list(pool.map(one, pending))
        out.mkdir(parents=True, exist_ok=True)
        params = {"ours_root": str(runs_root), "peer_root": str(peer_root), "figures_dir": str(figures_dir)}
        with _notebook_env(max(1, (os.cpu_count() or 1))):
            bar.phase("MMDetection notebook")
            nb = execute_notebook(NOTEBOOK_DIR / "06_mmdet.ipynb", out / "06_mmdet.ipynb", params, cwd=out)
            render_html(nb)
            bar.done(WORK["notebook"] + WORK["render"], "done")
    res = json.loads((figures_dir / "results.json").read_text())
    res["wall_time_sec"] = time.perf_counter() - t0
    if readme:
        page = root / DOC_PAGE  # its images are linked relative to the page's folder
        body = peer.readme_body(res, Path(os.path.relpath(figures_dir, page.parent)).as_posix(), "make mmdet")
        body += (f"\nThe section's notebook is `{relative_path(out / '06_mmdet.html', root)}`; this run took "
                 f"{res['wall_time_sec'] / 60:.1f} min.\n")
        replace_readme_block(page, README_TAG, body)
    return res


__all__ = ["run_side_by_side", "README_TAG", "DOC_PAGE", "PEER_PYTHON"]
