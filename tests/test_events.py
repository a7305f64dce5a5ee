"""The event storage and the writer: what hooks put is what the run's logs hold."""

import json
import math

from dynrcnn.engine.events import EventStorage
from dynrcnn.engine.hooks import HookBase, WriterHook, default_hooks
from dynrcnn.engine.trainer import insert_hooks
from dynrcnn.engine.writers import METRICS_HEAD, METRICS_TAIL, JsonlWriters, metrics_record
from dynrcnn.io import JsonlWriter, read_jsonl
from dynrcnn.presets import get_preset


def test_scalars_latest_and_history():
    s = EventStorage(start_iter=10)
    s.step()
    assert s.iter == 11
    s.put_scalar("loss", 2)
    s.put_scalar("lr", 0.1)
    s.step(14)
    s.put_scalars(loss=1.5, val_AP=None)
    assert s.latest() == {"loss": (1.5, 14), "lr": (0.1, 11), "val_AP": (None, 14)}
    assert list(s.latest()) == ["loss", "lr", "val_AP"]  # the order names were first put
    assert s.history("loss") == [(11, 2), (14, 1.5)] and s.history("missing") == []
    assert isinstance(s.history("loss")[0][1], int)  # integers stay integers (e.g. val_iteration)
    assert s.latest_at() == {"loss": 1.5, "val_AP": None}
    assert s.latest_at(11) == {"lr": 0.1}
    assert s.latest_since(11) == {"loss": 1.5, "val_AP": None}
    s.put_scalar("sec", math.nan)
    s.put_scalar("sec", 3.0)
    assert s.values("sec") == [3.0]  # finite values only


def test_records_are_popped_in_order():
    s = EventStorage()
    s.put_record("dynamic", {"iteration": 0})
    s.put_record("dynamic", {"iteration": 2})
    s.put_record("stats", {"iteration": 1})
    assert s.streams() == ["dynamic", "stats"]
    assert s.pop_records("dynamic") == [{"iteration": 0}, {"iteration": 2}]
    assert s.pop_records("dynamic") == [] and s.streams() == ["stats"]


def test_metrics_record_keeps_the_file_order():
    s = EventStorage()
    s.step(3)
    s.put_scalars(val_iteration=3, val_AP=0.25)  # a validation between two logs
    s.step(4)
    s.put_scalars(**{k: 1.0 for k in (*METRICS_TAIL, *reversed(METRICS_HEAD))})  # any put order
    rec = metrics_record(s, 4, since=2)
    assert list(rec) == ["iteration", *METRICS_HEAD, "val_iteration", "val_AP", *METRICS_TAIL]
    assert rec["val_iteration"] == 3 and rec["val_AP"] == 0.25
    s.step(6)
    s.put_scalars(loss=0.5)
    rec = metrics_record(s, 6, since=4)  # val_* of iteration 3 were written at 4: not again
    assert "val_AP" not in rec and rec["loss"] == 0.5 and rec["lr"] is None


class _Trainer:
    """The trainer as the writer sees it: storage, flush, the logging settings."""

    def __init__(self, hooks, log_period=2, end_iter=4):
        self.storage = EventStorage()
        self.hooks = hooks
        self.cfg = type("Cfg", (), {"log_period": log_period})()
        self.iteration = self.start_iter = 0
        self.end_iter = end_iter

    def flush(self):
        for h in self.hooks:
            h.flush(self)


class ScalarHook(HookBase):
    """A user hook: one scalar per iteration, one record per flush."""

    def after_step(self, t):
        t.storage.put_scalar("my_metric", t.iteration * 10)

    def flush(self, t):
        t.storage.put_record("dynamic", {"iteration": t.iteration, "flushed": True})


