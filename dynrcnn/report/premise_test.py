"""The premise test (issue 32, step 3; ``make report-premise``): the schedule on the frozen benchmark.

The search (:mod:`dynrcnn.report.premise`) measured candidate benchmarks on baseline runs at fixed
R-CNN thresholds only; the declared rule (:func:`dynrcnn.report.premise.chosen`) picks the first
candidate whose paradox interval lies below 0, and :data:`FROZEN` pins it (its name, the hash of the
annotations the search measured and the hash of a fresh draw, :data:`TEST_DATA_SEED`), committed
before any Dynamic R-CNN, DLA or DSL run on it. The test then trains, on that fresh draw, at RPN NMS
0.85 and with every seed of :data:`SEEDS`, paired:

- the baseline at fixed 0.5 (``fixed50``), 0.6 (``fixed60``) and 0.7 (``fixed70``);
- DLA alone, DSL alone, and Dynamic R-CNN (DLA + DSL).

**Claims, declared before the runs** (:data:`PRIMARY`, Holm-corrected as one family at
:data:`~dynrcnn.report.claims.FAMILY_ALPHA`; :data:`SECONDARY` uncorrected and labelled so): the
paradox again on the fresh draw (fixed 0.7 below fixed 0.5, AP); Dynamic R-CNN above the baseline
(AP and AP90); and the schedule above the best fixed threshold, chosen on the *search's* draw from
the frozen candidate's record (:func:`dynrcnn.report.premise.best_fixed_threshold`), not on the
runs it is tested with. Each comparison is the report's seed-level interval with its status and
equivalence words (:func:`dynrcnn.report.claims.interval_verdict`); a primary row is
``reproduced`` only when its Holm-adjusted p is below the family's level too.

:func:`results` is ``figures/premise/results.json``: every run's numbers, the claims, the targets
(a)-(d) measured again on the test's own fixed-threshold runs, the positives-per-object curves and
the threshold / beta trajectories beside the authors' COCO trajectory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dynrcnn.errors import DynrcnnError
from dynrcnn.evaluation.seed_intervals import CONTRADICTED, INCONCLUSIVE, METRICS, REPRODUCED, holm
from dynrcnn.evaluation.stats import signed
from dynrcnn.reference import DYNAMIC_RPN_NMS
from dynrcnn.report.claims import FAMILY_ALPHA, PRIMARY_FAMILY, SECONDARY, interval_verdict
from dynrcnn.report.profiles import NMS_085, Profile, RunSpec, seeded_runs
from dynrcnn.report.study import run_times
from dynrcnn.report.trees import final_of

#: the fresh draw the test runs on: not the report's 0, the pretraining's 1, the second benchmark's 2
#: or the search's 3 (:data:`dynrcnn.report.premise.SEARCH_DATA_SEED`)
TEST_DATA_SEED = 4
SEEDS = tuple(range(10))  # training seeds of every configuration, paired (issue 32: at least ten)
DATA_ROOT = "data/premise"  # the frozen benchmark's test draw
RUNS_ROOT = "runs/premise_test"
FIGURES = "figures/premise"
#: the configurations: (run name, method, fixed R-CNN threshold or None for a schedule)
CONFIGS = (("fixed50", "baseline", 0.5), ("fixed60", "baseline", 0.6), ("fixed70", "baseline", 0.7),
           ("dla", "dla", None), ("dsl", "dsl", None), ("dynamic", "dynamic", None))
LABELS = {"fixed50": "baseline, fixed 0.5", "fixed60": "fixed 0.6", "fixed70": "fixed 0.7", "dla": "DLA",
          "dsl": "DSL", "dynamic": "Dynamic R-CNN"}
BEST = "best_fixed"  # stands for the fixed threshold chosen on the search's draw


@dataclass(frozen=True)
class Comparison:
    """``other - base`` on ``metric``, expected to have ``sign`` (+1: ``other`` higher)."""

    key: str
    claim: str
    other: str
    base: str
    metric: str
    sign: int = 1


#: the primary family, declared before any run on the frozen benchmark (Holm-corrected together)
PRIMARY = (
    Comparison("paradox", "fixed 0.7 vs fixed 0.5: the paradox again, on a fresh draw", "fixed70", "fixed50", "AP", -1),
    Comparison("dynamic_vs_baseline", "Dynamic R-CNN vs the baseline", "dynamic", "fixed50", "AP"),
    Comparison("dynamic_vs_baseline", "Dynamic R-CNN vs the baseline", "dynamic", "fixed50", "AP90"),
    Comparison("dla_vs_best_fixed", "DLA vs the best fixed threshold (chosen on the search's draw)", "dla", BEST, "AP"),
)
#: every other row: uncorrected, labelled secondary
SECONDARY_ROWS = (
    Comparison("paradox", "fixed 0.7 vs fixed 0.5: the paradox again, on a fresh draw", "fixed70", "fixed50", "AP90",
               -1),
    Comparison("dla_vs_best_fixed", "DLA vs the best fixed threshold (chosen on the search's draw)", "dla", BEST,
               "AP90"),
    *(Comparison("dynamic_vs_best_fixed", "Dynamic R-CNN vs the best fixed threshold (chosen on the search's draw)",
                 "dynamic", BEST, m) for m in ("AP", "AP90")),
    *(Comparison("dla_vs_baseline", "DLA vs the baseline", "dla", "fixed50", m) for m in ("AP", "AP90")),
    *(Comparison("dsl_vs_baseline", "DSL vs the baseline", "dsl", "fixed50", m) for m in ("AP", "AP90")),
    *(Comparison("fixed06_vs_05", "fixed 0.6 vs fixed 0.5", "fixed60", "fixed50", m, 1) for m in ("AP", "AP90")),
)


@dataclass(frozen=True)
class Frozen:
    """The frozen benchmark: the candidate the declared rule chose, the sha256 of the annotations
    its search measured (its line of ``docs/premise_candidates.jsonl``) and of the test's draw."""

    candidate: str
    search_sha256: str
    test_sha256: str


