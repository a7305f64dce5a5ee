"""Seed-level intervals (seed_intervals): hand-computed values, coverage by simulation, verdicts, Holm."""

from functools import lru_cache

import numpy as np
import pytest
from scipy import stats
from scipy.integrate import quad
from scipy.special import gammaln, ndtr, stdtrit

from dynrcnn.evaluation import stats as old_stats
from dynrcnn.evaluation.stats import APSamples, image_weights
from dynrcnn.evaluation.seed_intervals import (CONTRADICTED, DIFFERENT, INCONCLUSIVE, MARGINS, NO_SEED_VARIANCE, REPRODUCED, equivalence,
                            equivalent_word, holm, p_value, seed_contrast, seed_delta, seed_interval, verdict)

T = 10
Z975 = 1.959963984540054  # z_{0.975}


def run(full, boot=None, n_img=50, n_boot=4):
    """An APSamples of scalar ``full`` broadcast to T thresholds; ``boot`` [B] deviations (default none)."""
    boot = np.zeros(n_boot) if boot is None else np.asarray(boot, dtype=float)
    return APSamples(list(range(n_img)), np.full(T, float(full)), float(full) + np.tile(boot[:, None], (1, T)),
                     len(boot), 0)


# ---- hand-computed values ---------------------------------------------------------------------

def test_paired_without_image_noise_is_the_paired_t_interval():
    a_vals = np.array([40.10, 40.50, 39.80])
    b_vals = a_vals + [2.34, 1.68, 4.00]
    a = {s: run(v) for s, v in zip((1, 2, 3), a_vals)}
    b = {s: run(v) for s, v in zip((1, 2, 3), b_vals)}
    d = seed_delta(a, b)
    est, low, high = d.metrics["AP"]
    # by hand: mean 2.67333, sd 1.19538, se 0.690153, t_{2,.975} 4.302653 -> half-width 2.969488
    assert est == pytest.approx(2.673333, abs=1e-5)
    assert (low, high) == pytest.approx((-0.296155, 5.642822), abs=1e-5)
    ci = stats.ttest_rel(b_vals, a_vals).confidence_interval()
    assert (low, high) == pytest.approx((ci.low, ci.high), abs=1e-9)
    assert d.paired and d.seeds == (3, 3) and d.df["AP"] == 2 and d.image_var["AP"] == 0
    assert d.se["AP"] == pytest.approx(0.690153, abs=1e-6)
    assert d.per_seed["AP90"] == pytest.approx({1: 2.34, 2: 1.68, 3: 4.00})
    assert d.group_values["AP"][0] == pytest.approx(dict(zip((1, 2, 3), a_vals)))
    np.testing.assert_allclose(d.per_iou_low, low)
    np.testing.assert_allclose(d.per_iou_high, high)
    assert p_value(*d.stats("AP")) == pytest.approx(stats.ttest_rel(b_vals, a_vals).pvalue, rel=1e-9)
    assert verdict(low, high) == INCONCLUSIVE


def test_unpaired_without_image_noise_is_welch():
    a_vals, b_vals = np.array([40.1, 40.5, 39.8]), np.array([42.0, 41.1, 43.5, 42.2, 41.7])
    a = {s: run(v) for s, v in zip((1, 2, 3), a_vals)}
    b = {s: run(v) for s, v in zip((4, 5, 6, 7, 8), b_vals)}
    d = seed_delta(a, b)
    welch = stats.ttest_ind(b_vals, a_vals, equal_var=False)
    ci = welch.confidence_interval()
    assert not d.paired and d.seeds == (3, 5) and d.per_seed == {}
    assert d.metrics["AP"] == pytest.approx((b_vals.mean() - a_vals.mean(), ci.low, ci.high), abs=1e-9)
    assert d.df["AP"] == pytest.approx(welch.df, rel=1e-9)
    assert p_value(*d.stats("AP")) == pytest.approx(welch.pvalue, rel=1e-9)


# image deviations of B's two runs on 4 resamples: a part common to both seeds (variance 4/3 with
# ddof 1) plus a part particular to each seed, orthogonal to it and to each other
COMMON, OWN = np.array([1.0, -1, 1, -1]), (np.array([1.0, 1, -1, -1]), np.array([1.0, -1, -1, 1]))


