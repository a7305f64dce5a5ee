"""The controls a reviewer asks for: is the dynamic schedule needed, or would a fixed higher
threshold or a fixed smaller beta from the first iteration do as well?

The paper's argument: a fixed high IoU threshold starves early training of positives, while
raising it as the proposals improve keeps enough of them; a fixed small beta is better than the
default 1.0 but not as good as lowering it with the regression errors. The controls, all at RPN
NMS 0.85 with the report of record's preset, on its benchmarks, with :data:`SEEDS` (ten: a
paired seed SD near 1 AP needs about ten seeds to resolve a 1 AP difference):

* fixed thresholds (DLA and DSL off, ``model.fg_iou_thresh``): 0.6, 0.7 and the threshold DLA
  alone ends at in the report of record (its runs' mean, rounded to 0.01);
* fixed betas (``model.box_beta``): 0.5 and the beta DSL alone ends at; DLA with the beta that
  DLA + DSL (Dynamic R-CNN) ends at: each fixed value is read from the runs of the schedule it is
  compared with;
* DLA alone and DSL alone with the seeds the report of record does not train;
* the gain against the schedule's length: the baseline and Dynamic R-CNN at
  :data:`SCHEDULE_LENGTHS` iterations besides the record's (:data:`SCHEDULE_SEEDS`);
* the sensitivity of Dynamic R-CNN to K_I, K_beta and C (one seed each, exploratory).

The best fixed threshold (and beta) is chosen on the second benchmark and tested on the
evaluation split, so that the choice and the test do not share images. :func:`control_specs`
says which runs; :class:`ControlGroups` holds them with the report of record's, keyed by run name
without its seed suffix; the tables, the claims (each an
:func:`~dynrcnn.report.claims.interval_verdict`, the report's own rule, with the verdict words
of :mod:`dynrcnn.evaluation.seed_intervals`) and :func:`results`
(``figures/controls/results.json``) read those groups.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from dynrcnn.report.claims import interval_verdict
from dynrcnn.report.curves import labelled_mean_curves
from dynrcnn.report.evidence import Evidence
from dynrcnn.report.tables import json_records
from dynrcnn.report.profiles import ABLATION_SEEDS, NMS_085, RunSpec, seed_run_name
from dynrcnn.rundir.runs import POSITIVE_KEYS
from dynrcnn.evaluation.seed_intervals import CONTRADICTED, INCONCLUSIVE, REPRODUCED
from dynrcnn.evaluation.stats import metric_of, signed

METRICS = ("AP", "AP90")
SEEDS = tuple(range(10))  # training seeds of every control that carries a sentence
SENSITIVITY_SEEDS = SEEDS[:1]  # exploratory: one seed each
SCHEDULE_SEEDS = SEEDS[:3]  # the gain against the schedule's length
SCHEDULE_LENGTHS = (300, 1800)  # iterations, besides the report of record's own
FIXED_THRESHOLDS = (0.6, 0.7)  # besides the final value of the report of record's DLA
FIXED_BETAS = (0.5,)  # besides the final value of its DSL
PAPER_K_BETA = (8, 15)  # the paper's other K_beta values (Table 8), scaled like its 10 (docs/method.md)
REFERENCE_RUNS = ("baseline_nms085", "dynamic", "dla", "dsl")  # the report of record's, reused
SCHEDULE_PAIR = ("baseline_nms085", "dynamic")  # the pair trained at every schedule length
REFERENCE_THRESHOLD = 0.5  # the baseline's fixed threshold and beta
REFERENCE_BETA = 1.0
PARADOX_THRESHOLD = 0.7  # Cascade R-CNN's paradox: a detector trained at 0.7 is worse than at 0.5


def _pct(v: float) -> str:
    return f"{100 * v:02.0f}"


def final_value(runs, key: str) -> float:
    """The value a schedule ends at (``key``: ``iou_threshold`` or ``beta``, the last update of
    each run's ``dynamic.jsonl``), mean over seeds, rounded to 0.01: a control "fixed at the
    schedule's final value" must fix the value of the schedule it is compared with (Dynamic
    R-CNN's own final beta, with DLA raising the positives' quality, is lower than DSL's alone)."""
    vals = [float(r.dynamic.sort_values("iteration").iloc[-1][key]) for r in runs
            if r.dynamic is not None and len(r.dynamic)]
    if not vals:
        raise ValueError(f"no run with a dynamic.jsonl to read the final {key} from")
    return round(float(np.mean(vals)), 2)


@dataclass(frozen=True)
class FinalValues:
    """The values the report of record's schedules end at: DLA alone's threshold, DSL alone's
    beta, DLA + DSL's beta."""

    threshold: float
    beta: float
    dynamic_beta: float


def sensitivity_settings(dynamic) -> list[tuple[str, int]]:
    """(setting, value) of the sensitivity runs: K_I and C at half and twice the preset's,
    K_beta at the paper's 8 and 15 scaled as the preset scales the paper's 10."""
    out = [("k_i", max(1, round(dynamic.k_i / 2))), ("k_i", dynamic.k_i * 2)]
    out += [("k_beta", max(1, round(k * dynamic.k_beta / 10))) for k in PAPER_K_BETA]
    out += [("interval", max(1, round(dynamic.interval / 2))), ("interval", dynamic.interval * 2)]
    return out


def schedule_overrides(preset, iterations: int) -> tuple[str, ...]:
    """``--set`` overrides that train ``preset`` for ``iterations`` with its lr steps and
    checkpoint period at the same fractions of the schedule."""
    steps = ",".join(str(round(s * iterations / preset.max_iter)) for s in preset.lr_steps)
    period = max(1, round(preset.checkpoint_period * iterations / preset.max_iter))
    return (f"max_iter={iterations}", f"lr_steps={steps}", f"checkpoint_period={period}")


def control_specs(final: FinalValues, preset, seeds=SEEDS) -> tuple[tuple[RunSpec, ...], dict]:
    """The control runs, ordered seed by seed (a partial study already has every
    configuration), and a description of each run name: ``{name: {"kind", "threshold" | "beta"
    | setting, ...}}``. ``preset``: the report of record's :class:`~dynrcnn.config.Config`."""
    about: dict[str, dict] = {}
    by_seed: dict[int, list[RunSpec]] = {}

    def add(name, method, overrides, run_seeds, **info):
        about.setdefault(name, {"method": method, **info})
        for s in run_seeds:
            by_seed.setdefault(int(s), []).append(RunSpec(seed_run_name(name, s), method, int(s), (NMS_085, *overrides)))

    for length in sorted(SCHEDULE_LENGTHS, reverse=True):  # the longest runs first: the queue ends on short ones
        for name in SCHEDULE_PAIR:
            method = "dynamic" if name == "dynamic" else "baseline"
            add(f"iter{length}_{name}", method, schedule_overrides(preset, length),
                [s for s in seeds if s in SCHEDULE_SEEDS], kind="schedule", iterations=length, reference=name)
    for t in sorted({*FIXED_THRESHOLDS, final.threshold}):
        add(f"fixed_iou{_pct(t)}", "baseline", (f"model.fg_iou_thresh={t:g}",), seeds, kind="threshold", threshold=t)
    for b in sorted({*FIXED_BETAS, final.beta}):
        add(f"fixed_beta{_pct(b)}", "baseline", (f"model.box_beta={b:g}",), seeds, kind="beta", beta=b)
    add(f"dla_beta{_pct(final.dynamic_beta)}", "dla", (f"model.box_beta={final.dynamic_beta:g}",), seeds,
        kind="dla_fixed_beta", beta=final.dynamic_beta)
    for method in ("dla", "dsl"):  # the report of record trains them with its first ABLATION_SEEDS
        add(method, method, (), [s for s in seeds if s >= ABLATION_SEEDS], kind="reference")
    for setting, value in sensitivity_settings(preset.dynamic):
        add(f"sens_{setting}{value}", "dynamic", (f"dynamic.{setting}={value}",),
            [s for s in seeds if s in SENSITIVITY_SEEDS], kind="sensitivity", setting=setting, value=value)
    specs = tuple(spec for s in sorted(by_seed) for spec in by_seed[s])
    return specs, about


def base_name(name: str) -> str:
    """A run directory's name without its seed suffix (``fixed_iou60_seed2`` -> ``fixed_iou60``)."""
    return re.sub(r"_seed\d+$", "", name)


@dataclass
class ControlGroups:
    """Evaluated runs by base name (each sorted by seed): the report of record's
    :data:`REFERENCE_RUNS` and the controls', and what each control is (:func:`control_specs`)."""

    runs: dict
    about: dict
    final: FinalValues
    record_iterations: int = 0  # the report of record's schedule length

    @classmethod
    def build(cls, reference_runs, control_runs, final: FinalValues, about: dict,
              record_iterations: int = 0) -> "ControlGroups":
        groups: dict[str, list] = {}
        for r in list(reference_runs) + list(control_runs):
            name = base_name(r.path.name)
            if r.eval and (name in about or name in REFERENCE_RUNS):
                groups.setdefault(name, []).append(r)
        for name in groups:
            groups[name] = sorted({int(r.seed): r for r in groups[name]}.values(), key=lambda r: int(r.seed))
        return cls(groups, about, final, record_iterations)

    def get(self, name: str) -> list:
        return self.runs.get(name, [])

    def of_kind(self, kind: str) -> list[str]:
        return [n for n, a in self.about.items() if a.get("kind") == kind and self.get(n)]

    @cached_property
    def evidence(self) -> Evidence:
        """The :class:`~dynrcnn.report.evidence.Evidence` of every run here (samples and
        comparisons made once)."""
        return Evidence([r for rs in self.runs.values() for r in rs])

    @property
    def datasets(self) -> list:
        return self.evidence.datasets

    @property
    def selection(self):
        """The benchmark a best fixed value is chosen on (the second; the evaluation split when
        there is none) and the one it is tested on (the evaluation split)."""
        other = [d for d in self.datasets if d is not None]
        return (other[0] if other else None), None


def plan_controls(reference_runs, preset: str, seeds=SEEDS):
    """(final values, specs, about) of the controls of the report of record's ``reference_runs``
    (its complete runs at RPN NMS 0.85; :func:`final_value` of its DLA-alone, DSL-alone and
    Dynamic R-CNN runs)."""
    from dynrcnn.presets import get_preset
    from dynrcnn.reference import DYNAMIC_RPN_NMS
    from dynrcnn.rundir.run_summary import rpn_nms

    def of(name):
        return [r for r in reference_runs if base_name(r.path.name) == name and rpn_nms(r) == DYNAMIC_RPN_NMS and r.eval]

    final = FinalValues(final_value(of("dla"), "iou_threshold"), final_value(of("dsl"), "beta"),
                        final_value(of("dynamic"), "beta"))
    specs, about = control_specs(final, get_preset(preset), seeds)
    return final, specs, about


def load_groups(reference_root, controls_root, preset: str | None = None, seeds: int | None = None) -> ControlGroups:
    """The :class:`ControlGroups` of the report of record's runs folder and the controls' folder
    (what the notebook and the pipeline read); ``seeds``: only the first that many of
    :data:`SEEDS`, on every side, so that every comparison pairs the same seeds."""
    from dynrcnn.report.profiles import get_profile
    from dynrcnn.rundir.runs import find_runs

    from dynrcnn.presets import get_preset

    preset = preset or get_profile("mini").preset
    keep = set(SEEDS[:seeds] if seeds else SEEDS)
    every = find_runs(reference_root)
    # the final values name the control runs: read them from every reference run, as the plan did
    final, _, about = plan_controls(every, preset, tuple(sorted(keep)))
    reference = [r for r in every if int(r.seed) in keep]
    control = [r for r in find_runs(controls_root) if int(r.seed) in keep]
    return ControlGroups.build(reference, control, final, about, get_preset(preset).max_iter)


def _metric(g: ControlGroups, runs, metric: str, dataset) -> list[float]:
    out = []
    for r in runs:
        s = g.evidence.samples(r, dataset)
        if s is not None:
            out.append(float(metric_of(s.full, metric)))
    return out


def _row(g: ControlGroups, name: str, dataset, **cols) -> dict:
    row = {"benchmark": "evaluation split" if dataset is None else dataset, "run": name, **cols,
           "seeds": len(g.get(name))}
    for m in METRICS:
        v = _metric(g, g.get(name), m, dataset)
        row[m] = float(np.mean(v)) if v else math.nan
        row[f"{m} min"], row[f"{m} max"] = (min(v), max(v)) if v else (math.nan, math.nan)
    return row


def _fixed_table(g: ControlGroups, setting: str, reference: float, schedule: str, label: str) -> pd.DataFrame:
    rows = []
    for ds in g.datasets:
        rows.append(_row(g, "baseline_nms085", ds, **{setting: reference}, schedule="fixed"))
        rows += [_row(g, n, ds, **{setting: g.about[n][setting]}, schedule="fixed") for n in g.of_kind(setting)]
        rows.append(_row(g, schedule, ds, **{setting: math.nan}, schedule=label))
    return pd.DataFrame(rows)


def threshold_table(g: ControlGroups) -> pd.DataFrame:
    """AP / AP90 of the fixed thresholds (0.5: the report's baseline at RPN NMS 0.85) and of DLA."""
    return _fixed_table(g, "threshold", REFERENCE_THRESHOLD, "dla", "DLA")


def beta_table(g: ControlGroups) -> pd.DataFrame:
    """AP / AP90 of the fixed betas (1.0: the report's baseline at RPN NMS 0.85) and of DSL."""
    return _fixed_table(g, "beta", REFERENCE_BETA, "dsl", "DSL")


def _final(run, key: str) -> float:
    d = run.dynamic
    return float(d.sort_values("iteration").iloc[-1][key]) if d is not None and len(d) else math.nan


def sensitivity_table(g: ControlGroups) -> pd.DataFrame:
    """Dynamic R-CNN with K_I, K_beta or C changed (one seed) next to the preset's (same seed):
    AP / AP90 with the difference and an image-bootstrap interval (seed noise not included:
    one seed per side), and the final threshold and beta."""
    rows = []
    ref = g.get("dynamic")
    for ds in g.datasets:
        for name in g.of_kind("sensitivity"):
            runs = g.get(name)
            seed = int(runs[0].seed)
            same = [r for r in ref if int(r.seed) == seed]
            a = g.about[name]
            row = _row(g, name, ds, setting=a["setting"], value=a["value"],
                       **{"final threshold": _final(runs[0], "iou_threshold"), "final beta": _final(runs[0], "beta")})
            delta = g.evidence.compare(same, runs, ds) if same else None
            for m in METRICS:
                est, lo, hi = delta.metrics[m] if delta is not None else (math.nan,) * 3
                row[f"{m} vs preset"], row[f"{m} low"], row[f"{m} high"] = est, lo, hi
            rows.append(row)
    return pd.DataFrame(rows)


def positives_curves(g: ControlGroups) -> list[dict]:
    """Positives per image (before sampling) over training, mean over seeds, for the fixed
    thresholds and DLA: the mechanism the paper names."""
    names = [("baseline_nms085", f"fixed {REFERENCE_THRESHOLD:g}")]
    names += [(n, f"fixed {g.about[n]['threshold']:g}") for n in g.of_kind("threshold")]
    names.append(("dla", "DLA"))
    return labelled_mean_curves([(label, name, g.get(name)) for name, label in names], POSITIVE_KEYS[0])


def _best(g: ControlGroups, names: list[str], metric: str = "AP") -> str | None:
    """The name whose seeds' mean ``metric`` is highest on the selection benchmark
    (:attr:`ControlGroups.selection`), not the one it is tested on."""
    scored = [(np.mean(v), n) for n in names if (v := _metric(g, g.get(n), metric, g.selection[0]))]
    return max(scored)[1] if scored else None


def comparisons(g: ControlGroups) -> list[dict]:
    """The comparisons that carry a sentence: ``{key, claim, schedule, fixed, fixed_label,
    datasets, expected_sign}`` (``datasets`` ``None``: every benchmark). DLA against fixed 0.6,
    0.7, its own final threshold and the best fixed threshold (chosen on the selection benchmark,
    tested on the other); DSL against fixed 0.5, its own final beta and the best fixed beta; DLA +
    DSL against DLA with DLA + DSL's final beta fixed; and the paradox the paper builds on, a
    fixed 0.7 against the baseline's 0.5 (expected lower)."""
    f = g.final
    thr = ["baseline_nms085", *g.of_kind("threshold")]
    betas = ["baseline_nms085", *g.of_kind("beta")]

    def named(kind, key, value):
        return next((n for n in g.of_kind(kind) if g.about[n][key] == value), None)

    def label(name):
        if name == "baseline_nms085":
            return "the baseline (threshold 0.5, beta 1.0)"
        a = g.about[name]
        return {"threshold": f"fixed threshold {a.get('threshold', 0):g}", "beta": f"fixed beta {a.get('beta', 0):g}",
                "dla_fixed_beta": f"DLA + fixed beta {a.get('beta', 0):g}"}[a["kind"]]

    chosen_on, tested_on = g.selection
    split = None if chosen_on == tested_on else [tested_on]  # one benchmark: chosen and tested on it (said)
    best_thr, best_beta = _best(g, thr), _best(g, betas)
    rows = [("dla_vs_fixed_threshold", f"DLA vs fixed threshold {t:g}", "dla", named("threshold", "threshold", t), None)
            for t in FIXED_THRESHOLDS]
    rows += [
        ("dla_vs_fixed_final_threshold", f"DLA vs a fixed threshold at DLA's final value ({f.threshold:g})", "dla",
         named("threshold", "threshold", f.threshold), None),
        ("dla_vs_best_fixed_threshold", "DLA vs the best fixed threshold (chosen on the other benchmark)", "dla",
         best_thr, split),
        ("dsl_vs_fixed_beta", f"DSL vs fixed beta {FIXED_BETAS[0]:g}", "dsl", named("beta", "beta", FIXED_BETAS[0]),
         None),
        ("dsl_vs_fixed_final_beta", f"DSL vs a fixed beta at DSL's final value ({f.beta:g})", "dsl",
         named("beta", "beta", f.beta), None),
        ("dsl_vs_best_fixed_beta", "DSL vs the best fixed beta (chosen on the other benchmark)", "dsl", best_beta,
         split),
        ("dynamic_vs_dla_fixed_final_beta",
         f"DLA + DSL vs DLA + a fixed beta at DLA + DSL's final value ({f.dynamic_beta:g})", "dynamic",
         next(iter(g.of_kind("dla_fixed_beta")), None), None)]
    out = []
    for key, claim, schedule, fixed, datasets in rows:
        if fixed is None or not g.get(fixed) or not g.get(schedule):
            continue
        if key == "dla_vs_fixed_threshold":
            key = f"{key}_{_pct(g.about[fixed]['threshold'])}"
        out.append({"key": key, "claim": claim, "schedule": schedule, "fixed": fixed, "fixed_label": label(fixed),
                    "datasets": datasets, "expected_sign": 1})
    paradox = named("threshold", "threshold", PARADOX_THRESHOLD)
    if paradox and g.get(paradox) and g.get("baseline_nms085"):
        out.append({"key": "paradox_fixed_07_vs_05", "schedule": paradox, "fixed": "baseline_nms085",
                    "claim": f"fixed threshold {PARADOX_THRESHOLD:g} vs 0.5 (Cascade R-CNN's paradox: expected lower)",
                    "fixed_label": label("baseline_nms085"), "datasets": None, "expected_sign": -1})
    return out


def claims_table(g: ControlGroups) -> pd.DataFrame:
    """Each comparison on each metric: the schedule minus the fixed control on every benchmark
    it is tested on, with its seed-level 95 % interval, the status word by the report's rule
    (``reproduced`` when the difference has the expected sign on every benchmark) and the
    equivalence word against the metric's declared margin (``different`` / ``equivalent within
    +-m`` / ``inconclusive``, the same on every benchmark, else ``inconclusive``)."""
    rows = []
    for c in comparisons(g):
        for m in METRICS:
            est, verdict, record = interval_verdict(g.evidence, g.get(c["fixed"]), g.get(c["schedule"]), m,
                                                    c["expected_sign"], c["datasets"])
            words = {iv["equivalence"] for iv in record.values()}
            row = {"key": c["key"], "claim": c["claim"], "against": c["fixed_label"], "metric": m, "delta": est,
                   "status": verdict.status, "equivalence": words.pop() if len(words) == 1 else INCONCLUSIVE,
                   "seeds": min((len(iv["per_seed"]) for iv in record.values()), default=0), "verdict": verdict.sentence}
            for ds, iv in record.items():
                row[f"{ds} low"], row[f"{ds} high"] = iv["low"], iv["high"]
            rows.append(row)
    return pd.DataFrame(rows)


def schedule_table(g: ControlGroups) -> pd.DataFrame:
    """Dynamic R-CNN minus the baseline (both at RPN NMS 0.85) at each schedule length: the
    report of record's and :data:`SCHEDULE_LENGTHS`, on every benchmark, with the seed-level
    95 % interval over the seeds the two share."""
    pairs = {None: SCHEDULE_PAIR}
    for n in g.of_kind("schedule"):
        pairs.setdefault(g.about[n]["iterations"], [None, None])
        pairs[g.about[n]["iterations"]][SCHEDULE_PAIR.index(g.about[n]["reference"])] = n
    rows = []
    for length, (base, dyn) in pairs.items():
        if not (base and dyn and g.get(base) and g.get(dyn)):
            continue
        iters = length or g.record_iterations
        for ds in g.datasets:
            row = {"iterations": iters, "benchmark": "evaluation split" if ds is None else ds}
            for m in METRICS:
                _, _, record = interval_verdict(g.evidence, g.get(base), g.get(dyn), m, 1, [ds])
                iv = next(iter(record.values()), None)
                row[f"{m} gain"] = iv["estimate"] if iv else math.nan
                row[f"{m} low"], row[f"{m} high"] = (iv["low"], iv["high"]) if iv else (math.nan, math.nan)
                row["seeds"] = len(iv["per_seed"]) if iv else 0
            if row["seeds"]:  # a length whose pair shares no seed yet has no interval to draw
                rows.append(row)
    return pd.DataFrame(rows).sort_values(["benchmark", "iterations"], kind="stable") if rows else pd.DataFrame(rows)


def interpretation(claims: pd.DataFrame) -> str:
    """One sentence computed from the claims table: "as well as" only where the comparison is
    ``equivalent within +-m``; an interval that merely holds 0 is ``inconclusive``."""
    if claims.empty:
        return "No control has been evaluated yet."
    parts = []
    for key, rows in claims.groupby("key", sort=False):
        by = {r["metric"]: r for r in rows.to_dict("records")}
        text = ", ".join(f"{signed(by[m]['delta'])} {m} ({by[m]['equivalence']})" for m in METRICS if m in by)
        parts.append(f"{rows.iloc[0]['claim']}: {text}")
    won = claims[claims["status"] == REPRODUCED]
    lost = claims[claims["status"] == CONTRADICTED]
    same = claims[claims["equivalence"].astype(str).str.startswith("equivalent")]
    open_ = len(claims) - len(won) - len(lost) - len(same)
    head = (f"Of {len(claims)} comparisons of a schedule with its fixed control, the schedule is better on {len(won)} "
            f"and worse on {len(lost)} (every benchmark's 95 % interval on one side of 0), equivalent within the "
            f"declared margin on {len(same)}, inconclusive on {open_}")
    return head + "; " + "; ".join(parts) + "."


def results(g: ControlGroups) -> dict:
    """Everything the controls section reports (``figures/controls/results.json``)."""
    from dynrcnn.report.results import environment_of

    claims = claims_table(g)
    return {"environment": environment_of([r for rs in g.runs.values() for r in rs]),
        "final_threshold": g.final.threshold, "final_beta": g.final.beta, "final_dynamic_beta": g.final.dynamic_beta,
        "seeds_planned": len(SEEDS), "seeds_used": int(claims["seeds"].min()) if len(claims) else 0,
        "selection_benchmark": g.selection[0],
        "runs": {n: [int(r.seed) for r in rs] for n, rs in g.runs.items()},
        "about": g.about,
        "thresholds": json_records(threshold_table(g)), "betas": json_records(beta_table(g)),
        "sensitivity": json_records(sensitivity_table(g)), "positives": positives_curves(g),
        "schedule": json_records(schedule_table(g)),
        "claims": json_records(claims), "interpretation": interpretation(claims),
    }


__all__ = ["final_value", "FinalValues", "schedule_overrides", "schedule_table", "SEEDS", "sensitivity_settings", "control_specs", "plan_controls", "load_groups", "ControlGroups", "threshold_table",
           "beta_table", "sensitivity_table", "positives_curves", "comparisons", "claims_table", "interpretation",
           "results"]
