"""Does a fresh report agree with the committed one? (``dynrcnn check-report``)

A report regenerated on the same CPU type with the locked environment reproduces every run's AP
exactly (bf16 kernels are deterministic per numeric path); on another CPU type or a GPU it
reproduces only statistically. For every configuration both reports hold, and AP / AP90:

* ``identical``: the same seeds with the same values (to 1e-9);
* otherwise the difference of the two reports' seed means (fresh minus committed), with a Welch
  t interval over the per-seed values (:func:`dynrcnn.evaluation.seed_intervals.seed_interval`,
  the image part 0: both reports evaluate the same images) and the three words of
  :func:`~dynrcnn.evaluation.seed_intervals.equivalence` against the declared margins: a fresh
  report "agrees" only where it is ``equivalent within +-m``.

Everything is read from the two ``results.json`` files (per-seed metrics of each configuration).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dynrcnn.evaluation.seed_intervals import MARGINS, NO_SEED_VARIANCE, equivalence, seed_interval, seed_part

IDENTICAL = "identical"
CHECKED_METRICS = ("AP", "AP90")


def per_seed(results: dict) -> dict[str, dict[str, dict[int, float]]]:
    """configuration name -> metric -> {seed: value} of a ``results.json``."""
    out = {}
    for c in results.get("configurations", []):
        out[c["name"]] = {m: {int(r["seed"]): float(r["metrics"][m]) for r in c["runs"]
                              if r.get("metrics") and r["metrics"].get(m) is not None} for m in CHECKED_METRICS}
    return out


def identical(a: dict[int, float], b: dict[int, float], tol: float = 1e-9) -> bool:
    """The same seeds with the same values (to ``tol``): the word :data:`IDENTICAL`."""
    return set(a) == set(b) and all(abs(a[s] - b[s]) < tol for s in a)


def welch(fresh: list[float], committed: list[float]) -> tuple[float, float, float]:
    """``(estimate, seed_var, df)`` of ``mean(fresh) - mean(committed)``: the unpaired seed part of
    :func:`~dynrcnn.evaluation.seed_intervals.seed_part` (Welch); NaN parts when a side has one value."""
    a, b = np.asarray(fresh, float), np.asarray(committed, float)
    if len(a) < 2 or len(b) < 2:
        return float(a.mean() - b.mean()), float("nan"), float("nan")
    est, var, df = seed_part([b[:, None], a[:, None]], [-1.0, 1.0], paired=False)
    return float(est[0]), float(var[0]), float(df[0])


def compare_results(fresh: dict, committed: dict) -> pd.DataFrame:
    """One row per configuration and metric held by both reports (module docstring)."""
    new, old = per_seed(fresh), per_seed(committed)
    rows = []
    for name in [n for n in old if n in new]:
        for m in CHECKED_METRICS:
            f, c = new[name][m], old[name][m]
            if not f or not c:
                continue
            same = identical(f, c)
            est, var, df = welch(list(f.values()), list(c.values()))
            low, high = seed_interval(est, var, 0.0, df) if np.isfinite(var) else (float("nan"), float("nan"))
            word = IDENTICAL if same else (equivalence(est, var, 0.0, df, MARGINS[m]) if np.isfinite(var)
                                           else NO_SEED_VARIANCE)
            shared = sorted(set(f) & set(c))
            rows.append({"configuration": name, "metric": m, "fresh seeds": len(f), "committed seeds": len(c),
                         "shared seeds identical": sum(abs(f[s] - c[s]) < 1e-9 for s in shared),
                         "shared seeds": len(shared), "difference": est, "low": low, "high": high,
                         "margin": MARGINS[m], "verdict": word})
    return pd.DataFrame(rows)


def summary(table: pd.DataFrame) -> str:
    """One sentence: how many rows are identical, equivalent, different, inconclusive."""
    if table.empty:
        return "no configuration is in both reports"
    counts = table["verdict"].map(lambda w: "equivalent" if str(w).startswith("equivalent") else w).value_counts()
    agree = int(counts.get(IDENTICAL, 0) + counts.get("equivalent", 0))
    parts = ", ".join(f"{n} {w}" for w, n in counts.items())
    return (f"{agree} of {len(table)} configuration-metric rows agree with the committed report ({parts}); "
            f"shared seeds reproduced exactly: {int(table['shared seeds identical'].sum())} of "
            f"{int(table['shared seeds'].sum())}")


__all__ = ["IDENTICAL", "CHECKED_METRICS", "identical", "per_seed", "welch", "compare_results", "summary"]
