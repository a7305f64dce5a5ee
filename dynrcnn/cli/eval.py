"""``dynrcnn eval`` (COCO evaluation of a run) and ``dynrcnn runs`` (the table of runs)."""

from __future__ import annotations

import argparse
from pathlib import Path

from dynrcnn.cli.help import HelpFormatter
from dynrcnn.rundir import run_summary
from dynrcnn.rundir import runs
from dynrcnn.config import EVALUATORS, default_device
from dynrcnn.errors import DataError

_FMT = HelpFormatter


def cmd_eval(args) -> int:
    from dynrcnn.evaluation.coco_eval import evaluate

    evaluate(args.run_dir, checkpoint=args.checkpoint, data_root=args.data_root, device=args.device,
             evaluator=args.evaluator, progress=not args.no_progress, name=args.name,
             allow_class_mismatch=args.allow_class_mismatch, force=args.overwrite)
    return 0


def cmd_runs(args) -> int:
    if not Path(args.dir).is_dir():
        raise DataError(f"{args.dir}: no such folder (pass the folder that holds the runs, e.g. runs/mini)")
    table = run_summary.runs_table(runs.find_runs(args.dir))
    if args.csv:
        print(table.to_csv(index=False), end="")
    else:
        print(run_summary.format_table(table))
    return 0


def register(subparsers) -> None:
    _register_eval(subparsers, default_device())
    _register_runs(subparsers)


def _register_eval(subparsers, device: str) -> None:
    last = runs.LAST_CHECKPOINT_PATH
    p = subparsers.add_parser(
        "eval", help=f"COCO-evaluate a run's checkpoint (writes {runs.DETECTIONS} and {runs.EVAL})",
        description="Run the run's detector over its validation split and compute COCO bbox AP, AP50, AP75, "
                    "AP_S/M/L and AP at each IoU 0.50:0.05:0.95 (AP90 included), in percent.",
        formatter_class=_FMT)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by 'dynrcnn train'")
    p.add_argument("--checkpoint", default=None, metavar="PATH",
                   help=f"checkpoint to evaluate (default: RUN_DIR/{last}); another checkpoint's results go to "
                        "eval-<checkpoint name>.json and never replace the final model's eval.json")
    p.add_argument("--data-root", default=None, metavar="DIR",
                   help=f"dataset folder (default: the one recorded in RUN_DIR/{runs.CONFIG})")
    p.add_argument("--name", default=None, metavar="NAME",
                   help=f"store the results as {runs.eval_file('RUN_DIR', 'NAME').name} and "
                        f"{runs.detections_file('RUN_DIR', 'NAME').name} (default: {runs.EVAL} on the run's own "
                        "data; on another --data-root, that folder's name: the run's own results are never replaced)")
    p.add_argument("--evaluator", default=None, choices=EVALUATORS,
                   help="COCO evaluator (the same metrics; default: faster-coco-eval where installed, else "
                        "pycocotools, the reference; an eval file made by either is reused)")
    p.add_argument("--device", default=device, help=f"cpu, cuda or cuda:N (default here: {device})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (the summary line is still printed)")
    p.add_argument("--overwrite", action="store_true",
                   help="evaluate again even when the eval file already holds this evaluation (same checkpoint, "
                        "data and evaluator), which is otherwise reused and left as it is")
    p.add_argument("--force", dest="overwrite", action="store_true", help=argparse.SUPPRESS)  # as report's old name
    p.add_argument("--allow-class-mismatch", action="store_true",
                   help="evaluate on data whose class names differ from the run's (same count); refused by default")
    p.set_defaults(func=cmd_eval)


def _register_runs(subparsers) -> None:
    p = subparsers.add_parser(
        "runs", help="list the runs under a folder (method, preset, iterations, AP, AP90, time)",
        description="Print one line per run directory found under DIR: method, preset, convention, seed, "
                    "iterations, whether training finished, AP, AP50, AP75, AP90 (percent), wall time "
                    "(minutes) and training images/s.",
        formatter_class=_FMT)
    p.add_argument("dir", metavar="DIR", help="folder searched recursively for run directories")
    p.add_argument("--csv", action="store_true", help="print CSV instead of an aligned table")
    p.set_defaults(func=cmd_runs)
