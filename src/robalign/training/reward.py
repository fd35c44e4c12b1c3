"""Reward and cost models for reward-level ShaPO, and the soft labels they give.

A reward model maps (prompt, response) to a scalar r: a transformers sequence classifier with
one label (score read at the last non-pad token) or a safe-rlhf score model (``score_head``,
read at the last token, scored on its own conversation text); see
``robalign.models.reward_heads``. Scoring refuses a model whose head is not in its weights;
only ``train-reward`` gives a causal LM a fresh scalar head. Trained with the Bradley–Terry loss

    L = −log σ(s·(o(y_w) − o(y_l))),   s = +1 for a reward model, −1 for a cost model,

where o is the model's output: a cost model scores harm, so the rejected (less safe) response
should get the higher output. Soft labels (DESIGN.md §1): q = σ(β_r·Δr), Δr = r(y_w) − r(y_l),
r = −cost for a cost model, optionally with Δr divided by its standard deviation over the data.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from robalign.data.preference import PreferencePair
from robalign.data.tokenize import TokenizedPair, TokenizeResult, collate_pairs, tokenize_pairs
from robalign.errors import UserError
from robalign.models.reward_heads import safe_rlhf_text

INFO_FILE = "robalign_reward.json"  # kind (reward | cost) and how the model was trained
KINDS = ("reward", "cost")


class RewardModel(NamedTuple):
    model: torch.nn.Module  # model(input_ids, attention_mask).logits: (B, 1)
    tokenizer: object
    layout: str  # sequence_classification | safe_rlhf (robalign.models.reward_heads)


def load_reward_model(name_or_path: str, dtype: str = "float32", allow_new_head: bool = False) -> RewardModel:
    """A scalar scorer whose head is read from the checkpoint (a UserError when it is missing or
    would be newly initialised). ``allow_new_head``: a causal LM gets a fresh scalar head, for
    ``train-reward`` to train; nothing else should pass it."""
    from robalign.models.loading import DTYPES, load_tokenizer, resolve_model_path
    from robalign.models.reward_heads import load_head_model

    tokenizer = load_tokenizer(name_or_path)
    model, layout = load_head_model(resolve_model_path(name_or_path), getattr(torch, DTYPES.get(dtype, "float32")),
                                    allow_new_head)
    model.config.pad_token_id = tokenizer.pad_token_id  # transformers reads the score at the last non-pad token
    return RewardModel(model, tokenizer, layout)


def tokenize_for_reward(pairs: list[PreferencePair], reward: RewardModel, max_length: int, max_prompt_length: int,
                        source: str = "data") -> TokenizeResult:
    """Token ids as the reward model reads them: a safe-rlhf model gets its conversation text
    with prompt and response tokenized together (as safe-rlhf does); any other model gets the
    trainer's tokenization (chat template, prompt and responses apart)."""
    if reward.layout != "safe_rlhf":
        return tokenize_pairs(pairs, reward.tokenizer, max_length, max_prompt_length, source=source)
    tok, out, truncated = reward.tokenizer, [], 0
    for pair in pairs:
        seqs = []
        for response in (pair.chosen, pair.rejected):
            ids = tok(safe_rlhf_text(pair.prompt, response, tok.eos_token, pair.id))["input_ids"] + [tok.eos_token_id]
            if len(ids) > max_length:  # keep BOS and the end: the score is read at the last token
                ids, truncated = ids[:1] + ids[len(ids) - max_length + 1 :], truncated + 1
            seqs.append(tuple(ids))
        out.append(TokenizedPair(pair.id, (), seqs[0], seqs[1], pair.soft_label))
    return TokenizeResult(out, [], truncated)


def reward_kind(name_or_path: str, cost_flag: bool, model_config=None) -> str:
    """``cost`` or ``reward``: from robalign_reward.json when the model has one, else from a
    safe-rlhf config's ``score_type``, else from --cost."""
    info = Path(name_or_path) / INFO_FILE
    if info.is_file():
        kind, where = json.loads(info.read_text())["kind"], str(info)
    elif getattr(model_config, "score_type", None) in KINDS:
        kind, where = model_config.score_type, f"the config of {name_or_path} (score_type)"
    else:
        return "cost" if cost_flag else "reward"
    if cost_flag and kind != "cost":
        raise UserError(f"--cost given, but {where} says this is a {kind} model; drop --cost")
    return kind