def test_a_hook_scalar_reaches_the_jsonl_writer(tmp_path):
    writer = WriterHook()
    t = _Trainer([ScalarHook(), writer])
    writer.writers = [JsonlWriters({"metrics": JsonlWriter(tmp_path / "metrics.jsonl"),
                                    "dynamic": JsonlWriter(tmp_path / "dynamic.jsonl")})]
    for t.iteration in range(1, t.end_iter + 1):
        t.storage.step(t.iteration)
        for h in t.hooks:
            h.after_step(t)
    writer.after_train(t)
    metrics = read_jsonl(tmp_path / "metrics.jsonl")
    assert [(r["iteration"], r["my_metric"]) for r in metrics] == [(2, 20), (4, 40)]  # logged every 2
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["loss"] is None
    assert read_jsonl(tmp_path / "dynamic.jsonl") == [{"iteration": 2, "flushed": True},
                                                      {"iteration": 4, "flushed": True}]


def test_caller_hooks_run_before_the_writer():
    mine = ScalarHook()
    hooks = insert_hooks(default_hooks(get_preset("mini_smoke"), main=True), [mine])
    names = [type(h).__name__ for h in hooks]
    assert names.index("ScalarHook") == names.index("WriterHook") - 1
    assert names.index("LogHook") < names.index("WriterHook") < names.index("CheckpointHook")


def tiny_config(tmp_path):
    """A two-iteration training on four 64 px images generated under ``tmp_path / "data"``."""
    from dynrcnn.config import apply_overrides
    from dynrcnn.data.mini import generate_mini

    generate_mini(tmp_path / "data", seed=0, n_train=4, n_val=2, image_size=64, workers=0, progress=False)
    cfg = get_preset("mini_smoke")
    cfg.data_root = str(tmp_path / "data")
    cfg = apply_overrides(cfg, ["max_iter=2", "log_period=1", "checkpoint_period=2", "model.min_size=64",
                                "model.max_size=64", "ims_per_batch=2", "num_workers=0", "eval_at_end=false",
                                "warmup_iters=1", "model.rpn_pre_nms_top_n_train=100",
                                "model.rpn_post_nms_top_n_train=50"])
    return cfg


def test_train_model_writes_a_caller_hooks_scalar(tmp_path):
    from dynrcnn.engine.trainer import train_model

    cfg = tiny_config(tmp_path)
    out = train_model(cfg, tmp_path / "run", progress=False, hooks=[ScalarHook()]).run_dir
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [(r["iteration"], r["my_metric"]) for r in metrics] == [(1, 10), (2, 20)]
    assert list(metrics[0])[-5:] == ["my_metric", *METRICS_TAIL]  # between the losses and the timing
    assert [r.get("flushed") for r in read_jsonl(out / "dynamic.jsonl")][-1] is True


class BallastHook(HookBase):
    """Holds ``mb`` MiB of touched memory from the first step to the end of the run."""

    def __init__(self, mb: int):
        self.mb, self.ballast = mb, None

    def after_step(self, t):
        import numpy as np

        if self.ballast is None:
            self.ballast = np.ones(self.mb * 2**20 // 8)

    def after_train(self, t):
        self.ballast = None


def test_peak_memory_is_the_runs_own_when_runs_share_a_process(tmp_path, monkeypatch):
    """Two runs trained one after the other in one process (a kernel, a study's driver): the second
    logs its own peak, not the first's 400 MiB more."""
    import torch

    from dynrcnn.engine import hooks
    from dynrcnn.engine.trainer import train_model

    cpu = torch.device("cpu")
    if hooks.reset_peak_memory(cpu) != "run":
        import pytest

        pytest.skip("no /proc/self/clear_refs: the peak is the process's")
    cfg = tiny_config(tmp_path)
    heavy = train_model(cfg, tmp_path / "heavy", progress=False, hooks=[BallastHook(400)]).run_dir
    light = train_model(cfg, tmp_path / "light", progress=False).run_dir
    peak = {run.name: max(r["peak_memory_mb"] for r in read_jsonl(run / "metrics.jsonl")) for run in (heavy, light)}
    assert peak["heavy"] - peak["light"] > 300, peak
    assert json.loads((light / "train_done.json").read_text())["peak_memory_scope"] == "run"
    # where the high-water mark cannot be reset, the run says its peak is the process's
    monkeypatch.setattr(hooks, "PROC_CLEAR_REFS", str(tmp_path / "no" / "clear_refs"))
    assert hooks.reset_peak_memory(cpu) == "process"
