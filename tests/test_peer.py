"""The MMDetection side-by-side comparison (``dynrcnn.report.peer``) on synthetic run directories:
detections with a known localisation error, so each implementation's gain and their difference are
known in direction, and identical implementations must agree exactly."""

from __future__ import annotations

import json

import pandas as pd

from dynrcnn.report import peer
from dynrcnn.rundir.runs import find_runs
from tests.test_plots import write_gt, write_run


def _side(root, data_root, base_jitter, dyn_jitter, sec, seeds=(0, 1, 2), prefix=""):
    for s in seeds:
        write_run(root, f"{prefix}baseline_seed{s}", "baseline", seed=s, rpn_nms=0.85, data_root=str(data_root),
                  jitter=base_jitter, sec_per_iter=sec)
        write_run(root, f"{prefix}dynamic_seed{s}", "dynamic", seed=s, rpn_nms=0.85, data_root=str(data_root),
                  jitter=dyn_jitter, sec_per_iter=sec)
    return find_runs(root)


def test_identical_implementations_are_equivalent_and_a_larger_gain_differs(tmp_path):
    data = tmp_path / "data"
    write_gt(data, n_images=40)
    ours = _side(tmp_path / "ours", data, 4.0, 1.0, 0.5)
    write_run(tmp_path / "ours", "baseline_nms07", "baseline", rpn_nms=0.7, data_root=str(data), jitter=4.0)
    same = _side(tmp_path / "same", data, 4.0, 1.0, 1.0)
    groups = peer.Groups.build(find_runs(tmp_path / "ours"), same)
    assert groups.complete and groups.seeds("dynrcnn", "baseline") == [0, 1, 2]  # the 0.7 baseline is left out
    table = peer.agreement(groups, n_boot=200)
    assert list(table["metric"]) == list(peer.METRICS)
    # identical gains on both sides: every metric's difference is 0 with no spread, so equivalent
    assert (table["dynrcnn gain"] > 0).all() and table["verdict"].str.startswith("equivalent within").all()
    # same jitter and seeds on both sides: the detections are identical, so the gains are too
    assert (table["difference"].abs() < 1e-9).all() and (table["low"].abs() < 1e-9).all()
    assert "the gains are equivalent within" in table["sentence"][0]
    assert peer.speed_ratio(groups)["ratio_ours_to_mmdet"] == 0.5

    # an implementation whose Dynamic R-CNN localises much better gains more at high IoU
    better = _side(tmp_path / "better", data, 4.0, 0.1, 1.0)
    t2 = peer.agreement(peer.Groups.build(ours, better), n_boot=200).set_index("metric")
    assert t2.loc["AP90", "verdict"] == "different" and t2.loc["AP90", "low"] > 0
    assert "MMDetection's gain is" in t2.loc["AP90", "sentence"] and "larger" in t2.loc["AP90", "sentence"]


def test_results_and_readme_block_come_from_the_runs(tmp_path):
    data = tmp_path / "data"
    write_gt(data, n_images=30)
    ours = _side(tmp_path / "ours", data, 3.0, 1.0, 0.4)
    theirs = _side(tmp_path / "mm", data, 3.0, 1.5, 0.8)
    for r in theirs:
        (r.path / peer.PEER_EVAL).write_text(json.dumps({"AP": r.eval["AP"] + 0.1, "AP50": r.eval["AP50"],
                                                          "AP75": r.eval["AP75"]}))
    groups = peer.Groups.build(ours, theirs)
    res = peer.results(groups, [None], {"mmdet": "3.3.0"}, n_boot=100)
    json.dumps(res)  # JSON-ready
    assert res["seeds"]["mmdet/dynamic"] == [0, 1, 2] and len(res["trajectories"]) == 6
    assert res["speed"]["ratio_ours_to_mmdet"] == 0.5
    ev = pd.DataFrame(res["evaluator_agreement"])
    assert ev[ev.metric == "AP"]["difference"].round(6).eq(-0.1).all()
    block = peer.readme_body(res, "figures/mmdet", "make mmdet")
    row = res["benchmarks"]["evaluation split"]["agreement"][3]
    assert row["metric"] == "AP90" and f"| AP90 | {row['dynrcnn gain']:+.2f}" in block
    assert "figures/mmdet/trajectories.png" in block and "x0.50" in block
    # the absolute levels beside the gains, and the gap between the implementations computed from them
    m = {(r["implementation"], r["method"]): r for r in res["benchmarks"]["evaluation split"]["metrics"]}
    ours_f, theirs_f = m[(peer.LABELS["dynrcnn"], "Faster R-CNN")], m[(peer.LABELS["mmdet"], "Faster R-CNN")]
    assert f"| {peer.LABELS['mmdet']} | Faster R-CNN | 3 | {theirs_f['AP']:.2f}" in block
    assert f"Faster R-CNN {theirs_f['AP'] - ours_f['AP']:+.2f} AP" in block
    # each run's training time comes from its train_done.json (write_run: iterations x sec_per_iter)
    assert res["speed"]["mmdet_train_min_per_run"] == [100 * 0.8 / 60] * 2
    assert "MMDetection 3.3.0 1.3-1.3 min" in block


