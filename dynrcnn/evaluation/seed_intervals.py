"""Intervals on AP differences at the level of the training seed, with the image level added.

A comparison of detector configurations (Dynamic R-CNN against the baseline, say) is a contrast
``sum_g w_g * mean_s AP(g, s)`` of runs trained with a few seeds ``s`` per configuration ``g`` and
evaluated on one fixed set of validation images. The report asks whether the difference would
hold for *other training seeds and other images from the same distribution*, so the interval
has to see two sources of noise:

* **the seed**: a run's AP moves with its training seed (and with the part of the image noise
  particular to that run). The seeds are the replicates, so this part comes from the spread of
  the per-seed values and gets Student t quantiles on their degrees of freedom. With 3 seeds
  that spread rests on 2 degrees of freedom, hence wide intervals: the honest price of 3 seeds.
  (The hierarchical percentile bootstrap of the old ``stats.bootstrap_contrast`` is narrower: it
  sees only 10 distinct resamples of 3 seeds, shrinks the seed variance by ``(n-1)/n`` and has
  no small-sample quantile, so it under-covers when the seed variance matters; see the tests.)
* **the images**: the validation images are one draw. The part of their noise that is the same
  for every seed of a configuration (an image that suits B better than A helps every B run) does
  not show in the spread over seeds; a t interval over seeds on one fixed image set cannot see it
  and under-covers when it matters. That common part, ``c``, is estimated from the runs'
  image-bootstrap arrays (``APSamples.boot``: the same image resamples for every run).

The rules, per IoU threshold and per metric (AP, AP50, AP75, AP90 are linear in the per-IoU
values, so each is one more column):

**Paired** (every group holds the same seeds, ``n >= 2``). Per-seed contrast
``d_s = sum_g w_g full_g[s]``; estimate ``mean_s d_s``; seed part ``S = s_d^2 / n`` (``s_d^2``
the sample variance of the ``d_s``) on ``k = n - 1`` degrees of freedom. On image resample ``b``
the contrast is ``d_{s,b}``; write its image noise as ``a_b + e_{s,b}``, ``a`` common to all
seeds (variance ``C``), ``e_s`` particular to seed ``s`` (independent over seeds, variance
``sigma^2``). Then ``Vbar = mean_s var_b(d_{s,b})`` estimates ``C + sigma^2`` and
``V1 = var_b(mean_s d_{s,b})`` estimates ``C + sigma^2 / n``, so
``c = max(0, (n V1 - Vbar) / (n - 1))`` estimates ``C`` alone. ``sigma^2 / n`` is not added
again: it is part of the spread of the ``d_s``, which ``S`` already measures. So
``SE^2 = S + c`` estimates the variance of the estimate without double counting (the tests check
``mean SE^2`` against the true variance of the simulation).

**Unpaired** (the groups hold different seed sets, each ``n_g >= 2``). Estimate
``sum_g w_g mean_s full_g[s]``; seed part ``S = sum_g w_g^2 s_g^2 / n_g`` on Welch's
``k = S^2 / sum_g (w_g^2 s_g^2 / n_g)^2 / (n_g - 1)``. Image part: the bootstrap of the
*contrast of seed means*, ``D_b = sum_g w_g mean_s boot_g[s, b]``, has variance
``C + sum_g w_g^2 sigma_g^2 / n_g``, where ``C`` is the contrast's common image variance (the
covariances between groups included: an image effect shared by A and B cancels in ``B - A``) and
``sigma_g^2 / n_g`` each group's seed-specific image noise, which ``S`` already holds. Each
``sigma_g^2 / n_g`` is estimated within its group by ``(Vbar_g - V1_g) / (n_g - 1)``, so
``c = max(0, var_b(D_b) - sum_g w_g^2 (Vbar_g - V1_g) / (n_g - 1))``: counted once. (Computing
``c`` per group and summing would miss the cross-group covariances.)

**The interval** adds the two parts' half-widths in quadrature::

    half(level) = sqrt( t_{k, q}^2 S + z_q^2 c ),   q = (1 + level) / 2

(``z`` the normal quantile: ``c`` rests on hundreds of images and is treated as known). With
``c = 0`` this is exactly the paired t interval (``scipy.stats.ttest_rel``) or Welch's
(``ttest_ind(equal_var=False)``); with ``S = 0`` the normal interval of the image part; it is never
narrower than the t interval that ignores ``c``.

*Why not* ``estimate +- t_{df} sqrt(S + c)`` with the Welch-Satterthwaite
``df = (S + c)^2 / (S^2 / k) >= k`` (``c`` known), the rule first proposed? The variance ``S + c``
is right; the df is the problem. It is estimated from the same ``S`` it scales: a small ``S``
gives a large df and a short quantile exactly when the interval is already too short, and adding
a small ``c`` can make the interval *narrower* than the plain t interval (``S = 1, c = 0.1,
k = 2``: half-width ``t_{2.42} x sqrt(1.1) = 3.84`` against ``t_2 = 4.30``). With ``c`` known
exactly its coverage dips to 92.2 % with 3 seeds (at ``c`` about 0.13 of ``E[S]``), 94.1 % with
5, 94.8 % with 10 (numerical integration over ``S``); in an image-bootstrap simulation like the
tests' it covered 92-94 % with 3 seeds. The quadrature rule, for ``c`` known, covers 95 % at
``c = 0`` and as ``c / S`` grows, and more in between: at most 97.7 % with 3 seeds, 96.6 % with
5, 95.7 % with 10 (the tests check this by the same integration). It is conservative where the
other is not, and costs nothing when ``c`` is 0.

**One seed** in any group: no seed variance, so no interval. The estimate is given; bounds and
variances are NaN and :attr:`SeedDelta.note` is :data:`NO_SEED_VARIANCE`; the verdict functions
return that text instead of a verdict, so such a row is never called reproduced, different or
equivalent.

**Verdicts.** Directional claims (the paper says B beats A): :func:`verdict` reads the 95 %
interval: ``reproduced`` when it excludes 0 in the paper's direction, ``contradicted`` when it
excludes 0 the other way, ``inconclusive`` otherwise. Claims without a direction, or that a
change does *not* matter: :func:`equivalence`: ``different`` when the 95 % interval excludes 0,
``equivalent within +-m`` when the 90 % interval lies strictly inside ``(-m, +m)`` (two one-sided
tests at 5 %, TOST), ``inconclusive`` otherwise. ``different`` is checked first: a difference
both significant and smaller than the margin is reported ``different``. An interval that
touches 0 is not different; one that touches a margin is not equivalent.

**Margins** (:data:`MARGINS`, AP points), declared before looking at the data: roughly half the
gains the paper publishes for Dynamic R-CNN over its Faster R-CNN baseline (+1.9 AP, and a gain
of several points at high IoU, AP90). A difference within half the claimed gain would not support
the claim; a larger one would matter. AP75 and AP90 are noisier (fewer matches count), so their
margins are wider.

**Several comparisons**: :func:`p_value` inverts the same interval (``p`` is the ``alpha`` at
which the ``1 - alpha`` interval just touches the null), so ``p < 0.05`` exactly when the 95 %
interval excludes 0; with ``c = 0`` it is the t test's p-value. :func:`holm` adjusts a family of
them (Holm's step-down: family-wise error control under any dependence).

Not covered: the AP of a resampled image set is not a mean over images, so the image bootstrap
approximates its image variance (well for a few hundred images or more); the noise of ``c``
itself (from the images and from ``B`` resamples) is not in the interval; the seed-specific
parts are assumed independent over seeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq
from scipy.special import ndtri, stdtrit  # the normal and Student t quantiles as fast ufuncs
from scipy.stats import norm
from scipy.stats import t as student_t

from dynrcnn.evaluation.stats import APSamples, metric_of

REPRODUCED, CONTRADICTED, INCONCLUSIVE = "reproduced", "contradicted", "inconclusive"  # verdict()'s words
DIFFERENT = "different"  # equivalence()'s words: DIFFERENT, equivalent_word(m), INCONCLUSIVE
NO_SEED_VARIANCE = "one seed: no seed variance"  # no interval: printed instead of a verdict

#: equivalence margins in AP points, declared in advance: about half the paper's published gains
#: of Dynamic R-CNN (+1.9 AP; several points of AP90), wider where the metric is noisier
MARGINS = {"AP": 1.0, "AP50": 1.0, "AP75": 1.5, "AP90": 2.0}
METRICS = tuple(MARGINS)  # the reported metrics, in report order


def equivalent_word(margin: float) -> str:
    """:func:`equivalence`'s word for a 90 % interval inside ``(-margin, +margin)``."""
    return f"equivalent within \u00b1{margin:g}"


