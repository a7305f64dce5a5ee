"""``dynrcnn predict``: detections on your own images, drawn and as COCO-style JSON (:mod:`dynrcnn.evaluation.predict`)."""

from __future__ import annotations

import sys
from pathlib import Path

from dynrcnn.cli.help import HelpFormatter


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help="detect objects in images with a trained or converted run (pictures + JSON)",
        description="Run a run's detector (a 'dynrcnn train' run, a 'dynrcnn convert' run, or with --state-dict an "
                    "exported torchvision state dict) over images or folders of images; writes OUT/<image>.png with "
                    "boxes, class names and scores, and OUT/detections.json.",
        formatter_class=HelpFormatter,
        epilog="examples:\n  dynrcnn predict runs/mini/dynamic data/mini/val --out build/predict\n"
               "  dynrcnn predict runs/published/dynamic_rcnn_r50 photo.jpg --out build/photo --score-thresh 0.3\n"
               "  dynrcnn predict runs/trees/dynamic aerial.png --out build/aerial --tile 400")
    p.add_argument("run", metavar="RUN_DIR", help="the run whose model predicts (or a state dict with --state-dict)")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or folders of images")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the pictures and detections.json")
    p.add_argument("--score-thresh", type=float, default=0.5, help="keep detections scoring at least this (0.5)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--checkpoint", default=None, metavar="PATH", help="checkpoint (default: the run's last)")
    p.add_argument("--state-dict", action="store_true",
                   help="RUN_DIR is an exported torchvision fasterrcnn_resnet50_fpn state dict (dynrcnn export)")
    p.add_argument("--tile", type=int, default=None, metavar="PX",
                   help="detect large images tile by tile, PX-pixel tiles (a model trained on tiles: their size, "
                        "400 for the trees preset), and merge the detections; default: the whole image at once")
    p.add_argument("--tile-stride", type=int, default=None, metavar="PX",
                   help="pixels between tiles with --tile (default: half a tile)")
    p.add_argument("--keep-going", action="store_true", help="skip unreadable images (listed at the end) instead of stopping")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_predict)


def cmd_predict(args) -> int:
    from dynrcnn.config import check_device
    from dynrcnn.evaluation.predict import Detector, image_files, predict_images

    check_device(args.device)
    files = image_files(args.images)
    if args.state_dict:
        det = Detector.from_state_dict(args.run, device=args.device, score_thresh=args.score_thresh)
    else:
        det = Detector.from_run(args.run, checkpoint=args.checkpoint, device=args.device,
                                score_thresh=args.score_thresh)
    res = predict_images(det, files, Path(args.out), keep_going=args.keep_going, progress=not args.no_progress,
                         tile=args.tile, stride=args.tile_stride)
    for s in res["skipped"]:
        print(f"skipped: {s['error']}", file=sys.stderr)
    print(f"{res['detections']} detections on {res['images']} images -> {args.out}/ (pictures) and {res['json']}")
    return 0
