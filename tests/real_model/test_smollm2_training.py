"""Every training path on the real SmolLM2-135M-Instruct (`make test-all`; skipped when it is not
pulled): full fine-tuning with every loss, LoRA, ShaPO on a mask from a real probe, resume from a
checkpoint with a reference-cache hit, reward training and soft labels.

Runs are short (8 PKU-SafeRLHF pairs, 64 tokens, batch 2, 1-2 steps, bf16 autocast with fp32
master weights) and assert what a broken path would change: the first step's loss at the
reference (the policy starts as the reference, so every DPO-family loss is ln 2 there), that
the second step moved the policy, saved outputs that reload, and the subspace's Llama layout.
"""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from safetensors.torch import load_file

from robalign.cli import main
from robalign.config import TrainConfig, load_config, validate_train_config
from robalign.training.checkpoint import checkpoint_dirs
from robalign.training.trainer import train

pytestmark = pytest.mark.slow

PKU = "pku_saferlhf_dpo/pku_seferlhf_realign_dpo_5k.json"
LN2 = math.log(2)
TRL_KEYS = ["loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
            "logps/rejected", "grad_norm", "learning_rate"]
LAYERS, D_FF, D_MODEL = 30, 1536, 576
K = round(0.01 * LAYERS * D_FF)  # the official 1 % of 46,080 neurons: 461


def make_config(tmp_path, model, data, *overrides, name="run"):
    """8 pairs (6 train / 2 held out, whole prompts), 64 tokens, 2 pairs per micro-batch."""
    cfg = load_config(TrainConfig, None, [
        f"output_dir={tmp_path / name}", f"model.name_or_path={model}", f"data.train={data}", "data.limit=8",
        "data.eval_fraction=0.25", "data.max_length=64", "data.max_prompt_length=32",
        "training.per_device_batch_size=2", "training.eval_batch_size=8", "training.max_steps=2",
        "training.learning_rate=1e-5", "training.precision=bf16", "training.save_model=false", *overrides])
    validate_train_config(cfg)
    return cfg


def metric_rows(out) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def step_rows(out) -> dict[int, dict]:
    return {r["step"]: r for r in metric_rows(out) if "grad_norm" in r}


def changed_tensors(base: dict, trained: dict) -> set[str]:
    return {k for k in base if k in trained and not torch.equal(base[k], trained[k])}


def test_dpo_full_finetune_saves_resumes_and_hits_the_reference_cache(tmp_path, smollm2, smollm2_dir, shared_data):
    cfg = make_config(tmp_path, smollm2, shared_data / PKU, "training.save_steps=1", "training.save_model=true")
    first = train(cfg)
    rows = step_rows(first.output_dir)
    assert sorted(rows) == [1, 2] and all(k in rows[1] for k in TRL_KEYS), rows[1]
    # step 1 runs at θ = θ_ref: h = 0 for every pair, so the loss is ln 2 and no reward moves
    assert rows[1]["loss"] == pytest.approx(LN2, abs=1e-3) and abs(rows[1]["rewards/margins"]) < 1e-2
    assert rows[1]["grad_norm"] > 0 and rows[2]["rewards/chosen"] != 0.0  # step 2 sees a moved policy
    assert first.eval_metrics["eval/pairs"] == 2 and "eval/rewards/accuracies" in first.eval_metrics
    info = json.loads((first.output_dir / "run_info.json").read_text())
    assert info["status"] == "complete" and info["train_pairs"] == 6 and not info["reference_cache"]["train_hit"]

    base = load_file(smollm2_dir / "model.safetensors")
    saved = load_file(first.output_dir / "model" / "model.safetensors")
    assert len(changed_tensors(base, saved)) >= len(base) // 2  # full fine-tuning moves every block
    from robalign.evaluation.backends import GenerationRequest, build_backend

    (answer,) = build_backend(f"hf:{first.output_dir / 'model'}", threads=1).generate(
        [GenerationRequest([{"role": "user", "content": "What is the capital of France?"}], max_new_tokens=8)])
    assert "Paris" in answer.text, answer.text  # weights, tokenizer and chat template reload and still answer

    assert [p.name for p in checkpoint_dirs(first.output_dir)] == ["step-000001"]
    resumed = train(cfg, resume=True)  # redoes step 2 from the step-1 checkpoint
    again = step_rows(resumed.output_dir)
    assert sorted(again) == [1, 2] and again[1] == rows[1]  # the log keeps step 1, rewrites step 2
    for key in ("loss", "rewards/margins", "logps/chosen"):
        assert again[2][key] == pytest.approx(rows[2][key], abs=1e-6), key
    info = json.loads((resumed.output_dir / "run_info.json").read_text())
    assert info["reference_cache"]["train_hit"] and info["reference_cache"]["eval_hit"]
    assert info["resumed_from"][-1].endswith("step-000001") and info["status"] == "complete"


