"""Helpers for the ShaPO tests (imported as a plain module; tests/ has no packages): a nano model in float64 with a batch of synthetic pairs whose
policy has been moved off the reference, so that every per-pair loss and gradient differs."""

from __future__ import annotations

from typing import NamedTuple

import torch

from robalign.data.synthetic import synthetic_pairs
from robalign.data.tokenize import TokenizedPair, collate_pairs, tokenize_pairs
from robalign.models.loading import load_causal_lm
from robalign.training.reference import compute_reference_logps
from robalign.training.step import LossSettings


class Setup(NamedTuple):
    model: torch.nn.Module
    pairs: list[TokenizedPair]
    reference: tuple[dict, dict]
    pad: int

    def batches(self, size: int):
        return [collate_pairs(self.pairs[i : i + size], self.pad) for i in range(0, len(self.pairs), size)]


def make_setup(model_dir, tokenizer, n: int = 8, dtype=torch.float64, shift: float = 0.02, seed: int = 5) -> Setup:
    model = load_causal_lm(str(model_dir)).to(dtype)
    pairs = tokenize_pairs(synthetic_pairs(n, seed=seed), tokenizer, 96, 64).pairs
    reference = compute_reference_logps(model, pairs, tokenizer.pad_token_id)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(shift * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    model.train()
    return Setup(model, pairs, reference, tokenizer.pad_token_id)


def settings(aggregation: str = "mean", losses: dict | None = None) -> LossSettings:
    return LossSettings(losses or {"dpo": 1.0}, 0.5, 0.0, 0.1, False, aggregation, 0.5)


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}