#: the frozen benchmark (issue 32, step 2), pinned before any Dynamic R-CNN, DLA or DSL run on it:
#: what ``dynrcnn premise freeze`` printed on the search's record of 2026-12-05 (c0_current, the
#: first declared candidate whose paradox interval lies below 0) and its draw on TEST_DATA_SEED
FROZEN: Frozen | None = Frozen("c0_current", "fd9b15ef1415e4f8db31dd3a86a9c11cef7e53505a2e556fa7f250d53a4d6cf2",
                               "c9be95d2f16f798df547d0610a2a600b34ac235b57bdefcc91a2d908a65337c7")


def config_overrides(name: str) -> tuple[str, ...]:
    """The ``--set`` overrides of configuration ``name`` beside the candidate's own."""
    _, _, threshold = next(c for c in CONFIGS if c[0] == name)
    return (NMS_085,) + ((f"model.fg_iou_thresh={threshold:g}",) if threshold is not None else ())


def premise_profile(candidate, name: str = "premise", seeds=SEEDS, extra_overrides=(),
                    data_root: str | None = DATA_ROOT, description: str = "", preset: str | None = None) -> Profile:
    """The test's runs as a :class:`~dynrcnn.report.profiles.Profile`: every configuration with
    every seed, on the candidate's recipe (:func:`dynrcnn.report.premise.candidate_overrides`:
    its overrides, the log period and the proposal statistics of the search's runs, so that
    targets (b) and (c) are measured as the search measured them)."""
    from dynrcnn.report.premise import PRESET, candidate_overrides

    preset = preset or PRESET
    specs = tuple(RunSpec(n, method, overrides=config_overrides(n)) for n, method, _ in CONFIGS)
    return Profile(name=name, preset=preset, runs=seeded_runs(specs, seeds), data_root=data_root,
                   generate=None, overrides=candidate_overrides(candidate, preset, extra_overrides),
                   stats_methods=(), figures_dir=FIGURES,
                   description=description or f"{candidate.name}, fresh draw (data seed {TEST_DATA_SEED}), "
                                              f"{len(CONFIGS)} configurations x {len(seeds)} paired seeds")