def test_reference_cache_keeps_weight_dtypes_apart(tmp_path, smollm2, shared_data):
    """Same model, pairs and precision (bf16 autocast), other weight dtype: a LoRA run on a bf16
    base (allowed: its adapters are fp32), then a full fine-tune of fp32 weights. bf16 weights
    also round the residual stream and the norms, so the reference log-probs differ and the
    second run's cache lookup must miss; served the first run's, its first loss is not ln 2."""
    lora = ["lora.enabled=true", "lora.r=4", "lora.target_modules=[q_proj, v_proj]", "model.dtype=bfloat16"]
    first = train(make_config(tmp_path, smollm2, shared_data / PKU, "training.max_steps=1", *lora, name="bf16"))
    assert step_rows(first.output_dir)[1]["loss"] == pytest.approx(LN2, abs=1e-3)
    second = train(make_config(tmp_path, smollm2, shared_data / PKU, "training.max_steps=1", name="fp32"))
    info = json.loads((second.output_dir / "run_info.json").read_text())
    assert step_rows(second.output_dir)[1]["loss"] == pytest.approx(LN2, abs=1e-3)
    assert not info["reference_cache"]["train_hit"]

# At θ = θ_ref (h = 0): dpo, cdpo, rdpo and soft are each ln 2 for any ε or q; ipo is
# (0 − 1/(2β))² = 25 at β = 0.1; sft is the chosen response's mean token NLL (~2 nats on PKU).
# The first case reads multi-turn HH-RLHF harmless dialogues (rendered turn by turn by the chat
# template; the real test split has 4 rows with an empty response, skipped); the second reads
# the soft labels `robalign soft-labels` wrote from SmolLM2's own reward model.
HH = "hh_rlhf_harmless_base/test.jsonl.gz"
LOSSES = {
    "dpo+cdpo+rdpo+ipo-hh": (["loss.losses={dpo: 1.0, cdpo: 1.0, rdpo: 1.0, ipo: 0.01}", "loss.label_smoothing=0.1",
                              "loss.rdpo_epsilon=0.2", "data.on_invalid=skip"], (3 * LN2 + 0.25, 3 * LN2 + 0.25)),
    "soft+sft-drdpo-accum": (["loss.losses={soft: 1.0, sft: 0.1}", "loss.aggregation=drdpo",
                              "training.gradient_accumulation_steps=2"], (LN2 + 0.1 * 0.5, LN2 + 0.1 * 5.0)),
}


@pytest.mark.parametrize("case", list(LOSSES))
def test_every_loss_trains_the_full_model(tmp_path, smollm2, shared_data, soft_label_file, case):
    overrides, (low, high) = LOSSES[case]
    data = soft_label_file if "soft" in case else shared_data / HH
    result = train(make_config(tmp_path, smollm2, data, *overrides))
    rows = step_rows(result.output_dir)
    assert low - 2e-3 <= rows[1]["loss"] <= high + 2e-3, rows[1]
    assert abs(rows[1]["rewards/margins"]) < 1e-2 and rows[2]["rewards/chosen"] != 0.0
    assert all(math.isfinite(v) for r in rows.values() for v in r.values())
    assert math.isfinite(result.eval_metrics["eval/loss"])
    if case.endswith("-hh"):  # the prompt ends in an opened assistant turn after earlier user turns
        shown = (result.output_dir / "example_pair.txt").read_text()
        assert "<|im_start|>user" in shown and "<|im_start|>assistant\\n'" in shown, shown


