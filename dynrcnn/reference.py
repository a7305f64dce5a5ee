"""The published numbers the report compares against, each labelled with its source.

Nothing here is measured by this project: these are the numbers of the paper (abstract), the
authors' official repository, MMDetection's model zoo and the seed reproduction (one GPU,
MMDetection). See docs/method.md for the method and the recipe. All AP values are COCO bbox AP in percent,
ResNet-50-FPN, 1x schedule unless the description says otherwise. The report never compares a
miniature-benchmark number to them as if it were a COCO number (see :mod:`dynrcnn.report.claims`).
"""

from __future__ import annotations

from dataclasses import dataclass

SOURCE_SHORT = {
    "paper": "paper abstract",
    "official": "official repo",
    "mmdet": "MMDet model zoo",
    "seed": "seed reproduction",
}


@dataclass(frozen=True)
class Reference:
    """One published number.

    ``kind`` is ``delta`` (dynamic minus baseline, AP points), ``absolute`` (an AP value),
    or ``ratio`` (dynamic / baseline time per iteration). ``method`` is the detector the
    number belongs to for absolute numbers (``dynamic`` or ``baseline``). ``metric`` is the
    eval.json key it corresponds to (``AP``, ``AP50``, ``AP90``...; ``sec_per_iter`` for the
    overhead ratio).
    """

    key: str
    value: float
    kind: str
    metric: str
    source: str
    description: str
    method: str = "dynamic"
    split: str = "minival"


REFERENCES: tuple[Reference, ...] = (
    # paper abstract
    Reference("paper_delta_ap", 1.9, "delta", "AP", "paper",
              "Dynamic R-CNN improves AP over the ResNet-50-FPN baseline"),
    Reference("paper_delta_ap90", 5.5, "delta", "AP90", "paper",
              "Dynamic R-CNN improves AP at IoU 0.9 (AP90) over the baseline"),
    Reference("paper_overhead", 1.0, "ratio", "sec_per_iter", "paper",
              "No extra training overhead (time per iteration, dynamic / baseline)"),
    # official repository
    Reference("official_r50_1x", 38.9, "absolute", "AP", "official",
              "Dynamic R-CNN R50-FPN 1x AP (minival)"),
    Reference("official_r50_1x_testdev", 39.1, "absolute", "AP", "official",
              "Dynamic R-CNN R50-FPN 1x AP (test-dev)", split="test-dev"),
    Reference("official_r50_2x", 39.9, "absolute", "AP", "official",
              "Dynamic R-CNN R50-FPN 2x AP"),
    Reference("official_r101_1x", 41.0, "absolute", "AP", "official",
              "Dynamic R-CNN R101-FPN 1x AP"),
    # MMDetection model zoo
    Reference("mmdet_faster_r50_1x", 37.4, "absolute", "AP", "mmdet",
              "Faster R-CNN R50-FPN 1x AP (baseline)", method="baseline"),
    Reference("mmdet_dynamic_r50_1x", 38.9, "absolute", "AP", "mmdet",
              "Dynamic R-CNN R50-FPN 1x AP"),
    Reference("mmdet_delta_ap", 38.9 - 37.4, "delta", "AP", "mmdet",
              "AP gain of Dynamic R-CNN over Faster R-CNN (both R50-FPN 1x)"),
    # seed reproduction
    Reference("seed_ap", 38.9, "absolute", "AP", "seed", "Dynamic R-CNN R50-FPN 1x AP"),
    Reference("seed_ap50", 57.5, "absolute", "AP50", "seed", "Dynamic R-CNN R50-FPN 1x AP50"),
    Reference("seed_ap75", 42.8, "absolute", "AP75", "seed", "Dynamic R-CNN R50-FPN 1x AP75"),
    Reference("seed_aps", 21.9, "absolute", "APs", "seed", "Dynamic R-CNN R50-FPN 1x AP small"),
    Reference("seed_apm", 41.9, "absolute", "APm", "seed", "Dynamic R-CNN R50-FPN 1x AP medium"),
    Reference("seed_apl", 51.1, "absolute", "APl", "seed", "Dynamic R-CNN R50-FPN 1x AP large"),
)

BY_KEY = {r.key: r for r in REFERENCES}

# RPN NMS thresholds of the published runs: the baselines used 0.7, Dynamic R-CNN 0.85
# (docs/method.md), so the published gain mixes the method with an RPN change.
BASELINE_RPN_NMS = 0.7
DYNAMIC_RPN_NMS = 0.85

# The rows of the claims table, in order (keys of REFERENCES). R50 2x / R101 numbers need other
# schedules/backbones than the report's profiles train; they stay in REFERENCES for citation.
CLAIM_KEYS = (
    "paper_delta_ap", "paper_delta_ap90", "paper_overhead",
    "official_r50_1x", "mmdet_dynamic_r50_1x", "mmdet_faster_r50_1x",
    "seed_ap50", "seed_ap75", "seed_aps", "seed_apm", "seed_apl",
)


# One test, several published numbers: the model zoo's gain is a second reference of the paper's
# AP test (the same comparison), not a second verdict.
SAME_TEST = {"paper_delta_ap": ("mmdet_delta_ap",)}


# The authors' published threshold trajectory: the first author's answer in the official
# repository's issue #3 (MMDetection, R50-FPN 1x, 16 images per iteration, 90k iterations).
AUTHORS_TRAJECTORY = {
    "source": "first author, official repository issue #3 (MMDetection R50-FPN 1x, 90k iterations)",
    "max_iter": 90000,
    "iteration": (100, 200, 300, 500),
    "iou_threshold": (0.42, 0.49, 0.52, 0.54),
}


def get(key: str) -> Reference:
    """The reference number called ``key``."""
    return BY_KEY[key]
