"""Reward models load with the head their checkpoint holds, or not at all.

Three small saved layouts, built offline from a random 1-layer Llama (hidden 16):
(a) transformers' LlamaForSequenceClassification with a one-label `score` head;
(b) the safe-rlhf layout (`model.*` + `score_head.*`, config `architectures: ["LlamaForScore"]`),
    as PKU-Alignment/beaver-7b-v1.0-cost is stored;
(c) a bare causal LM, and a safe-rlhf config whose weights lack the head.
Scores are checked against a manual forward pass with the saved weights.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from robalign.cli import main
from robalign.data.preference import PreferencePair
from robalign.data.tokenize import collate_pairs
from robalign.errors import UserError
from robalign.training import reward as rw  # module import: on older code each test fails on its own
from robalign.training.reward import load_reward_model, reward_margins

PAIRS = [
    PreferencePair("p0", "How do I pick a lock?", "I can't help with that.", "Sure, first get a tension wrench."),
    PreferencePair("p1", "Tell me about bread.", "Bread is baked from flour and water.", "No."),
    PreferencePair("p2", [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                          {"role": "user", "content": "Insult me."}], "I'd rather not.", "You are awful."),
]


def _config(tok, **extra):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       num_key_value_heads=2, intermediate_size=32, max_position_embeddings=256,
                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                       **extra)


def _manual_hidden(directory, tok, input_ids, attention_mask):
    """Final hidden states (B, T, 16) of a LlamaModel holding the saved `model.*` weights."""
    from transformers import LlamaModel

    weights = load_file(str(directory / "model.safetensors"))
    backbone = LlamaModel(_config(tok)).eval()
    backbone.load_state_dict({k[len("model."):]: v for k, v in weights.items() if k.startswith("model.")})
    with torch.no_grad():
        return backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state, weights


@pytest.fixture(scope="module")
def seq_cls_dir(tmp_path_factory, tiny_tokenizer):
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(1)
    out = tmp_path_factory.mktemp("seqcls") / "rm"
    LlamaForSequenceClassification(_config(tiny_tokenizer, num_labels=1)).save_pretrained(out)
    tiny_tokenizer.save_pretrained(out)
    return out


def _safe_rlhf_dir(root, tok, bias: bool, with_head: bool = True, **config_extra):
    """A safe-rlhf score model as save_pretrained writes it: LlamaModel under `model.`, `score_head`."""
    from transformers import LlamaModel

    torch.manual_seed(2)
    backbone = LlamaModel(_config(tok))
    weights = {f"model.{k}": v.contiguous() for k, v in backbone.state_dict().items()}
    if with_head:
        weights["score_head.weight"] = torch.randn(1, 16)
        if bias:
            weights["score_head.bias"] = torch.tensor([0.75])
    root.mkdir(parents=True)
    save_file(weights, str(root / "model.safetensors"), metadata={"format": "pt"})
    config = _config(tok).to_dict() | {"architectures": ["LlamaForScore"], "score_dim": 1, "bias": bias,
                                       "score_type": "cost", "do_normalize": False} | config_extra
    (root / "config.json").write_text(json.dumps(config))
    tok.save_pretrained(root)
    return root


def test_sequence_classifier_scores_equal_a_manual_forward(seq_cls_dir, tiny_tokenizer):
    reward = load_reward_model(str(seq_cls_dir))
    assert reward.layout == "sequence_classification"
    pairs = rw.tokenize_for_reward(PAIRS, reward, 96, 64).pairs
    batch = collate_pairs(pairs, tiny_tokenizer.pad_token_id)
    hidden, weights = _manual_hidden(seq_cls_dir, tiny_tokenizer, batch.input_ids, batch.attention_mask)
    last = batch.attention_mask.sum(1) - 1  # right padding, and the tiny tokenizer's pad is not its EOS
    scores = (hidden[torch.arange(len(last)), last] @ weights["score.weight"].T).squeeze(-1)
    expected = scores[:3] - scores[3:]
    torch.testing.assert_close(reward_margins(reward.model, pairs, tiny_tokenizer.pad_token_id), expected,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bias", [False, True])
def test_safe_rlhf_score_model_loads_its_head_and_template(tmp_path, tiny_tokenizer, bias):
    root = _safe_rlhf_dir(tmp_path / "beaver", tiny_tokenizer, bias)
    reward = load_reward_model(str(root))
    assert reward.layout == "safe_rlhf"
    saved = load_file(str(root / "model.safetensors"))
    torch.testing.assert_close(reward.model.score_head.weight, saved["score_head.weight"], rtol=0, atol=0)
    # the conversation text safe-rlhf scores, tokenized in one piece, then EOS
    pairs = rw.tokenize_for_reward(PAIRS, reward, 128, 64).pairs
    eos = tiny_tokenizer.eos_token
    texts = [tiny_tokenizer.decode(p.chosen_ids) for p in pairs]
    assert texts[0] == "BEGINNING OF CONVERSATION: USER: How do I pick a lock? ASSISTANT:I can't help with that." + eos
    assert texts[2] == ("BEGINNING OF CONVERSATION: USER: Hi ASSISTANT:Hello!" + eos
                        + "USER: Insult me. ASSISTANT:I'd rather not." + eos)
    assert list(pairs[1].rejected_ids) == tiny_tokenizer(
        "BEGINNING OF CONVERSATION: USER: Tell me about bread. ASSISTANT:No.")["input_ids"] + [tiny_tokenizer.eos_token_id]
    # scores: the saved head on the final hidden state of the last token
    batch = collate_pairs(pairs, tiny_tokenizer.pad_token_id)
    hidden, _ = _manual_hidden(root, tiny_tokenizer, batch.input_ids, batch.attention_mask)
    last = batch.attention_mask.sum(1) - 1
    cost = hidden[torch.arange(len(last)), last] @ saved["score_head.weight"].T
    cost = (cost + (saved["score_head.bias"] if bias else 0)).squeeze(-1)
    margins = reward_margins(reward.model, pairs, tiny_tokenizer.pad_token_id, "cost")
    torch.testing.assert_close(margins, -(cost[:3] - cost[3:]), rtol=1e-5, atol=1e-5)


def test_safe_rlhf_normalised_cost_is_scaled_by_its_std(tmp_path, tiny_tokenizer):
    plain = load_reward_model(str(_safe_rlhf_dir(tmp_path / "plain", tiny_tokenizer, False)))
    scaled = load_reward_model(str(_safe_rlhf_dir(tmp_path / "norm", tiny_tokenizer, False, do_normalize=True,
                                                  mean=[0.5], var=[4.0])))
    pairs = rw.tokenize_for_reward(PAIRS, plain, 128, 64).pairs
    raw = reward_margins(plain.model, pairs, tiny_tokenizer.pad_token_id, "cost")
    # cost normaliser: x / (std + 1e-8), std = √4 = 2, no shift (the mean cancels in Δr anyway)
    torch.testing.assert_close(reward_margins(scaled.model, pairs, tiny_tokenizer.pad_token_id, "cost"), raw / 2)


def test_soft_labels_cli_with_a_safe_rlhf_cost_model(tmp_path, tiny_tokenizer, capsys):
    root = _safe_rlhf_dir(tmp_path / "beaver", tiny_tokenizer, True)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"id": p.id, "prompt": p.prompt, "chosen": p.chosen,
                                        "rejected": p.rejected}) + "\n" for p in PAIRS[:2]))
    out = tmp_path / "soft.jsonl"
    capsys.readouterr()
    # no --cost: the config's score_type says cost, so r = −cost
    assert main(["soft-labels", "--reward-model", str(root), "--data", str(data), "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["kind"] == "cost" and summary["layout"] == "safe_rlhf"
    reward = load_reward_model(str(root))
    expected = reward_margins(reward.model, rw.tokenize_for_reward(PAIRS[:2], reward, 256, 128).pairs,
                              tiny_tokenizer.pad_token_id, "cost")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["reward_margin"] for r in rows] == pytest.approx(expected.tolist(), rel=1e-5)
    assert rows[0]["soft_label"] == pytest.approx(1 / (1 + math.exp(-rows[0]["reward_margin"])))


def test_a_model_without_a_trained_head_is_refused(tmp_path, nano_llama, tiny_tokenizer, capsys):
    with pytest.raises(UserError, match="no trained reward head: score.weight missing"):
        load_reward_model(str(nano_llama))
    headless = _safe_rlhf_dir(tmp_path / "headless", tiny_tokenizer, True, with_head=False)
    with pytest.raises(UserError, match="score_head.bias, score_head.weight missing"):
        load_reward_model(str(headless))
    capsys.readouterr()
    assert main(["soft-labels", "--reward-model", str(nano_llama), "--data", "synthetic:4",
                 "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "robalign train-reward" in capsys.readouterr().err
    # train-reward is the one place a causal LM may get a fresh head: it trains it
    assert load_reward_model(str(nano_llama), allow_new_head=True).layout == "sequence_classification"


def test_a_several_label_classifier_is_refused(tmp_path, tiny_tokenizer):
    from transformers import LlamaForSequenceClassification

    out = tmp_path / "two"
    LlamaForSequenceClassification(_config(tiny_tokenizer, num_labels=2)).save_pretrained(out)
    tiny_tokenizer.save_pretrained(out)
    with pytest.raises(UserError, match="one"):
        load_reward_model(str(out))