@dataclass
class SeedDelta:
    """A contrast of configurations with its seed-level interval (rules: module docstring).

    Per-IoU arrays are ``[T]``. ``metrics`` maps AP, AP50, AP75, AP90 to
    ``(estimate, low, high)`` at ``level``; ``se`` to ``sqrt(seed_var + image_var)``;
    ``seed_var`` to the seed part ``S`` (``s_d^2 / n``, or Welch's sum), ``image_var`` to the
    common image part ``c``, ``df`` to the seed part's degrees of freedom ``k`` (``n - 1``, or
    Welch's). :meth:`stats` gives the arguments of :func:`seed_interval`, :func:`p_value` and
    :func:`equivalence`. Without an interval (a group with one seed) bounds and variances are NaN
    and ``note`` is :data:`NO_SEED_VARIANCE`.
    """

    per_iou: np.ndarray  # [T] estimates
    per_iou_low: np.ndarray  # [T]
    per_iou_high: np.ndarray  # [T]
    per_iou_seed_var: np.ndarray  # [T] S
    per_iou_image_var: np.ndarray  # [T] c
    per_iou_df: np.ndarray  # [T] k
    metrics: dict  # name -> (estimate, low, high)
    se: dict  # name -> sqrt(S + c)
    seed_var: dict  # name -> S
    image_var: dict  # name -> c
    df: dict  # name -> k
    seeds: tuple  # number of seeds of each group
    paired: bool
    level: float
    per_seed: dict  # paired: name -> {seed: contrast d_s}; unpaired: {}
    group_values: dict  # name -> [{seed: the run's value} for each group]
    note: str = ""

    @property
    def has_interval(self) -> bool:
        return not self.note

    def stats(self, metric: str = "AP") -> tuple:
        """``(estimate, seed_var, image_var, df)`` of ``metric``, e.g. ``p_value(*d.stats("AP"))``."""
        return self.metrics[metric][0], self.seed_var[metric], self.image_var[metric], self.df[metric]