def frozen_candidate(frozen: Frozen | None = None):
    """The frozen :class:`~dynrcnn.report.premise.Candidate`; a clear error before the freeze."""
    from dynrcnn.report.premise import CANDIDATES

    frozen = frozen or FROZEN
    if frozen is None:
        raise DynrcnnError("no benchmark is frozen yet: run 'dynrcnn premise search', then 'dynrcnn premise freeze' "
                           "and commit the FROZEN it prints (dynrcnn.report.premise_test.FROZEN)")
    return CANDIDATES[frozen.candidate]


# --------------------------------------------------------------------------------------------
# the runs


def groups(runs, seeds=SEEDS) -> dict[str, list]:
    """Evaluated runs by configuration (``fixed50`` ... ``dynamic``), each sorted by seed."""
    from dynrcnn.report.controls import base_name

    out: dict[str, list] = {n: [] for n, _, _ in CONFIGS}
    for r in runs:
        name = base_name(r.path.name)
        if name in out and r.eval and int(r.seed) in seeds:
            out[name].append(r)
    return {n: sorted(rs, key=lambda r: int(r.seed)) for n, rs in out.items()}


def run_rows(g: dict[str, list]) -> list[dict]:
    """One row per run: configuration, seed, AP, AP50, AP75, AP90, the final threshold and beta."""
    return [{"run": r.path.name, "config": name, "seed": int(r.seed), **{m: float(r.eval[m]) for m in METRICS},
             "final_threshold": final_of(r, "iou_threshold"), "final_beta": final_of(r, "beta"), **run_times(r)}
            for name, rs in g.items() for r in rs]


def config_means(g: dict[str, list]) -> dict:
    """Per configuration: its label, seeds, and the mean of each metric and of AP at each IoU."""
    return {n: {"label": LABELS[n], "seeds": len(rs),
                **{m: float(np.mean([r.eval[m] for r in rs])) if rs else None for m in METRICS},
                "AP_per_iou": np.mean([r.eval["AP_per_iou"] for r in rs], axis=0).tolist() if rs else []}
            for n, rs in g.items()}


# --------------------------------------------------------------------------------------------
# the claims


def claim_rows(ev, g: dict[str, list], best: str) -> list[dict]:
    """Every declared comparison on the test's evaluation split: the difference, its seed-level 95 %
    interval, p, status and equivalence words, its family; the primary family Holm-corrected."""
    rows = []
    for family, comps in ((PRIMARY_FAMILY, PRIMARY), (SECONDARY, SECONDARY_ROWS)):
        for c in comps:
            base = best if c.base == BEST else c.base
            row = {"key": c.key, "claim": c.claim, "other": c.other, "base": base, "metric": c.metric,
                   "expected_sign": c.sign, "family": family, "estimate": math.nan, "low": math.nan,
                   "high": math.nan, "p": math.nan, "status": INCONCLUSIVE, "equivalence": "", "seeds": "",
                   "per_seed": {}, "margin": math.nan}
            if g.get(base) and g.get(c.other):
                est, verdict, record = interval_verdict(ev, g[base], g[c.other], c.metric, c.sign, [None])
                iv = record.get("own", {})
                row.update(estimate=est, low=iv.get("low", math.nan), high=iv.get("high", math.nan),
                           p=iv.get("p", math.nan), status=verdict.status, equivalence=iv.get("equivalence", ""),
                           seeds=iv.get("seeds", ""), per_seed=iv.get("per_seed", {}),
                           margin=iv.get("margin", math.nan))
            rows.append(row)
    primary = [r for r in rows if r["family"] == PRIMARY_FAMILY]
    for r, p in zip(primary, holm([r["p"] for r in primary])):
        r["p_holm"] = float(p)
        if r["status"] == REPRODUCED and not p < FAMILY_ALPHA:
            r["status"] = INCONCLUSIVE  # the direction holds alone, not in the family
    return rows


