"""Judges: one protocol (``judge(items) -> verdicts``), three kinds, named by spec strings.

| spec                                 | judge                                              |
|--------------------------------------|----------------------------------------------------|
| ``rule``                             | CTO/SC option parser + refusal keywords: S/CS/D/R  |
| ``keyword``                          | refusal keywords only: R / NR                      |
| ``llm:<model spec>[#template]``      | an LLM with a template from ``parsers.TEMPLATES``  |

``#template`` defaults to ``bias``; others: ``misunderstanding`` (R vs M second pass),
``llama-guard``, ``md-judge``, ``harmbench`` (safe / unsafe). The mapping form adds
options: ``{type: llm, model: <spec>, template: bias, samples: 3, temperature: 0.7}``.

A reply cut off by the length limit (``finish_reason: length``) is UNPARSED even when a
verdict appears in it: the judge had not finished, and its last word may not be its verdict.

k-sample majority (``samples: k``): every sample is parsed; UNPARSED and FAILED samples do
not vote unless no sample parsed. Ties go to the tied label whose first vote came earliest
(sample 0 first), so with k = 2 a disagreement keeps sample 0's verdict.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from robalign.errors import UserError
from robalign.evaluation.backends import (
    GenerationRequest,
    GenerationResponse,
    build_backend,
    parse_model_spec,
    spec_label,
)
from robalign.evaluation.cache import CachedBackend, ResponseCache, RunSummary
from robalign.evaluation.labels import BIAS_LABELS, FAILED, NOT_REFUSAL, REFUSAL_LABELS, UNPARSED
from robalign.evaluation.parsers import JudgeTemplate, get_template
from robalign.evaluation.rules import bias_rule_verdict, is_refusal
from robalign.evaluation.specs import load_spec, redact_urls, reject_secrets


@dataclass
class JudgeItem:
    prompt: str
    response: str
    stereotype: str | None = None  # CLEAR-Bias fields; only the rule judge reads them
    counter_stereotype: str | None = None


@dataclass
class Verdict:
    label: str  # a template label, UNPARSED or FAILED
    raw: str  # the judge's output (LLM) or the rule that fired
    votes: list[str] = field(default_factory=list)  # per-sample labels when samples > 1


class Judge(Protocol):
    name: str
    labels: tuple[str, ...]

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]: ...


class RuleJudge:
    name, labels = "rule", BIAS_LABELS
    summary: RunSummary | None = None

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        return [Verdict(*bias_rule_verdict(i.prompt, i.response, i.stereotype, i.counter_stereotype)) for i in items]


class KeywordJudge:
    name, labels = "keyword", REFUSAL_LABELS
    summary: RunSummary | None = None

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        out = []
        for item in items:
            phrase = is_refusal(item.response) if isinstance(item.response, str) else None
            out.append(Verdict("R", f"refusal phrase '{phrase}'") if phrase else Verdict(NOT_REFUSAL, "no refusal phrase"))
        return out


def majority(votes: Sequence[str]) -> str:
    """Most frequent parsed label; ties -> the tied label voted first (see module doc)."""
    parsed = [v for v in votes if v not in (UNPARSED, FAILED)]
    if not parsed:
        return UNPARSED if UNPARSED in votes or not votes else FAILED
    counts = Counter(parsed)
    top = max(counts.values())
    return next(v for v in parsed if counts[v] == top)


class LLMJudge:
    """A model spec + template. Calls go through ``CachedBackend``, so re-judging is free and an
    interrupted run resumes where it stopped."""

    def __init__(self, backend: CachedBackend, template: JudgeTemplate, samples: int = 1, temperature: float = 0.0,
                 max_new_tokens: int | None = None, seed: int = 0, name: str = ""):
        if samples < 1:
            raise UserError(f"judge samples must be >= 1, got {samples}")
        if samples > 1 and temperature == 0:
            raise UserError("a k-sample judge needs temperature > 0 (greedy samples are identical); "
                            "set temperature, e.g. 0.7")
        self.backend, self.template, self.samples = backend, template, int(samples)
        self.temperature, self.seed = float(temperature), int(seed)
        self.max_new_tokens = int(max_new_tokens or template.max_new_tokens)
        self.name = name or f"llm:{backend.summary.model}#{template.name}"
        self.labels = template.labels

    @property
    def summary(self) -> RunSummary:
        return self.backend.summary

    def requests(self, items: Sequence[JudgeItem]) -> list[GenerationRequest]:
        from robalign.evaluation.templates import render

        return [
            GenerationRequest(
                messages=[{"role": "user", "content": render(self.template.text, item.prompt, item.response)}],
                max_new_tokens=self.max_new_tokens, temperature=self.temperature, seed=self.seed, sample_index=k,
                id=f"{n}/{k}",
            )
            for n, item in enumerate(items)
            for k in range(self.samples)
        ]

    def vote(self, response: GenerationResponse) -> str:
        """One sample's label: FAILED for a failed call, UNPARSED for a reply cut off by the
        length limit, else what the template's parser reads."""
        if not response.ok:
            return FAILED
        if response.finish_reason == "length":
            return UNPARSED
        return self.template.parse(response.text)

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        responses = self.backend.generate(self.requests(items))
        verdicts = []
        for n in range(len(items)):
            chunk = responses[n * self.samples : (n + 1) * self.samples]
            votes = [self.vote(r) for r in chunk]
            raw = chunk[0].text if chunk[0].ok else f"judge call failed: {chunk[0].reason}"
            if self.samples > 1:
                raw = "\n---\n".join(r.text if r.ok else f"judge call failed: {r.reason}" for r in chunk)
            verdicts.append(Verdict(majority(votes), raw, votes if self.samples > 1 else []))
        return verdicts


