"""OpenAI-compatible chat-completions backend (vLLM server, Ollama, DeepSeek, OpenAI, ...).

Chat requests go to ``/chat/completions``; a raw-prompt request (``GenerationRequest.raw_prompt``)
goes to ``/completions`` with ``prompt`` (the completions API: the server applies no chat
template) and its answer is read from ``choices[0].text``.

Async httpx with at most ``concurrency`` requests in flight. A request is retried on
HTTP 408/429/5xx, timeouts, connection errors (until the circuit breaker below opens) and
malformed JSON, with exponential backoff and jitter: sleep ~ U[d/2, d],
d = min(backoff_max, backoff_base * 2**attempt) (equal jitter: the wait still grows, but
simultaneous retries spread out); a ``Retry-After`` header raises the wait up to ``backoff_max``. Other 4xx fail at once. Every request ends
``answered`` or ``failed`` with its reason (e.g. ``http 429 after 6 attempts``).

Circuit breaker: connection-level failures (DNS failure, connection refused, unreachable
network: httpx ``ConnectError``) mean no server is there to retry against. After
``unreachable_after`` of them in a row on one backend (any HTTP reply resets the count),
every request still open in that ``generate`` call fails at once with
``unreachable: <detail>`` instead of sleeping through its backoff. 429, 5xx and timeouts of
a live server never trip it. Failures are not cached, so a later run tries again.

The API key is read at call time from the environment variable *named* by ``api_key_env``
(default ``OPENAI_API_KEY``). A loopback server (localhost, 127.0.0.0/8, ::1) gets no header
when the variable is unset, as local servers need none. A remote server with the variable
unset fails before anything is sent (``BackendUnavailable``); ``api_key_env: ""`` declares a
remote server that needs no key. The key is never stored on the object, in the cache, in
summaries or in error messages. A key written into ``base_url`` (user info or query) is sent
with the requests but redacted from everything shown or stored (``specs.redact_url``), and
any of these secrets a server echoes in an error body is masked before it becomes a reason.

Cache identity: model, revision, the redacted base URL, template and ``extra_body`` (its
fields, e.g. top_k, stop or reasoning options, change answers). ``model`` is an alias the
provider may point at a new model without changing its name, so cached answers can come
from an older model; ``revision`` pins one (e.g. ``revision: 2024-08-06``): a new revision
is a new cache key. The model name each server reply reports is counted in the run summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit

from robalign.errors import UserError
from robalign.evaluation.backends import (
    DEFAULT_OPENAI_URL,
    BackendUnavailable,
    GenerationRequest,
    GenerationResponse,
    OnResponse,
)
from robalign.evaluation.labels import STATUS_FAILED
from robalign.evaluation.specs import REDACTED, redact_url

RETRY_STATUSES = {408, 429} | set(range(500, 600))
MAX_TOKENS_FIELDS = ("max_tokens", "max_completion_tokens")


@dataclass
class _Attempt:
    response: GenerationResponse | None = None
    reason: str = ""
    retryable: bool = False
    retry_after: float = 0.0
    unreachable: str = ""  # detail of a connection-level failure (no server answered)


class CircuitBreaker:
    """Opens after ``threshold`` consecutive connection-level failures (0 = never); any
    attempt that reached a server resets the count. One per ``agenerate`` call."""

    def __init__(self, threshold: int):
        self.threshold, self.consecutive, self.reason = threshold, 0, ""
        self.opened = asyncio.Event()

    @property
    def is_open(self) -> bool:
        return self.opened.is_set()

    def record(self, attempt: _Attempt) -> None:
        if not attempt.unreachable:
            self.consecutive = 0
            return
        self.consecutive += 1
        if self.threshold and self.consecutive >= self.threshold and not self.is_open:
            self.reason = f"unreachable: {attempt.unreachable}"
            self.opened.set()

    async def pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if the breaker opens meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.opened.wait(), seconds)


class OpenAIBackend:
    """``openai:MODEL@BASE_URL``. Options: base_url, api_key_env ("" or null: no key, also
    for a remote server), concurrency, max_retries, timeout (seconds per attempt),
    backoff_base, backoff_max, unreachable_after (consecutive connection failures that open
    the circuit breaker; 0 = never), max_tokens_field (``max_tokens``, or
    ``max_completion_tokens`` for OpenAI models that reject ``max_tokens``), price_in /
    price_out (USD per million prompt / completion tokens, for cost accounting), template (a
    label for the server-side chat template, part of the cache key), revision (pins the
    model behind the alias ``model``; part of the cache key), extra_body (fields merged into
    every request body; part of the cache key), seed (jitter RNG)."""

    def __init__(self, model: str, base_url: str = DEFAULT_OPENAI_URL, api_key_env: str | None = "OPENAI_API_KEY",
                 concurrency: int = 8, max_retries: int = 5, timeout: float = 60.0, backoff_base: float = 0.5,
                 backoff_max: float = 30.0, unreachable_after: int = 5, max_tokens_field: str = "max_tokens",
                 price_in: float = 0.0, price_out: float = 0.0, template: str = "server", revision: str = "",
                 extra_body: dict | None = None, seed: int | None = None):
        if not str(base_url).startswith(("http://", "https://")):
            raise UserError(f"openai backend: base_url '{redact_url(base_url)}' must start with http:// or https://")
        if int(concurrency) < 1 or int(max_retries) < 0 or int(unreachable_after) < 0:
            raise UserError("openai backend: concurrency must be >= 1, max_retries and unreachable_after >= 0")
        if max_tokens_field not in MAX_TOKENS_FIELDS:
            raise UserError(f"openai backend: max_tokens_field '{max_tokens_field}' must be one of "
                            f"{', '.join(MAX_TOKENS_FIELDS)} (newer OpenAI models want max_completion_tokens)")
        self.model, self.base_url = model, str(base_url).rstrip("/")
        self.display_url = redact_url(self.base_url)  # what messages, identity and repr show
        self.api_key_env = api_key_env or ""
        self.unreachable_after, self.max_tokens_field = int(unreachable_after), max_tokens_field
        self.concurrency, self.max_retries, self.timeout = int(concurrency), int(max_retries), float(timeout)
        self.backoff_base, self.backoff_max = float(backoff_base), float(backoff_max)
        self.price_in, self.price_out = float(price_in), float(price_out)
        self.template, self.revision, self.extra_body = str(template), str(revision), dict(extra_body or {})
        self._rng = random.Random(seed)

    def __repr__(self) -> str:
        return f"OpenAIBackend(model={self.model!r}, base_url={self.display_url!r}, api_key_env={self.api_key_env!r})"

    def identity(self) -> dict[str, str]:
        return {"backend": "openai", "model": self.model, "revision": self.revision,
                "base_url": self.display_url, "template": self.template,
                "extra_body": json.dumps(self.extra_body, sort_keys=True, ensure_ascii=False, default=str)}

    def endpoint(self, route: str = "chat/completions") -> str:
        """``base_url`` + ``/route``, its query string (if any) kept after the new path."""
        parts = urlsplit(self.base_url)
        return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/" + route))

    def _secrets(self) -> list[str]:
        """Every secret this backend sends, longest first: the key, and URL user info and query."""
        parts = urlsplit(self.base_url)
        found = [os.environ.get(self.api_key_env, "") if self.api_key_env else "",
                 parts.username or "", parts.password or "", parts.query]
        found += [value for pair in parts.query.split("&") for value in pair.split("=")[1:]]
        found += [unquote(value) for value in found]
        return sorted({f for f in found if len(f) >= 4}, key=len, reverse=True)  # 4: skip "1", "v1"-like noise

    def mask(self, text: str) -> str:
        """``text`` from a server with every secret of ours replaced by ***."""
        for secret in self._secrets():
            text = text.replace(secret, REDACTED)
        return text

    def is_loopback(self) -> bool:
        host = urlsplit(self.base_url).hostname or ""
        if host == "localhost" or host.endswith(".localhost"):
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def missing_key(self) -> str | None:
        """Why this backend cannot be used here, or None: a remote server whose key variable is unset."""
        if not self.api_key_env or os.environ.get(self.api_key_env) or self.is_loopback():
            return None
        return (f"${self.api_key_env} is not set, and {self.display_url} is a remote server that needs an API "
                f"key; nothing was sent. Export {self.api_key_env}=<your key>, or set api_key_env: '' in "
                "the model spec if this server needs no key")

    def generate(self, requests: Sequence[GenerationRequest], on_response: OnResponse | None = None
                 ) -> list[GenerationResponse]:
        self._require_key()
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.agenerate(requests, on_response))
        # called from inside an event loop (a notebook): run ours on a worker thread
        box: dict = {}

        def work() -> None:
            try:
                box["r"] = asyncio.run(self.agenerate(requests, on_response))
            except BaseException as exc:  # re-raised in the caller's thread
                box["error"] = exc

        worker = threading.Thread(target=work)
        worker.start()
        worker.join()
        if "error" in box:
            raise box["error"]
        return box["r"]

    def _require_key(self) -> None:
        reason = self.missing_key()
        if reason:
            raise BackendUnavailable(f"openai backend {self.model}@{self.display_url}: {reason}")

    async def agenerate(self, requests: Sequence[GenerationRequest], on_response: OnResponse | None = None
                        ) -> list[GenerationResponse]:
        import httpx

        self._require_key()
        results: list[GenerationResponse | None] = [None] * len(requests)
        gate = asyncio.Semaphore(self.concurrency)
        breaker = CircuitBreaker(self.unreachable_after)
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        async with httpx.AsyncClient(timeout=self.timeout, limits=limits) as client:

            async def one(i: int, request: GenerationRequest) -> None:
                async with gate:
                    response = await self._with_retries(client, request, breaker)
                results[i] = response
                if on_response:
                    on_response(i, response)

            await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))
        return results  # type: ignore[return-value]

    def _body(self, request: GenerationRequest) -> dict:
        if request.raw_prompt is not None:  # the completions API: text in, text out, no chat template
            # (max_completion_tokens exists only in the chat API)
            head = {"model": self.model, "prompt": request.raw_prompt, "max_tokens": int(request.max_new_tokens)}
        else:
            head = {"model": self.model,
                    "messages": [{"role": m["role"], "content": m["content"]} for m in request.messages],
                    self.max_tokens_field: int(request.max_new_tokens)}
        return {
            **head,
            "temperature": float(request.temperature),
            "top_p": float(request.top_p),
            # distinct samples of one prompt need distinct seeds where the server honours seeds
            "seed": int(request.seed) + int(request.sample_index),
            **self.extra_body,
        }

    def _headers(self) -> dict[str, str]:
        key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        return {"Authorization": f"Bearer {key}"} if key else {}

    def backoff(self, attempt: int, retry_after: float = 0.0) -> float:
        ceiling = min(self.backoff_max, self.backoff_base * 2**attempt)
        wait = ceiling / 2 + self._rng.uniform(0, ceiling / 2)
        return max(wait, min(retry_after, self.backoff_max))

    async def _with_retries(self, client, request: GenerationRequest, breaker: CircuitBreaker) -> GenerationResponse:
        raw = request.raw_prompt is not None
        body, url = self._body(request), self.endpoint("completions" if raw else "chat/completions")
        for n in range(self.max_retries + 1):
            if breaker.is_open:
                return GenerationResponse(status=STATUS_FAILED, reason=breaker.reason, attempts=n)
            attempt = await self._attempt(client, url, body, raw)
            breaker.record(attempt)
            if attempt.response is not None:
                attempt.response.attempts = n + 1
                return attempt.response
            if breaker.is_open:
                return GenerationResponse(status=STATUS_FAILED, reason=breaker.reason, attempts=n + 1)
            if not attempt.retryable or n == self.max_retries:
                tries = f" after {n + 1} attempts" if n else ""
                return GenerationResponse(status=STATUS_FAILED, reason=attempt.reason + tries, attempts=n + 1)
            await breaker.pause(self.backoff(n, attempt.retry_after))
        raise AssertionError("the loop returns on its last attempt")

    async def _attempt(self, client, url: str, body: dict, raw: bool = False) -> _Attempt:
        import httpx

        try:
            reply = await client.post(url, json=body, headers=self._headers())
        except httpx.TimeoutException:  # ConnectTimeout included: a slow accept can be a live, busy server
            return _Attempt(reason=f"timeout ({self.timeout:g}s)", retryable=True)
        except httpx.ConnectError as exc:  # DNS failure, refused, unreachable network, TLS handshake
            where = urlsplit(url).netloc.rsplit("@", 1)[-1]  # host:port, never the user info
            return _Attempt(reason="connection error (ConnectError)", retryable=True,
                            unreachable=self.mask(f"cannot connect to {where} ({_os_error(exc)})"))
        except httpx.TransportError as exc:
            return _Attempt(reason=f"connection error ({type(exc).__name__})", retryable=True)
        if reply.status_code != 200:
            detail = "" if reply.status_code in RETRY_STATUSES else f": {self.mask(reply.text)[:200]}"
            if reply.status_code in (401, 403):
                detail = f" (check the API key in ${self.api_key_env})"
            return _Attempt(reason=f"http {reply.status_code}{detail}", retryable=reply.status_code in RETRY_STATUSES,
                            retry_after=_seconds(reply.headers.get("retry-after")))
        return self._parse(reply, raw)

    def _parse(self, reply, raw: bool = False) -> _Attempt:
        try:
            data = reply.json()
            choice = data["choices"][0]
            text = choice["text"] if raw else choice["message"]["content"]
            usage = data.get("usage") or {}
            prompt_tokens = int(usage.get("prompt_tokens") or 0)
            completion_tokens = int(usage.get("completion_tokens") or 0)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            return _Attempt(reason="malformed JSON response", retryable=True)
        if not isinstance(text, str):  # e.g. a tool call or a refusal object instead of content
            return _Attempt(reason="response has no message content")
        cost = (prompt_tokens * self.price_in + completion_tokens * self.price_out) / 1e6
        return _Attempt(response=GenerationResponse(
            text=text, finish_reason=str(choice.get("finish_reason") or ""), prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens, cost_usd=cost, served_model=str(data.get("model") or "")[:100],
        ))


def _os_error(exc: BaseException) -> str:
    """The root OS error under httpx's wrapper, e.g. 'Connection refused' or 'Name or service
    not known' (httpx itself may only say 'All connection attempts failed')."""
    root, cause = None, exc
    for _ in range(8):  # the chain is httpx -> httpcore -> OSError -> socket error
        if cause is None:
            break
        if isinstance(cause, OSError) and cause.errno is not None:
            root = cause
        cause = cause.__cause__ or cause.__context__
    if root is None:
        return str(exc) or type(exc).__name__
    # getaddrinfo errors have negative codes that os.strerror does not know
    return os.strerror(root.errno) if root.errno > 0 else str(root.strerror)


def _seconds(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value else 0.0
    except ValueError:  # an HTTP date: ignore it and use our own backoff
        return 0.0