def claim_text(r: dict) -> str:
    """``+1.27 AP [-0.40, +2.94] (10 vs 10 seeds, paired): reproduced, different``."""
    if not math.isfinite(r["estimate"]):
        return f"{r['claim']}, {r['metric']}: not measured"
    bounds = f" [{signed(r['low'])}, {signed(r['high'])}]" if math.isfinite(r["low"]) else " (no interval)"
    holm_ = f", Holm p {r['p_holm']:.2g}" if "p_holm" in r and math.isfinite(r["p_holm"]) else ""
    return (f"{r['claim']}: {signed(r['estimate'])} {r['metric']}{bounds} ({r['seeds']}{holm_}): "
            f"{r['status']}, {r['equivalence']}")


# --------------------------------------------------------------------------------------------
# curves


def positives_curves(g: dict[str, list], key: str = "rpn_positives_per_object") -> list[dict]:
    """RPN positives per ground-truth object (appended ground truth left out) over training, mean
    over seeds, per configuration: the shortage a fixed high threshold meets early."""
    from dynrcnn.report.curves import labelled_mean_curves

    return labelled_mean_curves([(LABELS[name], name, rs) for name, rs in g.items()], key)


def trajectories(g: dict[str, list]) -> list[dict]:
    """Threshold and beta against the fraction of the schedule (mean over seeds) of DLA, DSL and
    Dynamic R-CNN, as lists (:func:`dynrcnn.report.curves._mean_trajectory`)."""
    from dynrcnn.report.curves import _mean_trajectory

    out = []
    for name in ("dla", "dsl", "dynamic"):
        rs = g.get(name) or []
        if not rs:
            continue
        item = {"label": LABELS[name], "run": name, "data": name, "seeds": len(rs),
                "max_iter": int(rs[0].config.max_iter or 1)}
        for col in ("iou_threshold", "beta"):
            t = _mean_trajectory(rs, col)
            item[col] = None if t is None else [t[0].tolist(), t[1].tolist()]
        out.append(item)
    return out


def seed_configs(g: dict[str, list], metrics=("AP", "AP90")) -> list[dict]:
    """Per configuration with runs, every seed's AP and AP90 (``label``, ``method``, ``nms``,
    ``values``: :func:`dynrcnn.report.plots.seed_strip_figure`'s input)."""
    return [{"label": LABELS[n], "method": method, "nms": DYNAMIC_RPN_NMS,
             "values": {m: {int(r.seed): float(r.eval[m]) for r in g[n]} for m in metrics}}
            for n, method, _ in CONFIGS if g.get(n)]


# --------------------------------------------------------------------------------------------
# the numbers


def interpretation(res: dict) -> str:
    """The study's one sentence, from ``results.json``'s numbers."""
    if not res["claims"] or not any(math.isfinite(r["estimate"]) for r in res["claims"]):
        return "No configuration pair has been evaluated yet."
    prim = [r for r in res["claims"] if r["family"] == PRIMARY_FAMILY]
    won = sum(r["status"] == REPRODUCED for r in prim)
    lost = sum(r["status"] == CONTRADICTED for r in prim)
    return (f"On the frozen benchmark {res['frozen']['candidate']} (a fresh draw, {res['seeds_used']} paired seeds), "
            f"{won} of the {len(prim)} primary claims hold in the declared direction after Holm's correction and "
            f"{lost} are contradicted: " + "; ".join(claim_text(r) for r in prim) + ".")


def readme_line(res: dict) -> str:
    """The line README's headline carries once the study has run."""
    by = {(r["key"], r["metric"]): r for r in res["claims"]}

    def short(key, metric):
        r = by.get((key, metric))
        if r is None or not math.isfinite(r["estimate"]):
            return f"{metric} not measured"
        return (f"{signed(r['estimate'])} {metric} [{signed(r['low'])}, {signed(r['high'])}] {r['status']}"
                if math.isfinite(r["low"]) else f"{signed(r['estimate'])} {metric}")

    return (f"- **The premise** (a benchmark where fixed 0.7 hurts, chosen on baselines only, {res['seeds_used']} "
            f"paired seeds, [docs/premise.md](docs/premise.md)): fixed 0.7 - 0.5 {short('paradox', 'AP')}; "
            f"Dynamic R-CNN - baseline {short('dynamic_vs_baseline', 'AP')}, {short('dynamic_vs_baseline', 'AP90')}; "
            f"DLA - best fixed ({res['best_fixed']:g}) {short('dla_vs_best_fixed', 'AP')}.")