@pytest.mark.parametrize("paired", [True, False])
def test_common_image_variance_by_hand(paired):
    # V1 = var([2,-1,0,-1]) = 2, Vbar = var([2,0,0,-2]) = var([2,-2,0,0]) = 8/3 -> c = (2*2 - 8/3)/1 = 4/3
    # unpaired: var(D) = 2, B's own part (Vbar - V1)/(n-1) = 2/3 -> c = 4/3 as well
    a = {0: run(10.0), 1: run(10.0)}
    b = {s + (0 if paired else 2): run(v, COMMON + own) for s, v, own in zip((0, 1), (11.0, 13.0), OWN)}
    d = seed_delta(a, b)
    assert d.paired == paired
    assert d.image_var["AP"] == pytest.approx(4 / 3)
    assert d.seed_var["AP"] == pytest.approx(1.0)  # var([1, 3]) / 2
    t1 = 12.706204736174696  # t_{1, .975}
    half = np.sqrt(t1**2 * 1.0 + Z975**2 * 4 / 3)
    assert d.metrics["AP"] == pytest.approx((2.0, 2.0 - half, 2.0 + half))


def test_contrast_of_four_groups():
    vals = {"a1": [40.0, 40.4, 39.9], "b1": [42.0, 42.1, 42.5], "a2": [38.0, 38.6, 38.2], "b2": [39.0, 39.1, 39.9]}
    groups = [{s: run(v) for s, v in zip((1, 2, 3), vals[k])} for k in ("a1", "b1", "a2", "b2")]
    d = seed_contrast(groups, [1, -1, -1, 1])
    dd = (np.array(vals["a1"]) - vals["b1"]) - (np.array(vals["a2"]) - vals["b2"])
    ci = stats.ttest_1samp(dd, 0.0).confidence_interval()
    assert d.metrics["AP"] == pytest.approx((dd.mean(), ci.low, ci.high))


def test_never_narrower_than_the_seed_t_interval():
    rng = np.random.default_rng(3)
    s, c, k = rng.exponential(size=(3, 1000))
    k = 1 + 10 * k
    low, high = seed_interval(0.0, s, c, k)
    assert np.all(high >= stats.t.ppf(0.975, k) * np.sqrt(s) - 1e-12)
    assert np.all(high >= Z975 * np.sqrt(s + c) - 1e-12)  # and never narrower than the normal one


def _coverage_with_known_c(k, r, rule):
    """P(estimate's interval covers the truth) when the seed part is S ~ chi2_k / k (expectation 1)
    and the image part c = r is known, by integration over the chi-square density."""
    def integrand(x):
        s = max(x / k, 1e-300)
        if rule == "quadrature":
            half = seed_interval(0.0, s, r, k)[1]
        else:  # Welch-Satterthwaite with c known: one t quantile on (S + c)^2 / (S^2 / k) df
            half = stdtrit((s + r) ** 2 / (s**2 / k), 0.975) * np.sqrt(s + r)
        log_pdf = (k / 2 - 1) * np.log(x) - x / 2 - k / 2 * np.log(2) - gammaln(k / 2)
        return (2 * ndtr(half / np.sqrt(1 + r)) - 1) * np.exp(log_pdf)
    return quad(integrand, 0, np.inf, limit=200)[0]


@pytest.mark.parametrize("k, highest", [(2, 0.978), (4, 0.967), (9, 0.958)])
def test_quadrature_rule_is_conservative_where_welch_satterthwaite_is_not(k, highest):
    # the interval's rule (module docstring): coverage 95 % at c = 0 and c >> S, above it between
    ratios = [0.0, 0.05, 0.13, 0.3, 1.0, 2.0, 5.0, 1000.0]
    cover = [_coverage_with_known_c(k, r, "quadrature") for r in ratios]
    assert cover[0] == pytest.approx(0.95, abs=1e-6) and cover[-1] == pytest.approx(0.95, abs=1e-3)
    assert min(cover) > 0.95 - 1e-6 and max(cover) < highest
    if k == 2:  # the rule first proposed dips to 92 % with 3 seeds, c known exactly
        assert _coverage_with_known_c(k, 0.13, "welch-satterthwaite") < 0.925


