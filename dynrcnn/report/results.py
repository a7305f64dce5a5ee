"""``results.json``: the report's numbers in machine-readable form, next to its figures.

For every configuration (method x RPN NMS): its runs with their seeds and per-seed metrics
(AP, AP50, AP75, AP90, AP per IoU threshold, on the evaluation split and on every other
benchmark they were evaluated on), the threshold and beta at the end of training and when the
threshold crossed 0.5. For every comparison of the ablation and the headline: the difference
with its seed-level 95 % interval, verdict words (directional and equivalence, with the declared
margins) and per-seed differences, per metric and per IoU threshold, on every benchmark. For every
claim: its family (primary, Holm-corrected; secondary; exploratory), its status word
(``reproduced``, ``contradicted``, ``inconclusive``, ``not-testable``; context rows ``context``)
and its sentence. Written by the pipeline with the README block and the
figures of the same runs.
"""

from __future__ import annotations

import datetime
import json
import math
from pathlib import Path

from dynrcnn.rundir import run_summary
from dynrcnn.io import atomic_write_bytes
from dynrcnn.report.analysis import METRICS, dynamic_facts
from dynrcnn.report.evidence import evidence_of, main_key
from dynrcnn.report.curves import config_label
from dynrcnn.report.claims import FAMILY_ALPHA, PRIMARY, claims
from dynrcnn.evaluation.seed_intervals import variance_decomposition
from dynrcnn.report.intervals import MARGINS, interval, per_iou

SCHEMA_VERSION = 2  # 2: seed-level intervals, verdict words with margins, the primary family
INTERVAL_METHOD = ("95% seed-level interval of a difference: paired t over per-seed differences (Welch when the "
                   "seeds differ), widened in quadrature by the image noise common to all seeds (estimated from "
                   "image-bootstrap AP, recomputed exactly as pycocotools does); coverage checked by simulation "
                   "(tests/test_seed_intervals.py). 'equivalent within +-m': the 90% interval inside the declared "
                   "margin; one seed: no interval")


