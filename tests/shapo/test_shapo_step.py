"""Invariants of the ShaPO step (DESIGN.md §2.3), checked against independent computations.

Models run in float64 where the check is numerical, in float32 where it is bit-exactness.
"""

from __future__ import annotations

import math

import pytest
import torch
from shapo_helpers import grads, make_setup, settings, snapshot

import robalign.training.shapo as shapo_module
from robalign.training.shapo import shapo_due, shapo_step
from robalign.training.step import accumulate_gradients
from robalign.training.subspace import build_mask, resolve_parameter_mask


def masked_gradient(model, pm) -> torch.Tensor:
    """M⊙g as one flat vector, from whatever is in .grad (written independently of shapo.py)."""
    parts = []
    for e in pm.entries:
        g = e.param.grad
        parts.append((g if e.axis is None else g.index_select(e.axis, e.index)).flatten())
    return torch.cat(parts)


def capture_perturbed_weights(monkeypatch) -> list[dict]:
    """Record every parameter as the second (perturbed) pass sees it."""
    seen, calls = [], []
    real = shapo_module.accumulate_gradients

    def spy(model, *args, **kwargs):
        calls.append(1)
        if len(calls) % 2 == 0:
            seen.append(snapshot(model))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(shapo_module, "accumulate_gradients", spy)
    return seen


def neuron_mask(model, fraction=0.05, seed=3):
    return resolve_parameter_mask(model, build_mask(model, fraction, "random", seed=seed))


@pytest.mark.parametrize("fixture", ["nano_llama", "nano_gpt2"])
def test_rho_zero_is_exactly_the_plain_step(request, tiny_tokenizer, fixture):
    """GPT-2 keeps its 0.1 dropout in train mode: the replayed RNG makes both passes draw the same masks."""
    setup = make_setup(request.getfixturevalue(fixture), tiny_tokenizer, dtype=torch.float32)
    model, batches = setup.model, setup.batches(4)
    assert fixture == "nano_llama" or model.config.resid_pdrop > 0
    start = snapshot(model)
    updated = []
    for use_shapo in (False, True):
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(start[n])
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        torch.manual_seed(11)
        if use_shapo:
            metrics = shapo_step(model, batches, setup.reference, settings(), neuron_mask(model), 0.0)
            assert metrics["shapo/eps_norm"] == 0.0 and metrics["shapo/loss_gain"] == 0.0
        else:
            accumulate_gradients(model, batches, setup.reference, settings())
        opt.step()
        updated.append(snapshot(model))
        model.zero_grad(set_to_none=True)
    assert all(torch.equal(updated[0][n], updated[1][n]) for n in start)


@pytest.mark.parametrize("mask_kind", ["neurons", "uniform"])
def test_weights_after_restore_are_bit_identical(tiny_tokenizer, nano_llama, mask_kind):
    setup = make_setup(nano_llama, tiny_tokenizer, dtype=torch.float32)
    model = setup.model
    pm = neuron_mask(model) if mask_kind == "neurons" else resolve_parameter_mask(model, "uniform")
    before = snapshot(model)
    metrics = shapo_step(model, setup.batches(4), setup.reference, settings(), pm, 0.37)
    assert metrics["shapo/loss_gain"] > 0 and metrics["shapo/eps_norm"] == pytest.approx(0.37, rel=1e-3)
    after = snapshot(model)
    assert all(torch.equal(before[n], after[n]) for n in before)  # bit for bit, not approximately


@pytest.mark.parametrize("fixture", ["nano_llama", "nano_gpt2"])
def test_only_masked_coordinates_are_perturbed(request, tiny_tokenizer, monkeypatch, fixture):
    setup = make_setup(request.getfixturevalue(fixture), tiny_tokenizer)
    model = setup.model
    pm = neuron_mask(model)
    seen = capture_perturbed_weights(monkeypatch)
    before = snapshot(model)
    shapo_step(model, setup.batches(8), setup.reference, settings(), pm, 0.1)
    (perturbed,) = seen
    masked = {e.name: e for e in pm.entries}
    moved_total = 0
    for name, theta in before.items():
        moved = perturbed[name] != theta
        if name not in masked:
            assert not moved.any(), f"{name} moved but is outside the mask"
            continue
        e = masked[name]
        inside = torch.zeros_like(moved).index_fill_(e.axis, e.index, True)
        assert not (moved & ~inside).any(), f"{name}: a coordinate outside the selected neurons moved"
        moved_total += int(moved.sum())
    assert moved_total > 0.99 * pm.numel  # (nearly) every masked coordinate has a non-zero gradient