def test_notebook_06_executes_on_the_runs_and_writes_its_figures(tmp_path):
    """The section's notebook itself (papermill), on synthetic runs: every cell runs and its figures
    exist; the study's results come from the package."""
    from dynrcnn.report import NOTEBOOK_DIR
    from dynrcnn.report.pipeline import execute_notebook

    data = tmp_path / "data"
    write_gt(data, n_images=20)
    _side(tmp_path / "ours", data, 3.0, 1.0, 0.4)
    for r in _side(tmp_path / "mm", data, 3.0, 1.5, 0.8):
        (r.path / peer.PEER_EVAL).write_text(json.dumps({k: r.eval[k] for k in ("AP", "AP50", "AP75")}))
    figures = tmp_path / "figures"
    params = {"ours_root": str(tmp_path / "ours"), "peer_root": str(tmp_path / "mm"), "figures_dir": str(figures),
              "n_boot": 50}
    execute_notebook(NOTEBOOK_DIR / "06_mmdet.ipynb", tmp_path / "06_mmdet.ipynb", params, cwd=tmp_path)
    assert not (figures / "results.json").exists()  # the notebook displays; the study's runner writes the numbers
    from dynrcnn.report.study import StudyContext
    from dynrcnn.report.studies import mmdet

    ctx = StudyContext(tmp_path, figures, tmp_path, state={"ours_root": tmp_path / "ours", "peer_root": tmp_path / "mm"})
    res = mmdet.STUDY.results(ctx)
    assert res["seeds"]["mmdet/baseline"] == [0, 1, 2] and res["speed"]["ratio_ours_to_mmdet"] == 0.5
    assert (figures / "trajectories.png").stat().st_size > 0 and (figures / "gains.png").stat().st_size > 0


def test_a_peer_run_from_another_backbone_is_set_aside_untouched(tmp_path, capsys):
    import pytest

    from dynrcnn.errors import DynrcnnError
    from dynrcnn.report.studies.mmdet import PeerRun, _set_aside_if_stale

    peer_root = tmp_path / "mmdet"
    run = PeerRun("baseline", 0, peer_root / "faster_rcnn_seed0")
    run.run_dir.mkdir(parents=True)
    record = json.dumps({"backbone": {"sha256": "a" * 64}})
    (run.run_dir / "train_done.json").write_text(record)
    _set_aside_if_stale(run, "a" * 64, peer_root)  # same backbone: stays
    assert run.run_dir.is_dir()
    _set_aside_if_stale(run, "b" * 64, peer_root)
    moved = peer_root / "stale" / ("a" * 12) / "faster_rcnn_seed0"
    assert not run.run_dir.exists() and (moved / "train_done.json").read_text() == record
    assert "training it again" in capsys.readouterr().err
    run.run_dir.mkdir()
    (run.run_dir / "train_done.json").write_text(record)
    with pytest.raises(DynrcnnError, match="already exists"):  # never overwrites what was set aside
        _set_aside_if_stale(run, "b" * 64, peer_root)
