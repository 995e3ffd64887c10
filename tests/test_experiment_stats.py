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


def _rows(variant: str, m: int, values: dict[int, float], flops: float, task: str = "t") -> list[dict]:
    return [
        {"variant": variant, "seed": s, "task": task, "finetune_pauses": m, "inference_pauses": m,
         "metrics": {"em": v}, "checkpoint": "c", "train_flops": flops, "pretrain_flops": flops / 2,
         "finetune_flops": flops / 2}
        for s, v in values.items()
    ]  # fmt: skip


def test_report_on_a_hand_computed_fixture(tmp_path):
    from megatron_pause.experiment.report import render, write_report
    from megatron_pause.experiment.spec import PrimarySpec

    # Fractions are reported as percentages. Baseline 60, 62, 64 -> mean 62, sd 2, half width
    # t(0.975, 2) * 2 / sqrt(3) = 4.97. Pause arm 61, 65, 66 -> paired differences 1, 3, 2 ->
    # mean 2, sd 1, half width 2.48: [-0.48, +4.48], a null; 3/3 seeds positive.
    rows = _rows("StdPT_StdFT", 0, {0: 0.60, 1: 0.62, 2: 0.64}, 100.0)
    rows += _rows("PausePT_PauseFT", 16, {2: 0.66, 0: 0.61, 1: 0.65}, 180.0)
    # Seed 3 has no baseline: it counts for its own mean but not for the paired difference.
    rows += _rows("StdPT_PauseFT", 16, {0: 0.62, 1: 0.65, 2: 0.67, 3: 0.99}, 150.0)
    primary = PrimarySpec(task="t", variant="PausePT_PauseFT", finetune_pauses=16)
    text = render(rows, primary, "em", "fixture")
    assert text.splitlines()[2] == (
        "**Verdict: null, bounded by [-0.48, +4.48].** PausePT_PauseFT (M_ft=16, M_inf=16) − StdPT_StdFT on t: "
        "+2.00 em points, 95% CI [-0.48, +4.48], 3/3 seeds positive (paired by seed, n=3)."
    )
    assert "| StdPT_StdFT | 0 | 0 | 3 | 62.00 | [57.03, 66.97] |" in text
    # StdPT_PauseFT: diffs 2, 3, 3 -> mean 2.67, sd 0.577, half width 1.43: [+1.23, +4.10], a gain.
    assert (
        "| StdPT_PauseFT (M_ft=16, M_inf=16) | 3 | +2.67 | [+1.23, +4.10] | 3/3 seeds positive | gain |"
        in text
    )
    assert "| t | PausePT_PauseFT | 16 | 90 | 90 | 180 | 1.80 |" in text
    path = write_report(rows, primary, "em", "fixture", str(tmp_path))
    assert open(path).read().startswith("# fixture")
    assert (tmp_path / "plot_variants.png").stat().st_size > 1000
