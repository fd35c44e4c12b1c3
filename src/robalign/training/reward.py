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

Label noise that reaches q (``robalign.data.noise``): ``train_reward_model`` learns from whatever
pairs it is given, so flipping some of them first (``reward_labels``) gives a reward model whose
q inherit the noise; ``noisy_soft_labels`` adds ``soft_flip`` (q → 1 − q, pair kept) or
``margin_gaussian`` (Δr + ξ before σ) on the training positions only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from robalign.data.noise import margin_noise, noisy_indices
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


def soft_labels(margins: torch.Tensor, beta_r: float = 1.0, standardize: bool = False,
                margin_offsets: torch.Tensor | None = None) -> torch.Tensor:
    """q = σ(β_r·(Δr + ξ)), (N,) float64 from (N,) reward margins.

    standardize: use Δr / std(Δr) (std over the data set, of the clean margins), so β_r means the
    same for any reward scale. Δr is not centred: centring would move pairs across q = 0.5 and
    change which response the label prefers. margin_offsets: (N,) ξ added after standardising
    (``margin_gaussian`` noise; None = 0).
    """
    if not beta_r > 0:
        raise UserError(f"--beta-r must be > 0, got {beta_r} (the ShaPO paper compares 0.1, 1 and 10)")
    margins = margins.double()
    if standardize:
        std = margins.std() if margins.numel() > 1 else torch.tensor(0.0, dtype=torch.float64)
        if not std > 0:
            raise UserError("--standardize: the reward margins have zero spread (one pair, or a constant model)")
        margins = margins / std
    if margin_offsets is not None:
        margins = margins + margin_offsets.double()
    return torch.sigmoid(beta_r * margins)


class NoisySoftLabels(NamedTuple):
    soft_labels: torch.Tensor  # (N,) float64 q with the noise, the column the trainer reads
    clean_soft_labels: torch.Tensor  # (N,) float64 q without it
    margin_offsets: torch.Tensor  # (N,) float64 ξ added to Δr (margin_gaussian); zeros otherwise
    noised: list[int]  # positions the noise touched, ascending


SOFT_LABEL_NOISE_MODES = ("soft_flip", "margin_gaussian")  # the modes `soft-labels` applies


def noisy_soft_labels(margins: torch.Tensor, beta_r: float, standardize: bool, mode: str | None, rate: float,
                      seed: int, std: float = 1.0, eligible: Sequence[int] | None = None) -> NoisySoftLabels:
    """Soft labels with ``soft_flip`` or ``margin_gaussian`` noise on ``eligible`` positions only.

    eligible: positions of the TRAINING pairs (``robalign.data.noise.training_positions``); None =
    all. The noise touches ``round(rate * len(eligible))`` of them: position eligible[j] for each j
    in ``noisy_indices(len(eligible), rate, seed)``, the pairs a ``flip`` with the same seed would
    swap in a trainer that holds out the same pairs.

    * soft_flip: q_i → 1 − q_i (computed in float64; the pair is not swapped).
    * margin_gaussian: q_i = σ(β_r·(Δr_i + ξ_i)), ξ_i ~ N(0, std²) (``margin_noise``), Δr_i after
      --standardize when it is on (whose std is that of the clean margins).
    mode None or rate 0 is the identity: soft_labels == clean_soft_labels bit for bit.
    """
    if mode is not None and mode not in SOFT_LABEL_NOISE_MODES:
        raise UserError(f"noise mode '{mode}' does not act on soft labels; soft-labels applies "
                        f"{' or '.join(SOFT_LABEL_NOISE_MODES)} (flip acts in `robalign train`, reward_labels in "
                        "`robalign train-reward --noise-rate`)")
    n = margins.numel()
    eligible = list(range(n)) if eligible is None else list(eligible)
    clean = soft_labels(margins, beta_r, standardize)
    offsets = torch.zeros(n, dtype=torch.float64)
    if mode is None:
        return NoisySoftLabels(clean, clean, offsets, [])
    try:
        if mode == "soft_flip":
            noised = sorted(eligible[j] for j in noisy_indices(len(eligible), rate, seed))
            q = clean.clone()
            q[noised] = 1.0 - clean[noised]
            return NoisySoftLabels(q, clean, offsets, noised)
        drawn = margin_noise(len(eligible), rate, std, seed)
    except ValueError as exc:
        raise UserError(f"--noise-rate / --noise-std: {exc}") from None
    for j in drawn.indices:
        offsets[eligible[j]] = drawn.offsets[j]
    noised = sorted(eligible[j] for j in drawn.indices)
    return NoisySoftLabels(soft_labels(margins, beta_r, standardize, offsets), clean, offsets, noised)
