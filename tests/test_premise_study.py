"""The premise test (``make report-premise``, :mod:`dynrcnn.report.studies.premise`): the declared
rule that freezes a candidate, the frozen declaration against the search's record, the claims and
their Holm family, and the study end to end on a tiny draw (2 seeds x 6 configurations x 2
iterations of the smoke preset: its numbers mean nothing)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dynrcnn.errors import DynrcnnError
from dynrcnn.report import premise, premise_test
from dynrcnn.report.study import RESULTS

TINY = ("max_iter=2", "lr_steps=1", "warmup_iters=1", "ims_per_batch=2", "num_workers=0", "model.min_size=64",
        "model.max_size=64", "model.rpn_pre_nms_top_n_train=200", "model.rpn_post_nms_top_n_train=100",
        "model.rpn_pre_nms_top_n_test=100", "model.rpn_post_nms_top_n_test=50", "eval_batch_size=4",
        "dynamic.interval=1")


def _record(name: str, met_a, means=(50.0, 51.0, 47.0)) -> dict:
    return {"candidate": name, "met": {"a": met_a, "b": None, "c": None, "d": False},
            "measured": {"a": {"means": {"AP": {"0.5": means[0], "0.6": means[1], "0.7": means[2]}}}},
            "data": {"annotation_sha256": f"sha-{name}"}}


def test_the_rule_freezes_the_first_declared_candidate_with_the_paradox():
    names = list(premise.CANDIDATES)
    recs = [_record(names[3], True), _record(names[1], False), _record(names[2], True), _record("adhoc", True)]
    assert premise.chosen(recs)["candidate"] == names[2]  # declared order, not the order measured
    # the latest measurement of a candidate counts
    assert premise.chosen(recs + [_record(names[2], False)])["candidate"] == names[3]
    assert premise.chosen([_record("adhoc", True), _record(names[0], None)]) is None


def test_the_best_fixed_threshold_is_the_highest_mean_ap_of_the_search():
    assert premise.best_fixed_threshold(_record("x", True, (50.0, 51.0, 47.0))) == 0.6
    assert premise.best_fixed_threshold(_record("x", True, (52.0, 51.0, 47.0))) == 0.5
    bad = _record("x", True)
    bad["measured"]["a"]["means"]["AP"] = {"0.5": None, "0.6": None, "0.7": None}
    with pytest.raises(DynrcnnError, match="no AP"):
        premise.best_fixed_threshold(bad)


def test_the_frozen_benchmark_is_the_one_the_record_and_the_rule_give():
    """FROZEN (once set) names the candidate the declared rule chooses from the committed record,
    with that record line's annotation hash: a freeze by hand that disagrees with the search fails."""
    from dynrcnn.io import CHECKOUT

    records = premise.read_records(CHECKOUT / premise.RECORD)
    if premise_test.FROZEN is None:
        with pytest.raises(DynrcnnError, match="no benchmark is frozen"):
            premise_test.frozen_candidate()
        return
    pick = premise.chosen(records)
    assert pick is not None and pick["candidate"] == premise_test.FROZEN.candidate
    assert pick["data"]["annotation_sha256"] == premise_test.FROZEN.search_sha256
    assert len(premise_test.FROZEN.test_sha256) == 64


def test_the_profile_trains_every_configuration_with_every_seed_at_rpn_nms_085():
    cand = premise.CANDIDATES["c1_dense"]
    prof = premise_test.premise_profile(cand)
    assert len(prof.runs) == len(premise_test.CONFIGS) * len(premise_test.SEEDS) == 60
    assert [r.name for r in prof.runs[:6]] == ["fixed50", "fixed60", "fixed70", "dla", "dsl", "dynamic"]
    assert prof.runs[6].name == "fixed50_seed1"  # seed by seed: a partial test has every configuration
    from dynrcnn.presets import build_config

    cfgs = {r.name: build_config(prof.preset, r.method, seed=r.seed, overrides=prof.run_overrides(r))
            for r in prof.runs[:6]}
    assert {n: c.model.fg_iou_thresh for n, c in cfgs.items() if n.startswith("fixed")} == {
        "fixed50": 0.5, "fixed60": 0.6, "fixed70": 0.7}
    assert all(c.model.rpn_nms_thresh == 0.85 and c.log_stats and c.log_period == c.max_iter // 100
               for c in cfgs.values())
    assert {c.method for c in cfgs.values()} == {"baseline", "dla", "dsl", "dynamic"}


def test_the_page_lists_the_primary_family_of_the_code():
    from dynrcnn.io import CHECKOUT

    page = (CHECKOUT / "docs" / "premise.md").read_text()
    for c in premise_test.PRIMARY:
        assert f"| {c.claim} | {c.metric} | {'higher' if c.sign > 0 else 'lower'} |" in page


