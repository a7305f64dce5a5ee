"""The notebooks: static checks, and the whole ``smoke`` profile executed once with papermill.

The end-to-end test is marked ``slow`` but runs by default (``make test``): it is the CI check
that every notebook runs top to bottom and that the report is assembled.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import nbformat
import pytest

from dynrcnn import reference, report
from dynrcnn.rundir.integrity import train_action
from dynrcnn.presets import build_config
from dynrcnn.rundir.runs import find_runs

SOURCES = sorted(report.NOTEBOOK_DIR.glob("*.ipynb"))


def test_all_notebooks_present():
    assert [p.stem for p in SOURCES] == list(report.NOTEBOOKS)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_source_notebook_is_clean(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert len(code) < 15
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    for c in code:
        assert c.outputs == [] and c.execution_count is None, "notebooks are stored without outputs"
    assert nb.cells[0].cell_type == "markdown"


def write_notebook(path, parameters: str, *cells: str):
    """A python3 notebook at ``path``: a tagged ``parameters`` cell, then ``cells``."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]}),
                                         *(nbformat.v4.new_code_cell(c) for c in cells)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_failing_cell_names_notebook_and_cell(tmp_path):
    src = write_notebook(tmp_path / "broken.ipynb", "x = 1", "raise ValueError('boom in cell')")
    out = tmp_path / "out" / "broken.ipynb"
    out.parent.mkdir()
    with pytest.raises(report.ReportError) as e:
        report.execute_notebook(src, out, {"x": 2})
    msg = str(e.value)
    assert "broken.ipynb" in msg and "ValueError: boom in cell" in msg and re.search(r"cell \d+", msg)
    assert out.is_file()  # the partial executed notebook is kept


def test_kernels_talk_over_private_unix_sockets(tmp_path):
    """No TCP port for a kernel (a port taken between its choice and the kernel's bind hung a
    smoke report for 60 s): the channels are Unix sockets in a folder of this notebook's own,
    removed when it ends."""
    import tempfile

    from dynrcnn.report.pipeline import MAX_SOCKET_PREFIX, kernel_config

    if "KernelManager" not in kernel_config(Path(tempfile.gettempdir()) / "dynrcnn-kernel-abcdefgh"):
        pytest.skip("TCP by design here: Windows, or a temp folder too deep for a socket's name")
    # a temp folder too deep for a socket's name keeps TCP rather than failing every kernel
    assert kernel_config(Path("/tmp/k"))["KernelManager"]["transport"] == "ipc"
    assert "KernelManager" not in kernel_config(Path("/" + "d" * MAX_SOCKET_PREFIX))
    src = write_notebook(tmp_path / "where.ipynb", "x = 1", "from ipykernel import get_connection_info\n"
                         "info = get_connection_info(unpack=True)\nprint(info['transport'], info['ip'])")
    out = tmp_path / "out.ipynb"
    report.execute_notebook(src, out, {"x": 2})
    transport, ip = nbformat.read(out, as_version=4).cells[-1].outputs[0]["text"].split()
    assert transport == "ipc" and Path(ip).parent.name.startswith("dynrcnn-kernel-")
    assert not Path(ip).parent.exists()


def test_a_notebook_runs_in_its_folder_and_the_process_stays_where_it_was(tmp_path):
    """The kernel works in ``cwd``, and this process's working directory does not move while the
    notebook runs (papermill's own ``cwd=`` moves it; in the report's threads that left the
    caller in a report folder)."""
    import os
    import threading
    import time

    src = write_notebook(tmp_path / "cwd.ipynb", "pause = 0", "import os, time\ntime.sleep(pause)\nprint(os.getcwd())")
    out, work = tmp_path / "out" / "cwd.ipynb", tmp_path / "work"
    out.parent.mkdir()
    work.mkdir()
    before = os.getcwd()
    runner = threading.Thread(target=report.execute_notebook, args=(src, out, {"pause": 3}), kwargs={"cwd": work})
    runner.start()
    seen = set()
    while runner.is_alive():
        seen.add(os.getcwd())
        time.sleep(0.05)
    runner.join()
    assert seen == {before} and os.getcwd() == before
    assert nbformat.read(out, as_version=4).cells[-1].outputs[0]["text"].strip() == str(work.resolve())


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    base = tmp_path_factory.mktemp("smoke")
    result = report.run_pipeline("smoke", out=base / "report", runs_root=base / "runs", data_root=base / "data",
                                 progress=False)
    return result