def pair_outputs(model, batch, autocast_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scalar outputs (B,), (B,) for the chosen and rejected sequences of a PairBatch."""
    device = next(model.parameters()).device
    with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        out = model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device)).logits
    out = out.squeeze(-1).float()
    half = out.shape[0] // 2
    return out[:half], out[half:]


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, sign: float = 1.0) -> torch.Tensor:
    """mean −log σ(sign·(chosen − rejected)); chosen, rejected: (B,) model outputs."""
    return -F.logsigmoid(sign * (chosen - rejected)).mean()


class RewardTrainResult(NamedTuple):
    steps: int
    final_train_loss: float
    eval_accuracy: float  # share of held-out pairs ranked as labelled
    eval_loss: float
    eval_pairs: int


def train_reward_model(model, train: list[TokenizedPair], held_out: list[TokenizedPair], pad_token_id: int,
                       kind: str = "reward", epochs: int = 1, batch_size: int = 8, learning_rate: float = 1e-4,
                       seed: int = 0, autocast_dtype: torch.dtype | None = None) -> RewardTrainResult:
    """Bradley–Terry training with AdamW, seeded shuffles, clip 1.0; then held-out ranking accuracy."""
    if kind not in KINDS:
        raise UserError(f"reward model kind must be reward or cost, got '{kind}'")
    sign = 1.0 if kind == "reward" else -1.0
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    gen = torch.Generator().manual_seed(seed)
    steps, loss = 0, math.nan
    for _epoch in range(epochs):
        order = torch.randperm(len(train), generator=gen).tolist()
        for start in range(0, len(order), batch_size):
            batch = collate_pairs([train[i] for i in order[start : start + batch_size]], pad_token_id)
            chosen, rejected = pair_outputs(model, batch, autocast_dtype)
            step_loss = bradley_terry_loss(chosen, rejected, sign)
            step_loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            steps, loss = steps + 1, step_loss.item()
    margins = reward_margins(model, held_out, pad_token_id, kind, batch_size, autocast_dtype)
    accuracy = (margins > 0).float().mean().item() if len(held_out) else math.nan
    eval_loss = -F.logsigmoid(margins).mean().item() if len(held_out) else math.nan
    return RewardTrainResult(steps, loss, accuracy, eval_loss, len(held_out))


@torch.no_grad()
def reward_margins(model, pairs: list[TokenizedPair], pad_token_id: int, kind: str = "reward",
                   batch_size: int = 16, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """(N,) Δr = r(y_w) − r(y_l) per pair, in input order; r = −cost for a cost model."""
    was_training = model.training
    model.eval()
    sign = 1.0 if kind == "reward" else -1.0
    out = []
    for start in range(0, len(pairs), batch_size):
        chosen, rejected = pair_outputs(model, collate_pairs(pairs[start : start + batch_size], pad_token_id),
                                        autocast_dtype)
        out.append((sign * (chosen - rejected)).cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def soft_labels(margins: torch.Tensor, beta_r: float = 1.0, standardize: bool = False) -> torch.Tensor:
    """q = σ(β_r·Δr), (N,) from (N,) reward margins.

    standardize: use Δr / std(Δr) (std over the data set), so β_r means the same for any reward
    scale. Δr is not centred: centring would move pairs across q = 0.5 and change which response
    the label prefers.
    """
    if not beta_r > 0:
        raise UserError(f"--beta-r must be > 0, got {beta_r} (the ShaPO paper compares 0.1, 1 and 10)")
    margins = margins.double()
    if standardize:
        std = margins.std() if margins.numel() > 1 else torch.tensor(0.0, dtype=torch.float64)
        if not std > 0:
            raise UserError("--standardize: the reward margins have zero spread (one pair, or a constant model)")
        margins = margins / std
    return torch.sigmoid(beta_r * margins)
