"""A local OpenAI-compatible chat server for tests and offline runs, with fault injection.

Speaks ``POST /v1/chat/completions`` (also ``/chat/completions``), ``POST /v1/completions``
(also ``/completions``: a raw text ``prompt``, answered in ``choices[0].text``), ``GET /v1/models``
and ``GET /stats`` (request counters, not part of the OpenAI API) on 127.0.0.1. Answers come
from a *responder*, called with the chat messages (``[]`` for a completions request, whose
text is ``body["prompt"]``): scripted text (``ScriptedResponder``) or a tiny HF model
(``HFResponder``). Faults are injected at configured rates: HTTP 429 (with
``Retry-After: 0``), HTTP 500, a slow answer (``slow_seconds`` of sleep, meant to exceed the
client's timeout) and malformed JSON (HTTP 200 with a truncated body). The completion
length may come as ``max_tokens`` or ``max_completion_tokens``; ``token_limit_fields``
counts which one each request used. With ``cut_at_limit=True`` a reply longer than that
limit is cut to it and answered with ``finish_reason: length``, as a real server does
(whitespace-split words stand in for tokens, as in the usage block). A query string on the
URL (``/v1/chat/completions?api-version=...``) is ignored.

Fault draws are seeded per request *content*: the n-th arrival of a given body draws from
``Random(f"{seed}:{sha256(body)}:{n}")``, so which requests fail does not depend on the
order in which concurrent requests arrive.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Reply:
    """A responder's answer with its finish reason (a plain ``str`` means ``stop``)."""

    text: str
    finish_reason: str = "stop"


Responder = Callable[[list[dict], dict], "str | Reply"]  # (messages, body) -> reply; messages [] for /completions


def request_text(messages: list[dict], body: dict) -> str:
    """What a responder answers: the last user message, or a completions request's prompt."""
    if not messages and isinstance(body.get("prompt"), str):
        return body["prompt"]
    return next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")

FAULTS = ("429", "500", "slow", "malformed")
# OpenAI's newer models take only max_completion_tokens; most other servers take max_tokens
TOKEN_LIMIT_FIELDS = ("max_completion_tokens", "max_tokens")


def token_limit_field(body: dict) -> str | None:
    """Which completion-length field a request used (the first present), or None."""
    return next((name for name in TOKEN_LIMIT_FIELDS if body.get(name) is not None), None)


