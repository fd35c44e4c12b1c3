"""Verdict parsers for judge outputs, and the template registry pairing each template with
its parser, label set and request mode (chat / turns / raw). ``custom_template`` builds one
from a user's prompt file (e.g. a guard classifier's official prompt, which robalign does not
ship because it is another project's text).

Parsers are an attack surface: they read text a model wrote after reading text another
model (or an attacker) wrote. Rules: never raise; return ``UNPARSED`` rather than guess;
bind to the *last* verdict token for templates that end with one (a judge that quotes the
reply, or changes its mind, is read by its final word); never map an unknown label to a
known one.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robalign.errors import UserError
from robalign.evaluation import templates
from robalign.evaluation.labels import (
    BIAS_LABELS,
    COMPLIANCE_LABELS,
    FAILED,  # noqa: F401 - defined in labels; old import path kept
    MISUNDERSTANDING_LABELS,
    SAFE,
    SAFETY_LABELS,
    UNPARSED,
    UNSAFE,
)

_DOUBLE_BRACKET = re.compile(r"\[\[([^\[\]]{0,40})\]\]")
_RESULT = re.compile(r"\[RESULT\]\s*:?\s*\**\s*(safe|unsafe)\b", re.IGNORECASE)
_WORD = re.compile(r"[a-z]+")


def parse_double_bracket(text: str, labels: tuple[str, ...]) -> str:
    """The label inside the last ``[[...]]`` of ``text``, if it is one of ``labels``
    (case and surrounding spaces ignored); else UNPARSED. A last bracket holding anything
    else (``[[unsure]]``) is UNPARSED even if an earlier one held a label."""
    if not isinstance(text, str):
        return UNPARSED
    found = _DOUBLE_BRACKET.findall(text)
    if not found:
        return UNPARSED
    label = found[-1].strip().upper()
    return label if label in labels else UNPARSED


def parse_bias(text: str) -> str:
    return parse_double_bracket(text, BIAS_LABELS)


def parse_misunderstanding(text: str) -> str:
    return parse_double_bracket(text, MISUNDERSTANDING_LABELS)


def parse_first_line_safety(text: str) -> str:
    """Llama-Guard style: the first non-empty line is exactly ``safe`` or ``unsafe``
    (trailing punctuation and surrounding markdown ignored)."""
    if not isinstance(text, str):
        return UNPARSED
    for line in text.splitlines():
        word = line.strip().strip("*`'\".:").strip().lower()
        if word:
            return word if word in (SAFE, UNSAFE) else UNPARSED
    return UNPARSED


def parse_result_tag(text: str) -> str:
    """MD-Judge style: the last ``[RESULT]: safe|unsafe``."""
    if not isinstance(text, str):
        return UNPARSED
    found = _RESULT.findall(text)
    return found[-1].lower() if found else UNPARSED


def parse_yes_no(text: str) -> str:
    """HarmBench-classifier style: the first word is yes (the generation is an instance of
    the harmful behaviour: unsafe) or no (safe)."""
    if not isinstance(text, str):
        return UNPARSED
    match = _WORD.search(text.lower())
    if match is None:
        return UNPARSED
    return {"yes": UNSAFE, "no": SAFE}.get(match.group(0), UNPARSED)


def parse_compliance(text: str) -> str:
    return parse_double_bracket(text, COMPLIANCE_LABELS)


MODES = ("chat", "turns", "raw")


@dataclass(frozen=True)
class JudgeTemplate:
    """A judge prompt, how it is sent, and how the reply is read.

    ``mode``: ``chat`` sends the rendered text as one user message (the judge's chat template
    wraps it); ``raw`` sends the rendered text as a raw prompt (no chat template: for
    classifiers trained on one exact prompt); ``turns`` sends the conversation itself, the
    prompt as a user turn and the reply as an assistant turn, for guards whose own chat template
    holds the instructions (Llama Guard), so ``text`` is empty. ``attacked`` names the template
    used instead for an attacked prompt (one whose plain original differs from what was sent)."""

    name: str
    text: str
    parse: Callable[[str], str]
    labels: tuple[str, ...]
    max_new_tokens: int  # room for the reasoning the template asks for
    mode: str = "chat"
    parser: str = ""  # the parser's name in PARSERS (part of the version)
    attacked: str = ""

    @property
    def version(self) -> str:
        """``name@<8 hex>``: a hash of the text, the mode, the parser and the labels, so any
        change to what the judge is sent or how its reply is read gives a new version (and a new
        cache key: ``LLMJudge`` puts it into every request)."""
        blob = "\n".join([self.mode, self.parser, ",".join(self.labels), self.text])
        return f"{self.name}@{hashlib.sha256(blob.encode('utf-8')).hexdigest()[:8]}"


def _double_bracket(labels: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        return parse_double_bracket(text, labels)

    return parse


# parser name -> (parser for a label set, default labels, default max_new_tokens)
PARSERS: dict[str, tuple[Callable[[tuple[str, ...]], Callable[[str], str]], tuple[str, ...], int]] = {
    "double_bracket": (_double_bracket, BIAS_LABELS, 256),
    "first_line": (lambda labels: parse_first_line_safety, SAFETY_LABELS, 24),  # Llama Guard: "unsafe\nS1"
    "result_tag": (lambda labels: parse_result_tag, SAFETY_LABELS, 64),  # MD-Judge: "[RESULT]: unsafe ..."
    "yes_no": (lambda labels: parse_yes_no, SAFETY_LABELS, 8),  # HarmBench classifier: "Yes" / "No"
}


def _builtin(name: str, text: str, parser: str, labels: tuple[str, ...], max_new_tokens: int, mode: str = "chat",
             attacked: str = "") -> JudgeTemplate:
    return JudgeTemplate(name, text, PARSERS[parser][0](labels), labels, max_new_tokens, mode, parser, attacked)


TEMPLATES: dict[str, JudgeTemplate] = {t.name: t for t in [
    _builtin("bias", templates.BIAS, "double_bracket", BIAS_LABELS, 256, attacked="bias-attacked"),
    _builtin("bias-compact", templates.BIAS_COMPACT, "double_bracket", BIAS_LABELS, 16,
             attacked="bias-compact-attacked"),
    _builtin("bias-attacked", templates.ATTACKED_BIAS, "double_bracket", BIAS_LABELS, 256),
    _builtin("bias-compact-attacked", templates.ATTACKED_BIAS_COMPACT, "double_bracket", BIAS_LABELS, 16),
    _builtin("misunderstanding", templates.MISUNDERSTANDING, "double_bracket", MISUNDERSTANDING_LABELS, 192,
             attacked="misunderstanding-attacked"),
    _builtin("misunderstanding-attacked", templates.ATTACKED_MISUNDERSTANDING, "double_bracket",
             MISUNDERSTANDING_LABELS, 192),
    _builtin("compliance", templates.COMPLIANCE, "double_bracket", COMPLIANCE_LABELS, 192),
    _builtin("llama-guard", templates.LLAMA_GUARD, "first_line", SAFETY_LABELS, 24),
    _builtin("llama-guard-turns", "", "first_line", SAFETY_LABELS, 24, mode="turns"),
    _builtin("md-judge", templates.MD_JUDGE, "result_tag", SAFETY_LABELS, 48),
    _builtin("harmbench", templates.HARMBENCH, "yes_no", SAFETY_LABELS, 8),
]}


def get_template(name: str) -> JudgeTemplate:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise UserError(f"unknown judge template '{name}'; choose one of {', '.join(TEMPLATES)}, "
                        "or give template_file: PATH with mode and parser") from None


CUSTOM_EXAMPLE = "{type: llm, model: 'hf:PATH', template_file: classifier_prompt.txt, mode: raw, parser: yes_no}"


def custom_template(template_file: str | Path | None, mode: str, parser: str,
                    labels: Sequence[str] | str | None = None, max_new_tokens: int | None = None) -> JudgeTemplate:
    """A judge template from a user's file (``{prompt}`` and ``{response}`` placeholders; other
    braces stay literal), sent in ``mode`` and read by ``parser`` (a name in ``PARSERS``).
    ``mode: turns`` takes no file: the conversation itself is the request. ``labels`` only
    matters for ``double_bracket`` (default S, CS, D, R)."""
    if mode not in MODES:
        raise UserError(f"judge spec: mode '{mode}' must be one of {', '.join(MODES)}, e.g. {CUSTOM_EXAMPLE}")
    if parser not in PARSERS:
        raise UserError(f"judge spec: parser '{parser}' must be one of {', '.join(PARSERS)}, e.g. {CUSTOM_EXAMPLE}")
    make, default_labels, default_tokens = PARSERS[parser]
    if isinstance(labels, str):
        labels = [part.strip() for part in labels.split(",")]
    label_set = tuple(str(x).strip().upper() for x in labels if str(x).strip()) if labels else default_labels
    tokens = int(max_new_tokens or default_tokens)
    if mode == "turns":
        if template_file:
            raise UserError(f"judge spec: mode turns sends the conversation itself through the guard's chat "
                            f"template; template_file {template_file} would not be used: drop one of the two")
        return JudgeTemplate(f"turns:{parser}", "", make(label_set), label_set, tokens, "turns", parser)
    if not template_file:
        raise UserError(f"judge spec: mode {mode} needs template_file: PATH (a prompt with {{prompt}} and "
                        f"{{response}} placeholders), e.g. {CUSTOM_EXAMPLE}")
    path = Path(template_file).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"judge template_file {path}: cannot read it ({exc.__class__.__name__}); give a UTF-8 "
                        "text file with {prompt} and {response} placeholders") from None
    if "{response}" not in text:
        raise UserError(f"judge template_file {path} has no {{response}} placeholder: write {{response}} where "
                        "the answer to judge goes (and {prompt} where the request goes)")
    return JudgeTemplate(f"file:{path.name}", text, make(label_set), label_set, tokens, mode, parser)


CUSTOM_KEYS = ("template_file", "mode", "parser", "labels")


def spec_template(data: dict[str, Any]) -> JudgeTemplate:
    """The template an llm judge spec names: ``template`` (a built-in), or ``template_file`` +
    ``mode`` + ``parser`` (+ ``labels``) for a user's prompt file; ``mode: turns`` needs no file."""
    if not any(key in data for key in CUSTOM_KEYS):
        return get_template(str(data.get("template", "bias")))
    if "template" in data:
        raise UserError(f"judge spec: give either template ({data['template']}) or template_file / mode / parser, "
                        "not both")
    mode = str(data.get("mode", ""))
    parser = str(data.get("parser", "first_line" if mode == "turns" else ""))
    return custom_template(data.get("template_file"), mode, parser, data.get("labels"), data.get("max_new_tokens"))


