"""The checks that need a GPU, prepared as one script for a lent accelerator.

CI has no GPU, so the CUDA paths (training under AMP with bf16 autocast or fp16 and a gradient
scaler, the R50-FPN step at the paper's 800 px) have never run in this project's CI. A session
that is lent a GPU gets about 15 minutes of it: this script spends them in one call, most
important first, and writes each step's result to ``OUT/device_check.json`` as soon as the step
ends (a call stopped at its time limit keeps what finished):

1. the environment: torch, torchvision, the device;
2. CUDA training with AMP on the miniature benchmark (drawn on the device): ``mini_long`` at RPN
   NMS 0.85, the baseline and Dynamic R-CNN under bf16 autocast and Dynamic R-CNN under fp16 with
   the gradient scaler, the three side by side, each evaluated at its end; per run: seconds per
   iteration, AP, AP90, the final IoU threshold and SmoothL1 beta, and whether every logged loss
   is finite;
3. the training step of the paper's model, ``benchmarks/step.py --device cuda --arch r50_fpn
   --size 800 --images 2``, fp32 against bf16 autocast and channels-last.

The device machine has PyTorch but not pycocotools, and cannot reach PyPI; its runs start from the
pretrained backbone ``make report`` builds here. So first, here (after ``make report``)::

    .venv/bin/python benchmarks/device_check.py --prepare

puts pycocotools' wheel for the device's Python and the backbone into ``.device-carry/`` (ignored
by git); then the device tool's ``run`` with ``carry: [".device-carry"]``, ``timeout_s`` 540::

    python3 benchmarks/device_check.py --out $OUT

The files come back under the tool's ``files_at``; then, here::

    .venv/bin/python benchmarks/device_check.py --page docs/gpu.md --from FILES_AT/device_check.json

writes them into that page's ``DEVICE-CHECK`` block. ``--smoke`` runs every step on a tiny benchmark for a few iterations (the test suite runs it on
the CPU, so that the script cannot rot while no GPU is lent).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CARRY = REPO / ".device-carry"  # what travels to the device machine (ignored by git)
WHEELS = ("pycocotools==2.0.11",)  # what dynrcnn's train and eval need that the device image lacks
DEVICE_PYTHON = "3.12"  # the device image's Python (the device tool's KINDS.md)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
RESULT = "device_check.json"
BLOCK = "DEVICE-CHECK"  # the marked block of --page this script writes
RPN_NMS = 0.85  # the report's Dynamic R-CNN setting; the baseline compared with it uses the same
# (method, amp) of the training step; the first pair is the report's comparison under bf16
TRAININGS = (("baseline", "bf16"), ("dynamic", "bf16"), ("dynamic", "fp16"))
STEP_VARIANTS = "fp32,bf16,channels_last,bf16+channels_last"


def prepare() -> int:
    """Here: the wheels the device lacks and the pretrained backbone into ``.device-carry/``."""
    from dynrcnn.presets import PRETRAINED_ROOT

    wheels = CARRY / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
           DEVICE_PYTHON, "--implementation", "cp", *[a for p in PLATFORMS for a in ("--platform", p)],
           "-d", str(wheels), *WHEELS]
    subprocess.run(cmd, check=True)
    backbones = sorted((REPO / PRETRAINED_ROOT).glob("backbone-mini_pretrain-*.pth"))
    if not backbones:
        print(f"no backbone-mini_pretrain-*.pth in {PRETRAINED_ROOT}: run `make report` (or `dynrcnn pretrain`) "
              "first", file=sys.stderr)
        return 2
    target = CARRY / "pretrained"
    target.mkdir(exist_ok=True)
    for f in (backbones[-1], backbones[-1].with_suffix(".json")):
        shutil.copy2(f, target / f.name)
    size = sum(f.stat().st_size for f in CARRY.rglob("*") if f.is_file())
    print(f"{CARRY}: {size / 2**20:.1f} MiB to carry (the device tool's limit is 64 MiB)")
    return 0


def child_env(site: Path | None) -> dict:
    """The environment of the steps' processes: this checkout's ``dynrcnn`` importable (it is not
    installed on the device) and the carried wheels' folder, when there is one."""
    paths = [str(REPO), *([str(site)] if site else []), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), "PYTHONUNBUFFERED": "1"}


def install_carried(work: Path) -> Path | None:
    """Install the carried wheels into ``work/site`` when pycocotools is missing; the folder, or None."""
    try:
        import pycocotools  # noqa: F401

        return None
    except ImportError:
        pass
    wheels = sorted((CARRY / "wheels").glob("*.whl"))
    if not wheels:
        raise SystemExit(f"pycocotools is missing and {CARRY / 'wheels'} holds no wheel: run "
                         "`benchmarks/device_check.py --prepare` here and carry .device-carry")
    site = work / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--target", str(site), *map(str, wheels)], check=True)
    return site


