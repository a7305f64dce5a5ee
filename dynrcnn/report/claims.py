"""The claims the report checks, as data: each :class:`Claim` carries a ``status`` word, a
``sentence`` and its ``family``, so nothing downstream recognises a verdict by its wording.

``status`` is one of :data:`STATUSES` for a published claim; rows that give context and
carry no published claim (the RPN NMS change alone) have status :data:`CONTEXT` and say in their
sentence ``different`` / ``equivalent within +-m`` / ``inconclusive`` (a declared margin, never
"no effect" from an interval that merely holds 0).

**Families, declared before the runs** (:data:`PRIMARY`): the primary claims are AP and AP90 of
Dynamic R-CNN against the baseline at the same RPN NMS, on every benchmark the runs were
evaluated on; their p-values are Holm-corrected as one family (:func:`primary_family`) and a
primary row is ``reproduced`` only when its corrected p is below 0.05 on every benchmark, in the
paper's direction. Every other row is ``secondary`` (the published comparison against the RPN NMS
0.7 baseline, DLA or DSL alone, the overhead) or ``exploratory`` (absolute numbers, context rows),
uncorrected, and labelled so.

Tolerances. At COCO scale a published number is "reproduced" within the seed-to-seed spread
of a 1x R50-FPN run (~0.3 AP). At miniature scale only the direction of a relative claim is
testable, and the verdict follows from the seed-level 95 % interval of the difference
(:mod:`dynrcnn.evaluation.seed_intervals`): ``reproduced`` when it excludes 0 in the paper's
direction, ``contradicted`` when it excludes 0 the other way, ``inconclusive`` otherwise; a
configuration with one seed has no interval and its rows say so. When the runs were also
evaluated on a second benchmark (another data seed), the verdict must hold on every benchmark,
else it is ``inconclusive``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field

import pandas as pd

from dynrcnn import reference as ref
from dynrcnn.report.analysis import device_kind, mean, names, profile_scale, values
from dynrcnn.report.evidence import evidence_of, main_key
from dynrcnn.report.intervals import interval
from dynrcnn.presets import SCALE_LABELS
from dynrcnn.rundir.run_summary import rpn_nms
from dynrcnn.rundir.runs import TRAIN_DONE
from dynrcnn.evaluation.seed_intervals import (CONTRADICTED, INCONCLUSIVE, NO_SEED_VARIANCE, REPRODUCED, holm)

COCO_TOLERANCE = 0.3
OVERHEAD_TOLERANCE = {"cpu": 0.10, "gpu": 0.05}

NOT_TESTABLE = "not-testable"
STATUSES = (REPRODUCED, CONTRADICTED, INCONCLUSIVE, NOT_TESTABLE)
CONTEXT = "context"
PRIMARY_FAMILY, SECONDARY, EXPLORATORY = "primary", "secondary", "exploratory"
#: the primary claims, declared before the runs: (claim key, metric), each tested on every benchmark
PRIMARY = (("paper_delta_ap_same_nms", "AP"), ("paper_delta_ap90_same_nms", "AP90"))
FAMILY_ALPHA = 0.05  # family-wise error rate of the primary family (Holm)


@dataclass(frozen=True)
class Verdict:
    """What a check concluded: a status word and the sentence that explains it."""

    status: str
    sentence: str


@dataclass(frozen=True)
class Claim:
    """One row of the claims table. ``key`` is the :mod:`dynrcnn.reference` key (``None`` for
    context rows); ``ours`` is this report's number, ``published`` the paper's/zoo's."""

    claim: str
    source: str
    published: float
    ours: float
    difference: float
    tolerance: str
    status: str
    sentence: str
    scale: str
    compared: str
    key: str | None = None
    intervals: dict = field(default_factory=dict)  # benchmark -> Interval.as_dict() (miniature scale)
    family: str = EXPLORATORY  # primary / secondary / exploratory (module docstring)
    references: tuple = ()  # ((source, published value), ...): every published number of this one test

    def row(self) -> dict:
        """The claims-table row (``verdict`` is the sentence)."""
        d = asdict(self)
        d["verdict"] = d.pop("sentence")
        d.pop("intervals")
        d.pop("references")
        return d