def seed_interval(estimate, seed_var, image_var, df, level: float = 0.95):
    """``(low, high)`` = ``estimate +- sqrt(t_{df,q}^2 seed_var + z_q^2 image_var)``, ``q = (1+level)/2``.

    Arrays broadcast (``[Q]`` in, ``[Q]`` out; floats for scalars); NaN stays NaN.
    """
    estimate, seed_var, image_var, df = (np.asarray(v, dtype=np.float64) for v in (estimate, seed_var, image_var, df))
    q = (1 + level) / 2
    half = np.sqrt(stdtrit(df, q) ** 2 * seed_var + ndtri(q) ** 2 * image_var)
    low, high = estimate - half, estimate + half
    return (float(low), float(high)) if low.ndim == 0 else (low, high)


def _with_metrics(x: np.ndarray) -> np.ndarray:
    """``[..., T]`` per-IoU values -> ``[..., T + len(METRICS)]``, the metrics appended."""
    return np.concatenate([x] + [metric_of(x, m)[..., None] for m in METRICS], axis=-1)


def seed_part(full: list, weights: list, paired: bool):
    """Estimate, seed part ``S`` and its degrees of freedom ``k`` (three ``[Q]`` arrays) of a
    contrast of per-seed values ``full[g]`` ``[n_g, Q]`` (every ``n_g >= 2``): the paired t
    part over per-seed contrasts, or Welch's over groups (module docstring)."""
    if paired:
        n = full[0].shape[0]
        d = sum(w * f for w, f in zip(weights, full))  # [n, Q]
        return d.mean(axis=0), d.var(axis=0, ddof=1) / n, np.full(d.shape[1:], n - 1.0)
    ns = [f.shape[0] for f in full]
    estimate = sum(w * f.mean(axis=0) for w, f in zip(weights, full))
    parts = [w**2 * f.var(axis=0, ddof=1) / n for w, f, n in zip(weights, full, ns)]
    seed_var = sum(parts)
    den = sum(p**2 / (n - 1) for p, n in zip(parts, ns))
    with np.errstate(divide="ignore", invalid="ignore"):
        df = np.where(den > 0, seed_var**2 / den, min(ns) - 1.0)  # no spread at all: any k will do
    return estimate, seed_var, df


