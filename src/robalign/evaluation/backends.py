"""Generation backends behind one small protocol, and the model spec strings that name them.

A backend turns ``GenerationRequest`` objects (chat messages + decoding parameters) into
``GenerationResponse`` objects, one per request and in the same order. A request with
``raw_prompt`` set is a plain text completion instead (no chat template): every backend
supports it (hf and vllm tokenise the text as is, openai uses ``/v1/completions``). Three backends ship:

| spec                                   | backend                 | module           |
|----------------------------------------|-------------------------|------------------|
| ``hf:PATH_OR_HUB_ID[@revision]``       | transformers, batched   | ``hf_backend``     |
| ``openai:MODEL[@BASE_URL]``            | OpenAI-compatible HTTP  | ``openai_backend`` |
| ``vllm:PATH_OR_HUB_ID``                | vLLM offline engine     | ``vllm_backend``   |

A spec can also be a mapping (or a YAML/JSON string of one) with ``backend`` and ``model``
plus backend options, e.g.
``{backend: openai, model: deepseek-chat, base_url: https://api.deepseek.com, api_key_env: DEEPSEEK_API_KEY}``.
A spec names the environment variable that holds an API key, never the key: ``api_key`` (or
any other secret-named option, ``specs.SECRET_OPTIONS``) is refused with an error that
does not repeat the value, and every URL a spec label shows is redacted (``specs.redact_url``).
Backend modules are imported only when a spec names them, so ``vllm`` (GPU-only) and
``torch`` are never loaded for an HTTP run.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from robalign.errors import UserError
from robalign.evaluation.labels import STATUS_ANSWERED
from robalign.evaluation.specs import load_spec, redact_url, redact_urls, reject_secrets


class BackendUnavailable(UserError):
    """A backend that cannot run here, found before any request is sent (e.g. a remote API
    whose key variable is unset). ``judge select`` skips such a candidate and says why."""


@dataclass
class GenerationRequest:
    """One completion to produce: a chat (``messages``, formatted by the model's chat template)
    or, with ``raw_prompt`` set, exactly that text (no chat template; ``messages`` is ignored).
    ``id`` is the caller's handle and is not part of the cache key."""

    messages: list[dict[str, str]]  # [{"role": "user", "content": "..."}, ...]
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0
    sample_index: int = 0  # k-th independent sample of the same prompt (k-sample judges, pass@k)
    id: str | None = None
    # The judge template version that wrote this request (``bias@1a2b3c4d``; "" for plain
    # generation). In the cache key only when set, so keys of requests without it never change.
    template: str = ""
    # Raw-prompt mode (guard classifiers trained on one exact prompt, e.g. HarmBench's): hf and
    # vllm tokenise this text as is, the openai backend POSTs it to /v1/completions. In the cache key when set.
    raw_prompt: str | None = None

    def decoding(self) -> dict[str, Any]:
        """The parameters that change the output (part of the cache key)."""
        return {
            "max_new_tokens": int(self.max_new_tokens),
            "temperature": float(self.temperature),
            "top_p": float(self.top_p),
            "seed": int(self.seed),
        }


@dataclass
class GenerationResponse:
    text: str = ""
    status: str = STATUS_ANSWERED  # labels.STATUS_ANSWERED | labels.STATUS_FAILED
    reason: str = ""  # why it failed; empty when answered
    finish_reason: str = ""  # stop | length | whatever the server said
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    attempts: int = 1
    cached: bool = False
    served_model: str = ""  # the model the server says answered (an alias can move); empty if unknown

    @property
    def ok(self) -> bool:
        return self.status == STATUS_ANSWERED

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


OnResponse = Callable[[int, GenerationResponse], None]


class Backend(Protocol):
    """What every backend provides. ``on_response(i, response)`` is called as soon as the
    answer to ``requests[i]`` exists, so a caller can persist it before the run ends."""

    def identity(self) -> dict[str, str]:
        """Model id, revision, base URL and chat-template hash: the model part of the cache key.
        Must be cheap (no weight loading), so a fully cached run never loads the model."""
        ...

    def generate(
        self, requests: Sequence[GenerationRequest], on_response: OnResponse | None = None
    ) -> list[GenerationResponse]: ...


# backend name -> "module:Class"; imported on first use
BACKENDS: dict[str, str] = {
    "hf": "robalign.evaluation.hf_backend:HFBackend",
    "openai": "robalign.evaluation.openai_backend:OpenAIBackend",
    "vllm": "robalign.evaluation.vllm_backend:VLLMBackend",
}

DEFAULT_OPENAI_URL = "https://api.openai.com/v1"
_OPENAI_SPEC = re.compile(r"^(?P<model>[^@]+?)(?:@(?P<url>https?://\S+))?$")


@dataclass
class ModelSpec:
    backend: str
    model: str
    options: dict[str, Any] = field(default_factory=dict)  # revision, base_url, batch_size, ...

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "model": self.model, **self.options}