def test_the_primary_family_is_declared_and_holm_corrected():
    keys = [(c.key, c.metric, c.sign) for c in premise_test.PRIMARY]
    assert keys == [("paradox", "AP", -1), ("dynamic_vs_baseline", "AP", 1), ("dynamic_vs_baseline", "AP90", 1),
                    ("dla_vs_best_fixed", "AP", 1)]
    assert not {(c.key, c.metric) for c in premise_test.PRIMARY} & {(c.key, c.metric) for c in premise_test.SECONDARY_ROWS}


# ----------------------------------------------------------------------------------------------
# end to end


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from dynrcnn.report.studies.premise import draw_test_data, run_premise

    root = tmp_path_factory.mktemp("premise_study")
    cand = premise.Candidate("c1_dense", "tiny", {"min_objects": 3, "max_objects": 5, "distractors": 1})
    data = root / "data" / "premise"
    sha = draw_test_data(cand, data, n_train=6, n_val=3, image_size=64)
    frozen = premise_test.Frozen("c1_dense", "search-sha", sha)
    profile = premise_test.premise_profile(cand, "premise_tiny", seeds=(0, 1), extra_overrides=TINY,
                                           preset="mini_smoke", description="tiny")
    (root / "docs").mkdir()
    (root / "docs" / "premise.md").write_text("# P\n\n<!-- PREMISE-TEST:BEGIN -->\n<!-- PREMISE-TEST:END -->\n")
    (root / "README.md").write_text("# R\n\n<!-- PREMISE-HEADLINE:BEGIN -->\n<!-- PREMISE-HEADLINE:END -->\nend\n")
    record = _record("c1_dense", True, (40.0, 41.0, 38.0))
    res = run_premise(root=root, jobs=1, threads=1, progress=False, frozen=frozen, candidate=cand, profile=profile,
                      data_root=data,
                      n_train=6, n_val=3, record=record, command="run_premise(tiny)")
    return root, data, frozen, cand, profile, res


@pytest.mark.slow
def test_the_tiny_study_writes_results_the_block_and_the_line(study):
    root, data, frozen, cand, profile, res = study
    assert json.loads((root / "figures" / "premise" / RESULTS).read_text()) == json.loads(json.dumps(res))
    assert res["seeds_used"] == 2 and res["best_fixed"] == 0.6 and res["frozen"]["test_sha256"] == frozen.test_sha256
    assert {(r["config"], r["seed"]) for r in res["runs"]} == {(n, s) for n, _, _ in premise_test.CONFIGS
                                                               for s in (0, 1)}
    claims = res["claims"]
    assert len(claims) == len(premise_test.PRIMARY) + len(premise_test.SECONDARY_ROWS)
    prim = [c for c in claims if c["family"] == "primary"]
    assert all(math.isfinite(c["p_holm"]) and c["p_holm"] >= c["p"] for c in prim)
    assert next(c for c in prim if c["key"] == "dla_vs_best_fixed")["base"] == "fixed60"
    for c in claims:  # each difference is the mean of its per-seed differences (paired)
        assert c["estimate"] == pytest.approx(np.mean(list(c["per_seed"].values())), abs=1e-9)
    assert res["targets"]["a"]["means"]["AP"].keys() == {"0.5", "0.6", "0.7"}
    assert {c["run"] for c in res["positives"]} == {n for n, _, _ in premise_test.CONFIGS}
    assert {t["run"] for t in res["trajectories"]} == {"dla", "dsl", "dynamic"}
    page = (root / "docs" / "premise.md").read_text()
    assert "run_premise(tiny)" in page and "| Dynamic R-CNN vs the baseline | primary | AP90 |" in page
    assert "its 12 runs trained for" in page  # the runs' own training time, not only this invocation's
    readme = (root / "README.md").read_text()
    assert "**The premise**" in readme and readme.rstrip().endswith("end")
    out = root / "build" / "report-premise"
    assert (out / "09_premise.html").stat().st_size > 10_000
    for name in ("data_samples", "configs", "positives", "trajectories"):
        assert (root / "figures" / "premise" / f"{name}.png").stat().st_size > 5_000


@pytest.mark.slow
def test_a_draw_that_is_not_the_frozen_one_is_refused(study, tmp_path):
    from dynrcnn.report.studies.premise import run_premise

    root, data, frozen, cand, profile, _ = study
    wrong = premise_test.Frozen(frozen.candidate, frozen.search_sha256, "0" * 64)
    with pytest.raises(DynrcnnError, match="the frozen benchmark pins 000000000000"):
        run_premise(root=root, jobs=1, threads=1, progress=False, frozen=wrong, candidate=cand, profile=profile,
                    data_root=data,
                    n_train=6, n_val=3, record=None, out=tmp_path / "out", figures=tmp_path / "fig")
    other = premise.Candidate("c1_dense", "tiny", {"min_objects": 2, "max_objects": 3})
    from dynrcnn.report.studies.premise import draw_test_data

    with pytest.raises(DynrcnnError, match="drawn with other settings"):
        draw_test_data(other, data, n_train=6, n_val=3, image_size=64)
