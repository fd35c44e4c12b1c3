"""Noise that reaches soft labels (issue 10 item 3, docs/methods.md#label-noise).

A pair flip maps (y_w, y_l, q) -> (y_l, y_w, 1 - q); the swap turns u into -u and the soft loss
-[q log σ(u) + (1-q) log σ(-u)] is the same sum with its two terms exchanged, so a flipped soft-label
run IS the clean run. The three modes that act (reward_labels, soft_flip, margin_gaussian) each
change the trained model; rate 0 is the identity for all four.

Tolerances. The loss identity is exact in floating point when 1 - q is exact (q a dyadic fraction
such as 0.625): negation, commutative addition and 1 - (1 - q) == q are all exact, so the test uses
torch.equal. A trained model cannot be bit-identical: the flip moves each rejected sequence into
its chosen row of the batch, so every weight gradient Σ_rows x_row·g_row is summed in another order
and float32 addition is not associative; with reward-model q, float32(1 - q) and 1 - float32(q) may
also differ by one ulp. Three SGD steps at lr 0.1 on the nano model then differ by at most 1.1e-8
(dyadic q) and 6.0e-8 (reward-model q) in any parameter, and the logged losses by float32 rounding
(measured on 2 CPU cores); the tests allow 1e-6 and require every acting mode to move some parameter
by more than 1e-4 (measured: 0.010 to 0.023, against 0.028 moved by training itself).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random

import pytest
import torch
from safetensors.torch import load_file

from robalign.cli import main
from robalign.config import NOISE_MODES, ConfigError, TrainConfig, load_config, validate_train_config
from robalign.data.noise import (
    apply_training_noise,
    flip_labels,
    flip_soft_labels,
    margin_noise,
    noisy_indices,
    training_positions,
)
from robalign.data.preference import PreferencePair, split_holdout
from robalign.data.synthetic import synthetic_pairs
from robalign.errors import UserError
from robalign.training.losses import pair_losses
from robalign.training.reward import noisy_soft_labels, soft_labels
from robalign.training.trainer import train

FLIP_TOLERANCE = 1e-6  # float32 summation order after 3 SGD steps (module docstring)
ACTS = 1e-4  # an acting mode moves some parameter by more than this
LN3 = math.log(3)  # σ(ln 3) = 3/4, σ(-ln 3) = 1/4, σ(2 ln 3) = 9/10


def _pairs(qs: list[float | None]) -> list[PreferencePair]:
    return [PreferencePair(f"p{i}", f"prompt {i}", f"good {i}", f"bad {i}", soft_label=q) for i, q in enumerate(qs)]


# --------------------------------------------------------------------------------------------
# The cancellation, as maths
# --------------------------------------------------------------------------------------------


def test_flip_with_one_minus_q_gives_bitwise_the_same_soft_loss_and_gradient():
    """ℓ(u, q) = -[q log σ(u) + (1-q) log σ(-u)]; the flipped pair has u' = -u and q' = 1 - q, so
    ℓ(u', q') = -[(1-q) log σ(-u) + q log σ(u)]: the same two terms, added in the other order."""
    gen = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(8, generator=gen, dtype=torch.float64) * 20 for _ in range(4))
    pc.requires_grad_(True)
    pr.requires_grad_(True)
    q = torch.tensor([1.0, 0.875, 0.75, 0.625, 0.5, 0.25, 0.125, 0.0], dtype=torch.float64)  # 1 - q exact
    lengths = torch.ones(8)
    clean = pair_losses("soft", policy_chosen_logps=pc, policy_rejected_logps=pr, reference_chosen_logps=rc,
                        reference_rejected_logps=rr, chosen_lengths=lengths, rejected_lengths=lengths,
                        soft_labels=q, beta=0.1)
    flipped = pair_losses("soft", policy_chosen_logps=pr, policy_rejected_logps=pc, reference_chosen_logps=rr,
                          reference_rejected_logps=rc, chosen_lengths=lengths, rejected_lengths=lengths,
                          soft_labels=1.0 - q, beta=0.1)
    assert torch.equal(clean, flipped)
    (g_clean_c, g_clean_r) = torch.autograd.grad(clean.sum(), (pc, pr))
    (g_flip_c, g_flip_r) = torch.autograd.grad(flipped.sum(), (pc, pr))
    assert torch.equal(g_clean_c, g_flip_c) and torch.equal(g_clean_r, g_flip_r)
    # hand-worked: u = 0 gives ℓ = ln 2 whatever q; q = 1/2 makes ℓ even in u
    zero = torch.zeros(1, dtype=torch.float64)
    one = torch.ones(1)
    for qv in (0.0, 0.25, 1.0):
        value = pair_losses("soft", policy_chosen_logps=zero, policy_rejected_logps=zero, reference_chosen_logps=zero,
                            reference_rejected_logps=zero, chosen_lengths=one, rejected_lengths=one,
                            soft_labels=torch.tensor([qv], dtype=torch.float64))
        assert value.item() == pytest.approx(math.log(2), abs=1e-15)


# --------------------------------------------------------------------------------------------
# Each mode by hand, on a few pairs
# --------------------------------------------------------------------------------------------


def test_every_mode_touches_the_same_seeded_positions():
    """round(rate·n) positions = sorted(Random(seed).sample(range(n), k)), whatever the mode."""
    n, rate, seed = 10, 0.35, 7  # 3.5 rounds half to even -> 4
    expected = sorted(random.Random(seed).sample(range(n), 4))
    assert noisy_indices(n, rate, seed) == expected
    pairs = _pairs([0.75] * n)
    assert flip_labels(pairs, rate, seed).flipped_ids == [f"p{i}" for i in expected]
    assert flip_soft_labels(pairs, rate, seed).flipped_ids == [f"p{i}" for i in expected]
    assert margin_noise(n, rate, 1.0, seed).indices == expected
    margins = torch.full((n,), LN3)
    assert noisy_soft_labels(margins, 1.0, False, "soft_flip", rate, seed).noised == expected
    assert noisy_soft_labels(margins, 1.0, False, "margin_gaussian", rate, seed).noised == expected


def test_soft_flip_by_hand():
    # q = 3/4, 1/2, 1/4, 9/10; rate 1/2 -> 2 pairs; the seed picks the positions flip_labels would
    pairs = _pairs([0.75, 0.5, 0.25, 0.9])
    picked = noisy_indices(4, 0.5, 1)
    result = flip_soft_labels(pairs, 0.5, 1)
    assert result.flipped_ids == [f"p{i}" for i in picked] and len(picked) == 2
    expected = {0: 0.25, 1: 0.5, 2: 0.75, 3: 0.1}  # 1 - q
    for i, (before, after) in enumerate(zip(pairs, result.pairs, strict=True)):
        assert (after.chosen, after.rejected) == (before.chosen, before.rejected)  # never swapped
        if i in picked:
            assert after.soft_label == pytest.approx(expected[i], abs=1e-15) and after.meta["soft_label_flipped"]
        else:
            assert after is before
    everything = flip_soft_labels(pairs, 1.0, 0).pairs
    assert [p.soft_label for p in everything] == pytest.approx([0.25, 0.5, 0.75, 0.1], abs=1e-15)
    # from reward margins: Δr = ln 3, 0, -ln 3, 2 ln 3 gives q = 3/4, 1/2, 1/4, 9/10; all flipped
    margins = torch.tensor([LN3, 0.0, -LN3, 2 * LN3], dtype=torch.float64)
    labels = noisy_soft_labels(margins, 1.0, False, "soft_flip", 1.0, 0)
    assert labels.clean_soft_labels.tolist() == pytest.approx([0.75, 0.5, 0.25, 0.9], abs=1e-12)
    assert labels.soft_labels.tolist() == pytest.approx([0.25, 0.5, 0.75, 0.1], abs=1e-12)
    assert labels.noised == [0, 1, 2, 3] and not labels.margin_offsets.any()
    # only eligible (training) positions: position 1 is held out, 2 of the other 3 are flipped
    held_out = noisy_soft_labels(margins, 1.0, False, "soft_flip", 0.5, 4, eligible=[0, 2, 3])
    assert held_out.noised == sorted([0, 2, 3][j] for j in noisy_indices(3, 0.5, 4)) and 1 not in held_out.noised
    assert held_out.soft_labels[1].item() == 0.5
    with pytest.raises(ValueError, match="soft_label"):
        flip_soft_labels(_pairs([0.5, None]), 0.5, 0)


def test_margin_gaussian_by_hand():
    # σ(β_r·(Δr + ξ)): Δr = ln 3 with ξ = ln 3 -> σ(2 ln 3) = 0.9; Δr = 0 with ξ = -ln 3 -> 0.25
    margins = torch.tensor([LN3, 0.0, -LN3])
    offsets = torch.tensor([LN3, -LN3, 0.0], dtype=torch.float64)
    assert soft_labels(margins, 1.0, margin_offsets=offsets).tolist() == pytest.approx([0.9, 0.25, 0.25], abs=1e-7)
    # β_r = 2 doubles the noisy logit: σ(2·2 ln 3) = 81/82
    assert soft_labels(margins, 2.0, margin_offsets=offsets)[0].item() == pytest.approx(81 / 82, abs=1e-7)
    # standardised: Δr / std(clean Δr) + ξ; [-1, 3] has std √8, ξ = 1/√8 on the first cancels it to 0
    std_q = soft_labels(torch.tensor([-1.0, 3.0], dtype=torch.float64), 1.0, True,
                        torch.tensor([1 / math.sqrt(8), 0.0], dtype=torch.float64))
    assert std_q.tolist() == pytest.approx([0.5, 1 / (1 + math.exp(-3 / math.sqrt(8)))], abs=1e-12)
    # seeded draws at the touched positions, exactly 0 elsewhere; q follows the reported ξ
    drawn = margin_noise(6, 0.5, 2.0, seed=3)
    assert drawn.indices == noisy_indices(6, 0.5, 3) and len(drawn.indices) == 3
    assert all((drawn.offsets[i] == 0.0) == (i not in drawn.indices) for i in range(6))
    assert margin_noise(6, 0.5, 2.0, seed=3) == drawn and margin_noise(6, 0.5, 2.0, seed=4) != drawn
    margins6 = torch.tensor([LN3, 0.0, -LN3, 2 * LN3, 1.0, -2.0])
    labels = noisy_soft_labels(margins6, 1.5, False, "margin_gaussian", 0.5, 3, std=2.0)
    for i in range(6):
        xi = drawn.offsets[i]
        assert labels.margin_offsets[i].item() == xi
        assert labels.soft_labels[i].item() == pytest.approx(1 / (1 + math.exp(-1.5 * (margins6[i].item() + xi))))
    # std 0 is the identity on q; the draws have the asked spread (4000 draws: se of the std ≈ 0.02)
    assert torch.equal(noisy_soft_labels(margins6, 1.0, False, "margin_gaussian", 1.0, 0, std=0.0).soft_labels,
                       soft_labels(margins6, 1.0))
    big = torch.tensor(margin_noise(4000, 1.0, 2.0, seed=0).offsets)
    assert abs(big.mean().item()) < 0.1 and abs(big.std().item() - 2.0) < 0.1
    with pytest.raises(ValueError, match="std"):
        margin_noise(4, 0.5, -1.0, 0)


@pytest.mark.parametrize("mode", list(NOISE_MODES))
def test_rate_zero_is_the_identity_in_every_mode(mode):
    pairs = _pairs([0.75, 0.5, 0.625, 0.125])
    margins = torch.tensor([LN3, 0.0, -1.0, 2.5])
    if mode in ("soft_flip", "margin_gaussian"):
        labels = noisy_soft_labels(margins, 1.0, False, mode, 0.0, 5, std=3.0)
        assert torch.equal(labels.soft_labels, soft_labels(margins, 1.0)) and labels.noised == []
    if mode == "soft_flip":
        result = flip_soft_labels(pairs, 0.0, 5)
    else:  # flip acts in the trainer; reward_labels is flip_labels on the reward model's pairs
        result = flip_labels(pairs, 0.0, 5) if mode == "reward_labels" else apply_training_noise(pairs, mode, 0.0, 5)
    assert result.flipped_ids == [] and all(a is b for a, b in zip(result.pairs, pairs, strict=True))


def test_the_trainer_applies_only_flip_and_the_config_checks_the_mode():
    pairs = _pairs([0.75] * 8)
    assert len(apply_training_noise(pairs, "flip", 0.5, 0).flipped_ids) == 4
    for mode in ("reward_labels", "soft_flip", "margin_gaussian"):  # already in data.train's soft labels
        noisy = apply_training_noise(pairs, mode, 0.5, 0)
        assert noisy.flipped_ids == [] and noisy.pairs == pairs
    with pytest.raises(ValueError, match="unknown noise mode"):
        apply_training_noise(pairs, "gaussian", 0.5, 0)
    with pytest.raises(ValueError, match="rate"):
        apply_training_noise(pairs, "soft_flip", 1.5, 0)
    cfg = load_config(TrainConfig, None, ["data.noise_mode=soft_flips"])
    with pytest.raises(ConfigError, match="Did you mean 'soft_flip'"):
        validate_train_config(cfg)
    with pytest.raises(ConfigError, match="noise_std"):
        validate_train_config(load_config(TrainConfig, None, ["data.noise_mode=margin_gaussian",
                                                              "data.noise_std=-1"]))
    validate_train_config(load_config(TrainConfig, None, ["data.noise_mode=margin_gaussian", "data.noise_rate=0.2",
                                                          "data.noise_std=0.5"]))
    with pytest.raises(UserError, match="does not act on soft labels"):
        noisy_soft_labels(torch.zeros(3), 1.0, False, "flip", 0.5, 0)


def test_noise_before_the_trainer_spares_the_pairs_it_holds_out():
    pairs = synthetic_pairs(60, seed=2)
    train_side, held = split_holdout(pairs, 0.2, 5)
    positions = training_positions(pairs, 0.2, 5)
    assert [pairs[i].id for i in positions] == [p.id for p in train_side]
    assert training_positions(pairs, 0.0, 5) == list(range(60))
    labels = noisy_soft_labels(torch.ones(60), 1.0, False, "soft_flip", 1.0, 0, eligible=positions)
    assert labels.noised == positions  # rate 1: every training pair, no held-out one
    held_ids = {p.id for p in held}
    assert all(labels.soft_labels[i] == labels.clean_soft_labels[i] for i, p in enumerate(pairs) if p.id in held_ids)


# --------------------------------------------------------------------------------------------
# End to end on the nano model: the flip cancels, the three acting modes move the trained model
# --------------------------------------------------------------------------------------------


def _train(tmp_path, name, model_dir, data, *overrides):
    cfg = load_config(TrainConfig, None, [
        f"output_dir={tmp_path / name}", f"model.name_or_path={model_dir}", f"data.train={data}",
        "data.eval_fraction=0", "data.max_length=96", "data.max_prompt_length=64", "loss.losses={soft: 1.0}",
        "training.max_steps=3", "training.per_device_batch_size=4", "training.optimizer=sgd",
        "training.learning_rate=0.1", *overrides])
    validate_train_config(cfg)
    result = train(cfg)
    losses = [json.loads(x)["loss"] for x in (result.output_dir / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(x)]
    info = json.loads((result.output_dir / "run_info.json").read_text())
    return load_file(result.output_dir / "model" / "model.safetensors"), losses, info


def _max_diff(a, b) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _write(pairs, path) -> str:
    with open(path, "w", encoding="utf-8") as fh:
        for p in pairs:
            fh.write(json.dumps({"id": p.id, "prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected,
                                 "soft_label": p.soft_label}) + "\n")
    return str(path)


def test_a_pair_flip_leaves_a_soft_label_run_unchanged(tmp_path, nano_llama):
    """12 pairs, 3 steps of 4: every pair is trained on once; the trainer's own flip swaps 6."""
    qs = [0.875, 0.75, 0.625, 0.25, 0.125, 1.0]  # dyadic, so 1 - (1 - q) == q
    pairs = [dataclasses.replace(p, soft_label=qs[i % 6]) for i, p in enumerate(synthetic_pairs(12, seed=1))]
    data = _write(pairs, tmp_path / "dyadic.jsonl")
    clean, clean_losses, _ = _train(tmp_path, "clean", nano_llama, data)
    flipped, flip_losses, info = _train(tmp_path, "flip", nano_llama, data, "data.noise_mode=flip",
                                        "data.noise_rate=0.5")
    assert len(info["flipped_ids"]) == 6
    assert flip_losses == pytest.approx(clean_losses, abs=FLIP_TOLERANCE)
    moved = _max_diff(clean, load_file(nano_llama / "model.safetensors"))
    diff = _max_diff(clean, flipped)
    assert diff <= FLIP_TOLERANCE < ACTS < moved, (diff, moved)
    # the same 6 flips under the plain DPO loss (q ignored) do change the model
    dpo_clean, _, _ = _train(tmp_path, "dpo_clean", nano_llama, data, "loss.losses={dpo: 1.0}")
    dpo_flip, _, _ = _train(tmp_path, "dpo_flip", nano_llama, data, "loss.losses={dpo: 1.0}", "data.noise_rate=0.5")
    assert _max_diff(dpo_clean, dpo_flip) > ACTS


