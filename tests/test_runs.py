"""Reading run directories and the `dynrcnn runs` table."""

import json

from dynrcnn.rundir.run_summary import format_table, runs_table
from dynrcnn.rundir.runs import find_runs, load_run
from dynrcnn.io import read_jsonl


def make_run(path, method, seed=0, ap=None, done=True):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"method": method, "preset": "mini", "seed": seed,
                                                  "dynamic": {"convention": "mmdet"}}))
    (path / "env.json").write_text(json.dumps({"device_name": "cpu"}))
    (path / "metrics.jsonl").write_text("".join(json.dumps({"iteration": i, "loss": 1.0 / i}) + "\n"
                                                for i in (10, 20)))
    (path / "dynamic.jsonl").write_text(json.dumps({"iteration": 0, "iou_threshold": 0.4, "beta": 1.0}) + "\n"
                                        + '{"iteration": 10, "iou_thr')  # torn last line
    if done:
        (path / "train_done.json").write_text(json.dumps({"iterations": 20, "wall_time_sec": 120.0,
                                                          "images_per_sec": 8.0}))
    if ap is not None:
        (path / "eval.json").write_text(json.dumps({"AP": ap, "AP50": ap + 10, "AP75": ap, "AP90": ap - 10}))


def test_read_jsonl_skips_torn_lines(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"a": 1}\n\n{"a": 2}\n{"a": ')
    assert read_jsonl(p) == [{"a": 1}, {"a": 2}]
    assert read_jsonl(tmp_path / "missing.jsonl") == []


def test_load_find_and_table(tmp_path, capsys):
    make_run(tmp_path / "a" / "dyn", "dynamic", ap=40.0)
    make_run(tmp_path / "b" / "base", "baseline", seed=1, ap=38.5)
    make_run(tmp_path / "c", "dla", done=False)
    (tmp_path / "not_a_run").mkdir()
    r = load_run(tmp_path / "a" / "dyn")
    assert r.method == "dynamic" and r.preset == "mini" and r.seed == 0 and r.iterations == 20
    assert list(r.metrics["iteration"]) == [10, 20] and len(r.dynamic) == 1 and r.stats is None
    assert r.eval["AP"] == 40.0 and r.done["iterations"] == 20 and "dynamic" in r.label
    runs = find_runs(tmp_path)
    assert [x.method for x in runs] == ["dynamic", "baseline", "dla"]
    table = runs_table(runs)
    assert list(table["method"]) == ["dynamic", "baseline", "dla"]
    assert list(table.columns[:9]) == ["run", "method", "preset", "convention", "rpn_nms", "seed", "max_iter",
                                       "iterations", "finished"]
    assert table.loc[0, "AP90"] == 30.0 and table.loc[0, "wall_min"] == 2.0
    assert table.loc[2, "iterations"] == 20 and not table.loc[2, "finished"]
    text = format_table(table)
    assert "baseline" in text and "38.50" in text
    assert format_table(runs_table([])) == "(no runs)"

    from dynrcnn.cli import eval as cli_eval
    import argparse

    parser = argparse.ArgumentParser()
    cli_eval.register(parser.add_subparsers())
    args = parser.parse_args(["runs", str(tmp_path)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "dynamic" in out and "40.00" in out


def test_runs_of_a_missing_folder_is_an_error_not_an_empty_table(tmp_path, capsys):
    from dynrcnn import cli

    assert cli.main(["runs", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "nowhere: no such folder" in err and len(err.strip().splitlines()) == 1


def test_cli_defaults_and_help():
    import argparse

    from dynrcnn.cli import eval as cli_eval
    from dynrcnn.cli import train as cli_train

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    cli_train.register(sub)
    cli_eval.register(sub)
    args = parser.parse_args(["train", "--data-root", "/tmp/mini", "--out", "runs/x"])
    cfg, out, resume = cli_train.config_for(args)  # no --preset/--method: mini, dynamic
    assert cfg.method == "dynamic" and cfg.preset == "mini" and args.device in ("cpu", "cuda")
    assert not args.resume and args.set == [] and out == "runs/x" and not resume
    assert parser.parse_args(["train", "--resume", "runs/x"]).resume == "runs/x"
    assert parser.parse_args(["train", "--out", "runs/x", "--resume"]).resume is True
    args = parser.parse_args(["eval", "runs/x"])
    assert args.evaluator is None and args.checkpoint is None  # None: config.default_evaluator()
    for action in parser._subparsers._group_actions[0].choices["train"]._actions:
        assert action.help, action.dest


def test_shown_paths_name_no_machine_folder(tmp_path, monkeypatch):
    from dynrcnn.io import CHECKOUT, relative_path, shown_path

    assert relative_path(tmp_path / "a" / "b", tmp_path) == "a/b"
    assert relative_path(tmp_path, tmp_path) == "."
    assert relative_path(tmp_path / "a", tmp_path / "other", tmp_path / "a") == "."  # the first base that holds it
    assert relative_path("/elsewhere/x", tmp_path) == "/elsewhere/x"  # outside every base: absolute
    assert relative_path(tmp_path / "ab", tmp_path / "a") == str(tmp_path / "ab")  # a prefix is not a parent
    monkeypatch.chdir(tmp_path)
    assert shown_path(tmp_path / "runs" / "x") == "runs/x"  # the working folder first
    assert shown_path(CHECKOUT / "runs" / "mini") == "runs/mini"  # then the checkout
    assert shown_path("/elsewhere/x") == "/elsewhere/x"
