"""Label noise invariants: exact flip counts, seeding, restore on a second flip, soft labels
become 1 - q, inputs never change, and the eval split is never part of it."""

from __future__ import annotations

import copy
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robalign.data.noise import NoiseResult, flip_labels
from robalign.data.preference import PreferencePair, split_holdout
from robalign.data.synthetic import synthetic_pairs


def _hard(n: int) -> list[PreferencePair]:
    return [PreferencePair(f"p{i}", f"prompt {i}", f"good {i}", f"bad {i}") for i in range(n)]


def test_rate_zero_is_the_identity():
    pairs = synthetic_pairs(n=50)
    result = flip_labels(pairs, 0.0, seed=3)
    assert isinstance(result, NoiseResult) and result.flipped_ids == []
    assert all(a is b for a, b in zip(result.pairs, pairs, strict=True))


@pytest.mark.parametrize(("n", "rate", "flips"), [
    (10, 0.25, 2),  # 2.5 rounds half to even -> 2
    (10, 0.15, 2),  # 1.5 -> 2
    (10, 0.35, 4),  # 3.5 -> 4
    (4, 0.125, 0),  # 0.5 -> 0
    (7, 1.0, 7),
    (400, 0.2, 80),
    (0, 0.5, 0),
])
def test_exact_flip_count(n, rate, flips):
    result = flip_labels(_hard(n), rate, seed=0)
    assert len(result.flipped_ids) == flips
    assert sum(a != b for a, b in zip(result.pairs, _hard(n), strict=True)) == flips


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 300), rate=st.floats(0.0, 1.0), seed=st.integers(0, 2**32))
def test_flip_count_is_round_rate_times_n(n, rate, seed):
    pairs = _hard(n)
    result = flip_labels(pairs, rate, seed)
    assert len(result.flipped_ids) == round(rate * n) == len(set(result.flipped_ids))
    flipped = set(result.flipped_ids)
    for before, after in zip(pairs, result.pairs, strict=True):
        assert after.id == before.id
        if before.id in flipped:
            assert (after.chosen, after.rejected) == (before.rejected, before.chosen)
        else:
            assert after is before
    order = [p.id for p in pairs if p.id in flipped]
    assert result.flipped_ids == order  # data order


def test_same_seed_same_flips_different_seed_different():
    pairs = _hard(100)
    assert flip_labels(pairs, 0.3, seed=7) == flip_labels(pairs, 0.3, seed=7)
    assert flip_labels(pairs, 0.3, seed=7).flipped_ids != flip_labels(pairs, 0.3, seed=8).flipped_ids


def test_flipping_the_same_pairs_twice_restores_them():
    pairs = [PreferencePair(f"p{i}", "q", f"a{i}", f"b{i}", soft_label=(i % 5) / 4,
                            meta={"chosen_safe": True, "rejected_safe": False}) for i in range(40)]
    once = flip_labels(pairs, 0.5, seed=1)
    twice = flip_labels(once.pairs, 0.5, seed=1)  # same n and seed -> the same indices
    assert twice.flipped_ids == once.flipped_ids
    assert twice.pairs == pairs  # q in {0, 1/4, 1/2, 3/4, 1}: 1 - (1 - q) == q exactly
    assert [p.meta for p in twice.pairs] == [p.meta for p in pairs]


def test_soft_labels_become_one_minus_q_and_meta_follows_the_texts():
    pairs = [PreferencePair("a", "q", "safe", "unsafe", soft_label=0.9,
                            meta={"chosen_safe": True, "rejected_safe": False, "category": "x"}),
             PreferencePair("b", "q", "c", "d")]
    noisy = flip_labels(pairs, 1.0, seed=0).pairs
    assert math.isclose(noisy[0].soft_label, 0.1) and noisy[1].soft_label is None
    assert (noisy[0].chosen, noisy[0].rejected) == ("unsafe", "safe")
    assert noisy[0].meta == {"chosen_safe": False, "rejected_safe": True, "category": "x", "label_flipped": True}


def test_input_is_never_mutated():
    pairs = synthetic_pairs(n=30)
    before = copy.deepcopy(pairs)
    flip_labels(pairs, 0.5, seed=0)
    assert pairs == before and [p.meta for p in pairs] == [p.meta for p in before]


def test_eval_split_is_untouched_by_construction():
    train, held = split_holdout(synthetic_pairs(n=100), 0.2, seed=0)
    held_objects, held_copy = list(held), copy.deepcopy(held)
    result = flip_labels(train, 0.4, seed=0)
    assert len(result.pairs) == len(train) and len(result.flipped_ids) == round(0.4 * len(train))
    assert set(result.flipped_ids) <= {p.id for p in train}
    assert all(a is b for a, b in zip(held, held_objects, strict=True)) and held == held_copy


@pytest.mark.parametrize("rate", [-0.1, 1.01, float("nan"), True])
def test_rate_outside_unit_interval(rate):
    with pytest.raises(ValueError, match="rate"):
        flip_labels(_hard(5), rate, seed=0)
