"""dynrcnn check-report: a fresh report against the committed one."""

import json

from dynrcnn.cli import main
from dynrcnn.report.consistency import compare_results, summary


def results(values: dict) -> dict:
    """A results.json with configuration -> {seed: (AP, AP90)}."""
    return {"configurations": [{"name": name, "runs": [{"seed": s, "metrics": {"AP": ap, "AP90": ap90}}
                                                       for s, (ap, ap90) in seeds.items()]}
                               for name, seeds in values.items()]}


def test_identical_equivalent_and_different_rows():
    committed = results({"baseline": {0: (60.0, 12.0), 1: (61.0, 13.0), 2: (59.5, 12.5)},
                         "dynamic": {0: (63.0, 21.0), 1: (62.6, 20.0), 2: (63.1, 20.4)}})
    same = compare_results(committed, committed)
    assert (same["verdict"] == "identical").all() and (same["shared seeds identical"] == 3).all()
    # another CPU: every value moves a little; with 8 seeds a side the 90 % interval fits in +-1 AP
    base = [60.0, 60.4, 59.8, 60.2, 59.9, 60.1, 60.3, 59.7]
    ten = results({"baseline": {s: (v, 12.0 + v - 60) for s, v in enumerate(base)}})
    moved = results({"baseline": {s: (v + 0.1 * (-1) ** s, 12.1 + v - 60) for s, v in enumerate(base)}})
    t = compare_results(moved, ten).set_index("metric")
    assert t.loc["AP", "verdict"] == "equivalent within ±1" and t.loc["AP", "shared seeds identical"] == 0
    # with three seeds a side the same small shift cannot be shown equivalent: inconclusive, never "agrees"
    few = compare_results(results({"baseline": {0: (60.1, 12.0), 1: (61.6, 12.0), 2: (58.9, 12.0)}}),
                          results({"baseline": {0: (59.2, 12.0), 1: (60.9, 12.0), 2: (61.3, 12.0)}}))
    assert few.set_index("metric").loc["AP", "verdict"] == "inconclusive"
    far = results({"baseline": {0: (65.0, 12.0), 1: (66.0, 13.0), 2: (64.5, 12.5)}})
    assert compare_results(far, committed).set_index("metric").loc["AP", "verdict"] == "different"
    assert summary(same).startswith("4 of 4 configuration-metric rows agree")


def test_the_command_exits_1_on_a_difference(tmp_path, capsys):
    committed = results({"baseline": {0: (60.0, 12.0), 1: (61.0, 13.0), 2: (59.5, 12.5)}})
    far = results({"baseline": {0: (65.0, 12.0), 1: (66.0, 13.0), 2: (64.5, 12.5)}})
    (tmp_path / "old.json").write_text(json.dumps(committed))
    (tmp_path / "new.json").write_text(json.dumps(far))
    assert main(["check-report", "--fresh", str(tmp_path / "new.json"), "--against", str(tmp_path / "old.json")]) == 1
    assert "different" in capsys.readouterr().out
    assert main(["check-report", "--fresh", str(tmp_path / "old.json"), "--against", str(tmp_path / "old.json")]) == 0
    assert main(["check-report", "--fresh", str(tmp_path / "missing.json")]) == 2
