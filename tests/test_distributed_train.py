"""Distributed training with 2 gloo processes on CPU: both ranks end identical."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from dynrcnn.io import read_jsonl


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, root, out, result_dir):
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    from dynrcnn.config import apply_overrides
    from dynrcnn.engine.trainer import train_model
    from dynrcnn.modeling.model import dynamic_head
    from dynrcnn.presets import get_preset

    cfg = get_preset("mini_smoke")
    cfg.data_root = root
    apply_overrides(cfg, ["max_iter=6", "dynamic.interval=2", "checkpoint_period=3", "log_period=2",
                          "model.min_size=64", "model.max_size=64", "ims_per_batch=2", "num_workers=0",
                          "eval_at_end=false", "model.rpn_post_nms_top_n_train=100"])
    result = train_model(cfg, out, progress=False)
    torch.save({"model": result.model.state_dict(), "dynamic": dynamic_head(result.model).dynamic_state(),
                "initialized": torch.distributed.is_initialized()},
               os.path.join(result_dir, f"rank{rank}.pt"))


def test_two_gloo_ranks_end_identical(tmp_path):
    from dynrcnn.data.mini import generate_mini

    root = tmp_path / "data"
    generate_mini(root, seed=0, n_train=12, n_val=2, image_size=64, workers=0, progress=False)
    out = tmp_path / "run"
    mp.spawn(_worker, args=(2, _free_port(), str(root), str(out), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert not r0["initialized"] and not r1["initialized"]  # the group was torn down
    sd0, sd1 = r0["model"], r1["model"]
    assert sd0.keys() == sd1.keys()
    for k in sd0:
        a, b = sd0[k], sd1[k]
        if torch.is_tensor(a):
            assert torch.equal(a, b), k
    assert r0["dynamic"] == r1["dynamic"]
    assert r0["dynamic"]["iteration"] == 6 and r0["dynamic"]["num_updates"] == 3
    # only rank 0 wrote the run directory; statistics of both ranks fed every update
    cfg = (out / "config.json").read_text()
    assert '"world_size": 2' in cfg
    dyn = read_jsonl(out / "dynamic.jsonl")
    assert [d["iteration"] for d in dyn] == [0, 2, 4, 6]
    assert all(d["num_iou_stats"] == 4 for d in dyn[1:])
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["iter_0000003.pth", "iter_0000006.pth",
                                                                       "last.pth"]
    ckpt = torch.load(out / "checkpoints" / "last.pth", weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]["ranks"]) == 2


def test_batch_must_divide_world_size(monkeypatch, tmp_path):
    from dynrcnn.presets import get_preset
    from dynrcnn.engine.trainer import train
    from dynrcnn.errors import ConfigError
    import dynrcnn.engine.trainer as engine

    monkeypatch.setattr(engine, "setup_distributed", lambda device: engine.DistInfo(0, 2, 0, False))
    cfg = get_preset("mini_smoke")
    cfg.ims_per_batch = 3
    with pytest.raises(ConfigError, match="not divisible"):
        train(cfg, tmp_path / "x", progress=False)


def test_two_nodes_of_one_process_rendezvous_on_loopback(tmp_path):
    """docs/gpu.md's multi-node command (torchrun --nnodes 2, c10d rendezvous) with both 'nodes' on this
    machine: one run directory, written by rank 0, whose updates pooled both ranks' statistics."""
    import subprocess
    import sys

    from dynrcnn.data.mini import generate_mini

    root = tmp_path / "data"
    generate_mini(root, seed=0, n_train=12, n_val=2, image_size=64, workers=0, progress=False)
    out = tmp_path / "run"
    port = _free_port()
    train = ["-m", "dynrcnn", "train", "--preset", "mini_smoke", "--method", "dynamic", "--data-root", str(root),
             "--out", str(out), "--device", "cpu", "--no-progress",
             *[a for s in ("max_iter=4", "dynamic.interval=2", "checkpoint_period=4", "log_period=2",
                           "model.min_size=64", "model.max_size=64", "ims_per_batch=2", "num_workers=0",
                           "eval_at_end=false", "model.rpn_post_nms_top_n_train=100") for a in ("--set", s)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node",
                               "1", "--node-rank", str(node), "--rdzv-backend", "c10d", "--rdzv-endpoint",
                               f"127.0.0.1:{port}", "--rdzv-id", "dynrcnn-test", *train],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for node in (0, 1)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    assert '"world_size": 2' in (out / "config.json").read_text()
    dyn = read_jsonl(out / "dynamic.jsonl")
    assert [d["iteration"] for d in dyn] == [0, 2, 4]
    assert all(d["num_iou_stats"] == 4 for d in dyn[1:])  # 2 iterations x (1 image on each of 2 nodes)
