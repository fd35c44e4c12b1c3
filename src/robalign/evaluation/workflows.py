"""The workflows behind ``robalign generate`` and ``robalign judge run``: a table of rows in,
the same rows with generations or verdicts beside them out. The CLI modules only parse
arguments and print; everything here takes plain arguments."""

from __future__ import annotations

import datetime
import json
import platform
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from robalign.errors import UserError
from robalign.evaluation.backends import GenerationRequest
from robalign.evaluation.cache import CachedBackend, ResponseCache
from robalign.evaluation.judges import Judge, JudgeItem, LLMJudge
from robalign.evaluation.labels import FAILED, UNPARSED
from robalign.evaluation.specs import redact_value, reject_secrets


def open_cache(no_cache: bool = False, path: str | Path | None = None) -> ResponseCache | None:
    return None if no_cache else ResponseCache(path)


def parse_options(pairs: list[str] | None) -> dict[str, Any]:
    """``["batch_size=8", "concurrency=4"]`` -> {"batch_size": 8, "concurrency": 4} (YAML values)."""
    import yaml

    options = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise UserError(f"option '{pair}' is not KEY=VALUE (e.g. -o concurrency=4)")
        key, value = pair.split("=", 1)
        options[key.strip()] = yaml.safe_load(value) if value else ""
    reject_secrets(options, "-o option")
    return options


def run_record(args=None) -> dict[str, Any]:
    """Where a result came from: the parsed CLI arguments, time, versions, git commit."""
    from robalign import __version__ as robalign_version

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        # redact_value: a URL in --model / --judge may carry a key in its user info or query
        "args": {k: redact_value(v) for k, v in vars(args).items() if not k.startswith("_")} if args is not None else {},
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "robalign": robalign_version, "python": platform.python_version(), "git_commit": commit,
    }


def find_column(df: pd.DataFrame, wanted: str | None, fallback: str, flag: str, source: str) -> str:
    """``wanted`` if given, else a column named ``fallback`` in any case."""
    if wanted:
        if wanted not in df.columns:
            raise UserError(f"{source}: no column '{wanted}' ({flag}); columns are: {', '.join(map(str, df.columns))}")
        return wanted
    for column in df.columns:
        if str(column).lower() == fallback:
            return column
    raise UserError(f"{source}: no '{fallback}' column; name it with {flag}. Columns: {', '.join(map(str, df.columns))}")


def _text(value) -> str:
    return "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)


def judge_items(df: pd.DataFrame, prompt_col: str, response_col: str, stereotype_col: str | None = None,
                counter_col: str | None = None) -> list[JudgeItem]:
    stereo = df[stereotype_col] if stereotype_col else [None] * len(df)
    counter = df[counter_col] if counter_col else [None] * len(df)
    return [JudgeItem(_text(p), _text(r), _text(s) or None, _text(c) or None)
            for p, r, s, c in zip(df[prompt_col], df[response_col], stereo, counter)]


def judge_frame(df: pd.DataFrame, judge: Judge, items: list[JudgeItem], prefix: str = "judge_") -> pd.DataFrame:
    """``df`` plus ``<prefix>verdict`` and ``<prefix>raw`` (and ``<prefix>votes`` for k-sample judges)."""
    verdicts = judge.judge(items)
    out = df.copy()
    out[f"{prefix}verdict"] = [v.label for v in verdicts]
    out[f"{prefix}raw"] = [v.raw for v in verdicts]
    if any(v.votes for v in verdicts):
        out[f"{prefix}votes"] = [",".join(v.votes) for v in verdicts]
    return out


def misunderstanding_pass(df: pd.DataFrame, judge: LLMJudge, items: list[JudgeItem], prefix: str = "judge_"
                          ) -> pd.DataFrame:
    """Send every R verdict to an R-vs-M judge. Adds ``<prefix>rm`` (R / M / UNPARSED, empty
    for non-R rows), ``<prefix>rm_raw`` and ``<prefix>final`` (the verdict with M where the
    second pass said M)."""
    if judge.template.labels != ("R", "M"):
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


def verdict_counts(labels) -> dict[str, Any]:
    counts = Counter(map(str, labels))
    return {"counts": dict(sorted(counts.items())), "unparsed": counts.get(UNPARSED, 0), "failed": counts.get(FAILED, 0)}


def generation_requests(prompts: list[str], system: str | None, samples: int, max_new_tokens: int,
                        temperature: float, top_p: float, seed: int) -> list[GenerationRequest]:
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


def write_json(path: str | Path, payload: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False, default=str) + "\n")
    tmp.replace(path)
    return path
