"""Two gloo processes see different data yet end with the same threshold and beta."""

import statistics

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.test_dynamic_head import IMAGE1, IMAGE2, box, make_head, step

RANK_DATA = {0: (IMAGE1, IMAGE2), 1: ([box(9.5), box(7.5), box(2)], [box(8.5), box(6.5), box(5.5)])}


def _local_records(convention):
    """Each rank's raw statistics, computed without torch.distributed."""
    iou, err = [], []
    for rank in (0, 1):
        head = make_head(convention=convention, interval=100)
        head.record_raw_stats = True
        for _ in range(2):
            step(head, RANK_DATA[rank])
            iou.append(float(head.last_stats["iou"]))
            err.append(float(head.last_stats["error"]))
    return iou, err


def _worker(rank, init_file, convention, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        head = make_head(convention=convention, interval=2)
        for _ in range(2):
            step(head, RANK_DATA[rank])
        torch.save({"iou": head.iou_threshold.clone(), "beta": head.beta.clone()}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("convention", ["mmdet", "official"])
def test_ranks_agree_on_threshold_and_beta(tmp_path, convention):
    out = tmp_path / "state"
    mp.spawn(_worker, args=(str(tmp_path / "init"), convention, str(out)), nprocs=2, join=True)
    r0 = torch.load(f"{out}.0", weights_only=True)
    r1 = torch.load(f"{out}.1", weights_only=True)
    assert torch.equal(r0["iou"], r1["iou"]) and torch.equal(r0["beta"], r1["beta"])
    iou, err = _local_records(convention)
    assert len(set(round(v, 6) for v in iou)) > 1  # the ranks really saw different statistics
    assert float(r0["iou"]) == pytest.approx(max(0.4, statistics.mean(iou)), abs=1e-6)
    # the pooled record's median as each convention's reference takes it: numpy's (mean of the
    # two middle values) for mmdet, sorted(record)[len // 2] for official
    median = statistics.median(err) if convention == "mmdet" else sorted(err)[len(err) // 2]
    assert float(r0["beta"]) == pytest.approx(min(1.0, median), rel=1e-5)
