"""The openai backend over real HTTP against the local server, faults injected."""

from __future__ import annotations

import asyncio
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robalign.errors import UserError
from robalign.evaluation.backends import (
    BackendUnavailable,
    GenerationRequest,
    GenerationResponse,
    build_backend,
)
from robalign.evaluation.cache import CachedBackend, ResponseCache, cache_key
from robalign.evaluation.openai_backend import CircuitBreaker, OpenAIBackend, _Attempt
from robalign.evaluation.server import Faults, HFResponder

FAST = dict(backoff_base=0.005, backoff_max=0.05, timeout=0.5)  # keep retries quick in tests


def prompts(n: int, tag: str = "q") -> list[GenerationRequest]:
    return [GenerationRequest([{"role": "user", "content": f"{tag} {i}"}], max_new_tokens=16) for i in range(n)]


def test_faults_end_to_end_nothing_lost_and_cached_rerun_makes_zero_calls(serve, tmp_path):
    faults = Faults(rate_429=0.2, rate_500=0.15, rate_slow=0.05, rate_malformed=0.1, slow_seconds=1.0, seed=3)
    server = serve(faults=faults)
    cache = ResponseCache(tmp_path / "c.sqlite")
    requests = prompts(60)
    spec = f"openai:local@{server.base_url}"

    # run 1: one retry only, so some requests exhaust their attempts and must say why
    first = CachedBackend(build_backend(spec, max_retries=1, **FAST), cache)
    out = first.generate(requests)
    answered = [r for r in out if r.ok]
    failed = [r for r in out if not r.ok]
    assert len(answered) + len(failed) == 60 and failed and answered
    assert all(r.text == f"Scripted reply to: q {i}" for i, r in enumerate(out) if r.ok)
    assert all(r.reason.split(" after ")[0] in ("http 429", "http 500", "timeout (0.5s)", "malformed JSON response")
               and r.reason.endswith("after 2 attempts") for r in failed)
    assert first.summary.answered == len(answered) and first.summary.failed == len(failed)
    assert sum(first.summary.failure_reasons.values()) == len(failed)
    assert len(cache) == len(answered)  # each answer was written as it arrived
    stats = server.stats()
    assert stats["chat"] == sum(stats[k] for k in ("ok", "429", "500", "slow", "malformed"))
    assert stats["429"] and stats["500"] and stats["malformed"] and stats["slow"]

    # run 2: generous retries; only the failed requests go out again, and all get answered
    before = server.chat_requests
    second = CachedBackend(build_backend(spec, max_retries=8, **FAST), cache)
    out2 = second.generate(requests)
    assert all(r.ok for r in out2)
    assert second.summary.cache_hits == len(answered) and second.summary.cache_misses == len(failed)
    assert server.chat_requests - before >= len(failed)

    # run 3: everything cached -> the server sees zero requests
    before = server.chat_requests
    third = CachedBackend(build_backend(spec, **FAST), cache)
    out3 = third.generate(requests)
    assert server.chat_requests == before
    assert [r.text for r in out3] == [r.text for r in out2] and third.summary.cache_hits == 60


def test_non_retryable_status_fails_at_once_with_its_reason(serve):
    server = serve()
    backend = OpenAIBackend("m", base_url=server.base_url.replace("/v1", "/nowhere"), max_retries=5, **FAST)
    out = backend.generate(prompts(2))
    assert [r.status for r in out] == ["failed", "failed"]
    assert out[0].reason.startswith("http 404") and out[0].attempts == 1


def closed_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))  # a port nothing listens on once closed
    port = probe.getsockname()[1]
    probe.close()
    return port


def test_unreachable_server_trips_the_breaker_and_nothing_is_lost(tmp_path):
    port = closed_port()
    backend = OpenAIBackend("m", base_url=f"http://127.0.0.1:{port}/v1", max_retries=5, concurrency=8, **FAST)
    wrapper = CachedBackend(backend, ResponseCache(tmp_path / "c.sqlite"))
    seen = []
    out = wrapper.generate(prompts(50), on_response=lambda i, r: seen.append(i))
    assert sorted(seen) == list(range(50)) and len(out) == 50
    assert all(r.status == "failed" and r.reason.startswith(f"unreachable: cannot connect to 127.0.0.1:{port} (")
               for r in out)
    # once open, queued requests fail without an attempt: at most the attempts that opened it
    # plus those already in flight, against 50 x 6 = 300 without the breaker
    assert sum(r.attempts for r in out) <= backend.unreachable_after + backend.concurrency
    assert wrapper.summary.failure_reasons == {"unreachable": 50}
    again = CachedBackend(backend, wrapper.cache)
    again.generate(prompts(50))
    assert again.summary.cache_misses == 50  # failures are not cached: a later run tries again


