"""Architecture-specific module names, kept in one place: which module is each layer's MLP
down-projection, and how its weight stores one "neuron".

A neuron (ShaPO, DESIGN.md §2) is one hidden unit j of a transformer MLP: the down-projection
maps the d_ff-dimensional activation back to the d_model residual stream, and neuron j writes
the vector W_down[:, j] (length d_model) into it. ``nn.Linear`` stores W_down as (d_model, d_ff),
so the neuron is a column (axis 1); GPT-2's ``Conv1D`` stores the transpose, (d_ff, d_model),
so there the neuron is a row (axis 0).

Supporting a new architecture is one line in ``MLP_DOWN_PROJECTION`` (its ``config.model_type``
and the module path inside a layer); the tests build a tiny model of each listed family.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import torch

from robalign.errors import UserError

# config.model_type -> module path of the MLP down-projection inside one decoder layer
MLP_DOWN_PROJECTION: dict[str, str] = {
    "llama": "mlp.down_proj",
    "mistral": "mlp.down_proj",
    "qwen2": "mlp.down_proj",
    "qwen3": "mlp.down_proj",
    "gemma": "mlp.down_proj",
    "gemma2": "mlp.down_proj",
    "phi3": "mlp.down_proj",
    "olmo2": "mlp.down_proj",
    "gpt_neox": "mlp.dense_4h_to_h",
    "gpt2": "mlp.c_proj",  # attn.c_proj is the attention output: the "mlp." prefix matters
}


class DownProjection(NamedTuple):
    layer: int  # decoder layer index
    name: str  # module path in the model, e.g. "model.layers.3.mlp.down_proj"
    module: torch.nn.Module  # the module as found (a peft LoRA wrapper when LoRA is applied)
    weight: torch.nn.Parameter  # the base weight (inside a LoRA wrapper: base_layer.weight)
    neuron_axis: int  # axis of `weight` that indexes neurons: 1 for nn.Linear, 0 for GPT-2 Conv1D
    d_ff: int  # neurons in this layer

    def neuron_vectors(self) -> torch.Tensor:
        """(d_ff, d_model): row j is the vector neuron j writes into the residual stream."""
        w = self.weight.detach()
        return w.T if self.neuron_axis == 1 else w


def model_type(model) -> str:
    config = getattr(model, "config", None)
    if config is None:
        raise UserError(f"{type(model).__name__} has no .config; pass a transformers model (not a DDP wrapper)")
    return config.model_type


def down_projections(model) -> list[DownProjection]:
    """Every MLP down-projection of ``model`` (a transformers or peft model), ordered by layer."""
    from transformers.pytorch_utils import Conv1D

    kind = model_type(model)
    if kind not in MLP_DOWN_PROJECTION:
        raise UserError(f"ShaPO does not know where the MLP down-projection of model_type '{kind}' lives; "
                        f"add it to MLP_DOWN_PROJECTION in robalign/models/layers.py (known: "
                        f"{', '.join(sorted(MLP_DOWN_PROJECTION))})")
    # decoder layers are ".layers.<i>." (Llama, Qwen, Mistral, GPT-NeoX) or ".h.<i>." (GPT-2)
    pattern = re.compile(rf"(?:^|\.)(?:layers|h)\.(\d+)\.{re.escape(MLP_DOWN_PROJECTION[kind])}$")
    found = []
    for name, module in model.named_modules():
        match = pattern.search(name)
        if match is None:
            continue
        base = getattr(module, "base_layer", module)  # peft wraps targeted modules
        if isinstance(base, Conv1D):
            axis = 0
        elif isinstance(base, torch.nn.Linear):
            axis = 1
        else:
            raise UserError(f"{name} is a {type(base).__name__}, not a Linear or Conv1D; cannot map its neurons")
        found.append(DownProjection(int(match.group(1)), name, module, base.weight, axis,
                                    base.weight.shape[axis]))
    if not found:
        raise UserError(f"no module matching '*.layers.<i>.{MLP_DOWN_PROJECTION[kind]}' in the {kind} model; "
                        "was it renamed? Fix MLP_DOWN_PROJECTION in robalign/models/layers.py")
    found.sort(key=lambda d: d.layer)
    if [d.layer for d in found] != list(range(len(found))):
        raise UserError(f"{kind} model: down-projections found for layers {[d.layer for d in found]}, "
                        "expected 0..L-1 once each")
    return found


class NeuronParameter(NamedTuple):
    """A trainable tensor whose slices along ``axis`` belong to single neurons."""

    name: str
    param: torch.nn.Parameter
    axis: int
    layer: int


def neuron_parameters(model) -> list[NeuronParameter]:
    """The trainable tensors through which each down-projection neuron can be perturbed.

    Full fine-tuning: the down-projection weight itself (neuron = column, or row for Conv1D).
    LoRA: the base weight is frozen and ΔW = s·B·A with A of shape (r, d_ff); column j of ΔW
    is s·B·A[:, j], so column j of ``lora_A`` moves neuron j's output vector and nothing else.
    B is shared by every neuron of the layer, so it is not a per-neuron parameter and is left
    out (perturbing it would move all neurons of the layer). If a down-projection has no
    trainable tensor at all (LoRA not targeting it), it contributes nothing.
    """
    names = {id(p): n for n, p in model.named_parameters()}
    out = []
    for dp in down_projections(model):
        if dp.weight.requires_grad:
            out.append(NeuronParameter(names[id(dp.weight)], dp.weight, dp.neuron_axis, dp.layer))
        for lora_a in getattr(dp.module, "lora_A", {}).values():  # peft ModuleDict: adapter -> Linear(d_ff, r)
            if lora_a.weight.requires_grad:
                out.append(NeuronParameter(names[id(lora_a.weight)], lora_a.weight, 1, dp.layer))
    return out
