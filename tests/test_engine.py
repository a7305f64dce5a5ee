"""Training engine: run directory, logs, checkpoints, exact resume, refusals."""

import json
import shutil

import pytest
import torch

from dynrcnn.checkpoint.state import find_resume_checkpoint, read_checkpoint
from dynrcnn.config import apply_overrides
from dynrcnn.engine.trainer import train, train_model
from dynrcnn.errors import CheckpointError, DynrcnnError
from dynrcnn.modeling.model import dynamic_head
from dynrcnn.presets import get_preset
from dynrcnn.rundir.runs import LOG_FILES, load_run
from dynrcnn.io import read_jsonl, truncate_jsonl

TINY = ["max_iter=8", "dynamic.interval=2", "checkpoint_period=4", "log_period=2", "model.min_size=64",
        "model.max_size=64", "ims_per_batch=2", "num_workers=0", "eval_at_end=false", "warmup_iters=2",
        "lr_steps=6", "model.rpn_pre_nms_top_n_train=200", "model.rpn_post_nms_top_n_train=100",
        "model.rpn_pre_nms_top_n_test=100", "model.rpn_post_nms_top_n_test=50"]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    from dynrcnn.data.mini import generate_mini

    root = tmp_path_factory.mktemp("tiny_data")
    generate_mini(root, seed=0, n_train=16, n_val=6, image_size=64, workers=0, progress=False)
    return root


def tiny_cfg(root, *extra, method="dynamic"):
    cfg = get_preset("mini_smoke")
    cfg.method = method
    cfg.data_root = str(root)
    return apply_overrides(cfg, TINY + list(extra))


def assert_state_equal(a, b, path=""):
    assert type(a) is type(b), path
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_state_equal(a[k], b[k], f"{path}.{k}")
    elif torch.is_tensor(a):
        assert a.dtype == b.dtype and torch.equal(a, b), path
    else:
        assert a == b, path


@pytest.fixture(scope="module")
def full_run(tiny_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    return train_model(tiny_cfg(tiny_root, "log_stats=true"), out, progress=False)


def test_run_directory(full_run):
    run = full_run.run_dir
    for name in ("config.json", "env.json", "metrics.jsonl", "dynamic.jsonl", "stats.jsonl",
                 "proposal_ious.jsonl", "train_done.json", "checkpoints/last.pth", "checkpoints/iter_0000004.pth",
                 "checkpoints/iter_0000008.pth"):
        assert (run / name).is_file(), name
    assert not list(run.rglob("*.tmp"))
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["lr"] == pytest.approx(0.01)  # 0.02 at 4 img/iter scaled to 2
    assert cfg["images_per_update"] == 2 * 2 and cfg["world_size"] == 1
    assert cfg["method"] == "dynamic" and cfg["dynamic"]["convention"] == "mmdet"
    env = json.loads((run / "env.json").read_text())
    assert {"python", "torch", "torchvision", "device_name", "num_processes", "git_commit"} <= env.keys()
    metrics = read_jsonl(run / "metrics.jsonl")
    assert [m["iteration"] for m in metrics] == [2, 4, 6, 8]
    for key in ("lr", "loss", "loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg",
                "iou_threshold", "beta", "sec_per_iter", "images_per_sec", "peak_memory_mb", "elapsed_sec"):
        assert key in metrics[0], key
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in metrics)
    dyn = read_jsonl(run / "dynamic.jsonl")
    assert [d["iteration"] for d in dyn] == [0, 2, 4, 6, 8]
    assert dyn[0]["iou_threshold"] == pytest.approx(0.5) and dyn[0]["beta"] == 1.0  # mmdet: the base assigner's 0.5
    assert all(d["num_iou_stats"] == 2 for d in dyn[1:])
    stats = read_jsonl(run / "stats.jsonl")
    assert [s["iteration"] for s in stats] == list(range(1, 9))
    assert all(s["iou_stat"] is not None for s in stats)
    hist = read_jsonl(run / "proposal_ious.jsonl")
    assert [h["iteration"] for h in hist] == [2, 4, 6, 8]
    assert len(hist[0]["bin_edges"]) == 21 and len(hist[0]["counts"]) == 20 and sum(hist[0]["counts"]) > 0
    done = json.loads((run / "train_done.json").read_text())
    assert done["iterations"] == 8 and done["wall_time_sec"] > 0 and done["sec_per_iter_median"] > 0
    ckpt = read_checkpoint(run / "checkpoints" / "last.pth")  # weights_only=True
    assert ckpt["iteration"] == 8 and ckpt["data_position"] == 8
    assert (ckpt["preset"], ckpt["method"], ckpt["convention"]) == ("mini_smoke", "dynamic", "mmdet")
    assert {"model", "optimizer", "scheduler", "rng", "config"} <= ckpt.keys()
    r = load_run(run)
    assert r.method == "dynamic" and r.iterations == 8 and len(r.metrics) == 4 and r.stats is not None