class Log:
    """Each step's result into ``out/device_check.json`` as soon as it is known."""

    def __init__(self, out: Path):
        self.path, self.data = out / RESULT, {}

    def put(self, key: str, value) -> None:
        self.data[key] = value
        self.path.write_text(json.dumps(self.data, indent=1, default=str))
        print(f"[{key}] {json.dumps(value, default=str)[:400]}", flush=True)


def start(cmd: list[str], cwd: Path, env: dict, log_file: Path):
    """Start ``cmd`` with its output into ``log_file``: the process, its start time and the file."""
    with open(log_file, "w") as f:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT), time.perf_counter(), log_file


def tail_of(log_file: Path, lines: int = 15) -> str:
    return "\n".join(log_file.read_text(errors="replace").strip().splitlines()[-lines:])


def run(cmd: list[str], cwd: Path, env: dict) -> tuple[int, float, str]:
    """Run ``cmd`` to its end: its exit code, wall seconds and the last lines of its output."""
    proc, t0, log_file = start(cmd, cwd, env, cwd / "command.log")
    code = proc.wait()
    return code, time.perf_counter() - t0, tail_of(log_file)


def environment(device: str) -> dict:
    """What a run's ``env.json`` records of this machine (:func:`dynrcnn.engine.trainer.environment`),
    with CUDA's version and, on a GPU, its compute capability."""
    import torch

    from dynrcnn.engine.trainer import environment as run_environment

    info = run_environment(torch.device(device), 1) | {"cuda": torch.version.cuda}
    if device.startswith("cuda"):
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
    return info


def run_result(run_dir: Path) -> dict:
    """What one device training gave: speed, AP, AP90, the final threshold and beta, finite losses."""
    from dynrcnn.rundir.runs import load_run

    r = load_run(run_dir)
    losses = [c for c in (r.metrics.columns if r.metrics is not None else ()) if c.startswith("loss")]
    finite = bool(r.metrics is not None and all(math.isfinite(v) for c in losses for v in r.metrics[c].dropna()))
    last = r.metrics.iloc[-1] if r.metrics is not None and len(r.metrics) else {}
    ev, done = r.eval or {}, r.done or {}
    return {"iterations": r.iterations, "sec_per_iter": done.get("sec_per_iter_median"),
            "wall_min": None if done.get("wall_time_sec") is None else done["wall_time_sec"] / 60,
            "AP": ev.get("AP"), "AP90": ev.get("AP90"), "losses_finite": finite,
            "iou_threshold": last.get("iou_threshold"), "beta": last.get("beta"),
            "peak_memory_mb": last.get("peak_memory_mb")}


