"""ShaPO's selective sharpness-aware step (arXiv 2602.07340; DESIGN.md §2.3, docs/methods.md).

One step, over one effective batch (all its micro-batches):

    g  = ∇L(θ)                          masked coordinates only
    ε  = ρ · (M⊙g) / ‖M⊙g‖₂             fp32, on the trainable weights (fp32 master weights: the
                                        trainer refuses bf16 / fp16 trainable weights)
    g′ = ∇L(θ + ε)                      every trainable tensor; this is what the optimizer uses
    θ  ← θ  (restored bit for bit: the masked slices are copied back, not θ + ε − ε)

Cost. The first pass needs ∇ only for the masked tensors, so every other trainable tensor has
``requires_grad`` switched off while it runs: backward skips their weight gradients and stops
below the lowest masked layer. With a 1 % neuron mask a ShaPO step costs well under two DPO
steps; with the uniform mask (full SAM) it costs two.

Gradient accumulation. Both passes run ``accumulate_gradients`` over *all* micro-batches, so g and
g′ are effective-batch gradients (Dr.DPO weights included). Gradients already in ``.grad`` when the
step starts are kept: unmasked tensors are not touched by the first pass, and masked tensors'
gradients are set aside and put back before the second pass accumulates onto them.

Data parallel (Accelerate DDP). The first pass runs under ``no_sync``; only the masked slices of g
are all-reduced (mean), so ‖M⊙g‖ is a global norm and ε is the same on every rank and equal to the
single-process ε. The second pass is the ordinary synced pass. FSDP / DeepSpeed shard the
parameters and would need a sharded ε; they are refused.

Applied radius. ε is added in fp32 and stored in the weights' dtype; ``shapo/eps_norm`` is the
norm actually stored, ‖θ+ε − θ‖, and ``shapo/eps_norm_ratio`` that norm over ρ. Below 0.5 (weights
too coarse for ε, e.g. bf16 weights driven directly, or fp32 weights huge against ε) a warning
says so, once per run and ρ: the step is then mostly the plain step.

Dropout. The random-number state is replayed for the second pass, so both passes draw the same
dropout masks and L(θ+ε) − L(θ) measures the perturbation, not dropout noise; ρ = 0 then
reproduces the plain step exactly.

The cheaper step (``ascent="previous"``, ``training.shapo.ascent=previous``). The first pass only
finds a direction; the gradient the *previous optimizer step used* already points roughly uphill,
so ε = ρ·(M⊙g_prev)/‖M⊙g_prev‖₂ is taken from it and the step is one forward-backward, at θ+ε:

    g_prev = the gradient in .grad that step t−1 handed to the optimizer (before clipping):
             g′ = ∇L(θ_{t−1}+ε_{t−1}) after a ShaPO step, the plain ∇L(θ_{t−1}) after a plain one
    ε_t    = ρ · (M⊙g_prev) / ‖M⊙g_prev‖₂
    g′_t   = ∇L_t(θ_t + ε_t)

Why that gradient and not, say, the masked g at θ_{t−1}: it is the only one a one-pass step has
(there is no pass at θ any more), it is in ``.grad`` for free, and it is already what the
fresh step's g is: an effective-batch gradient (all micro-batches, Dr.DPO weights included) and,
under DDP, the all-reduced mean, so ε is the same on every rank with no extra communication.
Clipping scales every coordinate alike and so leaves the direction as it is. With k > 1 the plain
step before each ShaPO step supplies it (the trainer copies M⊙.grad only on that step). The
caveat: g_prev belongs to another batch and another point, so ε is not the worst case for this
batch; ``shapo/ascent_cosine`` = cos(M⊙g_prev, M⊙g′_t) says how well it lines up.

When there is no usable g_prev the step is the fresh one (two passes): the first ShaPO step of a
run, the first after a resume (the checkpoint does not store g_prev, so a resumed run differs from
an uninterrupted one on that step only when it is a ShaPO step), after a non-finite gradient, and
when ‖M⊙g_prev‖ = 0 (LoRA's first step: peft starts B at 0, so ∇A = 0). The cheap step never
evaluates L(θ): its TRL-named metrics are measured at θ+ε (``loss`` = ``shapo/loss_perturbed``),
``shapo/loss_gain`` is not logged, and ``shapo/first_order_gain`` is ⟨ε, M⊙g′_t⟩, the first-order
estimate of L(θ+ε) − L(θ) from the point θ+ε (negative when the stale direction points downhill).
``shapo/ascent_reused`` is 1 on a cheap step and 0 on a fresh one of a ``previous`` run.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager, nullcontext

import torch

from robalign.config import SHAPO_ASCENTS
from robalign.data.tokenize import PairBatch
from robalign.errors import UserError
from robalign.training.step import LossSettings, accumulate_gradients
from robalign.training.subspace import MaskedTensor, ParameterMask


def shapo_due(step: int, interval: int) -> bool:
    """ShaPO on optimizer steps 0, k, 2k, ... (0-based); the others are plain steps. k = 1: every step."""
    return step % interval == 0


def shapo_step(model, micro_batches: list[PairBatch], reference: tuple[dict, dict], settings: LossSettings,
               mask: ParameterMask, rho: float, accelerator=None,
               autocast_dtype: torch.dtype | None = None, ascent: str = "fresh",
               previous_gradient: torch.Tensor | None = None) -> dict[str, float]:
    """Leave g′ = ∇L(θ+ε) in ``.grad`` (θ unchanged on return) and return the step metrics.

    ``ascent="fresh"``: ε from ∇L(θ) of a first pass (two passes). ``ascent="previous"``: ε from
    ``previous_gradient`` (M⊙g_prev as ``masked_gradient`` returns it) in one pass, or the fresh
    step with ``shapo/ascent_reused`` = 0 when it is None, non-finite or zero (module docstring).

    Metrics: TRL names at θ (as a plain step would log them) plus ``shapo/loss_gain`` =
    L(θ+ε) − L(θ) (≈ ρ‖M⊙g‖ = ``shapo/first_order_gain`` for small ρ), ``shapo/eps_norm`` (‖ε‖
    actually applied to the weights), ``shapo/eps_norm_ratio`` (that norm / ρ; a warning below
    0.5), ``shapo/eps_autocast_moved`` (share of masked coordinates whose autocast-dtype value the
    perturbation changes), ``shapo/grad_norm_masked``, ``shapo/mask_params``.
    A non-finite ‖M⊙g‖ skips the perturbation with a warning and leaves a non-finite gradient in
    the masked tensors, so the trainer's finiteness check skips the optimizer step.
    """
    _check_distributed(accelerator)
    if ascent not in SHAPO_ASCENTS:
        raise ValueError(f"ascent must be one of {', '.join(SHAPO_ASCENTS)}, got {ascent!r}")
    if ascent == "previous":
        if _usable(previous_gradient):
            return _reused_ascent_step(model, micro_batches, reference, settings, mask, rho, accelerator,
                                       autocast_dtype, previous_gradient)
        return shapo_step(model, micro_batches, reference, settings, mask, rho, accelerator,
                          autocast_dtype) | {"shapo/ascent_reused": 0.0}
    device = mask.entries[0].param.device
    rng = _rng_state(device)
    stashed = [e.param.grad for e in mask.entries]
    for e in mask.entries:
        e.param.grad = None
    sync_off = accelerator.no_sync(model) if accelerator is not None else nullcontext()
    with sync_off, _only_masked_grads(model, mask):
        base = accumulate_gradients(model, micro_batches, reference, settings, accelerator, autocast_dtype)
    dtype = _working_dtype(mask)
    g = torch.cat([_slice(e, e.param.grad).to(dtype).flatten() if e.param.grad is not None
                   else torch.zeros(e.numel, device=device, dtype=dtype) for e in mask.entries])
    if accelerator is not None and accelerator.num_processes > 1:
        g = accelerator.reduce(g, reduction="mean")
    grad_norm = torch.linalg.vector_norm(g)
    info = {"shapo/grad_norm_masked": grad_norm.item(), "shapo/mask_params": float(mask.numel),
            "shapo/first_order_gain": rho * grad_norm.item()}
    if not torch.isfinite(grad_norm):
        warnings.warn("ShaPO: non-finite gradient at θ; perturbation skipped and no optimizer step should "
                      "follow (the gradient left in .grad is non-finite)", stacklevel=2)
        for (e, chunk), old in zip(_chunks(mask, g), stashed):
            e.param.grad = _scatter(e, chunk) + (old if old is not None else 0)
        return base | info | {"shapo/skipped": 1.0, "shapo/eps_norm": 0.0}
    for e, old in zip(mask.entries, stashed):
        e.param.grad = old
    eps = g * (rho / grad_norm) if grad_norm > 0 else torch.zeros_like(g)
    saved = _perturb(mask, eps)
    try:
        applied = _applied_norms(mask, saved, autocast_dtype)
        applied |= applied_radius(applied["shapo/eps_norm"], rho if grad_norm > 0 else 0.0)
        _set_rng_state(device, rng)
        perturbed = accumulate_gradients(model, micro_batches, reference, settings, accelerator, autocast_dtype)
    finally:
        _restore(mask, saved)
    return base | info | applied | {"shapo/skipped": 0.0, "shapo/loss_gain": perturbed["loss"] - base["loss"],
                                    "shapo/loss_perturbed": perturbed["loss"]}


def masked_gradient(mask: ParameterMask) -> torch.Tensor:
    """M⊙.grad as one flat vector in the working dtype (a copy; 0 where a tensor has no gradient):
    what ``ascent="previous"`` keeps between steps (mask.numel values; the whole model's size
    for the uniform mask)."""
    dtype, device = _working_dtype(mask), mask.entries[0].param.device
    return torch.cat([_slice(e, e.param.grad).to(dtype).flatten() if e.param.grad is not None
                      else torch.zeros(e.numel, device=device, dtype=dtype) for e in mask.entries])


def _usable(g: torch.Tensor | None) -> bool:
    if g is None:
        return False
    norm = torch.linalg.vector_norm(g)
    return bool(torch.isfinite(norm)) and norm.item() > 0


def _reused_ascent_step(model, micro_batches, reference, settings, mask: ParameterMask, rho: float, accelerator,
                        autocast_dtype, previous: torch.Tensor) -> dict[str, float]:
    """One pass at θ + ρ·g_prev/‖g_prev‖; metrics at θ+ε plus the stale direction's diagnostics."""
    grad_norm = torch.linalg.vector_norm(previous)
    eps = previous * (rho / grad_norm)
    saved = _perturb(mask, eps)
    try:
        applied = _applied_norms(mask, saved, autocast_dtype)
        applied |= applied_radius(applied["shapo/eps_norm"], rho)
        perturbed = accumulate_gradients(model, micro_batches, reference, settings, accelerator, autocast_dtype)
    finally:
        _restore(mask, saved)
    # ⟨ε, M⊙g′⟩ and ‖M⊙g′‖ tensor by tensor: no second flat copy of the masked gradient
    dot = new_sq = torch.zeros((), device=eps.device, dtype=eps.dtype)
    for e, chunk in _chunks(mask, eps):
        if e.param.grad is not None:
            g_new = _slice(e, e.param.grad).to(eps.dtype).flatten()
            dot, new_sq = dot + chunk @ g_new, new_sq + g_new @ g_new
    new_norm = new_sq.sqrt().item()
    cosine = dot.item() / (rho * new_norm) if rho > 0 and new_norm != 0 else 0.0  # NaN stays NaN
    return perturbed | applied | {
        "shapo/grad_norm_masked": grad_norm.item(), "shapo/mask_params": float(mask.numel),
        "shapo/first_order_gain": dot.item(), "shapo/ascent_cosine": cosine, "shapo/skipped": 0.0,
        "shapo/loss_perturbed": perturbed["loss"], "shapo/ascent_reused": 1.0}


