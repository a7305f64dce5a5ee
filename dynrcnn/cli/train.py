"""``dynrcnn train`` and ``dynrcnn pretrain`` (``eval`` and ``runs``: :mod:`dynrcnn.cli.eval`)."""

from __future__ import annotations

import argparse

from dynrcnn.cli.help import HelpFormatter

from dynrcnn.rundir import integrity
from dynrcnn.rundir import runs
from dynrcnn.config import CONVENTIONS, METHODS, check_device, default_device, valid_keys
from dynrcnn.presets import PRESET_HELP, PRESETS, PRETRAIN_DATA, PRETRAINED_ROOT, build_config


def _wrap(text: str, width: int = 88, indent: str = "  ", hang: str | None = None) -> str:
    """``text`` wrapped at ``width`` columns (argparse keeps a raw description or epilog as it is);
    ``hang``: the indent of the lines after the first (default ``indent``)."""
    import textwrap

    return textwrap.fill(text, width=width, initial_indent=indent, subsequent_indent=indent if hang is None else hang,
                         break_on_hyphens=False, break_long_words=False)


def _keys_text() -> str:
    """The valid ``--set`` keys, wrapped."""
    return _wrap(", ".join(valid_keys()))


def _presets_text() -> str:
    return "\n".join(_wrap(f"{name:22s} {PRESET_HELP.get(name, '')}", hang=" " * 25) for name in PRESETS)


TRAIN_EPILOG = f"""presets:
{_presets_text()}

examples:
  dynrcnn train --preset mini --method dynamic --data-root data/mini --out runs/mini_dynamic
  dynrcnn train --preset mini --method baseline --data-root data/mini --out runs/mini_baseline \\
      --set max_iter=200 --set dynamic.interval=20
  torchrun --nproc_per_node=8 -m dynrcnn train --preset coco_r50_fpn_1x --method dynamic \\
      --data-root data/coco --out runs/coco_dynamic
  dynrcnn train --resume runs/x    # continue an interrupted run exactly, from its record
                                   # (a finished run: "nothing to do", nothing written)

--set accepts any config field by its dotted name; valid keys:
{_keys_text()}
"""


def _resume_dir(args) -> str | None:
    """The run directory ``--resume`` names (``--resume RUN_DIR`` or ``--out RUN_DIR --resume``);
    None when this is no resume. ``--out`` and ``--resume RUN_DIR`` naming two folders are refused."""
    from dynrcnn.errors import ConfigError
    from dynrcnn.rundir.provenance import same_path

    if args.resume is False or args.resume is None:
        if args.out is None:
            raise ConfigError("no run directory: pass --out RUN_DIR (or --resume RUN_DIR to continue a run)")
        return None
    if args.resume is True:
        if args.out is None:
            raise ConfigError("--resume needs the run directory: --resume RUN_DIR")
        return args.out
    if args.out is not None and not same_path(args.out, args.resume):
        raise ConfigError(f"--resume {args.resume} and --out {args.out} name two folders; pass one of them")
    return args.resume


def config_for(args):
    """The config ``dynrcnn train`` runs: a resume of a run that records its config starts from
    that record (its ``config.json``: preset, method, seed, data, schedule...), so ``--resume
    RUN_DIR`` alone continues it; flags given explicitly are applied on top, and a change the
    record forbids is refused by the engine (``integrity.check_resume``). Otherwise the preset
    with the flags."""
    from dynrcnn.config import apply_overrides

    run_dir = _resume_dir(args)
    if run_dir is not None and runs.is_run_dir(run_dir):
        cfg = runs.read_config(run_dir)
        for key, value in (("preset", args.preset), ("method", args.method), ("seed", args.seed),
                           ("data_root", args.data_root)):
            if value is not None:
                setattr(cfg, key, value)
        if args.convention:
            cfg.dynamic.convention = args.convention
        apply_overrides(cfg, args.set or [])
        cfg.validate()
        return cfg, run_dir, True
    cfg = build_config(args.preset or "mini", args.method or "dynamic", seed=args.seed, data_root=args.data_root,
                       overrides=args.set or [], convention=args.convention)
    return cfg, (run_dir or args.out), run_dir is not None


def cmd_train(args) -> int:
    from dynrcnn.engine.trainer import train

    from dynrcnn.errors import ConfigError, DataError

    cfg, out, resume = config_for(args)
    if not cfg.data_root:
        if resume and not runs.is_run_dir(out):  # --resume RUN_DIR alone, of a folder that holds no run
            raise ConfigError(f"{out} holds no run to resume (no {runs.CONFIG}); start it with --out {out} "
                              "--data-root DIR")
        raise ConfigError("no dataset: pass --data-root DIR (e.g. the folder `dynrcnn data mini --out DIR` wrote)")
    # the data before the backbone: a missing folder is named now, not after minutes of pretraining
    from pathlib import Path

    from dynrcnn.data.datasets import split_names

    if not Path(cfg.data_root).is_dir():
        raise DataError(f"--data-root {cfg.data_root} does not exist; generate the miniature benchmark there "
                        f"(`dynrcnn data mini --out {cfg.data_root}`) or prepare COCO (`dynrcnn data coco --root DIR`)")
    split_names(cfg.data_root)  # a folder without COCO-format annotations: DataError naming both layouts
    check_device(args.device)  # refusals first, before any pretraining
    integrity.check_out_dir(out, resume, args.overwrite)
    if not (resume and runs.has_checkpoints(out)):  # a resume starts from its checkpoint, not the backbone
        from dynrcnn.engine.pretrain import resolve_backbone

        cfg = resolve_backbone(cfg, device=args.device, progress=not args.no_progress,  # pretrained:<preset> -> a file
                               build=not args.no_build_backbone)
    train(cfg, out, resume=resume, device=args.device, progress=not args.no_progress, overwrite=args.overwrite)
    return 0


