"""Preference pairs and their loaders (JSONL / CSV / Parquet, Hugging Face datasets,
HH-RLHF, PKU-SafeRLHF)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from robalign.errors import UserError

Messages = list[dict[str, str]]  # [{"role": "user", "content": ...}, ...]


class DataError(UserError, ValueError):
    """Bad input data; the message names the file, the row or column and the fix."""


@dataclass(frozen=True)
class PreferencePair:
    id: str
    prompt: str | Messages  # plain text, or chat messages ending with a user turn
    chosen: str  # the response preferred by the (possibly noisy) label
    rejected: str
    soft_label: float | None = None  # P(chosen is truly preferred); None = hard label
    meta: dict[str, Any] = field(default_factory=dict, compare=False)
