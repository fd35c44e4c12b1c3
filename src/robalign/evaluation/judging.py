"""Judging a table: the rows of a saved-answers table in, the same rows with verdicts out
(``robalign judge run``, ``robalign judge select``).

Columns added, with ``prefix`` (default ``judge_``): ``verdict`` and ``raw``, ``votes`` for
k-sample judges; with an R-vs-M second pass also ``rm``, ``rm_raw`` and ``final`` (the
verdict with M where the second pass said M). FAILED verdicts (the judge call failed) are
counted and make ``judge run`` exit 1; the cache keeps only answers, so running the same
command again retries exactly the failed rows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from robalign.errors import UserError
from robalign.evaluation.cache import ResponseCache, RunSummary
from robalign.evaluation.judges import Judge, JudgeItem, LLMJudge, build_judge, judge_answers
from robalign.evaluation.labels import FAILED, JUDGE_REFUSED, MISUNDERSTANDING_LABELS, UNPARSED


def _text(value) -> str:
    return "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)


def judge_items(df: pd.DataFrame, prompt_col: str, response_col: str, stereotype_col: str | None = None,
                counter_col: str | None = None, base_prompt_col: str | None = None) -> list[JudgeItem]:
    """One ``JudgeItem`` per row; missing cells become "" (stereotype fields, base prompt: None).
    ``base_prompt_col`` holds the plain base prompt of attacked rows (see ``judges``)."""
    stereo = df[stereotype_col] if stereotype_col else [None] * len(df)
    counter = df[counter_col] if counter_col else [None] * len(df)
    base = df[base_prompt_col] if base_prompt_col else [None] * len(df)
    return [JudgeItem(_text(p), _text(r), _text(s) or None, _text(c) or None, base_prompt=_text(b) or None)
            for p, r, s, c, b in zip(df[prompt_col], df[response_col], stereo, counter, base)]


def judge_frame(df: pd.DataFrame, judge: Judge, items: list[JudgeItem], prefix: str = "judge_",
                answered: Sequence[bool] | None = None) -> pd.DataFrame:
    """``df`` plus ``<prefix>verdict`` and ``<prefix>raw`` (and ``<prefix>votes`` for k-sample
    judges). Rows with ``answered`` False (a failed generation) are FAILED, never judged."""
    verdicts = judge.judge(items) if answered is None else judge_answers(judge, items, answered)
    out = df.copy()
    out[f"{prefix}verdict"] = [v.label for v in verdicts]
    out[f"{prefix}raw"] = [v.raw for v in verdicts]
    if any(v.votes for v in verdicts):
        out[f"{prefix}votes"] = [",".join(v.votes) for v in verdicts]
    return out


def misunderstanding_pass(df: pd.DataFrame, judge: LLMJudge, items: list[JudgeItem], prefix: str = "judge_"
                          ) -> pd.DataFrame:
    """Send every R verdict to an R-vs-M judge. Adds ``<prefix>rm`` (R / M / UNPARSED / FAILED /
    JUDGE_REFUSED, empty for non-R rows), ``<prefix>rm_raw`` and ``<prefix>final`` (the verdict with M where the
    second pass said M)."""
    if tuple(judge.template.labels) != MISUNDERSTANDING_LABELS:
        raise UserError(f"the second pass needs the misunderstanding template, not '{judge.template.name}' "
                        "(e.g. llm:<model spec>#misunderstanding)")
    refusals = [i for i, v in enumerate(df[f"{prefix}verdict"]) if v == "R"]
    verdicts = judge.judge([items[i] for i in refusals]) if refusals else []
    rm, rm_raw = [""] * len(df), [""] * len(df)
    for i, verdict in zip(refusals, verdicts):
        rm[i], rm_raw[i] = verdict.label, verdict.raw
    out = df.copy()
    out[f"{prefix}rm"], out[f"{prefix}rm_raw"] = rm, rm_raw
    out[f"{prefix}final"] = ["M" if m == "M" else v for v, m in zip(out[f"{prefix}verdict"], rm)]
    return out


def verdict_counts(labels: Sequence) -> dict[str, Any]:
    """{"counts": {label: n} sorted by label, "unparsed": n, "failed": n, "judge_refused": n}:
    the three non-verdicts counted apart (none of them is a class)."""
    counts = Counter(map(str, labels))
    return {"counts": dict(sorted(counts.items())), "unparsed": counts.get(UNPARSED, 0),
            "failed": counts.get(FAILED, 0), "judge_refused": counts.get(JUDGE_REFUSED, 0)}


@dataclass
class JudgedTable:
    frame: pd.DataFrame  # the input rows plus the verdict columns
    summaries: list[RunSummary] = field(default_factory=list)  # one per LLM judge (calls, cache, tokens)
    failed: int = 0  # FAILED verdicts over both passes


def judge_table(df: pd.DataFrame, items: list[JudgeItem], judge_spec: Any, cache: ResponseCache | None,
                options: dict[str, Any], second_pass: Any = None, prefix: str = "judge_") -> JudgedTable:
    """``judge run``: the judge on every row, then the optional R-vs-M judge on the R rows.
    ``options`` are backend options (``-o``) for both LLM judges."""
    judge = build_judge(judge_spec, cache, **options)
    out = judge_frame(df, judge, items, prefix=prefix)
    summaries = [judge.summary] if getattr(judge, "summary", None) else []
    failed = int((out[f"{prefix}verdict"] == FAILED).sum())
    if second_pass:
        second = build_judge(second_pass, cache, **options)
        if not isinstance(second, LLMJudge):
            raise UserError("--second-pass needs an llm judge spec ending in #misunderstanding")
        out = misunderstanding_pass(out, second, items, prefix=prefix)
        summaries.append(second.summary)
        failed += int((out[f"{prefix}rm"] == FAILED).sum())
    return JudgedTable(out, summaries, failed)