def cmd_pretrain(args) -> int:
    import torch

    from dynrcnn.engine.pretrain import ensure_pretrained

    if args.threads:
        torch.set_num_threads(args.threads)
    path, sha = ensure_pretrained(args.preset, args.root, device=args.device, progress=not args.no_progress)
    print(f"backbone weights: {path}\nsha256: {sha}")
    return 0


_FMT = HelpFormatter


def register(subparsers) -> None:
    device = default_device()
    _register_train(subparsers, device)
    _register_pretrain(subparsers, device)


def _register_train(subparsers, device: str) -> None:
    last = runs.LAST_CHECKPOINT_PATH
    p = subparsers.add_parser(
        "train", help="train a detector (baseline, DLA, DSL or Dynamic R-CNN) into a run directory",
        description=("Train Faster R-CNN with the chosen method and write a run directory ("
                          f"{runs.CONFIG}, {runs.ENV}, {runs.METRICS}, {runs.DYNAMIC}, {runs.CHECKPOINTS}/, "
                          f"{runs.TRAIN_DONE}, {runs.EVAL}). "
                          "Under torchrun the run is distributed over the processes (ims_per_batch is the total "
                          "over all of them)."),  # one line: the help formatter wraps it to the terminal
        epilog=TRAIN_EPILOG, formatter_class=_FMT)
    p.add_argument("--preset", default=None, choices=list(PRESETS), metavar="PRESET",
                   help="complete configuration to start from (default: mini, or the run's record with --resume; "
                        "see the list below)")
    p.add_argument("--method", default=None, choices=METHODS,
                   help="baseline (fixed IoU 0.5 and SmoothL1 beta), dla (dynamic label assignment only), "
                        "dsl (dynamic SmoothL1 only) or dynamic (both; default)")
    p.add_argument("--data-root", default=None, metavar="DIR",
                   help="dataset folder with annotations/instances_{split}.json and {split}/ images "
                        "(the mini benchmark or COCO)")
    p.add_argument("--out", default=None, metavar="RUN_DIR", help="run directory to write (created)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN_DIR",
                   help=f"continue the run in RUN_DIR (or --out) from {last} (or the newest readable "
                        f"periodic checkpoint), with the settings and data its {runs.CONFIG} records: no other "
                        "flag is needed, and the result equals an uninterrupted run. Settings and data "
                        f"must be the recorded ones (only {', '.join(integrity.MAY_CHANGE_ON_RESUME)} may change). "
                        "A finished run is left as it is: 'finished at iteration N; nothing to do'")
    p.add_argument("--overwrite", action="store_true",
                   help="RUN_DIR holds a run: delete its files and train again from scratch (without this "
                        "flag a folder holding any run file is refused; the only way to replace a finished run)")
    p.add_argument("--force", dest="overwrite", action="store_true", help=argparse.SUPPRESS)  # as report's old name
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field by its dotted name, e.g. --set max_iter=200 "
                        "--set dynamic.interval=20 (repeatable; tuples as 1,2,3; bools true/false)")
    p.add_argument("--device", default=device, help=f"cpu, cuda or cuda:N (default here: {device})")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the preset's, 0)")
    p.add_argument("--convention", default=None, choices=CONVENTIONS,
                   help="how the dynamic statistics are computed: mmdet (default) or official "
                        "(the authors' code); see docs/method.md")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs are still written)")
    p.add_argument("--no-build-backbone", action="store_true",
                   help="refuse (exit 2) instead of building a missing pretrained backbone (looked for in "
                        "./data/pretrained, this checkout's data/pretrained and ~/.cache/dynrcnn/pretrained)")
    p.set_defaults(func=cmd_train)


def _register_pretrain(subparsers, device: str) -> None:
    p = subparsers.add_parser(
        "pretrain", help="build the backbone weights the mini preset starts from (once; reused after)",
        description="Train the mini_pretrain baseline on a benchmark drawn with its own data seed (never the "
                    "evaluation images) and keep its backbone (ResNet body + FPN) as "
                    "ROOT/backbone-<recipe hash>.pth with a JSON record of its SHA-256 and recipe. Runs of the "
                    "mini preset (model.backbone_weights=pretrained:mini_pretrain) start from it; 'dynrcnn train' builds it "
                    "automatically when it is missing. Existing weights of the same recipe are checked and reused.",
        formatter_class=_FMT)
    p.add_argument("--preset", default="mini_pretrain", choices=sorted(PRETRAIN_DATA),
                   help="pretraining preset (default: %(default)s; mini_pretrain_smoke is a seconds-long version for tests)")
    p.add_argument("--root", default=PRETRAINED_ROOT, metavar="DIR",
                   help="folder for the weights, the pretraining data and its run (default: %(default)s)")
    p.add_argument("--device", default=device, help=f"cpu, cuda or cuda:N (default here: {device})")
    p.add_argument("--threads", type=int, default=0, metavar="N",
                   help="CPU threads for the pretraining run (default: PyTorch's choice, all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_pretrain)