@pytest.fixture(scope="module")
def reward_models(tmp_path_factory, nano_llama):
    """A clean reward model and one trained with reward_labels noise (rate 0.25, seed 3)."""
    root = tmp_path_factory.mktemp("noise_rm")
    common = ["--model", str(nano_llama), "--data", "synthetic:120", "--lr", "5e-4", "--eval-fraction", "0.25"]
    assert main(["train-reward", *common, "--out", str(root / "clean")]) == 0
    noisy = ["--noise-rate", "0.25", "--noise-seed", "3"]
    assert main(["train-reward", *common, *noisy, "--out", str(root / "noisy")]) == 0
    return root / "clean", root / "noisy"


def test_reward_labels_noise_is_recorded_and_the_held_out_pairs_stay_clean(reward_models):
    clean_dir, noisy_dir = reward_models
    clean = json.loads((clean_dir / "robalign_reward.json").read_text())
    noisy = json.loads((noisy_dir / "robalign_reward.json").read_text())
    assert clean["noise"] is None
    train_side, held = split_holdout(synthetic_pairs(120), 0.25, 0)  # train-reward's own hold-out (--seed 0)
    assert noisy["train_pairs"] == len(train_side) and noisy["eval_pairs"] == len(held)
    assert noisy["noise"]["mode"] == "reward_labels" and noisy["noise"]["rate"] == 0.25
    assert noisy["noise"]["flipped_ids"] == [train_side[i].id for i in noisy_indices(len(train_side), 0.25, 3)]
    assert len(noisy["noise"]["flipped_ids"]) == round(0.25 * len(train_side))
    assert not set(noisy["noise"]["flipped_ids"]) & {p.id for p in held}
    assert noisy["train_fingerprint"] != clean["train_fingerprint"]  # it trained on the swapped pairs


