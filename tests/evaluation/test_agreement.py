"""Agreement statistics, worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robalign.evaluation.agreement import (
    agreement,
    alpha_two_raters,
    bootstrap_confusions,
    confusion_matrix,
    kappa,
    kappa_test,
    krippendorff_alpha,
    macro_f1,
)

# 50 items, gold rows x judge columns:       judge a  judge b
#                                 gold a         20        5     (25)
#                                 gold b         10       15     (25)
#                                               (30)     (20)
TABLE = np.array([[20, 5], [10, 15]])
GOLD = ["a"] * 25 + ["b"] * 25
PRED = ["a"] * 20 + ["b"] * 5 + ["a"] * 10 + ["b"] * 15


def test_hand_worked_two_by_two():
    """p_o = 35/50 = 0.7; p_e = 0.5*0.6 + 0.5*0.4 = 0.5; kappa = (0.7-0.5)/(1-0.5) = 0.4.
    var0 = [p_e + p_e^2 - sum p_i+ p_+i (p_i+ + p_+i)] / (n (1-p_e)^2)
         = [0.5 + 0.25 - (0.5*0.6*1.1 + 0.5*0.4*0.9)] / (50*0.25) = 0.24/12.5 = 0.0192
         -> se0 = 0.138564, z = 0.4/0.138564 = 2.886751, p = 2(1 - Phi(z)) = 0.003892.
    var: diagonal 0.4*(1 - 1.1*0.6)^2 + 0.3*(1 - 0.9*0.6)^2 = 0.04624 + 0.06348 = 0.10972;
         off-diagonal 0.6^2 * [0.1*(0.6+0.5)^2 + 0.2*(0.4+0.5)^2] = 0.36*0.283 = 0.10188;
         minus (0.4 - 0.5*0.6)^2 = 0.01 -> 0.2016 / 12.5 = 0.016128 -> se = 0.126996.
    F1(a) = 2*20/(25+30) = 0.727273, F1(b) = 2*15/(25+20) = 0.666667, macro = 0.696970.
    alpha: o = C + C^T = [[40,15],[15,30]], N = 100, n_c = (55, 45);
           1 - 99 * 30 / (100^2 - 55^2 - 45^2) = 1 - 2970/4950 = 0.4."""
    assert np.array_equal(confusion_matrix(GOLD, PRED, ["a", "b"]), TABLE)
    k = kappa_test(TABLE)
    assert k.kappa == pytest.approx(0.4)
    assert k.se0 == pytest.approx(0.138564, abs=1e-6) and k.z == pytest.approx(2.886751, abs=1e-6)
    assert k.p == pytest.approx(0.003892, abs=1e-6)
    assert k.se == pytest.approx(0.126996, abs=1e-6)
    assert macro_f1(TABLE, 2) == pytest.approx(0.696970, abs=1e-6)
    assert alpha_two_raters(TABLE) == pytest.approx(0.4)
    report = agreement(GOLD, PRED, n_boot=0)
    assert (report.accuracy, report.kappa.kappa, report.confusion) == (pytest.approx(0.7), pytest.approx(0.4),
                                                                        TABLE.tolist())


def test_krippendorff_published_example():
    """Krippendorff (2011), 'Computing Krippendorff's alpha-reliability', nominal example:
    4 observers, 12 units, missing values; alpha = 0.743."""
    N = None
    data = [[1, 1, N, 1], [2, 2, 3, 2], [3, 3, 3, 3], [3, 3, 3, 3], [2, 2, 2, 2], [1, 2, 3, 4], [4, 4, 4, 4],
            [1, 1, 2, 1], [2, 2, 2, 2], [N, 5, 5, 5], [N, N, 1, 1], [N, 3, N, N]]
    assert krippendorff_alpha(data) == pytest.approx(0.743, abs=5e-4)
    assert krippendorff_alpha(list(zip(GOLD, PRED))) == pytest.approx(0.4)  # agrees with the 2-rater form


def test_bootstrap_sd_matches_the_asymptotic_se():
    g, p = np.array([0] * 25 + [1] * 25), np.array([0] * 20 + [1] * 5 + [0] * 10 + [1] * 15)
    draws = np.concatenate([kappa(C) for C in bootstrap_confusions(g, p, 2, 4000, seed=0)])
    assert np.nanstd(draws) == pytest.approx(kappa_test(TABLE).se, rel=0.08)


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    a, b = agreement(GOLD, PRED, n_boot=300, seed=1), agreement(GOLD, PRED, n_boot=300, seed=1)
    assert a.ci == b.ci and agreement(GOLD, PRED, n_boot=300, seed=2).ci != a.ci
    for metric, value in [("accuracy", a.accuracy), ("kappa", a.kappa.kappa), ("macro_f1", a.macro_f1)]:
        low, high = a.ci[metric]
        assert low < value < high


def test_unparsed_counts_against_the_judge_but_adds_no_f1_class():
    gold = ["S", "CS", "D", "R"] * 5
    perfect = agreement(gold, gold, n_boot=0)
    assert perfect.kappa.kappa == pytest.approx(1) and perfect.macro_f1 == pytest.approx(1)
    pred = list(gold)
    pred[0] = "UNPARSED"
    report = agreement(gold, pred, n_boot=0)
    assert report.labels == ["CS", "D", "R", "S", "UNPARSED"] and report.not_gold_label == {"UNPARSED": 1}
    assert report.accuracy == pytest.approx(19 / 20)
    f1_s = 2 * 4 / (5 + 4)  # S: 4 hits, 5 gold, 4 predicted
    assert report.macro_f1 == pytest.approx((3 + f1_s) / 4)


def test_constant_raters_give_nan_not_a_crash():
    report = agreement(["a"] * 10, ["a"] * 10, n_boot=50)
    assert math.isnan(report.kappa.kappa) and report.accuracy == 1.0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("ABC"), st.sampled_from("ABCX")), min_size=2, max_size=60))
def test_metric_ranges(pairs):
    gold, pred = zip(*pairs)
    r = agreement(gold, pred, n_boot=20)
    assert 0 <= r.accuracy <= 1 and 0 <= r.macro_f1 <= 1
    assert math.isnan(r.kappa.kappa) or -1 <= r.kappa.kappa <= 1 + 1e-12
    assert sum(map(sum, r.confusion)) == len(pairs)