SPEC_HELP = (
    "use hf:PATH_OR_HUB_ID[@revision], openai:MODEL[@BASE_URL] (e.g. "
    "openai:deepseek-chat@https://api.deepseek.com), vllm:PATH, or a mapping "
    "{backend: ..., model: ..., <options>}"
)


MAPPING_EXAMPLE = "{backend: openai, model: NAME, base_url: 'https://host/v1', api_key_env: KEY_VARIABLE}"


def parse_model_spec(spec: str | dict | ModelSpec) -> ModelSpec:
    """``"hf:runs/tiny/model"`` / ``"openai:m@http://host/v1"`` / a mapping -> ModelSpec."""
    if isinstance(spec, ModelSpec):
        return spec
    spec = load_spec(spec, "model spec", MAPPING_EXAMPLE)
    if isinstance(spec, dict):
        return _spec_from_mapping(spec)
    if not isinstance(spec, str) or ":" not in spec:
        shown = repr(redact_urls(spec)) if isinstance(spec, str) else f"of type {type(spec).__name__}"
        raise UserError(f"model spec {shown} has no backend prefix; {SPEC_HELP}")
    shown = repr(redact_urls(spec))  # errors below show the spec, never a key in its URL
    backend, rest = spec.split(":", 1)
    backend = backend.strip().lower()
    if backend not in BACKENDS:
        raise UserError(f"model spec {shown}: unknown backend '{backend}'; {SPEC_HELP}")
    if not rest:
        raise UserError(f"model spec {shown} names no model; {SPEC_HELP}")
    if backend == "openai":
        match = _OPENAI_SPEC.match(rest)
        if not match:
            raise UserError(f"model spec {shown}: expected openai:MODEL@http(s)://BASE_URL")
        return ModelSpec("openai", match["model"], {"base_url": match["url"] or DEFAULT_OPENAI_URL})
    return ModelSpec(backend, *_split_revision(rest))


def _split_revision(rest: str) -> tuple[str, dict[str, Any]]:
    # "org/name@v1.0" pins a hub revision; a local path containing "@" is left whole.
    from pathlib import Path

    if "@" in rest and not Path(rest).expanduser().exists():
        model, revision = rest.rsplit("@", 1)
        return model, {"revision": revision}
    return rest, {}


def _spec_from_mapping(data: dict) -> ModelSpec:
    reject_secrets(data, "model spec")
    data = dict(data)
    backend = str(data.pop("backend", "")).lower()
    model = data.pop("model", None)
    if backend not in BACKENDS or not model:
        # key names only: a value could be a secret
        raise UserError(f"model spec mapping with keys {sorted(map(str, data))} needs 'backend' "
                        f"(one of {', '.join(BACKENDS)}) and 'model', e.g. {MAPPING_EXAMPLE}")
    if backend == "openai":
        data.setdefault("base_url", DEFAULT_OPENAI_URL)
    return ModelSpec(backend, str(model), data)


def build_backend(spec: str | dict | ModelSpec, **overrides: Any) -> Backend:
    """Instantiate the backend a spec names; ``overrides`` replace spec options (e.g. batch_size)."""
    parsed = parse_model_spec(spec)
    reject_secrets(overrides, "backend option (-o)")
    module_name, class_name = BACKENDS[parsed.backend].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    options = {**parsed.options, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return cls(parsed.model, **options)
    except TypeError as exc:  # the message names the option, never its value
        raise UserError(f"model spec {spec_label(parsed)}: bad option for the {parsed.backend} backend ({exc}); "
                        f"given options: {', '.join(sorted(map(str, options))) or 'none'}") from None


def spec_label(spec: str | dict | ModelSpec) -> str:
    """A short human-readable name for a spec (logs, run summaries). Holds no secret: specs
    carry only the *name* of the API-key variable, and the URL is redacted."""
    parsed = parse_model_spec(spec)
    url = parsed.options.get("base_url")
    return f"{parsed.backend}:{parsed.model}" + (f"@{redact_url(url)}" if url else "")
