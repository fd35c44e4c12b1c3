"""SQLite response cache and the caching wrapper every generation goes through.

Key = sha256 over (backend identity: model id, revision, redacted base URL, chat-template
hash, and whatever else of the backend changes an answer: ``extra_body`` for HTTP, dtype and
device for local weights; messages; decoding parameters; sample index; and, only when set, the
judge template version and the raw prompt). A re-run of the same requests against the
same model makes no backend calls. Only *answered* responses are stored, so failures are
retried on the next run.

Durability: each answer is committed as it arrives (``on_response``), in WAL mode with
``synchronous=NORMAL``: a committed row survives a crash of the process (an OS crash may
lose the last transactions, see https://www.sqlite.org/wal.html). One connection is shared
under a lock, so threads and async tasks of one process can write concurrently; other
processes can use the same file (WAL readers never block the writer; writers wait up to
``busy_timeout``).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from robalign.evaluation.backends import Backend, GenerationRequest, GenerationResponse, OnResponse
from robalign.evaluation.labels import STATUS_ANSWERED, STATUS_FAILED
from robalign.paths import cache_dir
from robalign.sqlite_wal import switch_to_wal

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,          -- JSON of the backend identity
    request TEXT NOT NULL,        -- JSON of messages, decoding parameters and sample index
    text TEXT NOT NULL,
    finish_reason TEXT,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    cost_usd REAL,
    created REAL NOT NULL
)
"""


def default_cache_dir() -> Path:
    """``$ROBALIGN_CACHE`` or ``~/.cache/robalign`` (``robalign.paths``)."""
    return cache_dir()


def default_cache_path() -> Path:
    return default_cache_dir() / "generations.sqlite"


# Version of the local backends' (hf, vLLM) per-request random streams: 2 = seeded by
# (seed, sample index, prompt tokens), hf_backend.row_seed. Only sampled requests carry it.
SAMPLER = 2
LOCAL_SAMPLERS = ("hf", "vllm")


def _key_payload(identity: dict[str, str], request: GenerationRequest) -> dict:
    payload = {
        "model": identity,
        "messages": [{"role": m["role"], "content": m["content"]} for m in request.messages],
        "decoding": request.decoding(),
        "sample_index": int(request.sample_index),
    }
    # Added fields enter only when set, so every key cached before they existed stays valid.
    if request.template:
        payload["template"] = str(request.template)
    if request.raw_prompt is not None:
        payload["raw_prompt"] = str(request.raw_prompt)
    # sampled answers cached before the local samplers were seeded per prompt are stale; a remote
    # provider's sampling never changed, and its paid answers stay valid
    if request.temperature > 0 and identity.get("backend") in LOCAL_SAMPLERS:
        payload["sampler"] = SAMPLER
    return payload


