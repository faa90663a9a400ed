"""pcnet.experiments.stats against statsmodels / scipy reference values, published examples and hand counts."""
import math
from statistics import NormalDist

import numpy as np
import pytest
import torch

from pcnet.experiments import metrics
from pcnet.experiments import stats as S
from pcnet.experiments import verdicts as V

statsmodels = pytest.importorskip("statsmodels")
from scipy.stats import binom, bootstrap as scipy_bootstrap  # noqa: E402
from statsmodels.stats.contingency_tables import mcnemar  # noqa: E402
from statsmodels.stats.multitest import multipletests  # noqa: E402
from statsmodels.stats.power import NormalIndPower, TTestPower  # noqa: E402


def _pairs(n11, n10, n01, n00):
    """Per-image outcomes (a, b) realising a paired table, shuffled."""
    a = torch.tensor([1] * n11 + [1] * n10 + [0] * n01 + [0] * n00, dtype=torch.bool)
    b = torch.tensor([1] * n11 + [0] * n10 + [1] * n01 + [0] * n00, dtype=torch.bool)
    perm = torch.randperm(len(a), generator=torch.Generator().manual_seed(0))
    return a[perm], b[perm]


# ----------------------------------------------------------------------------- McNemar, Newcombe
@pytest.mark.parametrize("table", [(1, 1, 7, 12), (59, 6, 16, 80), (40, 0, 4, 206), (10, 3, 3, 5), (5, 0, 0, 5),
                                   (900, 120, 85, 8895)])
def test_mcnemar_exact_matches_statsmodels(table):
    n11, n10, n01, n00 = table
    assert S.paired_counts(*_pairs(*table)) == table
    ref = mcnemar(np.array([[n11, n10], [n01, n00]]), exact=True).pvalue
    assert S.mcnemar_exact(n10, n01) == pytest.approx(ref, rel=1e-12, abs=1e-15)


def test_mcnemar_mid_p_by_hand():
    # 1 vs 7 discordant (Bentur et al. 2009, in Fagerland et al. 2013): exact 2 (1 + 8) / 2^8, mid-p minus 8 / 2^8
    assert S.mcnemar_exact(1, 7) == pytest.approx(18 / 256, rel=1e-12)
    assert S.mcnemar_exact(7, 1, mid_p=True) == pytest.approx(10 / 256, rel=1e-12)
    assert S.mcnemar_exact(0, 4) == pytest.approx(0.125)  # issue 12's example: 0 vs 4 discordant images
    assert S.mcnemar_exact(0, 0) == 1.0 and S.mcnemar_exact(3, 3, mid_p=True) == pytest.approx(1.0)


def test_newcombe_published_example():
    # Cavo et al. (2012) paired table [[59, 6], [16, 80]]: Newcombe square-and-add (method 10) interval
    # -0.0621 (95% CI -0.1186 to -0.0046), Fagerland, Lydersen & Laake (2017), "Statistical Analysis of
    # Contingency Tables", ch. 8; the same values in the test suite of their R package contingencytables.
    est, lo, hi = S.newcombe_interval(59, 6, 16, 80)
    assert (round(float(est), 4), round(float(lo), 4), round(float(hi), 4)) == (-0.0621, -0.1186, -0.0046)
    # swapping the conditions mirrors the interval; wider at 99%
    est2, lo2, hi2 = S.newcombe_interval(59, 16, 6, 80)
    assert float(lo2) == pytest.approx(-float(hi)) and float(hi2) == pytest.approx(-float(lo))
    _, lo99, hi99 = S.newcombe_interval(59, 6, 16, 80, confidence=0.99)
    assert lo99 < lo and hi99 > hi


def test_newcombe_reduces_to_wilson_without_discordance_spread():
    # all images agree: difference 0, interval contains 0 and lies inside [-1, 1]
    est, lo, hi = S.newcombe_interval(30, 0, 0, 20)
    assert float(est) == 0 and -1 < float(lo) < 0 < float(hi) < 1


def test_paired_proportions_verdict():
    a, b = _pairs(900, 120, 85, 8895)
    v = V.paired_proportions(a, b, contrast="dynamics - t=0")
    ref = mcnemar(np.array([[900, 120], [85, 8895]]), exact=True).pvalue
    assert v.n == 10000 and v.estimate == pytest.approx(100 * 35 / 10000) and v.p == pytest.approx(ref)
    assert v.mde == pytest.approx(100 * S.mde_paired(10000, discordance=205 / 10000))
    assert v.effect == "gain" and v.phrase == "a gain"
    assert V.paired_proportions(b, a, contrast="reverse").effect == "cost"
    null = V.paired_proportions(*_pairs(40, 0, 4, 206), contrast="small")
    assert null.effect == "none" and null.phrase == f"no detectable effect: any gain is below {null.high:.2f} points"
    assert "n = 250" in str(null) and "exact McNemar p = 0.125" in str(null)


