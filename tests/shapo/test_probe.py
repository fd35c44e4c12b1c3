"""The safety probe: labels, held-out split, the linear head's maths, and accuracy on a tiny model."""

from __future__ import annotations

import json

import pytest
import torch

from robalign.cli import main
from robalign.data.preference import PreferencePair, load_pairs
from robalign.data.synthetic import synthetic_pairs
from robalign.models.loading import load_causal_lm
from robalign.training.probe import (
    fit_linear_probe,
    load_probe,
    pooled_hidden_states,
    probe_examples,
    split_by_prompt,
    train_probe,
)


def test_labels_use_safety_flags_and_fall_back_to_the_pair(tiny_tokenizer):
    flagged = PreferencePair("a", "q1", "both bad, less so", "both bad", meta={"chosen_safe": False,
                                                                               "rejected_safe": False})
    proxy = PreferencePair("b", "q2", "I refuse", "Here is how")
    again = PreferencePair("c", "q2", "I refuse", "Another way")  # duplicate chosen text
    clash = PreferencePair("d", "q2", "Here is how", "worse")  # "Here is how" was unsafe, now safe
    data = probe_examples([flagged, proxy, again, clash], tiny_tokenizer, prompt_format="plain")
    labels = {e.text: e.unsafe for e in data.examples}
    assert labels == {"q1\nboth bad, less so": 1, "q1\nboth bad": 1, "q2\nI refuse": 0, "q2\nAnother way": 1,
                      "q2\nworse": 1}
    assert data.conflicts == 1 and "proxy" in data.label_source and "on 1 of 4" in data.label_source


def test_split_never_shares_a_prompt(tiny_tokenizer):
    pairs = synthetic_pairs(200)
    data = probe_examples(pairs, tiny_tokenizer)
    train, held = split_by_prompt(data.examples, 0.25, seed=0)
    assert held and train and not {e.group for e in train} & {e.group for e in held}
    assert len(train) + len(held) == len(data.examples)


def test_linear_probe_maths_by_hand():
    """Class = sign of feature 0; feature 1 is constant (σ = 0), feature 2 is scaled by 1000.
    The fitted direction must ignore the constant feature exactly."""
    gen = torch.Generator().manual_seed(0)
    x0 = torch.cat([torch.rand(50, generator=gen) + 0.1, -torch.rand(50, generator=gen) - 0.1])
    x = torch.stack([x0, torch.full((100,), 3.0), 1000 * torch.randn(100, generator=gen)], dim=1)
    y = (x0 > 0).long()
    probe = fit_linear_probe(x, y, l2=1e-2)
    assert probe.accuracy(x, y) == 1.0
    assert probe.vector[0] > 0 and probe.vector[1] == 0.0


