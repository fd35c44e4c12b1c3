"""Hand-worked checks of robalign.training.losses.

Most cases use one pair with log π(y_w) = −1, log π_ref(y_w) = −2 (log-ratio +1) and
log π(y_l) = −3, log π_ref(y_l) = −2 (log-ratio −1), so h = 2, and β = 0.5, so u = β·h = 1.
Constants used below, with ℓ(u) = −log σ(u):
    ℓ(1)  = log(1 + e^−1) = 0.3132616875…
    ℓ(−1) = log(1 + e)    = 1.3132616875… = ℓ(1) + 1   (ℓ(−u) = ℓ(u) + u for every u)
"""

from __future__ import annotations

import math

import pytest
import torch

from robalign.training.losses import (
    AGGREGATIONS,
    LOSSES,
    aggregate,
    combined_pair_losses,
    drdpo_weights,
    pair_losses,
    preference_rewards,
)

L1 = math.log1p(math.exp(-1.0))  # ℓ(1) = 0.31326168751822286


def one_pair(**overrides) -> dict:
    """The h = 2 pair above as float64 (1,) tensors; chosen has 4 response tokens, rejected 2."""
    t = lambda x: torch.tensor([x], dtype=torch.float64)  # noqa: E731
    kwargs = dict(
        policy_chosen_logps=t(-1.0),
        policy_rejected_logps=t(-3.0),
        reference_chosen_logps=t(-2.0),
        reference_rejected_logps=t(-2.0),
        chosen_lengths=torch.tensor([4]),
        rejected_lengths=torch.tensor([2]),
        beta=0.5,
    )
    kwargs.update(overrides)
    return kwargs