TABLE_COLUMNS = ["claim", "family", "source", "published", "ours", "difference", "tolerance", "verdict", "scale",
                 "compared"]


# --------------------------------------------------------------------------------------------
# verdicts (pure functions of numbers: tested on hand-made values)


def _not_measured(what: str = "missing runs") -> Verdict:
    return Verdict(NOT_TESTABLE, f"not measured ({what})")


def verdict_delta(ours: float, published: float, tol: float = COCO_TOLERANCE, metric: str = "AP") -> Verdict:
    """Verdict for a relative claim at COCO scale (``dynamic - baseline`` in AP points): within
    ``tol`` of the published gain is reproduced; a gain in the published direction whose size is
    outside the tolerance is ``inconclusive`` ("partly reproduced"). (At miniature scale the
    verdict comes from an interval: :func:`interval_verdict`.)"""
    if ours is None or not math.isfinite(ours):
        return _not_measured()
    if abs(ours - published) <= tol:
        return Verdict(REPRODUCED, f"reproduced: {ours:+.1f} vs {published:+.1f} {metric}, within ±{tol:g}")
    if ours > tol:
        return Verdict(INCONCLUSIVE, f"partly reproduced: gain {ours:+.1f} {metric} in the published direction, "
                                     f"magnitude differs by {ours - published:+.1f} (outside ±{tol:g})")
    return Verdict(CONTRADICTED, f"not reproduced: {ours:+.1f} {metric} vs published {published:+.1f}")


def verdict_absolute(ours: float, published: float, scale: str, tol: float = COCO_TOLERANCE,
                     metric: str = "AP") -> Verdict:
    """Verdict for an absolute COCO number (not testable on the miniature benchmark)."""
    if scale != "COCO":
        return Verdict(NOT_TESTABLE, "not testable: this report's number is miniature-benchmark AP, not COCO")
    if ours is None or not math.isfinite(ours):
        return _not_measured()
    diff = ours - published
    if abs(diff) <= tol:
        return Verdict(REPRODUCED, f"reproduced within ±{tol:g} {metric} ({diff:+.1f})")
    return Verdict(CONTRADICTED, f"not reproduced: {diff:+.1f} {metric} from the published {published:.1f} "
                                 f"(tolerance ±{tol:g})")


def verdict_overhead(ratio: float, tol: float, device: str) -> Verdict:
    """Verdict for "no extra overhead": dynamic / baseline time per iteration."""
    if ratio is None or not math.isfinite(ratio):
        return _not_measured(f"missing {TRAIN_DONE}")
    where = "on a shared CPU" if device == "cpu" else "on GPU"
    if ratio <= 1 + tol:
        return Verdict(REPRODUCED, f"reproduced {where}: time per iteration x{ratio:.3f} (<= x{1 + tol:.2f})")
    return Verdict(CONTRADICTED, f"not reproduced {where}: {100 * (ratio - 1):+.1f}% time per iteration "
                                 f"(tolerance {100 * tol:.0f}%)")


def verdict_context(ours: float, tol: float, metric: str) -> Verdict:
    """The RPN NMS change alone (no published number: docs/method.md sec. 1)."""
    if not math.isfinite(ours):
        return Verdict(CONTEXT, "not measured")
    if abs(ours) <= tol:
        return Verdict(CONTEXT, f"no effect beyond noise ({ours:+.1f} {metric})")
    return Verdict(CONTEXT, f"RPN NMS alone changes {metric} by {ours:+.1f}: the published gain mixes it with DLA/DSL")


# --------------------------------------------------------------------------------------------
# the claims of a set of runs


