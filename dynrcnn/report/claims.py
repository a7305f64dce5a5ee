"""The claims the report checks, as data: each :class:`Claim` carries a ``status`` word and
a ``sentence``, so nothing downstream recognises a verdict by its wording.

``status`` is one of :data:`STATUSES` for a published claim; rows that give context and
carry no published claim (the RPN NMS change alone) have status :data:`CONTEXT`.

Tolerances. At COCO scale a published number is "reproduced" within the seed-to-seed spread
of a 1x R50-FPN run (~0.3 AP). At miniature scale only the direction of a relative claim is
testable; with one seed per method the noise band is assumed (:data:`MINI_NOISE`), with two
or more seeds it is 2 standard errors of the difference (never below the assumed band / 2).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass

import pandas as pd

from dynrcnn import reference as ref
from dynrcnn.report.analysis import device_kind, group_runs, main_key, mean, names, profile_scale, values
from dynrcnn.runs import TRAIN_DONE, rpn_nms, scale_label

COCO_TOLERANCE = 0.3
MINI_NOISE = {"AP": 1.0, "AP50": 1.0, "AP75": 1.5, "AP90": 2.0}
OVERHEAD_TOLERANCE = {"cpu": 0.10, "gpu": 0.05}

REPRODUCED, CONTRADICTED, INCONCLUSIVE, NOT_TESTABLE = "reproduced", "contradicted", "inconclusive", "not-testable"
STATUSES = (REPRODUCED, CONTRADICTED, INCONCLUSIVE, NOT_TESTABLE)
CONTEXT = "context"


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

    def row(self) -> dict:
        """The claims-table row (``verdict`` is the sentence)."""
        d = asdict(self)
        d["verdict"] = d.pop("sentence")
        return d


TABLE_COLUMNS = ["claim", "source", "published", "ours", "difference", "tolerance", "verdict", "scale", "compared"]


# --------------------------------------------------------------------------------------------
# verdicts (pure functions of numbers: tested on hand-made values)


def noise_tolerance(metric: str, a: list[float], b: list[float]) -> tuple[float, str]:
    """Noise band of a difference of means at miniature scale, and how it was obtained."""
    assumed = MINI_NOISE.get(metric, 1.0)
    if len(a) >= 2 and len(b) >= 2:
        se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
        tol = max(2 * se, assumed / 2)
        return tol, f"±{tol:.2f} (2 s.e. over {len(a)}+{len(b)} seeds)"
    return assumed, f"±{assumed:.1f} (assumed seed noise: {len(a)}+{len(b)} run(s), spread not measured)"


def _not_measured(what: str = "missing runs") -> Verdict:
    return Verdict(NOT_TESTABLE, f"not measured ({what})")


def verdict_delta(ours: float, published: float, scale: str, tol: float, metric: str = "AP") -> Verdict:
    """Verdict for a relative claim (``dynamic - baseline`` in AP points). At COCO scale a gain
    in the published direction whose size is outside the tolerance is ``inconclusive``
    ("partly reproduced")."""
    if ours is None or not math.isfinite(ours):
        return _not_measured()
    if scale == "COCO":
        if abs(ours - published) <= tol:
            return Verdict(REPRODUCED, f"reproduced: {ours:+.1f} vs {published:+.1f} {metric}, within ±{tol:g}")
        if ours > tol:
            return Verdict(INCONCLUSIVE, f"partly reproduced: gain {ours:+.1f} {metric} in the published direction, "
                                         f"magnitude differs by {ours - published:+.1f} (outside ±{tol:g})")
        return Verdict(CONTRADICTED, f"not reproduced: {ours:+.1f} {metric} vs published {published:+.1f}")
    if ours > tol:
        return Verdict(REPRODUCED, f"direction reproduced at miniature scale ({ours:+.1f} {metric} > noise "
                                   f"±{tol:.2g}); magnitude not comparable to COCO")
    if ours < -tol:
        return Verdict(CONTRADICTED, f"not reproduced at miniature scale: {ours:+.1f} {metric}, opposite "
                                     f"direction beyond noise ±{tol:.2g}")
    return Verdict(INCONCLUSIVE, f"inconclusive at miniature scale: {ours:+.1f} {metric} is within the noise band "
                                 f"±{tol:.2g}")


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
    """The RPN NMS change alone (no published number: DESIGN.md sec. 2)."""
    if not math.isfinite(ours):
        return Verdict(CONTEXT, "not measured")
    if abs(ours) <= tol:
        return Verdict(CONTEXT, f"no effect beyond noise ({ours:+.1f} {metric})")
    return Verdict(CONTEXT, f"RPN NMS alone changes {metric} by {ours:+.1f}: the published gain mixes it with DLA/DSL")


# --------------------------------------------------------------------------------------------
# the claims of a set of runs


class _Sides:
    """The runs a claim compares: the main baseline and dynamic groups, and for timing every
    finished run of the same method and RPN NMS."""

    def __init__(self, runs):
        self.runs = list(runs)
        self.groups = group_runs(self.runs)
        self.scale = profile_scale(self.runs)
        self.scale_text = scale_label("coco" if self.scale == "COCO" else "mini")
        self.b_key, self.d_key = main_key(self.groups, "baseline"), main_key(self.groups, "dynamic")
        self.base = self.groups.get(self.b_key, []) if self.b_key else []
        self.dyn = self.groups.get(self.d_key, []) if self.d_key else []
        self.compared = f"{names(self.dyn)} vs {names(self.base)}"
        if self.b_key and self.d_key:
            self.compared += f" (RPN NMS {self.d_key[1]:g} vs {self.b_key[1]:g})"

    def all_of(self, method: str, key) -> list:
        return [r for r in self.runs if r.config.get("method") == method and rpn_nms(r) == (key or (0, 0))[1]]

    def claim(self, r: ref.Reference, ours, difference, tolerance, verdict: Verdict, compared) -> Claim:
        return Claim(r.description, ref.SOURCE_SHORT[r.source], r.value, ours, difference, tolerance,
                     verdict.status, verdict.sentence, self.scale_text, compared, r.key)


def _delta_claim(s: _Sides, r: ref.Reference) -> Claim:
    a, b = values(s.dyn, r.metric), values(s.base, r.metric)
    ours = mean(a) - mean(b) if a and b else float("nan")
    if s.scale == "COCO":
        tol, tol_text = COCO_TOLERANCE, f"±{COCO_TOLERANCE:g} {r.metric} (seed spread at COCO scale)"
    else:
        tol, tol_text = noise_tolerance(r.metric, a, b)
    diff = ours - r.value if s.scale == "COCO" else float("nan")
    return s.claim(r, ours, diff, tol_text, verdict_delta(ours, r.value, s.scale, tol, r.metric), s.compared)


def _overhead_claim(s: _Sides, r: ref.Reference) -> Claim:
    # cost depends on the RPN NMS (it sets how many proposals survive), so time the dynamic
    # runs against baselines at the same RPN NMS when there are any
    all_dyn = s.all_of("dynamic", s.d_key)
    timing_base = s.all_of("baseline", s.d_key) or s.all_of("baseline", s.b_key)
    a, b = values(all_dyn, "sec_per_iter"), values(timing_base, "sec_per_iter")
    ours = mean(a) / mean(b) if a and b else float("nan")
    kind = device_kind(all_dyn + timing_base)
    tol = OVERHEAD_TOLERANCE[kind]
    return s.claim(r, ours, ours - r.value, f"x{1 + tol:.2f} ({kind} timing noise)",
                   verdict_overhead(ours, tol, kind),
                   f"{names(all_dyn)} vs {names(timing_base)} (median s/iter, training)")


def _absolute_claim(s: _Sides, r: ref.Reference) -> Claim:
    rs = s.dyn if r.method == "dynamic" else s.base
    ours = mean(values(rs, r.metric))
    coco = s.scale == "COCO"
    return s.claim(r, ours, ours - r.value if coco else float("nan"),
                   f"±{COCO_TOLERANCE:g} {r.metric}" if coco else "n/a",
                   verdict_absolute(ours, r.value, s.scale, metric=r.metric), f"{names(rs)} {r.metric}")


def _context_claims(s: _Sides) -> list[Claim]:
    out = []
    for k in [k for k in s.groups if k[0] == "baseline" and k != s.b_key]:
        for m in ("AP", "AP90"):
            a, b = values(s.groups[k], m), values(s.base, m)
            ours = mean(a) - mean(b) if a and b else float("nan")
            tol, tol_text = (COCO_TOLERANCE, f"±{COCO_TOLERANCE:g}") if s.scale == "COCO" else noise_tolerance(m, a, b)
            v = verdict_context(ours, tol, m)
            out.append(Claim(f"(context) baseline RPN NMS {s.b_key[1]:g} -> {k[1]:g} alone, {m}", "this report",
                             float("nan"), ours, float("nan"), tol_text, v.status, v.sentence, s.scale_text,
                             f"{names(s.groups[k])} vs {names(s.base)}"))
    return out


_BY_KIND = {"delta": _delta_claim, "ratio": _overhead_claim, "absolute": _absolute_claim}


def claims(runs) -> list[Claim]:
    """Every claim of :data:`dynrcnn.reference.CLAIM_KEYS` checked on ``runs``, then the
    context rows (baselines at another RPN NMS)."""
    s = _Sides(runs)
    out = [_BY_KIND[ref.get(key).kind](s, ref.get(key)) for key in ref.CLAIM_KEYS]
    return out + _context_claims(s)


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


__all__ = ["Claim", "Verdict", "STATUSES", "CONTEXT", "REPRODUCED", "CONTRADICTED", "INCONCLUSIVE",
           "NOT_TESTABLE", "COCO_TOLERANCE", "MINI_NOISE", "OVERHEAD_TOLERANCE", "noise_tolerance",
           "verdict_delta", "verdict_absolute", "verdict_overhead", "verdict_context", "claims", "claims_table",
           "count_statuses", "find_claim"]
