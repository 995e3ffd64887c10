"""The experiment statistics on hand-computed fixtures.

Quantiles are checked against printed t tables; intervals and differences are worked out by hand
in the comments, so a wrong formula (sd with n instead of n - 1, a one-sided quantile, z instead
of t, unpaired differences) fails here.
"""

from __future__ import annotations

import math

import pytest

from megatron_pause.experiment import stats


@pytest.mark.parametrize(
    "p,df,expected",
    [
        (0.975, 1, 12.7062047),
        (0.975, 2, 4.3026527),
        (0.975, 4, 2.7764451),
        (0.975, 7, 2.3646243),
        (0.975, 30, 2.0422725),
        (0.95, 10, 1.8124611),
        (0.995, 3, 5.8409093),
        (0.5, 5, 0.0),
        (0.025, 7, -2.3646243),
    ],
)
def test_t_quantile_matches_tables(p, df, expected):
    assert stats.t_quantile(p, df) == pytest.approx(expected, abs=1e-6)


def test_t_cdf_known_values():
    # df = 1 is the Cauchy distribution: P(T <= 1) = 1/2 + atan(1)/pi = 0.75.
    assert stats.t_cdf(1.0, 1) == pytest.approx(0.75, abs=1e-12)
    # df = 2 has a closed form: 1/2 + t / (2 sqrt(2 + t^2)); t = 2 -> 1/2 + 2/(2 sqrt 6).
    assert stats.t_cdf(2.0, 2) == pytest.approx(0.5 + 1 / math.sqrt(6), abs=1e-12)
    assert stats.t_cdf(-2.0, 2) == pytest.approx(0.5 - 1 / math.sqrt(6), abs=1e-12)
    # Large df approaches the normal: Phi(1.96) = 0.9750021.
    assert stats.t_cdf(1.96, 1e7) == pytest.approx(0.9750021, abs=1e-6)


def test_mean_interval_by_hand():
    # values 1, 2, 3, 6: mean 3; squared deviations 4 + 1 + 0 + 9 = 14; sd = sqrt(14/3) = 2.1602469;
    # se = sd / 2 = 1.0801234; t(0.975, 3) = 3.1824463; half width 3.4374349.
    iv = stats.mean_interval([1, 2, 3, 6])
    assert iv.n == 4 and iv.mean == 3.0
    assert iv.sd == pytest.approx(2.1602469, abs=1e-7)
    assert iv.lo == pytest.approx(3 - 3.4374349, abs=1e-6)
    assert iv.hi == pytest.approx(3 + 3.4374349, abs=1e-6)


def test_mean_interval_of_the_probe_matches_its_note():
    # The pause-science note: differences +1.55, +2.80, +2.60 -> mean +2.32, 95% CI [+0.65, +3.98].
    iv = stats.mean_interval([1.55, 2.80, 2.60])
    assert (round(iv.mean, 2), round(iv.lo, 2), round(iv.hi, 2)) == (2.32, 0.65, 3.98)


def test_one_value_has_no_interval_and_none_is_an_error():
    iv = stats.mean_interval([0.7])
    assert iv.mean == 0.7 and iv.lo is None and iv.hi is None and iv.sd is None
    with pytest.raises(ValueError, match="at least one"):
        stats.mean_interval([])
    with pytest.raises(ValueError, match="non-finite"):
        stats.mean_interval([1.0, float("nan")])


def test_paired_differences_pair_by_seed_not_by_position():
    treatment = {0: 70.0, 1: 68.0, 2: 66.0, 5: 99.0}
    control = {2: 64.0, 0: 69.0, 1: 65.0, 7: 10.0}
    assert stats.paired_differences(treatment, control) == {0: 1.0, 1: 3.0, 2: 2.0}
    # Paired: diffs 1, 3, 2 -> mean 2, sd 1, half width t(0.975, 2)/sqrt(3) = 2.4841377.
    iv = stats.mean_interval(list(stats.paired_differences(treatment, control).values()))
    assert iv.lo == pytest.approx(2 - 2.4841377, abs=1e-6) and iv.hi == pytest.approx(2 + 2.4841377, abs=1e-6)


def test_sign_count():
    sc = stats.sign_count([0.5, -1.0, 0.0, 2.0, 3.0])
    assert (sc.positive, sc.negative, sc.zero) == (3, 1, 1)
    assert str(sc) == "3/5 seeds positive, 1 tied"
    assert str(stats.sign_count([1.0, 2.0])) == "2/2 seeds positive"


def test_verdicts():
    assert stats.verdict(stats.Interval(2.0, 0.5, 3.5, 8, 1.0)) == "gain"
    assert stats.verdict(stats.Interval(-2.0, -3.5, -0.5, 8, 1.0)) == "loss"
    assert stats.verdict(stats.Interval(0.3, -1.2, 1.8, 8, 1.0)) == "null, bounded by [-1.20, +1.80]"
    assert stats.verdict(stats.mean_interval([1.0])).startswith("undetermined")
