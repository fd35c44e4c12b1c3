"""The alignment-critical subspace (ShaPO step 2, DESIGN.md §2): score every MLP neuron by the
cosine between its down-projection vector and the safety-probe vector, rank all layers together,
keep K = fraction · (layers · d_ff) of them, and save the choice with its metadata.

A saved mask is a directory: ``mask.safetensors`` (per layer the selected neuron indices and
every neuron's score) and ``mask.json`` (model fingerprint, K, fraction, selection, seed, probe).
``resolve_parameter_mask`` turns it into the coordinates of a given model's *trainable* tensors
that the sharpness-aware step may perturb (full fine-tuning or LoRA, see
``robalign.models.layers.neuron_parameters``).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from robalign.errors import UserError
from robalign.models.layers import MLP_DOWN_PROJECTION, down_projections, neuron_parameters

MASK_FORMAT = "robalign-subspace-mask/1"
SELECTIONS = ("top", "bottom", "random", "uniform")
UNIFORM = "uniform"  # the full-SAM control: every trainable parameter


@torch.no_grad()
def neuron_scores(model, vector: torch.Tensor) -> list[torch.Tensor]:
    """Per layer, (d_ff,) float32 cos(W_down[:, j], v) for every neuron j. vector: (d_model,)."""
    scores = []
    for dp in down_projections(model):
        vecs = dp.neuron_vectors().float()
        if vecs.shape[1] != vector.numel():
            raise UserError(f"probe vector has {vector.numel()} dimensions but {dp.name} writes "
                            f"{vecs.shape[1]}-dimensional vectors: the probe was made on another model")
        scores.append(F.cosine_similarity(vecs, vector.to(vecs).unsqueeze(0), dim=-1).cpu())
    return scores


def subspace_size(fraction: float, total: int) -> int:
    """K = round(fraction · total), at least 1 (official recipe: 1 % of layers · d_ff)."""
    if not 0.0 < fraction <= 1.0:
        raise UserError(f"--fraction must lie in (0, 1], got {fraction} (the official recipe uses 0.01)")
    return max(1, round(fraction * total))


def select_neurons(scores: list[torch.Tensor], fraction: float, select: str, seed: int = 0) -> list[torch.Tensor]:
    """Per layer, sorted int64 indices of the K chosen neurons, ranked across all layers together.

    top: the K largest cosines (aligned with the unsafe direction; the method ShaPO derives from);
    bottom: the K smallest (most anti-aligned; what the official ShaPO code sorts);
    random: K uniformly random neurons from ``torch.Generator().manual_seed(seed)`` (the control).
    Ties are broken by position (stable sort), so a selection is reproducible.
    """
    flat = torch.cat(scores)
    k = subspace_size(fraction, flat.numel())
    if select == "top":
        order = torch.argsort(flat, descending=True, stable=True)
    elif select == "bottom":
        order = torch.argsort(flat, descending=False, stable=True)
    elif select == "random":
        order = torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(seed))
    else:
        raise UserError(f"--select must be one of top, bottom, random (or uniform for every parameter), got '{select}'")
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[order[:k]] = True
    return [idx.nonzero().flatten() for idx in chosen.split([s.numel() for s in scores])]


@dataclass
class SubspaceMask:
    neurons: list[torch.Tensor] | None  # per layer, selected neuron indices; None = uniform
    scores: list[torch.Tensor] | None = None  # per layer, every neuron's cosine (absent for random/uniform)
    info: dict = field(default_factory=dict)  # what mask.json holds

    @property
    def uniform(self) -> bool:
        return self.neurons is None

    def save(self, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for layer, idx in enumerate(self.neurons or []):
            tensors[f"neurons.{layer}"] = idx.to(torch.int64).contiguous()
        for layer, s in enumerate(self.scores or []):
            tensors[f"scores.{layer}"] = s.float().contiguous()
        save_file(tensors, str(out / "mask.safetensors"), metadata={"format": MASK_FORMAT})
        (out / "mask.json").write_text(json.dumps({"format": MASK_FORMAT, **self.info}, indent=2))
        return out

    @classmethod
    def load(cls, path: str | Path) -> SubspaceMask:
        path = Path(path)
        directory = path if path.is_dir() else path.parent
        if not (directory / "mask.json").is_file():
            raise UserError(f"{path}: not a subspace mask (no mask.json); make one with "
                            f"`robalign subspace --out {path}`, or use training.shapo.mask=uniform")
        info = json.loads((directory / "mask.json").read_text())
        if info.get("format") != MASK_FORMAT:
            raise UserError(f"{directory / 'mask.json'}: format '{info.get('format')}', expected {MASK_FORMAT}")
        if info["select"] == UNIFORM:
            return cls(None, None, info)
        tensors = load_file(str(directory / "mask.safetensors"))
        layers = info["layers"]
        scores = [tensors[f"scores.{i}"] for i in range(layers)] if "scores.0" in tensors else None
        return cls([tensors[f"neurons.{i}"] for i in range(layers)], scores, info)


def build_mask(model, fraction: float, select: str, seed: int = 0, vector: torch.Tensor | None = None,
               metadata: dict | None = None) -> SubspaceMask:
    """Score (top / bottom need ``vector``), select and describe a mask for ``model``."""
    dps = down_projections(model)
    info = {"select": select, "seed": seed, "fraction": fraction, "model_type": model.config.model_type,
            "layers": len(dps), "d_ff": [dp.d_ff for dp in dps], "module": MLP_DOWN_PROJECTION[model.config.model_type],
            **(metadata or {})}
    if select == UNIFORM:
        return SubspaceMask(None, None, info | {"k": None, "fraction": 1.0})
    if select in ("top", "bottom"):
        if vector is None:
            raise UserError(f"--select {select} ranks neurons by the probe: give --probe DIR (from `robalign probe`)")
        scores = neuron_scores(model, vector)
    else:
        scores = None
    neurons = select_neurons(scores or [torch.zeros(dp.d_ff) for dp in dps], fraction, select, seed)
    k = int(sum(n.numel() for n in neurons))
    info |= {"k": k, "total_neurons": sum(dp.d_ff for dp in dps), "neurons_per_layer": [n.numel() for n in neurons]}
    if scores is not None:
        chosen = torch.cat([s[n] for s, n in zip(scores, neurons)])
        info |= {"score_min_selected": chosen.min().item(), "score_max_selected": chosen.max().item(),
                 "score_mean_all": torch.cat(scores).mean().item()}
    return SubspaceMask(neurons, scores, info)


class MaskedTensor(NamedTuple):
    name: str
    param: torch.nn.Parameter
    axis: int | None  # None: the whole tensor is in the mask
    index: torch.Tensor | None  # (k,) int64 on the parameter's device: selected slices along `axis`

    @property
    def numel(self) -> int:
        if self.axis is None:
            return self.param.numel()
        return self.index.numel() * (self.param.numel() // self.param.shape[self.axis])


@dataclass
class ParameterMask:
    """The coordinates M of a model's trainable tensors that a ShaPO step may perturb."""

    entries: list[MaskedTensor]
    info: dict

    @property
    def numel(self) -> int:
        return sum(e.numel for e in self.entries)

    def summary(self) -> dict:
        return {"select": self.info.get("select"), "k": self.info.get("k"), "fraction": self.info.get("fraction"),
                "mask_params": self.numel, "tensors": len(self.entries), "source": self.info.get("path")}