def test_every_acting_mode_changes_the_trained_model_and_the_flip_does_not(tmp_path, reward_models, nano_llama,
                                                                           capsys):
    clean_rm, noisy_rm = reward_models
    score = ["soft-labels", "--data", "synthetic:12", "--beta-r", "4", "--eval-fraction", "0"]
    files = {}
    for name, rm, extra in [("clean", clean_rm, []), ("reward_labels", noisy_rm, []),
                            ("soft_flip", clean_rm, ["--noise-mode", "soft_flip", "--noise-rate", "0.5"]),
                            ("margin_gaussian", clean_rm, ["--noise-mode", "margin_gaussian", "--noise-rate", "0.5",
                                                           "--noise-std", "1.0"])]:
        files[name] = tmp_path / f"{name}.jsonl"
        capsys.readouterr()
        assert main([*score, "--reward-model", str(rm), "--out", str(files[name]), *extra]) == 0
        files[name + "/summary"] = json.loads(capsys.readouterr().out)
    clean_rows = [json.loads(x) for x in files["clean"].read_text().splitlines()]
    # which pairs and which q: soft_flip writes 1 - q on the 6 seeded pairs, the texts unchanged
    sflip = [json.loads(x) for x in files["soft_flip"].read_text().splitlines()]
    picked = noisy_indices(12, 0.5, 0)
    assert files["soft_flip/summary"]["noise"]["noised_ids"] == [clean_rows[i]["id"] for i in picked]
    for i, (a, b) in enumerate(zip(clean_rows, sflip, strict=True)):
        assert (b["chosen"], b["rejected"], b["noised"]) == (a["chosen"], a["rejected"], i in picked)
        assert b["soft_label"] == pytest.approx(1 - a["soft_label"] if i in picked else a["soft_label"], abs=1e-12)
    # margin_gaussian: q = σ(4·(Δr + ξ)) on the same 6 pairs, ξ ~ N(0, 1) written beside it
    gauss = [json.loads(x) for x in files["margin_gaussian"].read_text().splitlines()]
    for i, (a, b) in enumerate(zip(clean_rows, gauss, strict=True)):
        assert (b["margin_noise"] != 0.0) == (i in picked) and b["reward_margin"] == a["reward_margin"]
        assert b["soft_label"] == pytest.approx(1 / (1 + math.exp(-4 * (a["reward_margin"] + b["margin_noise"]))))
    # reward_labels: the noisy reward model's q differ from the clean one's on the same pairs
    rl = [json.loads(x)["soft_label"] for x in files["reward_labels"].read_text().splitlines()]
    assert max(abs(a["soft_label"] - b) for a, b in zip(clean_rows, rl)) > 0.01
    assert files["reward_labels/summary"]["reward_model_noise"]["mode"] == "reward_labels"
    # and less sure of the clean preference (measured on 200 pairs: mean q 0.95 clean, 0.74 at rate 0.25)
    assert files["reward_labels/summary"]["mean_soft_label"] < files["clean/summary"]["mean_soft_label"] - 0.05

    base = load_file(nano_llama / "model.safetensors")
    clean, clean_losses, _ = _train(tmp_path, "run_clean", nano_llama, files["clean"])
    flip, flip_losses, info = _train(tmp_path, "run_flip", nano_llama, files["clean"], "data.noise_rate=0.5")
    assert len(info["flipped_ids"]) == 6 and info["noise_rate"] == 0.5
    diffs = {"flip": _max_diff(clean, flip)}
    for mode in ("reward_labels", "soft_flip", "margin_gaussian"):
        # the noise is in the file; the run's config only names the mode
        params, _, _ = _train(tmp_path, f"run_{mode}", nano_llama, files[mode], f"data.noise_mode={mode}")
        diffs[mode] = _max_diff(clean, params)
    moved = _max_diff(clean, base)
    assert diffs["flip"] <= FLIP_TOLERANCE, (diffs, moved)
    assert flip_losses == pytest.approx(clean_losses, abs=FLIP_TOLERANCE)
    assert all(diffs[m] > ACTS for m in ("reward_labels", "soft_flip", "margin_gaussian")), (diffs, moved)


