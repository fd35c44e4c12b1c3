"""Reference-model log-probs, computed once per (model, sequence) and cached on disk.

The reference policy never changes during DPO, so its log-prob of a response is a pure function
of the reference weights, the numerics they run in and the token ids. Computing them once
removes one of the three forward passes of a naive DPO step.

Two stores, both under ``<cache>/reference_logps/``:

- **The sequence store** (``sequences.sqlite``): one row per (model fingerprint, numerics,
  prompt ids, response ids), the summed response-token log-prob. A pair whose chosen and
  rejected responses label noise swapped is the same two sequences, so the cells of a noise
  sweep (same model, pairs that differ only in which response is chosen) compute their reference
  log-probs once between them; so do a longer run whose schedule reaches more pairs, and a data
  set that shares pairs with another. SQLite in WAL mode with a busy timeout: the processes of a
  sweep read and write it at once; two that compute the same sequence at the same time both
  insert it (``INSERT OR IGNORE``: the same function of the same inputs), and nothing is lost.
- **The data-set table** (``<key>.safetensors``, ``chosen`` / ``rejected`` in pair order): the
  exact values one tokenized data set used, keyed by the model fingerprint and a hash of every
  pair's id and token ids (``tokens_fingerprint``). The trainer records its path in
  ``run_info.json``, so a run's reference values can be read back with
  ``safetensors.torch.load_file``; the same data set again loads it without hashing sequences.

A lookup reads the data set's table when there is one. Otherwise it looks every sequence up in
the store, runs only the pairs with a sequence not found there through the model (whole pairs:
one forward pass scores both responses), adds what it computed to the store and writes the
table. A value depends on the batch it was computed in only by float rounding (padding changes
the matmul shapes: ~1e-7 relative in fp32, more under bf16 autocast), far inside the trainer's
initial-loss check (``training/preflight.py``).

The weights' dtype and device and the autocast precision are part of every key: a bf16 base
(LoRA) and its fp32 copy share a fingerprint but not their log-probs.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from robalign.data.tokenize import TokenizedPair, collate_pairs, tokens_fingerprint
from robalign.paths import cache_dir
from robalign.sqlite_wal import switch_to_wal
from robalign.training.logprobs import pair_logps

STORE_FILE = "sequences.sqlite"
SCHEMA = """
CREATE TABLE IF NOT EXISTS logps (
    key BLOB PRIMARY KEY,   -- sequence_key(): 16 bytes of sha256
    model TEXT NOT NULL,    -- model fingerprint | numerics, to inspect or delete one model's rows
    logp REAL NOT NULL      -- summed response-token log-prob
) WITHOUT ROWID
"""
_CHUNK = 500  # keys per SELECT: SQLite's default limit is 999 bound parameters


class ReferenceLogps(NamedTuple):
    chosen: dict[str, float]
    rejected: dict[str, float]
    cache_file: Path | None  # the data-set table holding exactly these values
    cache_hit: bool  # nothing was computed: every sequence came from the cache
    sequences_computed: int = 0  # sequences run through the model in this call (2 per computed pair)
    sequences_cached: int = 0  # sequences read from the cache


def default_cache_dir() -> Path:
    return cache_dir()


def numerics(model, precision: str) -> str:
    """What besides the weights changes a log-prob: autocast precision, weight dtype, device type."""
    weights = next(model.parameters())
    return f"{precision}|{weights.dtype}|{weights.device.type}"


def sequence_key(model_key: str, prompt_ids: tuple[int, ...], response_ids: tuple[int, ...]) -> bytes:
    """16 bytes of sha256 over the model key and the sequence, with the prompt / response split
    (only response tokens are scored, so the split is part of what is computed)."""
    h = hashlib.sha256(model_key.encode() + b"\0")
    for ids in (prompt_ids, response_ids):
        h.update(len(ids).to_bytes(4, "little"))
        h.update(torch.tensor(ids, dtype=torch.int32).numpy().tobytes())
    return h.digest()[:16]


class SequenceStore:
    """Summed log-probs by ``sequence_key``, one SQLite file (WAL) shared by processes."""

    def __init__(self, path: str | Path, busy_timeout_s: float = 60.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # autocommit; put_many opens one explicit transaction per call
        self._conn = sqlite3.connect(self.path, timeout=busy_timeout_s, isolation_level=None)
        switch_to_wal(self._conn, busy_timeout_s)
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute(SCHEMA)

    def get_many(self, keys: Iterable[bytes]) -> dict[bytes, float]:
        keys = list(dict.fromkeys(keys))
        found: dict[bytes, float] = {}
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start : start + _CHUNK]
            rows = self._conn.execute(f"SELECT key, logp FROM logps WHERE key IN ({','.join('?' * len(chunk))})",
                                      chunk).fetchall()
            found.update((bytes(k), float(v)) for k, v in rows)
        return found

    def put_many(self, model_key: str, values: dict[bytes, float]) -> None:
        if not values:
            return
        self._conn.execute("BEGIN IMMEDIATE")  # take the write lock now (waits up to the busy timeout)
        try:
            self._conn.executemany("INSERT OR IGNORE INTO logps VALUES (?, ?, ?)",
                                   [(k, model_key, v) for k, v in values.items()])
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

    def __len__(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM logps").fetchone()[0]

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> SequenceStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
    """Cached reference log-probs for ``pairs`` (module doc); a full hit loads in milliseconds
    and runs nothing through ``model``."""
    model_key = f"{model_fingerprint}|{numerics(model, precision)}"
    root = (Path(cache_dir) if cache_dir else default_cache_dir()) / "reference_logps"
    key = hashlib.sha256(f"{model_fingerprint}|{tokens_fingerprint(pairs)}|{numerics(model, precision)}".encode())
    table = root / f"{key.hexdigest()[:24]}.safetensors"
    ids = [p.id for p in pairs]
    if table.is_file():
        tensors = load_file(table)
        return ReferenceLogps(dict(zip(ids, tensors["chosen"].tolist())), dict(zip(ids, tensors["rejected"].tolist())),
                              table, True, 0, 2 * len(pairs))

    keys = {p.id: (sequence_key(model_key, p.prompt_ids, p.chosen_ids),
                   sequence_key(model_key, p.prompt_ids, p.rejected_ids)) for p in pairs}
    with SequenceStore(root / STORE_FILE) as store:
        found = store.get_many(k for pair_keys in keys.values() for k in pair_keys)
        missing = [p for p in pairs if not all(k in found for k in keys[p.id])]
        dtype = torch.bfloat16 if precision == "bf16" else None
        new_chosen, new_rejected = compute_reference_logps(model, missing, pad_token_id, batch_size, desc, dtype)
        computed = {}
        for p in missing:
            computed[keys[p.id][0]], computed[keys[p.id][1]] = new_chosen[p.id], new_rejected[p.id]
        store.put_many(model_key, computed)
    values = found | computed
    chosen = {p.id: values[keys[p.id][0]] for p in pairs}
    rejected = {p.id: values[keys[p.id][1]] for p in pairs}
    tmp = table.with_name(table.name + f".{os.getpid()}.tmp")
    save_file({"chosen": torch.tensor([chosen[i] for i in ids], dtype=torch.float64),
               "rejected": torch.tensor([rejected[i] for i in ids], dtype=torch.float64)}, tmp)
    os.replace(tmp, table)
    n_computed = 2 * len(missing)
    return ReferenceLogps(chosen, rejected, table, not missing, n_computed, 2 * len(pairs) - n_computed)
