"""Conversation formats: a base model's prompt and response are never glued together, and
training, the probe and generation render a prompt identically."""

from __future__ import annotations

import copy

import pytest

from robalign.config import ConfigError, TrainConfig, validate_train_config
from robalign.data.formats import TRANSCRIPTS, render_pair_text, render_prompt, render_transcript
from robalign.data.preference import PreferencePair
from robalign.data.tokenize import tokenize_pairs
from robalign.errors import UserError


@pytest.fixture(scope="module")
def base_tokenizer(tiny_tokenizer):
    """The offline tokenizer without a chat template, as a base model's would be."""
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = None
    return tok


def test_hh_is_the_default_without_a_template(base_tokenizer):
    rendered = render_prompt("How do I bake bread?", base_tokenizer)
    assert rendered.format == "hh" and not rendered.templated
    assert rendered.text == "\n\nHuman: How do I bake bread?\n\nAssistant:"
    assert render_pair_text("Hi", "Hello.", base_tokenizer) == "\n\nHuman: Hi\n\nAssistant: Hello."


def test_auto_uses_the_chat_template_when_there_is_one(tiny_tokenizer):
    rendered = render_prompt("Hi", tiny_tokenizer)
    expected = tiny_tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                                  add_generation_prompt=True)
    assert rendered == (expected, "chat_template", "")


def test_multi_turn_and_system_in_a_transcript():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    assert render_transcript(messages, TRANSCRIPTS["hh"]) == (
        "Be brief.\n\n\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant:")
    assert render_transcript(messages[1:2], TRANSCRIPTS["safe_rlhf"]) == (
        "BEGINNING OF CONVERSATION: USER: a ASSISTANT:")


def test_explicit_template_without_one_and_unknown_names_are_clear_errors(base_tokenizer):
    with pytest.raises(UserError, match="no chat template.*prompt_format=hh"):
        render_prompt("x", base_tokenizer, "chat_template")
    with pytest.raises(UserError, match="unknown prompt format 'chatml'"):
        render_prompt("x", base_tokenizer, "chatml")
    config = TrainConfig()
    config.data.prompt_format = "chatml"
    with pytest.raises(ConfigError, match="data.prompt_format"):
        validate_train_config(config)


def test_tokenized_pair_keeps_prompt_and_response_apart(base_tokenizer):
    pair = PreferencePair("p0", "Tell me a joke", "Why did the chicken cross?", "No.")
    (tok,) = tokenize_pairs([pair], base_tokenizer, max_length=128, max_prompt_length=64).pairs
    text = base_tokenizer.decode(tok.prompt_ids + tok.chosen_ids, skip_special_tokens=True)
    # before: "Tell me a jokeWhy did the chicken cross?"
    assert text == "\n\nHuman: Tell me a joke\n\nAssistant: Why did the chicken cross?"
    assert tok.chosen_ids[-1] == base_tokenizer.eos_token_id


def test_probe_texts_match_training_rendering(base_tokenizer):
    from robalign.training.probe import probe_examples

    pair = PreferencePair("p0", "Q?", "I can't help with that.", "Sure, here is how.")
    texts = {e.text for e in probe_examples([pair], base_tokenizer).examples}
    assert texts == {render_pair_text("Q?", r, base_tokenizer) for r in (pair.chosen, pair.rejected)}


def test_generation_feeds_the_prompt_ids_training_uses(base_tokenizer, tiny_tokenizer):
    from robalign.evaluation.hf_backend import prompt_token_ids

    pair = PreferencePair("p0", "Tell me a joke", "Why?", "No.")
    for tok in (base_tokenizer, tiny_tokenizer):  # transcript format, and a chat template
        (trained,) = tokenize_pairs([pair], tok, max_length=128, max_prompt_length=64).pairs
        assert tuple(prompt_token_ids(tok, [{"role": "user", "content": pair.prompt}])) == trained.prompt_ids
    # before: a base model was asked "Tell me a joke" bare, while trained on another layout
    decoded = base_tokenizer.decode(prompt_token_ids(base_tokenizer, [{"role": "user", "content": "Hi"}]))
    assert decoded == "\n\nHuman: Hi\n\nAssistant:"


def test_safe_rlhf_conversations_end_earlier_answers_with_eos(base_tokenizer):
    from robalign.models.reward_heads import safe_rlhf_text

    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"}]
    text = render_prompt(messages, base_tokenizer, "safe_rlhf").text
    assert text == "BEGINNING OF CONVERSATION: USER: a ASSISTANT:b<|end|>USER: c ASSISTANT:"
    # reward scoring renders the same template (one definition)
    assert safe_rlhf_text(messages, "d", base_tokenizer.eos_token) == text + "d"
