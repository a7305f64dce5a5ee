"""Issue 11: run directories and datasets that cannot be silently damaged (provenance, tagged
evaluations, immutable training record, overwrite refusals, locks, atomic data, one-line errors)."""

import json
import shutil

import pytest

from dynrcnn.rundir import integrity
from dynrcnn.rundir import runs
from dynrcnn.engine.trainer import train
from dynrcnn.errors import DynrcnnError
from dynrcnn.io import atomic_write_bytes
from dynrcnn.evaluation.coco_eval import evaluate
from tests.test_engine import tiny_cfg


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from dynrcnn.data.mini import generate_mini

    root = tmp_path_factory.mktemp("integrity") / "mini"
    generate_mini(root, seed=0, n_train=12, n_val=4, image_size=64, workers=0, progress=False)
    return root


@pytest.fixture(scope="module")
def done_run(data_root, tmp_path_factory):
    """A finished, evaluated 4-iteration run (copy it before changing it)."""
    out = tmp_path_factory.mktemp("integrity_run") / "run"
    return train(tiny_cfg(data_root, "max_iter=4", "eval_at_end=true"), out, progress=False)


def snapshot(folder):
    """``{relative path: bytes}`` of every file under ``folder``."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_train_records_data_provenance(done_run, data_root):
    from dynrcnn.io import file_sha256

    rec = json.loads((done_run / runs.CONFIG).read_text())[runs.DATA_RECORD]
    from dynrcnn.data.datasets import load_dataset

    assert rec == {"data_root": str(data_root.resolve()), "split": "train",
                   "annotation_sha256": file_sha256(data_root / "annotations" / "instances_train.json"),
                   "class_names": load_dataset(data_root, "train").class_names}
    ev = json.loads(runs.eval_file(done_run).read_text())
    assert ev["data_root"] == str(data_root.resolve()) and ev["split"] == "val"
    assert ev["annotation_sha256"] == file_sha256(data_root / "annotations" / "instances_val.json")
    runs.read_config(done_run)  # the extra record does not break reading the config back


def test_eval_of_another_checkpoint_never_replaces_the_final_results(done_run, data_root, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(done_run, run)
    own_eval = runs.eval_file(run).read_bytes()
    early = run / runs.CHECKPOINTS / "early.pth"
    shutil.copy(runs.last_checkpoint(run), early)  # stands for a periodic checkpoint
    ev = evaluate(run, checkpoint=early)
    assert runs.eval_file(run).read_bytes() == own_eval
    tagged = json.loads((run / "eval-early.json").read_text())
    assert tagged["final_model"] is False and tagged["AP"] == ev["AP"]
    assert runs.load_run(run).eval_names == []  # not a benchmark of the report
    other = tmp_path / "other"
    shutil.copytree(data_root, other)
    evaluate(run, checkpoint=early, data_root=other)  # on other data: both names in the tag
    assert json.loads((run / "eval-other-early.json").read_text())["final_model"] is False
    evaluate(run, checkpoint=runs.last_checkpoint(run))  # the last checkpoint is the final model
    assert json.loads(runs.eval_file(run).read_text())["final_model"] is True


def test_eval_on_other_data_never_replaces_the_runs_own(done_run, data_root, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(done_run, run)
    other = tmp_path / "other data!"
    shutil.copytree(data_root, other)
    own_eval, own_dets = runs.eval_file(run).read_bytes(), runs.detections_file(run).read_bytes()

    ev = evaluate(run, data_root=other)
    assert runs.eval_file(run).read_bytes() == own_eval and runs.detections_file(run).read_bytes() == own_dets
    tagged = run / "eval-other_data.json"
    assert tagged.is_file() and (run / "detections-other_data.json").is_file()
    assert json.loads(tagged.read_text())["data_root"] == str(other.resolve()) and ev["split"] == "val"
    r = runs.load_run(run)
    assert r.eval_names == ["other_data"] and r.eval_on("other_data")["AP"] == ev["AP"]
    assert r.eval_on("nope") is None and r.eval_on(None) == r.eval
    assert r.detections_path("other_data") == run / "detections-other_data.json"
    assert runs.read_detections(run, "other_data") == json.loads((run / "detections-other_data.json").read_text())

    # the run's own data (another spelling of the same folder) still writes eval.json
    evaluate(run, data_root=str(data_root) + "/.")
    assert json.loads(runs.eval_file(run).read_text())["data_root"] == str(data_root.resolve())
    # name= forces the tag
    evaluate(run, data_root=other, name="my tag")
    assert (run / "eval-my_tag.json").is_file()
    # another folder with the same name is refused rather than replacing eval-other_data.json
    twin = tmp_path / "x" / "other data!"
    shutil.copytree(data_root, twin)
    with pytest.raises(DynrcnnError, match="already holds results on .*--name"):
        evaluate(run, data_root=twin)
    assert json.loads(tagged.read_text())["data_root"] == str(other.resolve())


# ---- data mini: fresh temporary folder, atomic publish, foreign files refused


def test_mini_refuses_a_folder_with_foreign_files(tmp_path):
    from dynrcnn.errors import DataError
    from dynrcnn.data.mini import generate_mini

    out = tmp_path / "data"
    (out / "train").mkdir(parents=True)
    (out / "train" / "holiday.png").write_bytes(b"not ours")
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    with pytest.raises(DataError, match=r"did not write \(notes.txt, 2 in all\)"):
        generate_mini(out, n_train=2, n_val=1, image_size=64, workers=0, progress=False)
    assert snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    # an earlier benchmark is replaced (the earlier test_mini test covers a smaller one)
    fresh = tmp_path / "fresh"
    generate_mini(fresh, n_train=2, n_val=1, image_size=64, workers=0, progress=False)
    generate_mini(fresh, seed=5, n_train=2, n_val=1, image_size=64, workers=0, progress=False)
    assert json.loads((fresh / "annotations" / "instances_val.json").read_text())["info"]["seed"] == 5


def test_mini_interrupted_leaves_the_target_as_it_was(tmp_path, monkeypatch):
    from dynrcnn.data import mini

    out = tmp_path / "data"
    mini.generate_mini(out, n_train=3, n_val=2, image_size=64, workers=0, progress=False)
    before = snapshot(out)

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(mini, "_coco_dict", boom)  # stops after every image was drawn
    with pytest.raises(KeyboardInterrupt):
        mini.generate_mini(out, seed=9, n_train=3, n_val=2, image_size=64, workers=0, progress=False)
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no temporary folder left


# ---- image sizes: verify decodes every image and checks its size; loading checks it too


def test_image_size_checked_by_verify_and_at_load_time(tmp_path, capsys):
    from PIL import Image

    from dynrcnn.data.coco import verify_dataset
    from dynrcnn.data.datasets import load_dataset
    from dynrcnn.errors import DataError
    from dynrcnn.data.mini import generate_mini

    root = tmp_path / "d"
    generate_mini(root, n_train=2, n_val=2, image_size=64, workers=0, progress=False)
    assert verify_dataset(root, progress=False)
    Image.new("RGB", (80, 64)).save(root / "val" / "000001.png")  # other size than annotated
    (root / "train" / "000000.png").write_bytes((root / "train" / "000000.png").read_bytes()[:200])  # truncated
    capsys.readouterr()
    assert not verify_dataset(root, progress=False)
    out = capsys.readouterr().out
    assert "images[1] (id 2): image file" in out and "is 80x64 px but its annotation says 64x64" in out
    assert "images[0] (id 1): image file" in out and "not readable" in out
    ds = load_dataset(root, "val", train=False)
    with pytest.raises(DataError, match=r"image id 2: .* is 80x64 px but its annotation says 64x64"):
        ds[1]


# ---- the immutable training record, --set, overwrite refusals, the lock


def test_set_lr_is_honoured_and_unknown_keys_get_the_closest_name():
    from dynrcnn.config import resolve_lr
    from dynrcnn.errors import ConfigError
    from dynrcnn.presets import build_config

    cfg = build_config("mini_smoke", "dynamic", overrides=["lr=0.05", "ims_per_batch=2"])
    resolved, message = resolve_lr(cfg)
    assert resolved.lr == 0.05 and "set explicitly" in message  # not silently rescaled to 0.01
    with pytest.raises(ConfigError, match="did you mean 'dynamic.interval'"):
        build_config("mini_smoke", "dynamic", overrides=["dynamic.intervall=5"])
    with pytest.raises(ConfigError, match="did you mean 'model.rpn_nms_thresh'"):
        build_config("mini_smoke", "dynamic", overrides=["rpn_nms_thresh=0.85"])
    # a setting the run would ignore is refused, not dropped
    with pytest.raises(ConfigError, match="applies only with model.pretrained_backbone=true"):
        build_config("mini_smoke", "dynamic", overrides=["model.trainable_backbone_layers=3"])
    assert build_config("coco_r50_fpn_1x", "dynamic", overrides=["model.trainable_backbone_layers=2"])


def test_resume_refuses_changed_settings_and_keeps_the_record(done_run, data_root, tmp_path):
    from dynrcnn.engine.trainer import train_model

    out = tmp_path / "run"
    cfg = tiny_cfg(data_root, "max_iter=8", "eval_at_end=false")
    train_model(cfg, out, progress=False, stop_after=4)
    record = (out / runs.CONFIG).read_bytes()
    with pytest.raises(DynrcnnError, match=r"--resume would change .*\(seed: 0 -> 3; lr: 0.01 -> 0.05\)"):
        train(tiny_cfg(data_root, "max_iter=8", "eval_at_end=false", "seed=3", "lr=0.05"), out, resume=True,
              progress=False)
    other = tmp_path / "other"
    shutil.copytree(data_root, other)
    (other / "annotations" / "instances_train.json").write_text(
        (other / "annotations" / "instances_train.json").read_text().replace('"seed":0', '"seed":7'))
    with pytest.raises(DynrcnnError, match=r"data_root: .*; data.annotation_sha256: the training annotation"):
        train(tiny_cfg(other, "max_iter=8", "eval_at_end=false"), out, resume=True, progress=False)
    assert (out / runs.CONFIG).read_bytes() == record
    # settings that do not change what is trained may change; config.json keeps the record
    train(tiny_cfg(data_root, "max_iter=8", "eval_at_end=false", "log_period=4", "keep_checkpoints=1"), out,
          resume=True, progress=False)
    assert (out / runs.CONFIG).read_bytes() == record
    env = json.loads((out / runs.ENV).read_text())
    resume = env["resumes"][-1]  # env.json is a history: the start as written, one entry per resume
    assert resume["iteration"] == 4 and resume["resumed_with"]["log_period"] == 4
    assert "resumed_from_iteration" not in env and "--set log_period=4" in resume["command"]


def test_no_silent_overwrite_of_any_run_artefact(done_run, data_root, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(done_run, out)
    shutil.rmtree(out / runs.CHECKPOINTS)  # a finished run whose checkpoints were deleted to save space
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    cfg = tiny_cfg(data_root, "max_iter=4")
    with pytest.raises(DynrcnnError, match=r"already holds a run \(config.json, .*--overwrite"):
        train(cfg, out, progress=False)
    with pytest.raises(DynrcnnError, match="no checkpoint to resume from"):
        train(cfg, out, resume=True, progress=False)
    assert snapshot(out) == before
    train(cfg, out, progress=False, overwrite=True)  # explicit: the run is replaced, other files kept
    assert (out / "notes.txt").read_text() == "mine" and runs.has_checkpoints(out)
    assert not (out / runs.LOCK).exists()


def test_lock_refuses_a_second_writer_and_takes_over_a_stale_one(done_run, data_root, tmp_path):
    import os
    import socket
    import subprocess
    import sys

    out = tmp_path / "run"
    shutil.copytree(done_run, out)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / runs.LOCK).write_text(json.dumps({"pid": live.pid, "host": socket.gethostname()}))
        with pytest.raises(DynrcnnError, match=f"being written by process {live.pid}"):
            train(tiny_cfg(data_root, "max_iter=4", "eval_at_end=true"), out, resume=True, progress=False)
        with pytest.raises(DynrcnnError, match=f"being written by process {live.pid}"):
            evaluate(out)
    finally:
        live.kill()
        live.wait()
    # the holder is gone: the lock is stale and taken over (then released)
    with integrity.RunLock(out) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
        with integrity.RunLock(out):  # re-entrant in the same process (training evaluates under its lock)
            pass
        assert lock.path.exists()
    assert not (out / runs.LOCK).exists()


def test_report_force_retrains_over_an_existing_run(done_run, data_root, tmp_path):
    """What the train notebook does under `dynrcnn report --force` (the notebook passes overwrite=force)."""
    import nbformat

    from dynrcnn.report.profiles import NOTEBOOK_DIR

    out = tmp_path / "run"
    shutil.copytree(done_run, out)
    cfg = tiny_cfg(data_root, "max_iter=4", "eval_at_end=true")
    action, why = integrity.train_action(out, cfg, force=True)
    assert action == "train"
    train(cfg, out, resume=(action == "resume"), progress=False, overwrite=True)
    assert runs.is_complete(out)
    source = "".join(c.source for c in nbformat.read(NOTEBOOK_DIR / "03_train.ipynb", as_version=4).cells)
    assert "overwrite=force" in source


def test_the_notebooks_and_studies_never_replace_a_run_of_other_settings(done_run, data_root, tmp_path):
    """refuse_replacing, the rule of the train notebook and the trees study: a run of another
    config is refused with its difference and the caller's remedy; the same config (reuse,
    resume) and an empty folder pass."""
    out = tmp_path / "run"
    shutil.copytree(done_run, out)
    other = tiny_cfg(data_root, "max_iter=5", "eval_at_end=true")
    action, why = integrity.train_action(out, other)
    with pytest.raises(DynrcnnError, match=r"run already holds a run that this one would replace "
                                           r"\(.*another config \(max_iter: 4 -> 5\)\); move it away$"):
        integrity.refuse_replacing(out, action, why, "move it away")
    same = runs.read_config(out)
    integrity.refuse_replacing(out, *integrity.train_action(out, same), "move it away")
    empty = tmp_path / "empty"
    integrity.refuse_replacing(empty, *integrity.train_action(empty, other), "move it away")
    assert snapshot(out) == snapshot(done_run)


def test_atomic_write_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "last.pth"
    target.mkdir()  # the final rename fails
    with pytest.raises(DynrcnnError, match=r"cannot write last.pth"):
        atomic_write_bytes(target, b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]


def test_runs_listing_survives_a_torn_config(done_run, tmp_path, capsys):
    from dynrcnn.cli import main

    shutil.copytree(done_run, tmp_path / "good")
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / runs.CONFIG).write_text('{"method": "dyn')
    assert main(["runs", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "good" in captured.out and "skipped" in captured.err and "torn" in captured.err


# ---- every bad input: exit code 2, one line `error: ...`, no file changed


def _other_classes(root, tmp):
    """A copy of ``root`` whose annotations have one category less."""
    other = tmp / "fewer_classes"
    shutil.copytree(root, other)
    for split in ("train", "val"):
        path = other / "annotations" / f"instances_{split}.json"
        d = json.loads(path.read_text())
        drop = d["categories"][-1]["id"]
        d["categories"] = d["categories"][:-1]
        d["annotations"] = [a for a in d["annotations"] if a["category_id"] != drop]
        path.write_text(json.dumps(d))
    return other


def _broken_image(root, tmp):
    """A copy of ``root`` with a truncated training image (found by a data-loader worker)."""
    other = tmp / "broken"
    shutil.copytree(root, other)
    for p in (other / "train").glob("*.png"):
        p.write_bytes(p.read_bytes()[:100])
    return other


TRAIN = ["train", "--preset", "mini_smoke", "--no-progress", "--set", "max_iter=4", "--set", "ims_per_batch=2",
         "--set", "model.min_size=64", "--set", "model.max_size=64", "--set", "num_workers=0",
         "--set", "eval_at_end=false", "--set", "checkpoint_period=4", "--set", "log_period=2",
         "--set", "dynamic.interval=2", "--set", "warmup_iters=2", "--set", "lr_steps=3"]

BAD_INPUTS = {
    # id: (argv built from (data_root, run, tmp), what the error line says)
    "checkpoint_period=0": (lambda d, r, t: TRAIN + ["--data-root", d, "--out", t / "new", "--set",
                                                     "checkpoint_period=0"], "checkpoint_period must be >= 1"),
    "log_period=0": (lambda d, r, t: TRAIN + ["--data-root", d, "--out", t / "new", "--set", "log_period=0"],
                     "log_period must be >= 1"),
    "num_workers=-1": (lambda d, r, t: TRAIN + ["--data-root", d, "--out", t / "new", "--set", "num_workers=-1"],
                       "num_workers must be >= 0"),
    "unknown --set key": (lambda d, r, t: TRAIN + ["--data-root", d, "--out", t / "new", "--set", "seeed=1"],
                          "did you mean 'seed'"),
    "--device without a GPU": (lambda d, r, t: TRAIN + ["--data-root", d, "--out", t / "new", "--device", "cuda"],
                               "no usable CUDA GPU"),
    "--out is a file": (lambda d, r, t: TRAIN + ["--data-root", d, "--out", r / runs.CONFIG], "is a file"),
    "fresh start over a run": (lambda d, r, t: TRAIN + ["--data-root", d, "--out", r], "already holds a run"),
    "--resume with other settings": (lambda d, r, t: TRAIN + ["--data-root", d, "--out", r, "--resume",
                                                              "--seed", "5"], "would change what"),
    "--resume and --overwrite": (lambda d, r, t: TRAIN + ["--data-root", d, "--out", r, "--resume", "--overwrite"],
                                 "pass one of them"),
    "eval on data with other classes": (lambda d, r, t: ["eval", r, "--no-progress", "--data-root",
                                                         _other_classes(d, t)], "the checkpoint predicts"),
    "eval name clash": (lambda d, r, t: ["eval", r, "--no-progress", "--data-root", t / "x" / "mini"],
                        "already holds results on"),
    "bad --base-url": (lambda d, r, t: ["data", "coco", "--root", t / "coco", "--base-url", "images.example.org",
                                        "--quiet"], "is not an http(s)://"),
    "data mini over foreign files": (lambda d, r, t: ["data", "mini", "--out", r, "--quiet"],
                                     "did not write"),
    "data-loader worker error": (lambda d, r, t: TRAIN + ["--data-root", _broken_image(d, t), "--out", t / "new",
                                                          "--set", "num_workers=1"], "cannot be read"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gives_one_error_line_and_changes_nothing(case, done_run, data_root, tmp_path, capsys):
    import torch

    from dynrcnn.cli import main

    if case == "--device without a GPU" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    run = tmp_path / "run"
    shutil.copytree(done_run, run)
    (run / "eval-mini.json").write_text(json.dumps({"data_root": "/elsewhere/mini"}))  # for the name clash
    (tmp_path / "x").mkdir()
    shutil.copytree(data_root, tmp_path / "x" / "mini")
    make_argv, says = BAD_INPUTS[case]
    argv = [str(a) for a in make_argv(str(data_root), run, tmp_path)]
    before = {"run": snapshot(run), "data": snapshot(data_root)}
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], err
    assert "Traceback" not in err
    assert {"run": snapshot(run), "data": snapshot(data_root)} == before
    assert not (tmp_path / "new" / runs.CONFIG).exists() or case == "data-loader worker error"


def test_report_outputs_go_under_root(tmp_path, monkeypatch):
    """Outside the checkout the report writes under the working directory (or --root), never
    into the source checkout (the notebooks themselves are stubbed out here)."""
    from dynrcnn.report import pipeline, study
    from dynrcnn.report.studies import record

    seen = {}
    monkeypatch.setattr(pipeline, "prepare_backbone", lambda *a, **k: [])
    monkeypatch.setattr(study, "_run_steps", lambda steps, *a: seen.update(steps=steps))
    monkeypatch.setattr(record, "notebook_durations", lambda out: {})
    monkeypatch.setattr(record, "write_index", lambda *a: None)
    monkeypatch.setattr(record, "results", lambda *a, **k: {})
    monkeypatch.setattr(record, "readme_blocks", lambda readme, *a, **k: seen.update(readme=readme) or {})
    monkeypatch.setattr(study, "execute_notebook", lambda src, out, *a, **k: out)
    monkeypatch.setattr(study, "render_html", lambda nb: nb.with_suffix(".html"))
    monkeypatch.chdir(tmp_path)
    for root, where in ((None, tmp_path), (tmp_path / "elsewhere", tmp_path / "elsewhere")):
        result = record.run_pipeline("mini", progress=False, root=root)
        assert result.out == where / "build" / "report" and result.runs_root == where / "runs" / "mini"
        assert result.figures_dir == where / "figures" and seen["readme"] == where / "README.md"
        assert (where / "figures" / "results.json").is_file()  # written by the runner, not the notebook
        assert {s.params["data_root"] for s in seen["steps"] if "data_root" in s.params} == {str(where / "data" / "mini")}
    monkeypatch.chdir(pipeline.REPO)
    assert pipeline.report_root() == pipeline.REPO


def test_refused_train_leaves_no_folder_it_created_and_keeps_one_it_did_not(tmp_path, capsys):
    from dynrcnn import cli

    new = tmp_path / "runs" / "new_run"
    assert cli.main(["train", "--preset", "mini_smoke", "--data-root", str(tmp_path / "missing"), "--out", str(new)]) == 2
    assert "missing does not exist" in capsys.readouterr().err and not (tmp_path / "runs").exists()  # before anything
    (tmp_path / "nope" / "annotations").mkdir(parents=True)  # a data folder only the engine finds unusable
    (tmp_path / "nope" / "annotations" / "instances_train.json").write_text("{}")
    argv = ["train", "--preset", "mini_smoke", "--data-root", str(tmp_path / "nope"), "--no-progress"]
    assert cli.main(argv + ["--out", str(new)]) == 2
    assert "nope" in capsys.readouterr().err
    assert not new.exists() and (tmp_path / "runs").is_dir()  # only what train created is removed
    mine = tmp_path / "mine"
    mine.mkdir()
    assert cli.main(argv + ["--out", str(mine)]) == 2
    assert mine.is_dir() and list(mine.iterdir()) == []