@pytest.mark.slow
def test_smoke_every_notebook_executed(smoke):
    names = {p.stem for p in smoke.executed}
    runs = [s.name for s in report.get_profile("smoke").runs]
    assert names == {"01_data", "02_method", "05_results", *(f"train_{r}" for r in runs),
                     *(f"evaluate_{r}" for r in runs)}
    for p in smoke.executed:
        nb = nbformat.read(p, as_version=4)
        assert nb.metadata["papermill"]["duration"] > 0
        for c in nb.cells:
            if c.cell_type == "code":
                assert c.execution_count is not None
                assert not [o for o in c.outputs if o.output_type == "error"], (p.name, c.source[:80])
                streams = "".join(o.get("text", "") for o in c.outputs if o.output_type == "stream")
                # no warning box on a rendered page (TqdmWarning, numpy's empty-slice warnings, ...)
                assert "Warning" not in streams and "IProgress" not in streams, (p.name, c.source[:80])
    assert set(smoke.durations) == names


@pytest.mark.slow
def test_smoke_report_says_where_its_time_went(smoke):
    from dynrcnn.report.study import MAIN_PHASES, TIMINGS, timing_line

    t = json.loads((smoke.out / TIMINGS).read_text())
    runs = len(report.get_profile("smoke").runs)
    assert t["runs_trained"] == runs + 1  # every fine-tune and the backbone's pretraining: nothing was reused
    assert list(t["phases_sec"])[:5] == ["planning", *MAIN_PHASES]  # in the order they ran
    assert abs(sum(t["phases_sec"].values()) - t["wall_time_sec"]) < 1.0  # the phases cover the invocation
    assert t["phases_sec"]["training and evaluation"] > t["phases_sec"]["bootstrap"] > 0
    line = timing_line(t, "dynrcnn report --profile smoke")
    assert f"{t['wall_time_sec'] / 60:.0f} min on " in line and f"{runs + 1} runs trained in it" in line


@pytest.mark.slow
def test_smoke_index_links_every_page(smoke):
    index = smoke.index.read_text()
    for p in smoke.executed:
        html = p.with_suffix(".html")
        assert html.is_file() and html.stat().st_size > 10_000
        assert f'href="{html.name}"' in index
    assert index.count("data:image/png;base64,") >= 2  # key figures embedded
    assert "miniature benchmark (not COCO)" in index and 'class="badge ' in index and "<summary>why</summary>" in index


@pytest.mark.slow
def test_smoke_figures_written(smoke):
    for name in ("trend", "losses", "ap_vs_iou", "smooth_l1", "proposal_iou", "stats_to_threshold",
                 "data_samples", "detections_dynamic", "detections_compare", "tight_share"):
        path = smoke.figures_dir / f"{name}.png"
        assert path.is_file() and path.stat().st_size > 5000, path


@pytest.mark.slow
def test_smoke_runs_and_tables(smoke):
    runs = find_runs(smoke.runs_root)
    assert sorted(r.config.method for r in runs) == ["baseline", "dynamic"]
    for r in runs:
        ev = json.loads((r.path / "eval.json").read_text())
        for k in ("AP", "AP50", "AP75", "AP90"):
            assert math.isfinite(ev[k]) and 0 <= ev[k] <= 100
        assert len(ev["AP_per_iou"]) == 10 and ev["AP90"] == ev["AP_per_iou"][8]
        assert (r.path / "train_done.json").is_file()
    dyn = next(r for r in runs if r.config.method == "dynamic")
    assert dyn.stats is not None and dyn.proposal_ious
    claims = report.claims_table(runs)
    assert len(claims) >= len(reference.CLAIM_KEYS) and claims["verdict"].map(bool).all()
    assert (claims["scale"] == "miniature benchmark (not COCO)").all()
    ab = report.ablation_table(runs)
    assert list(ab["configuration"]) == ["baseline", "DLA + DSL"] and ab[["AP", "AP90"]].notna().all().all()
    cost = report.compute_table(runs, smoke.durations)
    assert cost["train notebook (min)"].notna().all()