def test_p_value_inverts_the_interval():
    est, s, c, k = 1.3, 0.2, 0.15, 2.0
    p = p_value(est, s, c, k)
    assert seed_interval(est, s, c, k, level=1 - p)[0] == pytest.approx(0.0, abs=1e-9)
    assert (p < 0.05) == (seed_interval(est, s, c, k)[0] > 0)
    assert p_value(0.0, s, c, k) == 1.0
    assert p_value(1.0, 0.0, 0.25, 2.0) == pytest.approx(2 * stats.norm.sf(2.0))


# ---- one seed, verdicts, Holm -----------------------------------------------------------------

@pytest.mark.parametrize("seeds_b", [(1,), (4, 5, 6)])
def test_one_seed_gives_no_interval(seeds_b):
    a = {1: run(40.0)}
    b = {s: run(42.0 + 0.1 * s) for s in seeds_b}
    d = seed_delta(a, b)
    assert not d.has_interval and d.note == NO_SEED_VARIANCE
    est, low, high = d.metrics["AP"]
    assert np.isfinite(est) and np.isnan(low) and np.isnan(high)
    assert np.all(np.isnan(d.per_iou_low))
    assert verdict(low, high) == NO_SEED_VARIANCE
    assert equivalence(*d.stats("AP"), MARGINS["AP"]) == NO_SEED_VARIANCE
    assert np.isnan(p_value(*d.stats("AP")))


def test_directional_verdicts():
    assert verdict(0.1, 2.0) == REPRODUCED
    assert verdict(-2.0, -0.1) == CONTRADICTED
    assert verdict(-2.0, -0.1, expected_sign=-1) == REPRODUCED
    assert verdict(0.1, 2.0, expected_sign=-1) == CONTRADICTED
    assert verdict(0.0, 2.0) == INCONCLUSIVE  # touching 0 is not excluding it
    assert verdict(-1.0, 1.0) == INCONCLUSIVE


def test_equivalence_verdicts():
    # df 10, se 0.1: 95 % half-width 2.228 * 0.1, 90 % half-width 1.812 * 0.1
    assert equivalence(0.2, 0.01, 0.0, 10, margin=1.0) == equivalent_word(1.0) == "equivalent within \u00b11"
    assert equivalence(0.5, 0.01, 0.0, 10, margin=1.0) == DIFFERENT  # [0.28, 0.72] excludes 0
    assert equivalence(-0.5, 0.01, 0.0, 10, margin=1.0) == DIFFERENT
    assert equivalence(0.0, 1.0, 0.0, 10, margin=1.0) == INCONCLUSIVE  # 90 %: [-1.81, 1.81]
    edge = seed_interval(0.0, 1.0, 0.0, 10, level=0.90)[1]
    assert equivalence(0.0, 1.0, 0.0, 10, margin=edge) == INCONCLUSIVE  # touching the margin
    assert equivalence(0.0, 1.0, 0.0, 10, margin=1.001 * edge) == equivalent_word(1.001 * edge)
    assert MARGINS == {"AP": 1.0, "AP50": 1.0, "AP75": 1.5, "AP90": 2.0}


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1: 0.02, 0.03, 0.06, 0.04 -> monotone: .02 .03 .06 .06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])  # capped at 1
    np.testing.assert_allclose(holm([0.01, np.nan, 0.04]), [0.02, np.nan, 0.04])  # NaN: not in the family
    np.testing.assert_allclose(holm([0.02]), [0.02])


# ---- coverage by simulation -------------------------------------------------------------------
#
# Per-image score of configuration c, seed s, image i: mu_c + u_cs + v_i + w_ci + e_csi (seed,
# shared image, image x configuration, residual). A run's AP at threshold t is OFFSET_t + SCALE_t x
# (its mean score over the N images); its bootstrap, the same on the shared resamples of
# image_weights(N, B). The true population difference of AP is (mu_B - mu_A) x mean(SCALE).

N_IMG, N_BOOT, N_EXP = 200, 200, 1000
SD_U, SD_V, SD_E, SD_W = 1.0, 10.0, 5.0, 4.0  # seed 1 AP point, image x configuration 4 per image
OFFSET, SCALE = np.linspace(60.0, 15.0, T), np.linspace(1.0, 0.6, T)
IDS = list(range(N_IMG))


