"""``dynrcnn data``: generate the miniature benchmark, prepare COCO 2017 or the aerial tree crowns,
verify a dataset folder."""

from __future__ import annotations

import argparse

from dynrcnn.data.mini import IMAGE_SIZE, N_TRAIN, N_VAL


def _mini(args) -> int:
    from dynrcnn.data.mini import generate_mini

    s = generate_mini(args.out, seed=args.seed, n_train=args.train, n_val=args.val,
                      image_size=args.image_size or IMAGE_SIZE, workers=args.workers, progress=not args.quiet)
    print(f"miniature benchmark written to {s['out']} in {s['seconds']:.1f} s: "
          f"train {s['train']['images']} images / {s['train']['annotations']} boxes, "
          f"val {s['val']['images']} images / {s['val']['annotations']} boxes, "
          f"{len(s['classes'])} classes ({', '.join(s['classes'])})")
    return 0


def _coco(args) -> int:
    from dynrcnn.data.coco import prepare_coco

    status = prepare_coco(args.root, base_url=args.base_url, splits=args.splits,
                          keep_archives=args.keep_archives, progress=not args.quiet, retries=args.retries)
    print("COCO 2017 under", args.root + ":", ", ".join(f"{k} {v}" for k, v in status.items()))
    print(f"next: dynrcnn data verify --root {args.root}")
    return 0


def _trees(args) -> int:
    from dynrcnn.data.trees import prepare_trees

    s = prepare_trees(args.out, wheel=args.wheel, cache=args.cache, progress=not args.quiet)
    print(f"tree crowns written to {args.out} in {s['seconds']:.1f} s from {s['wheel']} "
          f"(sha256 {s['wheel_sha256'][:12]}...): "
          + ", ".join(f"{split} {s[split]['images']} tiles / {s[split]['annotations']} boxes "
                      f"({', '.join(s[split]['sources'])})" for split in ("train", "val")))
    return 0


def _verify(args) -> int:
    from dynrcnn.data.coco import verify_dataset

    ok = verify_dataset(args.root, args.splits, check_images=not args.skip_images, progress=not args.quiet)
    print("verify:", "ok" if ok else "problems found (see above)")
    return 0 if ok else 1


def register(subparsers) -> argparse.ArgumentParser:
    from dynrcnn.data import trees
    from dynrcnn.data.coco import DEFAULT_BASE_URL, DEFAULT_SPLITS

    data = subparsers.add_parser(
        "data", help="generate the miniature benchmark, prepare COCO 2017 or the tree crowns, verify a dataset folder",
        description="Datasets: the bundled miniature benchmark (generated), COCO 2017 (downloaded), aerial "
                    "tree crowns (from the deepforest wheel on the package index), "
                    "and a checker for any COCO-format folder.")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    data.set_defaults(func=lambda args: (data.print_help(), 1)[1])

    p = sub.add_parser(
        "mini", help="generate the miniature shapes benchmark (COCO format)",
        description="Draw the miniature detection benchmark: 6 shape classes at COCO small/medium/large "
                    "sizes, rotated, partly occluded, on cluttered backgrounds. Writes "
                    "OUT/annotations/instances_{train,val}.json and OUT/{train,val}/*.png. The same "
                    "arguments always give byte-identical files.")
    p.add_argument("--out", required=True, help="folder to write the benchmark into (created if missing)")
    p.add_argument("--seed", type=int, default=0, help="random seed; each image is drawn from (seed, split, index) (default: %(default)s)")
    p.add_argument("--train", type=int, default=N_TRAIN, metavar="N", help="number of training images (default: %(default)s)")
    p.add_argument("--val", type=int, default=N_VAL, metavar="M", help="number of validation images (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=None, metavar="PX",
                   help="side of the square images, pixels (default: the size the mini preset trains at, "
                        f"{IMAGE_SIZE})")
    p.add_argument("--workers", type=int, default=None, metavar="W",
                   help="drawing processes (default: one per CPU core; 0 draws in this process)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_mini)

    p = sub.add_parser(
        "coco", help="download, check and extract COCO 2017",
        description="Download COCO 2017 (train2017.zip 19.3 GB, val2017.zip 0.8 GB, "
                    "annotations_trainval2017.zip 0.25 GB) into ROOT/downloads, check each archive's "
                    "MD5, and extract into ROOT (ROOT/train2017, ROOT/val2017, ROOT/annotations). "
                    "Interrupted transfers resume when the same command is re-run; finished splits "
                    "are skipped.")
    p.add_argument("--root", required=True, help="folder that receives COCO 2017 (needs about 41 GB free "
                   "for all splits, 21 GB with the archives deleted after extraction)")
    p.add_argument("--base-url", default=DEFAULT_BASE_URL,
                   help="server or mirror holding zips/{train,val}2017.zip and annotations/annotations_trainval2017.zip "
                        "(default: %(default)s)")
    p.add_argument("--splits", nargs="+", default=list(DEFAULT_SPLITS), choices=list(DEFAULT_SPLITS), metavar="SPLIT",
                   help="which archives to prepare, among %(choices)s (default: all three)")
    p.add_argument("--keep-archives", action="store_true",
                   help="keep the downloaded zip files after extraction (default: delete them)")
    p.add_argument("--retries", type=int, default=3,
                   help="automatic resumes after a network failure before giving up (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_coco)

    p = sub.add_parser(
        "trees", help="aerial tree crowns from the deepforest wheel, tiled into COCO format",
        description=f"Fetch the pinned wheel deepforest=={trees.VERSION} with 'pip download --no-deps' (checked "
                    "against its SHA-256), read the Pascal-VOC box annotations of the four NEON aerial images it "
                    f"ships, and cut them into {trees.TILE} px tiles at stride {trees.STRIDE}, split by source "
                    f"image (val: {', '.join(trees.VAL_SOURCES)}). A box cut by a tile edge is kept, clipped, "
                    f"when at least {trees.MIN_INSIDE:g} of its area is inside the tile. Writes "
                    "OUT/annotations/instances_{train,val}.json, OUT/{train,val}/*.png and OUT/trees.json "
                    "(the checksums of the wheel and of each image); nothing is left half-written.")
    p.add_argument("--out", required=True, help="folder to write the tiles into (new, empty, or an earlier output "
                   "of this command)")
    p.add_argument("--wheel", default=None, metavar="FILE",
                   help=f"use this copy of {trees.WHEEL} instead of fetching it (checked against the same SHA-256)")
    p.add_argument("--cache", default=None, metavar="DIR",
                   help="where the fetched wheel is kept (default: $DYNRCNN_CACHE/wheels, else ~/.cache/dynrcnn/wheels)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_trees)

    p = sub.add_parser(
        "verify", help="check a COCO-format dataset folder",
        description="Check a COCO-format folder (COCO 2017 or the miniature benchmark): annotation JSON "
                    "well formed with the required keys, boxes of 4 numbers with non-negative size, "
                    "known category and image ids, every image file present, decodable and of the width "
                    "and height its annotation gives. Prints a "
                    "summary per split; exits with status 1 when a problem is found.")
    p.add_argument("--root", required=True, help="dataset folder holding annotations/instances_<split>.json "
                   "and <split>/ image folders")
    p.add_argument("--splits", nargs="+", default=None,
                   help="splits to check (default: every annotations/instances_<split>.json found)")
    p.add_argument("--skip-images", action="store_true",
                   help="only check that image files exist, do not decode them or check their size "
                        "(faster on COCO)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_verify)
    return data