def random_pairs(n: int = 8, seed: int = 0, requires_grad: bool = False) -> dict:
    """n pairs with summed log-probs of realistic size (tens of nats) and h spread over ± a few."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 40, (2, n), generator=g)
    ref = -lengths * (1.0 + torch.rand(2, n, generator=g, dtype=torch.float64))
    policy = (ref + 3 * torch.randn(2, n, generator=g, dtype=torch.float64)).requires_grad_(requires_grad)
    return dict(
        policy_chosen_logps=policy[0],
        policy_rejected_logps=policy[1],
        reference_chosen_logps=ref[0],
        reference_rejected_logps=ref[1],
        chosen_lengths=lengths[0],
        rejected_lengths=lengths[1],
    )


def value(name: str, **overrides) -> float:
    return pair_losses(name, **one_pair(**overrides)).item()


# ---- per-pair losses, hand-worked ---------------------------------------------------------


# The h = 2, β = 0.5 pair (u = 1) through every registered loss, worked out in the tests below;
# a loss added to the registry without a hand-worked value here fails test_every_registered_loss.
HAND = {
    "dpo": ({}, L1),
    "ipo": ({}, 1.0),
    "cdpo": ({"label_smoothing": 0.25}, L1 + 0.25),
    "rdpo": ({"rdpo_epsilon": 0.25}, L1 - 0.5),
    "soft": ({"soft_labels": torch.tensor([0.8], dtype=torch.float64)}, L1 + 0.2),
    "sft": ({}, 0.25),
}


@pytest.mark.parametrize("name", LOSSES)
def test_every_registered_loss_has_its_hand_worked_value(name):
    overrides, expected = HAND[name]
    assert value(name, **overrides) == pytest.approx(expected, abs=1e-12)
    # and through the weighted combination the trainer calls: 2·ℓ_name
    got = combined_pair_losses({name: 2.0}, **one_pair(**overrides)).item()
    assert got == pytest.approx(2 * expected, abs=1e-12)


@pytest.mark.parametrize("name", AGGREGATIONS)
def test_every_registered_aggregation_by_hand(name):
    """ℓ = (0, log 3): mean (log 3)/2 = 0.549306…; Dr.DPO (β′ = 1) −log((1 + 1/3)/2) = log 1.5."""
    losses = torch.tensor([0.0, math.log(3.0)], dtype=torch.float64)
    expected = {"mean": math.log(3.0) / 2, "drdpo": math.log(1.5)}[name]
    assert aggregate(losses, name).item() == pytest.approx(expected, abs=1e-12)


def test_dpo():
    """u = 1: −log σ(1) = 0.31326…; at β = 0.1, u = 0.2: −log σ(0.2) = log(1 + e^−0.2) = 0.59813…"""
    assert value("dpo") == pytest.approx(0.3132616875, abs=1e-10)
    assert value("dpo", beta=0.1) == pytest.approx(math.log1p(math.exp(-0.2)), abs=1e-12)
    assert value("dpo", beta=0.1) == pytest.approx(0.5981388693, abs=1e-10)


def test_cdpo():
    """ε = 0.25: 0.75·ℓ(1) + 0.25·ℓ(−1) = ℓ(1) + 0.25·1 = 0.56326…"""
    assert value("cdpo", label_smoothing=0.25) == pytest.approx(L1 + 0.25, abs=1e-12)
    assert value("cdpo", label_smoothing=0.25) == pytest.approx(0.5632616875, abs=1e-10)


def test_rdpo():
    """ε = 0.25: [0.75·ℓ(1) − 0.25·ℓ(−1)] / 0.5 = [0.5·ℓ(1) − 0.25] / 0.5 = ℓ(1) − 0.5 = −0.18673…

    rDPO is not bounded below by 0: it rewards confident margins more than DPO does.
    """
    assert value("rdpo", rdpo_epsilon=0.25) == pytest.approx(L1 - 0.5, abs=1e-12)
    assert value("rdpo", rdpo_epsilon=0.25) == pytest.approx(-0.1867383125, abs=1e-10)


def test_ipo_summed_is_the_default():
    """1/(2β) = 1 and h = 2 on summed log-probs: (2 − 1)² = 1."""
    assert value("ipo") == pytest.approx(1.0, abs=1e-12)
    assert value("ipo", ipo_length_normalize=False) == value("ipo")


def test_ipo_length_normalized():
    """Chosen: +1 over 4 tokens = 0.25; rejected: −1 over 2 tokens = −0.5; h = 0.75; (0.75 − 1)² = 0.0625."""
    assert value("ipo", ipo_length_normalize=True) == pytest.approx(0.0625, abs=1e-12)


def test_ipo_length_normalized_guards_empty_responses():
    """A 0-token response counts as length 1 (as in TRL) instead of dividing by zero."""
    got = value("ipo", ipo_length_normalize=True, rejected_lengths=torch.tensor([0]))
    assert got == pytest.approx((0.25 + 1.0 - 1.0) ** 2, abs=1e-12)


def test_soft():
    """q = 0.8: 0.8·ℓ(1) + 0.2·ℓ(−1) = ℓ(1) + 0.2 = 0.51326…; q = 0.5 at u = 0: log 2 whatever β."""
    q = lambda x: torch.tensor([x], dtype=torch.float64)  # noqa: E731
    assert value("soft", soft_labels=q(0.8)) == pytest.approx(L1 + 0.2, abs=1e-12)
    tie = one_pair(soft_labels=q(0.5), policy_rejected_logps=torch.tensor([-1.0], dtype=torch.float64))
    assert pair_losses("soft", **tie).item() == pytest.approx(math.log(2), abs=1e-12)


def test_soft_without_labels_names_the_fix():
    with pytest.raises(ValueError, match="soft_labels"):
        pair_losses("soft", **one_pair())


def test_sft():
    """−log π(y_w) / |y_w| = −(−1) / 4 = 0.25 (β plays no part)."""
    assert value("sft") == pytest.approx(0.25, abs=1e-12)
    assert value("sft", beta=7.0) == pytest.approx(0.25, abs=1e-12)


def test_combined_dpo_plus_tenth_sft():
    """ℓ(1) + 0.1·0.25 = 0.33826…"""
    got = combined_pair_losses({"dpo": 1.0, "sft": 0.1}, **one_pair())
    assert got.shape == (1,)
    assert got.item() == pytest.approx(L1 + 0.025, abs=1e-12)
    assert got.item() == pytest.approx(0.3382616875, abs=1e-10)


# ---- invariants between losses -------------------------------------------------------------


def test_cdpo_with_zero_smoothing_is_dpo():
    pairs = random_pairs()
    torch.testing.assert_close(pair_losses("cdpo", label_smoothing=0.0, **pairs), pair_losses("dpo", **pairs))


def test_rdpo_with_zero_epsilon_is_dpo():
    pairs = random_pairs()
    torch.testing.assert_close(pair_losses("rdpo", rdpo_epsilon=0.0, **pairs), pair_losses("dpo", **pairs))


def test_soft_with_q_one_is_dpo_and_q_one_minus_eps_is_cdpo():
    pairs = random_pairs()
    ones = torch.ones(8, dtype=torch.float64)
    torch.testing.assert_close(pair_losses("soft", soft_labels=ones, **pairs), pair_losses("dpo", **pairs))
    eps = 0.2
    torch.testing.assert_close(
        pair_losses("soft", soft_labels=ones * (1 - eps), **pairs),
        pair_losses("cdpo", label_smoothing=eps, **pairs),
    )


def flip(pairs: dict) -> dict:
    """The same pairs with chosen and rejected swapped (policy and reference alike)."""
    return dict(
        pairs,
        policy_chosen_logps=pairs["policy_rejected_logps"],
        policy_rejected_logps=pairs["policy_chosen_logps"],
        reference_chosen_logps=pairs["reference_rejected_logps"],
        reference_rejected_logps=pairs["reference_chosen_logps"],
        chosen_lengths=pairs["rejected_lengths"],
        rejected_lengths=pairs["chosen_lengths"],
    )


def test_soft_loss_is_invariant_under_a_flip_of_pair_and_label():
    """Flipping the pair turns u into −u; with q → 1 − q the soft loss is unchanged:
    q·ℓ(u) + (1−q)·ℓ(−u) = (1−q)·ℓ(−u) + q·ℓ(u). By hand at u = 1, q = 0.8: both 0.8·ℓ(1) +
    0.2·ℓ(−1) = ℓ(1) + 0.2 = 0.51326…; the flip alone (q kept) gives 0.8·ℓ(−1) + 0.2·ℓ(1) = ℓ(1) + 0.8."""
    q = torch.tensor([0.8], dtype=torch.float64)
    pair = one_pair()
    assert pair_losses("soft", soft_labels=q, **flip(pair)).item() == pytest.approx(L1 + 0.8, abs=1e-12)
    assert pair_losses("soft", soft_labels=1 - q, **flip(pair)).item() == pytest.approx(L1 + 0.2, abs=1e-12)
    assert pair_losses("soft", soft_labels=q, **pair).item() == pytest.approx(L1 + 0.2, abs=1e-12)
    pairs = random_pairs()
    labels = torch.rand(8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(pair_losses("soft", soft_labels=1 - labels, **flip(pairs)),
                               pair_losses("soft", soft_labels=labels, **pairs), rtol=1e-12, atol=1e-12)


def test_rdpo_is_unbiased_under_label_flips():
    """(1−ε)·rdpo(u) + ε·rdpo(−u) = ℓ(u): in expectation over flips of rate ε, rDPO is clean DPO.

    Expanding: [(1−ε)² − ε²]·ℓ(u) / (1 − 2ε) = ℓ(u), since (1−ε)² − ε² = 1 − 2ε.
    """
    pairs = random_pairs()
    flipped = flip(pairs)
    eps = 0.3
    expected = (1 - eps) * pair_losses("rdpo", rdpo_epsilon=eps, **pairs) + eps * pair_losses(
        "rdpo", rdpo_epsilon=eps, **flipped
    )
    torch.testing.assert_close(expected, pair_losses("dpo", **pairs))


@pytest.mark.parametrize("name", ["dpo", "ipo", "sft"])
def test_float32_inputs_and_long_lengths_give_the_float64_values(name):
    """Summed log-probs of tens of nats in float32 (spacing ~4e-6 at 40) with int64 lengths: the
    same losses as in float64 to float32 precision, returned in float32."""
    pairs = random_pairs()
    single = {k: (v.float() if v.is_floating_point() else v) for k, v in pairs.items()}
    kw = {"ipo_length_normalize": True} if name == "ipo" else {}
    out32, out64 = pair_losses(name, **single, **kw), pair_losses(name, **pairs, **kw)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), out64, rtol=1e-5, atol=1e-5)
    assert out64.std() > 0.1  # the 8 pairs really differ


def test_large_margins_stay_finite():
    """float32, β = 1, h = 1 − (−999) = 1000: ℓ(1000) = 0 and ℓ(−1000) = 1000, where a naive
    log(sigmoid(−1000)) would be log(0) = −inf. So dpo = 0 and cdpo(ε = 0.1) = 0.1·1000 = 100."""
    t = lambda x: torch.tensor([x], dtype=torch.float32)  # noqa: E731
    big = one_pair(
        policy_chosen_logps=t(-1.0),
        policy_rejected_logps=t(-1001.0),
        reference_chosen_logps=t(-2.0),
        reference_rejected_logps=t(-2.0),
        beta=1.0,
    )
    assert pair_losses("dpo", **big).item() == 0.0
    assert pair_losses("cdpo", label_smoothing=0.1, **big).item() == pytest.approx(100.0)


# ---- errors --------------------------------------------------------------------------------


def test_unknown_loss_lists_known_and_closest():
    with pytest.raises(ValueError, match=r"unknown loss 'dpoo' \(closest: 'dpo'\); known: dpo, ipo"):
        pair_losses("dpoo", **one_pair())


def test_unknown_aggregation_lists_known_and_closest():
    with pytest.raises(ValueError, match=r"closest: 'drdpo'.*known: mean, drdpo"):
        aggregate(torch.ones(3), "dr_dpo")


def test_per_token_inputs_are_rejected():
    pairs = random_pairs()
    pairs["policy_chosen_logps"] = torch.zeros(8, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="sum per-token log-probs"):
        pair_losses("dpo", **pairs)


@pytest.mark.parametrize(
    "name, overrides",
    [("rdpo", {"rdpo_epsilon": 0.5}), ("cdpo", {"label_smoothing": 0.6}), ("dpo", {"beta": 0.0})],
)
def test_out_of_range_hyperparameters(name, overrides):
    with pytest.raises(ValueError, match="must"):
        pair_losses(name, **one_pair(**overrides))


def test_empty_combination():
    with pytest.raises(ValueError, match="at least one"):
        combined_pair_losses({}, **one_pair())


# ---- aggregation: mean and Dr.DPO ----------------------------------------------------------


def test_mean():
    assert aggregate(torch.tensor([1.0, 2.0, 6.0]), "mean").item() == pytest.approx(3.0)


def test_drdpo_hand_worked():
    """ℓ = (0, log 3), β′ = 1: mean of e^−ℓ = (1 + 1/3)/2 = 2/3, so −log(2/3) = log 1.5 = 0.405465…

    Below the mean (log 3)/2 = 0.549306…; weights softmax(−ℓ) = (1, 1/3)/(4/3) = (0.75, 0.25).
    """
    losses = torch.tensor([0.0, math.log(3.0)], dtype=torch.float64)
    assert aggregate(losses, "drdpo").item() == pytest.approx(math.log(1.5), abs=1e-12)
    torch.testing.assert_close(drdpo_weights(losses), torch.tensor([0.75, 0.25], dtype=torch.float64))


def test_drdpo_large_beta_is_the_mean():
    """−β′ log mean exp(−ℓ/β′) = mean(ℓ) − Var(ℓ)/(2β′) + O(β′^−2)."""
    losses = pair_losses("dpo", **random_pairs())
    mean = losses.mean().item()
    assert aggregate(losses, "drdpo", drdpo_beta=1e4).item() == pytest.approx(mean, abs=1e-3)
    second_order = mean - losses.var(unbiased=False).item() / 2e4
    assert aggregate(losses, "drdpo", drdpo_beta=1e4).item() == pytest.approx(second_order, abs=1e-7)


def test_drdpo_small_beta_is_the_min():
    """For every β′: min ℓ ≤ Dr.DPO ≤ min ℓ + β′·log B, and Dr.DPO ≤ mean (Jensen)."""
    losses = pair_losses("dpo", **random_pairs())
    low, mean = losses.min().item(), losses.mean().item()
    for beta_prime in (1e-3, 0.1, 1.0, 10.0):
        got = aggregate(losses, "drdpo", drdpo_beta=beta_prime).item()
        assert low - 1e-12 <= got <= min(low + beta_prime * math.log(8), mean) + 1e-12
    assert aggregate(losses, "drdpo", drdpo_beta=1e-3).item() == pytest.approx(low, abs=3e-3)


def test_drdpo_stable_for_large_losses():
    """exp(−1000) underflows; logsumexp does not: ℓ = (1000, 1001) at β′ = 1 is 1000 + log 2 − log(1 + e^−1)."""
    got = aggregate(torch.tensor([1000.0, 1001.0], dtype=torch.float64), "drdpo").item()
    assert got == pytest.approx(1000.0 + math.log(2) - math.log1p(math.exp(-1.0)), abs=1e-9)


def test_drdpo_weights_detached_and_normalised():
    """w_i = e^{−ℓ_i/β′} / Σ_j e^{−ℓ_j/β′}: detached, sum 1, and w_i/w_j = e^{−(ℓ_i − ℓ_j)/β′}."""
    pairs = random_pairs(requires_grad=True)
    losses = pair_losses("dpo", **pairs)
    w = drdpo_weights(losses, drdpo_beta=0.5)
    assert not w.requires_grad
    assert w.sum().item() == pytest.approx(1.0, abs=1e-12)
    ratios = w / w[0]
    torch.testing.assert_close(ratios, torch.exp(-(losses.detach() - losses[0].item()) / 0.5), rtol=1e-10, atol=0)


def test_drdpo_gradient_equals_weighted_sum_gradient():
    """∇[−β′ log (1/B) Σ e^{−ℓ_i/β′}] = Σ_i softmax(−ℓ/β′)_i ∇ℓ_i."""
    pairs = random_pairs(requires_grad=True)
    policy = [pairs["policy_chosen_logps"], pairs["policy_rejected_logps"]]
    losses = pair_losses("dpo", beta=0.3, **pairs)
    g_drdpo = torch.autograd.grad(aggregate(losses, "drdpo", drdpo_beta=0.7), policy, retain_graph=True)
    g_weighted = torch.autograd.grad((drdpo_weights(losses, 0.7) * losses).sum(), policy)
    torch.testing.assert_close(g_drdpo, g_weighted, rtol=0, atol=1e-12)
    assert g_drdpo[0].abs().max() > 1e-3  # not trivially zero


def _linear_policy(n: int = 8, dim: int = 5, seed: int = 1):
    """Summed log-probs = features @ θ: a stand-in model with one parameter vector θ (float64)."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(2, n, dim, generator=g, dtype=torch.float64)
    reference = torch.randn(2, n, generator=g, dtype=torch.float64) - 20.0
    lengths = torch.randint(3, 30, (2, n), generator=g)
    theta = torch.randn(dim, generator=g, dtype=torch.float64).requires_grad_(True)

    def losses(idx: slice | torch.Tensor) -> torch.Tensor:
        logps = features[:, idx] @ theta - 20.0
        return combined_pair_losses(
            {"dpo": 1.0, "sft": 0.1},
            policy_chosen_logps=logps[0],
            policy_rejected_logps=logps[1],
            reference_chosen_logps=reference[0, idx],
            reference_rejected_logps=reference[1, idx],
            chosen_lengths=lengths[0, idx],
            rejected_lengths=lengths[1, idx],
            beta=0.5,
        )

    return theta, losses