def _samples(full, boot):
    return APSamples(IDS, OFFSET + SCALE * full, OFFSET + SCALE * boot[:, None], N_BOOT, 0)


def simulate(n_a, n_b, sd_w, effect, paired=True, old=False, seed=0):
    """Coverage of the 95 % intervals of B - A over N_EXP experiments, and the variance checks
    (computed once per scenario: several tests read the same one)."""
    return _simulate(n_a, n_b, sd_w, effect, paired, old, seed)


@lru_cache(maxsize=None)
def _simulate(n_a, n_b, sd_w, effect, paired, old, seed):
    rng = np.random.default_rng(seed)
    m = max(n_a, n_b)
    x = (rng.normal(0, SD_U, (N_EXP, 2, m, 1)) + rng.normal(0, SD_V, (N_EXP, 1, 1, N_IMG))
         + sd_w * rng.normal(size=(N_EXP, 2, 1, N_IMG)) + rng.normal(0, SD_E, (N_EXP, 2, m, N_IMG)))
    x[:, 1] += effect
    full, boot = x.mean(-1), x @ image_weights(N_IMG, N_BOOT, 0).T / N_IMG  # [E, 2, m], [E, 2, m, B]
    truth = effect * SCALE.mean()
    seeds_b = range(n_b) if paired else range(100, 100 + n_b)
    new, plain, old_hits, se2 = [], [], [], []
    for e in range(N_EXP):
        a = {s: _samples(full[e, 0, s], boot[e, 0, s]) for s in range(n_a)}
        b = {s: _samples(full[e, 1, j], boot[e, 1, j]) for j, s in enumerate(seeds_b)}
        d = seed_delta(a, b)
        est, low, high = d.metrics["AP"]
        new.append(low < truth < high)
        se2.append(d.se["AP"] ** 2)
        half = stdtrit(d.df["AP"], 0.975) * np.sqrt(d.seed_var["AP"])  # t interval over seeds alone
        plain.append(est - half < truth < est + half)
        if old:
            _, lo, hi = old_stats.bootstrap_contrast([a, b], [-1, 1], n_boot=N_BOOT, seed=0).metrics["AP"]
            old_hits.append(lo < truth < hi)
    true_var = SCALE.mean() ** 2 * ((SD_U**2 + SD_E**2 / N_IMG) * (1 / n_a + 1 / n_b) + 2 * sd_w**2 / N_IMG)
    return {"new": np.mean(new), "plain": np.mean(plain), "old": np.mean(old_hits) if old else np.nan,
            "se2_ratio": np.mean(se2) / true_var}


@pytest.mark.parametrize("n", [3, 5, 10])
@pytest.mark.parametrize("sd_w, effect", [(0.0, 0.0), (SD_W, 1.5)])
def test_coverage_of_the_seed_interval(n, sd_w, effect):
    r = simulate(n, n, sd_w, effect, old=n == 3, seed=n)
    assert r["new"] >= 0.93, r
    assert 0.9 < r["se2_ratio"] < 1.1, r  # SE^2 estimates the variance of the estimate: no double counting


def test_old_bootstrap_under_covers_with_three_seeds():
    for sd_w, effect in [(0.0, 0.0), (SD_W, 1.5)]:
        r = simulate(3, 3, sd_w, effect, old=True, seed=3)
        assert r["old"] < 0.93, r


def test_t_interval_over_seeds_alone_under_covers_with_image_by_configuration_noise():
    # why c exists: with 10 seeds the plain t interval misses C (expected coverage P(|T_9| < 1.73)
    # = 0.88 here); with 3 or 5 seeds its wide t quantile hides most of the loss (0.95, 0.92)
    assert simulate(10, 10, SD_W, 1.5, seed=10)["plain"] < 0.93
    assert simulate(10, 10, 0.0, 0.0, seed=10)["plain"] >= 0.93  # and it is fine without w


def test_coverage_unpaired():
    r = simulate(3, 5, SD_W, 1.5, paired=False, seed=35)
    assert r["new"] >= 0.93, r
    assert 0.9 < r["se2_ratio"] < 1.1, r