def test_paired_proportions_mde_without_discordant_images():
    # identical correctness: the observed discordance is 0, the MDE uses its 95% upper bound 1 - 0.05^(1/n)
    same = V.paired_proportions(*_pairs(150, 0, 0, 50), contrast="identical")
    assert same.mde == pytest.approx(100 * S.mde_paired(200, discordance=1 - 0.05 ** (1 / 200))) and same.mde > 1
    assert same.effect == "none" and same.estimate == 0


def test_null_verdict_whose_interval_excludes_any_gain_says_so():
    # 0 vs 6 discordant of 20: the Newcombe interval lies below 0, exact McNemar p = 0.031; Holm over 3 gives > 0.05
    cost = V.paired_proportions(*_pairs(10, 0, 6, 4), contrast="cost-side")
    assert cost.high < 0 and cost.effect == "cost"
    family = V.holm_family([cost, V.paired_proportions(*_pairs(10, 1, 1, 8), contrast="b"),
                            V.paired_proportions(*_pairs(10, 2, 1, 7), contrast="c")])
    assert family[0].p_holm > 0.05 and family[0].effect == "none"
    assert family[0].phrase == ("no detectable effect after Holm correction, though the uncorrected interval "
                                "excludes any gain")


# ----------------------------------------------------------------------------- Holm
def test_holm_matches_statsmodels():
    rng = np.random.default_rng(0)
    for p in (rng.uniform(0, 0.1, 10), np.array([0.01, 0.04, 0.03, 0.005, 0.5]), np.array([0.2]),
              np.array([0.01, 0.01, 0.02, 0.9])):
        reject, adjusted, _, _ = multipletests(p, alpha=0.05, method="holm")
        mine, decided = S.holm(p.tolist(), alpha=0.05)
        np.testing.assert_allclose(mine.numpy(), adjusted, rtol=1e-12)
        assert decided.tolist() == reject.tolist()


def test_holm_family_decides_verdicts():
    fam = [V.Verdict(f"c{i}", 100, 1.0, 0.1, 2.0, 1.5, "t", p) for i, p in enumerate([0.04, 0.01, 0.03])]
    assert [v.effect for v in fam] == ["gain"] * 3  # uncorrected
    out = V.holm_family(fam)
    assert [v.p_holm for v in out] == pytest.approx([0.06, 0.03, 0.06])
    assert [v.effect for v in out] == ["none", "gain", "none"]
    # c0's uncorrected interval [0.1, 2.0] lies on the gain side: not a plain "no detectable effect"
    assert out[0].phrase == ("no detectable effect after Holm correction, though the uncorrected interval excludes 0 "
                             "on the gain side (any gain is below 2.00 points)")
    with pytest.raises(ValueError, match="empty"):
        V.holm_family([])


# ----------------------------------------------------------------------------- bootstrap
def test_bca_matches_scipy_on_a_skewed_statistic():
    # variance of 60 exponential draws: BCa differs from the percentile interval by ~0.7 at the upper end
    x = np.random.default_rng(0).exponential(size=60)
    ref = [scipy_bootstrap((x,), np.var, method="BCa", n_resamples=50000, random_state=s).confidence_interval
           for s in range(2)]
    r = S.bootstrap(lambda v: v.var(-1, unbiased=False), torch.tensor(x), n_boot=50000, seed=0)
    assert float(r.estimate) == pytest.approx(np.var(x))
    assert float(r.low) == pytest.approx(np.mean([c.low for c in ref]), abs=0.03)
    assert float(r.high) == pytest.approx(np.mean([c.high for c in ref]), abs=0.12)


def test_paired_bca_ratio_matches_scipy_and_is_deterministic():
    rng = np.random.default_rng(1)
    x = rng.exponential(size=200)
    y = x + rng.normal(size=200) * 0.5 + 0.2
    ratio = lambda a, b, axis=-1: a.mean(axis) / b.mean(axis)  # noqa: E731
    ref = scipy_bootstrap((x, y), ratio, paired=True, method="BCa", n_resamples=50000, random_state=0)
    r = S.bootstrap(ratio, torch.tensor(x), torch.tensor(y), n_boot=50000, seed=0)
    assert float(r.low) == pytest.approx(ref.confidence_interval.low, abs=0.004)
    assert float(r.high) == pytest.approx(ref.confidence_interval.high, abs=0.004)
    again = S.bootstrap(ratio, torch.tensor(x), torch.tensor(y), n_boot=50000, seed=0)
    assert torch.equal(again.low, r.low) and torch.equal(again.high, r.high)