class _Sides:
    """The runs a claim compares: the main baseline (RPN NMS 0.7 when present, as published),
    the baseline at the dynamic runs' RPN NMS (the fair comparison), the dynamic group, and for
    timing every finished run of the same method and RPN NMS. ``datasets`` are the benchmarks
    the runs were evaluated on (None: their own split; else the names of extra evaluations)."""

    def __init__(self, ev):
        self.ev = ev
        self.runs = ev.runs
        self.groups = ev.groups
        self.scale = profile_scale(self.runs)
        self.scale_text = SCALE_LABELS[self.scale]
        self.b_key, self.d_key = main_key(self.groups, "baseline"), main_key(self.groups, "dynamic")
        self.base = self.groups.get(self.b_key, []) if self.b_key else []
        self.dyn = self.groups.get(self.d_key, []) if self.d_key else []
        same = ("baseline", self.d_key[1]) if self.d_key else None
        self.same_key = same if same in self.groups and same != self.b_key else None
        self.base_same = self.groups.get(self.same_key, []) if self.same_key else []
        self.compared = f"{names(self.dyn)} vs {names(self.base)}"
        if self.b_key and self.d_key:
            self.compared += f" (RPN NMS {self.d_key[1]:g} vs {self.b_key[1]:g})"
        self.datasets = ev.datasets

    def all_of(self, method: str, key) -> list:
        return [r for r in self.runs if r.config.method == method and rpn_nms(r) == (key or (0, 0))[1]]

    def claim(self, r: ref.Reference, ours, difference, tolerance, verdict: Verdict, compared,
              key=None, description=None, intervals=None, family=EXPLORATORY) -> Claim:
        refs = references_of(r)
        return Claim(description or r.description, source_text(refs), r.value, ours, difference, tolerance,
                     verdict.status, verdict.sentence, self.scale_text, compared, key or r.key, intervals or {}, family,
                     refs)


def references_of(r: ref.Reference) -> tuple:
    """``((source, value), ...)``: ``r`` and the other published numbers of the same test
    (:data:`dynrcnn.reference.SAME_TEST`): one row per test, several references."""
    return tuple((ref.SOURCE_SHORT[x.source], x.value) for x in (r, *map(ref.get, ref.SAME_TEST.get(r.key, ()))))


def source_text(refs: tuple) -> str:
    """The claims table's source column: one source as it is, several with their values."""
    return refs[0][0] if len(refs) == 1 else "; ".join(f"{s} ({v:+.1f})" for s, v in refs)


def dataset_label(dataset: str | None) -> str:
    return "the evaluation split" if dataset is None else f"benchmark {dataset}"


def intervals_on(ev, base, other, metric: str, expected_sign: int = 1, datasets=None) -> dict:
    """``other - base`` with its 95 % interval on each of the evidence's benchmarks where both
    were evaluated (``ev``: an :class:`~dynrcnn.report.evidence.Evidence`), or on ``datasets``
    only (``None`` in it: the evaluation split)."""
    found = {}
    for ds in ev.datasets if datasets is None else datasets:
        iv = interval(ev.compare(base, other, ds), metric, expected_sign)
        if iv is not None:
            found[ds] = iv
    return found


def benchmarks_disagree(found: dict) -> bool:
    """Whether the benchmarks' intervals give different statuses."""
    return len({iv.status for iv in found.values()}) > 1


def combined_status(found: dict) -> str:
    """The status that holds on every benchmark; ``inconclusive`` when they disagree."""
    return INCONCLUSIVE if benchmarks_disagree(found) else next(iter(found.values())).status


def _measured(found: dict, metric: str) -> str:
    return "; ".join(f"{iv.text(metric)} on {dataset_label(ds)} ({iv.seeds})" for ds, iv in found.items())


_WORDS = {REPRODUCED: ("direction reproduced at miniature scale", "the 95% interval excludes 0 in the paper's direction"),
          CONTRADICTED: ("contradicted at miniature scale", "the 95% interval excludes 0 in the opposite direction"),
          INCONCLUSIVE: ("inconclusive at miniature scale", "the 95% interval includes 0"),
          NO_SEED_VARIANCE: ("inconclusive at miniature scale", "one seed: no seed variance, so no interval")}


