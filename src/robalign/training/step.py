"""One optimizer step's worth of gradients: micro-batches, loss aggregation, metrics.

Kept apart from the loop so that a sharpness-aware step can call it twice (at θ and θ+ε).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import NamedTuple

import torch

from robalign.data.tokenize import PairBatch
from robalign.training.logprobs import pair_logps
from robalign.training.losses import aggregate, combined_pair_losses, drdpo_weights


class LossSettings(NamedTuple):
    weights: dict[str, float]  # loss name -> weight
    beta: float
    label_smoothing: float
    rdpo_epsilon: float
    ipo_length_normalize: bool
    aggregation: str  # mean | drdpo
    drdpo_beta: float

    def pair_kwargs(self) -> dict:
        return dict(beta=self.beta, label_smoothing=self.label_smoothing, rdpo_epsilon=self.rdpo_epsilon,
                    ipo_length_normalize=self.ipo_length_normalize)


class BatchLoss(NamedTuple):
    per_pair: torch.Tensor  # (B,) combined loss of each pair (with grad when computed with grad)
    policy_chosen_logps: torch.Tensor  # (B,)
    policy_rejected_logps: torch.Tensor
    reference_chosen_logps: torch.Tensor
    reference_rejected_logps: torch.Tensor


def batch_loss(model, batch: PairBatch, reference: tuple[dict, dict], settings: LossSettings,
               autocast_dtype: torch.dtype | None = None) -> BatchLoss:
    device = next(model.parameters()).device
    with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        lp = pair_logps(model, batch, device)
    ref_c = torch.tensor([reference[0][i] for i in batch.ids], device=device, dtype=lp.chosen.dtype)
    ref_r = torch.tensor([reference[1][i] for i in batch.ids], device=device, dtype=lp.chosen.dtype)
    soft = batch.soft_labels.to(device) if batch.soft_labels is not None else None
    per_pair = combined_pair_losses(
        settings.weights, policy_chosen_logps=lp.chosen, policy_rejected_logps=lp.rejected,
        reference_chosen_logps=ref_c, reference_rejected_logps=ref_r, chosen_lengths=lp.chosen_lengths,
        rejected_lengths=lp.rejected_lengths, soft_labels=soft, **settings.pair_kwargs(),
    )
    return BatchLoss(per_pair, lp.chosen, lp.rejected, ref_c, ref_r)


def _gather(accelerator, t: torch.Tensor) -> torch.Tensor:
    return accelerator.gather(t) if accelerator is not None and accelerator.num_processes > 1 else t


def accumulate_gradients(model, micro_batches: list[PairBatch], reference: tuple[dict, dict],
                         settings: LossSettings, accelerator=None,
                         autocast_dtype: torch.dtype | None = None) -> dict[str, float]:
    """Back-propagate the aggregated loss of one effective batch, micro-batch by micro-batch.

    mean: each micro-batch contributes sum(ℓ_i) / n_total, so uneven micro-batches weigh right.
    drdpo: −β′ log mean_i exp(−ℓ_i/β′) couples all pairs, so a no-grad pass first computes every
    ℓ_i of the effective batch (on all processes), then each micro-batch back-propagates
    Σ w_i ℓ_i with w = softmax(−ℓ/β′): the same gradient as the full-batch Dr.DPO loss.
    Returns the step metrics (TRL names) over the whole effective batch.
    """
    world = accelerator.num_processes if accelerator is not None else 1
    n_local = sum(len(mb.ids) for mb in micro_batches)
    weights = None
    if settings.aggregation == "drdpo":
        with torch.no_grad():
            losses = torch.cat([batch_loss(model, mb, reference, settings, autocast_dtype).per_pair
                                for mb in micro_batches])
        all_losses = _gather(accelerator, losses)
        w_all = drdpo_weights(all_losses, settings.drdpo_beta)
        rank = accelerator.process_index if accelerator is not None else 0
        weights = w_all.view(world, -1)[rank] if world > 1 else w_all
    parts, offset = [], 0
    for k, mb in enumerate(micro_batches):
        last = k == len(micro_batches) - 1
        sync = nullcontext() if last or accelerator is None else accelerator.no_sync(model)
        with sync:
            out = batch_loss(model, mb, reference, settings, autocast_dtype)
            if weights is None:
                loss = out.per_pair.sum() / n_local
            else:  # DDP averages gradients over processes; Dr.DPO weights already sum to 1 globally
                loss = (weights[offset : offset + len(mb.ids)] * out.per_pair).sum() * world
            if accelerator is not None:
                accelerator.backward(loss)
            else:
                loss.backward()
        offset += len(mb.ids)
        parts.append(torch.stack([t.detach().float() for t in out]).T)  # (b, 5)
    stacked = _gather(accelerator, torch.cat(parts))
    return step_metrics(stacked, settings)


def step_metrics(stacked: torch.Tensor, settings: LossSettings) -> dict[str, float]:
    """TRL's metric names from rows of (loss, π_c, π_r, ref_c, ref_r)."""
    per_pair, pc, pr, rc, rr = stacked.T
    chosen_rewards = settings.beta * (pc - rc)
    rejected_rewards = settings.beta * (pr - rr)
    return {
        "loss": aggregate(per_pair, settings.aggregation, settings.drdpo_beta).item(),
        "rewards/chosen": chosen_rewards.mean().item(),
        "rewards/rejected": rejected_rewards.mean().item(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean().item(),
        "logps/chosen": pc.mean().item(),
        "logps/rejected": pr.mean().item(),
    }


@torch.no_grad()
def evaluate(model, batches: list[PairBatch], reference: tuple[dict, dict], settings: LossSettings,
             autocast_dtype: torch.dtype | None = None) -> dict[str, float]:
    """Held-out metrics (prefixed ``eval/``): reward accuracy and margins under the training loss."""
    was_training = model.training
    model.eval()
    rows = [torch.stack([t.float() for t in batch_loss(model, b, reference, settings, autocast_dtype)]).T
            for b in batches]
    model.train(was_training)
    metrics = step_metrics(torch.cat(rows), settings)
    return {f"eval/{k}": v for k, v in metrics.items()} | {"eval/pairs": float(sum(len(b.ids) for b in batches))}
