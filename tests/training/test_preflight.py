"""Pre-training checks: the logged example pair shows special tokens (and a doubled BOS), and
the first batch's DPO loss is ln 2 exactly when the policy starts as the reference."""

from __future__ import annotations

import math

import pytest

from robalign.data.synthetic import synthetic_pairs
from robalign.data.tokenize import TokenizedPair, collate_pairs, tokenize_pairs
from robalign.errors import UserError
from robalign.models.loading import load_causal_lm, load_tokenizer
from robalign.training.preflight import check_initial_loss, describe_pair, initial_dpo_loss
from robalign.training.reference import compute_reference_logps


def test_describe_pair_shows_special_tokens_and_flags_a_doubled_bos(tiny_tokenizer):
    bos, eos = tiny_tokenizer.bos_token_id, tiny_tokenizer.eos_token_id
    hello = tuple(tiny_tokenizer("hello", add_special_tokens=False)["input_ids"])
    clean = TokenizedPair("p", (bos, *hello), (*hello, eos), (*hello, eos))
    text = describe_pair(clean, tiny_tokenizer)
    assert "<|bos|>hello" in text and "hello<|end|>" in text and "WARNING" not in text
    doubled = TokenizedPair("p", (bos, bos, *hello), (*hello, eos), (*hello, eos))
    assert "opens with <|bos|> twice" in describe_pair(doubled, tiny_tokenizer)


@pytest.fixture(scope="module")
def first_batch(nano_llama):
    tokenizer = load_tokenizer(str(nano_llama))
    model = load_causal_lm(str(nano_llama))
    pairs = tokenize_pairs(synthetic_pairs(8), tokenizer, max_length=96, max_prompt_length=48).pairs
    reference = compute_reference_logps(model, pairs, tokenizer.pad_token_id, batch_size=3)  # other padding
    return model, collate_pairs(pairs, tokenizer.pad_token_id), reference


def test_loss_is_ln2_when_policy_is_the_reference(first_batch):
    model, batch, reference = first_batch
    loss = initial_dpo_loss(model, batch, reference, beta=0.1)
    assert loss.mean == pytest.approx(math.log(2), abs=1e-5) and loss.deviation < 1e-5
    check_initial_loss(loss, "fp32")


def test_a_shifted_reference_is_caught(first_batch):
    model, batch, (chosen, rejected) = first_batch
    # a reference computed on other tokens: chosen log-probs 2 nats higher -> h = -2 for every pair
    stale = ({k: v + 2.0 for k, v in chosen.items()}, rejected)
    loss = initial_dpo_loss(model, batch, stale, beta=0.1)
    assert loss.mean == pytest.approx(-math.log(1 / (1 + math.exp(0.2))), abs=1e-4)  # -log σ(-0.2) = 0.798
    with pytest.raises(UserError, match="not ln 2.*does not start as the reference"):
        check_initial_loss(loss, "fp32")


def test_mismatches_of_both_signs_do_not_cancel(first_batch):
    model, batch, (chosen, rejected) = first_batch
    # half the pairs 2 nats too high, half 2 nats too low: the mean loss is ln 2 + O(u²) = 0.698,
    # within 5e-3 of ln 2, but every pair is off by ~0.1
    ids = sorted(chosen)
    shifted = ({k: v + (2.0 if ids.index(k) % 2 else -2.0) for k, v in chosen.items()}, rejected)
    loss = initial_dpo_loss(model, batch, shifted, beta=0.1)
    assert abs(loss.mean - math.log(2)) < 6e-3 and loss.deviation > 0.09
    with pytest.raises(UserError, match="deviate by 0.1"):
        check_initial_loss(loss, "bf16")


def _config(tmp_path, model_dir, *overrides):
    from robalign.config import TrainConfig, load_config

    return load_config(TrainConfig, None, [
        f"output_dir={tmp_path / 'run'}", f"model.name_or_path={model_dir}", "data.train=synthetic:200",
        "data.max_length=96", "data.max_prompt_length=64", "training.max_steps=2",
        "training.per_device_batch_size=4", *overrides])


def test_trainer_logs_the_pair_checks_ln2_and_scores_only_scheduled_pairs(tmp_path, nano_llama):
    import json

    from robalign.training.trainer import train

    result = train(_config(tmp_path, nano_llama))
    info = json.loads((result.output_dir / "run_info.json").read_text())
    assert info["initial_dpo_loss"]["mean"] == pytest.approx(math.log(2), abs=1e-5)
    assert info["reference_pairs"] == 8 < info["train_pairs"]  # 2 steps x 4 pairs, not all 180
    assert "<|assistant|>" in (result.output_dir / "example_pair.txt").read_text()


def test_a_stale_reference_cache_stops_the_run(tmp_path, nano_llama):
    import json

    from safetensors.torch import load_file, save_file

    from robalign.training.trainer import train

    first = train(_config(tmp_path, nano_llama))
    cache = json.loads((first.output_dir / "run_info.json").read_text())["reference_cache"]["train"]
    tensors = load_file(cache)
    save_file({**tensors, "chosen": tensors["chosen"] + 2.0}, cache)  # as if computed on other tokens
    with pytest.raises(UserError, match="not ln 2"):
        train(_config(tmp_path, nano_llama), overwrite=True)
    train(_config(tmp_path, nano_llama, "training.check_initial_loss=false"), overwrite=True)  # opt-out runs