def test_keep_last_n_checkpoints(tiny_root, tmp_path):
    run = train(tiny_cfg(tiny_root, "checkpoint_period=2", "keep_checkpoints=2", "max_iter=6"), tmp_path / "r",
                progress=False)
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["iter_0000004.pth", "iter_0000006.pth", "last.pth"]


def test_exact_resume(full_run, tiny_root, tmp_path):
    cfg = tiny_cfg(tiny_root, "log_stats=true")
    out = tmp_path / "resumed"
    first = train_model(cfg, out, progress=False, stop_after=4)
    assert not first.finished and first.iteration == 4
    assert not (out / "train_done.json").exists()
    second = train_model(tiny_cfg(tiny_root, "log_stats=true"), out, resume=True, progress=False)
    assert second.finished and second.iteration == 8
    assert_state_equal(full_run.model.state_dict(), second.model.state_dict())
    assert dynamic_head(second.model).dynamic_state() == dynamic_head(full_run.model).dynamic_state()
    full = full_run.run_dir
    assert (out / "dynamic.jsonl").read_text() == (full / "dynamic.jsonl").read_text()
    assert (out / "stats.jsonl").read_text() == (full / "stats.jsonl").read_text()
    m1, m2 = read_jsonl(full / "metrics.jsonl"), read_jsonl(out / "metrics.jsonl")
    assert [m["iteration"] for m in m2] == [m["iteration"] for m in m1]
    assert [m["loss"] for m in m2] == [m["loss"] for m in m1]
    a = read_checkpoint(full / "checkpoints" / "last.pth")
    b = read_checkpoint(out / "checkpoints" / "last.pth")
    assert_state_equal(a["optimizer"], b["optimizer"])