def test_perturbation_direction_gain_and_second_gradient(llama_setup, monkeypatch):
    """ε = ρ·M⊙g/‖M⊙g‖; L(θ+ε) − L(θ) ≈ ρ·‖M⊙g‖ for small ρ; g′ = ∇L(θ+ε)."""
    s = llama_setup
    model, batches, cfg, rho = s.model, s.batches(8), settings(), 1e-3
    pm = neuron_mask(model)
    accumulate_gradients(model, batches, s.reference, cfg)  # plain g, computed independently
    g = masked_gradient(model, pm)
    model.zero_grad(set_to_none=True)
    seen = capture_perturbed_weights(monkeypatch)
    before = snapshot(model)
    metrics = shapo_step(model, batches, s.reference, cfg, pm, rho)
    g_prime = grads(model)
    eps = torch.cat([(seen[0][e.name] - before[e.name]).index_select(e.axis, e.index).flatten() for e in pm.entries])
    torch.testing.assert_close(eps, rho * g / g.norm(), rtol=1e-9, atol=1e-15)
    assert metrics["shapo/grad_norm_masked"] == pytest.approx(g.norm().item(), rel=1e-6)
    assert metrics["shapo/loss_gain"] > 0
    assert metrics["shapo/loss_gain"] == pytest.approx(rho * g.norm().item(), rel=0.05)  # first order
    # g′ equals the plain gradient at the perturbed weights
    monkeypatch.undo()
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(seen[0][n])
    accumulate_gradients(model, batches, s.reference, cfg)
    expected = grads(model)
    assert expected.keys() == g_prime.keys()
    for n in expected:
        torch.testing.assert_close(g_prime[n], expected[n], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("aggregation", ["mean", "drdpo"])
def test_accumulation_gives_the_full_batch_step(llama_setup, aggregation):
    """4 micro-batches of 2 give the ShaPO gradient of one batch of 8 (Dr.DPO couples all 8)."""
    s = llama_setup
    pm = neuron_mask(s.model)
    results = []
    for size in (8, 2):
        s.model.zero_grad(set_to_none=True)
        metrics = shapo_step(s.model, s.batches(size), s.reference, settings(aggregation), pm, 0.05)
        results.append((metrics, grads(s.model)))
    (m_full, g_full), (m_micro, g_micro) = results
    assert len(g_full) == sum(1 for p in s.model.parameters())
    for key in ("loss", "shapo/loss_gain", "shapo/grad_norm_masked"):
        assert m_micro[key] == pytest.approx(m_full[key], rel=1e-6, abs=1e-9)
    for n in g_full:
        torch.testing.assert_close(g_micro[n], g_full[n], rtol=1e-6, atol=1e-10)


def test_gradients_already_accumulated_survive(llama_setup):
    s = llama_setup
    pm = neuron_mask(s.model)
    shapo_step(s.model, s.batches(8), s.reference, settings(), pm, 0.05)
    alone = grads(s.model)
    earlier = {n: torch.randn_like(p) for n, p in s.model.named_parameters()}
    for n, p in s.model.named_parameters():
        p.grad = earlier[n].clone()
    shapo_step(s.model, s.batches(8), s.reference, settings(), pm, 0.05)
    for n, p in s.model.named_parameters():
        torch.testing.assert_close(p.grad, earlier[n] + alone[n], rtol=1e-12, atol=1e-12)


def test_non_finite_gradient_skips_without_touching_weights(llama_setup):
    s = llama_setup
    pm = neuron_mask(s.model)
    chosen = dict(s.reference[0])
    chosen[s.pairs[0].id] = math.nan
    before = snapshot(s.model)
    with pytest.warns(UserWarning, match="non-finite gradient"):
        metrics = shapo_step(s.model, s.batches(4), (chosen, s.reference[1]), settings(), pm, 0.05)
    assert metrics["shapo/skipped"] == 1.0 and metrics["shapo/eps_norm"] == 0.0
    assert all(torch.equal(before[n], p) for n, p in s.model.named_parameters())
    norm = torch.nn.utils.clip_grad_norm_([p for p in s.model.parameters() if p.grad is not None], 10.0)
    assert not torch.isfinite(norm)  # so the trainer skips the optimizer step


def test_bf16_autocast_perturbation_is_visible_and_tiny_ones_round_away(nano_llama, tiny_tokenizer):
    """With fp32 master weights and bf16 autocast a normalised ρ moves the loss; a perturbation of
    the official code's size (~1e-6 in norm) leaves almost every weight's bf16 value unchanged, and
    the step says so through shapo/eps_autocast_moved."""
    s = make_setup(nano_llama, tiny_tokenizer, dtype=torch.float32)
    pm = resolve_parameter_mask(s.model, "uniform")
    before = snapshot(s.model)
    big = shapo_step(s.model, s.batches(4), s.reference, settings(), pm, 0.05, autocast_dtype=torch.bfloat16)
    s.model.zero_grad(set_to_none=True)
    tiny = shapo_step(s.model, s.batches(4), s.reference, settings(), pm, 1e-6, autocast_dtype=torch.bfloat16)
    assert big["shapo/loss_gain"] > 0 and big["shapo/eps_autocast_moved"] > 0.1
    # ~1e-9 per coordinate is already near the fp32 spacing of weights ~0.02: the applied norm is honest
    assert tiny["shapo/eps_norm"] == pytest.approx(1e-6, rel=0.1)
    assert tiny["shapo/eps_autocast_moved"] < 1e-3
    assert all(torch.equal(before[n], p) for n, p in s.model.named_parameters())


def test_lora_step_perturbs_only_lora_a_columns(nano_llama, tiny_tokenizer, monkeypatch):
    from peft import LoraConfig, get_peft_model

    s = make_setup(nano_llama, tiny_tokenizer)
    model = get_peft_model(s.model, LoraConfig(r=4, target_modules=["down_proj", "q_proj"]))
    with torch.no_grad():  # B starts at 0, which would make ∇A = 0
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    pm = neuron_mask(model)
    seen = capture_perturbed_weights(monkeypatch)
    before = snapshot(model)
    metrics = shapo_step(model, s.batches(8), s.reference, settings(), pm, 0.1)
    moved = {n for n in before if not torch.equal(before[n], seen[0][n])}
    assert moved and all(".mlp.down_proj.lora_A." in n for n in moved)
    assert metrics["shapo/loss_gain"] > 0 and metrics["shapo/mask_params"] == 51 * 4
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_interval():
    assert [s for s in range(12) if shapo_due(s, 5)] == [0, 5, 10]
    assert all(shapo_due(s, 1) for s in range(5))


def test_a_perturbation_rounded_away_by_coarse_weights_is_reported(nano_llama, tiny_tokenizer):
    """‖θ+ε − θ‖ is measured after ε is stored. bf16 weights (spacing ≈ 1.2e-4 at |w| = 0.02) keep
    only the largest coordinates of ρ = 1e-4 spread over ~0.8M weights (≈ 1e-7 each on average):
    measured ratio 0.12, so a warning and the metric. fp32 weights store ρ = 0.05 to within
    rounding: ratio 1, no warning."""
    import warnings

    coarse = make_setup(nano_llama, tiny_tokenizer, dtype=torch.bfloat16)
    pm = resolve_parameter_mask(coarse.model, "uniform")
    with pytest.warns(RuntimeWarning, match="well below ρ = 0.0001"):
        metrics = shapo_step(coarse.model, coarse.batches(8), coarse.reference, settings(), pm, 1e-4)
    assert metrics["shapo/grad_norm_masked"] > 0 and metrics["shapo/eps_norm_ratio"] < 0.25
    fine = make_setup(nano_llama, tiny_tokenizer, dtype=torch.float32)
    pm = resolve_parameter_mask(fine.model, "uniform")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        metrics = shapo_step(fine.model, fine.batches(8), fine.reference, settings(), pm, 0.05)
    assert metrics["shapo/eps_norm_ratio"] == pytest.approx(1.0, rel=1e-3)
