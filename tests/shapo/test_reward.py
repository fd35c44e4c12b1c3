"""Reward-level ShaPO's inputs: Bradley–Terry reward/cost models and the soft labels they give."""

from __future__ import annotations

import json
import math

import pytest
import torch

from robalign.cli import main
from robalign.data.preference import load_pairs
from robalign.data.synthetic import synthetic_pairs
from robalign.data.tokenize import tokenize_pairs
from robalign.errors import UserError
from robalign.training.reward import (
    bradley_terry_loss,
    load_reward_model,
    reward_margins,
    soft_labels,
    train_reward_model,
)
from robalign.training.trainer import train


def test_bradley_terry_and_soft_labels_by_hand():
    # −log σ(1) = log(1 + e^-1) = 0.31326; a cost model wants the rejected output higher
    assert bradley_terry_loss(torch.tensor([1.0]), torch.tensor([0.0])).item() == pytest.approx(0.313262, rel=1e-5)
    assert bradley_terry_loss(torch.tensor([1.0]), torch.tensor([0.0]), -1.0).item() == pytest.approx(1.313262, rel=1e-5)
    # σ(0) = 1/2; σ(ln 3) = 3/4; σ(2 ln 3) = 9/10
    margins = torch.tensor([0.0, math.log(3)])
    assert soft_labels(margins, 1.0).tolist() == pytest.approx([0.5, 0.75])
    assert soft_labels(margins, 2.0).tolist() == pytest.approx([0.5, 0.9])
    # standardised: Δr / std(Δr); [1, 3] has std √2, not centred, so the sign of each margin stays
    q = soft_labels(torch.tensor([-1.0, 3.0]), 1.0, standardize=True)
    expected = [1 / (1 + math.exp(1 / math.sqrt(8))), 1 / (1 + math.exp(-3 / math.sqrt(8)))]
    assert q.tolist() == pytest.approx(expected)
    with pytest.raises(UserError, match="beta-r"):
        soft_labels(margins, 0.0)
    with pytest.raises(UserError, match="zero spread"):
        soft_labels(torch.tensor([1.0, 1.0]), 1.0, standardize=True)


@pytest.mark.parametrize("kind", ["reward", "cost"])
def test_reward_and_cost_models_learn_held_out_preferences(nano_llama, kind):
    torch.manual_seed(0)
    model, tok, _ = load_reward_model(str(nano_llama), allow_new_head=True)  # a fresh head, trained next
    pairs = tokenize_pairs(synthetic_pairs(240, seed=1), tok, 96, 64).pairs
    train_pairs, held = pairs[:200], pairs[200:]
    untrained = (reward_margins(model, held, tok.pad_token_id, kind) > 0).float().mean().item()
    result = train_reward_model(model, train_pairs, held, tok.pad_token_id, kind, learning_rate=5e-4)
    assert result.steps == 25 and result.eval_pairs == 40
    assert result.eval_accuracy > max(0.8, untrained + 0.1), (untrained, result)
    raw = reward_margins(model, held, tok.pad_token_id, "reward")  # o(chosen) − o(rejected)
    assert (raw.mean() > 0) == (kind == "reward")  # a cost model scores the rejected response higher


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory, nano_llama):
    out = tmp_path_factory.mktemp("reward") / "rm"
    assert main(["train-reward", "--model", str(nano_llama), "--data", "synthetic:160", "--lr", "5e-4",
                 "--out", str(out)]) == 0
    return out


def test_cli_soft_labels_feed_the_soft_loss_with_shapo(tmp_path, reward_dir, nano_llama, capsys):
    info = json.loads((reward_dir / "robalign_reward.json").read_text())
    assert info["kind"] == "reward" and info["eval_accuracy"] > 0.7
    out = tmp_path / "soft.jsonl"
    capsys.readouterr()
    assert main(["soft-labels", "--reward-model", str(reward_dir), "--data", "synthetic:60", "--beta-r", "2",
                 "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 60 == summary["pairs"]
    for row in rows:
        assert row["soft_label"] == pytest.approx(1 / (1 + math.exp(-2 * row["reward_margin"])), rel=1e-9)
    assert summary["agreement_with_labels"] == pytest.approx(sum(r["soft_label"] > 0.5 for r in rows) / 60)
    pairs = load_pairs(str(out))
    assert [p.id for p in pairs] == [p.id for p in synthetic_pairs(60)] and all(p.soft_label is not None for p in pairs)
    # standardised margins have unit spread
    std_out = tmp_path / "std.jsonl"
    assert main(["soft-labels", "--reward-model", str(reward_dir), "--data", "synthetic:60", "--standardize",
                 "--out", str(std_out)]) == 0
    margins = torch.tensor([json.loads(x)["reward_margin"] for x in std_out.read_text().splitlines()])
    q = torch.tensor([json.loads(x)["soft_label"] for x in std_out.read_text().splitlines()], dtype=torch.float64)
    torch.testing.assert_close(q, torch.sigmoid(margins.double() / margins.double().std()), rtol=1e-6, atol=1e-9)
    # reward-level ShaPO: the soft loss on these labels with a sharpness-aware step
    result = train(_soft_config(tmp_path, nano_llama, out))
    assert result.final_metrics["shapo/loss_gain"] > 0  # ε ascends: ≈ ρ‖M⊙g‖ > 0 to first order
    assert main(["soft-labels", "--reward-model", str(reward_dir), "--data", "synthetic:10", "--cost",
                 "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "says this is a reward model" in capsys.readouterr().err


def _soft_config(tmp_path, model_dir, data):
    from robalign.config import TrainConfig, load_config, validate_train_config

    cfg = load_config(TrainConfig, None, [
        f"output_dir={tmp_path / 'soft_run'}", f"model.name_or_path={model_dir}", f"data.train={data}",
        "data.max_length=80", "data.max_prompt_length=48", "loss.losses={soft: 1.0}", "training.max_steps=2",
        "training.per_device_batch_size=4", "training.save_model=false", "training.shapo.enabled=true"])
    validate_train_config(cfg)
    return cfg