def test_bootstrap_mce_ratio_grouped_jackknife_and_p():
    g = torch.Generator().manual_seed(0)
    correct = torch.rand(3, 2, 2, 400, generator=g) < torch.tensor([0.6, 0.7]).view(1, 1, 2, 1)  # (C, S, T+1, n)
    # Hendrycks & Dietterich's mCE relative to the own t = 0: the mean over corruptions of CE_c(T) / CE_c(0)
    mce_ratio = lambda c: metrics.normalised_ce(c.float().mean(-1))[..., -1].mean(-1)  # noqa: E731
    full = S.bootstrap(mce_ratio, correct, n_boot=2000, null=1.0, groups=400)  # ordinary jackknife
    grouped = S.bootstrap(mce_ratio, correct, n_boot=2000, null=1.0, groups=50)
    assert float(full.estimate) == pytest.approx(float(metrics.normalised_ce(correct.float().mean(-1))[:, -1].mean()))
    assert float(full.high) < 1 and float(full.p) < 0.01  # errors fall from 0.4 to 0.3: a clear reduction
    assert float(grouped.low) == pytest.approx(float(full.low), abs=0.01)
    v = V.bootstrap_verdict(mce_ratio, correct, contrast="mCE ratio", null=1.0, higher_is_better=False)
    z = NormalDist().inv_cdf(0.975) + NormalDist().inv_cdf(0.8)  # two-sided 5 %, 80 % power
    assert v.effect == "gain" and v.n == 400 and v.mde == pytest.approx(z * float(full.se), rel=1e-9)
    assert str(v).startswith(f"mCE ratio: {float(full.estimate):.3f} [{float(full.low):.3f}, {float(full.high):.3f}]")


def test_bca_counts_ties_half():
    # 10 of 20 images correct: the bootstrap of the mean is symmetric about 0.5 with many exact ties at 0.5;
    # counting ties half keeps z0 ~ 0 and the interval symmetric (strict '<' would shift it down by ~0.05)
    x = torch.tensor([1.0, 0.0] * 10)
    r = S.bootstrap(lambda v: v.mean(-1), x, n_boot=20000, seed=0)
    assert float(r.low) + float(r.high) == pytest.approx(1.0, abs=0.02)