def test_breaker_off_retries_each_connection_failure():
    backend = OpenAIBackend("m", base_url=f"http://127.0.0.1:{closed_port()}/v1", max_retries=2,
                            unreachable_after=0, **FAST)
    out = backend.generate(prompts(3))
    assert [(r.reason, r.attempts) for r in out] == [("connection error (ConnectError) after 3 attempts", 3)] * 3


def test_a_live_server_failing_never_trips_the_breaker(serve):
    server = serve(faults=Faults(rate_500=1.0))
    out = OpenAIBackend("m", base_url=server.base_url, max_retries=2, unreachable_after=1, **FAST).generate(prompts(6))
    assert [(r.reason, r.attempts) for r in out] == [("http 500 after 3 attempts", 3)] * 6
    assert server.chat_requests == 18


def test_breaker_counts_only_consecutive_connection_failures():
    breaker = CircuitBreaker(3)
    down, up = _Attempt(unreachable="cannot connect to h:1 (refused)"), _Attempt(reason="http 500")
    for attempt in (down, down, up, down, down):
        breaker.record(attempt)
    assert not breaker.is_open  # a reply from a server in between resets the count
    breaker.record(down)
    assert breaker.is_open and breaker.reason == "unreachable: cannot connect to h:1 (refused)"
    off = CircuitBreaker(0)
    for _ in range(20):
        off.record(down)
    assert not off.is_open


def test_remote_server_without_its_key_fails_before_sending(monkeypatch, tmp_path):
    import httpx

    monkeypatch.delenv("ROBALIGN_TEST_KEY", raising=False)
    monkeypatch.setattr(httpx, "AsyncClient", lambda *a, **k: pytest.fail("a request was about to be sent"))
    backend = OpenAIBackend("m", base_url="https://api.example.com", api_key_env="ROBALIGN_TEST_KEY")
    with pytest.raises(BackendUnavailable, match=r"\$ROBALIGN_TEST_KEY is not set.*Export ROBALIGN_TEST_KEY="):
        backend.generate(prompts(2))
    with pytest.raises(BackendUnavailable):
        asyncio.run(backend.agenerate(prompts(2)))
    # a fully cached run needs no key
    cache = ResponseCache(tmp_path / "c.sqlite")
    for request in prompts(2):
        cache.put(cache_key(backend.identity(), request), backend.identity(), request, GenerationResponse(text="old"))
    assert [r.text for r in CachedBackend(backend, cache).generate(prompts(2))] == ["old", "old"]
    # no key needed: loopback servers, or a remote one declared keyless
    assert OpenAIBackend("m", base_url="https://api.example.com", api_key_env="").missing_key() is None
    for url in ("http://localhost:8000/v1", "http://127.0.0.2:1/v1", "http://[::1]:8000/v1"):
        assert OpenAIBackend("m", base_url=url, api_key_env="ROBALIGN_TEST_KEY").missing_key() is None
    monkeypatch.setenv("ROBALIGN_TEST_KEY", "sk-x")
    assert backend.missing_key() is None


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_field_option(serve, field):
    server = serve(responder=lambda messages, body: f"limit {body[field]}")
    spec = {"backend": "openai", "model": "m", "base_url": server.base_url, "max_tokens_field": field}
    out = build_backend(spec).generate(prompts(2))
    assert [r.text for r in out] == ["limit 16", "limit 16"]
    assert server.token_limit_fields == {field: 2}  # the server saw only the chosen field
    with pytest.raises(UserError, match="max_completion_tokens"):
        build_backend({**spec, "max_tokens_field": "max_new_tokens"})


def test_concurrency_is_bounded(serve):
    server = serve(responder=lambda messages, body: __import__("time").sleep(0.05) or "ok")
    OpenAIBackend("m", base_url=server.base_url, concurrency=3, **FAST).generate(prompts(24))
    assert server.stats()["max_in_flight"] == 3


def test_api_key_comes_from_the_named_env_var_and_is_never_stored(serve, tmp_path, monkeypatch):
    secret = "sk-test-DO-NOT-STORE-0123456789"
    monkeypatch.setenv("ROBALIGN_TEST_KEY", secret)
    server = serve()
    backend = build_backend({"backend": "openai", "model": "m", "base_url": server.base_url,
                             "api_key_env": "ROBALIGN_TEST_KEY"})
    wrapper = CachedBackend(backend, ResponseCache(tmp_path / "c.sqlite"))
    wrapper.generate(prompts(3))
    assert server.authorizations == {f"Bearer {secret}": 3}
    assert secret not in repr(backend) and secret not in str(vars(backend))
    assert secret not in str(wrapper.summary.to_dict()) and secret not in str(backend.identity())
    for f in tmp_path.iterdir():
        assert secret.encode() not in f.read_bytes()


