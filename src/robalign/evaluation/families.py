"""Is the judge the model under test, or of its family? LLM judges favour answers written by
themselves and by models of their own family (self-preference), so bench summaries warn.

Families are guessed from names alone (a heuristic: a fine-tune saved as runs/my-model is not
seen to be a Llama). Normalising a name: the last path component (drops a hub id's org and a
local path's directories; a checkpoint name such as "final" defers to its parent), lower
case, no file extension (.gguf), split into words at - _ . : and spaces; sizes (135m, 7b,
8x7b), version and quantisation words (v3, 3, q4_1, fp16), tuning suffixes (instruct, chat,
it) and vendor words (meta) dropped; trailing version digits stripped (smollm2 -> smollm).
The family is the first word left: Meta-Llama-3-8B-Instruct and Llama-Guard-3-8B are "llama".
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from robalign.errors import UserError
from robalign.evaluation.backends import parse_model_spec

_SPLIT = re.compile(r"[-_.\s:]+")
_NOISE = re.compile(
    r"^(?:\d+(?:\.\d+)?[kmbt]|\d+x\d+(?:\.\d+)?[kmbt]|a\d+(?:\.\d+)?b|v?\d+(?:\.\d+)*[a-z]?|"  # sizes, versions
    r"q\d+(?:_?k)?(?:_[a-z0-9]+)?|f(?:p)?(?:16|32)|bf16|int[48]|awq|gptq|gguf|ggml|"  # quantisation
    r"instruct|instruction|chat|it|base|hf|sft|dpo|rlhf|preview|latest|turbo|mini|"  # tuning / tiers
    r"meta|microsoft|google|mistralai|huggingfacetb|deepseek-ai|\d{4,8}|"  # vendors, dates
    r"models?|final|checkpoint.*|ckpt|step|runs?|outputs?|out|merged|policy|best|last|weights|tmp)$"  # checkpoints
)


def _words(component: str) -> list[str]:
    stem = re.sub(r"\.(?:gguf|bin|safetensors|pt|ggml)$", "", component.lower())
    words = [w.rstrip("0123456789") if len(w.rstrip("0123456789")) >= 2 else w for w in _SPLIT.split(stem)]
    return [w for w in words if w and not _NOISE.match(w)]


def normalise_name(name: str) -> list[str]:
    """The words of a model name that survive normalisation (module doc), from its last path
    component, or from the nearest parent directory when the last one is only a checkpoint
    name (``final``, ``checkpoint-500``); may be empty."""
    for component in reversed([c for c in re.split(r"[/\\]", str(name).strip()) if c]):
        if words := _words(component):
            return words
    return []


def model_name(spec: Any) -> str | None:
    """The model name in a model spec (``hf:PATH``, ``openai:NAME@URL``, a mapping, a
    packaged name) or an llm judge spec (``llm:<model spec>#template``); None for rule and
    keyword judges or anything unreadable."""
    if spec is None:
        return None
    if isinstance(spec, dict) and "type" in spec:  # a judge spec mapping
        return model_name(spec.get("model")) if str(spec.get("type")).lower() == "llm" else None
    if isinstance(spec, str):
        text = spec.strip()
        if text in ("rule", "keyword"):
            return None
        if text.startswith("llm:"):
            return model_name(text[4:].rsplit("#", 1)[0])
        if ":" not in text:
            return text or None  # a packaged name such as smollm2-135m-instruct
    try:
        return parse_model_spec(spec).model
    except UserError:
        return str(spec) if isinstance(spec, str) else None


def same_family(model_spec: Any, judge_spec: Any) -> str | None:
    """A warning text when the judge is the model under test or of its family (module doc),
    else None. ``judge_spec`` may be a judge spec or the judge's model spec."""
    model, judge = model_name(model_spec), model_name(judge_spec)
    if not model or not judge:
        return None
    model_words, judge_words = normalise_name(model), normalise_name(judge)
    if _same_model(model, judge):
        return (f"judge '{judge}' is the model under test: a model grading its own answers tends to favour "
                "them; use a judge of another family, or report its kappa on the control set")
    if model_words and judge_words and model_words[0] == judge_words[0]:
        return (f"judge '{judge}' is of the same family ('{judge_words[0]}') as the model under test "
                f"'{model}': judges tend to favour their own family's answers; use a judge of another "
                "family, or report its kappa on the control set")
    return None


def _same_model(a: str, b: str) -> bool:
    """The same name (case ignored) or the same local directory."""
    if a.strip().rstrip("/").lower() == b.strip().rstrip("/").lower():
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()