def resolve_parameter_mask(model, mask: SubspaceMask | str | Path, model_fingerprint: str | None = None) -> ParameterMask:
    """Map a neuron mask (or ``"uniform"``) onto ``model``'s trainable tensors (model: not DDP-wrapped)."""
    if isinstance(mask, str | Path) and str(mask) == UNIFORM:
        mask = SubspaceMask(None, None, {"select": UNIFORM, "path": UNIFORM})
    elif not isinstance(mask, SubspaceMask):
        path = str(mask)
        mask = SubspaceMask.load(mask)
        mask.info["path"] = path
    if mask.uniform:
        entries = [MaskedTensor(n, p, None, None) for n, p in model.named_parameters() if p.requires_grad]
        return ParameterMask(entries, mask.info)
    source = mask.info.get("path", "the mask")
    dps = down_projections(model)
    if len(dps) != mask.info["layers"] or [dp.d_ff for dp in dps] != list(mask.info["d_ff"]):
        raise UserError(f"{source} was made for {mask.info['layers']} layers with d_ff {mask.info['d_ff']}; this "
                        f"model has {len(dps)} layers with d_ff {[dp.d_ff for dp in dps]}. Run `robalign subspace` "
                        "on this model")
    if model_fingerprint and mask.info.get("model_fingerprint") not in (None, model_fingerprint):
        warnings.warn(f"{source} was computed on another checkpoint ({mask.info.get('model')}); fine for a "
                      "fine-tuned copy of it, wrong for an unrelated model", stacklevel=2)
    entries = []
    for np_ in neuron_parameters(model):
        idx = mask.neurons[np_.layer]
        if idx.numel():
            entries.append(MaskedTensor(np_.name, np_.param, np_.axis, idx.to(np_.param.device, torch.int64)))
    if not entries:
        raise UserError(f"{source} selects MLP down-projection neurons, but none of their tensors is trainable here. "
                        f"With LoRA, add '{dps[0].name.rsplit('.', 1)[-1]}' to lora.target_modules (the mask then "
                        "covers the matching columns of lora_A), or use training.shapo.mask=uniform")
    return ParameterMask(entries, mask.info)