def test_no_key_env_means_no_authorization_header(serve, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    server = serve()
    OpenAIBackend("m", base_url=server.base_url).generate(prompts(1))
    assert not server.authorizations


def test_token_usage_and_cost_accounting(serve):
    server = serve(responder=lambda messages, body: "one two three four")
    backend = OpenAIBackend("m", base_url=server.base_url, price_in=2.0, price_out=10.0)
    wrapper = CachedBackend(backend, None)
    out = wrapper.generate(prompts(2))
    assert out[0].prompt_tokens == 2 and out[0].completion_tokens == 4  # server counts words
    assert out[0].cost_usd == pytest.approx((2 * 2.0 + 4 * 10.0) / 1e6)
    assert wrapper.summary.cost_usd == pytest.approx(2 * out[0].cost_usd)


def test_backoff_grows_exponentially_with_jitter_and_respects_retry_after():
    backend = OpenAIBackend("m", base_url="http://127.0.0.1:1/v1", backoff_base=1.0, backoff_max=8.0, seed=0)
    for attempt, ceiling in [(0, 1.0), (1, 2.0), (2, 4.0), (3, 8.0), (6, 8.0)]:
        waits = [backend.backoff(attempt) for _ in range(200)]
        assert ceiling / 2 <= min(waits) and max(waits) <= ceiling
        assert len(set(waits)) > 100  # jittered, not constant
    assert backend.backoff(0, retry_after=5.0) == 5.0 and backend.backoff(0, retry_after=99.0) == 8.0


def test_generate_works_inside_a_running_event_loop(serve):
    server = serve()
    backend = OpenAIBackend("m", base_url=server.base_url)

    async def inside():
        return backend.generate(prompts(2))

    out = asyncio.run(inside())
    assert [r.text for r in out] == ["Scripted reply to: q 0", "Scripted reply to: q 1"]


def test_server_answering_from_a_tiny_hf_model(serve, nano_llama, tmp_path):
    server = serve(responder=HFResponder(str(nano_llama)))
    spec = f"openai:nano@{server.base_url}"
    via_http = build_backend(spec, timeout=60).generate(prompts(3))  # first call loads the model
    local = build_backend(f"hf:{nano_llama}").generate(prompts(3))
    assert all(r.ok for r in via_http)
    assert [r.text for r in via_http] == [r.text for r in local]  # greedy: same text over HTTP


class _Reply:
    def __init__(self, body):
        self.body = body

    def json(self):
        import json

        return json.loads(self.body)


JSONISH = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                       lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                           st.sampled_from(["choices", "message", "content", "usage", "prompt_tokens",
                                            "completion_tokens", "finish_reason", "x"]), inner, max_size=4),
                       max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.one_of(JSONISH.map(lambda v: __import__("json").dumps(v)), st.text(max_size=80)))
def test_any_response_body_parses_or_fails_cleanly(body):
    attempt = OpenAIBackend("m", base_url="http://127.0.0.1:1/v1")._parse(_Reply(body))
    assert (attempt.response is not None) != bool(attempt.reason)
    if attempt.response is not None:
        assert isinstance(attempt.response.text, str)


@pytest.mark.parametrize("change", [
    {"extra_body": {"top_k": 5}},
    {"extra_body": {"stop": ["\n"]}},
    {"extra_body": {"repetition_penalty": 1.2}},
    {"extra_body": {"reasoning_effort": "low"}},
    {"extra_body": {"chat_template_kwargs": {"enable_thinking": False}}},
    {"revision": "2024-08-06"},
], ids=["top_k", "stop", "repetition_penalty", "reasoning_effort", "thinking", "revision"])
def test_every_option_that_changes_the_answer_is_a_cache_miss(change, serve, tmp_path):
    server = serve()
    cache = ResponseCache(tmp_path / "c.sqlite")
    base = {"backend": "openai", "model": "m", "base_url": server.base_url}
    CachedBackend(build_backend(base), cache).generate(prompts(2))
    CachedBackend(build_backend(base), cache).generate(prompts(2))
    assert server.chat_requests == 2  # the re-run was served from the cache
    changed = CachedBackend(build_backend({**base, **change}), cache)
    changed.generate(prompts(2))
    assert server.chat_requests == 4 and changed.summary.cache_misses == 2
    CachedBackend(build_backend({**base, **change}), cache).generate(prompts(2))
    assert server.chat_requests == 4  # and the changed spec has its own cached answers


def test_summary_warns_of_an_unpinned_alias_and_counts_served_models(serve, tmp_path):
    server = serve(model_name="local-model")
    unpinned = CachedBackend(build_backend(f"openai:m@{server.base_url}"), None)
    unpinned.generate(prompts(3))
    assert unpinned.summary.served_models == {"m": 3}  # the local server reports the requested name
    assert "alias" in unpinned.summary.line() and "revision" in unpinned.summary.notes[0]
    pinned = CachedBackend(build_backend(f"openai:m@{server.base_url}", revision="2024-08-06"), None)
    pinned.generate(prompts(1))
    assert pinned.summary.notes == [] and "alias" not in pinned.summary.line()
