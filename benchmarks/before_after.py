"""Did a speed change move the science? Two complete reports' runs compared configuration by configuration.

For every configuration (method, RPN NMS) both runs folders hold, on the evaluation split and on
each extra benchmark both were evaluated on: AP and AP90 ``after - before`` with the report's
seed-level 95 % interval (:func:`dynrcnn.evaluation.seed_intervals.seed_contrast`: the same
training seed before and after is a pair, the image part added), and the same for Dynamic R-CNN's
gain over the same-NMS baseline (a difference of differences). Each row's verdict uses the
report's words and its margins declared in code (:data:`~dynrcnn.evaluation.seed_intervals.MARGINS`):
``identical`` when every seed's value is the same before and after, else ``different`` /
``equivalent within +-m`` / ``inconclusive`` (:func:`~dynrcnn.evaluation.seed_intervals.equivalence`).
A change is kept when every row is identical or equivalent; an interval that merely holds 0 is
inconclusive, not "unchanged".

    python benchmarks/before_after.py /tmp/old/runs/mini runs/mini
    python benchmarks/before_after.py OLD/runs/mini runs/mini --page docs/speed_check.md   # its SPEED-CHECK block
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from dynrcnn.evaluation.seed_intervals import equivalence, seed_contrast
from dynrcnn.evaluation.stats import DEFAULT_BOOT, signed
from dynrcnn.report.consistency import IDENTICAL, identical
from dynrcnn.report.evidence import group_runs
from dynrcnn.report.intervals import MARGINS, extra_datasets, run_samples
from dynrcnn.rundir.runs import find_runs

METRICS = ("AP", "AP90")
BLOCK = "SPEED-CHECK"  # the block of the page --page writes
KEPT = (IDENTICAL, "equivalent")  # the verdicts (by first word) that keep a change


def _samples(runs, dataset, n_boot: int) -> dict:
    """seed -> the run's AP samples on ``dataset`` (runs without that evaluation left out)."""
    return {int(r.seed): m for r in runs if (m := run_samples(r, dataset, n_boot)) is not None}


def _row(groups: list[dict], weights, metric: str) -> dict:
    """One contrast's estimate, 95 % interval, per-side means and verdict (module docstring)."""
    delta = seed_contrast(groups, weights)
    est, lo, hi = delta.metrics[metric]
    half = len(groups) // 2  # the first half of the groups is "after", the second "before" (weights negated)
    values = delta.group_values[metric]
    same = all(identical(values[k], values[k + half]) for k in range(half))
    word = IDENTICAL if same else equivalence(*delta.stats(metric), MARGINS[metric])
    means = [sum(g.values()) / len(g) for g in values]
    return {"before": sum(w * m for w, m in zip(weights[:half], means[half:])),
            "after": sum(w * m for w, m in zip(weights[:half], means[:half])),
            "delta": est, "low": lo, "high": hi, "verdict": word,
            "seeds": (f"{delta.seeds[0]} vs {delta.seeds[1]}" if half == 1 else f"{min(delta.seeds)} per group")
            + (", paired" if delta.paired else "")}


def rows(before, after, n_boot: int = DEFAULT_BOOT) -> list[dict]:
    """One row per (dataset, configuration, metric), and one per (dataset, gain, metric)."""
    gb, ga = group_runs(before), group_runs(after)
    keys = sorted(set(gb) & set(ga), key=lambda k: (k[1], k[0]))
    datasets = [None] + [d for d in extra_datasets(after) if d in extra_datasets(before)]
    out = []
    for ds in datasets:
        name = ds or "eval split"
        samples = {(side, k): _samples(g[k], ds, n_boot) for side, g in (("a", ga), ("b", gb)) for k in keys}
        for key in keys:
            a, b = samples[("a", key)], samples[("b", key)]
            if not a or not b:
                continue
            for m in METRICS:
                out.append({"dataset": name, "what": f"{key[0]} (RPN NMS {key[1]:g})", "metric": m,
                            **_row([a, b], [1.0, -1.0], m)})
        for nms in sorted({k[1] for k in keys}):
            dyn, base = ("dynamic", nms), ("baseline", nms)
            groups = [samples.get((side, k)) for side, k in (("a", dyn), ("a", base), ("b", dyn), ("b", base))]
            if not all(groups):
                continue
            for m in METRICS:
                out.append({"dataset": name, "what": f"gain of dynamic over baseline (RPN NMS {nms:g})", "metric": m,
                            **_row(groups, [1.0, -1.0, -1.0, 1.0], m)})
    return out


def markdown(table: list[dict]) -> str:
    lines = ["| benchmark | configuration | metric | before | after | after - before [95 % interval] | seeds | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['dataset']} | {r['what']} | {r['metric']} | {r['before']:.2f} | {r['after']:.2f} | "
                     f"{signed(r['delta'])} [{signed(r['low'])}, {signed(r['high'])}] | {r['seeds']} | {r['verdict']} |")
    return "\n".join(lines)


def summary(table: list[dict]) -> str:
    """How many rows keep the change, by verdict."""
    counts = Counter(r["verdict"] for r in table)
    kept = sum(n for w, n in counts.items() if w.split()[0] in KEPT)
    return (f"{kept} of {len(table)} rows identical or equivalent within their declared margins ("
            + ", ".join(f"{n} {w}" for w, n in sorted(counts.items())) + ")"
            + ("; the change is kept" if kept == len(table) else "; the change moved or could not be shown unchanged"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("before", help="runs folder of the report before the change (e.g. runs/mini of the old commit)")
    p.add_argument("after", help="runs folder of the report after it")
    p.add_argument("--n-boot", type=int, default=DEFAULT_BOOT)
    p.add_argument("--page", default=None, help=f"also write the table into this page's {BLOCK} block")
    p.add_argument("--label", default="", help="what was compared, for the page (e.g. the two commits)")
    args = p.parse_args(argv)
    table = rows(find_runs(args.before), find_runs(args.after), args.n_boot)
    if not table:
        print(f"no configuration evaluated in both {args.before} and {args.after}", file=sys.stderr)
        return 2
    text = markdown(table) + "\n\n" + summary(table)
    print(text)
    if args.page:
        from dynrcnn.report.text import write_page_block

        head = (f"{args.label}\n\n" if args.label else "") + (
            "Written by `python benchmarks/before_after.py BEFORE AFTER --page PAGE` (runs folders of the two reports).\n\n")
        return write_page_block(args.page, BLOCK, head + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