def fraction_of_parameters(mask: ParameterMask, model) -> float:
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return mask.numel / total if total else math.nan


# --------------------------------------------------------------------------------------------
# Figure 1: how much of the worst-case loss increase does a neuron set account for?
# --------------------------------------------------------------------------------------------
#
# Perturbing only the neurons in S by ε with ‖ε‖₂ ≤ ρ raises the loss, to first order, by at most
# ρ·‖g_S‖ (ε = ρ·g_S/‖g_S‖, Cauchy–Schwarz), where g_S is the gradient restricted to the columns
# of S. Relative to perturbing every MLP neuron, the first-order share is ‖g_S‖ / ‖g_all‖; the
# measured share replaces both by actual loss increases L(θ + ε_S) − L(θ). The "energy" share
# ‖g_S‖² / ‖g_all‖² = Σ_{j∈S} ‖g_j‖² / Σ_j ‖g_j‖² is additive over neurons (a cumulative
# contribution) and is the first-order share of the official code's unnormalised step ε = γ·g_S
# (gain γ‖g_S‖²). The paper's Figure-1 text was not available to check which one it plots, so
# both are reported (docs/methods.md#figure-1).


def neuron_gradients(model) -> list[torch.Tensor]:
    """Per layer, (d_ff, d_model) gradient of each neuron's down-projection vector (from .grad)."""
    out = []
    for dp in down_projections(model):
        if dp.weight.grad is None:
            raise UserError(f"{dp.name} has no gradient; back-propagate a loss with the weights trainable first")
        g = dp.weight.grad.detach().float()
        out.append(g.T if dp.neuron_axis == 1 else g)
    return out


def first_order_share(neuron_sq_norms: torch.Tensor, chosen: torch.Tensor) -> float:
    """‖g_S‖ / ‖g_all‖ = sqrt(Σ_{j∈S} ‖g_j‖² / Σ_j ‖g_j‖²). Both arguments (N,): norms², bool mask."""
    total = neuron_sq_norms.sum()
    return math.sqrt((neuron_sq_norms[chosen].sum() / total).item()) if total > 0 else math.nan


