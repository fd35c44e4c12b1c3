"""Label noise on a seeded subset of the TRAINING pairs, in one of four modes.

Apply it after the evaluation hold-out (``split_holdout``) and to the training list only:
evaluation pairs must stay clean. The official ShaPO code flipped its eval split too,
which measures agreement with the noise instead of with the true preferences.

Every mode touches exactly ``round(rate * n)`` of the n training pairs, the indices
``random.Random(seed).sample(range(n), k)`` (``noisy_indices``), so one seed picks the same
pairs in every mode and rate 0 is the identity. Each mode acts in one stage
(``robalign.config.NOISE_MODES``):

* ``flip`` (trainer): swap chosen and rejected; a soft label q becomes 1 − q. Under the soft
  loss −[q·log σ(u) + (1−q)·log σ(−u)] this changes nothing: the swap maps u → −u, and
  ℓ(−u, 1−q) = ℓ(u, q) term for term. Flip noise cancels exactly for soft-label runs.
* ``reward_labels`` (``train-reward``): flip the pairs the reward model learns from; the soft
  labels it later gives inherit the noise (it scores the flipped pairs' kind backwards).
* ``soft_flip`` (``soft-labels``): q → 1 − q with chosen and rejected left in place, so the
  soft loss now pulls the pair the wrong way (``flip_soft_labels``).
* ``margin_gaussian`` (``soft-labels``): Δr → Δr + ξ, ξ ~ N(0, std²), before q = σ(β_r·Δr)
  (``margin_noise``); q moves by up to a sign change where |ξ| > |Δr|.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Sequence
from typing import NamedTuple

from robalign.config import NOISE_MODES
from robalign.data.preference import PreferencePair, split_holdout


class NoiseResult(NamedTuple):
    pairs: list[PreferencePair]  # input order; pairs left alone are the input objects themselves
    flipped_ids: list[str]  # ids of the pairs the noise touched, in data order (record them with the run)


class MarginNoise(NamedTuple):
    indices: list[int]  # the touched positions, ascending
    offsets: list[float]  # (n,) ξ_i to add to Δr_i; 0.0 at untouched positions


def noisy_indices(n: int, rate: float, seed: int) -> list[int]:
    """The ``round(rate * n)`` positions, ascending, that every mode touches.

    ``random.Random(seed).sample(range(n), k)``: the same seed gives the same positions in every
    mode. ``round`` is Python's, which rounds halves to even: n=10, rate=0.25 -> 2,
    n=10, rate=0.15 -> 2 (1.5 -> 2).
    """
    _check_rate(rate)
    return sorted(random.Random(seed).sample(range(n), round(rate * n)))


def flip_labels(pairs: Sequence[PreferencePair], rate: float, seed: int) -> NoiseResult:
    """Swap chosen/rejected on exactly ``round(rate * n)`` TRAINING pairs (never an eval split).

    A flipped soft label q becomes 1 - q, and meta keys ``chosen_*`` / ``rejected_*`` (e.g. PKU
    ``chosen_safe``) swap with the texts they describe; meta ``label_flipped`` marks the pair.
    Flipping the same pairs again restores them (soft labels up to float rounding: 1 - (1 - q)
    == q exactly only for some q). The input is never mutated; rate 0 returns the same pair
    objects and no flips.
    """
    pairs = list(pairs)
    flipped = noisy_indices(len(pairs), rate, seed)
    noisy = list(pairs)
    for i in flipped:
        noisy[i] = _swap(pairs[i])
    return NoiseResult(noisy, [pairs[i].id for i in flipped])


def flip_soft_labels(pairs: Sequence[PreferencePair], rate: float, seed: int) -> NoiseResult:
    """q → 1 − q on exactly ``round(rate * n)`` TRAINING pairs, chosen and rejected left in place.

    The same positions as ``flip_labels`` with the same seed, but the texts stay: the soft loss
    now prefers the response the clean label disprefers (q = 0.9 -> 0.1), which a pair swap
    cannot do. Meta ``soft_label_flipped`` marks the pair; the input is never mutated. Every pair
    needs a soft label (a ValueError names the first without one).
    """
    pairs = list(pairs)
    missing = [p.id for p in pairs if p.soft_label is None]
    if missing:
        raise ValueError(f"soft_flip needs a soft_label on every pair; {len(missing)} lack one (first: '{missing[0]}')")
    touched = noisy_indices(len(pairs), rate, seed)
    noisy = list(pairs)
    for i in touched:
        meta = dict(pairs[i].meta)
        if meta.pop("soft_label_flipped", False) is False:
            meta["soft_label_flipped"] = True
        noisy[i] = dataclasses.replace(pairs[i], soft_label=1.0 - pairs[i].soft_label, meta=meta)
    return NoiseResult(noisy, [pairs[i].id for i in touched])


def margin_noise(n: int, rate: float, std: float, seed: int) -> MarginNoise:
    """Gaussian offsets ξ ~ N(0, std²) for exactly ``round(rate * n)`` of n reward margins.

    The positions are ``noisy_indices(n, rate, seed)`` (those ``flip_labels`` would flip); the
    draws continue the same ``random.Random(seed)`` stream, one ``gauss(0, std)`` per touched
    position in ascending order, so a seed fixes both. std 0 gives offsets of exactly 0.0.
    """
    if not (std >= 0 and math.isfinite(std)):
        raise ValueError(f"margin noise std must be a finite number >= 0, got {std!r}")
    _check_rate(rate)
    rng = random.Random(seed)
    indices = sorted(rng.sample(range(n), round(rate * n)))  # = noisy_indices(n, rate, seed)
    offsets = [0.0] * n
    for i in indices:
        offsets[i] = rng.gauss(0.0, std) if std > 0 else 0.0
    return MarginNoise(indices, offsets)


def training_positions(pairs: Sequence[PreferencePair], eval_fraction: float, seed: int) -> list[int]:
    """Positions, ascending, of the pairs a trainer with ``data.eval_fraction=eval_fraction`` and
    ``training.seed=seed`` trains on (``split_holdout``'s train side, same data order, no
    ``data.limit``). Noise added before the trainer (``soft-labels``) goes only there, so the
    pairs the trainer holds out keep clean soft labels. eval_fraction 0: every position."""
    train, _ = split_holdout(pairs, eval_fraction, seed)
    keep = {p.id for p in train}
    return [i for i, p in enumerate(pairs) if p.id in keep]


def apply_training_noise(pairs: Sequence[PreferencePair], mode: str, rate: float, seed: int) -> NoiseResult:
    """The noise the trainer itself adds to its training split for ``data.noise_mode``.

    Only ``flip`` acts here. ``reward_labels``, ``soft_flip`` and ``margin_gaussian`` acted
    before the trainer (``train-reward`` / ``soft-labels``) and are already in the soft labels
    of ``data.train``, so the pairs come back untouched; flipping them again here would add a
    second noise (and, under the soft loss, one that cancels).
    """
    if mode not in NOISE_MODES:
        raise ValueError(f"unknown noise mode '{mode}'; use one of {', '.join(NOISE_MODES)}")
    if mode == "flip":
        return flip_labels(pairs, rate, seed)
    _check_rate(rate)
    return NoiseResult(list(pairs), [])


def _check_rate(rate: float) -> None:
    if isinstance(rate, bool) or not 0.0 <= rate <= 1.0:  # `not <=` also catches NaN
        raise ValueError(f"label noise rate must lie in [0, 1], got {rate!r}")


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
