"""The SQLite response cache and the caching wrapper."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import subprocess
import sys
import textwrap
import threading

import pytest

from robalign.evaluation.backends import GenerationRequest, GenerationResponse
from robalign.evaluation.cache import CachedBackend, ResponseCache, cache_key, default_cache_path

IDENTITY = {"backend": "fake", "model": "m", "revision": "r1", "base_url": "http://x/v1", "template": "t1"}


def req(text: str = "hi", **kw) -> GenerationRequest:
    return GenerationRequest([{"role": "user", "content": text}], **kw)


class FakeBackend:
    """Answers 'echo:<content>'; records every request it was asked to generate."""

    def __init__(self, fail_on: str | None = None):
        self.calls: list[GenerationRequest] = []
        self.fail_on = fail_on

    def identity(self):
        return IDENTITY

    def generate(self, requests, on_response=None):
        out = []
        for i, r in enumerate(requests):
            self.calls.append(r)
            text = r.messages[-1]["content"]
            resp = (GenerationResponse(status="failed", reason="http 500 after 3 attempts") if text == self.fail_on
                    else GenerationResponse(text=f"echo:{text}", prompt_tokens=2, completion_tokens=3, cost_usd=0.5))
            out.append(resp)
            if on_response:
                on_response(i, resp)
        return out


def test_default_path_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBALIGN_CACHE", str(tmp_path / "c"))
    assert default_cache_path() == tmp_path / "c" / "generations.sqlite"


def test_every_key_component_changes_the_key():
    base = cache_key(IDENTITY, req())
    variants = [
        cache_key({**IDENTITY, "model": "m2"}, req()),
        cache_key({**IDENTITY, "revision": "r2"}, req()),
        cache_key({**IDENTITY, "base_url": "http://y/v1"}, req()),
        cache_key({**IDENTITY, "template": "t2"}, req()),
        cache_key(IDENTITY, req("hello")),
        cache_key(IDENTITY, GenerationRequest([{"role": "system", "content": "hi"}])),
        cache_key(IDENTITY, req(max_new_tokens=9)),
        cache_key(IDENTITY, req(temperature=0.7)),
        cache_key(IDENTITY, req(top_p=0.9)),
        cache_key(IDENTITY, req(seed=1)),
        cache_key(IDENTITY, req(sample_index=1)),
    ]
    assert len({base, *variants}) == len(variants) + 1
    assert cache_key(IDENTITY, req(id="caller-handle")) == base  # ids are not part of the key


def test_rerun_makes_zero_backend_calls_and_counts_hits(tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    fake = FakeBackend()
    requests = [req(f"p{i}") for i in range(5)]
    first = CachedBackend(fake, cache).generate(requests)
    second_wrapper = CachedBackend(fake, cache)
    second = second_wrapper.generate(requests)
    assert len(fake.calls) == 5
    assert [r.text for r in second] == [r.text for r in first] and all(r.cached for r in second)
    s = second_wrapper.summary
    assert (s.cache_hits, s.cache_misses, s.answered, s.prompt_tokens, s.cost_usd) == (5, 0, 5, 0, 0.0)


def test_duplicates_in_one_call_make_one_backend_call(tmp_path):
    fake = FakeBackend()
    wrapper = CachedBackend(fake, ResponseCache(tmp_path / "c.sqlite"))
    out = wrapper.generate([req("a"), req("b"), req("a")])
    assert len(fake.calls) == 2 and out[0].text == out[2].text == "echo:a"
    assert (wrapper.summary.cache_misses, wrapper.summary.cache_hits, wrapper.summary.prompt_tokens) == (2, 1, 4)


def test_failures_are_reported_not_cached_and_retried_next_run(tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    fake = FakeBackend(fail_on="bad")
    wrapper = CachedBackend(fake, cache)
    out = wrapper.generate([req("ok"), req("bad")])
    assert [r.status for r in out] == ["answered", "failed"] and out[1].reason.startswith("http 500")
    assert wrapper.summary.failure_reasons == {"http 500": 1} and len(cache) == 1
    CachedBackend(fake, cache).generate([req("ok"), req("bad")])
    assert [c.messages[0]["content"] for c in fake.calls] == ["ok", "bad", "bad"]


def test_no_cache_reads_and_writes_nothing(tmp_path):
    fake = FakeBackend()
    wrapper = CachedBackend(fake, None)
    wrapper.generate([req("a")])
    wrapper.generate([req("a")])
    assert len(fake.calls) == 2 and wrapper.summary.cache_misses == 2 and wrapper.summary.cache_hits == 0


def test_wal_mode(tmp_path):
    ResponseCache(tmp_path / "c.sqlite").close()
    mode = sqlite3.connect(tmp_path / "c.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_concurrent_thread_async_and_second_connection_writers(tmp_path):
    path = tmp_path / "c.sqlite"
    cache, other = ResponseCache(path), ResponseCache(path)
    answer = GenerationResponse(text="x")

    def writer(c: ResponseCache, tag: str):
        for i in range(100):
            r = req(f"{tag}-{i}")
            c.put(cache_key(IDENTITY, r), IDENTITY, r, answer)

    async def async_writers():
        async def one(i):
            await asyncio.sleep(0)
            r = req(f"async-{i}")
            cache.put(cache_key(IDENTITY, r), IDENTITY, r, answer)

        await asyncio.gather(*(one(i) for i in range(200)))

    threads = [threading.Thread(target=writer, args=(cache, f"t{k}")) for k in range(4)]
    threads.append(threading.Thread(target=writer, args=(other, "other")))
    for t in threads:
        t.start()
    asyncio.run(async_writers())
    for t in threads:
        t.join()
    assert len(cache) == 4 * 100 + 100 + 200


def test_a_crash_mid_run_keeps_every_answer_written_before_it(tmp_path):
    """The child process answers 7 of 20 requests, then dies without any cleanup."""
    path = tmp_path / "c.sqlite"
    child = textwrap.dedent(f"""
        import os
        from robalign.evaluation.backends import GenerationRequest, GenerationResponse
        from robalign.evaluation.cache import CachedBackend, ResponseCache

        class Crashing:
            def identity(self):
                return {{"backend": "fake", "model": "m"}}
            def generate(self, requests, on_response=None):
                for i, r in enumerate(requests):
                    if i == 7:
                        os._exit(3)  # no atexit, no close: like a kill
                    on_response(i, GenerationResponse(text="answer %d" % i))

        reqs = [GenerationRequest([{{"role": "user", "content": "p%d" % i}}]) for i in range(20)]
        CachedBackend(Crashing(), ResponseCache({str(path)!r})).generate(reqs)
    """)
    done = subprocess.run([sys.executable, "-c", child])
    assert done.returncode == 3
    cache = ResponseCache(path)
    assert len(cache) == 7
    keys = [cache_key({"backend": "fake", "model": "m"}, req(f"p{i}")) for i in range(20)]
    found = cache.get_many(keys)
    assert sorted(r.text for r in found.values()) == sorted(f"answer {i}" for i in range(7))


@pytest.mark.parametrize("field", ["text", "finish_reason", "prompt_tokens", "completion_tokens"])
def test_cached_response_round_trips(tmp_path, field):
    cache = ResponseCache(tmp_path / "c.sqlite")
    original = GenerationResponse(text="héllo [[S]]", finish_reason="length", prompt_tokens=7, completion_tokens=11)
    r = req()
    cache.put(cache_key(IDENTITY, r), IDENTITY, r, original)
    got = cache.get_many([cache_key(IDENTITY, r)])[cache_key(IDENTITY, r)]
    assert getattr(got, field) == getattr(original, field) and got.cached
    assert dataclasses.replace(got, cached=False, attempts=1) == original
