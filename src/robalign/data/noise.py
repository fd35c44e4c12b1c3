"""Label noise: swap chosen and rejected on a seeded subset of the TRAINING pairs.

Apply it after the evaluation hold-out (``split_holdout``) and to the training list only:
evaluation pairs must stay clean. The official ShaPO code flipped its eval split too,
which measures agreement with the noise instead of with the true preferences.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from typing import NamedTuple

from robalign.data.preference import PreferencePair


class NoiseResult(NamedTuple):
    pairs: list[PreferencePair]  # input order; pairs left alone are the input objects themselves
    flipped_ids: list[str]  # ids of the swapped pairs, in data order (record them with the run)


def flip_labels(pairs: Sequence[PreferencePair], rate: float, seed: int) -> NoiseResult:
    """Swap chosen/rejected on exactly ``round(rate * n)`` TRAINING pairs (never an eval split).

    The pairs are ``random.Random(seed).sample(range(n), k)``: the same seed flips the same
    pairs. ``round`` is Python's, which rounds halves to even: n=10, rate=0.25 -> 2 flips,
    n=10, rate=0.15 -> 2 (1.5 -> 2). A flipped soft label q becomes 1 - q, and meta keys
    ``chosen_*`` / ``rejected_*`` (e.g. PKU ``chosen_safe``) swap with the texts they
    describe; meta ``label_flipped`` marks the pair. Flipping the same pairs again restores
    them (soft labels up to float rounding: 1 - (1 - q) == q exactly only for some q).
    The input is never mutated; rate 0 returns the same pair objects and no flips.
    """
    if isinstance(rate, bool) or not 0.0 <= rate <= 1.0:  # `not <=` also catches NaN
        raise ValueError(f"label noise rate must lie in [0, 1], got {rate!r}")
    pairs = list(pairs)
    count = round(rate * len(pairs))
    flipped = sorted(random.Random(seed).sample(range(len(pairs)), count))
    noisy = list(pairs)
    for i in flipped:
        noisy[i] = _swap(pairs[i])
    return NoiseResult(noisy, [pairs[i].id for i in flipped])


def _swap(pair: PreferencePair) -> PreferencePair:
    meta = {_swap_side(key): value for key, value in pair.meta.items()}
    if meta.pop("label_flipped", False) is False:
        meta["label_flipped"] = True  # flipping twice removes the mark again
    soft_label = None if pair.soft_label is None else 1.0 - pair.soft_label
    return dataclasses.replace(pair, chosen=pair.rejected, rejected=pair.chosen, soft_label=soft_label, meta=meta)


def _swap_side(key: str) -> str:
    for a, b in (("chosen_", "rejected_"), ("rejected_", "chosen_")):
        if key.startswith(a):
            return b + key[len(a):]
    return key