def test_drdpo_over_micro_batches_matches_the_full_batch():
    """8 pairs as 2 micro-batches of 4: weights from all 8 (no grad), then Σ w_i ℓ_i per micro-batch.

    The accumulated gradient equals autograd of Dr.DPO over all 8 pairs; Dr.DPO taken within
    each micro-batch and averaged (the naive accumulation) does not.
    """
    theta, losses = _linear_policy()
    full = slice(0, 8)
    (g_full,) = torch.autograd.grad(aggregate(losses(full), "drdpo", drdpo_beta=1.0), theta)

    with torch.no_grad():
        weights = drdpo_weights(losses(full), drdpo_beta=1.0)
    for micro in (slice(0, 4), slice(4, 8)):
        (weights[micro] * losses(micro)).sum().backward()
    torch.testing.assert_close(theta.grad, g_full, rtol=0, atol=1e-6)

    theta.grad = None
    for micro in (slice(0, 4), slice(4, 8)):
        (aggregate(losses(micro), "drdpo") / 2).backward()
    assert (theta.grad - g_full).abs().max() > 1e-3


# ---- metrics -------------------------------------------------------------------------------


def test_preference_rewards():
    """β = 0.5: chosen 0.5·(+1) = 0.5, rejected 0.5·(−1) = −0.5, margin 1, accuracy 1."""
    pair = one_pair(policy_chosen_logps=torch.tensor([-1.0], dtype=torch.float64, requires_grad=True))
    rewards = preference_rewards(
        pair["policy_chosen_logps"],
        pair["policy_rejected_logps"],
        pair["reference_chosen_logps"],
        pair["reference_rejected_logps"],
        beta=0.5,
    )
    assert rewards.chosen_rewards.item() == pytest.approx(0.5)
    assert rewards.rejected_rewards.item() == pytest.approx(-0.5)
    assert rewards.margins.item() == pytest.approx(1.0)
    assert rewards.accuracies.item() == 1.0
    assert not rewards.chosen_rewards.requires_grad
