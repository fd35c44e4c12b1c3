"""Conversation formats: how a prompt becomes the text a response follows.

Training, the safety probe, reward scoring and generation must render a prompt the same way,
or the model is trained on one layout and evaluated on another. A tokenizer's own chat
template is used when it has one; a base model without one gets an explicit transcript
format instead of the prompt and response glued together (``"How do I...?Sure, ..."``).

| name            | prompt rendering                                        | response follows with |
|-----------------|---------------------------------------------------------|-----------------------|
| ``auto``        | ``chat_template`` when the tokenizer has one, else ``hh`` |                     |
| ``chat_template`` | ``tokenizer.apply_chat_template(..., add_generation_prompt=True)`` | nothing  |
| ``hh``          | ``"\\n\\nHuman: {user}\\n\\nAssistant:"`` (Anthropic HH-RLHF)  | one space       |
| ``safe_rlhf``   | ``"BEGINNING OF CONVERSATION: USER: {user} ASSISTANT:"`` (PKU safe-rlhf) | nothing |
| ``plain``       | the user text as it is (completion-style base models)   | one newline           |

Multi-turn prompts render every turn; earlier assistant turns are written in full. A system
message goes first, as plain text, in the transcript formats.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from robalign.errors import UserError


@dataclass(frozen=True)
class TranscriptFormat:
    """A chat transcript without a tokenizer template: each turn is ``role_prefix + content``."""

    name: str
    begin: str  # text before the first turn
    user: str  # prefix of a user turn
    assistant: str  # prefix of an assistant turn; a prompt ends with it
    response_prefix: str  # put before the response text (HH responses start after "Assistant:" with a space)
    system: str = "{content}\n\n"
    turn_end: str = ""  # after an earlier assistant turn; "{eos}" = the tokenizer's EOS token (safe-rlhf)


TRANSCRIPTS: dict[str, TranscriptFormat] = {
    "hh": TranscriptFormat("hh", begin="", user="\n\nHuman: ", assistant="\n\nAssistant:", response_prefix=" "),
    # safe-rlhf's constants: PROMPT_BEGIN + "USER: {input} " + "ASSISTANT:", response appended directly
    "safe_rlhf": TranscriptFormat("safe_rlhf", begin="BEGINNING OF CONVERSATION: ", user="USER: ",
                                  assistant=" ASSISTANT:", response_prefix="", turn_end="{eos}"),
    "plain": TranscriptFormat("plain", begin="", user="", assistant="", response_prefix="\n", system="{content}\n"),
}
FORMAT_NAMES = ("auto", "chat_template", *TRANSCRIPTS)


class RenderedPrompt(NamedTuple):
    text: str  # the prompt, ready for the response to follow
    format: str  # the format actually used (auto resolved)
    response_prefix: str  # prepend to the response text before tokenizing it

    @property
    def templated(self) -> bool:
        """True when the tokenizer's chat template wrote the special tokens (no BOS to add)."""
        return self.format == "chat_template"


def resolve_format(name: str | bool, tokenizer) -> str:
    """``auto`` -> ``chat_template`` or ``hh``; ``True`` / ``False`` are the old ``chat_template`` flag."""
    if name is True:
        name = "auto"
    elif name is False:
        name = "hh"
    if name not in FORMAT_NAMES:
        raise UserError(f"unknown prompt format '{name}'; use one of {', '.join(FORMAT_NAMES)} "
                        "(data.prompt_format / --prompt-format)")
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if name == "auto":
        return "chat_template" if has_template else "hh"
    if name == "chat_template" and not has_template:
        raise UserError("prompt format 'chat_template' but the tokenizer has no chat template; "
                        "use data.prompt_format=hh (or safe_rlhf / plain)")
    return name


def _messages(prompt: str | list[dict]) -> list[dict]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def render_transcript(messages: list[dict], fmt: TranscriptFormat, eos_token: str = "") -> str:
    parts = [fmt.begin]
    for m in messages:
        role, content = m["role"], m["content"]
        if role == "system":
            parts.append(fmt.system.format(content=content))
        elif role == "assistant":
            parts.append(f"{fmt.assistant}{fmt.response_prefix}{content}{fmt.turn_end.format(eos=eos_token)}")
        else:
            parts.append(f"{fmt.user}{content}")
    return "".join(parts) + fmt.assistant


def render_prompt(prompt: str | list[dict], tokenizer, prompt_format: str | bool = "auto") -> RenderedPrompt:
    """A prompt (text or chat messages) rendered for the response to follow."""
    name = resolve_format(prompt_format, tokenizer)
    messages = _messages(prompt)
    if name == "chat_template":
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return RenderedPrompt(text, name, "")
    fmt = TRANSCRIPTS[name]
    text = render_transcript(messages, fmt, getattr(tokenizer, "eos_token", None) or "")
    return RenderedPrompt(text, name, fmt.response_prefix)


def render_pair_text(prompt: str | list[dict], response: str, tokenizer, prompt_format: str | bool = "auto") -> str:
    """Prompt and response as one string, as the probe and reward scoring read them."""
    rendered = render_prompt(prompt, tokenizer, prompt_format)
    return rendered.text + rendered.response_prefix + response
