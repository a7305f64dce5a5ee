"""Would ignoring MMDetection's anchors or RoIAlign matter to a converted model? Measured.

``dynrcnn convert`` gives a published MMDetection 2.x model MMDetection's anchors (fractional
base anchors at the nominal strides 4 * 2**k) and RoIAlign (aligned, adaptive sampling), and the
converted forward pass is then bit-identical to the source's (``tests/test_convert.py``). This
script shows what each piece would change if it were left as torchvision's: one random-weight
R50-FPN with the converted settings (81 classes, the tests' random initialisation with
data-dependent BatchNorm statistics) runs on one random image; each variant switches one piece
back to torchvision's; the measure is the share of the converted model's top-100 detections that
the variant still returns (the same label, IoU >= 0.99)::

    .venv/bin/python benchmarks/anchor_variants.py --page docs/published_weights.md

A random-weight network has near-tied scores, so the shares overstate what trained weights would
show; what they show is that neither difference is invisible.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import box_iou

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from dynrcnn.checkpoint.convert import converted_config  # noqa: E402
from dynrcnn.modeling.model import MMDetAnchorGenerator, build_model  # noqa: E402

BLOCK = "ANCHOR-VARIANTS"  # the marked block of --page this script writes
IOU = 0.99
TOP = 100


class RoundedAnchors(MMDetAnchorGenerator):
    """MMDetection's nominal strides with torchvision's base anchors (rounded to whole pixels)."""
    generate_anchors = AnchorGenerator.generate_anchors


class InferredStrides(AnchorGenerator):
    """MMDetection's fractional base anchors with torchvision's strides (padded side / feature side)."""
    generate_anchors = MMDetAnchorGenerator.generate_anchors


def _swap_anchors(cls):
    def apply(model):
        old = model.rpn.anchor_generator
        model.rpn.anchor_generator = cls(old.sizes, old.aspect_ratios)
    return apply


def _torchvision_roi_align(model):
    pool = model.roi_heads.box_roi_pool
    pool.aligned, pool.sampling_ratio = False, 2


VARIANTS = {
    "torchvision's rounded base anchors": _swap_anchors(RoundedAnchors),
    "torchvision's inferred strides": _swap_anchors(InferredStrides),
    "torchvision's anchors (rounded + inferred strides)": _swap_anchors(AnchorGenerator),
    "torchvision's RoIAlign (unaligned, sampling ratio 2)": _torchvision_roi_align,
}


def kept_share(ref: dict, other: dict, iou: float = IOU) -> float:
    """Share of ``ref``'s detections that ``other`` also returns: a box of the same label at IoU >= ``iou``."""
    if len(ref["boxes"]) == 0:
        return float("nan")
    same = ref["labels"][:, None] == other["labels"][None, :]
    ious = box_iou(ref["boxes"], other["boxes"]) if len(other["boxes"]) else torch.zeros(len(ref["boxes"]), 0)
    return ((ious >= iou) & same).any(dim=1).float().mean().item()


def measure(height: int, width: int, seed: int = 0) -> tuple[list[tuple[str, float]], dict]:
    """The converted model's detections on one random ``height`` x ``width`` image, and each
    variant's kept share; also what the reference returned (its detection count, P6's size)."""
    from tests.test_convert import _randomise  # the tests' random weights (BatchNorm calibrated)

    torch.manual_seed(seed)
    cfg = converted_config("dynamic_rcnn")
    model = build_model(cfg, 81)
    _randomise(model, seed=seed)
    model.eval()
    image = torch.rand(3, height, width, generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        ref = model([image])[0]
        padded = tuple(model.transform([image])[0].tensors.shape[-2:])
        # P6 is P5 (padded / 32) max-pooled at stride 2
        about = {"detections": len(ref["boxes"]), "padded": padded, "p6": tuple(-(-s // 64) for s in padded)}
        ref = {k: v[:TOP] for k, v in ref.items()}
        rows = []
        for name, apply in VARIANTS.items():
            variant = copy.deepcopy(model)
            apply(variant)
            rows.append((name, kept_share(ref, variant([image])[0])))
    return rows, about


def block_text(rows, about, height: int, width: int) -> str:
    ph, pw = about["padded"]
    lines = [f"Measured by `benchmarks/anchor_variants.py`: a random-weight R50-FPN with the converted settings "
             f"(81 classes), one random {height} x {width} image (padded to {ph} x {pw}, P6 {about['p6'][0]} x "
             f"{about['p6'][1]}); the converted model returned {about['detections']} detections.", "",
             f"| variant (everything else MMDetection's) | top-{TOP} detections kept (same label, IoU >= {IOU:g}) |",
             "|---|---|", *[f"| {name} | {100 * share:.0f} % |" for name, share in rows], "",
             "Re-measure: `.venv/bin/python benchmarks/anchor_variants.py --page docs/published_weights.md`."]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--height", type=int, default=800)
    p.add_argument("--width", type=int, default=1067)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--page", default=None, help=f"write the table into this page's {BLOCK} block")
    args = p.parse_args(argv)
    rows, about = measure(args.height, args.width, args.seed)
    text = block_text(rows, about, args.height, args.width)
    print(text)
    if args.page:
        from dynrcnn.report.text import write_page_block

        return write_page_block(args.page, BLOCK, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