def _clean(v):
    """JSON-safe: NaN/inf become None, numpy scalars plain numbers."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _metrics(record: dict | None) -> dict | None:
    if not record:
        return None
    return {**{m: record.get(m) for m in METRICS}, "AP_per_iou": record.get("AP_per_iou"),
            "iou_thresholds": record.get("iou_thresholds")}


def configurations(runs) -> list[dict]:
    ev = evidence_of(runs)
    out = []
    datasets = ev.datasets[1:]
    for key, rs in sorted(ev.groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        per_seed = []
        for r in sorted(rs, key=lambda r: r.seed):
            per_seed.append({"run": run_summary.run_name(r), "seed": r.seed, "iterations": r.iterations,
                             "metrics": _metrics(r.eval),
                             "metrics_on": {ds: _metrics(r.eval_on(ds)) for ds in datasets},
                             "dynamic": dynamic_facts(r),
                             "sec_per_iter_median": (r.done or {}).get("sec_per_iter_median")})
        means = {m: sum(p["metrics"][m] for p in per_seed) / len(per_seed) for m in METRICS}
        out.append({"name": config_label(key), "method": key[0], "rpn_nms": key[1],
                    "seeds": [p["seed"] for p in per_seed], "mean": means, "runs": per_seed})
    return out


def environment_of(runs) -> dict:
    """Where the numbers come from: the report's own environment against the lock
    (:func:`dynrcnn.rundir.environment.environment_record`), and the machines the runs trained on
    (CPU models, numeric paths; runs whose segments ran on different numeric paths are named: their
    numbers belong to no single machine). bf16 results depend on the CPU's numeric path, so the
    same seed reproduces exactly only on the same path. Read once per evidence (the summary page,
    README's block and ``results.json`` share it: the lock check reads every package's metadata)."""
    ev = evidence_of(runs)
    return ev.once("environment", lambda: _environment(ev))


def _environment(runs) -> dict:
    from dynrcnn.rundir.environment import environment_record
    from dynrcnn.rundir.history import mixed_numeric_paths, segments

    cpus, paths = set(), set()
    for r in runs:
        for seg in segments(r):
            cpus.add(seg.get("cpu_model"))
            paths.add(seg.get("numeric_path"))
    return {"report": environment_record(), "runs": {
        "cpu_models": sorted(c for c in cpus if c), "numeric_paths": sorted(p for p in paths if p),
        "mixed_numeric_paths": sorted(run_summary.run_name(r) for r in runs if mixed_numeric_paths(r))}}


def environment_line(env: dict) -> str:
    """One line for the summary page and README: the runs' machine and numeric path, the lock
    check, and any run that changed numeric path."""
    r, here = env["runs"], env["report"]["versions"]
    line = (f"Runs trained on {', '.join(r['cpu_models']) or 'a CPU their record does not name'} "
            f"(numeric path {', '.join(r['numeric_paths']) or 'not recorded'}); this report was assembled on "
            f"{here['cpu_model']} ({here['numeric_path']}) and {env['report']['sentence']}.")
    if r["mixed_numeric_paths"]:
        line += f" Runs resumed on another numeric path: {', '.join(r['mixed_numeric_paths'])}."
    return line


def comparison_pairs(runs) -> list[tuple[str, tuple, tuple]]:
    """``(label, baseline key, other key)`` of every comparison the report states: each
    configuration against the baseline at its RPN NMS, and Dynamic R-CNN against the
    reference baseline (RPN NMS 0.7, the paper's comparison)."""
    groups = evidence_of(runs).groups
    ref = main_key(groups, "baseline")
    pairs = []
    for key in sorted(groups, key=lambda k: (k[1], k[0])):
        same = ("baseline", key[1])
        if key[0] != "baseline" and same in groups:
            pairs.append((same, key))
        if ref and key != ref and (key[0] == "dynamic" or key[0] == "baseline") and (ref, key) not in pairs:
            pairs.append((ref, key))
    return [(f"{config_label(b)} - {config_label(a)}", a, b) for a, b in pairs]


def comparisons(runs) -> list[dict]:
    ev = evidence_of(runs)
    groups = ev.groups
    out = []
    for label, a, b in comparison_pairs(ev):
        for ds in ev.datasets:
            delta = ev.compare(groups[a], groups[b], ds)
            if delta is None:
                continue
            out.append({"comparison": label, "baseline": config_label(a), "other": config_label(b),
                        "benchmark": "own" if ds is None else ds,
                        "metrics": {m: interval(delta, m).as_dict() for m in METRICS},
                        "per_iou": per_iou(delta), "seeds": list(delta.seeds), "paired_seeds": delta.paired})
    return out


def variance(runs) -> list[dict]:
    """The variance decomposition (seed vs image, :func:`~dynrcnn.evaluation.seed_intervals.variance_decomposition`)
    of the primary comparison (Dynamic R-CNN minus the baseline at its RPN NMS) for AP and AP90 on
    every benchmark: what decides the number of seeds and the validation size."""
    ev = evidence_of(runs)
    d_key = main_key(ev.groups, "dynamic")
    b_key = ("baseline", d_key[1]) if d_key else None
    if not d_key or b_key not in ev.groups:
        return []
    out = []
    for ds in ev.datasets:
        a = {int(r.seed): m for r in ev.groups[b_key] if (m := ev.samples(r, ds)) is not None}
        b = {int(r.seed): m for r in ev.groups[d_key] if (m := ev.samples(r, ds)) is not None}
        for metric in ("AP", "AP90"):
            if (v := variance_decomposition(a, b, metric)) is not None:
                out.append({"benchmark": "own" if ds is None else ds, **v})
    return out


def results(runs, command: str = "") -> dict:
    """Everything above as one JSON-ready dict."""
    runs = evidence_of(runs)
    return _clean({
        "schema_version": SCHEMA_VERSION,
        "generated_by": command,
        "generated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "interval_method": INTERVAL_METHOD,
        "margins": dict(MARGINS),
        "primary_family": {"claims": [k for k, _ in PRIMARY], "benchmarks": ["own", *runs.datasets[1:]],
                           "correction": "holm", "alpha": FAMILY_ALPHA},
        "benchmarks": ["own", *runs.datasets[1:]],
        "environment": environment_of(runs),
        "configurations": configurations(runs),
        "comparisons": comparisons(runs),
        "variance": variance(runs),
        "claims": [{"key": c.key, "claim": c.claim, "family": c.family, "source": c.source, "published": c.published,
                    "ours": c.ours, "status": c.status, "sentence": c.sentence, "compared": c.compared,
                    "intervals": c.intervals}
                   for c in claims(runs)],
    })


def write_results(runs, path, command: str = "") -> Path:
    """Write :func:`results` of ``runs`` to ``path`` (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(results(runs, command), indent=1) + "\n").encode())
    return path


__all__ = ["SCHEMA_VERSION", "variance", "environment_of", "environment_line", "configurations", "comparison_pairs", "comparisons", "results", "write_results"]