def _num(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def page_text(data: dict) -> str:
    """The page's block from a ``device_check.json``: the device, one row per training, the steps."""
    e = data.get("environment", {})
    lines = [f"Measured by `benchmarks/device_check.py` on {e.get('device_name', e.get('device', '?'))} (torch "
             f"{e.get('torch', '?')}, torchvision {e.get('torchvision', '?')}, CUDA {e.get('cuda', '?')}); the "
             f"miniature benchmark drawn there, `mini_long` at RPN NMS {RPN_NMS}, seed 0, the runs side by side"
             f"{' (smoke: 24 images, 6 iterations; numbers meaningless)' if e.get('smoke') else ''}.", "",
             "| method | AMP | exit | iterations | s / iteration | AP | AP90 | final IoU threshold | final beta "
             "| losses finite |", "|---|---|---|---|---|---|---|---|---|---|"]
    for method, amp in TRAININGS:
        r = data.get(f"train {method} {amp}")
        if r is None:
            lines.append(f"| {method} | {amp} | not reached | - | - | - | - | - | - | - |")
            continue
        lines.append(f"| {method} | {amp} | {r['exit']} | {r.get('iterations', '-')} | "
                     f"{_num(r.get('sec_per_iter'), '.3f')} | {_num(r.get('AP'), '.2f')} | {_num(r.get('AP90'), '.2f')} | "
                     f"{_num(r.get('iou_threshold'), '.3f')} | {_num(r.get('beta'), '.3f')} | "
                     f"{r.get('losses_finite', '-')} |")
    step = data.get("step", {})
    med = step.get("median_s") or {}
    if med:
        ref = med.get("fp32")
        lines += ["", "Training step (`benchmarks/step.py`, one process; median seconds):", "",
                  "| variant | s / step | ratio to fp32 |", "|---|---|---|",
                  *[f"| {k} | {v:.4f} | {_num(v / ref if ref else None, '.3f')} |" for k, v in med.items()]]
    else:
        lines += ["", f"Training step: {'not reached' if not step else 'failed (exit ' + str(step.get('exit')) + ')'}."]
    return "\n".join(lines)


def write_page(page: str, source: str) -> int:
    from dynrcnn.report.text import write_page_block

    return write_page_block(page, BLOCK, page_text(json.loads(Path(source).read_text())))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--prepare", action="store_true", help="here: fill .device-carry/ and stop")
    p.add_argument("--out", default=os.environ.get("OUT"), help="where the results go (default $OUT)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--smoke", action="store_true", help="a tiny benchmark and a few iterations (tests, on CPU)")
    p.add_argument("--work", default=None, help="working folder (default a temporary one)")
    p.add_argument("--page", default=None, help=f"here: write --from's results into this page's {BLOCK} block")
    p.add_argument("--from", dest="source", default=None, metavar="JSON", help=f"a {RESULT} the device returned")
    args = p.parse_args(argv)
    if args.prepare:
        return prepare()
    if args.page:
        if not args.source:
            p.error("--page needs --from")
        return write_page(args.page, args.source)
    if not args.out:
        p.error("--out (or $OUT) is needed")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out)
    with tempfile.TemporaryDirectory(prefix="device_check_") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        env = child_env(install_carried(work))
        dynrcnn = [sys.executable, "-m", "dynrcnn"]
        log.put("environment", environment(args.device) | {"smoke": args.smoke})

        # 2. CUDA training with AMP on the miniature benchmark
        size = ["--train", "16", "--val", "8"] if args.smoke else []
        code, secs, tail = run([*dynrcnn, "data", "mini", "--out", str(work / "mini"), "--quiet", *size], work, env)
        log.put("data", {"exit": code, "seconds": round(secs, 1), **({"tail": tail} if code else {})})
        pretrained = work / "data" / "pretrained"  # where `dynrcnn train` looks, relative to its cwd
        if args.smoke:
            code, secs, tail = run([*dynrcnn, "pretrain", "--preset", "mini_pretrain_smoke", "--root",
                                    str(pretrained), "--no-progress", "--device", args.device], work, env)
            log.put("pretrain", {"exit": code, "seconds": round(secs, 1), **({"tail": tail} if code else {})})
            backbone = ["--set", "model.backbone_weights=pretrained:mini_pretrain_smoke"]
            short = ["--set", "max_iter=6", "--set", "lr_steps=4", "--set", "warmup_iters=2", "--set",
                     "dynamic.interval=2", "--set", "checkpoint_period=6", "--set", "eval_batch_size=8"]
        else:
            shutil.copytree(CARRY / "pretrained", pretrained, dirs_exist_ok=True)
            backbone, short = [], []
        # the three side by side on the one device (a third of its CPU threads each), as the report
        # trains two side by side on two cores: their seconds per iteration compare with each other
        threads = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 3) // len(TRAININGS)))}
        procs = {}
        for method, amp in TRAININGS:
            run_dir = work / "runs" / f"{method}_{amp}"
            cmd = [*dynrcnn, "train", "--preset", "mini_long", "--method", method, "--data-root", str(work / "mini"),
                   "--out", str(run_dir), "--device", args.device, "--no-progress", "--no-build-backbone",
                   "--set", f"amp={amp}", "--set", f"model.rpn_nms_thresh={RPN_NMS}", *backbone, *short]
            procs[(method, amp, run_dir)] = start(cmd, work, env | threads, work / f"{method}_{amp}.log")
        for (method, amp, run_dir), (proc, t0, log_file) in procs.items():
            code = proc.wait()
            result = {"exit": code, "seconds": round(time.perf_counter() - t0, 1)}
            result.update(run_result(run_dir) if code == 0 else {"tail": tail_of(log_file)})
            log.put(f"train {method} {amp}", result)

        # 3. the R50-FPN step at 800 px (a slim model on 64 px in the smoke)
        shape = (["--arch", "slim_r10_fpn", "--size", "64", "--images", "1", "--steps", "2", "--warmup", "1",
                  "--variants", "fp32"] if args.smoke else
                 ["--arch", "r50_fpn", "--size", "800", "--images", "2", "--steps", "30", "--warmup", "5",
                  "--variants", STEP_VARIANTS])
        code, secs, tail = run([sys.executable, str(REPO / "benchmarks" / "step.py"), "--device", args.device,
                                *shape, "--no-profile", "--skip-layout", "--json"], work, env)
        step = {"exit": code, "seconds": round(secs, 1)}
        if code == 0:
            step.update(json.loads(tail.splitlines()[-1]))
        log.put("step", step | ({"tail": tail} if code else {}))
    failed = [k for k, v in log.data.items() if isinstance(v, dict) and v.get("exit")]
    print(f"{log.path}: {len(log.data)} results, {len(failed)} failed {failed if failed else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