def test_cli_soft_flip_spares_the_trainers_default_hold_out(tmp_path, reward_models, capsys):
    """Default --eval-fraction 0.1 / --split-seed 0 = data.eval_fraction / training.seed defaults."""
    out = tmp_path / "sflip_all.jsonl"
    capsys.readouterr()
    assert main(["soft-labels", "--reward-model", str(reward_models[0]), "--data", "synthetic:40", "--out", str(out),
                 "--noise-mode", "soft_flip", "--noise-rate", "1.0"]) == 0
    noise = json.loads(capsys.readouterr().out)["noise"]
    train_side, held = split_holdout(synthetic_pairs(40), 0.1, 0)  # the trainer's split of this file
    assert noise["noised_ids"] == [p.id for p in train_side] and noise["training_pairs"] == len(train_side)
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    for p in held:
        assert not rows[p.id]["noised"] and rows[p.id]["soft_label"] == rows[p.id]["clean_soft_label"]
    for p in train_side:
        assert rows[p.id]["soft_label"] == pytest.approx(1 - rows[p.id]["clean_soft_label"], abs=1e-12)


def test_cli_refuses_noise_it_does_not_apply(tmp_path, capsys):
    assert main(["soft-labels", "--reward-model", str(tmp_path), "--data", "synthetic:4", "--noise-rate", "0.2",
                 "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "--noise-rate needs --noise-mode" in capsys.readouterr().err