def test_lora_trains_only_the_adapter_and_merges(tmp_path, smollm2, smollm2_dir, shared_data):
    result = train(make_config(tmp_path, smollm2, shared_data / PKU, "lora.enabled=true", "lora.r=4",
                               "lora.target_modules=[q_proj, v_proj]", "training.learning_rate=1e-3",
                               "training.save_model=true"))
    rows = step_rows(result.output_dir)
    assert rows[1]["loss"] == pytest.approx(LN2, abs=1e-3)  # B = 0 at start: the policy is the reference
    assert rows[2]["rewards/chosen"] != 0.0
    adapter = result.output_dir / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 4
    lora = load_file(adapter / "adapter_model.safetensors")
    assert {k.split(".")[-2] for k in lora} == {"lora_A", "lora_B"} and len(lora) == 2 * 2 * LAYERS
    merged = load_file(result.output_dir / "model" / "model.safetensors")
    changed = changed_tensors(load_file(smollm2_dir / "model.safetensors"), merged)
    assert len(changed) == 2 * LAYERS and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed)


@pytest.fixture(scope="module")
def smollm2_mask(tmp_path_factory, smollm2_dir, shared_data):
    """A safety probe on 24 PKU pairs (48 texts, 64 tokens), then the Top-1 % neuron mask."""
    root = tmp_path_factory.mktemp("smollm2_shapo")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROBALIGN_CACHE", str(root / "cache"))
        assert main(["probe", "--model", str(smollm2_dir), "--data", str(shared_data / PKU), "--limit", "24",
                     "--max-length", "64", "--out", str(root / "probe")]) == 0
        assert main(["subspace", "--model", str(smollm2_dir), "--probe", str(root / "probe"), "--fraction", "0.01",
                     "--select", "top", "--out", str(root / "mask")]) == 0
    return root


def test_probe_and_subspace_use_the_llama_down_projection_columns(smollm2_mask, smollm2_dir):
    probe = json.loads((smollm2_mask / "probe" / "probe.json").read_text())
    assert probe["n_train_texts"] + probe["n_eval_texts"] == 48
    assert probe["label_source"] == "per-response safety flags"
    info = json.loads((smollm2_mask / "mask" / "mask.json").read_text())
    assert (info["module"], info["layers"], info["k"]) == ("mlp.down_proj", LAYERS, K)
    assert info["d_ff"] == [D_FF] * LAYERS
    masks = load_file(smollm2_mask / "mask" / "mask.safetensors")
    chosen = [masks[f"neurons.{i}"] for i in range(LAYERS)]
    assert sum(c.numel() for c in chosen) == K == sum(info["neurons_per_layer"])
    # written out independently: neuron j of layer i is column j of its (576, 1536) down_proj
    vector = load_file(smollm2_mask / "probe" / "probe.safetensors")["vector"].float()
    weights = load_file(smollm2_dir / "model.safetensors")
    scores = torch.cat([torch.nn.functional.cosine_similarity(
        weights[f"model.layers.{i}.mlp.down_proj.weight"].float(), vector[:, None], dim=0) for i in range(LAYERS)])
    picked = torch.cat([c + i * D_FF for i, c in enumerate(chosen)])
    assert torch.equal(picked.sort().values, scores.topk(K).indices.sort().values)


def test_shapo_trains_on_the_real_mask(tmp_path, smollm2, shared_data, smollm2_mask):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(make_config(tmp_path, smollm2, shared_data / PKU, "training.shapo.enabled=true",
                                   f"training.shapo.mask={smollm2_mask / 'mask'}", "training.shapo.rho=0.05"))
    # the mask was made from the directory and trained under the registered name: same fingerprint
    assert not [w for w in caught if "another checkpoint" in str(w.message)]
    rows = step_rows(result.output_dir)
    assert rows[1]["loss"] == pytest.approx(LN2, abs=1e-3) and rows[2]["rewards/chosen"] != 0.0
    for r in rows.values():
        assert r["shapo/mask_params"] == K * D_MODEL and r["shapo/eps_norm"] == pytest.approx(0.05, rel=1e-3)
        assert r["shapo/loss_gain"] > 0  # ε ascends the masked gradient: L(θ+ε) − L(θ) ≈ ρ‖M⊙g‖
    summary = json.loads((result.output_dir / "run_info.json").read_text())["shapo_mask"]
    assert summary["k"] == K and summary["tensors"] == sum(n > 0 for n in json.loads(
        (smollm2_mask / "mask" / "mask.json").read_text())["neurons_per_layer"])



