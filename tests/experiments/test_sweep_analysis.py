"""Sweep statistics (robalign.experiments.analysis) against numbers worked out by hand.

Tables are built directly in the shape of ``Store.frame()``: bookkeeping columns, parameters
by dotted key, metrics with a slash and their ``.low`` / ``.high`` CI columns.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from robalign.errors import UserError
from robalign.experiments import analysis

Y = "clear_bias/safety"


def frame(rows: list[dict]) -> pd.DataFrame:
    """Cells from (method, noise, steps, seed, y) dicts; bookkeeping columns filled in."""
    out = []
    for i, r in enumerate(rows):
        out.append({"sweep": "s", "cell": r.get("cell", f"c{i}"), "run_dir": f"runs/c{i}", "finished": "t",
                    "method": r.get("method", "dpo"), "data.noise_rate": r.get("noise", 0.0),
                    "pretrain.steps": r.get("steps", 300), "seed": r.get("seed", 0), Y: r["y"]}
                   | {k: v for k, v in r.items() if "/" in k})
    return pd.DataFrame(out)


def xy(xs, ys, method="dpo") -> pd.DataFrame:
    return frame([{"method": method, "noise": x, "seed": i, "y": y} for i, (x, y) in enumerate(zip(xs, ys))])


def test_columns_split_parameters_from_metrics_and_their_ci_columns():
    df = frame([{"y": 0.5, f"{Y}.low": 0.4, f"{Y}.high": 0.6, f"{Y}.n": 10, "harmful/compliance": 0.1}])
    assert analysis.param_columns(df) == ["method", "data.noise_rate", "pretrain.steps", "seed"]
    assert analysis.metric_columns(df) == [Y, "harmful/compliance"]


def test_a_missing_column_names_the_option_and_lists_what_there_is():
    with pytest.raises(UserError, match=r"x 'data.noise' is not a column.*parameters: method, data.noise_rate.*"
                                        r"metrics: clear_bias/safety"):
        analysis.correlations(xy([0, 1, 2], [1, 2, 3]), "data.noise", Y)


def test_monotone_but_curved_relation_gives_rank_correlations_of_one():
    """y = x^2 on x = 1..5: Spearman = Kendall = 1 (and so is every bootstrap resample that is
    not constant), Pearson = S_xy / sqrt(S_xx S_yy) = 60 / sqrt(10 * 374) = 0.98109."""
    (row,) = analysis.correlations(xy([1, 2, 3, 4, 5], [1, 4, 9, 16, 25]), "data.noise_rate", Y, n_boot=500)
    assert row["n"] == 5 and row["group"] == "dpo"
    assert row["spearman"]["value"] == pytest.approx(1) and row["kendall"]["value"] == pytest.approx(1)
    assert (row["spearman"]["low"], row["spearman"]["high"]) == pytest.approx((1, 1))
    assert row["pearson"]["value"] == pytest.approx(60 / math.sqrt(3740), abs=1e-9)
    assert row["pearson"]["low"] <= row["pearson"]["value"] <= row["pearson"]["high"] <= 1


def test_one_swapped_pair():
    """x = 1..4, y = 1,3,2,4: one discordant pair of six -> tau = (5 - 1) / 6; rank differences
    (0, -1, 1, 0) -> rho = 1 - 6 * 2 / (4 * 15) = 0.8."""
    (row,) = analysis.correlations(xy([1, 2, 3, 4], [1, 3, 2, 4]), "data.noise_rate", Y, n_boot=200)
    assert row["kendall"]["value"] == pytest.approx(4 / 6)
    assert row["spearman"]["value"] == pytest.approx(0.8)
    assert -1 <= row["kendall"]["low"] <= row["kendall"]["high"] <= 1


def test_correlation_refuses_small_or_constant_groups_and_says_why():
    df = pd.concat([xy([0, 1], [0.2, 0.3], "dpo"), xy([0.2, 0.2, 0.2], [0.1, 0.5, 0.9], "shapo"),
                    xy([0, 1, 2], [0.5, 0.5, 0.5], "ipo")], ignore_index=True)
    rows = {r["group"]: r for r in analysis.correlations(df, "data.noise_rate", Y)}
    assert rows["dpo"]["spearman"]["value"] is None and "at least 3" in rows["dpo"]["note"]
    assert rows["shapo"]["pearson"]["value"] is None and "takes one value (0.2)" in rows["shapo"]["note"]
    assert rows["ipo"]["kendall"]["value"] is None and "is constant (0.5)" in rows["ipo"]["note"]


def test_bootstrap_leaves_out_and_counts_constant_resamples():
    """With 3 cells, a resample repeats one cell with probability 3 / 27 = 1/9: about 222 of 2000."""
    (row,) = analysis.correlations(xy([0, 1, 2], [0.9, 0.5, 0.6]), "data.noise_rate", Y, n_boot=2000, seed=3)
    assert 150 < row["degenerate"] < 300
    assert f"{row['degenerate']} of 2000 bootstrap resamples" in row["note"]
    again = analysis.correlations(xy([0, 1, 2], [0.9, 0.5, 0.6]), "data.noise_rate", Y, n_boot=2000, seed=3)
    assert again[0] == row  # seeded


def test_nan_metrics_are_left_out_and_counted():
    (row,) = analysis.correlations(xy([0, 1, 2, 3, 4], [1, 2, np.nan, 4, 5]), "data.noise_rate", Y, n_boot=50)
    assert row["n"] == 4 and row["dropped"] == 1 and "1 cell(s) without" in row["note"]
    assert row["spearman"]["value"] == pytest.approx(1)


def test_non_numeric_axis_is_a_user_error():
    df = xy([0, 1, 2], [1, 2, 3]).assign(**{"data.noise_mode": ["flip", "soft", "flip"]})
    with pytest.raises(UserError, match="must be numeric; it holds flip, soft"):
        analysis.slopes(df, "data.noise_mode", Y)


def test_ols_slope_ci_and_p_by_hand():
    """x = 0..3, y = 1, 3.5, 4.5, 7: S_xy = 9.5, S_xx = 5 -> slope 1.9, intercept 4 - 1.9 * 1.5 = 1.15;
    residuals -0.15, 0.45, -0.45, 0.15 -> SSE 0.45, s^2 = 0.225 (2 df), se = sqrt(0.225 / 5);
    t_{.975, 2} = 0.95 * sqrt(2 / (4 * .975 * .025)) (closed form for 2 df), p = 1 - t / sqrt(2 + t^2),
    R^2 = 1 - 0.45 / 18.5."""
    (row,) = analysis.slopes(xy([0, 1, 2, 3], [1, 3.5, 4.5, 7]), "data.noise_rate", Y)
    se = math.sqrt(0.225 / 5)
    tq = 0.95 * math.sqrt(2 / (4 * 0.975 * 0.025))
    t = 1.9 / se
    assert row["slope"] == pytest.approx(1.9) and row["intercept"] == pytest.approx(1.15)
    assert (row["low"], row["high"]) == pytest.approx((1.9 - tq * se, 1.9 + tq * se))
    assert row["p"] == pytest.approx(1 - t / math.sqrt(2 + t * t))
    assert row["r2"] == pytest.approx(1 - 0.45 / 18.5)
    assert row["n"] == 4 and row["note"] is None


def test_slope_from_two_cells_has_no_ci_and_one_x_has_no_slope():
    df = pd.concat([xy([0, 0.4], [0.8, 0.6], "dpo"), xy([0.2, 0.2], [0.5, 0.6], "shapo")], ignore_index=True)
    rows = {r["group"]: r for r in analysis.slopes(df, "data.noise_rate", Y)}
    assert rows["dpo"]["slope"] == pytest.approx(-0.5) and rows["dpo"]["low"] is None
    assert "no CI" in rows["dpo"]["note"]
    assert rows["shapo"]["slope"] is None and "1 distinct value" in rows["shapo"]["note"]


def test_groups_come_none_first_then_sorted_whatever_the_row_order():
    df = pd.concat([xy([0, 1, 2], [1, 2, 3], "shapo"), xy([0, 1, 2], [3, 2, 1], "dpo"), xy([0, 0], [1, 1], "none")])
    assert [r["group"] for r in analysis.slopes(df, "data.noise_rate", Y)] == ["none", "dpo", "shapo"]
    assert analysis.group_order([3, 1, np.nan, 2]) == [1, 2, 3, None]


def test_a_constant_metric_has_slope_zero_not_rounding_noise():
    """0.1 + 0.2 != 0.3 in floats: OLS on (0.3, 0.1 + 0.2, 0.3) gives a slope of ~1e-16 with a
    meaningless p; the table says 0 and why."""
    (row,) = analysis.slopes(xy([0, 0.2, 0.4], [0.3, 0.1 + 0.2, 0.3]), "data.noise_rate", Y)
    assert (row["slope"], row["low"], row["high"], row["p"], row["constant"]) == (0.0, 0.0, 0.0, None, True)
    assert "is constant (0.3)" in row["note"]
    (corr,) = analysis.correlations(xy([0, 0.2, 0.4], [0.3, 0.1 + 0.2, 0.3]), "data.noise_rate", Y, n_boot=10)
    assert corr["spearman"]["value"] is None


def test_slopes_pool_every_cell_without_a_grouping_column():
    (row,) = analysis.slopes(pd.concat([xy([0, 1], [0, 2], "a"), xy([2, 3], [4, 6], "b")]), "data.noise_rate", Y,
                             by=None)
    assert row["group"] == "all" and row["n"] == 4 and row["slope"] == pytest.approx(2)


def _pair_frame() -> pd.DataFrame:
    """noise 0.2: dpo / shapo at seeds 0, 1, 2 with differences 0.1, 0.2, 0.3, plus a shapo cell at
    another duration (no partner) and a pair whose dpo value is missing; noise 0.4: one pair;
    noise 0.0: only the un-aligned model."""
    rows = [{"method": "none", "noise": 0.0, "y": 0.4}]
    for seed, (a, d) in enumerate([(0.5, 0.1), (0.6, 0.2), (0.4, 0.3)]):
        rows += [{"method": "dpo", "noise": 0.2, "seed": seed, "y": a},
                 {"method": "shapo", "noise": 0.2, "seed": seed, "y": a + d}]
    rows += [{"method": "shapo", "noise": 0.2, "seed": 0, "steps": 600, "y": 0.99},
             {"method": "dpo", "noise": 0.2, "seed": 7, "y": np.nan}, {"method": "shapo", "noise": 0.2, "seed": 7, "y": 0.5},
             {"method": "dpo", "noise": 0.4, "seed": 0, "y": 0.30}, {"method": "shapo", "noise": 0.4, "seed": 0, "y": 0.45}]
    return frame(rows)


def test_paired_difference_with_t_ci_by_hand():
    """Differences 0.1, 0.2, 0.3: mean 0.2, sd 0.1, se 0.1 / sqrt(3), t = 0.2 / se = sqrt(12);
    CI 0.2 -+ t_{.975, 2} se; p = 1 - t / sqrt(2 + t^2) (2 df)."""
    rows = analysis.paired(_pair_frame(), Y)
    by_level = {r["at"]: r for r in rows}
    r = by_level[0.2]
    se, tq, t = 0.1 / math.sqrt(3), 0.95 * math.sqrt(2 / (4 * 0.975 * 0.025)), math.sqrt(12)
    assert (r["a"], r["b"], r["n"], r["dropped"]) == ("dpo", "shapo", 3, 1)
    assert r["mean_diff"] == pytest.approx(0.2) and r["sd"] == pytest.approx(0.1)
    assert (r["low"], r["high"]) == pytest.approx((0.2 - tq * se, 0.2 + tq * se))
    assert r["p"] == pytest.approx(1 - t / math.sqrt(2 + t * t))
    assert "1 matched pair(s) without clear_bias/safety" in r["note"]


def test_one_pair_has_no_ci_and_a_lone_method_has_nothing_to_compare():
    by_level = {r["at"]: r for r in analysis.paired(_pair_frame(), Y)}
    assert by_level[0.4]["mean_diff"] == pytest.approx(0.15) and by_level[0.4]["low"] is None
    assert "one matched pair" in by_level[0.4]["note"]
    assert by_level[0.0]["b"] is None and "only none has cells" in by_level[0.0]["note"]


def test_pairs_are_matched_on_every_other_parameter():
    matched = analysis.pairs(_pair_frame())
    assert {(p["at"], p["key"]["seed"], p["key"]["pretrain.steps"]) for p in matched} == {
        (0.2, 0, 300), (0.2, 1, 300), (0.2, 2, 300), (0.2, 7, 300), (0.4, 0, 300)}
    assert analysis.match_keys(_pair_frame(), "method", "data.noise_rate") == ["pretrain.steps", "seed"]


def test_equal_differences_have_zero_width_and_no_p():
    df = frame([{"method": m, "seed": s, "y": 0.5 + (0.04 if m == "b" else 0) + 0.1 * s}
                for m in ("a", "b") for s in (0, 1)])
    (r,) = analysis.paired(df, Y)
    assert r["mean_diff"] == pytest.approx(0.04) and r["low"] == r["high"] == r["mean_diff"] and r["p"] is None


def test_cells_the_keys_cannot_tell_apart_are_a_user_error():
    df = frame([{"method": "a", "y": 0.1}, {"method": "a", "y": 0.2}, {"method": "b", "y": 0.3}])
    with pytest.raises(UserError, match="cells c0 and c1 of a .* share .*seed=0.*add the parameter"):
        analysis.paired(df, Y)


def test_mean_ci_over_cells_or_from_the_single_cells_own_ci():
    """Two cells 0.5, 0.7: mean 0.6, se 0.1, t_{.975, 1} = tan(0.475 pi) = 12.7062."""
    two = analysis.mean_ci([0.5, 0.7])
    tq = math.tan(0.475 * math.pi)
    assert two["mean"] == pytest.approx(0.6) and two["source"] == "cells"
    assert (two["low"], two["high"]) == pytest.approx((0.6 - tq * 0.1, 0.6 + tq * 0.1))
    one = analysis.mean_ci([0.5, np.nan], [0.45, 0.0], [0.58, 0.0])
    assert (one["n"], one["low"], one["high"], one["source"]) == (1, 0.45, 0.58, "cell")
    assert analysis.mean_ci([np.nan])["mean"] is None
    rate = analysis.mean_ci([0.5, 0.7], bounds=analysis.metric_range("clear_bias/category/AGE/safety"))
    assert (rate["low"], rate["high"], rate["clipped"]) == (0.0, 1.0, True) and type(rate["clipped"]) is bool  # 0.6 ± 1.27 cut at the rate's range
    assert analysis.metric_range("train/rewards/margins") is None and not two["clipped"]
    near = analysis.mean_ci([0.5, 0.51], bounds=(0.0, 1.0))  # inside the range: the t CI as it is
    assert not near["clipped"] and near["low"] == pytest.approx(0.505 - tq * 0.005)


def test_curve_per_group_and_x():
    df = frame([{"noise": 0.0, "seed": 0, "y": 0.5}, {"noise": 0.0, "seed": 1, "y": 0.7},
                {"noise": 0.2, "y": 0.4, f"{Y}.low": 0.3, f"{Y}.high": 0.5}])
    rows = analysis.curve(df, "data.noise_rate", Y)
    assert [(r["x"], r["n"], r["source"]) for r in rows] == [(0.0, 2, "cells"), (0.2, 1, "cell")]
    assert rows[0]["mean"] == pytest.approx(0.6) and (rows[1]["low"], rows[1]["high"]) == (0.3, 0.5)
