"""The report's comparisons with 95 % intervals (:func:`dynrcnn.stats.bootstrap_delta`).

A comparison is ``B - A`` for two groups of runs (each group: one configuration, one run per
training seed), evaluated on one dataset: the run's own evaluation split (``dataset=None``) or
another benchmark it was evaluated on with ``dynrcnn eval RUN --data-root OTHER`` (``dataset``
is that evaluation's name). The per-image matches of each run are computed once per process.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dynrcnn import runs as runs_mod
from dynrcnn.data import annotation_file
from dynrcnn.stats import DEFAULT_BOOT, Delta, ImageMatches, bootstrap_delta, image_matches, verdict

_CACHE: dict[tuple[str, str | None, float], ImageMatches] = {}
_GT: dict[str, object] = {}
_DELTAS: dict[tuple, Delta] = {}  # keyed by the (cached, so stable) match objects of both sides


def _gt(path: Path):
    from pycocotools.coco import COCO

    key = str(path.resolve())
    if key not in _GT:
        with contextlib.redirect_stdout(io.StringIO()):
            _GT[key] = COCO(key)
    return _GT[key]


def evaluation_files(run, dataset: str | None = None) -> tuple[Path, Path] | None:
    """``(annotation file, detections file)`` of ``run``'s evaluation on ``dataset`` (None: its
    own split), or ``None`` when that evaluation is missing."""
    det = runs_mod.detections_file(run.path, dataset)
    if dataset is None:
        ann = annotation_file(run.config.get("data_root", ""), run.config.get("val_split", "val"))
    else:
        record = run.eval_on(dataset)
        if not record or not record.get("data_root"):
            return None
        ann = annotation_file(record["data_root"], record.get("split", run.config.get("val_split", "val")))
    return (ann, det) if det.is_file() and ann.is_file() else None


def extra_datasets(runs) -> list[str]:
    """Names of the other benchmarks the runs were evaluated on (``eval-<name>.json``)."""
    return sorted({name for r in runs for name in r.eval_names})


def run_matches(run, dataset: str | None = None) -> ImageMatches | None:
    """The per-image matches of ``run`` on ``dataset`` (cached by file and modification time)."""
    files = evaluation_files(run, dataset)
    if files is None:
        return None
    ann, det = files
    key = (str(det.resolve()), dataset, det.stat().st_mtime)
    if key not in _CACHE:
        _CACHE[key] = image_matches(_gt(ann), json.loads(det.read_text()))
    return _CACHE[key]


def compare(runs_a, runs_b, dataset: str | None = None, n_boot: int = DEFAULT_BOOT, seed: int = 0) -> Delta | None:
    """``B - A`` with its interval, or ``None`` when a side has no evaluated run on ``dataset``.
    Runs are keyed by their training seed (the same seeds on both sides are paired)."""
    a = {int(r.seed): m for r in runs_a if (m := run_matches(r, dataset)) is not None}
    b = {int(r.seed): m for r in runs_b if (m := run_matches(r, dataset)) is not None}
    if not a or not b:
        return None
    key = (tuple(sorted(id(m) for m in a.values())), tuple(sorted(id(m) for m in b.values())), n_boot, seed)
    if key not in _DELTAS:
        _DELTAS[key] = bootstrap_delta(a, b, n_boot=n_boot, seed=seed)
    return _DELTAS[key]


@dataclass(frozen=True)
class Interval:
    """One metric's difference: estimate, 95 % interval, verdict status, and how it was made."""

    estimate: float
    low: float
    high: float
    status: str
    seeds: str  # e.g. "3 vs 3 seeds, paired"
    n_boot: int

    def text(self, metric: str = "AP") -> str:
        return f"{self.estimate:+.2f} {metric} [{self.low:+.2f}, {self.high:+.2f}]"

    def as_dict(self) -> dict:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "status": self.status,
                "seeds": self.seeds, "n_boot": self.n_boot}


def interval(delta: Delta | None, metric: str, expected_sign: int = 1) -> Interval | None:
    """The :class:`Interval` of one metric (``AP``, ``AP50``, ``AP75``, ``AP90``) of a comparison."""
    if delta is None:
        return None
    est, lo, hi = delta.metrics[metric]
    seeds = f"{delta.seeds_b} vs {delta.seeds_a} seed(s){', paired' if delta.paired_seeds else ''}"
    return Interval(est, lo, hi, verdict(lo, hi, expected_sign), seeds, delta.n_boot)


def per_iou(delta: Delta | None) -> dict | None:
    """AP difference at each IoU threshold with its interval (lists, for figures and JSON)."""
    if delta is None:
        return None
    return {"estimate": np.asarray(delta.per_iou).tolist(), "low": np.asarray(delta.per_iou_low).tolist(),
            "high": np.asarray(delta.per_iou_high).tolist()}


__all__ = ["extra_datasets", "evaluation_files", "run_matches", "compare", "Interval", "interval", "per_iou"]
