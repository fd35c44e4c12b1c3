"""OpenAI-compatible chat-completions backend (vLLM server, Ollama, DeepSeek, OpenAI, ...).

Async httpx with at most ``concurrency`` requests in flight. A request is retried on
HTTP 408/429/5xx, timeouts, connection errors and malformed JSON, with exponential backoff
and jitter: sleep ~ U[d/2, d], d = min(backoff_max, backoff_base * 2**attempt) (equal
jitter: the wait still grows, but simultaneous retries spread out); a ``Retry-After``
header raises the wait up to ``backoff_max``. Other 4xx fail at once. Every request ends
``answered`` or ``failed`` with its reason (e.g. ``http 429 after 6 attempts``).

The API key is read at call time from the environment variable *named* by ``api_key_env``
(default ``OPENAI_API_KEY``; no header when it is unset, as local servers need none). The key
is never stored on the object, in the cache, in summaries or in error messages.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from robalign.errors import UserError
from robalign.evaluation.backends import (
    DEFAULT_OPENAI_URL,
    FAILED,
    GenerationRequest,
    GenerationResponse,
    OnResponse,
)

RETRY_STATUSES = {408, 429} | set(range(500, 600))


@dataclass
class _Attempt:
    response: GenerationResponse | None = None
    reason: str = ""
    retryable: bool = False
    retry_after: float = 0.0


class OpenAIBackend:
    """``openai:MODEL@BASE_URL``. Options: base_url, api_key_env, concurrency, max_retries,
    timeout (seconds per attempt), backoff_base, backoff_max, price_in / price_out (USD per
    million prompt / completion tokens, for cost accounting), template (a label for the
    server-side chat template, part of the cache key), revision (likewise), extra_body
    (fields merged into every request body), seed (jitter RNG)."""

    def __init__(self, model: str, base_url: str = DEFAULT_OPENAI_URL, api_key_env: str = "OPENAI_API_KEY",
                 concurrency: int = 8, max_retries: int = 5, timeout: float = 60.0, backoff_base: float = 0.5,
                 backoff_max: float = 30.0, price_in: float = 0.0, price_out: float = 0.0,
                 template: str = "server", revision: str = "", extra_body: dict | None = None, seed: int | None = None):
        if not str(base_url).startswith(("http://", "https://")):
            raise UserError(f"openai backend: base_url '{base_url}' must start with http:// or https://")
        if int(concurrency) < 1 or int(max_retries) < 0:
            raise UserError("openai backend: concurrency must be >= 1 and max_retries >= 0")
        self.model, self.base_url = model, str(base_url).rstrip("/")
        self.api_key_env = api_key_env
        self.concurrency, self.max_retries, self.timeout = int(concurrency), int(max_retries), float(timeout)
        self.backoff_base, self.backoff_max = float(backoff_base), float(backoff_max)
        self.price_in, self.price_out = float(price_in), float(price_out)
        self.template, self.revision, self.extra_body = str(template), str(revision), dict(extra_body or {})
        self._rng = random.Random(seed)

    def __repr__(self) -> str:
        return f"OpenAIBackend(model={self.model!r}, base_url={self.base_url!r}, api_key_env={self.api_key_env!r})"

    def identity(self) -> dict[str, str]:
        return {"backend": "openai", "model": self.model, "revision": self.revision,
                "base_url": self.base_url, "template": self.template}

    def generate(self, requests: Sequence[GenerationRequest], on_response: OnResponse | None = None
                 ) -> list[GenerationResponse]:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.agenerate(requests, on_response))
        # called from inside an event loop (a notebook): run ours on a worker thread
        box: dict = {}
        worker = threading.Thread(target=lambda: box.update(r=asyncio.run(self.agenerate(requests, on_response))))
        worker.start()
        worker.join()
        return box["r"]

    async def agenerate(self, requests: Sequence[GenerationRequest], on_response: OnResponse | None = None
                        ) -> list[GenerationResponse]:
        import httpx

        results: list[GenerationResponse | None] = [None] * len(requests)
        gate = asyncio.Semaphore(self.concurrency)
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        async with httpx.AsyncClient(timeout=self.timeout, limits=limits) as client:

            async def one(i: int, request: GenerationRequest) -> None:
                async with gate:
                    response = await self._with_retries(client, request)
                results[i] = response
                if on_response:
                    on_response(i, response)

            await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))
        return results  # type: ignore[return-value]

    def _body(self, request: GenerationRequest) -> dict:
        return {
            "model": self.model,
            "messages": [{"role": m["role"], "content": m["content"]} for m in request.messages],
            "max_tokens": int(request.max_new_tokens),
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

    async def _with_retries(self, client, request: GenerationRequest) -> GenerationResponse:
        body, url = self._body(request), f"{self.base_url}/chat/completions"
        attempt = _Attempt()
        for n in range(self.max_retries + 1):
            attempt = await self._attempt(client, url, body)
            if attempt.response is not None:
                attempt.response.attempts = n + 1
                return attempt.response
            if not attempt.retryable or n == self.max_retries:
                tries = f" after {n + 1} attempts" if n else ""
                return GenerationResponse(status=FAILED, reason=attempt.reason + tries, attempts=n + 1)
            await asyncio.sleep(self.backoff(n, attempt.retry_after))
        raise AssertionError("unreachable")

    async def _attempt(self, client, url: str, body: dict) -> _Attempt:
        import httpx

        try:
            reply = await client.post(url, json=body, headers=self._headers())
        except httpx.TimeoutException:
            return _Attempt(reason=f"timeout ({self.timeout:g}s)", retryable=True)
        except httpx.TransportError as exc:
            return _Attempt(reason=f"connection error ({type(exc).__name__})", retryable=True)
        if reply.status_code != 200:
            detail = "" if reply.status_code in RETRY_STATUSES else f": {reply.text[:200]}"
            if reply.status_code in (401, 403):
                detail = f" (check the API key in ${self.api_key_env})"
            return _Attempt(reason=f"http {reply.status_code}{detail}", retryable=reply.status_code in RETRY_STATUSES,
                            retry_after=_seconds(reply.headers.get("retry-after")))
        return self._parse(reply)

    def _parse(self, reply) -> _Attempt:
        try:
            data = reply.json()
            choice = data["choices"][0]
            text = choice["message"]["content"]
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
            completion_tokens=completion_tokens, cost_usd=cost,
        ))


def _seconds(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value else 0.0
    except ValueError:  # an HTTP date: ignore it and use our own backoff
        return 0.0