def test_bca_end_with_large_acceleration_goes_to_the_extreme():
    # 1 - a (z0 + z) <= 0: the BCa formula would wrap around to a low quantile; the end goes to the maximum
    theta_b, zero = torch.arange(100.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
    assert float(S._bca_end(theta_b, zero, torch.tensor(0.9, dtype=torch.float64), 1.96)) == 99.0
    assert float(S._bca_end(theta_b, zero, torch.tensor(-0.9, dtype=torch.float64), -1.96)) == 0.0
    # a null far below every resample is rejected outright rather than wrapped to a moderate p
    assert float(S._bca_p(theta_b, zero, torch.tensor(0.9, dtype=torch.float64), -5.0)) == 0.0


def test_bootstrap_p_inverts_the_interval():
    x = torch.tensor(np.random.default_rng(2).normal(0.3, 1.0, size=80))
    r = S.bootstrap(lambda v: v.mean(-1), x, n_boot=4000, seed=3)
    at_low = S.bootstrap(lambda v: v.mean(-1), x, n_boot=4000, seed=3, null=float(r.low))
    assert float(at_low.p) == pytest.approx(0.05, abs=0.003)


def test_paired_bootstrap_difference():
    a = torch.tensor([1, 1, 1, 1, 0, 1, 1, 1] * 5, dtype=torch.bool)
    b = torch.tensor([1, 0, 1, 1, 0, 1, 1, 0] * 5, dtype=torch.bool)
    est, lo, hi = S.paired_bootstrap(a, b)
    assert float(est) == pytest.approx(0.25) and 0 < float(lo) < 0.25 < float(hi) < 0.5
    same = S.paired_bootstrap(a, a)
    assert float(same.estimate) == float(same.low) == float(same.high) == 0.0
    one_flip = torch.zeros(40, dtype=torch.bool)
    one_flip[0] = True  # one image of 40 differs: the image interval must include 0
    _, lo, hi = S.paired_bootstrap(one_flip, torch.zeros(40, dtype=torch.bool))
    assert float(lo) <= 0 < float(hi)
    rows = S.paired_bootstrap(torch.stack([a, b]), torch.stack([b, b]))  # leading dims kept
    assert rows.estimate.tolist() == pytest.approx([0.25, 0.0])


# ----------------------------------------------------------------------------- power
@pytest.mark.parametrize("n", [5, 30, 250, 10000])
def test_mde_paired_mean_matches_statsmodels_ttest_power(n):
    ref = TTestPower().solve_power(nobs=n, alpha=0.05, power=0.8, alternative="two-sided")
    assert S.mde_paired(n, sd=2.0) == pytest.approx(2.0 * ref, rel=1e-5)


@pytest.mark.parametrize("effect", [0.1, 0.3, 1.0])
def test_n_for_mde_mean_matches_statsmodels(effect):
    ref = TTestPower().solve_power(effect_size=effect, alpha=0.05, power=0.8)
    assert S.n_for_mde(effect * 3.0, sd=3.0) == math.ceil(ref)


def test_mde_paired_proportions():
    # large n, small delta: Connor's formula tends to the normal one with sd sqrt(psi)
    ref = NormalIndPower().solve_power(nobs1=10000, ratio=0, alpha=0.05, power=0.8) * math.sqrt(0.1)
    assert S.mde_paired(10000, discordance=0.1) == pytest.approx(ref, rel=1e-3)
    delta = S.mde_paired(2000, discordance=0.1)
    assert S.n_for_mde(delta, discordance=0.1) == 2000 and S.n_for_mde(delta * 1.01, discordance=0.1) < 2000
    # simulated power of the exact McNemar test at the MDE is 80% (the exact test is slightly conservative)
    counts = np.random.default_rng(0).multinomial(2000, [(0.1 + delta) / 2, (0.1 - delta) / 2, 0.9], size=20000)
    k, d = counts[:, :2].min(1), counts[:, :2].sum(1)
    assert np.mean(np.minimum(1, 2 * binom.cdf(k, d, 0.5)) <= 0.05) == pytest.approx(0.8, abs=0.04)


# ----------------------------------------------------------------------------- replicates, formatting
def test_mean_interval_by_hand():
    m, lo, hi = S.mean_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, t(0.975, df 2) = 4.302652729749464
    half = 4.302652729749464 / math.sqrt(3)
    assert float(m) == 2.0 and float(lo) == pytest.approx(2 - half) and float(hi) == pytest.approx(2 + half)
    v = torch.tensor([[0.0, 1.0], [2.0, 1.0], [4.0, 1.0], [6.0, 1.0]])  # per column, 90%: t(0.95, 3)
    m, lo, hi = S.mean_interval(v, confidence=0.90)
    torch.testing.assert_close(hi - m, torch.tensor([2.353363434801823 * math.sqrt(20 / 3) / 2, 0.0],
                                                    dtype=torch.float64))
    m, lo, hi = S.mean_interval([0.7])  # n = 1: NaN ends
    assert float(m) == pytest.approx(0.7) and math.isnan(lo) and math.isnan(hi)
    with pytest.raises(ValueError, match="no values"):
        S.mean_interval(torch.zeros(0, 3))


def test_format_interval():
    assert S.format_interval((0.0082, 0.0014, 0.015), scale=100) == "+0.82 [+0.14, +1.50]"
    assert S.format_interval((0.985, 0.944, 1.018), digits=3, signed=False) == "0.985 [0.944, 1.018]"
    assert S.format_interval((1, -1, 2), unit="points") == "+1.00 [-1.00, +2.00] points"


# ----------------------------------------------------------------------------- bad input
def test_bad_input_is_named():
    ok = torch.tensor([True, False, True])
    with pytest.raises(ValueError, match="unpaired"):
        S.paired_counts(ok, ok[:2])
    with pytest.raises(ValueError, match="empty"):
        S.paired_counts([], [])
    with pytest.raises(ValueError, match="binary"):
        S.paired_counts(torch.tensor([0.0, 0.5, 1.0]), ok)
    with pytest.raises(ValueError, match="discordance.*probability"):
        S.mde_paired(100, discordance=1.5)
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        S.mde_paired(0, discordance=0.1)
    with pytest.raises(ValueError, match="exactly one"):
        S.mde_paired(100)
    with pytest.raises(ValueError, match=r"p-values must lie in \[0, 1\]"):
        S.holm([0.1, 1.2])
    with pytest.raises(ValueError, match="confidence"):
        S.newcombe_interval(1, 2, 3, 4, confidence=95)
    with pytest.raises(ValueError, match="n .the number of images"):
        S.newcombe_interval(0, 0, 0, 0)
    with pytest.raises(ValueError, match="unpaired samples"):
        S.bootstrap(lambda a, b: a.mean(-1), torch.rand(5), torch.rand(6))
    with pytest.raises(ValueError, match="one value per resample"):
        S.bootstrap(lambda a: a.mean(), torch.rand(5))
    with pytest.raises(ValueError, match="NaN"):
        S.bootstrap(lambda a: a.mean(-1) / 0 * 0, torch.rand(5))
    with pytest.raises(ValueError, match="exceeds the discordance"):
        S.n_for_mde(0.2, discordance=0.1)
