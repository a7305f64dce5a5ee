"""MMDetection side by side: its Faster / Dynamic R-CNN runs next to ours, and what agrees.

The peer runs are trained by ``peer_mmdet/train.py`` in MMDetection's own environment
(``.venv-mmdet``; MMDetection is never imported here), each into a run directory that also
holds MMDetection's logs (``dynamic.jsonl``: its head's updates; ``metrics.jsonl``;
``train_done.json``; ``mmdet_eval.json``: its own CocoMetric). ``dynrcnn convert --preset
--method`` adds our config and checkpoint to that directory and ``dynrcnn eval`` scores it with
our evaluation, so both implementations' runs are read and compared by the same code.

Comparisons (:func:`agreement`): each implementation's Dynamic-minus-Faster gain with its
seed-level 95 % interval and the difference of the two gains (MMDetection's minus ours) with its
interval, from one :func:`~dynrcnn.evaluation.seed_intervals.seed_contrast`. The verdict on the
difference uses the three words: ``different`` (the 95 % interval excludes 0), ``equivalent
within +-m`` (the 90 % interval inside the metric's declared margin,
:data:`~dynrcnn.evaluation.seed_intervals.MARGINS`), ``inconclusive``; an interval that merely
holds 0 is never called agreement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dynrcnn.config import REPORTED_METRICS
from dynrcnn.reference import DYNAMIC_RPN_NMS
from dynrcnn.rundir.run_summary import rpn_nms
from dynrcnn.io import read_json
from dynrcnn.report.tables import json_records, json_value
from dynrcnn.evaluation.seed_intervals import DIFFERENT, MARGINS, equivalence, seed_contrast
from dynrcnn.evaluation.stats import DEFAULT_BOOT, signed

IMPLEMENTATIONS = ("dynrcnn", "mmdet")
LABELS = {"dynrcnn": "dynrcnn (ours)", "mmdet": "MMDetection 3.3.0"}
METHODS = ("baseline", "dynamic")  # Faster R-CNN (both at RPN NMS 0.85) and Dynamic R-CNN
METRICS = REPORTED_METRICS
PEER_EVAL = "mmdet_eval.json"  # MMDetection's own CocoMetric on the checkpoint (peer_mmdet/train.py)


def peer_run_name(method: str, seed: int) -> str:
    """A peer run's directory name under the peer runs' folder."""
    return f"{'dynamic_rcnn' if method == 'dynamic' else 'faster_rcnn'}_seed{int(seed)}"


@dataclass
class Groups:
    """The runs compared: ``runs[(implementation, method)]``, each a list over seeds."""

    runs: dict

    @classmethod
    def build(cls, ours, peer) -> "Groups":
        """Our Faster R-CNN at RPN NMS 0.85 and Dynamic R-CNN (the report of record's), and the
        peer's; only evaluated runs."""
        out = {}
        for impl, runs in (("dynrcnn", ours), ("mmdet", peer)):
            for method in METHODS:
                out[(impl, method)] = sorted(
                    (r for r in runs if r.eval and r.method == method and rpn_nms(r) == DYNAMIC_RPN_NMS),
                    key=lambda r: int(r.seed))
        return cls(out)

    def __getitem__(self, key):
        return self.runs[key]

    def seeds(self, impl: str, method: str) -> list[int]:
        return [int(r.seed) for r in self.runs[(impl, method)]]

    @property
    def complete(self) -> bool:
        return all(self.runs.values())


def _samples(runs, dataset, n_boot):
    from dynrcnn.report.intervals import run_samples

    return {int(r.seed): m for r in runs if (m := run_samples(r, dataset, n_boot)) is not None}


def agreement(groups: Groups, dataset: str | None = None, n_boot: int = DEFAULT_BOOT) -> pd.DataFrame:
    """Per metric: each implementation's Dynamic - Faster gain and the difference of the gains
    (MMDetection's minus ours), each with its 95 % interval, and the verdict. Empty when a
    group has no run evaluated on ``dataset``."""
    cols = ["metric", "dynrcnn gain", "dynrcnn low", "dynrcnn high", "mmdet gain", "mmdet low", "mmdet high",
            "difference", "low", "high", "verdict", "sentence"]
    parts = {k: _samples(v, dataset, n_boot) for k, v in groups.runs.items()}
    if not all(parts.values()):
        return pd.DataFrame(columns=cols)
    ob, od, mb, md = (parts[("dynrcnn", "baseline")], parts[("dynrcnn", "dynamic")],
                      parts[("mmdet", "baseline")], parts[("mmdet", "dynamic")])
    ours = seed_contrast([ob, od], [-1, 1])
    theirs = seed_contrast([mb, md], [-1, 1])
    diff = seed_contrast([ob, od, mb, md], [1, -1, -1, 1])
    rows = []
    for m in METRICS:
        d, lo, hi = diff.metrics[m]
        verdict = equivalence(*diff.stats(m), MARGINS[m])
        rows.append({"metric": m, "dynrcnn gain": ours.metrics[m][0], "dynrcnn low": ours.metrics[m][1],
                     "dynrcnn high": ours.metrics[m][2], "mmdet gain": theirs.metrics[m][0],
                     "mmdet low": theirs.metrics[m][1], "mmdet high": theirs.metrics[m][2],
                     "difference": d, "low": lo, "high": hi, "verdict": verdict,
                     "sentence": agreement_sentence(m, ours.metrics[m], theirs.metrics[m], diff.metrics[m], verdict)})
    return pd.DataFrame(rows, columns=cols)


def agreement_sentence(metric: str, ours, theirs, diff, verdict: str) -> str:
    """One sentence from the numbers: both gains and the verdict word on their difference."""
    (o, olo, ohi), (t, tlo, thi), (d, lo, hi) = ours, theirs, diff
    head = (f"{metric}: Dynamic R-CNN gains {signed(o)} [{signed(olo)}, {signed(ohi)}] over Faster R-CNN in "
            f"dynrcnn and {signed(t)} [{signed(tlo)}, {signed(thi)}] in MMDetection")
    if verdict == DIFFERENT:
        which = "larger" if d > 0 else "smaller"
        return (f"{head}; MMDetection's gain is {abs(d):.2f} {which} (95 % interval [{signed(lo)}, {signed(hi)}] "
                f"excludes 0): the implementations differ.")
    if verdict.startswith("equivalent"):
        return (f"{head}; the gains are {verdict} {metric} (difference {signed(d)}, its 90 % interval lies "
                f"inside the declared margin).")
    return (f"{head}; inconclusive: the difference {signed(d)} [{signed(lo)}, {signed(hi)}] neither excludes 0 "
            f"nor lies within the declared margin of \u00b1{MARGINS[metric]:g} {metric}.")


def metrics_table(groups: Groups, dataset: str | None = None) -> pd.DataFrame:
    """Mean (and min-max over seeds) AP, AP50, AP75, AP90 per implementation and method."""
    rows = []
    for (impl, method), runs in groups.runs.items():
        evals = [r.eval if dataset is None else r.eval_on(dataset) for r in runs]
        evals = [e for e in evals if e]
        row = {"implementation": LABELS[impl], "method": "Dynamic R-CNN" if method == "dynamic" else "Faster R-CNN",
               "seeds": len(evals)}
        for m in METRICS:
            vals = [float(e[m]) for e in evals if e.get(m) is not None]
            row[m] = float(np.mean(vals)) if vals else math.nan
            row[f"{m} range"] = f"{min(vals):.1f}-{max(vals):.1f}" if vals else "-"
        rows.append(row)
    return pd.DataFrame(rows)


def evaluator_agreement(peer_runs) -> pd.DataFrame:
    """Per peer checkpoint: AP from our evaluation of the converted model and from MMDetection's
    own CocoMetric on its own model: the converter's test on checkpoints MMDetection wrote."""
    rows = []
    for r in peer_runs:
        theirs = read_json(r.path / PEER_EVAL) or {}
        for m in ("AP", "AP50", "AP75"):
            ours_v, their_v = (r.eval or {}).get(m), theirs.get(m)
            rows.append({"run": r.path.name, "metric": m, "dynrcnn eval of the converted model": ours_v,
                         "MMDetection CocoMetric": their_v,
                         "difference": None if ours_v is None or their_v is None else float(ours_v) - float(their_v)})
    return pd.DataFrame(rows)


def trajectories(groups: Groups) -> list[dict]:
    """Threshold and beta after every update, per Dynamic R-CNN run of each implementation."""
    out = []
    for impl in IMPLEMENTATIONS:
        for r in groups[(impl, "dynamic")]:
            d = r.dynamic
            if d is None or not len(d):
                continue
            d = d.sort_values("iteration")
            out.append({"implementation": impl, "seed": int(r.seed), "iteration": d["iteration"].astype(int).tolist(),
                        "iou_threshold": d["iou_threshold"].astype(float).tolist(),
                        "beta": d["beta"].astype(float).tolist()})
    return out


def trajectory_table(groups: Groups) -> pd.DataFrame:
    """End values of the threshold and beta, and the iteration the threshold first exceeds 0.5."""
    rows = []
    for t in trajectories(groups):
        it, thr = t["iteration"], t["iou_threshold"]
        crossed = next((i for i, v in zip(it, thr) if v > 0.5), None)
        rows.append({"implementation": LABELS[t["implementation"]], "seed": t["seed"], "final threshold": thr[-1],
                     "final beta": t["beta"][-1], "threshold above 0.5 from iteration": crossed})
    return pd.DataFrame(rows)


def speed_ratio(groups: Groups) -> dict:
    """Median time per training iteration of each implementation's runs (from their
    ``train_done.json``; both trained with one thread, two runs side by side) and ours / theirs."""
    med, minutes = {}, {}
    for impl in IMPLEMENTATIONS:
        done = [r.done for m in METHODS for r in groups[(impl, m)] if r.done]
        vals = [float(d["sec_per_iter_median"]) for d in done if d.get("sec_per_iter_median")]
        med[impl] = float(np.median(vals)) if vals else math.nan
        walls = [float(d["wall_time_sec"]) / 60 for d in done if d.get("wall_time_sec")]
        minutes[impl] = [min(walls), max(walls)] if walls else None
    ratio = med["dynrcnn"] / med["mmdet"] if med["mmdet"] and math.isfinite(med["mmdet"]) else math.nan
    return {"dynrcnn_sec_per_iter": med["dynrcnn"], "mmdet_sec_per_iter": med["mmdet"], "ratio_ours_to_mmdet": ratio,
            "dynrcnn_train_min_per_run": minutes["dynrcnn"], "mmdet_train_min_per_run": minutes["mmdet"]}


def results(groups: Groups, datasets=(None,), versions: dict | None = None, n_boot: int = DEFAULT_BOOT) -> dict:
    """Everything the side-by-side section reports, as JSON-ready data (``figures/mmdet/results.json``)."""
    per_run = []
    for (impl, method), runs in groups.runs.items():
        for r in runs:
            per_run.append({"implementation": impl, "method": method, "seed": int(r.seed), "run": r.path.name,
                            "metrics": {m: json_value((r.eval or {}).get(m)) for m in (*METRICS, "APs", "APm", "APl")},
                            "AP_per_iou": (r.eval or {}).get("AP_per_iou"),
                            "mmdet_coco_metric": read_json(r.path / PEER_EVAL) if impl == "mmdet" else None,
                            "sec_per_iter_median": json_value((r.done or {}).get("sec_per_iter_median"))})
    benchmarks = {}
    for ds in datasets:
        table = agreement(groups, ds, n_boot)
        benchmarks[ds or "evaluation split"] = {"agreement": json_records(table.drop(columns=["sentence"])),
                                                "sentences": list(table["sentence"]),
                                                "metrics": json_records(metrics_table(groups, ds))}
    return {"runs": per_run, "seeds": {f"{i}/{m}": groups.seeds(i, m) for i, m in groups.runs},
            "trajectories": trajectories(groups), "trajectory_end": json_records(trajectory_table(groups)),
            "benchmarks": benchmarks, "evaluator_agreement": json_records(evaluator_agreement(groups[("mmdet", "baseline")]
                                                                                          + groups[("mmdet", "dynamic")])),
            "speed": speed_ratio(groups), "versions": versions or {}, "n_boot": n_boot}


def peer_versions(groups: Groups) -> dict:
    """The package versions MMDetection's runs recorded (``train_done.json``), for ``results.json``."""
    return next(((r.done or {}).get("versions") for r in groups[("mmdet", "dynamic")] if (r.done or {}).get("versions")),
                {})


GAP_CAUSES = ("the differences kept as MMDetection has them (RPN L1 box loss, a 0.3 floor on the RPN's "
              "low-quality matches, RoIAlign with the half-pixel offset and adaptive sampling, fractional anchors, "
              "Xavier / N(0, 0.001) head init, its data filter and sampler; `peer_mmdet/train.py`'s docstring): "
              "they are listed, not yet measured one by one")


def absolute_lines(metrics: list[dict]) -> list[str]:
    """The absolute AP / AP90 of both implementations and methods (seeds' mean and range) and
    one sentence on the gap between the implementations, from ``metrics`` (the records of
    :func:`metrics_table`)."""
    if not metrics:
        return []
    lines = ["| implementation | method | seeds | AP (range) | AP90 (range) |", "|---|---|---|---|---|"]
    by = {}
    for row in metrics:
        by[(row["implementation"], row["method"])] = row
        lines.append(f"| {row['implementation']} | {row['method']} | {row['seeds']} | {row['AP']:.2f} "
                     f"({row['AP range']}) | {row['AP90']:.2f} ({row['AP90 range']}) |")
    gaps = []
    for method in ("Faster R-CNN", "Dynamic R-CNN"):
        a, b = by.get((LABELS["dynrcnn"], method)), by.get((LABELS["mmdet"], method))
        if a and b:
            gaps.append(f"{method} {signed(b['AP'] - a['AP'])} AP / {signed(b['AP90'] - a['AP90'])} AP90")
    if gaps:
        lines += ["", "MMDetection minus ours, absolute: " + ", ".join(gaps) + f". Possible causes: {GAP_CAUSES}."]
    return lines + [""]


def readme_body(res: dict, figures: str, command: str) -> str:
    """README's MMDetection block from :func:`results` (``figures``: the figures folder, relative)."""
    lines = [f"## MMDetection side by side (written by `{command}`; do not edit by hand)", "",
             f"![threshold and beta of both implementations]({figures}/trajectories.png)", "",
             f"![gain of Dynamic R-CNN in each implementation]({figures}/gains.png)", ""]
    seeds = res["seeds"]
    lines.append("Seeds: " + ", ".join(f"{k} {v}" for k, v in seeds.items()) + ". Versions: "
                 + ", ".join(f"{k} {v}" for k, v in res["versions"].items()) + ".")
    lines.append("")
    for name, bench in res["benchmarks"].items():
        lines += [f"**{name}** (Dynamic R-CNN - Faster R-CNN, both at RPN NMS {DYNAMIC_RPN_NMS}; 95 % intervals):", "",
                  "| metric | dynrcnn gain | MMDetection gain | difference (MMDetection - dynrcnn) | verdict |",
                  "|---|---|---|---|---|"]
        for row in bench["agreement"]:
            def iv(p):
                return f"{signed(row[p + ' gain'])} [{signed(row[p + ' low'])}, {signed(row[p + ' high'])}]"
            lines.append(f"| {row['metric']} | {iv('dynrcnn')} | {iv('mmdet')} | {signed(row['difference'])} "
                         f"[{signed(row['low'])}, {signed(row['high'])}] | {row['verdict']} |")
        lines.append("")
        lines += absolute_lines(bench["metrics"])
    sp = res["speed"]
    if sp.get("ratio_ours_to_mmdet") is not None:
        lines.append(f"Time per training iteration (one thread, two runs side by side): dynrcnn "
                     f"{sp['dynrcnn_sec_per_iter']:.3f} s, MMDetection {sp['mmdet_sec_per_iter']:.3f} s, "
                     f"ratio x{sp['ratio_ours_to_mmdet']:.2f}.")
    spans = {LABELS[i]: sp.get(f"{i}_train_min_per_run") for i in IMPLEMENTATIONS}
    if all(spans.values()):
        lines.append("Training time of one run: " + ", ".join(f"{k} {lo:.1f}-{hi:.1f} min" for k, (lo, hi)
                                                             in spans.items()) + ".")
    return "\n".join(lines) + "\n"


__all__ = ["IMPLEMENTATIONS", "LABELS", "METHODS", "METRICS", "PEER_EVAL", "Groups", "agreement",
           "agreement_sentence", "metrics_table", "evaluator_agreement", "trajectories", "trajectory_table",
           "speed_ratio", "peer_run_name", "results", "peer_versions", "readme_body", "absolute_lines"]
