"""Ours against MMDetection per training iteration, side by side on one machine.

The report's MMDetection section compared the two implementations' speed from two separate
studies. Here both train at the same time, one process and one thread each (the report's own
layout: two runs side by side), on the same data, preset, backbone and method, for several
rounds; each round gives the ratio of the medians of seconds per iteration (ours /
MMDetection), skipping the first ``--warmup`` iterations. MMDetection is about half as fast,
so ours trains twice as many iterations per round: both are then busy for about the same wall
time and neither runs alone on a freed core.

Needs the miniature benchmark and the pretrained backbone (``make report`` builds both) and the
peer environment (``make mmdet-env``)::

    .venv/bin/python benchmarks/vs_mmdet.py --data-root data/mini \\
        --backbone data/pretrained/backbone-mini_pretrain-<sha>.pth --rounds 3

Prints the machine, each round's medians and ratio, and min / median / max of the ratios; with
``--page docs/performance.md`` also writes them into that page's ``VS-MMDET`` block.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from step import DOC_PAGE  # noqa: E402  (the performance page, named once in the sibling benchmark)

PEER_PYTHON = REPO / ".venv-mmdet" / "bin" / "python"
PEER_SCRIPT = REPO / "peer_mmdet" / "train.py"
PEER_METHOD = {"baseline": "faster", "dynamic": "dynamic"}
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
BLOCK = "VS-MMDET"  # the marked block of --page this script writes
HEADLINE = "VS-MMDET-HEADLINE"  # README's line of it (--readme)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--data-root", required=True, metavar="DIR", help="the miniature benchmark (make report)")
    p.add_argument("--backbone", required=True, metavar="FILE", help="the pretrained backbone file both start from")
    p.add_argument("--preset", default="mini_long", help="the report of record's preset (default mini_long)")
    p.add_argument("--method", default="dynamic", choices=tuple(PEER_METHOD))
    p.add_argument("--iters", type=int, default=80, help="MMDetection's iterations per round (ours: twice)")
    p.add_argument("--warmup", type=int, default=20, help="iterations skipped at the start of each run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--peer-python", default=str(PEER_PYTHON), metavar="PYTHON")
    p.add_argument("--page", default=None, help=f"also write the result into this page's {BLOCK} block ({DOC_PAGE})")
    p.add_argument("--readme", default=None, help=f"also write the one-line summary into this file's {HEADLINE} "
                                                  "block (README.md)")
    return p.parse_args(argv)


def per_iteration(metrics_file: Path, warmup: int) -> float:
    """Median seconds per iteration over the logged periods after ``warmup`` iterations
    (``metrics.jsonl``: ``sec_per_iter`` of each logging period, in both implementations)."""
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    times = [float(r["sec_per_iter"]) for r in rows if r.get("sec_per_iter") and int(r["iteration"]) > warmup]
    if not times:
        raise SystemExit(f"{metrics_file}: no sec_per_iter after iteration {warmup}")
    return statistics.median(times)


def one_round(args, work: Path, seed: int) -> tuple[float, float]:
    ours_dir, peer_dir = work / f"ours_{seed}", work / f"mmdet_{seed}"
    common = ["model.rpn_nms_thresh=0.85", f"model.backbone_weights={Path(args.backbone).resolve()}", "log_period=10"]
    ours = [sys.executable, "-m", "dynrcnn", "train", "--preset", args.preset, "--method", args.method,
            "--data-root", args.data_root, "--out", str(ours_dir), "--seed", str(seed), "--no-progress",
            "--no-build-backbone", *[a for o in (*common, f"max_iter={2 * args.iters}", "eval_at_end=false",
                                                   "checkpoint_period=100000") for a in ("--set", o)]]
    peer = [args.peer_python, str(PEER_SCRIPT), "--method", PEER_METHOD[args.method], "--seed", str(seed),
            "--data-root", args.data_root, "--backbone", args.backbone, "--out", str(peer_dir), "--threads", "1",
            "--preset", args.preset, "--max-iters", str(args.iters), "--set", "log_period=10"]
    env = {**os.environ, **ONE_THREAD}
    logs = [open(work / f"{name}_{seed}.log", "w") for name in ("ours", "mmdet")]
    procs = [subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
             for cmd, log in zip((ours, peer), logs)]
    for proc, log, name in zip(procs, logs, ("ours", "mmdet")):
        if proc.wait() != 0:
            raise SystemExit(f"{name} failed (exit {proc.returncode}); log {log.name}")
        log.close()
    return per_iteration(ours_dir / "metrics.jsonl", args.warmup), per_iteration(peer_dir / "metrics.jsonl", args.warmup)


def main(argv=None) -> int:
    args = parse_args(argv)
    for path, what in ((Path(args.peer_python), "the peer environment (make mmdet-env)"),
                       (Path(args.backbone), "the backbone file"), (Path(args.data_root), "the data root")):
        if not path.exists():
            raise SystemExit(f"{path} not found: {what} is needed")
    from dynrcnn.rundir.environment import cpu_model, machine_line

    machine = (f"{machine_line(os.getloadavg()[0])}, "
               f"{platform.platform()}")
    print(f"machine: {machine}; one thread per process, the two side by side; preset {args.preset}, "
          f"method {args.method}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="vs_mmdet_") as tmp:
        for r in range(args.rounds):
            ours, theirs = one_round(args, Path(tmp), r)
            rows.append((ours, theirs, ours / theirs))
            print(f"round {r}: ours {ours:.3f} s/iter, MMDetection {theirs:.3f} s/iter, ours / MMDetection "
                  f"x{ours / theirs:.2f}")
    ratios = [x[2] for x in rows]
    summary = (f"ours / MMDetection per training iteration over {len(ratios)} rounds: min x{min(ratios):.2f}, "
               f"median x{statistics.median(ratios):.2f}, max x{max(ratios):.2f}")
    print(summary)
    from dynrcnn.report.text import write_page_block

    if args.page:
        lines = [f"Machine: {machine}. Preset `{args.preset}`, method `{args.method}`, RPN NMS 0.85, the same data and "
                 f"pretrained backbone; one thread per process, the two trained at the same time; per round the "
                 f"median seconds per iteration after {args.warmup} iterations (ours trains {2 * args.iters} "
                 f"iterations, MMDetection {args.iters}, so that both are busy for about the same time).", "",
                 "| round | ours s / iteration | MMDetection s / iteration | ours / MMDetection |", "|---|---|---|---|",
                 *[f"| {i} | {o:.3f} | {t:.3f} | x{q:.2f} |" for i, (o, t, q) in enumerate(rows)], "",
                 f"{summary[0].upper()}{summary[1:]}.", "",
                 # the command a reader of the page runs: make report's own data and backbone folders
                 f"Re-measure: `.venv/bin/python benchmarks/vs_mmdet.py --data-root data/mini --backbone "
                 f"data/pretrained/{Path(args.backbone).name} --rounds {args.rounds} --page {args.page}` (after "
                 "`make report` and `make mmdet-env`)."]
        if write_page_block(args.page, BLOCK, "\n".join(lines)):
            return 2
    if args.readme:
        page = args.page or DOC_PAGE
        line = (f"- **Speed against MMDetection**: ours / MMDetection per training iteration, the two trained side by "
                f"side on one thread each ({args.preset}, {cpu_model()}): median x{statistics.median(ratios):.2f} "
                f"over {len(ratios)} rounds (min x{min(ratios):.2f}, max x{max(ratios):.2f}); `benchmarks/vs_mmdet.py`, "
                f"[{page}]({page}#ours-against-mmdetection-side-by-side).")
        if write_page_block(args.readme, HEADLINE, line):
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