def paired_image_parts(boot) -> tuple:
    """``(V1, Vbar, c)`` of paired per-seed contrasts on shared image resamples ``boot``
    ``[n, B, Q]``: ``V1 = var_b(mean_s d_{s,b})``, ``Vbar = mean_s var_b(d_{s,b})`` and the image
    noise common to every seed ``c = max(0, (n V1 - Vbar) / (n - 1))`` (module docstring)."""
    n = boot.shape[0]
    v1 = boot.mean(axis=0).var(axis=0, ddof=1)  # C + sigma^2 / n
    vbar = boot.var(axis=1, ddof=1).mean(axis=0)  # C + sigma^2
    return v1, vbar, np.maximum(0.0, (n * v1 - vbar) / (n - 1))


def _variance_parts(full: list, boot: list, weights: list, paired: bool):
    """Estimate, ``S``, ``c`` and ``k`` (four ``[Q]`` arrays) of a contrast.

    ``full[g]`` ``[n_g, Q]`` are group g's runs, ``boot[g]`` ``[n_g, B, Q]`` the same on shared
    image resamples; every ``n_g >= 2``.
    """
    estimate, seed_var, df = seed_part(full, weights, paired)
    if paired:
        image_var = paired_image_parts(sum(w * b for w, b in zip(weights, boot)))[2]
    else:
        ns = [f.shape[0] for f in full]
        contrast_boot = sum(w * b.mean(axis=0) for w, b in zip(weights, boot))  # [B, Q]
        specific = sum(w**2 * (b.var(axis=1, ddof=1).mean(axis=0) - b.mean(axis=0).var(axis=0, ddof=1)) / (n - 1)
                       for w, b, n in zip(weights, boot, ns))  # sum_g w_g^2 sigma_g^2 / n_g
        image_var = np.maximum(0.0, contrast_boot.var(axis=0, ddof=1) - specific)
    return estimate, seed_var, image_var, df


def variance_decomposition(samples_a: dict, samples_b: dict, metric: str = "AP") -> dict | None:
    """Where the uncertainty of a paired difference ``B - A`` comes from (seed -> :class:`APSamples`
    on both sides, the same seeds), in AP points squared, with ``n`` seeds and ``n_images``:

    * ``per_seed_total``: the sample variance of the per-seed differences ``s_d^2``;
    * ``image_within_seed``: ``Vbar - c``, the image noise particular to one seed's pair of runs
      (it shrinks as 1 / n_images);
    * ``seed``: ``s_d^2 - (Vbar - c)`` (at least 0), what more validation images cannot remove;
    * ``image_common``: ``c``, shrinks as 1 / n_images;
    * ``se_now`` and ``se_at``: the standard error of the mean difference now and projected for
      other validation sizes (the image parts scaled by n_images / N), to choose the size.
    ``None`` without at least two paired seeds."""
    seeds = sorted(set(samples_a) & set(samples_b))
    if len(seeds) < 2:
        return None
    col = np.shape(samples_a[seeds[0]].full)[-1] + METRICS.index(metric)

    def stack(samples, part):
        return np.stack([_with_metrics(np.asarray(getattr(samples[s], part), dtype=np.float64)) for s in seeds])

    d = (stack(samples_b, "full") - stack(samples_a, "full"))[:, col]
    _, vbar, c = (float(x[col]) for x in paired_image_parts(stack(samples_b, "boot") - stack(samples_a, "boot")))
    n, n_img = len(seeds), len(samples_a[seeds[0]].image_ids)
    s2 = float(d.var(ddof=1))
    within = max(0.0, vbar - c)
    seed = max(0.0, s2 - within)

    def se(n_images: int) -> float:
        k = n_img / n_images
        return float(np.sqrt((seed + within * k) / n + c * k))

    return {"metric": metric, "n_seeds": n, "n_images": n_img, "per_seed_total": s2, "seed": seed,
            "image_within_seed": within, "image_common": c, "se_now": se(n_img),
            "se_at": {str(m): se(m) for m in (n_img, 2 * n_img, 4 * n_img)}}


