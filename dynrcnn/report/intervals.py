"""The report's comparisons with seed-level 95 % intervals (:func:`dynrcnn.evaluation.seed_intervals.seed_delta`).

A comparison is ``B - A`` for two groups of runs (each group: one configuration, one run per
training seed), evaluated on one dataset: the run's own evaluation split (``dataset=None``) or
another benchmark it was evaluated on with ``dynrcnn eval RUN --data-root OTHER`` (``dataset``
is that evaluation's name). The training seed is the replicated unit: the interval is a paired
t interval over per-seed differences, widened by the image noise that all seeds share (rules and
the coverage proof: :mod:`dynrcnn.evaluation.seed_intervals` and its test). A configuration with
one seed has no interval.

The image-level part needs each run's AP on every image resample (:func:`dynrcnn.evaluation.stats.ap_samples`),
computed once per run and benchmark and kept on disk beside the runs
(``<runs root>/.cache/ap-samples/``, named by the SHA-256 of the detections, the annotations and
the bootstrap settings), so the results notebook and ``index.html`` share it and the pipeline can
compute it for all runs in parallel (:func:`precompute`) before either needs it.
"""

from __future__ import annotations

import hashlib
import json
import os
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dynrcnn.rundir import runs as runs_mod
from dynrcnn.data.datasets import annotation_file, load_coco
from dynrcnn.io import file_sha256
from dynrcnn.evaluation.seed_intervals import (MARGINS, SeedDelta, equivalence, equivalent_word, p_value,
                                               seed_delta, verdict)
from dynrcnn.evaluation.stats import DEFAULT_BOOT, APSamples, ImageMatches, ap_samples, image_matches, signed

CACHE_DIR = Path(".cache") / "ap-samples"  # under the runs root
SAMPLES_VERSION = 1  # bump when ap_samples() changes what it computes




def evaluation_files(run, dataset: str | None = None) -> tuple[Path, Path] | None:
    """``(annotation file, detections file)`` of ``run``'s evaluation on ``dataset`` (None: its
    own split), or ``None`` when that evaluation is missing."""
    det = runs_mod.detections_file(run.path, dataset)
    if dataset is None:
        ann = annotation_file(run.config.data_root, run.config.val_split)
    else:
        record = run.eval_on(dataset)
        if not record or not record.get("data_root"):
            return None
        ann = annotation_file(record["data_root"], record.get("split", run.config.val_split))
    return (ann, det) if det.is_file() and ann.is_file() else None


def extra_datasets(runs) -> list[str]:
    """Names of the other benchmarks the runs were evaluated on (``eval-<name>.json``)."""
    return sorted({name for r in runs for name in r.eval_names})


def run_matches(run, dataset: str | None = None) -> ImageMatches | None:
    """The per-image matches of ``run`` on ``dataset`` (None when that evaluation is missing)."""
    files = evaluation_files(run, dataset)
    if files is None:
        return None
    ann, det = files
    return image_matches(load_coco(ann), json.loads(det.read_text()))


def samples_file(run, dataset: str | None = None, n_boot: int = DEFAULT_BOOT, seed: int = 0) -> Path | None:
    """Where :func:`run_samples` keeps ``run``'s AP samples on ``dataset`` (``None``: not evaluated)."""
    files = evaluation_files(run, dataset)
    if files is None:
        return None
    ann, det = files
    key = hashlib.sha256(json.dumps([file_sha256(ann), file_sha256(det), n_boot, seed, SAMPLES_VERSION]).encode())
    return Path(run.path).parent / CACHE_DIR / f"{key.hexdigest()[:24]}.npz"


def run_samples(run, dataset: str | None = None, n_boot: int = DEFAULT_BOOT, seed: int = 0) -> APSamples | None:
    """``run``'s :class:`~dynrcnn.evaluation.stats.APSamples` on ``dataset``: from the disk cache, else
    computed and cached there (``None`` when that evaluation is missing). Within one report,
    :class:`~dynrcnn.report.evidence.Evidence` reads each once."""
    path = samples_file(run, dataset, n_boot, seed)
    if path is None:
        return None
    samples = None
    if path.is_file():
        try:
            with np.load(path) as z:
                samples = APSamples(z["image_ids"].tolist(), z["full"], z["boot"], n_boot, seed)
        except (OSError, ValueError, KeyError):  # a torn or foreign file: recompute it
            samples = None
    if samples is None or samples.boot.shape[0] != n_boot:
        samples = ap_samples(run_matches(run, dataset), n_boot, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, image_ids=np.asarray(samples.image_ids), full=samples.full, boot=samples.boot)
        os.replace(tmp, path)
    return samples


