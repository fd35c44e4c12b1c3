"""The run directory of a bench command, and what it costs before and while it runs.

A run directory (``--out RUN``) holds ``run.json`` (the command kind, the arguments that
decide its results, their fingerprint and the provenance record), the run table, the
summary and the report. Every model and judge call goes through the SQLite response cache,
which commits each answer as it arrives, so re-running a killed command with the same
arguments makes no repeated calls: it finds every answer that existed in the cache and
continues with the rest. ``open_run`` refuses a directory made with other arguments (the
old table would be silently mixed with new numbers) and names what changed; ``restart``
starts it over (cached answers are still reused: the cache is keyed by content).

Costs: ``estimate_cost`` counts the calls a list of requests will make (cached ones are
free) and their expected tokens, with prompt tokens from characters (4 per token, OpenAI's
rule of thumb for English; exact counts come back in the summary afterwards) and completion
tokens at ``max_new_tokens`` (an upper bound). ``CostMeter`` sends requests in chunks and
stops before the running cost of all its backends would pass ``--max-cost``; what was
answered is cached, so the same command with a higher cap continues.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from robalign.errors import UserError
from robalign.evaluation.backends import GenerationRequest, GenerationResponse
from robalign.evaluation.cache import CachedBackend, cache_key
from robalign.provenance import write_json_atomic

CHARS_PER_TOKEN = 4.0  # prompt tokens are estimated from characters; exact counts come back from the API
RUN_FILE = "run.json"
OUTPUTS = ("responses.jsonl", "summary.json", "report.html", "plan.json")


class CostCapReached(UserError):
    """--max-cost would be passed by the next chunk of calls; everything answered so far is cached."""


@dataclass
class RunDir:
    path: Path
    kind: str
    fingerprint: str
    resumed: bool  # run.json existed with the same arguments

    def file(self, name: str) -> Path:
        return self.path / name


def fingerprint(kind: str, arguments: dict[str, Any]) -> str:
    blob = json.dumps({"kind": kind, "arguments": arguments}, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def open_run(out: str | Path, kind: str, arguments: dict[str, Any], record: dict[str, Any] | None = None,
             restart: bool = False) -> RunDir:
    """Create or reopen ``out``. ``arguments`` are the (redacted) settings that decide the
    results; flags that do not (``--max-cost``, ``--dry-run``, the cache path) stay out."""
    path = Path(out)
    digest = fingerprint(kind, arguments)
    run_file = path / RUN_FILE
    if run_file.is_file() and not restart:
        try:
            old = json.loads(run_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserError(f"{run_file} cannot be read ({exc}); pass --restart to start this run over") from None
        if old.get("kind") != kind:
            raise UserError(f"{path} holds a '{old.get('kind')}' run, not '{kind}'; use another --out")
        if old.get("fingerprint") != digest:
            changed = sorted(k for k in set(arguments) | set(old.get("arguments", {}))
                             if _canon(arguments.get(k)) != _canon(old.get("arguments", {}).get(k)))
            raise UserError(f"{path} was made with other arguments (changed: {', '.join(changed) or 'the data'}). "
                            "Run the same command again to resume it, choose another --out for a new run, or pass "
                            "--restart to start this directory over (answers already cached are reused)")
        return RunDir(path, kind, digest, resumed=True)
    if restart and path.is_dir():
        for name in (RUN_FILE, *OUTPUTS):
            (path / name).unlink(missing_ok=True)
        shutil.rmtree(path / "figures", ignore_errors=True)
    write_json_atomic(run_file, {"kind": kind, "fingerprint": digest, "arguments": arguments, "record": record or {}})
    return RunDir(path, kind, digest, resumed=False)


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


@dataclass
class Estimate:
    """Calls and tokens a set of requests will take; ``usd`` from the backend's prices."""

    requests: int = 0
    cached: int = 0
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0  # an upper bound: every call is counted at its max_new_tokens
    usd: float = 0.0

    def __add__(self, other: Estimate) -> Estimate:
        return Estimate(*(a + b for a, b in zip(asdict(self).values(), asdict(other).values())))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "usd": round(self.usd, 6)}


def prices(backend: CachedBackend) -> tuple[float, float]:
    """USD per million prompt / completion tokens (``price_in`` / ``price_out`` backend options; 0 for local)."""
    inner = getattr(backend, "backend", backend)
    return float(getattr(inner, "price_in", 0.0) or 0.0), float(getattr(inner, "price_out", 0.0) or 0.0)


def request_chars(request: GenerationRequest) -> int:
    raw = getattr(request, "raw_prompt", None)
    return len(raw) if raw else sum(len(m.get("content", "")) for m in request.messages)


def estimate_cost(backend: CachedBackend | None, requests: Sequence[GenerationRequest],
                  check_cache: bool = True) -> Estimate:
    """What sending ``requests`` through ``backend`` would cost; requests already answered in
    the cache cost nothing (``check_cache=False`` for requests whose text is not known yet)."""
    if backend is None or not requests:
        return Estimate()
    cached: set[int] = set()
    if check_cache and backend.cache is not None:
        identity = backend.identity()
        keys = [cache_key(identity, r) for r in requests]
        found = backend.cache.get_many(keys)
        cached = {i for i, k in enumerate(keys) if k in found}
    todo = [r for i, r in enumerate(requests) if i not in cached]
    prompt_tokens = int(sum(request_chars(r) for r in todo) / CHARS_PER_TOKEN)
    completion_tokens = int(sum(r.max_new_tokens for r in todo))
    price_in, price_out = prices(backend)
    usd = (prompt_tokens * price_in + completion_tokens * price_out) / 1e6
    return Estimate(len(requests), len(cached), len(todo), prompt_tokens, completion_tokens, usd)


@dataclass
class CostMeter:
    """The running cost of every backend of a run, and the cap it must stay under."""

    max_cost: float | None = None
    backends: list[CachedBackend] = field(default_factory=list)
    chunk: int = 64  # requests sent between two checks of the cap

    def spent(self) -> float:
        return sum(b.summary.cost_usd for b in self.backends)

    def check(self, backend: CachedBackend, requests: Sequence[GenerationRequest], phase: str) -> None:
        """Raise ``CostCapReached`` if sending ``requests`` could pass the cap."""
        if backend not in self.backends:
            self.backends.append(backend)
        if self.max_cost is None:
            return
        estimate = estimate_cost(backend, requests)
        if self.spent() + estimate.usd > self.max_cost:
            raise CostCapReached(
                f"stopped in the {phase} phase before passing --max-cost {self.max_cost:g} USD: spent "
                f"{self.spent():.4f}, the next {estimate.calls} calls are estimated at {estimate.usd:.4f}. "
                "Everything answered is cached: run the same command with a higher --max-cost to continue")

    def generate(self, backend: CachedBackend, requests: Sequence[GenerationRequest], phase: str,
                 on_response: Callable[[int, GenerationResponse], None] | None = None) -> list[GenerationResponse]:
        """``backend.generate`` in chunks; before each chunk, stop if the spend so far plus the
        chunk's estimate would pass the cap (raises ``CostCapReached``, answers so far cached)."""
        if backend not in self.backends:
            self.backends.append(backend)
        if self.max_cost is None:
            return backend.generate(requests, on_response=on_response)
        out: list[GenerationResponse] = []
        for start in range(0, len(requests), self.chunk):
            part = list(requests[start : start + self.chunk])
            self.check(backend, part, phase)

            def shifted(i: int, response: GenerationResponse, offset: int = start) -> None:
                if on_response:
                    on_response(offset + i, response)

            out += backend.generate(part, on_response=shifted)
        return out