def test_shapo_under_lora_perturbs_the_masked_lora_a_columns(tmp_path, smollm2, shared_data, smollm2_mask):
    """With LoRA on down_proj, neuron j moves only through column j of lora_A (r = 4, d_ff): the
    mask covers K·r of its entries. B = 0 at the start, so step 1 has no gradient on A (ε = 0)."""
    result = train(make_config(tmp_path, smollm2, shared_data / PKU, "lora.enabled=true", "lora.r=4",
                               "lora.target_modules=[q_proj, v_proj, down_proj]", "training.learning_rate=1e-3",
                               "training.shapo.enabled=true", f"training.shapo.mask={smollm2_mask / 'mask'}"))
    rows = step_rows(result.output_dir)
    assert all(r["shapo/mask_params"] == K * 4 for r in rows.values())
    assert rows[1]["loss"] == pytest.approx(LN2, abs=1e-3) and rows[1]["shapo/eps_norm"] == 0.0
    assert rows[2]["shapo/eps_norm"] == pytest.approx(0.05, rel=1e-3) and rows[2]["shapo/loss_gain"] > 0

@pytest.fixture(scope="module")
def reward_run(tmp_path_factory, smollm2_dir, shared_data):
    """`robalign train-reward` then `robalign soft-labels` on 8 PKU pairs (64 tokens, bf16)."""
    root = tmp_path_factory.mktemp("smollm2_reward")
    common = ["--data", str(shared_data / PKU), "--limit", "8", "--max-length", "64", "--max-prompt-length", "32"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROBALIGN_CACHE", str(root / "cache"))
        assert main(["train-reward", "--model", str(smollm2_dir), *common, "--batch-size", "2",
                     "--precision", "bf16", "--eval-fraction", "0.25", "--out", str(root / "reward")]) == 0
        assert main(["soft-labels", "--reward-model", str(root / "reward"), *common, "--out",
                     str(root / "soft.jsonl")]) == 0
    return root


@pytest.fixture(scope="module")
def soft_label_file(reward_run):
    return reward_run / "soft.jsonl"


def test_reward_model_and_soft_labels(reward_run, smollm2_dir, shared_data):
    from robalign.data.preference import load_pairs
    from robalign.training.reward import load_reward_model, reward_margins, tokenize_for_reward

    out = reward_run / "reward"
    info = json.loads((out / "robalign_reward.json").read_text())
    assert info["kind"] == "reward" and info["layout"] == "sequence_classification" and info["train_pairs"] == 6
    assert info["steps"] == 3 and math.isfinite(info["final_train_loss"])
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"] and len(config["id2label"]) == 1
    trained, base = load_file(out / "model.safetensors"), load_file(smollm2_dir / "model.safetensors")
    assert trained["score.weight"].shape == (1, D_MODEL)
    assert changed_tensors(base, trained) >= {"model.layers.0.mlp.down_proj.weight", "model.embed_tokens.weight"}

    rows = [json.loads(x) for x in (reward_run / "soft.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and len({r["soft_label"] for r in rows}) == 8
    for r in rows:  # β_r = 1: q = σ(Δr) exactly
        assert r["soft_label"] == pytest.approx(1 / (1 + math.exp(-r["reward_margin"])), rel=1e-9)
    # the score is read at the last non-pad token; SmolLM2's pad is its EOS <|im_end|>, which its
    # chat template also writes mid-sequence: a batch of 8 must score each pair as alone
    reward = load_reward_model(str(out))
    pairs = tokenize_for_reward(load_pairs(str(shared_data / PKU), limit=8), reward, 64, 32).pairs
    pad = reward.tokenizer.pad_token_id
    alone = reward_margins(reward.model, pairs, pad, batch_size=1)
    together = reward_margins(reward.model, pairs, pad, batch_size=8)
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(together.double(), torch.tensor([r["reward_margin"] for r in rows]).double(),
                               rtol=1e-4, atol=1e-3)
