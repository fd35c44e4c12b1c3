"""Agreement statistics, worked out by hand."""

from __future__ import annotations

import math

import krippendorff
import numpy as np
import pytest
import sklearn.metrics
from hypothesis import assume, given, settings
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


# --- against reference implementations (issue 7, item 7) ----------------------------------
# scikit-learn and the `krippendorff` package (dev extra) are the oracles: every metric here
# must equal theirs on any labelling, not just on the hand-worked tables above.

PAIRS = st.lists(st.tuples(st.sampled_from(["S", "CS", "D", "R"]), st.sampled_from(["S", "CS", "D", "R", "UNPARSED"])),
                 min_size=2, max_size=60)


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")  # sklearn on a constant rater
@settings(max_examples=150)
@given(PAIRS)
def test_metrics_match_scikit_learn(pairs):
    metrics = sklearn.metrics
    gold, pred = map(list, zip(*pairs))
    report = agreement(gold, pred, n_boot=0)
    gold_labels = sorted(set(gold))
    assert report.confusion == metrics.confusion_matrix(gold, pred, labels=report.labels).tolist()
    assert report.accuracy == pytest.approx(metrics.accuracy_score(gold, pred))
    assert report.macro_f1 == pytest.approx(metrics.f1_score(gold, pred, labels=gold_labels, average="macro"))
    expected = metrics.cohen_kappa_score(gold, pred)
    if math.isnan(expected):  # both raters constant and equal: p_e = 1
        assert math.isnan(report.kappa.kappa)
    else:
        assert report.kappa.kappa == pytest.approx(expected, abs=1e-12)


def _reference_alpha(units: list[list]) -> float:
    """``krippendorff.alpha`` (nominal) on units x raters with None for a missing value."""
    values = sorted({v for unit in units for v in unit if v is not None})
    code = {v: float(i) for i, v in enumerate(values)}
    data = np.array([[np.nan if v is None else code[v] for v in unit] for unit in units]).T  # raters x units
    return krippendorff.alpha(reliability_data=data, level_of_measurement="nominal")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the package divides 0 by 0 where alpha is NaN
@settings(max_examples=150)
@given(st.integers(2, 4).flatmap(lambda raters: st.lists(
    st.lists(st.one_of(st.none(), st.sampled_from("abc")), min_size=raters, max_size=raters), min_size=2,
    max_size=30)))
def test_alpha_matches_the_krippendorff_package(units):
    assume(len({v for unit in units for v in unit if v is not None}) >= 2)  # the package needs 2 values
    assume(sum(sum(v is not None for v in unit) >= 2 for unit in units) >= 1)  # and a pairable unit
    assert krippendorff_alpha(units) == pytest.approx(_reference_alpha(units), abs=1e-9, nan_ok=True)
    complete = [unit[:2] for unit in units if None not in unit[:2]]
    if len({v for unit in complete for v in unit}) >= 2:  # the two-rater form on complete data
        labels = sorted({v for unit in complete for v in unit})
        C = confusion_matrix([u[0] for u in complete], [u[1] for u in complete], labels)
        assert float(alpha_two_raters(C)) == pytest.approx(_reference_alpha(complete), abs=1e-9)
