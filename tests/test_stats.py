"""The book's verdict rule: Student's t in closed form, paired intervals, Holm's correction."""

import math
import random

import pytest

from ismod.stats import holm, paired_difference, t_cdf, t_quantile

scipy_stats = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 8, 13, 30])
def test_t_cdf_and_quantile_match_scipy(df):
    for t in (-7.0, -2.5, -0.3, 0.0, 0.4, 1.9, 12.0):
        assert t_cdf(t, df) == pytest.approx(scipy_stats.t.cdf(t, df), abs=1e-10)
    for p in (0.01, 0.5, 0.9, 0.975):
        assert t_quantile(p, df) == pytest.approx(scipy_stats.t.ppf(p, df), abs=1e-8)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="df"):
        t_cdf(1.0, 0)
    with pytest.raises(ValueError, match="pair up"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="at least 2 seeds"):
        paired_difference([1.0], [0.0])


def test_paired_difference_matches_scipy_ttest_rel():
    a, b = [0.91, 0.88, 0.90, 0.93], [0.89, 0.87, 0.90, 0.90]
    d = paired_difference(a, b)
    ref = scipy_stats.ttest_rel(a, b)
    assert d.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert d.mean == pytest.approx(0.015)
    half = scipy_stats.t.ppf(0.975, 3) * scipy_stats.sem([x - y for x, y in zip(a, b)])
    assert (d.low, d.high) == pytest.approx((0.015 - half, 0.015 + half))


def test_pairing_removes_the_shared_seed_effect():
    # a large per-seed effect shared by both arms: paired, the constant difference is certain
    seeds = [0.0, 0.05, -0.04, 0.02]
    d = paired_difference([0.9 + s + 0.01 for s in seeds], [0.9 + s for s in seeds])
    assert d.p_value == 0.0 and d.low == pytest.approx(0.01) and d.high == pytest.approx(0.01)


def test_interval_coverage_is_nominal():
    # 2000 experiments of 5 seeds with true difference 0.3: the 95% interval covers it about 95% of the
    # time; the tolerance is 4 binomial standard errors (sqrt(0.95 · 0.05 / 2000) ≈ 0.0049)
    rng = random.Random(0)
    covered, rejected = 0, 0
    trials = 2000
    for _ in range(trials):
        a = [rng.gauss(0.3, 1.0) for _ in range(5)]
        d = paired_difference(a, [0.0] * 5)
        covered += d.low <= 0.3 <= d.high
        null = paired_difference([x - 0.3 for x in a], [0.0] * 5)
        rejected += null.p_value < 0.05
    assert abs(covered / trials - 0.95) < 4 * math.sqrt(0.95 * 0.05 / trials)
    assert abs(rejected / trials - 0.05) < 4 * math.sqrt(0.95 * 0.05 / trials)


def test_holm_step_down():
    # m = 4: sorted 0.01, 0.02, 0.03, 0.2 → 0.04, 0.06, 0.06 (monotone), 0.2; returned in input order
    assert holm([0.03, 0.01, 0.2, 0.02]) == pytest.approx([0.06, 0.04, 0.2, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


def test_tost_matches_two_scipy_one_sided_tests():
    from scipy import stats as sps

    from ismod.stats import tost

    rng = __import__("random").Random(3)
    for _ in range(20):
        n = rng.randint(3, 8)
        a = [rng.gauss(0.7, 1.0) for _ in range(n)]
        b = [x - rng.gauss(0.1, 0.5) for x in a]
        m = rng.uniform(0.2, 1.5)
        d = [x - y for x, y in zip(a, b)]
        lower = sps.ttest_1samp([x + m for x in d], 0.0, alternative="greater").pvalue
        upper = sps.ttest_1samp([x - m for x in d], 0.0, alternative="less").pvalue
        assert tost(a, b, m) == pytest.approx(max(lower, upper), abs=1e-9)


def test_a_wide_minus_forty_point_mean_is_inconclusive_never_equivalent():
    from ismod.stats import paired_difference, tost, verdict

    a = [-10.0, 67.0, 1.0, 68.0]  # per-seed differences -80, -5, -70, -5: some seeds collapsed
    b = [70.0, 72.0, 71.0, 73.0]
    d = paired_difference(a, b)
    assert d.mean == pytest.approx(-40.0) and d.p_value > 0.05  # not detected: the interval is wide
    p_equivalent = tost(a, b, 1.0)
    assert p_equivalent > 0.5
    assert verdict(d.p_value, d.mean, p_equivalent, 1.0) == "inconclusive"


def test_verdict_words():
    from ismod.stats import paired_difference, tost, verdict

    base = [70.0, 71.0, 72.0, 69.0, 70.5]
    win = [x + 3.0 + 0.1 * i for i, x in enumerate(base)]
    same = [x + 0.05 * (-1) ** i for i, x in enumerate(base)]
    d = paired_difference(win, base)
    assert verdict(d.p_value, d.mean, tost(win, base, 1.0), 1.0) == "higher"
    d = paired_difference(base, win)
    assert verdict(d.p_value, d.mean, tost(base, win, 1.0), 1.0) == "lower"
    d = paired_difference(same, base)
    assert verdict(d.p_value, d.mean, tost(same, base, 1.0), 1.0) == "equivalent within ±1"


def test_detectable_difference_has_the_stated_power():
    """Simulated paired differences of the detectable size are detected in ≈ 80% of runs."""
    import random

    from ismod.stats import detectable_difference, paired_difference

    rng, sd, n, reps = random.Random(0), 2.0, 5, 4000
    delta = detectable_difference(sd, n, comparisons=3)
    hits = sum(
        paired_difference([rng.gauss(delta, sd) for _ in range(n)], [0.0] * n).p_value < 0.05 / 3
        for _ in range(reps)
    )
    rate = hits / reps
    # the normal approximation inside the formula is slightly conservative for small n: power ≥ 0.8
    assert 0.8 - 4 * math.sqrt(0.16 / reps) < rate < 0.9
    assert detectable_difference(sd, 10) < detectable_difference(sd, 5)
