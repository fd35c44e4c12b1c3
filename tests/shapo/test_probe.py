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
    The fitted direction must ignore the constant feature exactly, and the raw-space head must
    give the same logits as the standardised fit it came from."""
    gen = torch.Generator().manual_seed(0)
    x0 = torch.cat([torch.rand(50, generator=gen) + 0.1, -torch.rand(50, generator=gen) - 0.1])
    x = torch.stack([x0, torch.full((100,), 3.0), 1000 * torch.randn(100, generator=gen)], dim=1)
    y = (x0 > 0).long()
    probe = fit_linear_probe(x, y, l2=1e-2)
    assert probe.accuracy(x, y) == 1.0
    assert probe.vector[0] > 0 and probe.vector[1] == 0.0
    # shifting every text's features along a constant direction changes nothing but the bias
    logits = x @ probe.weight.T + probe.bias
    assert torch.equal(logits.argmax(-1), y)
    refit = fit_linear_probe(x + torch.tensor([0.0, 5.0, 0.0]), y, l2=1e-2)
    torch.testing.assert_close(refit.weight, probe.weight, rtol=1e-4, atol=1e-7)


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
    """PKU-SafeRLHF with a random-init nano model: the labels come from the safety flags; the
    accuracy is reported, not asserted (about chance for a random-init nano model, see the note)."""
    pairs = load_pairs(str(shared_data / "pku_saferlhf_dpo" / "pku_seferlhf_realign_dpo_5k.json"), limit=300)
    data = probe_examples(pairs, tiny_tokenizer)
    assert data.label_source == "per-response safety flags"
    assert {e.unsafe for e in data.examples} == {0, 1}
    result = train_probe(load_causal_lm(str(nano_llama)), tiny_tokenizer, data, max_length=128)
    print(f"PKU probe, nano llama: eval accuracy {result.eval_accuracy:.3f} vs chance {result.eval_majority:.3f}")
    assert 0.0 <= result.eval_accuracy <= 1.0