def interval_verdict(ev, base, other, metric: str, expected_sign: int = 1,
                     datasets=None) -> tuple[float, Verdict, dict]:
    """``other - base`` on every benchmark of ``ev`` (or on ``datasets``) with its 95 % interval,
    and the verdict that holds on all of them; returns ``(estimate on the first benchmark tested,
    verdict, {benchmark: interval dict})``."""
    found = intervals_on(ev, base, other, metric, expected_sign, datasets)
    if not found:
        return float("nan"), Verdict(NOT_TESTABLE, "not measured (runs or their per-image detections missing)"), {}
    status = combined_status(found)
    word, why = _WORDS[status]
    status = INCONCLUSIVE if status == NO_SEED_VARIANCE else status
    if benchmarks_disagree(found):
        why = "the benchmarks disagree"
    own = found.get(None, next(iter(found.values())))
    record = {("own" if ds is None else ds): iv.as_dict() for ds, iv in found.items()}
    words = {iv.equivalence for iv in found.values()}
    if status == INCONCLUSIVE and len(words) == 1 and next(iter(words)).startswith("equivalent"):
        # not the paper's direction, and a difference as large as the margin is excluded: say so
        why += f"; {next(iter(words))} {metric} on every benchmark (90% interval inside the declared margin)"
    return own.estimate, Verdict(status, f"{word}: {_measured(found, metric)}; {why}"), record


def _delta_claim(s: _Sides, r: ref.Reference, same_nms: bool = False) -> Claim:
    base = s.base_same if same_nms else s.base
    bkey = s.same_key if same_nms else s.b_key
    compared = f"{names(s.dyn)} vs {names(base)}"
    if s.d_key and bkey:
        compared += f" (RPN NMS {s.d_key[1]:g} vs {bkey[1]:g})"
    key = f"{r.key}_same_nms" if same_nms else r.key
    desc = f"{r.description}, against the baseline at the same RPN NMS" if same_nms else None
    if s.scale == "COCO":
        a, b = values(s.dyn, r.metric), values(base, r.metric)
        ours = mean(a) - mean(b) if a and b else float("nan")
        tol_text = f"±{COCO_TOLERANCE:g} {r.metric} (seed spread at COCO scale)"
        return s.claim(r, ours, ours - r.value, tol_text, verdict_delta(ours, r.value, COCO_TOLERANCE, r.metric),
                       compared, key, desc)
    ours, verdict, record = interval_verdict(s.ev, base, s.dyn, r.metric)
    return s.claim(r, ours, float("nan"), INTERVAL_RULE, verdict, compared, key, desc, record,
                   PRIMARY_FAMILY if (key, r.metric) in PRIMARY else SECONDARY)


INTERVAL_RULE = "95% seed-level interval excludes 0 (paired t over training seeds + common image noise)"


def _component_claims(s: _Sides) -> list[Claim]:
    """DLA alone and DSL alone against the baseline at their RPN NMS (the paper's ablation says
    each component alone improves AP; it publishes no number we compare with here): secondary."""
    out = []
    for method, name in (("dla", "DLA alone"), ("dsl", "DSL alone")):
        key = (method, s.d_key[1]) if s.d_key else None
        if s.scale == "COCO" or key not in s.groups or not s.base_same:
            continue
        for m in ("AP", "AP90"):
            ours, verdict, record = interval_verdict(s.ev, s.base_same, s.groups[key], m)
            out.append(Claim(f"{name} improves {m} over the baseline at the same RPN NMS (paper's ablation)",
                             "paper (ablation, direction)", float("nan"), ours, float("nan"), INTERVAL_RULE,
                             verdict.status, verdict.sentence, s.scale_text,
                             f"{names(s.groups[key])} vs {names(s.base_same)}", f"{method}_alone_{m.lower()}",
                             record, SECONDARY))
    return out


