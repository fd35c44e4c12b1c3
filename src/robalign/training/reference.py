"""Reference-model log-probs, computed once per (model, tokenized data) and cached on disk.

The reference policy never changes during DPO, so its log-probs are a pure function of the
reference weights and the token ids. Computing them once removes one of the three forward
passes of a naive DPO step. The cache file is keyed by the model fingerprint and a hash of
every pair's token ids, so noisy, truncated or re-templated data get their own entry.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from robalign.data.tokenize import TokenizedPair, collate_pairs, tokens_fingerprint
from robalign.paths import cache_dir
from robalign.training.logprobs import pair_logps


class ReferenceLogps(NamedTuple):
    chosen: dict[str, float]
    rejected: dict[str, float]
    cache_file: Path | None
    cache_hit: bool


def default_cache_dir() -> Path:
    return cache_dir()


@torch.no_grad()
def compute_reference_logps(model, pairs: list[TokenizedPair], pad_token_id: int, batch_size: int = 16,
                            desc: str = "reference log-probs", autocast_dtype: torch.dtype | None = None):
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    chosen, rejected = {}, {}
    # Longest first, so each batch holds similar lengths and little compute goes to padding;
    # results are keyed by pair id, so the order is free.
    ordered = sorted(pairs, key=lambda p: len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)),
                     reverse=True)
    for start in tqdm(range(0, len(ordered), batch_size), desc=desc, leave=False, disable=len(pairs) <= batch_size):
        batch = collate_pairs(ordered[start : start + batch_size], pad_token_id)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            lp = pair_logps(model, batch, device)
        for i, pid in enumerate(batch.ids):
            chosen[pid], rejected[pid] = lp.chosen[i].item(), lp.rejected[i].item()
    model.train(was_training)
    return chosen, rejected


def reference_logps(model, pairs: list[TokenizedPair], pad_token_id: int, model_fingerprint: str,
                    cache_dir: str | Path | None = None, batch_size: int = 16, precision: str = "fp32",
                    desc: str = "reference log-probs") -> ReferenceLogps:
    """Cached reference log-probs for ``pairs``; a hit loads in milliseconds."""
    # the weights' dtype and device are in the key too: a bf16 base (LoRA) and its fp32 copy share a
    # fingerprint but not their log-probs
    weights = next(model.parameters())
    numerics = f"{precision}|{weights.dtype}|{weights.device.type}"
    key = hashlib.sha256(f"{model_fingerprint}|{tokens_fingerprint(pairs)}|{numerics}".encode()).hexdigest()[:24]
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    path = cache / "reference_logps" / f"{key}.safetensors"
    ids = [p.id for p in pairs]
    if path.is_file():
        tensors = load_file(path)
        return ReferenceLogps(dict(zip(ids, tensors["chosen"].tolist())),
                              dict(zip(ids, tensors["rejected"].tolist())), path, True)
    dtype = torch.bfloat16 if precision == "bf16" else None
    chosen, rejected = compute_reference_logps(model, pairs, pad_token_id, batch_size, desc, dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    save_file({"chosen": torch.tensor([chosen[i] for i in ids], dtype=torch.float64),
               "rejected": torch.tensor([rejected[i] for i in ids], dtype=torch.float64)}, tmp)
    os.replace(tmp, path)
    return ReferenceLogps(chosen, rejected, path, False)
