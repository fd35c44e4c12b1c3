"""Checks before the first training step: show one pair as the model will read it, and check
that the policy starts where the reference log-probs say it does.

Two silent failures motivate them. A prompt rendered twice over (a chat template applied to
text that already holds one, or a tokenizer adding BOS to templated text) trains on
``<s><s>`` or a doubled system prompt; nothing crashes, the run is just about something
else. And reference log-probs computed on different tokens than the policy sees (another
template, truncation, precision or dropout) make every DPO reward a constant offset. At
θ = θ_ref the DPO loss of every pair is −log σ(0) = ln 2, so the first batch tells.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from robalign.data.tokenize import PairBatch, TokenizedPair
from robalign.errors import UserError
from robalign.training.step import LossSettings, batch_loss

LN2 = math.log(2.0)
# Mean over the first batch of |ℓ_i − ln 2| allowed (per pair, so mismatches of either sign
# cannot cancel: to first order |ℓ_i − ln 2| = β|h_i|/2). Reference and policy differ only by
# padding width (the reference pass batches by length): ~1e-6 on the tiny models in fp32. Under
# bf16 autocast the kernels' rounding differs with the batch shape: SmolLM2 at 64 tokens agreed
# to 1e-7, at 256 tokens (PKU pairs, β = 0.1) the mean loss was 0.6976 (4.5e-3 off). So bf16 only
# catches mismatches of ≳ 0.4 nats per sequence at β = 0.1; fp32 catches ≳ 0.02.
INITIAL_LOSS_TOLERANCE = {"fp32": 1e-3, "bf16": 2e-2}


def doubled_special_tokens(prompt_ids: tuple[int, ...], tokenizer) -> list[str]:
    """Special tokens that open the prompt twice in a row (``<s><s>``), by name."""
    if len(prompt_ids) < 2 or prompt_ids[0] != prompt_ids[1]:
        return []
    token = tokenizer.convert_ids_to_tokens(prompt_ids[0])
    return [token] if prompt_ids[0] in set(tokenizer.all_special_ids) else []


def describe_pair(pair: TokenizedPair, tokenizer) -> str:
    """One tokenized pair with its special tokens visible, as a block of text for the log."""

    def show(ids: tuple[int, ...]) -> str:
        return repr(tokenizer.decode(list(ids), skip_special_tokens=False))

    lines = [f"pair '{pair.id}' as the model reads it (special tokens visible):",
             f"  prompt   ({len(pair.prompt_ids)} tokens): {show(pair.prompt_ids)}",
             f"  chosen   ({len(pair.chosen_ids)} tokens): {show(pair.chosen_ids)}",
             f"  rejected ({len(pair.rejected_ids)} tokens): {show(pair.rejected_ids)}"]
    doubled = doubled_special_tokens(pair.prompt_ids, tokenizer)
    if doubled:
        lines.append(f"  WARNING: the prompt opens with {doubled[0]} twice: the template and the tokenizer both "
                     "add it (set data.prompt_format, or check the tokenizer's add_bos_token)")
    return "\n".join(lines)


class InitialLoss(NamedTuple):
    mean: float  # mean DPO loss of the batch (ln 2 when policy = reference)
    deviation: float  # mean over pairs of |ℓ_i − ln 2|


@torch.no_grad()
def initial_dpo_loss(model, batch: PairBatch, reference: tuple[dict, dict], beta: float,
                     autocast_dtype: torch.dtype | None = None) -> InitialLoss:
    """DPO loss −log σ(β·h) of ``batch`` at the current weights, in eval mode (no dropout),
    whatever loss the run trains with: ln 2 for every pair exactly when policy and reference agree."""
    was_training = model.training
    model.eval()
    try:
        settings = LossSettings({"dpo": 1.0}, beta, 0.0, 0.0, False, "mean", 1.0)
        per_pair = batch_loss(model, batch, reference, settings, autocast_dtype).per_pair.double()
        return InitialLoss(float(per_pair.mean()), float((per_pair - LN2).abs().mean()))
    finally:
        model.train(was_training)


def check_initial_loss(loss: InitialLoss | float, precision: str) -> None:
    """Raise when the first batch's DPO losses are not ln 2 (policy ≠ reference at step 0)."""
    if not isinstance(loss, InitialLoss):
        loss = InitialLoss(float(loss), abs(float(loss) - LN2))
    tolerance = INITIAL_LOSS_TOLERANCE.get(precision, INITIAL_LOSS_TOLERANCE["fp32"])
    deviation, loss = loss.deviation, loss.mean
    if not math.isfinite(loss):
        raise UserError(f"the first batch's DPO loss is {loss}: the model's log-probs are not finite before any "
                        "update (NaN or inf weights, or an overflow at this precision). Check the checkpoint; "
                        "training.check_initial_loss=false trains anyway (non-finite steps are then skipped).")
    if deviation > tolerance:
        raise UserError(
            f"the first batch's DPO loss is {loss:.6f}, not ln 2 = {LN2:.6f} (pairs deviate by {deviation:.2g} on "
            f"average; tolerance {tolerance:g} at {precision}): the policy does not start as the reference. The reference log-probs were computed "
            "on other tokens or weights (a stale reference cache, a different prompt format or length limit, "
            "dropout, or a model changed between the passes). Clear $ROBALIGN_CACHE/reference, check the "
            "logged example pair, or set training.check_initial_loss=false if this is intended.")