def _overhead_claim(s: _Sides, r: ref.Reference) -> Claim:
    # cost depends on the RPN NMS (it sets how many proposals survive), so time the dynamic
    # runs against baselines at the same RPN NMS when there are any
    all_dyn = s.all_of("dynamic", s.d_key)
    timing_base = s.all_of("baseline", s.d_key) or s.all_of("baseline", s.b_key)
    a, b = values(all_dyn, "sec_per_iter"), values(timing_base, "sec_per_iter")
    ours = mean(a) / mean(b) if a and b else float("nan")
    kind = device_kind(all_dyn + timing_base)
    tol = OVERHEAD_TOLERANCE[kind]
    v = verdict_overhead(ours, tol, kind)
    ref_base = s.all_of("baseline", s.b_key)
    if ref_base and ref_base != timing_base and (c := values(ref_base, "sec_per_iter")) and a:
        v = Verdict(v.status, f"{v.sentence}; x{mean(a) / mean(c):.3f} against the baseline at RPN NMS {s.b_key[1]:g}")
    return s.claim(r, ours, ours - r.value, f"x{1 + tol:.2f} ({kind} timing noise)", v,
                   f"{names(all_dyn)} vs {names(timing_base)} (median s/iter, training)", family=SECONDARY)


def _absolute_claim(s: _Sides, r: ref.Reference) -> Claim:
    rs = s.dyn if r.method == "dynamic" else s.base
    ours = mean(values(rs, r.metric))
    coco = s.scale == "COCO"
    return s.claim(r, ours, ours - r.value if coco else float("nan"),
                   f"±{COCO_TOLERANCE:g} {r.metric}" if coco else "n/a",
                   verdict_absolute(ours, r.value, s.scale, metric=r.metric), f"{names(rs)} {r.metric}")


def _effect_word(iv) -> str:
    """A context comparison's word on one benchmark: ``raises it`` / ``lowers it`` (different),
    ``equivalent within +-m``, ``inconclusive`` (or the one-seed note)."""
    if iv.equivalence == "different":
        return "RPN NMS alone raises it" if iv.estimate > 0 else "RPN NMS alone lowers it"
    return iv.equivalence


def context_effect(found: dict) -> str:
    """What a context comparison shows, from each benchmark's interval (``{benchmark: interval}``):
    one phrase when the benchmarks agree, else what each benchmark says. "No effect" is only ever
    ``equivalent within +-m`` (the 90 % interval inside the declared margin); an interval that
    merely holds 0 is ``inconclusive``."""
    if not found:
        return ""
    words = {ds: _effect_word(iv) for ds, iv in found.items()}
    if len(set(words.values())) == 1:
        return next(iter(words.values()))
    return "the benchmarks disagree (" + "; ".join(f"{w} on {dataset_label(ds)}" for ds, w in words.items()) + ")"


def _context_claims(s: _Sides) -> list[Claim]:
    """The RPN NMS change alone: each baseline at another RPN NMS against the main baseline."""
    out = []
    for k in [k for k in s.groups if k[0] == "baseline" and k != s.b_key]:
        other = s.groups[k]
        for m in ("AP", "AP90"):
            if s.scale == "COCO":
                a, b = values(other, m), values(s.base, m)
                ours, record = (mean(a) - mean(b) if a and b else float("nan")), {}
                v = verdict_context(ours, COCO_TOLERANCE, m)
                tol_text = f"±{COCO_TOLERANCE:g}"
            else:
                found = intervals_on(s.ev, s.base, other, m)
                ours = found[None].estimate if None in found else float("nan")
                record = {("own" if ds is None else ds): iv.as_dict() for ds, iv in found.items()}
                effect = context_effect(found)
                v = Verdict(CONTEXT, f"{effect}: {_measured(found, m)}" if found else "not measured")
                tol_text = "different / equivalent within the declared margin (90% interval) / inconclusive"
            out.append(Claim(f"(context) baseline RPN NMS {s.b_key[1]:g} -> {k[1]:g} alone, {m}", "this report",
                             float("nan"), ours, float("nan"), tol_text, v.status, v.sentence, s.scale_text,
                             f"{names(other)} vs {names(s.base)}", None, record, EXPLORATORY))
    return out


_BY_KIND = {"delta": _delta_claim, "ratio": _overhead_claim, "absolute": _absolute_claim}