def cache_key(identity: dict[str, str], request: GenerationRequest) -> str:
    blob = json.dumps(_key_payload(identity, request), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResponseCache:
    """Answered responses by key, in one SQLite file (WAL)."""

    def __init__(self, path: str | Path | None = None, busy_timeout_s: float = 30.0):
        self.path = Path(path) if path else default_cache_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: autocommit, every INSERT is its own durable transaction.
        self._conn = sqlite3.connect(
            self.path, timeout=busy_timeout_s, check_same_thread=False, isolation_level=None
        )
        self._lock = threading.Lock()
        with self._lock:
            switch_to_wal(self._conn, busy_timeout_s)
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(SCHEMA)

    def get_many(self, keys: Iterable[str]) -> dict[str, GenerationResponse]:
        keys = list(dict.fromkeys(keys))
        found: dict[str, GenerationResponse] = {}
        for start in range(0, len(keys), 500):  # SQLite's default limit is 999 bound parameters
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            with self._lock:
                rows = self._conn.execute(
                    "SELECT key, text, finish_reason, prompt_tokens, completion_tokens, cost_usd "
                    f"FROM responses WHERE key IN ({marks})",
                    chunk,
                ).fetchall()
            for key, text, finish, p_tok, c_tok, cost in rows:
                found[key] = GenerationResponse(
                    text=text, finish_reason=finish or "", prompt_tokens=p_tok or 0,
                    completion_tokens=c_tok or 0, cost_usd=cost or 0.0, attempts=0, cached=True,
                )
        return found

    def put(self, key: str, identity: dict, request: GenerationRequest, response: GenerationResponse) -> None:
        if response.status != STATUS_ANSWERED:
            return  # failures are retried next run, never cached
        payload = _key_payload(identity, request)
        row = (
            key, json.dumps(payload["model"], sort_keys=True),
            json.dumps({k: v for k, v in payload.items() if k != "model"}, sort_keys=True, ensure_ascii=False),
            response.text, response.finish_reason, response.prompt_tokens, response.completion_tokens,
            response.cost_usd, time.time(),
        )
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO responses VALUES (?,?,?,?,?,?,?,?,?)", row)

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class RunSummary:
    """Counts for one or more ``CachedBackend.generate`` calls; printed and saved by every run."""

    model: str = ""
    requests: int = 0
    cache_hits: int = 0  # served from the cache or by a duplicate request in the same call
    cache_misses: int = 0  # backend calls made (after de-duplication)
    answered: int = 0
    failed: int = 0
    prompt_tokens: int = 0  # of backend calls only: cached answers cost nothing
    completion_tokens: int = 0
    cost_usd: float = 0.0
    seconds: float = 0.0
    failure_reasons: dict[str, int] = field(default_factory=dict)
    served_models: dict[str, int] = field(default_factory=dict)  # model names HTTP replies reported
    notes: list[str] = field(default_factory=list)  # caveats about the answers, e.g. an unpinned alias

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        text = (
            f"{self.model}: {self.requests} requests, cache {self.cache_hits} hits / {self.cache_misses} misses, "
            f"{self.answered} answered, {self.failed} failed, tokens {self.prompt_tokens} in / "
            f"{self.completion_tokens} out"
        )
        if self.cost_usd:
            text += f", cost ${self.cost_usd:.4f}"
        if self.failure_reasons:
            text += " (failures: " + "; ".join(f"{r} x{n}" for r, n in self.failure_reasons.items()) + ")"
        text += f", {self.seconds:.1f}s"
        return "\n  note: ".join([text, *self.notes])


class CachedBackend:
    """A backend wrapped by the cache; itself a ``Backend``. ``cache=None`` is ``--no-cache``:
    nothing is read or written, but the summary still counts every call as a miss."""

    def __init__(self, backend: Backend, cache: ResponseCache | None, label: str = ""):
        self.backend = backend
        self.cache = cache
        self.summary = RunSummary(model=label or type(backend).__name__)
        self._identity: dict[str, str] | None = None

    def identity(self) -> dict[str, str]:
        if self._identity is None:
            self._identity = self.backend.identity()
            note = alias_note(self._identity)
            if note and note not in self.summary.notes:
                self.summary.notes.append(note)
        return self._identity

    def generate(
        self, requests: Sequence[GenerationRequest], on_response: OnResponse | None = None
    ) -> list[GenerationResponse]:
        start = time.perf_counter()
        identity = self.identity()
        keys = [cache_key(identity, r) for r in requests]
        hits = self.cache.get_many(keys) if self.cache is not None else {}
        results: list[GenerationResponse | None] = [hits.get(k) for k in keys]
        todo: dict[str, list[int]] = {}  # key -> positions waiting for it (duplicates share one call)
        for i, key in enumerate(keys):
            if results[i] is None:
                todo.setdefault(key, []).append(i)
            elif on_response:
                on_response(i, results[i])
        unique = list(todo)

        def arrived(j: int, response: GenerationResponse) -> None:
            key = unique[j]
            if self.cache is not None:
                self.cache.put(key, identity, requests[todo[key][0]], response)
            for n, pos in enumerate(todo[key]):
                # a duplicate of an earlier request in this call costs nothing: count it as a hit
                results[pos] = response if n == 0 else replace(response, cached=True, attempts=0)
                if on_response:
                    on_response(pos, results[pos])

        if unique:
            fresh = self.backend.generate([requests[todo[k][0]] for k in unique], on_response=arrived)
            for j, response in enumerate(fresh):  # backends that never call on_response
                if results[todo[unique[j]][0]] is None:
                    arrived(j, response)
        final = [r if r is not None else GenerationResponse(status=STATUS_FAILED, reason="lost") for r in results]
        self._count(final, len(unique), time.perf_counter() - start)
        return final

    def _count(self, results: list[GenerationResponse], calls: int, seconds: float) -> None:
        s = self.summary
        s.requests += len(results)
        s.cache_misses += calls
        s.cache_hits += len(results) - calls
        s.seconds += seconds
        reasons, served = Counter(s.failure_reasons), Counter(s.served_models)
        for r in results:
            if r.ok:
                s.answered += 1
            else:
                s.failed += 1
                reasons[_reason_class(r.reason)] += 1
            if not r.cached:
                served.update([r.served_model] if r.served_model else [])
                s.prompt_tokens += r.prompt_tokens
                s.completion_tokens += r.completion_tokens
                s.cost_usd += r.cost_usd
        s.failure_reasons, s.served_models = dict(reasons), dict(served)


def alias_note(identity: dict[str, str]) -> str:
    """The caveat for an HTTP model without a pinned revision (empty for anything else):
    its name is an alias the provider can point at another model, and the cache cannot tell."""
    if identity.get("backend") != "openai" or identity.get("revision"):
        return ""
    return (f"'{identity.get('model')}' is an OpenAI-compatible model alias: the provider can change the model "
            "behind it without changing the name, and cached answers would then come from the old one. "
            "Pin it with -o revision=<snapshot or date> (part of the cache key)")


def _reason_class(reason: str) -> str:
    # "http 429 after 3 attempts" -> "http 429", "http 400: {detail}" -> "http 400": groups
    # failures for the summary line; each row keeps its full reason
    return reason.split(" after ")[0].split(":")[0][:60] or "unknown"