def _precompute_one(job) -> None:
    run_dir, dataset, n_boot = job
    run_samples(runs_mod.load_run(run_dir), dataset, n_boot)


def precompute(runs, jobs: int = 1, n_boot: int = DEFAULT_BOOT) -> None:
    """Compute and cache every run's AP samples on every benchmark it was evaluated on,
    ``jobs`` processes at a time (each single-threaded numpy work)."""
    work = [(str(r.path), ds, n_boot) for r in runs for ds in (None, *r.eval_names)
            if evaluation_files(r, ds) is not None]
    if jobs <= 1 or len(work) <= 1:
        for job in work:
            _precompute_one(job)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        list(pool.map(_precompute_one, work))


def compare(runs_a, runs_b, dataset: str | None = None, n_boot: int = DEFAULT_BOOT, seed: int = 0,
            samples=None) -> SeedDelta | None:
    """``B - A`` with its seed-level interval, or ``None`` when a side has no evaluated run on
    ``dataset``. Runs are keyed by their training seed (the same seeds on both sides are paired).
    ``samples(run, dataset)`` gives a run's AP samples (default :func:`run_samples`)."""
    def get(r):
        return samples(r, dataset) if samples is not None else run_samples(r, dataset, n_boot, seed)

    a = {int(r.seed): m for r in runs_a if (m := get(r)) is not None}
    b = {int(r.seed): m for r in runs_b if (m := get(r)) is not None}
    if not a or not b:
        return None
    return seed_delta(a, b)


def seeds_text(delta: SeedDelta) -> str:
    """How many seeds fed a comparison (``10 vs 10 seeds, paired``; B first, as the difference reads)."""
    n_a, n_b = delta.seeds[0], delta.seeds[-1]
    return f"{n_b} vs {n_a} seed{'s' if max(n_a, n_b) > 1 else ''}{', paired' if delta.paired else ''}"


@dataclass(frozen=True)
class Interval:
    """One metric's difference: estimate, 95 % interval, the directional ``status``
    (:func:`~dynrcnn.evaluation.seed_intervals.verdict`), the three-word ``equivalence`` verdict
    against the metric's declared margin, the two-sided ``p`` value, the seed count and the
    per-seed differences (paired comparisons)."""

    estimate: float
    low: float
    high: float
    status: str
    seeds: str  # e.g. "10 vs 10 seeds, paired"
    equivalence: str = ""
    margin: float = float("nan")
    p: float = float("nan")
    se: float = float("nan")
    per_seed: dict = field(default_factory=dict)  # seed -> B - A of that seed

    def text(self, metric: str = "AP") -> str:
        if math.isnan(self.low):
            return f"{signed(self.estimate)} {metric} (one seed: no interval)"
        return f"{signed(self.estimate)} {metric} [{signed(self.low)}, {signed(self.high)}]"

    def as_dict(self) -> dict:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "status": self.status,
                "equivalence": self.equivalence, "margin": self.margin, "p": self.p, "se": self.se,
                "seeds": self.seeds, "per_seed": {str(k): v for k, v in self.per_seed.items()}}


def interval(delta: SeedDelta | None, metric: str, expected_sign: int = 1) -> Interval | None:
    """The :class:`Interval` of one metric (``AP``, ``AP50``, ``AP75``, ``AP90``) of a comparison."""
    if delta is None:
        return None
    est, lo, hi = delta.metrics[metric]
    margin = MARGINS[metric]
    return Interval(est, lo, hi, verdict(lo, hi, expected_sign), seeds_text(delta),
                    equivalence(*delta.stats(metric), margin), margin, p_value(*delta.stats(metric)),
                    delta.se[metric], dict(delta.per_seed.get(metric, {})))


def per_iou(delta: SeedDelta | None) -> dict | None:
    """AP difference at each IoU threshold with its interval (lists, for figures and JSON)."""
    if delta is None:
        return None
    return {"estimate": np.asarray(delta.per_iou).tolist(), "low": np.asarray(delta.per_iou_low).tolist(),
            "high": np.asarray(delta.per_iou_high).tolist()}


__all__ = ["extra_datasets", "evaluation_files", "run_matches", "run_samples", "samples_file", "precompute", "compare",
           "Interval", "interval", "per_iou", "seeds_text", "MARGINS", "equivalent_word"]
