"""Turn preference pairs into token ids and padded batches.

Prompt tokens are kept out of the loss: each sequence carries a ``response_mask`` that is 1
exactly on response tokens (including the closing EOS). Chosen and rejected sequences of a
batch are stacked into one tensor, ``[chosen_0 .. chosen_{B-1}, rejected_0 .. rejected_{B-1}]``,
so the policy runs one forward pass per batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from robalign.data.formats import render_prompt
from robalign.data.preference import DataError, PreferencePair

__all__ = ["render_prompt", "tokenize_pairs", "collate_pairs", "tokens_fingerprint"]


@dataclass(frozen=True)
class TokenizedPair:
    id: str
    prompt_ids: tuple[int, ...]
    chosen_ids: tuple[int, ...]  # response tokens, ending with EOS unless truncated
    rejected_ids: tuple[int, ...]
    soft_label: float | None = None


class TokenizeResult(NamedTuple):
    pairs: list[TokenizedPair]
    skipped_ids: list[str]  # prompts over the limit with long_prompt=skip
    truncated: int  # pairs whose prompt or responses were shortened


class PairBatch(NamedTuple):
    ids: list[str]
    input_ids: torch.Tensor  # (2B, T) chosen rows then rejected rows, right-padded
    attention_mask: torch.Tensor  # (2B, T)
    response_mask: torch.Tensor  # (2B, T) 1 on response tokens
    soft_labels: torch.Tensor | None  # (B,) or None when any pair lacks one
    first_response: int  # smallest response start over the batch (positions before it never score)


def tokenize_pairs(
    pairs: list[PreferencePair],
    tokenizer,
    max_length: int,
    max_prompt_length: int,
    long_prompt: str = "truncate",
    prompt_format: str | bool = "auto",
    source: str = "data",
) -> TokenizeResult:
    """Tokenize prompts and responses separately (as TRL does) and apply the length limits.

    A prompt over ``max_prompt_length`` keeps its last tokens (``truncate``), drops the pair
    (``skip``) or raises (``error``); responses are then cut to fit ``max_length``. The prompt is
    rendered with ``prompt_format`` (``robalign.data.formats``), the same way the probe, reward
    scoring and generation render it.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError(f"tokenizer of {source} has no EOS token; set tokenizer.eos_token before training")
    out, skipped, truncated = [], [], 0
    for row, pair in enumerate(pairs, start=1):
        rendered = render_prompt(pair.prompt, tokenizer, prompt_format)
        # a chat template writes its own special tokens; a transcript gets the tokenizer's BOS, if any
        prompt_ids = tokenizer(rendered.text, add_special_tokens=not rendered.templated)["input_ids"]
        chosen = tokenizer(rendered.response_prefix + pair.chosen, add_special_tokens=False)["input_ids"] + [eos]
        rejected = tokenizer(rendered.response_prefix + pair.rejected, add_special_tokens=False)["input_ids"] + [eos]
        cut = False
        if len(prompt_ids) > max_prompt_length:
            if long_prompt == "error":
                raise DataError(
                    f"{source}: pair '{pair.id}' (row {row}) has a prompt of {len(prompt_ids)} tokens, over "
                    f"data.max_prompt_length={max_prompt_length}. Raise data.max_prompt_length, or set "
                    "data.long_prompt=truncate (keep the prompt's end) or data.long_prompt=skip."
                )
            if long_prompt == "skip":
                skipped.append(pair.id)
                continue
            prompt_ids, cut = prompt_ids[-max_prompt_length:], True
        room = max_length - len(prompt_ids)
        if len(chosen) > room or len(rejected) > room:
            chosen, rejected, cut = chosen[:room], rejected[:room], True
        truncated += cut
        out.append(TokenizedPair(pair.id, tuple(prompt_ids), tuple(chosen), tuple(rejected), pair.soft_label))
    return TokenizeResult(out, skipped, truncated)


def collate_pairs(pairs: list[TokenizedPair], pad_token_id: int) -> PairBatch:
    """Stack chosen then rejected sequences, right-padded to the longest one."""
    seqs = [p.prompt_ids + p.chosen_ids for p in pairs] + [p.prompt_ids + p.rejected_ids for p in pairs]
    starts = [len(p.prompt_ids) for p in pairs] * 2
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
    response_mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (seq, start) in enumerate(zip(seqs, starts)):
        input_ids[i, : len(seq)] = torch.tensor(seq)
        attention_mask[i, : len(seq)] = 1
        response_mask[i, start : len(seq)] = 1
    soft = [p.soft_label for p in pairs]
    soft_labels = None if any(q is None for q in soft) else torch.tensor(soft, dtype=torch.float32)
    return PairBatch([p.id for p in pairs], input_ids, attention_mask, response_mask, soft_labels, min(starts))


def tokens_fingerprint(pairs: list[TokenizedPair]) -> str:
    """sha256 over every pair's id and token ids (order-sensitive)."""
    import hashlib

    h = hashlib.sha256()
    for p in pairs:
        h.update(p.id.encode())
        for ids in (p.prompt_ids, p.chosen_ids, p.rejected_ids):
            h.update(len(ids).to_bytes(4, "little"))
            h.update(torch.tensor(ids, dtype=torch.int32).numpy().tobytes())
    return h.hexdigest()