def results(runs, data_root, frozen: Frozen, record: dict | None, seeds=SEEDS,
            command: str = "make report-premise") -> dict:
    """Everything the study reports (``figures/premise/results.json``): ``runs`` are the test's
    runs, ``record`` the frozen candidate's line of the search's record (its best fixed threshold;
    None: 0.5, said in the results)."""
    from dynrcnn.data.datasets import annotation_file
    from dynrcnn.evaluation.premise import measure
    from dynrcnn.report.evidence import Evidence
    from dynrcnn.report.premise import best_fixed_threshold
    from dynrcnn.report.results import environment_of
    from dynrcnn.report.trees import authors_points

    g = groups(runs, seeds)
    best_t = best_fixed_threshold(record) if record is not None else 0.5
    best = f"fixed{round(best_t * 100):d}"
    ev = Evidence([r for rs in g.values() for r in rs])
    shared = sorted(set.intersection(*[{int(r.seed) for r in rs} for rs in g.values()])) if all(g.values()) else []
    fixed = [r for n in ("fixed50", "fixed60", "fixed70") for r in g[n]]
    targets = measure(fixed, annotation_file(data_root, "train")) if fixed else None
    res = {
        "command": command, "rpn_nms": DYNAMIC_RPN_NMS,
        "frozen": {"candidate": frozen.candidate, "search_sha256": frozen.search_sha256,
                   "test_sha256": frozen.test_sha256, "test_data_seed": TEST_DATA_SEED},
        "best_fixed": best_t, "best_fixed_from": "the search's draw" if record is not None else "not found: 0.5",
        "seeds_planned": list(seeds), "seeds_used": len(shared), "seeds": shared,
        "environment": environment_of(ev) if len(ev) else None,
        "runs": run_rows(g), "configs": config_means(g),
        "claims": claim_rows(ev, g, best),
        "targets": targets,
        "positives": positives_curves(g),
        "trajectories": trajectories(g), "authors": authors_points(),
        "final_threshold": {n: _mean([final_of(r, "iou_threshold") for r in g[n]]) for n in ("dla", "dynamic")},
        "final_beta": {n: _mean([final_of(r, "beta") for r in g[n]]) for n in ("dsl", "dynamic")},
    }
    res["interpretation"] = interpretation(res)
    res["readme_line"] = readme_line(res)
    return res


def _mean(vals) -> float | None:
    vals = [v for v in vals if math.isfinite(v)]
    return round(float(np.mean(vals)), 3) if vals else None


def targets_rows(targets: dict | None) -> list[str]:
    """The targets (a)-(d) measured on the test's fixed-threshold runs beside COCO's reference
    (:mod:`dynrcnn.evaluation.premise`), as markdown table rows."""
    from dynrcnn.evaluation import premise as ref

    if not targets:
        return []
    word = {True: "yes", False: "no", None: "-"}
    a = targets["a"]["diff_070_050"].get("AP", {})
    b = [r for r in targets["b"]["runs"] if r.get("ratio_0.01") is not None]
    late = [r["late"] for r in targets["c"]["runs"] if r.get("late")]
    d = targets["d"]
    coco = ref.COCO_SIZE_SHARES
    rows = ["| target | on the test's draw | COCO | met |", "|---|---|---|---|",
            f"| (a) AP(0.7) - AP(0.5), paired t [95 %] | {signed(a.get('estimate', math.nan))} "
            f"[{signed(a.get('low', math.nan))}, {signed(a.get('high', math.nan))}] | "
            f"{signed(ref.CASCADE_FIXED_AP[0.7] - ref.CASCADE_FIXED_AP[0.5])} (Cascade R-CNN) | "
            f"{word[targets['a']['met']]} |"]
    if b:
        rows.append(f"| (b) positives per object, first 1 % / 10 % over last 10 % | "
                    f"{np.mean([r['ratio_0.01'] for r in b]):.2f} / "
                    f"{np.mean([r['ratio_0.1'] for r in b if r.get('ratio_0.1') is not None]):.2f} | not found | "
                    f"{word[targets['b']['met']]} |")
    if late:
        rows.append("| (c) late share of proposals >= 0.5 / 0.6 / 0.7 (%) | "
                    + " / ".join(f"{100 * np.mean([s[u] for s in late]):.1f}" for u in ("0.5", "0.6", "0.7"))
                    + " | " + " / ".join(f"{ref.CASCADE_RPN_SHARES[u]:.1f}" for u in ref.SHARE_IOUS)
                    + f" | {word[targets['c']['met']]} |")
    rows.append(f"| (d) objects per image, small / medium / large (%) | {d['objects_per_image']:.1f}, "
                f"{100 * d['relative']['small']:.0f} / {100 * d['relative']['medium']:.0f} / "
                f"{100 * d['relative']['large']:.0f} | {ref.COCO_INSTANCES_PER_IMAGE:g}, "
                + " / ".join(f"{100 * coco[k]:.0f}" for k in ("small", "medium", "large"))
                + f" | {word[d['met']]} |")
    return rows