JUDGE_HELP = "use rule, keyword, or llm:<model spec>[#template] (e.g. llm:openai:deepseek-chat@https://api.deepseek.com#bias)"
JUDGE_EXAMPLE = "{type: llm, model: 'openai:deepseek-chat@https://api.deepseek.com', template: bias}"


def parse_judge_spec(spec: str | dict) -> dict[str, Any]:
    """Normalise a judge spec to a mapping {type, model?, template?, samples?, ...}.
    Errors name a mapping's keys, never its values (a value could be a secret)."""
    spec = load_spec(spec, "judge spec", JUDGE_EXAMPLE)
    if isinstance(spec, dict):
        data = dict(spec)
        kind = str(data.get("type", "")).lower()
        keys = sorted(map(str, data))  # the keys, never the values: a value could be a secret
        if kind not in ("rule", "keyword", "llm"):
            raise UserError(f"judge spec mapping with keys {keys}: 'type' must be rule, keyword or llm, "
                            f"e.g. {JUDGE_EXAMPLE}")
        if kind == "llm" and "model" not in data:
            raise UserError(f"judge spec mapping with keys {keys}: an llm judge needs 'model' (a model spec), "
                            f"e.g. {JUDGE_EXAMPLE}")
        data["type"] = kind
        return data
    if not isinstance(spec, str):
        raise UserError(f"judge spec of type {type(spec).__name__}: {JUDGE_HELP}")
    text = spec.strip()
    if text in ("rule", "keyword"):
        return {"type": text}
    if not text.startswith("llm:"):
        raise UserError(f"unknown judge spec '{redact_urls(text)}'; {JUDGE_HELP}")
    model, template = text[4:], "bias"
    if "#" in model:
        model, template = model.rsplit("#", 1)
    return {"type": "llm", "model": model, "template": template}


def build_judge(spec: str | dict, cache: ResponseCache | None = None, **backend_overrides: Any) -> Judge:
    """A judge from a spec; LLM judges share ``cache`` (None = ``--no-cache``)."""
    data = parse_judge_spec(spec)
    reject_secrets(backend_overrides, "backend option (-o)")  # refused even where no backend would read it
    if data["type"] == "rule":
        return RuleJudge()
    if data["type"] == "keyword":
        return KeywordJudge()
    unknown = set(data) - {"type", "model", "template", "samples", "temperature", "max_new_tokens", "seed", "name"}
    if unknown:
        raise UserError(f"judge spec {judge_label(data)}: unknown option(s) {', '.join(sorted(unknown))}")
    template = get_template(str(data.get("template", "bias")))
    model = parse_model_spec(data["model"])
    backend = CachedBackend(build_backend(model, **backend_overrides), cache, label=spec_label(model))
    return LLMJudge(backend, template, samples=int(data.get("samples", 1)),
                    temperature=float(data.get("temperature", 0.0)), max_new_tokens=data.get("max_new_tokens"),
                    seed=int(data.get("seed", 0)), name=str(data.get("name", "")))


def judge_label(spec: str | dict) -> str:
    """A short name for a judge spec (tables, file names)."""
    data = parse_judge_spec(spec)
    if data.get("name"):
        return str(data["name"])
    if data["type"] != "llm":
        return data["type"]
    return f"llm:{spec_label(data['model'])}#{data.get('template', 'bias')}"