def _check_distributed(accelerator) -> None:
    kind = str(getattr(accelerator, "distributed_type", "NO"))
    if "FSDP" in kind or "DEEPSPEED" in kind:
        raise UserError(f"ShaPO supports one device and DDP; {kind} shards the parameters and would need a "
                        "sharded perturbation (not implemented). Train with DDP, or turn training.shapo off")


@contextmanager
def _only_masked_grads(model, mask: ParameterMask):
    masked = {id(e.param) for e in mask.entries}
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in masked]
    for p in others:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in others:
            p.requires_grad_(True)


def _working_dtype(mask: ParameterMask) -> torch.dtype:
    """fp32 for fp32 / bf16 / fp16 weights (the master-weight precision); fp64 if any weight is fp64."""
    return torch.float64 if any(e.param.dtype == torch.float64 for e in mask.entries) else torch.float32


def _slice(e: MaskedTensor, t: torch.Tensor) -> torch.Tensor:
    return t if e.axis is None else t.index_select(e.axis, e.index)


def _chunks(mask: ParameterMask, flat: torch.Tensor):
    offset = 0
    for e in mask.entries:
        yield e, flat[offset : offset + e.numel]
        offset += e.numel


def _scatter(e: MaskedTensor, chunk: torch.Tensor) -> torch.Tensor:
    """A tensor shaped like ``e.param``: ``chunk`` on the masked slices, 0 elsewhere."""
    out = torch.zeros_like(e.param)
    if e.axis is None:
        return out.copy_(chunk.view_as(out))
    return out.index_copy_(e.axis, e.index, chunk.view(_slice(e, out).shape).to(out.dtype))