def test_resume_after_kill_during_checkpoint_write(full_run, tiny_root, tmp_path):
    out = tmp_path / "killed"
    train_model(tiny_cfg(tiny_root), out, progress=False, stop_after=6)  # iter_4 periodic, last.pth at 6
    last = out / "checkpoints" / "last.pth"
    data = last.read_bytes()
    (out / "checkpoints" / "last.pth.tmp").write_bytes(data[: len(data) // 3])  # torn temporary file
    last.write_bytes(data[: len(data) // 2])  # and a truncated last.pth
    with pytest.warns(RuntimeWarning, match="last.pth"):
        path, ckpt = find_resume_checkpoint(out / "checkpoints")
    assert path.name == "iter_0000004.pth" and ckpt["iteration"] == 4
    with pytest.warns(RuntimeWarning, match="last.pth"):
        result = train_model(tiny_cfg(tiny_root), out, resume=True, progress=False)
    assert result.finished
    assert_state_equal(full_run.model.state_dict(), result.model.state_dict())
    assert (out / "dynamic.jsonl").read_text() == (full_run.run_dir / "dynamic.jsonl").read_text()
    assert [m["iteration"] for m in read_jsonl(out / "metrics.jsonl")] == [2, 4, 6, 8]


def test_a_run_killed_before_its_first_checkpoint_starts_again(full_run, tiny_root, tmp_path):
    """What a kill at iteration 3 leaves (its config, env and first logs; no checkpoint): the notebooks'
    rule restarts it (same config) and the restart equals the uninterrupted run; another config's
    start is not taken over."""
    from dynrcnn.rundir.integrity import train_action

    out = tmp_path / "killed-early"
    shutil.copytree(full_run.run_dir, out)
    shutil.rmtree(out / "checkpoints")
    (out / "train_done.json").unlink()
    for name in LOG_FILES:
        truncate_jsonl(out / name, 2)
    cfg = tiny_cfg(tiny_root, "log_stats=true")
    action, why = train_action(out, cfg)
    assert action == "resume" and "before its first checkpoint" in why
    assert train_action(out, tiny_cfg(tiny_root, "log_stats=true", "max_iter=10"))[0] == "train"
    result = train_model(cfg, out, resume=True, progress=False)
    assert result.finished and result.iteration == 8
    assert_state_equal(full_run.model.state_dict(), result.model.state_dict())
    for name in ("metrics.jsonl", "dynamic.jsonl", "stats.jsonl"):
        got, want = read_jsonl(out / name), read_jsonl(full_run.run_dir / name)
        assert [(r["iteration"], r.get("loss"), r.get("iou_threshold")) for r in got] == \
            [(r["iteration"], r.get("loss"), r.get("iou_threshold")) for r in want], name
    assert train_action(out, cfg)[0] == "reuse"


def test_refuses_checkpoint_of_other_method(full_run, tiny_root, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(full_run.run_dir, out)
    with pytest.raises(CheckpointError, match="method 'dynamic'.*'baseline'"):
        train(tiny_cfg(tiny_root, method="baseline"), out, resume=True, progress=False)
    with pytest.raises(CheckpointError, match="convention 'mmdet'.*'official'"):
        train(tiny_cfg(tiny_root, "dynamic.convention=official"), out, resume=True, progress=False)
    # a fresh start over an existing run is refused too
    with pytest.raises(DynrcnnError, match="--resume"):
        train(tiny_cfg(tiny_root), out, progress=False)


def test_all_checkpoints_damaged(tmp_path):
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    (ckpts / "last.pth").write_bytes(b"garbage")
    with pytest.warns(RuntimeWarning), pytest.raises(CheckpointError, match="no readable checkpoint"):
        find_resume_checkpoint(ckpts)


def test_baseline_logs_fixed_values_once(tiny_root, tmp_path):
    run = train(tiny_cfg(tiny_root, "max_iter=4", method="baseline"), tmp_path / "b", progress=False)
    dyn = read_jsonl(run / "dynamic.jsonl")
    assert dyn == [{"iteration": 0, "iou_threshold": 0.5, "beta": 1.0, "num_iou_stats": 0, "num_beta_stats": 0,
                    "fixed": True}]


def test_resuming_a_finished_run_keeps_results(full_run, tiny_root, tmp_path):
    out = tmp_path / "again"
    shutil.copytree(full_run.run_dir, out)
    before = (out / "train_done.json").read_text()
    result = train_model(tiny_cfg(tiny_root, "log_stats=true"), out, resume=True, progress=False)
    assert result.finished and result.iteration == 8
    assert (out / "train_done.json").read_text() == before
    assert (out / "dynamic.jsonl").read_text() == (full_run.run_dir / "dynamic.jsonl").read_text()


def test_validation_during_training_keeps_the_best_and_changes_no_weight(full_run, tiny_root, tmp_path):
    """eval_period: val_* numbers in metrics.jsonl, best.pth by best_metric, resumable; the trained
    weights equal those of the same run without validation (it restores the random state)."""
    out = tmp_path / "val"
    first = train_model(tiny_cfg(tiny_root, "log_stats=true", "eval_period=4", "best_metric=AP50"), out,
                        progress=False, stop_after=4)
    assert first.iteration == 4 and (out / "checkpoints" / "best.pth").is_file()
    best = json.loads((out / "checkpoints" / "best.json").read_text())
    assert best["iteration"] == 4 and best["metric"] == "AP50" and best["value"] == best["val_AP50"]
    second = train_model(tiny_cfg(tiny_root, "log_stats=true", "eval_period=4", "best_metric=AP50"), out,
                         resume=True, progress=False)
    assert second.finished
    assert_state_equal(full_run.model.state_dict(), second.model.state_dict())  # validation changed nothing
    rows = [m for m in read_jsonl(out / "metrics.jsonl") if "val_AP" in m]
    assert [m["val_iteration"] for m in rows] == [4, 8] and all(0 <= m["val_AP90"] <= 100 for m in rows)
    after = json.loads((out / "checkpoints" / "best.json").read_text())
    assert after["value"] == max(m["val_AP50"] for m in rows)  # the best of both, across the resume
    assert read_checkpoint(out / "checkpoints" / "best.pth")["iteration"] == after["iteration"]


def test_the_wandb_tracker_logs_offline_without_a_key(tiny_root, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    logged = []
    import wandb

    real_init = wandb.init

    def init(**kw):
        run = real_init(**kw)
        log = run.log
        run.log = lambda data, step=None: (logged.append((step, dict(data))), log(data, step=step))[1]
        return run

    monkeypatch.setattr(wandb, "init", init)
    out = tmp_path / "tracked"
    train_model(tiny_cfg(tiny_root, "tracker=wandb", "max_iter=4"), out, progress=False)
    runs_dir = list((out / "wandb").glob("offline-run-*"))
    assert len(runs_dir) == 1 and list(runs_dir[0].glob("*.wandb"))[0].stat().st_size > 0
    steps = {s for s, d in logged if "loss" in d}
    assert steps == {2, 4}  # every metrics.jsonl record (log_period 2)
    assert any("dynamic/iou_threshold" in d for _, d in logged) and any("lr" in d for _, d in logged)
