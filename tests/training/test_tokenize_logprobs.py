"""Tokenization masks prompts out of the loss; length limits; log-probs match a full forward."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from robalign.data.preference import DataError, PreferencePair
from robalign.data.tokenize import collate_pairs, render_prompt, tokenize_pairs
from robalign.training.logprobs import pair_logps, token_logps

PAIR = PreferencePair(id="p1", prompt="Who forgot the meeting?", chosen="Nobody can tell.", rejected="The retiree.")


def test_response_mask_covers_exactly_the_response(tiny_tokenizer):
    tp = tokenize_pairs([PAIR], tiny_tokenizer, max_length=64, max_prompt_length=32).pairs[0]
    batch = collate_pairs([tp], tiny_tokenizer.pad_token_id)
    chosen_row = batch.input_ids[0][batch.response_mask[0].bool()].tolist()
    assert tiny_tokenizer.decode(chosen_row) == "Nobody can tell.<|end|>"
    rejected_row = batch.input_ids[1][batch.response_mask[1].bool()].tolist()
    assert tiny_tokenizer.decode(rejected_row) == "The retiree.<|end|>"
    prompt = tiny_tokenizer.decode(batch.input_ids[0][: len(tp.prompt_ids)])
    assert prompt == render_prompt(PAIR.prompt, tiny_tokenizer)[0] == "<|user|>\nWho forgot the meeting?<|end|>\n<|assistant|>\n"
    assert batch.first_response == len(tp.prompt_ids)
    assert batch.attention_mask.sum().item() == 2 * len(tp.prompt_ids) + len(tp.chosen_ids) + len(tp.rejected_ids)


def test_long_prompt_modes(tiny_tokenizer):
    long = PreferencePair(id="long-1", prompt="word " * 200, chosen="a b", rejected="c d")
    kept = tokenize_pairs([long], tiny_tokenizer, max_length=40, max_prompt_length=16)
    assert len(kept.pairs[0].prompt_ids) == 16 and kept.truncated == 1
    # keep_end: the generation prompt (assistant turn) survives truncation
    assert tiny_tokenizer.decode(kept.pairs[0].prompt_ids).endswith("<|assistant|>\n")
    skipped = tokenize_pairs([long, PAIR], tiny_tokenizer, 40, 16, long_prompt="skip")
    assert skipped.skipped_ids == ["long-1"] and [p.id for p in skipped.pairs] == ["p1"]
    with pytest.raises(DataError, match=r"train\.jsonl: pair 'long-1' \(row 1\).*max_prompt_length=16"):
        tokenize_pairs([long], tiny_tokenizer, 40, 16, long_prompt="error", source="train.jsonl")


def test_responses_cut_to_max_length(tiny_tokenizer):
    pair = PreferencePair(id="r", prompt="hi", chosen="yes " * 100, rejected="no")
    tp = tokenize_pairs([pair], tiny_tokenizer, max_length=20, max_prompt_length=10).pairs[0]
    assert len(tp.prompt_ids) + len(tp.chosen_ids) == 20
    assert tp.rejected_ids[-1] == tiny_tokenizer.eos_token_id  # untouched one keeps its EOS


@pytest.mark.parametrize("fixture", ["nano_llama", "nano_gpt_neox", "nano_gpt2"])
def test_pair_logps_equal_a_full_forward(fixture, request, tiny_tokenizer):
    """logits_to_keep skips prompt positions; the response log-probs must not change."""
    model = AutoModelForCausalLM.from_pretrained(request.getfixturevalue(fixture)).double()
    pairs = [PAIR, PreferencePair(id="p2", prompt="A much longer question about who did what at the office today?",
                                  chosen="I cannot say.", rejected="The foreign student did it, obviously.")]
    batch = collate_pairs(tokenize_pairs(pairs, tiny_tokenizer, 64, 32).pairs, tiny_tokenizer.pad_token_id)
    fast = pair_logps(model, batch)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    full = (token_logps(logits[:, :-1], batch.input_ids[:, 1:]) * batch.response_mask[:, 1:]).sum(-1)
    torch.testing.assert_close(torch.cat([fast.chosen, fast.rejected]), full, rtol=0, atol=1e-9)
    assert fast.chosen_lengths.tolist() == [len(tiny_tokenizer("Nobody can tell.")["input_ids"]) + 1,
                                            len(tiny_tokenizer("I cannot say.")["input_ids"]) + 1]
