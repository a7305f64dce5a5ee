"""The study runner (:mod:`dynrcnn.report.study`): a study is a declaration; adding one is one
declaration plus its notebook, and the runner writes results.json from the package."""

import json

import nbformat
import pytest

from dynrcnn.errors import DynrcnnError
from dynrcnn.report.study import RESULTS, Study, Work, get_study, run_study, study_names
from tests.test_engine import tiny_cfg, tiny_root  # noqa: F401  (tiny_root is a fixture)


def one_cell_notebook(path):
    """A section notebook: a parameters cell, and one cell that shows results.json."""
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('figures_dir = "figures/scratch"')
    params.metadata["tags"] = ["parameters"]
    show = nbformat.v4.new_code_cell("import json, pathlib\n"
                                     "res = json.loads((pathlib.Path(figures_dir) / 'results.json').read_text())\n"
                                     "print(sorted(res['final_threshold']))")
    nb.cells = [params, show]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_a_scratch_study_of_two_runs_is_one_declaration(tiny_root, tmp_path):  # noqa: F811
    """Declare two runs (baseline and Dynamic R-CNN), how to train them, what to compute and which
    notebook shows it; the runner does the rest: results.json, the executed notebook, its page, the
    page's block; a second run reuses the finished runs."""
    from dynrcnn.engine.trainer import train
    from dynrcnn.rundir.runs import TRAIN_DONE, find_runs

    runs = {m: tiny_cfg(tiny_root, method=m) for m in ("baseline", "dynamic")}

    def work(ctx):
        todo = [m for m in runs if not (ctx.root / "runs" / "scratch" / m / TRAIN_DONE).is_file()]
        return Work(lambda bar: [train(runs[m], ctx.root / "runs" / "scratch" / m, progress=False) for m in todo],
                    summary=f"{len(todo)} of {len(runs)} runs to train")

    def results(ctx):
        found = find_runs(ctx.root / "runs" / "scratch")
        return {"final_threshold": {r.config.method: float(r.dynamic["iou_threshold"].iloc[-1]) for r in found}}

    page = tmp_path / "docs" / "scratch.md"
    page.parent.mkdir()
    page.write_text("# Scratch\n<!-- SCRATCH:BEGIN -->\n<!-- SCRATCH:END -->\n")
    study = Study("scratch", str(one_cell_notebook(tmp_path / "scratch.ipynb")), "figures/scratch", "build/scratch",
                  work, results, lambda ctx: {}, page="docs/scratch.md",
                  blocks=lambda res, ctx: {"SCRATCH": f"thresholds: {res['final_threshold']}"})
    res = run_study(study, root=tmp_path, progress=False, log=lambda _: None)
    assert set(res["final_threshold"]) == {"baseline", "dynamic"} and res["wall_time_sec"] > 0
    assert json.loads((tmp_path / "figures" / "scratch" / RESULTS).read_text()) == res
    assert (tmp_path / "build" / "scratch" / "scratch.html").is_file()
    assert "thresholds: {" in page.read_text()
    stamp = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs" / "scratch").rglob("*") if p.is_file()}
    seen = []
    run_study(study, root=tmp_path, progress=False, log=seen.append)
    assert seen == ["scratch: 0 of 2 runs to train"]
    assert stamp == {p: p.stat().st_mtime_ns for p in stamp}  # finished runs are read, never written

    # train=False (dynrcnn controls --no-train): the study is written from the complete runs, nothing trains
    (tmp_path / "runs" / "scratch" / "dynamic" / TRAIN_DONE).rename(tmp_path / "dynamic_done.json")
    seen.clear()
    res = run_study(study, root=tmp_path, progress=False, log=seen.append, train=False)
    assert seen[0] == "scratch: 1 of 2 runs to train" and "nothing trained" in seen[1]
    assert not (tmp_path / "runs" / "scratch" / "dynamic" / TRAIN_DONE).exists()
    assert json.loads((tmp_path / "figures" / "scratch" / RESULTS).read_text()) == res


def test_the_three_studies_are_declarations():
    assert {"record", "controls", "mmdet"} <= set(study_names())
    for name in ("record", "controls", "mmdet"):
        study = get_study(name)
        assert isinstance(study, Study) and study.notebook and study.results and study.work
    with pytest.raises(DynrcnnError, match="no study 'nope'"):
        get_study("nope")
