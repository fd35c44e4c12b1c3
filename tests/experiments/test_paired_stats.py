"""Paired method comparisons over seeds: the Wilcoxon signed-rank p and Holm's correction, worked
by hand (issue 12: ShaPO against its base method over seeds, corrected for multiple comparisons)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from scipy import stats

from robalign.experiments import analysis

Y = "clear_bias/safety"
DIFFS = {0.0: [0.01, 0.02, 0.03, 0.04, 0.05], 0.2: [0.05, -0.01, 0.02, -0.03, 0.04]}


def frame() -> pd.DataFrame:
    rows = []
    for noise, diffs in DIFFS.items():
        for seed, d in enumerate(diffs):
            base = 0.8 - noise + 0.01 * seed
            rows += [{"cell": f"d{noise}{seed}", "method": "dpo", "data.noise_rate": noise, "seed": seed, Y: base},
                     {"cell": f"s{noise}{seed}", "method": "shapo", "data.noise_rate": noise, "seed": seed,
                      Y: base + d}]
    return pd.DataFrame(rows)


def t_p(d: list[float]) -> float:
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    return 2 * stats.t.sf(abs(mean / (sd / math.sqrt(n))), n - 1)


def test_wilcoxon_and_holm_by_hand():
    """n = 5, exact Wilcoxon: at noise 0 every difference is positive, T = 0, p = 2 * 1/32; at 0.2
    the negative ranks are 1 and 3, T = 4, and 7 of the 32 sign patterns have a rank sum <= 4
    ({}, {1}, {2}, {3}, {4}, {1,2}, {1,3}): p = 2 * 7/32. Holm over two: the smaller p doubled,
    the larger kept (and never below the first)."""
    rows = analysis.paired(frame(), Y, at="data.noise_rate")
    by = {r["at"]: r for r in rows}
    assert [(r["a"], r["b"]) for r in rows] == [("dpo", "shapo")] * 2
    assert by[0.0]["p_wilcoxon"] == pytest.approx(2 / 32)
    assert by[0.2]["p_wilcoxon"] == pytest.approx(14 / 32)
    assert by[0.0]["p_wilcoxon_holm"] == pytest.approx(4 / 32)
    assert by[0.2]["p_wilcoxon_holm"] == pytest.approx(14 / 32)
    p0, p2 = t_p(DIFFS[0.0]), t_p(DIFFS[0.2])
    assert by[0.0]["p"] == pytest.approx(p0) and by[0.2]["p"] == pytest.approx(p2)
    assert by[0.0]["p_holm"] == pytest.approx(2 * p0) and by[0.2]["p_holm"] == pytest.approx(max(p2, 2 * p0))
    assert by[0.0]["mean_diff"] == pytest.approx(0.03)


def test_no_p_value_without_spread_and_holm_skips_it():
    df = frame()
    df.loc[(df["method"] == "shapo") & (df["data.noise_rate"] == 0.0), Y] = (
        df.loc[(df["method"] == "dpo") & (df["data.noise_rate"] == 0.0), Y].to_numpy() + 0.02)
    by = {r["at"]: r for r in analysis.paired(df, Y, at="data.noise_rate")}
    assert by[0.0]["p"] is None and by[0.0]["p_wilcoxon"] is None and by[0.0]["p_holm"] is None
    assert by[0.2]["p_holm"] == pytest.approx(by[0.2]["p"])  # a family of one: nothing to correct
