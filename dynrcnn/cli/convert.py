"""``dynrcnn convert`` and ``dynrcnn export``: published weights in, our weights out
(:mod:`dynrcnn.checkpoint.convert` holds the conversion itself)."""

from __future__ import annotations

import argparse
import json

from dynrcnn.cli.help import HelpFormatter

from dynrcnn.rundir import runs
from dynrcnn.checkpoint.convert import PUBLISHED, convert, export_torchvision
from dynrcnn.errors import ConfigError


def cmd_convert(args) -> int:
    if args.source_format != "mmdet":  # pragma: no cover (argparse choices)
        raise ConfigError("only --from mmdet is supported")
    if bool(args.preset) != bool(args.method):
        raise ConfigError("--preset and --method go together (a checkpoint MMDetection trained with a preset's settings)")
    out = convert(args.src, args.out, num_classes=args.num_classes, model=args.model,
                  data_root=args.data_root, force=args.overwrite, preset=args.preset, method=args.method,
                  seed=args.seed)
    prov = json.loads((out / runs.PROVENANCE).read_text())
    print(f"{prov['label']}: {prov['source_file']} (sha256 {prov['sha256'][:12]}...) -> {out}; "
          f"evaluate with: dynrcnn eval {out}" + ("" if args.data_root else " --data-root data/coco"))
    return 0


def cmd_export(args) -> int:
    notes = export_torchvision(args.run_dir, args.out, checkpoint=args.checkpoint)
    print(f"wrote {args.out}: torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, "
          f"weights_backbone=None, num_classes=N).load_state_dict(torch.load(...), strict=True)")
    for note in notes:
        print(f"note: {note}")
    return 0


def register(subparsers) -> None:
    fmt = HelpFormatter
    p = subparsers.add_parser(
        "convert", help="convert a published MMDetection 2.x Faster/Dynamic R-CNN R50-FPN checkpoint into a run",
        description="Map an MMDetection 2.x Faster R-CNN or Dynamic R-CNN R50-FPN checkpoint onto our model and "
                    "write a run directory (config.json with the published test settings, checkpoints/last.pth, "
                    "provenance.json) that 'dynrcnn eval' evaluates. See docs/published_weights.md.",
        epilog="example:\n  dynrcnn convert dynamic_rcnn_r50_fpn_1x-62a3f276.pth --from mmdet \\\n"
               "      --out runs/published/dynamic_rcnn\n  dynrcnn eval runs/published/dynamic_rcnn --data-root data/coco",
        formatter_class=fmt)
    p.add_argument("src", metavar="SRC", help="the downloaded .pth file")
    p.add_argument("--from", dest="source_format", default="mmdet", choices=("mmdet",),
                   help="source framework (only mmdet: MMDetection 2.x)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory to write")
    p.add_argument("--num-classes", type=int, default=81, help="classes including background (default 81: COCO)")
    p.add_argument("--model", default="auto", choices=("auto",) + tuple(PUBLISHED),
                   help="which published model (sets the RPN NMS of its test config); auto reads the "
                        "checkpoint's meta config, else the file name")
    p.add_argument("--data-root", default=None, metavar="DIR", help="COCO folder to record in config.json")
    p.add_argument("--overwrite", action="store_true", help="replace an existing converted checkpoint")
    p.add_argument("--force", dest="overwrite", action="store_true", help=argparse.SUPPRESS)  # the old name
    p.add_argument("--preset", default=None, help="the checkpoint is one MMDetection trained with this preset's "
                   "settings (peer_mmdet/train.py), not a published R50-FPN model")
    p.add_argument("--method", default=None, choices=("baseline", "dynamic"),
                   help="with --preset: Faster R-CNN (baseline) or Dynamic R-CNN")
    p.add_argument("--seed", type=int, default=None, help="with --preset: the training seed to record (pairs the run "
                   "with ours of the same seed)")
    p.set_defaults(func=cmd_convert)

    p = subparsers.add_parser(
        "export", help="write a run's weights as a plain torchvision fasterrcnn_resnet50_fpn state dict",
        description="Write RUN_DIR's checkpoint as a state dict that torchvision's "
                    "fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=N) loads with "
                    "strict=True (R50-FPN runs only).",
        formatter_class=fmt)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (trained or converted)")
    p.add_argument("--to", default="torchvision", choices=("torchvision",), help="target (torchvision)")
    p.add_argument("--out", required=True, metavar="FILE", help="state dict file to write (.pth)")
    p.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="checkpoint to export (default: RUN_DIR/checkpoints/last.pth)")
    p.set_defaults(func=cmd_export)



__all__ = ["register", "cmd_convert", "cmd_export"]