def seed_contrast(groups: list[dict[int, APSamples]], weights, level: float = 0.95) -> SeedDelta:
    """``sum_g weights[g] * (mean over seeds of groups[g])`` with a seed-level interval.

    ``groups[g]`` maps a training seed to that run's :class:`APSamples` (``full`` ``[T]``, ``boot``
    ``[B, T]``); all runs must be evaluated on the same images with the same image resamples (same
    ``n_boot`` and ``seed``). Groups that hold the same seeds are paired by seed, others are taken
    as independent (Welch). ``[A, B]`` with ``[-1, 1]`` is ``B - A`` (:func:`seed_delta`); four
    groups with ``[1, -1, -1, 1]`` a difference of two differences. Rules: module docstring.
    """
    weights = [float(w) for w in weights]
    if len(groups) != len(weights) or not groups or not all(groups):
        raise ValueError("seed_contrast needs one weight per group and at least one run in each group")
    runs = [g[s] for g in groups for s in g]
    first = runs[0]
    for m in runs:
        if list(m.image_ids) != list(first.image_ids):
            raise ValueError("all runs of a comparison must be evaluated on the same images")
        if (m.n_boot, m.seed) != (first.n_boot, first.seed) or np.shape(m.boot) != np.shape(first.boot):
            raise ValueError(f"all runs need the same image resamples: n_boot={m.n_boot}, seed={m.seed} "
                             f"against n_boot={first.n_boot}, seed={first.seed}")
    seeds = [sorted(g) for g in groups]
    paired = all(s == seeds[0] for s in seeds)
    full = [_with_metrics(np.stack([np.asarray(g[s].full, dtype=np.float64) for s in ss]))
            for g, ss in zip(groups, seeds)]  # [n_g, Q]
    n_thr = np.shape(first.full)[-1]
    col = {m: n_thr + k for k, m in enumerate(METRICS)}
    group_values = {m: [dict(zip(ss, f[:, i].tolist())) for ss, f in zip(seeds, full)] for m, i in col.items()}
    per_seed = {}
    if paired:
        d = sum(w * f for w, f in zip(weights, full))
        per_seed = {m: dict(zip(seeds[0], d[:, i].tolist())) for m, i in col.items()}
    counts = tuple(len(s) for s in seeds)
    if min(counts) < 2:
        estimate = sum(w * f.mean(axis=0) for w, f in zip(weights, full))
        seed_var = image_var = df = low = high = np.full_like(estimate, np.nan)
        note = NO_SEED_VARIANCE
    else:
        boot = [_with_metrics(np.stack([np.asarray(g[s].boot, dtype=np.float64) for s in ss]))
                for g, ss in zip(groups, seeds)]  # [n_g, B, Q]
        estimate, seed_var, image_var, df = _variance_parts(full, boot, weights, paired)
        low, high = seed_interval(estimate, seed_var, image_var, df, level)
        note = ""
    return SeedDelta(
        estimate[:n_thr], low[:n_thr], high[:n_thr], seed_var[:n_thr], image_var[:n_thr], df[:n_thr],
        metrics={m: (float(estimate[i]), float(low[i]), float(high[i])) for m, i in col.items()},
        se={m: float(np.sqrt(seed_var[i] + image_var[i])) for m, i in col.items()},
        seed_var={m: float(seed_var[i]) for m, i in col.items()},
        image_var={m: float(image_var[i]) for m, i in col.items()},
        df={m: float(df[i]) for m, i in col.items()},
        seeds=counts, paired=paired, level=level, per_seed=per_seed, group_values=group_values, note=note)


