"""The architecture mapping: where each family keeps its MLP down-projection and which axis of
the weight is a neuron (GPT-2's Conv1D stores the transpose of nn.Linear's weight)."""

from __future__ import annotations

import pytest
import torch

from robalign.errors import UserError
from robalign.models.layers import MLP_DOWN_PROJECTION, down_projections, neuron_parameters
from robalign.models.loading import load_causal_lm


@pytest.mark.parametrize("fixture, suffix, axis", [("nano_llama", "mlp.down_proj", 1),
                                                   ("nano_gpt_neox", "mlp.dense_4h_to_h", 1),
                                                   ("nano_gpt2", "mlp.c_proj", 0)])
def test_each_family_maps_its_down_projection(request, fixture, suffix, axis):
    model = load_causal_lm(str(request.getfixturevalue(fixture)))
    assert MLP_DOWN_PROJECTION[model.config.model_type] == suffix
    dps = down_projections(model)
    assert [d.layer for d in dps] == list(range(4)) and all(d.name.endswith(suffix) for d in dps)
    assert all(d.neuron_axis == axis and d.d_ff == 256 for d in dps)
    assert "attn" not in " ".join(d.name for d in dps)  # GPT-2's attention also has a c_proj
    # Functional definition of a neuron: a one-hot activation on unit j adds exactly vector j
    # to the module's output. This is what catches a transposed weight.
    for dp in dps:
        x = torch.zeros(2, dp.d_ff)
        x[0, 37] = 1.0
        with torch.no_grad():
            y = dp.module(x)
        torch.testing.assert_close(y[0] - y[1], dp.neuron_vectors()[37])
        assert dp.neuron_vectors().shape == (256, 96)


def test_lora_neurons_are_columns_of_lora_a(nano_gpt2):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(load_causal_lm(str(nano_gpt2)), LoraConfig(r=4, target_modules=["c_proj"],
                                                                     fan_in_fan_out=True))
    params = neuron_parameters(model)
    # only the MLP c_proj (not attn.c_proj), one lora_A per layer, (r, d_ff) with neurons on axis 1
    assert len(params) == 4 and all("mlp.c_proj.lora_A" in p.name for p in params)
    assert all(p.param.shape == (4, 256) and p.axis == 1 for p in params)
    # column j of lora_A moves only column j of ΔW = B·A: check on the effective weight delta
    dp = down_projections(model)[0]
    lora_a, lora_b = dp.module.lora_A["default"].weight, dp.module.lora_B["default"].weight
    with torch.no_grad():
        lora_b.normal_()
        before = lora_b @ lora_a
        lora_a[:, 5] += 1.0
        moved = ((lora_b @ lora_a) - before).abs().sum(0) > 0  # (d_ff,) which neuron columns changed
    assert moved.nonzero().flatten().tolist() == [5]


def test_unknown_architecture_names_the_table(nano_llama):
    model = load_causal_lm(str(nano_llama))
    model.config.model_type = "mystery"
    with pytest.raises(UserError, match="MLP_DOWN_PROJECTION in robalign/models/layers.py"):
        down_projections(model)
