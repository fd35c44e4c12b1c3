"""Generating for a table: one request per (row, sample), one output row per response
(``robalign generate``)."""

from __future__ import annotations

import pandas as pd

from robalign.errors import UserError
from robalign.evaluation.backends import GenerationRequest
from robalign.evaluation.cache import CachedBackend


def generation_requests(prompts: list[str], system: str | None, samples: int, max_new_tokens: int,
                        temperature: float, top_p: float, seed: int) -> list[GenerationRequest]:
    """``len(prompts) * samples`` requests, row-major, with ids ``<row>/<sample>``."""
    if samples > 1 and temperature == 0:
        raise UserError("--samples > 1 with --temperature 0 gives identical samples; set --temperature (e.g. 0.7)")
    head = [{"role": "system", "content": system}] if system else []
    return [
        GenerationRequest(messages=[*head, {"role": "user", "content": prompt}], max_new_tokens=max_new_tokens,
                          temperature=temperature, top_p=top_p, seed=seed, sample_index=k, id=f"{row}/{k}")
        for row, prompt in enumerate(prompts)
        for k in range(samples)
    ]


def generate_frame(df: pd.DataFrame, backend: CachedBackend, requests: list[GenerationRequest],
                   samples: int) -> pd.DataFrame:
    """One output row per (input row, sample): the input columns plus ``sample_index``,
    ``response``, ``status``, ``reason``, ``finish_reason``, token counts and ``cached``."""
    responses = backend.generate(requests)
    out = df.loc[df.index.repeat(samples)].reset_index(drop=True)
    out["sample_index"] = [r.sample_index for r in requests]
    for column in ("text", "status", "reason", "finish_reason", "prompt_tokens", "completion_tokens", "cached"):
        out["response" if column == "text" else column] = [getattr(r, column) for r in responses]
    return out
