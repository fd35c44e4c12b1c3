"""Neuron scoring, selection across layers, saved masks and their mapping onto trainable tensors."""

from __future__ import annotations

import json

import pytest
import torch

from robalign.errors import UserError
from robalign.models.loading import load_causal_lm
from robalign.training.subspace import (
    SubspaceMask,
    build_mask,
    neuron_scores,
    resolve_parameter_mask,
    select_neurons,
    subspace_size,
)


@pytest.mark.parametrize("fixture", ["nano_llama", "nano_gpt2"])
def test_scores_are_cosines_of_down_projection_columns(request, fixture):
    model = load_causal_lm(str(request.getfixturevalue(fixture)))
    v = torch.randn(96, generator=torch.Generator().manual_seed(0))
    scores = neuron_scores(model, v)
    # written out per architecture, independently of neuron_vectors()
    if fixture == "nano_llama":
        w = model.model.layers[2].mlp.down_proj.weight  # (d_model, d_ff): neuron j = column j
        col = w[:, 11]
    else:
        w = model.transformer.h[2].mlp.c_proj.weight  # Conv1D (d_ff, d_model): neuron j = row j
        col = w[11, :]
    expected = (col @ v / (col.norm() * v.norm())).item()
    assert scores[2][11].item() == pytest.approx(expected, rel=1e-5)
    assert len(scores) == 4 and all(s.shape == (256,) for s in scores)


