"""Did a speed change move the science? Two complete reports' runs compared configuration by configuration.

For every configuration (method, RPN NMS) both runs folders hold, on the evaluation split and on
each extra benchmark both were evaluated on: AP and AP90 ``after - before`` with the report's
hierarchical-bootstrap 95 % interval (images resampled, seeds resampled and paired), and the same
for Dynamic R-CNN's gain over the same-NMS baseline (a difference of differences). A change is
kept when every interval holds 0: "within seed noise".

    python benchmarks/before_after.py /tmp/old/runs/mini runs/mini
"""

from __future__ import annotations

import argparse
import sys

from dynrcnn.report.evidence import group_runs
from dynrcnn.report.intervals import compare, extra_datasets, run_samples
from dynrcnn.rundir.runs import find_runs
from dynrcnn.evaluation.stats import DEFAULT_BOOT, bootstrap_contrast, metric_of, signed

METRICS = ("AP", "AP90")


def _text(est: float, lo: float, hi: float) -> str:
    return f"{signed(est)} [{signed(lo)}, {signed(hi)}]"


def _mean(runs, metric: str, dataset) -> float:
    """The seeds' mean of ``metric`` (from the runs' cached AP samples)."""
    return sum(float(metric_of(run_samples(r, dataset).full, metric)) for r in runs) / len(runs)


def rows(before, after, n_boot: int = DEFAULT_BOOT) -> list[dict]:
    """One row per (dataset, configuration, metric), and one per (dataset, gain, metric)."""
    gb, ga = group_runs(before), group_runs(after)
    keys = sorted(set(gb) & set(ga), key=lambda k: (k[1], k[0]))
    datasets = [None] + [d for d in extra_datasets(after) if d in extra_datasets(before)]
    out = []
    for ds in datasets:
        name = ds or "eval split"
        for key in keys:
            delta = compare(gb[key], ga[key], ds, n_boot)
            for m in METRICS:
                est, lo, hi = delta.metrics[m]
                out.append({"dataset": name, "what": f"{key[0]} (RPN NMS {key[1]:g})", "metric": m,
                            "before": _mean(gb[key], m, ds), "after": _mean(ga[key], m, ds),
                            "delta": est, "low": lo, "high": hi, "seeds": f"{delta.seeds_a} vs {delta.seeds_b}"})
        for nms in sorted({k[1] for k in keys}):
            dyn, base = ("dynamic", nms), ("baseline", nms)
            if not all(k in gb and k in ga for k in (dyn, base)):
                continue
            groups = [{int(r.seed): run_samples(r, ds, n_boot) for r in g[k]} for g, k in
                      ((ga, dyn), (ga, base), (gb, dyn), (gb, base))]
            delta = bootstrap_contrast(groups, [1, -1, -1, 1], n_boot=n_boot)
            for m in METRICS:
                est, lo, hi = delta.metrics[m]
                out.append({"dataset": name, "what": f"gain of dynamic over baseline (RPN NMS {nms:g})", "metric": m,
                            "before": _mean(gb[dyn], m, ds) - _mean(gb[base], m, ds),
                            "after": _mean(ga[dyn], m, ds) - _mean(ga[base], m, ds),
                            "delta": est, "low": lo, "high": hi, "seeds": f"{delta.seeds_a} per group"})
    return out


def markdown(table: list[dict]) -> str:
    lines = ["| benchmark | configuration | metric | before | after | after - before [95 % interval] | verdict |",
             "|---|---|---|---|---|---|---|"]
    for r in table:
        verdict = "within seed noise" if r["low"] <= 0 <= r["high"] else "moved"
        lines.append(f"| {r['dataset']} | {r['what']} | {r['metric']} | {r['before']:.2f} | {r['after']:.2f} | "
                     f"{_text(r['delta'], r['low'], r['high'])} | {verdict} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("before", help="runs folder of the report before the change (e.g. runs/mini of the old commit)")
    p.add_argument("after", help="runs folder of the report after it")
    p.add_argument("--n-boot", type=int, default=DEFAULT_BOOT)
    args = p.parse_args(argv)
    table = rows(find_runs(args.before), find_runs(args.after), args.n_boot)
    if not table:
        print(f"no configuration evaluated in both {args.before} and {args.after}", file=sys.stderr)
        return 2
    print(markdown(table))
    moved = [r for r in table if not r["low"] <= 0 <= r["high"]]
    print(f"\n{len(table) - len(moved)} of {len(table)} intervals hold 0"
          + (f"; moved: {', '.join(r['dataset'] + ' ' + r['what'] + ' ' + r['metric'] for r in moved)}" if moved else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