@pytest.mark.slow
def test_smoke_reuses_complete_runs(smoke):
    nb = nbformat.read(smoke.out / "train_dynamic.ipynb", as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "run_dir" in injected[0].source
    # the same config again is reused, not retrained
    run = find_runs(smoke.runs_root)
    dyn = next(r for r in run if r.config.method == "dynamic")
    p = report.get_profile("smoke")
    spec = next(s for s in p.runs if s.method == "dynamic")
    cfg = build_config(p.preset, spec.method, seed=spec.seed, data_root=dyn.config.data_root,
                       overrides=p.run_overrides(spec))
    # the pipeline pinned the pretrained backbone (file and checksum) into every run's config
    pinned = dyn.config.model
    assert "model.backbone_weights=pretrained:mini_pretrain_smoke" in p.run_overrides(spec)
    assert pinned.backbone_weights.endswith(".pth") and len(pinned.backbone_sha256) == 64
    cfg.model.backbone_weights, cfg.model.backbone_sha256 = pinned.backbone_weights, pinned.backbone_sha256
    assert train_action(dyn.path, cfg)[0] == "reuse"


@pytest.mark.slow
def test_train_notebook_runs_with_other_parameters(smoke, tmp_path, monkeypatch):
    """``papermill notebooks/03_train.ipynb out.ipynb -p method dla ...`` from another folder."""
    monkeypatch.chdir(tmp_path)
    data_root = smoke.runs_root.parent / "data"
    params = {"profile": "smoke", "preset": "mini_smoke", "method": "dla", "data_root": str(data_root),
              "run_dir": str(tmp_path / "dla"), "num_threads": 1,
              "overrides": ["max_iter=6", "dynamic.interval=3", "log_period=3", "checkpoint_period=6",
                            "eval_at_end=false"]}
    report.execute_notebook(report.NOTEBOOK_DIR / "03_train.ipynb", tmp_path / "out.ipynb", params)
    cfg = json.loads((tmp_path / "dla" / "config.json").read_text())
    assert cfg["method"] == "dla" and cfg["max_iter"] == 6
    assert (tmp_path / "dla" / "train_done.json").is_file()


def test_notebook_paths_are_relative_to_the_repository(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert report.repo_path("data/mini") == report.REPO / "data" / "mini"
    assert report.repo_path(tmp_path / "x") == tmp_path / "x"
    assert report.default_run_dir("mini", "dla") == report.REPO / "runs" / "mini" / "dla"
    assert report.default_run_dir("mini", "dynamic", 2) == report.REPO / "runs" / "mini" / "dynamic_seed2"


@pytest.mark.slow
def test_smoke_second_benchmark_pretrained_backbone_and_results(smoke):
    runs = find_runs(smoke.runs_root)
    assert runs and all(r.eval_names == ["data-seed2"] for r in runs)  # every run evaluated on both benchmarks
    assert all(r.eval_on("data-seed2")["num_images"] == 12 for r in runs)
    shas = {r.config.model.backbone_sha256 for r in runs}
    assert len(shas) == 1 and len(shas.pop()) == 64  # one pretrained backbone, pinned in every run
    res = json.loads((smoke.figures_dir / "results.json").read_text())
    assert res["benchmarks"] == ["own", "data-seed2"]
    assert {c["status"] for c in res["claims"]} <= {"reproduced", "contradicted", "inconclusive", "not-testable",
                                                   "context"}
    assert any(c["benchmark"] == "data-seed2" for c in res["comparisons"])


def test_notebook_defaults_are_the_report_of_record():
    """Each notebook opened as it is (Jupyter, papermill without -p) runs what ``make report``
    runs: its parameters' defaults are the ``mini`` profile's plan, but for the per-run ones."""
    import papermill as pm

    from dynrcnn.report.pipeline import plan

    per_run = {"method", "run_dir", "num_threads"}  # which run a notebook shows, and its thread count
    per_run_by_notebook = {"04_evaluate": {"data_root"}}  # "" = the run's own data
    root = report.REPO
    steps = plan(report.get_profile("mini"), root / "build" / "report", root / "runs" / "mini", root / "data" / "mini",
                 "cpu", root / "figures", False)
    checked = set()
    for step in steps:
        if step.notebook in checked:
            continue
        checked.add(step.notebook)
        defaults = {k: v["default"] for k, v in pm.inspect_notebook(str(report.NOTEBOOK_DIR / f"{step.notebook}.ipynb")).items()}
        for key, value in step.params.items():
            if key in per_run | per_run_by_notebook.get(step.notebook, set()):
                continue
            assert key in defaults, (step.notebook, key)
            default = eval(defaults[key])  # a literal of the parameters cell
            if key.endswith(("_root", "_dir", "_roots")) and value:
                as_path = lambda v: [report.repo_path(x).resolve() for x in v] if isinstance(v, list) else report.repo_path(v).resolve()
                default, value = as_path(default), as_path(value)
            assert default == value, (step.notebook, key, default, value)
    assert checked == {"01_data", "02_method", "03_train", "04_evaluate", "05_results"}


def _hashes(root) -> dict:
    """SHA-256 of every file of every run under ``root`` (the AP-sample cache left out)."""
    from dynrcnn.io import file_sha256

    return {str(p.relative_to(root)): file_sha256(p) for p in sorted(root.rglob("*"))
            if p.is_file() and ".cache" not in p.parts}


@pytest.mark.slow
def test_a_second_report_leaves_every_finished_run_untouched(smoke):
    """Reuse opens finished runs for reading only: a second ``dynrcnn report`` on the same runs
    rewrites no file of theirs (env.json, logs, checkpoints, evaluations)."""
    before = _hashes(smoke.runs_root)
    assert any(k.endswith("env.json") for k in before) and any(k.endswith("last.pth") for k in before)
    base = smoke.runs_root.parent
    report.run_pipeline("smoke", out=base / "report-again", runs_root=smoke.runs_root, data_root=base / "data",
                        progress=False)
    assert _hashes(smoke.runs_root) == before


KILL_SCRIPT = """
import dataclasses, sys
from dynrcnn.report import get_profile, run_pipeline
base, runs = sys.argv[1], sys.argv[2]
smoke = get_profile("smoke")  # a checkpoint every 10 iterations, so a kill leaves one to resume from
profile = dataclasses.replace(smoke, overrides=tuple(o for o in smoke.overrides if not o.startswith("checkpoint_period"))
                              + ("checkpoint_period=10",))
run_pipeline(profile, out=base + "/report-killed", runs_root=runs, data_root=base + "/data", progress=False)
"""


@pytest.mark.slow
def test_a_report_killed_during_training_finishes_with_the_same_numbers(smoke, tmp_path):
    """SIGKILL the whole report (its kernels too) once a run has a checkpoint, run it again: it
    resumes the partial runs and ends with the same per-run metrics, comparisons and claims as the
    uninterrupted report (timings aside)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    base, runs = smoke.runs_root.parent, tmp_path / "runs"
    cmd = [sys.executable, "-c", KILL_SCRIPT, str(base), str(runs)]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not list(runs.glob("*/checkpoints/iter_*.pth")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the report ended before any checkpoint: nothing was killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not all((r / "train_done.json").is_file() for r in runs.glob("*") if r.name != ".cache"), \
        "killed after training ended"
    again = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert again.returncode == 0, f"the second report failed after the kill:\n{again.stderr[-3000:]}"
    killed = json.loads((base / "report-killed" / "figures" / "results.json").read_text())
    whole = json.loads((smoke.figures_dir / "results.json").read_text())

    def numbers(res):
        per_run = {r["run"]: r["metrics"] for c in res["configurations"] for r in c["runs"]}
        comps = [(c["comparison"], c["benchmark"], {m: (v["estimate"], v["low"], v["high"]) for m, v in c["metrics"].items()})
                 for c in res["comparisons"]]
        claims = {c["key"]: c["status"] for c in res["claims"] if c["key"] != "paper_overhead"}  # timing
        return per_run, comps, claims

    assert numbers(killed) == numbers(whole)
    resumed = [json.loads(p.read_text()) for p in runs.glob("*/env.json")]
    assert any(e.get("resumes") for e in resumed)  # at least one run was resumed, and says so