def seed_delta(a: dict[int, APSamples], b: dict[int, APSamples], level: float = 0.95) -> SeedDelta:
    """``B - A`` (each seed -> :class:`APSamples`): :func:`seed_contrast` of ``[a, b]`` with ``[-1, 1]``."""
    return seed_contrast([a, b], [-1.0, 1.0], level=level)


def p_value(estimate: float, seed_var: float, image_var: float, df: float, null: float = 0.0) -> float:
    """Two-sided p-value of ``estimate == null``: the ``alpha`` whose ``1 - alpha``
    :func:`seed_interval` has ``null`` on its edge, so ``p < alpha`` exactly when that interval
    excludes ``null``. With ``image_var = 0`` it is the t test's ``2 t_df.sf(|t|)`` (with
    ``seed_var = 0`` the normal test's). NaN without an interval.
    """
    if not (np.isfinite(estimate) and np.isfinite(seed_var) and np.isfinite(image_var) and df > 0):
        return float("nan")
    dist = abs(estimate - null)
    if image_var == 0 or seed_var == 0:
        var = seed_var + image_var
        if var == 0:
            return 1.0 if dist == 0 else 0.0
        z = dist / np.sqrt(var)
        return float(2 * (student_t.sf(z, df) if image_var == 0 else norm.sf(z)))
    if dist == 0:
        return 1.0

    def gap(log_p):  # half-width of the 1 - p interval minus the distance; decreasing in p
        p = np.exp(log_p)
        with np.errstate(over="ignore"):  # far tails: the quantile's square overflows to inf, which is right
            return np.sqrt(student_t.isf(p / 2, df) ** 2 * seed_var + norm.isf(p / 2) ** 2 * image_var) - dist

    lo = np.log(1e-300)
    if gap(lo) < 0:
        return 0.0
    return float(np.exp(brentq(gap, lo, 0.0, xtol=1e-12)))


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values, ``[m]`` in the input order.

    With the p-values sorted ascending, ``adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))``
    (``j`` from 1): monotone in the sorted order, capped at 1. Reject at family-wise level
    ``alpha`` where ``adj < alpha``. NaN entries (no interval) are left out of the family and
    stay NaN.
    """
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    out[order] = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    return out


def verdict(low: float, high: float, expected_sign: int = 1) -> str:
    """``reproduced`` / ``contradicted`` / ``inconclusive`` from a 95 % interval on a difference.

    ``expected_sign`` is the direction the paper claims (+1: an improvement). An interval that
    touches 0 is inconclusive; a NaN interval (a group with one seed) gives :data:`NO_SEED_VARIANCE`.
    """
    if expected_sign not in (1, -1):
        raise ValueError("expected_sign must be +1 or -1")
    if np.isnan(low) or np.isnan(high):
        return NO_SEED_VARIANCE
    if low > 0:
        return REPRODUCED if expected_sign > 0 else CONTRADICTED
    if high < 0:
        return CONTRADICTED if expected_sign > 0 else REPRODUCED
    return INCONCLUSIVE


def equivalence(estimate: float, seed_var: float, image_var: float, df: float, margin: float,
                alpha: float = 0.05) -> str:
    """``different`` / ``equivalent within +-margin`` / ``inconclusive``.

    ``different``: the ``1 - alpha`` (95 %) :func:`seed_interval` excludes 0 (checked first).
    ``equivalent within +-margin``: the ``1 - 2 alpha`` (90 %) interval lies strictly inside
    ``(-margin, +margin)``, i.e. both one-sided tests of TOST reject at ``alpha``. Without an
    interval, :data:`NO_SEED_VARIANCE`. Typical call:
    ``equivalence(*delta.stats("AP90"), MARGINS["AP90"])``.
    """
    if not margin > 0:
        raise ValueError(f"margin must be > 0, got {margin}")
    low, high = seed_interval(estimate, seed_var, image_var, df, 1 - alpha)
    if np.isnan(low) or np.isnan(high):
        return NO_SEED_VARIANCE
    if low > 0 or high < 0:
        return DIFFERENT
    low, high = seed_interval(estimate, seed_var, image_var, df, 1 - 2 * alpha)
    if -margin < low and high < margin:
        return equivalent_word(margin)
    return INCONCLUSIVE