def test_raw_feature_head_is_the_standardised_fit_mapped_back():
    """The fit sees only z = (x − μ)/σ, and z is unchanged by any per-feature x → a·x + c (a > 0).
    So a probe fitted on a·x + c must give, on a·x + c, exactly the logits the probe fitted on x
    gives on x: that holds only if W_raw = W/σ and b_raw = b − W_raw·μ are both right (a wrong
    scale breaks the a's, a missing −W_raw·μ breaks the c's). Its weights are then W_raw / a."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(120, 4, generator=gen, dtype=torch.float64) * torch.tensor([1.0, 3.0, 0.2, 50.0]) + 2.0
    y = ((x[:, 0] - 2.0) + 0.1 * (x[:, 1] - 2.0) + 0.3 * torch.randn(120, generator=gen, dtype=torch.float64) > 0).long()
    a = torch.tensor([0.5, 4.0, 0.1, 20.0], dtype=torch.float64)
    c = torch.tensor([10.0, -7.0, 4.0, 3.0], dtype=torch.float64)
    probe, moved = fit_linear_probe(x, y), fit_linear_probe(a * x + c, y)
    logits = x @ probe.weight.double().T + probe.bias.double()
    logits_moved = (a * x + c) @ moved.weight.double().T + moved.bias.double()
    torch.testing.assert_close(logits_moved, logits, rtol=1e-4, atol=1e-4)  # the heads are stored in fp32
    assert logits.std() > 1.0  # the logits are not trivially constant
    torch.testing.assert_close(moved.weight.double() * a, probe.weight.double(), rtol=1e-3, atol=1e-6)


def test_pooling_ignores_padding(nano_llama, tiny_tokenizer):
    model = load_causal_lm(str(nano_llama))
    alone = pooled_hidden_states(model, tiny_tokenizer, ["a short text"])
    padded = pooled_hidden_states(model, tiny_tokenizer, ["a short text", "a much longer text " * 8])
    torch.testing.assert_close(padded[0], alone[0], rtol=1e-5, atol=1e-6)


def test_probe_is_above_chance_on_held_out_synthetic_texts(nano_llama, tiny_tokenizer):
    """Synthetic world minus harmless requests (there the rejected response is an over-refusal,
    not an unsafe one): safe = refusal / debiased answer, unsafe = compliance / stereotype."""
    pairs = [p for p in synthetic_pairs(300) if p.meta["category"] != "harmless"]
    model = load_causal_lm(str(nano_llama))
    result = train_probe(model, tiny_tokenizer, probe_examples(pairs, tiny_tokenizer), eval_fraction=0.25)
    assert result.n_eval >= 40
    assert result.eval_accuracy > max(0.75, result.eval_majority + 0.15), result


def test_cli_probe_writes_vector_and_accuracy(tmp_path, nano_llama, capsys):
    assert main(["probe", "--model", str(nano_llama), "--data", "synthetic:200", "--exclude-categories", "harmless",
                 "--out", str(tmp_path / "probe")]) == 0
    printed = json.loads(capsys.readouterr().out)
    vector, info = load_probe(tmp_path / "probe")
    assert vector.shape == (96,) and info["eval_accuracy"] == pytest.approx(printed["eval_accuracy"], abs=1e-4)
    assert info["model_fingerprint"] and info["label_source"].startswith("chosen = safe")
    assert main(["probe", "--model", str(nano_llama), "--data", "synthetic:50", "--categories", "nothing",
                 "--out", str(tmp_path / "p2")]) == 2
    assert "no pair" in capsys.readouterr().err


def test_probe_on_pku_pairs_uses_per_response_flags(shared_data, nano_llama, tiny_tokenizer):
    """PKU-SafeRLHF with a random-init nano model: the labels come from the safety flags, and the
    reported accuracies are those of the returned probe on the held-out prompts. The accuracy
    itself is reported, not asserted (about chance for a random-init nano model)."""
    pairs = load_pairs(str(shared_data / "pku_saferlhf_dpo" / "pku_seferlhf_realign_dpo_5k.json"), limit=300)
    data = probe_examples(pairs, tiny_tokenizer)
    assert data.label_source == "per-response safety flags"
    assert {e.unsafe for e in data.examples} == {0, 1}
    model = load_causal_lm(str(nano_llama))
    result = train_probe(model, tiny_tokenizer, data, max_length=128)
    print(f"PKU probe, nano llama: eval accuracy {result.eval_accuracy:.3f} vs chance {result.eval_majority:.3f}")
    _, held = split_by_prompt(data.examples, 0.2, seed=0)  # train_probe's defaults
    x = pooled_hidden_states(model, tiny_tokenizer, [e.text for e in held], max_length=128)
    y = torch.tensor([e.unsafe for e in held])
    assert result.n_eval == len(held) and result.n_train + result.n_eval == len(data.examples)
    assert result.eval_accuracy == pytest.approx(result.probe.accuracy(x, y), abs=1e-6)
    assert result.eval_majority == pytest.approx(max(y.float().mean().item(), 1 - y.float().mean().item()))
