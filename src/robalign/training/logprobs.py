"""Summed response-token log-probabilities of a causal LM: log π(y | x) = Σ_t log π(y_t | x, y_<t).

Only positions from the batch's first response token onwards go through the LM head
(``logits_to_keep``): prompt positions are never scored, and on a 4k-vocabulary tiny model
the head is a large share of the step.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from robalign.data.tokenize import PairBatch


class SequenceLogps(NamedTuple):
    logps: torch.Tensor  # (N,) summed log-probs over response tokens
    lengths: torch.Tensor  # (N,) number of response tokens


def token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[targets] without materialising the full log-softmax.

    logits: (N, L, V) any float dtype (half precision is upcast to fp32); targets: (N, L) -> (N, L).
    """
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    picked = torch.gather(logits, -1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def sequence_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor,
                   first_response: int = 1) -> SequenceLogps:
    """Summed log-probs of the response tokens of each row.

    input_ids, attention_mask, response_mask: (N, T); first_response: smallest index t with
    response_mask[:, t] == 1 over the batch (token t is predicted by logits at t - 1).
    """
    width = input_ids.shape[1]
    start = max(int(first_response), 1)
    keep = width - start + 1  # logits at positions start-1 .. T-1
    out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=keep)
    logits = out.logits[:, -keep:-1]  # predicts tokens start .. T-1
    targets = input_ids[:, start:]
    per_token = token_logps(logits, targets)
    mask = response_mask[:, start:].to(per_token.dtype)
    return SequenceLogps((per_token * mask).sum(-1), mask.sum(-1))


class PairLogps(NamedTuple):
    chosen: torch.Tensor  # (B,)
    rejected: torch.Tensor  # (B,)
    chosen_lengths: torch.Tensor  # (B,)
    rejected_lengths: torch.Tensor  # (B,)


def pair_logps(model, batch: PairBatch, device: torch.device | str | None = None) -> PairLogps:
    """One forward pass over the stacked chosen + rejected rows of ``batch``."""
    device = device or next(model.parameters()).device
    seq = sequence_logps(
        model,
        batch.input_ids.to(device),
        batch.attention_mask.to(device),
        batch.response_mask.to(device),
        batch.first_response,
    )
    half = batch.input_ids.shape[0] // 2
    return PairLogps(seq.logps[:half], seq.logps[half:], seq.lengths[:half], seq.lengths[half:])