def block(res: dict, figures: str, notebook: str, minutes: float) -> str:
    """The ``PREMISE-TEST`` block of docs/premise.md, from ``results.json`` only."""
    from dynrcnn.report.study import attribution, training_text

    f = res["frozen"]
    lines = [f"## The test (written by `{res['command']}`; do not edit by hand)", "",
             f"The frozen benchmark `{f['candidate']}`, a fresh draw (data seed {f['test_data_seed']}, annotations "
             f"sha256 `{f['test_sha256'][:12]}`), RPN NMS {res['rpn_nms']:g}, {res['seeds_used']} paired seeds "
             f"({len(res['seeds_planned'])} declared); the best fixed threshold, chosen on {res['best_fixed_from']}: "
             f"{res['best_fixed']:g}.", "",
             "| configuration | seeds | AP | AP50 | AP75 | AP90 |", "|---|---|---|---|---|---|"]
    for c in res["configs"].values():
        if c["seeds"]:
            lines.append(f"| {c['label']} | {c['seeds']} | {c['AP']:.2f} | {c['AP50']:.2f} | {c['AP75']:.2f} | "
                         f"{c['AP90']:.2f} |")
    lines += ["", "| claim | family | metric | difference [95 % seed-level interval] | seeds | Holm p | status | "
              "equivalence |", "|---|---|---|---|---|---|---|---|"]
    for r in res["claims"]:
        if not math.isfinite(r["estimate"]):
            continue
        bounds = f"[{signed(r['low'])}, {signed(r['high'])}]" if math.isfinite(r["low"]) else "(no interval)"
        holm_ = f"{r['p_holm']:.2g}" if math.isfinite(r.get("p_holm", math.nan)) else ""
        lines.append(f"| {r['claim']} | {r['family']} | {r['metric']} | {signed(r['estimate'])} {bounds} | "
                     f"{r['seeds']} | {holm_} | {r['status']} | {r['equivalence']} |")
    rows = targets_rows(res["targets"])
    if rows:
        lines += ["", "The targets again, on the test's own fixed-threshold runs:", "", *rows]
    lines += ["", res["interpretation"], "",
              f"![AP and AP90 of every configuration, a dot per seed]({figures}/configs.png)", "",
              f"![RPN positives per object over training]({figures}/positives.png)", "",
              f"![Threshold and beta against training progress]({figures}/trajectories.png)", "",
              attribution(res), "",
              f"Figures: `{figures}/`; numbers: `{figures}/results.json`; the notebook: `{notebook}`. "
              f"This run took {minutes:.1f} min{training_text(res['runs'])}."]
    return "\n".join(lines)


__all__ = ["TEST_DATA_SEED", "SEEDS", "DATA_ROOT", "RUNS_ROOT", "FIGURES", "CONFIGS", "LABELS", "Comparison",
           "PRIMARY", "SECONDARY_ROWS", "Frozen", "FROZEN", "config_overrides", "premise_profile",
           "frozen_candidate", "groups", "run_rows", "config_means", "claim_rows", "claim_text", "positives_curves",
           "trajectories", "seed_configs", "interpretation", "readme_line", "results", "targets_rows", "block"]
