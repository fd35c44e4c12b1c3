"""Precision: trained weights are fp32 master weights; bf16 is compute (autocast), never storage.

bf16 keeps 8 significant bits: at |w| = 0.02 (exponent 2⁻⁶) one bf16 step is 2⁻¹³ ≈ 1.2e-4, so an
update below half of that, 6.1e-5, leaves a bf16 weight unchanged. An Adam step of lr = 1e-5 moves
every coordinate by about 1e-5: kept by fp32 master weights, lost by bf16 ones.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from robalign.config import ConfigError, TrainConfig, load_config, validate_train_config
from robalign.errors import UserError
from robalign.training.trainer import train


def _config(tmp_path, model_dir, *overrides, name="run", validate=True):
    cfg = load_config(TrainConfig, None, [
        f"output_dir={tmp_path / name}", f"model.name_or_path={model_dir}", "data.train=synthetic:40",
        "data.max_length=80", "data.max_prompt_length=48", "training.max_steps=1",
        "training.per_device_batch_size=4", *overrides])
    if validate:
        validate_train_config(cfg)
    return cfg


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "bf16"])
def test_low_precision_trained_weights_are_refused_with_the_fix(tmp_path, nano_llama, dtype):
    with pytest.raises(ConfigError, match=r"training\.precision=bf16"):
        _config(tmp_path, nano_llama, f"model.dtype={dtype}")
    # the trainer checks the trainable tensors themselves, whatever the config said
    with pytest.raises(UserError, match=r"no fp32 master copy.*model\.dtype=float32 training\.precision=bf16"):
        train(_config(tmp_path, nano_llama, f"model.dtype={dtype}", validate=False))


def test_lora_on_a_bf16_base_trains_fp32_adapters(tmp_path, nano_llama):
    cfg = _config(tmp_path, nano_llama, "model.dtype=bfloat16", "lora.enabled=true", "lora.r=4",
                  "lora.target_modules=[q_proj, v_proj]", "training.learning_rate=1e-3", "training.save_model=true")
    result = train(cfg)  # validation accepted it: only the adapters are trained, and peft keeps them fp32
    adapter = load_file(result.output_dir / "adapter" / "adapter_model.safetensors")
    assert adapter and all(t.dtype == torch.float32 for t in adapter.values())
    assert any(t.abs().sum() > 0 for k, t in adapter.items() if "lora_B" in k)  # B left 0: it trained


def test_bf16_autocast_step_keeps_fp32_master_weights(tmp_path, nano_llama):
    """One bf16-autocast step at lr 1e-5: the saved weights are fp32, they moved, and most of the
    moved coordinates moved by less than half a bf16 step, so bf16 weights would not have moved."""
    result = train(_config(tmp_path, nano_llama, "training.precision=bf16", "training.learning_rate=1e-5",
                           "training.save_model=true"))
    before = load_file(nano_llama / "model.safetensors")
    after = load_file(result.output_dir / "model" / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in after.values())
    w0 = before["model.layers.0.mlp.down_proj.weight"]
    w1 = after["model.layers.0.mlp.down_proj.weight"]
    moved = w1 != w0
    assert moved.float().mean() > 0.5  # Adam moves (almost) every coordinate by ≈ lr
    assert (w1 - w0).abs().max() < 2e-5
    lost_in_bf16 = (w1.bfloat16() == w0.bfloat16()) & moved
    assert lost_in_bf16.sum() > 0.5 * moved.sum()