def _unit_orthogonal_to(v: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    r = torch.randn(v.shape, generator=gen)
    r = r - (r @ v) * v
    return r / r.norm()


@pytest.mark.parametrize("fixture", ["nano_llama", "nano_gpt2"])
def test_top_k_recovers_a_planted_set_of_neurons(request, fixture):
    """Plant 5 output vectors (down-projection columns; GPT-2's Conv1D rows) at cosine 0.98 with
    the probe vector v, at very different norms (cosine ignores scale), 5 more at cosine −0.98,
    and one decoy at cosine 0.8. The other 1013 random neurons have |cos| ≲ 0.4 in 96 dimensions.
    With K = 5 (fraction 5/1024) Top-K must return exactly the planted set, Bottom-K exactly the
    anti-planted one, and the decoy neither."""
    model = load_causal_lm(str(request.getfixturevalue(fixture)))
    gen = torch.Generator().manual_seed(7)
    v = torch.randn(96, generator=gen)
    v = v / v.norm()
    planted = {0: [5], 1: [200], 2: [17], 3: [99, 100]}
    anti = {0: [6], 1: [0, 255], 3: [3, 4]}
    decoy = (2, 18)
    layers = model.model.layers if fixture == "nano_llama" else model.transformer.h

    def plant(layer: int, neuron: int, cosine: float, scale: float) -> None:
        out = cosine * v + (1 - cosine**2) ** 0.5 * _unit_orthogonal_to(v, gen)
        with torch.no_grad():
            if fixture == "nano_llama":
                layers[layer].mlp.down_proj.weight[:, neuron] = scale * out
            else:
                layers[layer].mlp.c_proj.weight[neuron, :] = scale * out

    scales = iter([1e-3, 0.05, 1.0, 3.0, 0.2] * 2)
    for sets, cosine in ((planted, 0.98), (anti, -0.98)):
        for layer, neurons in sets.items():
            for n in neurons:
                plant(layer, n, cosine, next(scales))
    plant(*decoy, 0.8, 1.0)
    others = torch.cat(neuron_scores(model, v)).abs().sort().values
    assert others[-12] < 0.5  # past the 11 planted and decoy neurons, no random neuron comes close

    def as_sets(neurons):
        return {layer: sorted(t.tolist()) for layer, t in enumerate(neurons) if t.numel()}

    assert as_sets(build_mask(model, 5 / 1024, "top", vector=v).neurons) == planted
    assert as_sets(build_mask(model, 5 / 1024, "bottom", vector=v).neurons) == anti
    assert as_sets(build_mask(model, 6 / 1024, "top", vector=v).neurons) == {0: [5], 1: [200], 2: [17, 18],
                                                                            3: [99, 100]}


def test_selection_ranks_all_layers_together():
    scores = [torch.tensor([0.1, 0.9, -0.5]), torch.tensor([0.3, -0.9])]
    # K = round(0.4 * 5) = 2
    assert [t.tolist() for t in select_neurons(scores, 0.4, "top")] == [[1], [0]]  # 0.9 and 0.3
    assert [t.tolist() for t in select_neurons(scores, 0.4, "bottom")] == [[2], [1]]  # -0.5 and -0.9
    assert [t.tolist() for t in select_neurons(scores, 1.0, "top")] == [[0, 1, 2], [0, 1]]
    assert subspace_size(0.01, 7 * 100) == 7 and subspace_size(1e-6, 100) == 1
    with pytest.raises(UserError, match="fraction"):
        select_neurons(scores, 0.0, "top")
    big = [torch.zeros(500), torch.zeros(500)]
    a, b, c = (select_neurons(big, 0.05, "random", seed) for seed in (1, 1, 2))
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and not all(torch.equal(x, y) for x, y in zip(a, c))
    assert sum(t.numel() for t in a) == 50


def test_mask_round_trip_and_metadata(tmp_path, nano_llama):
    model = load_causal_lm(str(nano_llama))
    v = torch.randn(96, generator=torch.Generator().manual_seed(1))
    mask = build_mask(model, 0.02, "top", vector=v, metadata={"model_fingerprint": "abc", "probe": "p"})
    loaded = SubspaceMask.load(mask.save(tmp_path / "m"))
    assert loaded.info["k"] == 20 == sum(t.numel() for t in loaded.neurons)  # round(0.02 * 4 * 256)
    assert loaded.info | {"format": None} == mask.info | {"format": None}
    assert json.loads((tmp_path / "m" / "mask.json").read_text())["select"] == "top"
    assert all(torch.equal(a, b) for a, b in zip(loaded.neurons, mask.neurons))
    # the selected neurons are exactly the 20 largest cosines over all layers
    flat = torch.cat(neuron_scores(model, v))
    chosen = torch.cat([s[n] for s, n in zip(neuron_scores(model, v), loaded.neurons)])
    assert chosen.min() >= flat.topk(20).values.min() and loaded.info["score_min_selected"] == chosen.min().item()
    uniform = SubspaceMask.load(build_mask(model, 0.01, "uniform").save(tmp_path / "u"))
    assert uniform.uniform


def test_parameter_mask_full_finetuning(nano_llama):
    model = load_causal_lm(str(nano_llama))
    mask = build_mask(model, 0.05, "random", seed=3)
    pm = resolve_parameter_mask(model, mask)
    assert [e.name for e in pm.entries] == [f"model.layers.{i}.mlp.down_proj.weight" for i in range(4)
                                           if mask.neurons[i].numel()]
    assert pm.numel == 51 * 96 and all(e.axis == 1 for e in pm.entries)
    everything = resolve_parameter_mask(model, "uniform")
    assert everything.numel == sum(p.numel() for p in model.parameters())


def test_parameter_mask_under_lora(nano_llama):
    from peft import LoraConfig, get_peft_model

    base = load_causal_lm(str(nano_llama))
    mask = build_mask(base, 0.05, "random", seed=3)
    with_down = get_peft_model(base, LoraConfig(r=4, target_modules=["down_proj", "q_proj"]))
    pm = resolve_parameter_mask(with_down, mask)
    assert all(".mlp.down_proj.lora_A." in e.name and e.axis == 1 for e in pm.entries)
    assert pm.numel == 51 * 4  # K neurons x rank
    uniform = resolve_parameter_mask(with_down, "uniform")
    assert all("lora_" in e.name for e in uniform.entries) and len(uniform.entries) == 16
    without = get_peft_model(load_causal_lm(str(nano_llama)), LoraConfig(r=4, target_modules=["q_proj"]))
    with pytest.raises(UserError, match="lora.target_modules"):
        resolve_parameter_mask(without, mask)


def test_mask_for_another_shape_is_refused(tmp_path, nano_llama):
    model = load_causal_lm(str(nano_llama))
    mask = build_mask(model, 0.01, "random")
    mask.info["d_ff"] = [128] * 4
    with pytest.raises(UserError, match="Run `robalign subspace` on this model"):
        resolve_parameter_mask(model, mask.save(tmp_path / "m"))
    with pytest.raises(UserError, match="not a subspace mask"):
        resolve_parameter_mask(model, tmp_path / "nothing")
