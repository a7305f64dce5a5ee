"""Issue 35 and issue 31 item 4: a run's record is append-only. Resume and reuse never rewrite a
finished run; env.json is a history (one entry per resume); a run is continued, and trained
again, from its own record."""

import hashlib
import json
import shlex
import shutil


from dynrcnn import cli
from dynrcnn.checkpoint.state import read_checkpoint
from dynrcnn.engine.trainer import train, train_model
from dynrcnn.rundir import history, integrity, runs
from dynrcnn.rundir.run_summary import format_table, runs_table
from tests.test_engine import assert_state_equal, tiny_cfg
from tests.test_integrity import data_root, done_run  # noqa: F401 (fixtures)


def hashes(folder):
    """``{relative path: SHA-256}`` of every file under ``folder`` (the lock included, if any)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resume_of_a_finished_run_writes_nothing(done_run, data_root, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "run"
    shutil.copytree(done_run, out)
    before = hashes(out)
    assert cli.main(["train", "--resume", str(out), "--no-progress"]) == 0  # no other flag: the record
    assert "finished at iteration 4; nothing to do" in capsys.readouterr().out
    assert hashes(out) == before and not (out / runs.LOCK).exists()
    # the same through the API, with the settings it was trained with (the notebook's path)
    result = train_model(tiny_cfg(data_root, "max_iter=4", "eval_at_end=true"), out, resume=True, progress=False)
    assert result.finished and result.iteration == 4 and hashes(out) == before
    # other settings are still refused; --overwrite stays the way to replace it
    assert cli.main(["train", "--resume", str(out), "--no-progress", "--seed", "3"]) == 2
    assert "would change what" in capsys.readouterr().err and hashes(out) == before


def test_eval_with_the_same_settings_reuses_the_eval_file(done_run, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "run"
    shutil.copytree(done_run, out)
    before = hashes(out)
    assert cli.main(["eval", str(out), "--no-progress"]) == 0
    assert "reused, not written again" in capsys.readouterr().out
    assert hashes(out) == before
    # an eval.json older than the checkpoint's SHA-256 record: same path, not modified since
    ev = json.loads(runs.eval_file(out).read_text())
    del ev["checkpoint_sha256"]
    runs.eval_file(out).write_text(json.dumps(ev))
    older = hashes(out)
    assert cli.main(["eval", str(out), "--no-progress"]) == 0 and hashes(out) == older
    # another checkpoint is another question: evaluated again; --overwrite always evaluates
    assert cli.main(["eval", str(out), "--no-progress", "--overwrite"]) == 0
    assert "checkpoint_sha256" in json.loads(runs.eval_file(out).read_text())
    capsys.readouterr()


def test_resume_from_the_record_continues_a_partial_run_bit_for_bit(data_root, tmp_path, capsys):  # noqa: F811
    cfg = tiny_cfg(data_root, "max_iter=8", "eval_at_end=false")
    full = train_model(cfg, tmp_path / "full", progress=False)
    out = tmp_path / "killed"
    train_model(cfg, out, progress=False, stop_after=2)  # a report run killed at iteration 2
    start = json.loads((out / runs.ENV).read_text())
    train_model(cfg, out, resume=True, progress=False, stop_after=6)  # killed again at 6
    assert cli.main(["train", "--resume", str(out), "--no-progress"]) == 0  # no other flag
    assert "resuming from" in capsys.readouterr().out
    a, b = read_checkpoint(full.run_dir / runs.LAST_CHECKPOINT_PATH), read_checkpoint(out / runs.LAST_CHECKPOINT_PATH)
    assert_state_equal(a["model"], b["model"])
    assert_state_equal(a["optimizer"], b["optimizer"])
    assert (out / runs.DYNAMIC).read_text() == (full.run_dir / runs.DYNAMIC).read_text()
    # env.json: the start as written, one entry per resume
    env = json.loads((out / runs.ENV).read_text())
    assert {k: v for k, v in env.items() if k != history.RESUMES} == start
    assert [e["iteration"] for e in env[history.RESUMES]] == [2, 6]
    last = env[history.RESUMES][-1]
    assert last["command"] == shlex.join(["dynrcnn", "train", "--resume", str(out)])
    for key in ("time", "torch", "cpu_model", "numeric_path", "git_commit", "argv"):
        assert key in last, key
    assert [s["iteration"] for s in history.segments(runs.load_run(out))] == [0, 2, 6]
    assert not history.mixed_numeric_paths(out) and set(history.changed_keys(out)) <= {"git_commit"}
    # finished now: a further resume adds nothing
    before = hashes(out)
    assert cli.main(["train", "--resume", str(out), "--no-progress"]) == 0 and hashes(out) == before


def test_the_recorded_command_trains_the_same_run(data_root, tmp_path):  # noqa: F811
    """env.json's ``command`` is the ``dynrcnn train`` line that trains the run again, also when
    the run was trained through the API (a notebook's ``sys.argv`` names the kernel)."""
    first = train(tiny_cfg(data_root, "max_iter=4", "eval_at_end=false", "seed=2"), tmp_path / "a", progress=False)
    words = shlex.split(json.loads((first / runs.ENV).read_text())["command"])
    assert words[:2] == ["dynrcnn", "train"] and "--seed" in words and "2" in words
    words[words.index("--out") + 1] = str(tmp_path / "b")
    assert cli.main(words[1:] + ["--no-progress"]) == 0
    a, b = read_checkpoint(first / runs.LAST_CHECKPOINT_PATH), read_checkpoint(tmp_path / "b" / runs.LAST_CHECKPOINT_PATH)
    assert_state_equal(a["model"], b["model"])
    rec_a, rec_b = (json.loads((d / runs.CONFIG).read_text()) for d in (first, tmp_path / "b"))
    assert rec_a == rec_b  # the same config, data record included


def _env(numeric_path, iteration=None, **extra):
    e = {"torch": "2.5.1", "device": "cpu", "device_name": "x86_64", "cpu_model": "Intel Xeon",
         "numeric_path": numeric_path, **extra}
    if iteration is not None:
        e["iteration"] = iteration
    return e


def test_env_history_readers(tmp_path):
    old = {"torch": "2.4", "device": "cpu", "autocast": "bfloat16", "resumed_from_iteration": 200,
           "resumed_with": {"log_period": 20}}  # a resume of an older version rewrote the whole file
    segs = history.segments(old)
    assert len(segs) == 1 and segs[0]["iteration"] == 200 and segs[0]["numeric_path"] == "bf16 (CPU not recorded)"
    assert history.segments({"device": "cpu", "autocast": "none"})[0]["numeric_path"] == "fp32"
    assert history.segments({}) == [] and history.describe({}) == "" and not history.mixed_numeric_paths({})
    moved = {**_env("bf16 (AMX)"), "resumes": [_env("bf16 (AVX512-BF16)", 200, cpu_model="AMD EPYC")]}
    assert history.mixed_numeric_paths(moved)
    assert history.changed_keys(moved) == ["numeric_path", "cpu_model"]
    assert history.describe(moved) == "2 segments, changed: numeric_path, cpu_model"
    same = {**_env("fp32"), "resumes": [_env("fp32", 4)]}
    assert not history.mixed_numeric_paths(same) and history.describe(same) == "2 segments"
    # appending keeps what was written
    run = tmp_path / "r"
    run.mkdir()
    (run / runs.ENV).write_text(json.dumps(old))
    history.append_resume(run, _env("fp32", 300))
    env = json.loads((run / runs.ENV).read_text())
    assert {k: v for k, v in env.items() if k != "resumes"} == old and len(env["resumes"]) == 1
    # the runs table: what tells runs apart and a run that moved between machines
    (run / runs.CONFIG).write_text(json.dumps({"method": "dla", "preset": "mini", "seed": 1, "max_iter": 900,
                                               "model": {"rpn_nms_thresh": 0.85}}))
    (run / runs.ENV).write_text(json.dumps(moved))
    table = runs_table([runs.load_run(run)])
    row = table.iloc[0]
    assert (row["method"], row["rpn_nms"], row["seed"], row["max_iter"]) == ("dla", 0.85, 1, 900)
    assert row["numeric_path"] == "bf16 (AMX) -> bf16 (AVX512-BF16)" and "changed: numeric_path" in row["environment"]
    assert "bf16 (AMX) -> bf16 (AVX512-BF16)" in format_table(table)


def test_train_notebook_reuses_a_finished_run_read_only(done_run, data_root, tmp_path):  # noqa: F811
    import nbformat

    from dynrcnn.report.profiles import NOTEBOOK_DIR

    out = tmp_path / "run"
    shutil.copytree(done_run, out)
    runs.eval_file(out).unlink()  # finished, not evaluated yet: still reused (evaluation is notebook 04's)
    cfg = tiny_cfg(data_root, "max_iter=4", "eval_at_end=true")
    assert integrity.train_action(out, cfg)[0] == "reuse"
    source = "".join(c.source for c in nbformat.read(NOTEBOOK_DIR / "03_train.ipynb", as_version=4).cells)
    assert "save_figure" not in source and 'if action != "reuse"' in source  # nothing written into a reused run
