"""Preference losses of the DPO family, per pair, and how a batch of them is aggregated.

Notation (DESIGN.md §1, docs/methods.md): for a pair (x, y_w, y_l)

    h = (log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l)),    u = β·h,

where log π(y) is the *sum* of the response tokens' log-probabilities. Every function is pure:
tensors and floats in, tensors out. Per-pair losses are (B,) so that the caller picks the
aggregation: the plain mean, or Dr.DPO's soft-minimum over the whole effective batch.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F


class _Pairs(NamedTuple):
    """Everything a per-pair loss may read; all tensors (B,)."""

    chosen_logratios: torch.Tensor  # log π(y_w) − log π_ref(y_w)
    rejected_logratios: torch.Tensor  # log π(y_l) − log π_ref(y_l)
    policy_chosen_logps: torch.Tensor
    chosen_lengths: torch.Tensor  # float, clamped to >= 1
    rejected_lengths: torch.Tensor
    soft_labels: torch.Tensor | None
    beta: float
    label_smoothing: float
    rdpo_epsilon: float
    ipo_length_normalize: bool

    @property
    def u(self) -> torch.Tensor:
        return self.beta * (self.chosen_logratios - self.rejected_logratios)


def _soft_bce(u: torch.Tensor, q: torch.Tensor | float) -> torch.Tensor:
    """−[q·log σ(u) + (1−q)·log σ(−u)]: Bradley–Terry cross-entropy against target q."""
    return -(q * F.logsigmoid(u) + (1 - q) * F.logsigmoid(-u))


def _dpo(p: _Pairs) -> torch.Tensor:
    # Rafailov et al. 2023 (arXiv 2305.18290), Eq. 7.
    return -F.logsigmoid(p.u)


def _cdpo(p: _Pairs) -> torch.Tensor:
    # Conservative DPO (Mitchell 2023 note): labels flipped with probability ε, so the target is 1−ε.
    return _soft_bce(p.u, 1.0 - p.label_smoothing)


def _rdpo(p: _Pairs) -> torch.Tensor:
    # Chowdhury et al. 2024 (arXiv 2403.00409). Subtracting the flipped term (not adding it, as cdpo
    # does) makes the loss unbiased: its expectation under flips of rate ε is the clean DPO loss.
    eps = p.rdpo_epsilon
    return (-(1 - eps) * F.logsigmoid(p.u) + eps * F.logsigmoid(-p.u)) / (1 - 2 * eps)


def _ipo(p: _Pairs) -> torch.Tensor:
    # Azar et al. 2023 (arXiv 2310.12036), Eq. 17, with τ = β. The paper's h is on summed log-probs;
    # TRL divides each log-ratio by its own response length first (ipo_length_normalize=True).
    if p.ipo_length_normalize:
        h = p.chosen_logratios / p.chosen_lengths - p.rejected_logratios / p.rejected_lengths
    else:
        h = p.chosen_logratios - p.rejected_logratios
    return (h - 1 / (2 * p.beta)) ** 2


def _soft(p: _Pairs) -> torch.Tensor:
    # Soft-label DPO (ShaPO reward-level, arXiv 2602.07340): cdpo with a per-pair ε_i = 1 − q_i.
    if p.soft_labels is None:
        raise ValueError(
            "loss 'soft' needs soft_labels (B,) = P(chosen truly preferred): give the data a "
            "'soft_label' column (e.g. scored by a reward model) or drop 'soft' from loss.losses"
        )
    return _soft_bce(p.u, p.soft_labels)


def _sft(p: _Pairs) -> torch.Tensor:
    # Negative log-likelihood of the chosen response per token; often added with a small weight.
    return -p.policy_chosen_logps / p.chosen_lengths


_PER_PAIR: dict[str, Callable[[_Pairs], torch.Tensor]] = {
    "dpo": _dpo,
    "ipo": _ipo,
    "cdpo": _cdpo,
    "rdpo": _rdpo,
    "soft": _soft,
    "sft": _sft,
}
LOSSES: tuple[str, ...] = tuple(_PER_PAIR)
AGGREGATIONS: tuple[str, ...] = ("mean", "drdpo")


def _unknown(kind: str, name: str, known: tuple[str, ...]) -> ValueError:
    closest = difflib.get_close_matches(name, known, n=1, cutoff=0.0)
    return ValueError(f"unknown {kind} '{name}' (closest: '{closest[0]}'); known: {', '.join(known)}")


def _check_per_pair(**tensors: torch.Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    first = next(iter(shapes.values()))
    if len(first) != 1 or any(s != first for s in shapes.values()):
        raise ValueError(
            f"pair losses take (B,) per-sequence tensors of one shape, got {shapes}; "
            "sum per-token log-probs over the response tokens first"
        )


def pair_losses(
    name: str,
    *,
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    soft_labels: torch.Tensor | None = None,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    rdpo_epsilon: float = 0.1,
    ipo_length_normalize: bool = False,
) -> torch.Tensor:
    """Per-pair loss ``name`` (one of LOSSES), shape (B,).

    policy_*_logps, reference_*_logps: (B,) log-probs summed over response tokens.
    chosen_lengths, rejected_lengths: (B,) response token counts (float or long); read by
        ``sft`` and length-normalised ``ipo``; clamped to >= 1 so an empty response cannot divide by 0.
    soft_labels: (B,) q_i = P(chosen truly preferred) in [0, 1]; required by ``soft``.
    beta: β > 0 (DPO's KL strength; IPO's τ). label_smoothing: cdpo's ε in [0, 0.5].
    rdpo_epsilon: rdpo's assumed flip rate ε in [0, 0.5). ipo_length_normalize: see ``_ipo``.
    """
    if name not in _PER_PAIR:
        raise _unknown("loss", name, LOSSES)
    tensors = dict(
        policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        reference_chosen_logps=reference_chosen_logps,
        reference_rejected_logps=reference_rejected_logps,
        chosen_lengths=chosen_lengths,
        rejected_lengths=rejected_lengths,
    )
    if soft_labels is not None:
        tensors["soft_labels"] = soft_labels
    _check_per_pair(**tensors)
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if name == "cdpo" and not 0.0 <= label_smoothing <= 0.5:
        raise ValueError(f"cdpo label_smoothing must lie in [0, 0.5], got {label_smoothing}")
    if name == "rdpo" and not 0.0 <= rdpo_epsilon < 0.5:  # 1 − 2ε is a divisor
        raise ValueError(f"rdpo_epsilon must lie in [0, 0.5), got {rdpo_epsilon}")
    dtype = policy_chosen_logps.dtype
    pairs = _Pairs(
        chosen_logratios=policy_chosen_logps - reference_chosen_logps,
        rejected_logratios=policy_rejected_logps - reference_rejected_logps,
        policy_chosen_logps=policy_chosen_logps,
        chosen_lengths=chosen_lengths.to(dtype).clamp_min(1.0),
        rejected_lengths=rejected_lengths.to(dtype).clamp_min(1.0),
        soft_labels=None if soft_labels is None else soft_labels.to(dtype),
        beta=beta,
        label_smoothing=label_smoothing,
        rdpo_epsilon=rdpo_epsilon,
        ipo_length_normalize=ipo_length_normalize,
    )
    return _PER_PAIR[name](pairs)


def combined_pair_losses(weights: dict[str, float], **kwargs) -> torch.Tensor:
    """Σ_k w_k · pair_losses(k, **kwargs), shape (B,); e.g. ``{"dpo": 1.0, "sft": 0.1}``."""
    if not weights:
        raise ValueError(f"no losses to combine: give at least one of {', '.join(LOSSES)} with a weight")
    total: torch.Tensor | None = None
    for name, weight in weights.items():
        term = weight * pair_losses(name, **kwargs)
        total = term if total is None else total + term
    return total


def _check_batch(per_pair: torch.Tensor, drdpo_beta: float) -> None:
    if per_pair.ndim != 1 or per_pair.numel() == 0:
        raise ValueError(
            f"expected a non-empty (B,) tensor of per-pair losses, got shape {tuple(per_pair.shape)}"
        )
    if not drdpo_beta > 0:
        raise ValueError(f"drdpo_beta (β′) must be > 0, got {drdpo_beta}")


def aggregate(per_pair: torch.Tensor, how: str, drdpo_beta: float = 1.0) -> torch.Tensor:
    """Scalar batch loss from (B,) per-pair losses ℓ_i.

    ``mean``: (1/B) Σ_i ℓ_i.
    ``drdpo``: −β′·log((1/B) Σ_i exp(−ℓ_i/β′)) (Wu et al. 2024, arXiv 2407.07880), a soft-minimum
    that down-weights pairs with a large loss (likely flipped labels). β′ → ∞ gives the mean,
    β′ → 0 the minimum; the paper uses β′ = 1.
    """
    if how not in AGGREGATIONS:
        raise _unknown("aggregation", how, AGGREGATIONS)
    _check_batch(per_pair, drdpo_beta)
    if how == "mean":
        return per_pair.mean()
    n = per_pair.numel()
    return -drdpo_beta * (torch.logsumexp(-per_pair / drdpo_beta, dim=0) - math.log(n))


def drdpo_weights(per_pair: torch.Tensor, drdpo_beta: float = 1.0) -> torch.Tensor:
    """w = softmax(−ℓ/β′), shape (B,), detached; Σ_i w_i = 1.

    ∇ of the Dr.DPO aggregate equals Σ_i w_i ∇ℓ_i, so back-propagating the surrogate Σ_i w_i ℓ_i
    gives Dr.DPO's exact gradient. Under gradient accumulation the trainer computes every ℓ_i of
    the *effective* batch without grad, takes w from all of them, then back-propagates Σ w_i ℓ_i
    one micro-batch at a time. The surrogate's value is not the Dr.DPO loss: log ``aggregate``.
    """
    _check_batch(per_pair, drdpo_beta)
    return torch.softmax(-per_pair.detach() / drdpo_beta, dim=0)


class PreferenceRewards(NamedTuple):
    """Implicit rewards β·(log π − log π_ref), detached, for TRL-named metrics (rewards/*)."""

    chosen_rewards: torch.Tensor  # (B,)
    rejected_rewards: torch.Tensor  # (B,)

    @property
    def margins(self) -> torch.Tensor:  # (B,) rewards/margins
        return self.chosen_rewards - self.rejected_rewards

    @property
    def accuracies(self) -> torch.Tensor:  # (B,) rewards/accuracies: 1.0 where chosen wins strictly
        return (self.chosen_rewards > self.rejected_rewards).to(self.chosen_rewards.dtype)


def preference_rewards(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    beta: float = 0.1,
) -> PreferenceRewards:
    """All arguments (B,) summed response log-probs; returns detached (B,) rewards."""
    return PreferenceRewards(
        chosen_rewards=beta * (policy_chosen_logps - reference_chosen_logps).detach(),
        rejected_rewards=beta * (policy_rejected_logps - reference_rejected_logps).detach(),
    )