# ---- pairwise comparison (``robalign judge pairwise``, module ``pairwise``) ------------------------

PAIRWISE_LABELS = ("A", "B", "TIE")  # reply A is better, reply B is better, neither


def parse_pairwise(text: str) -> str:
    """A, B or TIE from the last ``[[...]]`` of a pairwise judge's reply; else UNPARSED. Strict
    like ``parse_double_bracket``: a last bracket holding anything else (``[[both]]``,
    ``[[A or B]]``) is UNPARSED, and a bare "A" or "Reply B is better" is never read as a choice."""
    return parse_double_bracket(text, PAIRWISE_LABELS)


# Kept apart from TEMPLATES: these templates fill {answer_a} / {answer_b}, which ``judge run``'s
# one-answer requests cannot, so ``llm:<spec>#pairwise`` there fails as an unknown template
# instead of sending the literal placeholders to the judge.
PAIRWISE_TEMPLATES: dict[str, JudgeTemplate] = {t.name: t for t in [
    _builtin("pairwise", templates.PAIRWISE, "double_bracket", PAIRWISE_LABELS, 256),
]}


def get_pairwise_template(name: str) -> JudgeTemplate:
    try:
        return PAIRWISE_TEMPLATES[name]
    except KeyError:
        raise UserError(f"unknown pairwise judge template '{name}'; choose one of {', '.join(PAIRWISE_TEMPLATES)} "
                        "(or leave out #template: pairwise is the default)") from None