class ResponderError(Exception):
    """Raised by a responder to answer with an HTTP error (e.g. 400 for a prompt longer than
    the model's context, as OpenAI-compatible servers do)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Faults:
    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_slow: float = 0.0
    rate_malformed: float = 0.0
    slow_seconds: float = 2.0
    seed: int = 0

    def __post_init__(self):
        rates = [self.rate_429, self.rate_500, self.rate_slow, self.rate_malformed]
        if any(r < 0 for r in rates) or sum(rates) > 1:
            raise ValueError(f"fault rates must be >= 0 and sum to at most 1, got {rates}")

    def draw(self, body: bytes, arrival: int) -> str:
        """'ok' or one of FAULTS for the ``arrival``-th copy of ``body``."""
        u = random.Random(f"{self.seed}:{_digest(body)}:{arrival}").random()
        edge = 0.0
        for name, rate in zip(FAULTS, (self.rate_429, self.rate_500, self.rate_slow, self.rate_malformed)):
            edge += rate
            if u < edge:
                return name
        return "ok"


class ScriptedResponder:
    """Replies from a function, a dict (first key contained in the last user message wins)
    or a list (cycled in arrival order); ``default`` otherwise (``{prompt}`` is filled in)."""

    def __init__(self, replies: Callable[[str], str] | dict[str, str] | list[str] | None = None,
                 default: str = "Scripted reply to: {prompt}"):
        self.replies, self.default = replies, default
        self._next = 0
        self._lock = threading.Lock()

    def __call__(self, messages: list[dict], body: dict) -> str:
        prompt = request_text(messages, body)
        if callable(self.replies):
            return self.replies(prompt)
        if isinstance(self.replies, dict):
            for key, reply in self.replies.items():
                if key in prompt:
                    return reply
        if isinstance(self.replies, list) and self.replies:
            with self._lock:
                reply, self._next = self.replies[self._next % len(self.replies)], self._next + 1
            return reply
        return self.default.replace("{prompt}", prompt[:200])


class HFResponder:
    """Replies by generating with an ``hf`` backend (greedy unless the body asks otherwise); a
    completions request is generated from its raw prompt, with no chat template."""

    def __init__(self, model: str, **options):
        from robalign.evaluation.hf_backend import HFBackend

        self.backend = HFBackend(model, **options)

    def __call__(self, messages: list[dict], body: dict) -> Reply:
        from robalign.evaluation.backends import GenerationRequest

        raw = body["prompt"] if not messages and isinstance(body.get("prompt"), str) else None
        request = GenerationRequest(
            messages=messages, max_new_tokens=int(body.get(token_limit_field(body) or "max_tokens") or 64),
            temperature=float(body.get("temperature") or 0.0), top_p=float(body.get("top_p") or 1.0),
            seed=int(body.get("seed") or 0), raw_prompt=raw,
        )
        response = self.backend.generate([request])[0]
        if not response.ok:
            raise ResponderError(400, response.reason)
        return Reply(response.text, response.finish_reason or "stop")


class LocalOpenAIServer:
    """``with LocalOpenAIServer(responder, Faults(...)) as server: ... server.base_url``."""

    def __init__(self, responder: Responder | None = None, faults: Faults | None = None, host: str = "127.0.0.1",
                 port: int = 0, model_name: str = "local-model", cut_at_limit: bool = False):
        self.responder = responder or ScriptedResponder()
        self.faults = faults or Faults()
        self.model_name, self.cut_at_limit = model_name, cut_at_limit
        # "chat" / "completions" = requests received per route; one count per outcome (ok, 429, ...);
        # in_flight, max_in_flight
        self.counts: Counter[str] = Counter()
        self.authorizations: Counter[str] = Counter()  # Authorization header values seen (tests)
        self.token_limit_fields: Counter[str] = Counter()  # max_tokens / max_completion_tokens / none
        self._arrivals: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._httpd = _Server((host, port), _make_handler(self))
        self._httpd.daemon_threads = True  # a slow-fault thread must not block shutdown
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://{self._httpd.server_address[0]}:{self.port}/v1"

    @property
    def chat_requests(self) -> int:
        with self._lock:
            return self.counts["chat"]

    @property
    def completion_requests(self) -> int:
        with self._lock:
            return self.counts["completions"]

    def start(self) -> LocalOpenAIServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> LocalOpenAIServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def stats(self) -> dict:
        with self._lock:
            return dict(self.counts)

    def handle_chat(self, raw: bytes, authorization: str | None, route: str = "chat") -> tuple[int, dict, bytes]:
        """(status, headers, body) for one request to ``route`` (``chat`` or ``completions``);
        records counts and peak concurrency."""
        with self._lock:
            self.counts["in_flight"] += 1
            self.counts["max_in_flight"] = max(self.counts["max_in_flight"], self.counts["in_flight"])
        try:
            return self._chat(raw, authorization, route)
        finally:
            with self._lock:
                self.counts["in_flight"] -= 1

    def _chat(self, raw: bytes, authorization: str | None, route: str) -> tuple[int, dict, bytes]:
        with self._lock:
            self.counts[route] += 1
            if authorization:
                self.authorizations[authorization] += 1
            digest = _digest(raw)  # counted by digest: memory stays small on long runs
            arrival = self._arrivals[digest]
            self._arrivals[digest] += 1
        fault = self.faults.draw(raw, arrival)
        with self._lock:
            self.counts[fault] += 1
        if fault == "429":
            return 429, {"Retry-After": "0"}, _json({"error": {"message": "rate limited (injected)"}})
        if fault == "500":
            return 500, {}, _json({"error": {"message": "server error (injected)"}})
        try:
            body = json.loads(raw)
            if route == "completions":
                messages = []
                if not isinstance(body["prompt"], str):
                    raise ValueError("prompt must be a string")
            else:
                messages = body["messages"]
            if not isinstance(messages, list) or not all(isinstance(m, dict) and "content" in m for m in messages):
                raise ValueError("messages must be a list of {role, content}")
        except (ValueError, KeyError, TypeError) as exc:
            return 400, {}, _json({"error": {"message": f"bad request: {exc}"}})
        with self._lock:
            self.token_limit_fields[token_limit_field(body) or "none"] += 1
        if fault == "slow":
            time.sleep(self.faults.slow_seconds)
        try:
            reply = self.responder(messages, body)
        except ResponderError as exc:
            with self._lock:
                self.counts[f"error {exc.status}"] += 1
            return exc.status, {}, _json({"error": {"message": str(exc)}})
        reply = reply if isinstance(reply, Reply) else Reply(reply)
        if self.cut_at_limit:
            reply = cut_to_limit(reply, body.get(token_limit_field(body) or "max_tokens"))
        payload = _completion(body.get("model") or self.model_name, reply, messages, body.get("prompt")
                              if route == "completions" else None)
        if fault == "malformed":
            return 200, {}, payload[: len(payload) // 2]
        return 200, {}, payload


class _Server(ThreadingHTTPServer):
    # socketserver's default listen backlog is 5: a client with 16 requests in flight saw
    # connections reset (ReadError) before a thread could accept them
    request_queue_size = 128


def _digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _json(obj) -> bytes:
    return json.dumps(obj).encode()


def cut_to_limit(reply: Reply, limit) -> Reply:
    """``reply`` cut to its first ``limit`` words, with finish_reason ``length``, if it is longer."""
    words = reply.text.split()
    if limit is None or len(words) <= int(limit):
        return reply
    return Reply(" ".join(words[: int(limit)]), "length")


def _completion(model: str, reply: Reply, messages: list[dict], prompt: str | None = None) -> bytes:
    """A chat.completion body, or a text_completion body when ``prompt`` (a /completions request) is given."""
    # whitespace-split word counts stand in for token counts in the usage block
    text = reply.text
    prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages) + len((prompt or "").split())
    if prompt is not None:
        choice = {"index": 0, "text": text, "finish_reason": reply.finish_reason}
    else:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reply.finish_reason}
    return _json({
        "id": ("cmpl-" if prompt is not None else "chatcmpl-") + hashlib.sha256(text.encode()).hexdigest()[:12],
        "object": "text_completion" if prompt is not None else "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(text.split()),
                  "total_tokens": prompt_tokens + len(text.split())},
    })


ROUTES = {"/v1/chat/completions": "chat", "/chat/completions": "chat", "/v1/completions": "completions",
          "/completions": "completions"}


def _make_handler(server: LocalOpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real API servers do

        def log_message(self, format, *args):  # noqa: A002 - quiet: tests read counters instead
            pass

        def _send(self, status: int, headers: dict, body: bytes) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (e.g. timed out on a slow fault)

        def do_GET(self):
            path = urlsplit(self.path).path.rstrip("/")
            if path in ("/v1/models", "/models"):
                self._send(200, {}, _json({"object": "list", "data": [{"id": server.model_name, "object": "model"}]}))
            elif path == "/stats":
                self._send(200, {}, _json(server.stats()))
            else:
                self._send(404, {}, _json({"error": {"message": f"no route {urlsplit(self.path).path}"}}))

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            route = ROUTES.get(urlsplit(self.path).path.rstrip("/"))
            if route is None:
                self._send(404, {}, _json({"error": {"message": f"no route {urlsplit(self.path).path}"}}))
                return
            self._send(*server.handle_chat(raw, self.headers.get("Authorization"), route))

    return Handler