@torch.no_grad()
def perturbed_loss(model, grads: list[torch.Tensor], chosen: list[torch.Tensor], rho: float, loss_fn) -> float:
    """loss_fn() at θ + ε_S, ε_S = ρ·g_S/‖g_S‖ over the neurons ``chosen`` (per layer index tensors); θ restored."""
    norm = math.sqrt(sum(g[idx].pow(2).sum().item() for g, idx in zip(grads, chosen)))
    views = [dp.weight.detach().T if dp.neuron_axis == 1 else dp.weight.detach() for dp in down_projections(model)]
    saved = [view[idx].clone() for view, idx in zip(views, chosen)]  # (k, d_model) per layer
    try:
        for view, g, idx in zip(views, grads, chosen):
            if idx.numel() and norm > 0:
                view[idx] += ((rho / norm) * g[idx]).to(view.dtype)  # (d_ff, d_model) view: writes the weight
        return float(loss_fn())
    finally:
        for view, idx, old in zip(views, chosen, saved):
            view[idx] = old


def mean_ci95(values: list[float]) -> list[float]:
    """Student-t 95 % interval of the mean over random-K seeds: mean ± t_{0.975, n−1}·sd/√n."""
    from scipy import stats

    n = len(values)
    if n < 2:
        return [math.nan, math.nan]
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return [mean - half, mean + half]


def share_curves(model, scores: list[torch.Tensor] | None, fractions: list[float], loss_fn, rho: float,
                 random_seeds: int = 3) -> dict:
    """For each fraction: first-order (‖g_S‖/‖g‖), energy (‖g_S‖²/‖g‖²) and measured shares of
    Top-K, Bottom-K (need ``scores``), Random-K (mean, min/max and a t-interval over seeds) and
    the gradient oracle (the first-order-best K neurons).

    Needs the loss gradient in ``.grad`` of every down-projection; ``loss_fn()`` evaluates L(θ).
    """
    grads = neuron_gradients(model)
    sq = torch.cat([g.pow(2).sum(-1) for g in grads])  # (total neurons,)
    sizes = [g.shape[0] for g in grads]
    base = float(loss_fn())
    everything = [torch.arange(n) for n in sizes]
    full_gain = perturbed_loss(model, grads, everything, rho, loss_fn) - base

    names = ("first_order", "energy", "measured")

    def measure(chosen: list[torch.Tensor]) -> tuple[float, float, float]:
        flat = torch.cat([torch.zeros(n, dtype=torch.bool).index_fill_(0, i, True) for n, i in zip(sizes, chosen)])
        gain = perturbed_loss(model, grads, chosen, rho, loss_fn) - base
        share = first_order_share(sq, flat)
        return share, share * share, gain / full_gain if full_gain != 0 else math.nan

    rows = []
    oracle_scores = list(sq.split(sizes))
    for fraction in fractions:
        row = {"fraction": fraction, "k": subspace_size(fraction, sq.numel())}
        kinds = {"oracle": select_neurons(oracle_scores, fraction, "top")}
        if scores is not None:
            kinds |= {"top": select_neurons(scores, fraction, "top"), "bottom": select_neurons(scores, fraction, "bottom")}
        for kind, chosen in kinds.items():
            row |= dict(zip((f"{kind}_{name}" for name in names), measure(chosen)))
        randoms = [measure(select_neurons(oracle_scores, fraction, "random", seed)) for seed in range(random_seeds)]
        for j, name in enumerate(names):
            values = [r[j] for r in randoms]
            row |= {f"random_{name}": sum(values) / len(values), f"random_{name}_min": min(values),
                    f"random_{name}_max": max(values), f"random_{name}_ci95": mean_ci95(values)}
        rows.append(row)
    return {"rho": rho, "loss": base, "loss_gain_all_neurons": full_gain,
            "first_order_gain_all_neurons": rho * sq.sum().sqrt().item(), "total_neurons": int(sq.numel()),
            "rows": rows}
