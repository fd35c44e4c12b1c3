"""Offline tiny models: build, save, reload bit-exactly with HF_HUB_OFFLINE=1, chat template."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from robalign.cli import main
from robalign.models.tiny import EOS, SIZES, build_tiny_model, model_config


@pytest.mark.parametrize("fixture", ["nano_llama", "nano_gpt_neox", "nano_gpt2"])
def test_reload_is_bit_exact(fixture, request):
    model_dir = request.getfixturevalue(fixture)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    saved = load_file(model_dir / "model.safetensors")
    state = model.state_dict()
    for name, tensor in saved.items():
        assert torch.equal(state[name], tensor), name
    ids = torch.tensor([[5, 6, 7, 8]])
    again = AutoModelForCausalLM.from_pretrained(model_dir)
    assert torch.equal(model(ids).logits, again(ids).logits)


def test_tokenizer_round_trip_and_chat_template(nano_llama):
    tok = AutoTokenizer.from_pretrained(nano_llama)
    text = "Who struggled with the new phone? Ünïcode — and bytes: \x07 ok"
    assert tok.decode(tok(text)["input_ids"]) == text  # byte-level: every string survives
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                       add_generation_prompt=True)
    assert rendered == "<|user|>\nhi<|end|>\n<|assistant|>\n"
    assert tok.eos_token == EOS and tok.pad_token_id is not None
    assert tok.convert_tokens_to_ids("<|assistant|>") in tok(rendered)["input_ids"]
    assert len(tok) == SIZES["nano"].vocab


def test_sizes_have_the_advertised_parameter_counts(tiny_tokenizer):
    counts = {}
    for size in SIZES:
        cfg = model_config("llama", size, tiny_tokenizer)
        with torch.device("meta"):
            counts[size] = sum(p.numel() for p in AutoModelForCausalLM.from_config(cfg).parameters())
    assert 0.5e6 < counts["nano"] < 1.5e6
    assert 7e6 < counts["micro"] < 13e6
    assert 20e6 < counts["mini"] < 40e6


def test_same_seed_same_weights(tmp_path, tiny_tokenizer):
    a = build_tiny_model(tmp_path / "a", "nano", "gpt2", seed=3, tokenizer=tiny_tokenizer)
    b = build_tiny_model(tmp_path / "b", "nano", "gpt2", seed=3, tokenizer=tiny_tokenizer)
    c = build_tiny_model(tmp_path / "c", "nano", "gpt2", seed=4, tokenizer=tiny_tokenizer)
    wa, wb, wc = (load_file(d / "model.safetensors") for d in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_cli_tiny_model(tmp_path, capsys):
    assert main(["tiny-model", "--out", str(tmp_path / "m"), "--size", "nano", "--arch", "gpt_neox"]) == 0
    info = json.loads((tmp_path / "m" / "robalign_tiny.json").read_text())
    assert info["arch"] == "gpt_neox" and "parameters" in capsys.readouterr().out
    assert not (tmp_path / "m.partial").exists()
