"""``training.shapo.ascent=previous``: ε from the gradient of the previous optimizer step, one
forward-backward per ShaPO step (robalign.training.shapo, docs/methods.md#3-the-step-trainingshapo).

Hand-worked: a previous gradient that is 3 and 4 on two masked coordinates and 0 elsewhere has
norm 5, so ε moves exactly those two coordinates, by 0.6·ρ and 0.8·ρ.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from shapo_helpers import grads, make_setup, settings, snapshot

import robalign.training.shapo as shapo_module
import robalign.training.trainer as trainer_module
from robalign.config import ConfigError, TrainConfig, load_config, validate_train_config
from robalign.training.shapo import masked_gradient, shapo_step
from robalign.training.step import accumulate_gradients
from robalign.training.subspace import build_mask, resolve_parameter_mask
from robalign.training.trainer import train

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "shapo_step.py"


def neuron_mask(model, fraction=0.05, seed=3):
    return resolve_parameter_mask(model, build_mask(model, fraction, "random", seed=seed))


def down_proj_slices(named: dict[str, torch.Tensor], neurons: list[torch.Tensor]) -> torch.Tensor:
    """The masked coordinates of a nano Llama (columns of each layer's down_proj), written here
    from the parameter names rather than through robalign's mask mapping."""
    return torch.cat([named[f"model.layers.{i}.mlp.down_proj.weight"].index_select(1, idx).flatten()
                      for i, idx in enumerate(neurons)])


class PassCounter:
    """Effective-batch passes (calls of accumulate_gradients from shapo.py), model forwards and
    backwards; and the weights every pass of the step sees."""

    def __init__(self, monkeypatch, model):
        self.passes, self.forwards, self.backwards, self.seen = 0, 0, 0, []
        real_pass, real_backward = shapo_module.accumulate_gradients, torch.Tensor.backward

        def spy_pass(m, *args, **kwargs):
            self.passes += 1
            self.seen.append(snapshot(m))
            return real_pass(m, *args, **kwargs)

        def spy_backward(t, *args, **kwargs):
            self.backwards += 1
            return real_backward(t, *args, **kwargs)

        monkeypatch.setattr(shapo_module, "accumulate_gradients", spy_pass)
        monkeypatch.setattr(torch.Tensor, "backward", spy_backward)
        model.register_forward_pre_hook(lambda *_: setattr(self, "forwards", self.forwards + 1))


# --- the step itself -------------------------------------------------------------------------


def test_hand_made_previous_gradient_moves_two_coordinates_by_0_6_and_0_8_rho(llama_setup, monkeypatch):
    """g_prev = (3, 4, 0, …) on the mask: ε = ρ·(0.6, 0.8, 0, …); one pass, at θ+ε; its loss is
    L(θ+ε) and its gradient ∇L(θ+ε), each checked by an independent plain pass there."""
    s, rho = llama_setup, 0.1
    model, batches, cfg = s.model, s.batches(8), settings()
    pm = neuron_mask(model)
    e = pm.entries[0]
    assert e.axis == 1  # Llama down_proj (d_model, d_ff): a neuron is a column; the flat order is row-major
    previous = torch.zeros(pm.numel, dtype=torch.float64)
    previous[0], previous[1] = 3.0, 4.0  # row 0 of the first two selected columns
    counter = PassCounter(monkeypatch, model)
    before = snapshot(model)
    metrics = shapo_step(model, batches, s.reference, cfg, pm, rho, ascent="previous", previous_gradient=previous)
    assert (counter.passes, counter.backwards) == (1, 1)
    (perturbed,) = counter.seen
    expected = {n: t.clone() for n, t in before.items()}
    expected[e.name][0, e.index[0]] += 0.6 * rho
    expected[e.name][0, e.index[1]] += 0.8 * rho
    for n in before:
        torch.testing.assert_close(perturbed[n], expected[n], rtol=0, atol=1e-15)
    assert sum(int((perturbed[n] != before[n]).sum()) for n in before) == 2
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # restored bit for bit
    assert metrics["shapo/grad_norm_masked"] == 5.0 and metrics["shapo/ascent_reused"] == 1.0
    assert metrics["shapo/eps_norm"] == pytest.approx(rho, rel=1e-12)
    assert "shapo/loss_gain" not in metrics  # L(θ) is never evaluated
    g_prime = grads(model)
    # the independent check: a plain pass at the perturbed weights
    monkeypatch.undo()
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(perturbed[n])
    plain = accumulate_gradients(model, batches, s.reference, cfg)
    assert metrics["loss"] == metrics["shapo/loss_perturbed"] == pytest.approx(plain["loss"], rel=1e-12)
    for n, g in grads(model).items():
        torch.testing.assert_close(g_prime[n], g, rtol=1e-10, atol=1e-14)
    # ⟨ε, M⊙g′⟩ on the two moved coordinates only; cosine = that over ρ·‖M⊙g′‖
    g_masked = masked_gradient(pm)
    dot = rho * (0.6 * g_masked[0] + 0.8 * g_masked[1]).item()
    assert metrics["shapo/first_order_gain"] == pytest.approx(dot, rel=1e-9)
    assert metrics["shapo/ascent_cosine"] == pytest.approx(dot / (rho * g_masked.norm().item()), rel=1e-9)


@pytest.mark.parametrize("ascent, has_previous, passes, backwards, reused", [
    ("fresh", True, 2, 4, None), ("previous", True, 1, 2, 1.0), ("previous", False, 2, 4, 0.0)],
    ids=["fresh", "previous", "previous-without-gradient"])
def test_passes_per_shapo_step(llama_setup, monkeypatch, ascent, has_previous, passes, backwards, reused):
    """Two micro-batches of 4: the fresh step runs both passes over both (2 calls, 4 forwards, 4
    backwards); the cheap one a single pass (1, 2, 2); with no previous gradient it is the fresh step."""
    s = llama_setup
    pm = neuron_mask(s.model)
    g = torch.randn(pm.numel, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    counter = PassCounter(monkeypatch, s.model)
    metrics = shapo_step(s.model, s.batches(4), s.reference, settings(), pm, 0.05, ascent=ascent,
                         previous_gradient=g if has_previous else None)
    assert (counter.passes, counter.forwards, counter.backwards) == (passes, backwards, backwards)
    assert ("shapo/loss_gain" in metrics) == (passes == 2)
    assert metrics.get("shapo/ascent_reused") == reused


def test_fresh_is_the_default_and_ignores_a_previous_gradient(llama_setup):
    """ascent="fresh" with a gradient passed is the default call, bit for bit (metrics and .grad)."""
    s = llama_setup
    pm = neuron_mask(s.model)
    runs = []
    for kwargs in ({}, {"ascent": "fresh", "previous_gradient": torch.ones(pm.numel, dtype=torch.float64)}):
        s.model.zero_grad(set_to_none=True)
        runs.append((shapo_step(s.model, s.batches(4), s.reference, settings(), pm, 0.05, **kwargs), grads(s.model)))
    assert runs[0][0] == runs[1][0] and "shapo/ascent_reused" not in runs[0][0]
    assert all(torch.equal(runs[0][1][n], runs[1][1][n]) for n in runs[0][1])
    with pytest.raises(ValueError, match="fresh, previous"):
        shapo_step(s.model, s.batches(4), s.reference, settings(), pm, 0.05, ascent="stale")


@pytest.mark.parametrize("bad", [math.nan, 0.0], ids=["non-finite", "zero"])
def test_unusable_previous_gradient_falls_back_to_the_fresh_step(llama_setup, bad):
    s = llama_setup
    pm = neuron_mask(s.model)
    fresh = shapo_step(s.model, s.batches(8), s.reference, settings(), pm, 0.05)
    expected = grads(s.model)
    s.model.zero_grad(set_to_none=True)
    previous = torch.zeros(pm.numel, dtype=torch.float64)
    previous[0] = bad
    got = shapo_step(s.model, s.batches(8), s.reference, settings(), pm, 0.05, ascent="previous",
                     previous_gradient=previous)
    assert got == fresh | {"shapo/ascent_reused": 0.0}
    assert all(torch.equal(expected[n], g) for n, g in grads(s.model).items())


@pytest.mark.parametrize("aggregation", ["mean", "drdpo"])
def test_accumulation_gives_the_full_batch_cheap_step(llama_setup, aggregation):
    """4 micro-batches of 2 give the cheap step of one batch of 8 (Dr.DPO's weights couple all 8)."""
    s = llama_setup
    pm = neuron_mask(s.model)
    previous = torch.randn(pm.numel, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    results = []
    for size in (8, 2):
        s.model.zero_grad(set_to_none=True)
        metrics = shapo_step(s.model, s.batches(size), s.reference, settings(aggregation), pm, 0.05,
                             ascent="previous", previous_gradient=previous)
        results.append((metrics, grads(s.model)))
    (m_full, g_full), (m_micro, g_micro) = results
    for key in ("loss", "shapo/first_order_gain", "shapo/ascent_cosine", "rewards/margins"):
        assert m_micro[key] == pytest.approx(m_full[key], rel=1e-6, abs=1e-9), key
    for n in g_full:
        torch.testing.assert_close(g_micro[n], g_full[n], rtol=1e-6, atol=1e-10)


def test_gradients_already_accumulated_survive_the_cheap_step(llama_setup):
    s = llama_setup
    pm = neuron_mask(s.model)
    previous = torch.randn(pm.numel, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    step = dict(ascent="previous", previous_gradient=previous)
    shapo_step(s.model, s.batches(8), s.reference, settings(), pm, 0.05, **step)
    alone = grads(s.model)
    earlier = {n: torch.randn_like(p) for n, p in s.model.named_parameters()}
    for n, p in s.model.named_parameters():
        p.grad = earlier[n].clone()
    shapo_step(s.model, s.batches(8), s.reference, settings(), pm, 0.05, **step)
    for n, p in s.model.named_parameters():
        torch.testing.assert_close(p.grad, earlier[n] + alone[n], rtol=1e-12, atol=1e-12)


def test_bf16_autocast_cheap_step(nano_llama, tiny_tokenizer, monkeypatch):
    """fp32 master weights, bf16 compute: ε = ρ·g_prev/‖g_prev‖ lands in fp32, moves > 10 % of the
    bf16 values (as the fresh step's does, test_shapo_step.py), and θ comes back bit for bit."""
    s = make_setup(nano_llama, tiny_tokenizer, dtype=torch.float32)
    pm = resolve_parameter_mask(s.model, "uniform")
    accumulate_gradients(s.model, s.batches(4), s.reference, settings(), autocast_dtype=torch.bfloat16)
    previous = masked_gradient(pm)
    s.model.zero_grad(set_to_none=True)
    counter = PassCounter(monkeypatch, s.model)
    before = snapshot(s.model)
    metrics = shapo_step(s.model, s.batches(4), s.reference, settings(), pm, 0.05, autocast_dtype=torch.bfloat16,
                         ascent="previous", previous_gradient=previous)
    assert counter.passes == 1 and previous.dtype == torch.float32
    assert metrics["shapo/eps_autocast_moved"] > 0.1 and metrics["shapo/eps_norm"] == pytest.approx(0.05, rel=1e-3)
    eps = torch.cat([(counter.seen[0][e.name] - before[e.name]).flatten() for e in pm.entries])
    torch.testing.assert_close(eps, 0.05 * previous / previous.norm(), rtol=1e-3, atol=1e-7)  # fp32 rounding of θ+ε (|θ| ≤ ~1)
    assert all(torch.equal(before[n], p) for n, p in s.model.named_parameters())


# --- inside the trainer ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_mask(tmp_path_factory, nano_llama):
    """5 % of the nano model's MLP neurons, at random (ShaPO's cost does not depend on which)."""
    from robalign.models.loading import load_causal_lm

    model = load_causal_lm(str(nano_llama))
    return build_mask(model, 0.05, "random", seed=3).save(tmp_path_factory.mktemp("mask") / "random")


def config(tmp_path, model_dir, *overrides, name="run"):
    cfg = load_config(TrainConfig, None, [
        f"output_dir={tmp_path / name}", f"model.name_or_path={model_dir}", "data.train=synthetic:64",
        "data.max_length=80", "data.max_prompt_length=48", "training.per_device_batch_size=4",
        "training.learning_rate=1e-3", "training.save_model=false", "training.shapo.enabled=true",
        "training.shapo.rho=0.05", "training.shapo.ascent=previous", *overrides])
    validate_train_config(cfg)
    return cfg


def rows(result) -> list[dict]:
    lines = [json.loads(x) for x in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if "grad_norm" in r]


@pytest.mark.parametrize("interval", [1, 2])
def test_trainer_perturbs_by_the_gradient_the_previous_step_used(tmp_path, nano_llama, random_mask, monkeypatch,
                                                                 interval):
    """Every ShaPO step after the first: ε_t = ρ·M⊙g_{t−1}/‖M⊙g_{t−1}‖ with g_{t−1} the gradient in
    .grad after step t−1's last pass (g′ after a ShaPO step, the plain gradient after a plain one,
    k = 2). Captured here around the trainer's calls, masked from the parameter names."""
    from safetensors.torch import load_file

    neurons = [t for _, t in sorted(load_file(str(random_mask / "mask.safetensors")).items(),
                                    key=lambda kv: int(kv[0].split(".")[1]))]
    steps = []  # per optimizer step: the weights it starts from, the weights each pass sees, M⊙.grad after
    real_shapo, real_plain, real_pass = trainer_module.shapo_step, trainer_module.accumulate_gradients, \
        shapo_module.accumulate_gradients

    def masked_grad(model):
        return down_proj_slices({n: p.grad for n, p in model.named_parameters()}, neurons)

    def spy_pass(model, *args, **kwargs):
        steps[-1]["passes"].append(down_proj_slices(snapshot(model), neurons))
        return real_pass(model, *args, **kwargs)

    def spy_shapo(model, *args, **kwargs):
        steps.append({"shapo": True, "theta": down_proj_slices(snapshot(model), neurons), "passes": []})
        out = real_shapo(model, *args, **kwargs)
        steps[-1]["grad"] = masked_grad(model)
        return out

    def spy_plain(model, *args, **kwargs):
        out = real_plain(model, *args, **kwargs)
        steps.append({"shapo": False, "grad": masked_grad(model)})
        return out

    monkeypatch.setattr(shapo_module, "accumulate_gradients", spy_pass)
    monkeypatch.setattr(trainer_module, "shapo_step", spy_shapo)
    monkeypatch.setattr(trainer_module, "accumulate_gradients", spy_plain)
    result = train(config(tmp_path, nano_llama, f"training.shapo.mask={random_mask}", "training.max_steps=5",
                          f"training.shapo.interval={interval}"))
    assert [s["shapo"] for s in steps] == [t % interval == 0 for t in range(5)]
    logged = rows(result)
    for t, s in enumerate(steps):
        if not s["shapo"]:
            continue
        assert len(s["passes"]) == (2 if t == 0 else 1), t
        assert logged[t]["shapo/ascent_reused"] == (0.0 if t == 0 else 1.0)
        if t == 0:
            continue
        g = steps[t - 1]["grad"]
        eps = s["passes"][0] - s["theta"]
        torch.testing.assert_close(eps, 0.05 * g / g.norm(), rtol=1e-4, atol=5e-8)  # fp32 rounding of θ+ε
        assert logged[t]["shapo/grad_norm_masked"] == pytest.approx(g.norm().item(), rel=1e-5)


def test_passes_per_run_and_the_first_step(tmp_path, nano_llama, random_mask, monkeypatch):
    """4 ShaPO steps (k = 1): fresh runs 2 + 2 + 2 + 2 passes, previous 2 + 1 + 1 + 1 (the first
    step has no previous gradient and is the fresh one, so both runs log the same step 1)."""
    calls = []  # per ShaPO step, its passes
    real_pass, real_shapo = shapo_module.accumulate_gradients, trainer_module.shapo_step

    def spy_pass(*args, **kwargs):
        calls[-1] += 1
        return real_pass(*args, **kwargs)

    def spy_shapo(*args, **kwargs):
        calls.append(0)
        return real_shapo(*args, **kwargs)

    monkeypatch.setattr(shapo_module, "accumulate_gradients", spy_pass)
    monkeypatch.setattr(trainer_module, "shapo_step", spy_shapo)
    runs = {}
    for ascent in ("fresh", "previous"):
        calls.clear()
        runs[ascent] = rows(train(config(tmp_path, nano_llama, f"training.shapo.mask={random_mask}",
                                         "training.max_steps=4", f"training.shapo.ascent={ascent}", name=ascent)))
        assert calls == {"fresh": [2, 2, 2, 2], "previous": [2, 1, 1, 1]}[ascent]
    assert runs["previous"][0] == runs["fresh"][0] | {"shapo/ascent_reused": 0.0}
    assert all("shapo/ascent_reused" not in r for r in runs["fresh"])  # fresh logs what it always logged
    assert all("shapo/loss_gain" not in r and r["loss"] == r["shapo/loss_perturbed"] for r in runs["previous"][1:])


def test_rho_zero_cheap_run_equals_plain_dpo_run(tmp_path, nano_llama, random_mask):
    """ρ = 0: ε = 0, so the one pass is the plain pass at θ and the run is plain DPO, bit for bit."""
    plain = train(config(tmp_path, nano_llama, "training.shapo.enabled=false", "training.max_steps=3", name="a"))
    zero = train(config(tmp_path, nano_llama, f"training.shapo.mask={random_mask}", "training.shapo.rho=0",
                        "training.max_steps=3", name="b"))
    assert [r["shapo/ascent_reused"] for r in rows(zero)] == [0.0, 1.0, 1.0]
    assert [{k: v for k, v in r.items() if not k.startswith("shapo/")} for r in rows(zero)] == rows(plain)


def test_lora_cheap_step_waits_for_a_non_zero_adapter_gradient(tmp_path, nano_llama, random_mask):
    """peft starts lora_B at 0, so ∇lora_A = 0 on step 1 and g_prev = 0 for step 2: step 2 is a fresh
    step (its own ∇A is non-zero once B has moved), step 3 the first cheap one."""
    result = train(config(tmp_path, nano_llama, f"training.shapo.mask={random_mask}", "training.max_steps=3",
                          "lora.enabled=true", "lora.r=4", "lora.target_modules=[down_proj, q_proj]"))
    r = rows(result)
    assert [x["shapo/ascent_reused"] for x in r] == [0.0, 0.0, 1.0]
    assert r[0]["shapo/grad_norm_masked"] == 0 and r[1]["shapo/loss_gain"] > 0
    assert r[2]["shapo/grad_norm_masked"] > 0 and r[2]["shapo/eps_norm"] == pytest.approx(0.05, rel=1e-3)


def test_drdpo_accumulation_and_bf16_runs(tmp_path, nano_llama, random_mask):
    for name, extra in {"drdpo": ["loss.aggregation=drdpo", "training.gradient_accumulation_steps=2"],
                        "bf16": ["training.precision=bf16"]}.items():
        r = rows(train(config(tmp_path, nano_llama, f"training.shapo.mask={random_mask}", "training.max_steps=3",
                              *extra, name=name)))
        assert [x["shapo/ascent_reused"] for x in r] == [0.0, 1.0, 1.0], name
        assert all(math.isfinite(v) for x in r for v in x.values()), name
        assert all(x["shapo/eps_norm"] == pytest.approx(0.05, rel=1e-3) for x in r), name
        assert name != "bf16" or all(x["shapo/eps_autocast_moved"] > 0 for x in r)


def test_resume_on_a_shapo_step_is_fresh_and_on_a_plain_step_is_exact(tmp_path, nano_llama, random_mask):
    """The checkpoint does not hold g_prev. k = 1, resumed after step 3: step 4 is a ShaPO step with
    no previous gradient, so it is fresh (2 passes, shapo/loss_gain logged) where the uninterrupted
    run's was cheap; steps 5-6 are cheap again. k = 2, resumed after step 3: step 4 is plain and
    supplies the gradient, so steps 4-6 replay the uninterrupted run."""
    common = [f"training.shapo.mask={random_mask}", "training.max_steps=6", "training.save_steps=3",
              "training.save_total_limit=5"]
    for interval in (1, 2):
        straight = train(config(tmp_path, nano_llama, *common, f"training.shapo.interval={interval}",
                                name=f"straight{interval}"))
        shutil.copytree(straight.output_dir, tmp_path / f"resumed{interval}")
        resumed = train(config(tmp_path, nano_llama, *common, f"training.shapo.interval={interval}",
                               name=f"resumed{interval}"), resume=True)
        a, b = {r["step"]: r for r in rows(straight)}, {r["step"]: r for r in rows(resumed)}
        assert sorted(b) == list(range(1, 7))
        if interval == 1:
            assert [a[s]["shapo/ascent_reused"] for s in (4, 5, 6)] == [1.0, 1.0, 1.0]
            assert [b[s]["shapo/ascent_reused"] for s in (4, 5, 6)] == [0.0, 1.0, 1.0]
            assert "shapo/loss_gain" in b[4] and "shapo/loss_gain" not in a[4]
            assert b[4]["loss"] != a[4]["loss"]  # L(θ₃) here, L(θ₃ + ε from step 3's gradient) there
        else:
            assert b[5]["shapo/ascent_reused"] == 1.0 and "shapo/ascent_reused" not in b[4]
            for step in (4, 5, 6):
                for key in ("loss", "grad_norm", "shapo/first_order_gain", "shapo/ascent_cosine"):
                    if key in a[step]:
                        assert b[step][key] == pytest.approx(a[step][key], abs=1e-6), (step, key)


def test_a_short_cheap_run_trains(tmp_path, nano_llama, random_mask):
    """16 cheap ShaPO steps (lr 1e-3, ρ = 0.05 on 5 % of the neurons) take the held-out DPO loss from
    ln 2 (policy = reference) well below it and the held-out reward accuracy above chance, like
    the fresh run on the same data."""
    evals = {}
    for ascent in ("fresh", "previous"):
        result = train(config(tmp_path, nano_llama, f"training.shapo.mask={random_mask}", "training.max_steps=16",
                              "data.train=synthetic:160", f"training.shapo.ascent={ascent}", name=ascent))
        evals[ascent] = result.eval_metrics
        r = rows(result)
        assert sum(x["loss"] for x in r[-4:]) / 4 < r[0]["loss"] - 0.1, ascent
    for ascent, m in evals.items():
        assert m["eval/loss"] < math.log(2) - 0.05 and m["eval/rewards/accuracies"] > 0.6, (ascent, m)


def test_unknown_ascent_is_a_config_error(tmp_path, nano_llama):
    with pytest.raises(ConfigError, match=r"training.shapo.ascent: unknown value 'previus'. Did you mean 'previous'"):
        config(tmp_path, nano_llama, "training.shapo.ascent=previus")
    with pytest.raises(ConfigError, match="Known: fresh .*; previous"):
        config(tmp_path, nano_llama, "training.shapo.ascent=sam")


TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.mark.slow
@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed beside this interpreter")
def test_cheap_step_under_ddp_matches_one_process(tmp_path, nano_llama):
    """Two gloo ranks × 2 micro-batches × 2 pairs against one process × 8 pairs: .grad after the
    synced pass is the all-reduced mean, so every rank keeps the same g_prev and takes the same ε."""
    def run(out, world, per_device, accumulation):
        common = [f"output_dir={out}", f"model.name_or_path={nano_llama}", "data.train=synthetic:120",
                  "data.max_length=80", "data.max_prompt_length=48", "training.max_steps=3",
                  "training.learning_rate=1e-3", f"training.per_device_batch_size={per_device}",
                  f"training.gradient_accumulation_steps={accumulation}", "training.save_model=false",
                  "training.shapo.enabled=true", "training.shapo.rho=0.1", "training.shapo.ascent=previous"]
        launcher = [str(TORCHRUN), "--standalone", "--nproc_per_node", str(world)] if world > 1 else [sys.executable]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        done = subprocess.run([*launcher, "-m", "robalign.cli", "train", *common], env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        return [r for r in lines if "grad_norm" in r]

    single, double = run(tmp_path / "one", 1, 8, 1), run(tmp_path / "two", 2, 2, 2)
    assert [r["shapo/ascent_reused"] for r in double] == [0.0, 1.0, 1.0]
    for a, b in zip(single, double, strict=True):
        assert a.keys() == b.keys()
        for key in ("loss", "grad_norm", "shapo/grad_norm_masked", "shapo/first_order_gain", "shapo/ascent_cosine"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key


# --- the benchmark ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("shapo_step_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_round_ratios_by_hand(bench):
    """Round medians DPO 1.0 / 0.5 s, fresh 1.8 / 0.9, previous 1.1 / 0.6: ratios 1.8 and 1.8,
    1.1 and 1.2, previous over fresh 1.1/1.8 = 0.611 and 0.6/0.9 = 0.667."""
    rounds = [{"dpo": 1.0, "fresh": 1.8, "previous": 1.1}, {"dpo": 0.5, "fresh": 0.9, "previous": 0.6}]
    ratios = bench.round_ratios(rounds)
    assert ratios["shapo_fresh_over_dpo"] == pytest.approx([1.8, 1.8])
    assert ratios["shapo_previous_over_dpo"] == pytest.approx([1.1, 1.2])
    assert ratios["shapo_previous_over_fresh"] == pytest.approx([1.1 / 1.8, 0.6 / 0.9])
    args = argparse.Namespace(model=None, size="nano", batch=8, max_length=160, steps=4, rounds=2, mask="0.01",
                              rho=0.05)
    out = bench.report(args, 800_000, rounds, {"mask_params": 100}, ratios)
    assert out["shapo_previous_over_fresh"] == round((1.1 / 1.8 + 0.6 / 0.9) / 2, 3)  # median of two
    assert out["shapo_fresh_over_dpo_spread"] == {"min": 1.8, "q1": 1.8, "q3": 1.8, "max": 1.8}


@pytest.mark.slow
def test_the_benchmark_runs(tmp_path):
    done = subprocess.run([sys.executable, str(BENCH), "--size", "nano", "--steps", "2", "--warmup", "1",
                           "--rounds", "2", "--batch", "2", "--max-length", "64", "--json"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout)
    assert out["rounds"] == 2 and out["steps_timed"] == 2
    for name in ("shapo_fresh_over_dpo", "shapo_previous_over_dpo", "shapo_previous_over_fresh"):
        s = out[f"{name}_spread"]
        assert s["min"] <= s["q1"] <= out[name] <= s["q3"] <= s["max"], (name, s)
