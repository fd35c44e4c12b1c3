"""The trainer end to end on a nano model: it learns, records how it ran, and fails cleanly."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from robalign.cli import main
from robalign.config import TrainConfig, load_config, validate_train_config
from robalign.data.synthetic import synthetic_pairs
from robalign.data.tokenize import collate_pairs, tokenize_pairs
from robalign.errors import UserError
from robalign.models.loading import ModelNotFound, load_causal_lm
from robalign.training.reference import compute_reference_logps
from robalign.training.step import LossSettings, accumulate_gradients
from robalign.training.trainer import train

TRL_KEYS = ["rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
            "logps/rejected"]


def make_config(tmp_path, model_dir, *overrides):
    cfg = load_config(TrainConfig, None, [
        f"output_dir={tmp_path / 'run'}", f"model.name_or_path={model_dir}", "data.train=synthetic:200",
        "data.max_length=96", "data.max_prompt_length=64", "training.max_steps=2", "training.per_device_batch_size=4",
        "training.learning_rate=1e-3", *overrides])
    validate_train_config(cfg)
    return cfg


def test_two_step_smoke_changes_parameters_and_records_the_run(tmp_path, nano_llama):
    result = train(make_config(tmp_path, nano_llama))
    before, after = load_file(nano_llama / "model.safetensors"), load_file(result.output_dir / "model" / "model.safetensors")
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) >= len(before) // 2, changed
    info = json.loads((result.output_dir / "run_info.json").read_text())
    assert info["status"] == "complete" and info["versions"]["torch"] and "commit" in info["git"]
    # the hold-out moves whole prompt groups, so eval may overshoot 10 % a little
    assert info["train_pairs"] + info["eval_pairs"] == 200 and 20 <= info["eval_pairs"] < 40
    assert info["flipped_ids"] == []
    lines = [json.loads(x) for x in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines[:2]] == [1, 2] and all(k in lines[0] for k in TRL_KEYS + ["loss", "grad_norm"])
    assert "eval/rewards/accuracies" in lines[-1]
    assert load_config(TrainConfig, result.output_dir / "config.yaml").data.train == "synthetic:200"
    assert not (result.output_dir / "model.partial").exists()


def test_dpo_learns_held_out_preferences(tmp_path, nano_llama):
    """A few dozen steps on a few hundred pairs: held-out reward accuracy well above chance."""
    cfg = make_config(tmp_path, nano_llama, "data.train=synthetic:400", "training.max_steps=40",
                      "training.per_device_batch_size=8", "training.learning_rate=5e-4",
                      "data.eval_fraction=0.15", "training.save_model=false")
    result = train(cfg)
    assert result.eval_metrics["eval/pairs"] >= 60
    assert result.eval_metrics["eval/rewards/accuracies"] > 0.7, result.eval_metrics
    assert result.eval_metrics["eval/rewards/margins"] > 0


@pytest.mark.parametrize("overrides", [
    ["loss.losses={ipo: 1.0}"], ["loss.losses={cdpo: 1.0}", "loss.label_smoothing=0.1"],
    ["loss.losses={rdpo: 1.0}", "loss.rdpo_epsilon=0.2"], ["loss.losses={soft: 1.0}"],
    ["loss.losses={dpo: 1.0, sft: 0.1}"], ["loss.aggregation=drdpo", "training.gradient_accumulation_steps=2"],
    ["training.precision=bf16"], ["training.optimizer=rmsprop", "training.lr_scheduler=cosine", "training.warmup_steps=1"],
], ids=["ipo", "cdpo", "rdpo", "soft", "dpo+sft", "drdpo-accum", "bf16", "rmsprop-cosine"])
def test_every_loss_and_mode_trains(tmp_path, nano_llama, overrides):
    result = train(make_config(tmp_path, nano_llama, "training.save_model=false", *overrides))
    assert all(torch.isfinite(torch.tensor(v)) for v in result.final_metrics.values())


def test_label_noise_is_recorded_and_reference_cache_reused(tmp_path, nano_llama):
    first = train(make_config(tmp_path, nano_llama, "data.noise_rate=0.25", "training.save_model=false"))
    info = json.loads((first.output_dir / "run_info.json").read_text())
    assert len(info["flipped_ids"]) == round(0.25 * info["train_pairs"]) and not info["reference_cache"]["train_hit"]
    second = train(make_config(tmp_path, nano_llama, "data.noise_rate=0.25", "training.save_model=false"),
                   overwrite=True)
    info2 = json.loads((second.output_dir / "run_info.json").read_text())
    assert info2["reference_cache"]["train_hit"] and info2["flipped_ids"] == info["flipped_ids"]
    assert second.final_metrics["loss"] == first.final_metrics["loss"]  # deterministic on CPU


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("aggregation", ["drdpo", "mean"])
def test_accumulation_equals_full_batch(nano_llama, tiny_tokenizer, aggregation):
    """Dr.DPO couples all pairs of the effective batch: 4 micro-batches of 2 must give the
    gradient of one batch of 8."""
    model = load_causal_lm(str(nano_llama)).double()
    pairs = tokenize_pairs(synthetic_pairs(8, seed=5), tiny_tokenizer, 96, 64).pairs
    reference = compute_reference_logps(model, pairs, tiny_tokenizer.pad_token_id)
    # move the policy away from the reference so the per-pair losses differ
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    settings = LossSettings({"dpo": 1.0}, 0.5, 0.0, 0.1, False, aggregation, 0.5)
    pad = tiny_tokenizer.pad_token_id
    full = accumulate_gradients(model, [collate_pairs(pairs, pad)], reference, settings)
    g_full = _grads(model)
    model.zero_grad(set_to_none=True)
    micro = accumulate_gradients(model, [collate_pairs(pairs[i:i + 2], pad) for i in range(0, 8, 2)],
                                 reference, settings)
    g_micro = _grads(model)
    assert full["loss"] == pytest.approx(micro["loss"], abs=1e-10)
    for name, g in g_full.items():
        torch.testing.assert_close(g_micro[name], g, rtol=1e-6, atol=1e-9)


def test_lora_trains_only_the_adapter(tmp_path, nano_llama):
    result = train(make_config(tmp_path, nano_llama, "lora.enabled=true", "lora.r=4",
                               "lora.target_modules=[q_proj, v_proj]"))
    assert (result.output_dir / "adapter" / "adapter_config.json").is_file()
    merged = load_file(result.output_dir / "model" / "model.safetensors")
    base = load_file(nano_llama / "model.safetensors")
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert changed and all(("q_proj" in k or "v_proj" in k) for k in changed), changed


def test_bad_inputs_give_clear_errors_and_leave_nothing_as_complete(tmp_path, nano_llama):
    with pytest.raises(ModelNotFound, match="does/not/exist.*robalign tiny-model"):
        train(make_config(tmp_path, "./does/not/exist"))
    cfg = make_config(tmp_path, nano_llama)
    train(cfg)
    with pytest.raises(UserError, match="already holds a run.*--resume"):
        train(cfg)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt": "q2", "chosen": "", "rejected": "b"}\n')
    with pytest.raises(UserError, match="bad.jsonl"):
        train(make_config(tmp_path, nano_llama, f"data.train={bad}", "output_dir=" + str(tmp_path / "r2")))
    info = json.loads((tmp_path / "r2" / "run_info.json").read_text()) if (tmp_path / "r2" / "run_info.json").exists() else {}
    assert info.get("status") != "complete" and not (tmp_path / "r2" / "model").exists()


def test_cli_train_and_errors(tmp_path, nano_llama, capsys):
    args = ["train", f"output_dir={tmp_path / 'cli'}", f"model.name_or_path={nano_llama}", "data.train=synthetic:100",
            "training.max_steps=1", "training.save_model=false"]
    assert main(args) == 0
    assert '"eval/rewards/accuracies"' in capsys.readouterr().out
    assert (tmp_path / "cli" / "eval_results.json").is_file()
    assert main(args) == 2  # existing run, no --resume
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "loss.losses={dpoo: 1}"]) == 2
    assert "Did you mean 'dpo'" in capsys.readouterr().err


def test_tensorboard_sink_writes_events(tmp_path, nano_llama):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = train(make_config(tmp_path, nano_llama, "training.report_to=[tensorboard]", "training.save_model=false"))
    events = EventAccumulator(str(result.output_dir / "tensorboard")).Reload()
    assert {"rewards/margins", "loss", "eval/rewards/accuracies"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("loss")] == [1, 2]


def test_non_finite_gradients_skip_the_step_and_leave_weights_alone(tmp_path, nano_llama):
    """A poisoned weight makes every gradient NaN: the optimizer must not step on it."""
    import shutil

    from safetensors.torch import save_file

    poisoned = tmp_path / "poisoned"
    shutil.copytree(nano_llama, poisoned)
    weights = load_file(poisoned / "model.safetensors")
    name = next(k for k in weights if "layers.1.mlp.up_proj" in k)
    weights[name][0, 0] = float("nan")
    save_file(weights, poisoned / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(UserError, match="log-probs are not finite before any update"):
        train(make_config(tmp_path, poisoned))  # the pre-flight check stops it first
    with pytest.warns(UserWarning, match="non-finite gradient norm, optimizer step skipped"):
        result = train(make_config(tmp_path, poisoned, "training.check_initial_loss=false"), overwrite=True)
    after = load_file(result.output_dir / "model" / "model.safetensors")
    for key, value in weights.items():
        assert torch.equal(after[key], value) if key != name else torch.isnan(after[key][0, 0])


def test_rows_skipped_as_invalid_are_recorded(tmp_path, nano_llama):
    rows = [{"prompt": f"question {i}?", "chosen": f"careful answer {i}", "rejected": f"careless answer {i}"}
            for i in range(40)]
    rows[6]["chosen"] = "   "  # data row 7
    rows[20]["rejected"] = rows[20]["chosen"]  # data row 21: no preference
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = train(make_config(tmp_path, nano_llama, f"data.train={data}", "data.on_invalid=skip",
                               "training.save_model=false"))
    info = json.loads((result.output_dir / "run_info.json").read_text())
    assert info["invalid_rows_skipped"] == {"train": [7, 21], "eval": []}
    assert info["train_pairs"] + info["eval_pairs"] == 38