@torch.no_grad()
def _perturb(mask: ParameterMask, eps: torch.Tensor) -> list[torch.Tensor]:
    """θ_M += ε in ε's precision (fp32, or fp64 for fp64 weights); returns the original slices."""
    saved = []
    for e, chunk in _chunks(mask, eps):
        old = _slice(e, e.param.detach()).clone()
        new = (old.to(eps.dtype) + chunk.view(old.shape)).to(old.dtype)
        if e.axis is None:
            e.param.copy_(new)
        else:
            e.param.index_copy_(e.axis, e.index, new)
        saved.append(old)
    return saved


@torch.no_grad()
def _restore(mask: ParameterMask, saved: list[torch.Tensor]) -> None:
    for e, old in zip(mask.entries, saved):
        if e.axis is None:
            e.param.copy_(old)
        else:
            e.param.index_copy_(e.axis, e.index, old)


MIN_APPLIED_RATIO = 0.5  # warn when ‖θ+ε − θ‖ < 0.5·ρ: most of ε rounded away in the stored weights


def applied_radius(applied_norm: float, intended: float) -> dict[str, float]:
    """``shapo/eps_norm_ratio`` = ‖θ+ε − θ‖ / ρ, with a warning below MIN_APPLIED_RATIO; nothing
    when ε = 0 by design (ρ = 0, or a zero masked gradient). The message holds no measured number,
    so Python's warning filter shows it once per run and ρ; the metric has the number per step."""
    if intended <= 0:
        return {}
    ratio = applied_norm / intended
    if ratio < MIN_APPLIED_RATIO:
        warnings.warn(f"ShaPO: the perturbation stored in the weights has a norm well below ρ = {intended:g} "
                      f"(< {MIN_APPLIED_RATIO}·ρ; see shapo/eps_norm_ratio): the weights are too coarse for ε "
                      "(bf16 / fp16 weights?) and the step is mostly the plain step. Train fp32 weights "
                      "(model.dtype=float32, training.precision=bf16 for bf16 compute) or raise ρ",
                      RuntimeWarning, stacklevel=3)
    return {"shapo/eps_norm_ratio": ratio}


@torch.no_grad()
def _applied_norms(mask: ParameterMask, saved: list[torch.Tensor], autocast_dtype) -> dict[str, float]:
    """‖θ+ε − θ‖ as stored and, under autocast, the share of masked coordinates whose value in the
    autocast dtype changes at all (a bf16 matmul sees nothing of a change below half a bf16 step)."""
    total = moved = torch.zeros((), device=saved[0].device, dtype=torch.float64)
    for e, old in zip(mask.entries, saved):
        new = _slice(e, e.param.detach())
        total = total + (new.double() - old.double()).pow(2).sum()
        if autocast_dtype is not None:
            moved = moved + (new.to(autocast_dtype) != old.to(autocast_dtype)).sum()
    out = {"shapo/eps_norm": total.sqrt().item()}
    if autocast_dtype is not None:
        out["shapo/eps_autocast_moved"] = moved.item() / mask.numel
    return out


def _rng_state(device: torch.device):
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _set_rng_state(device: torch.device, state) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)