def claims(runs) -> list[Claim]:
    """Every claim of :data:`dynrcnn.reference.CLAIM_KEYS` checked on ``runs`` (a list, or an
    :class:`~dynrcnn.report.evidence.Evidence`, which checks them once), then the context rows
    (baselines at another RPN NMS)."""
    ev = evidence_of(runs)
    return list(ev.once("claims", lambda: check_claims(ev)))


def check_claims(ev) -> list[Claim]:
    """:func:`claims` computed from ``ev`` (what the evidence keeps, :meth:`Evidence.once`)."""
    s = _Sides(ev)
    out = []
    for key in ref.CLAIM_KEYS:
        r = ref.get(key)
        out.append(_BY_KIND[r.kind](s, r))
        if r.kind == "delta" and s.same_key:  # the fair comparison next to the published one
            out.append(_delta_claim(s, r, same_nms=True))
    return primary_family(out + _component_claims(s) + _context_claims(s))


def primary_family(items: list[Claim]) -> list[Claim]:
    """Holm-correct the primary claims (:data:`PRIMARY`, each on every benchmark) as one family:
    every test's two-sided p-value (:func:`~dynrcnn.evaluation.seed_intervals.p_value`, the
    inversion of the same interval) is adjusted, stored in the row's interval record
    (``p_holm``) and a primary row stays ``reproduced`` only when every benchmark's adjusted p is
    below :data:`FAMILY_ALPHA` (else it becomes ``inconclusive``, and its sentence says why)."""
    tests = [(c, ds) for c in items if c.family == PRIMARY_FAMILY for ds in c.intervals]
    if not tests:
        return items
    adjusted = holm([c.intervals[ds].get("p", float("nan")) for c, ds in tests])
    for (c, ds), p in zip(tests, adjusted):
        c.intervals[ds]["p_holm"] = float(p)
    out = []
    for c in items:
        if c.family == PRIMARY_FAMILY and c.status == REPRODUCED and not all(
                iv.get("p_holm", 1.0) < FAMILY_ALPHA for iv in c.intervals.values()):
            worst = max(iv.get("p_holm", 1.0) for iv in c.intervals.values())
            c = dataclasses.replace(c, status=INCONCLUSIVE, sentence=f"{c.sentence}; not significant after Holm's "
                                    f"correction of the primary family (adjusted p = {worst:.3f})")
        elif c.family == PRIMARY_FAMILY and c.intervals:
            ps = ", ".join(f"{iv['p_holm']:.2g}" for iv in c.intervals.values() if "p_holm" in iv)
            c = dataclasses.replace(c, sentence=f"{c.sentence}; Holm-adjusted p {ps} (primary family of {len(tests)})")
        out.append(c)
    return out


def claims_table(runs) -> pd.DataFrame:
    """Each claim: the published number (with its source), this report's number, the
    difference, the tolerance and the verdict sentence. Columns ``scale`` and ``compared`` say
    what was measured and on what data."""
    return pd.DataFrame([c.row() for c in claims(runs)], columns=TABLE_COLUMNS)


def count_statuses(items: list[Claim]) -> dict[str, int]:
    """How many claims have each status (context rows not counted)."""
    return {st: sum(1 for c in items if c.status == st) for st in STATUSES}


def find_claim(items: list[Claim], key: str) -> Claim | None:
    return next((c for c in items if c.key == key), None)


__all__ = ["Claim", "Verdict", "STATUSES", "CONTEXT", "PRIMARY", "PRIMARY_FAMILY", "SECONDARY", "EXPLORATORY",
           "FAMILY_ALPHA", "primary_family", "REPRODUCED", "CONTRADICTED", "INCONCLUSIVE",
           "NOT_TESTABLE", "COCO_TOLERANCE", "OVERHEAD_TOLERANCE", "interval_verdict", "intervals_on", "combined_status",
           "verdict_delta", "verdict_absolute", "verdict_overhead", "verdict_context", "claims", "claims_table",
           "count_statuses", "find_claim"]
