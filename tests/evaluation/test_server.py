"""The local OpenAI-compatible server: routes, fault injection, counters, CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

from robalign.evaluation.server import Faults, ScriptedResponder

BODY = {"model": "m", "messages": [{"role": "user", "content": "hello there"}]}


def test_chat_models_and_stats_routes(serve):
    server = serve(responder=ScriptedResponder({"hello": "general kenobi"}))
    with httpx.Client(base_url=server.base_url) as client:
        reply = client.post("/chat/completions", json=BODY).json()
        assert reply["choices"][0]["message"] == {"role": "assistant", "content": "general kenobi"}
        assert reply["usage"] == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}
        assert client.get("/models").json()["data"][0]["id"] == "local-model"
        assert client.post("/chat/completions", json={"messages": "oops"}).status_code == 400
        assert client.post("/completions", json=BODY).status_code == 400  # a chat body has no prompt
        assert client.post("/embeddings", json=BODY).status_code == 404
    stats = httpx.get(server.base_url.replace("/v1", "/stats")).json()
    assert stats["chat"] == 2 and stats["completions"] == 1


def test_scripted_responder_forms():
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "the blue one"}]
    assert ScriptedResponder(lambda p: p.upper())(msgs, {}) == "THE BLUE ONE"
    assert ScriptedResponder({"red": "R", "blue": "B"})(msgs, {}) == "B"
    cycled = ScriptedResponder(["a", "b"])
    assert [cycled(msgs, {}) for _ in range(3)] == ["a", "b", "a"]
    assert ScriptedResponder(default="x {prompt}")(msgs, {}) == "x the blue one"


def test_fault_draws_are_seeded_by_content_and_arrival():
    faults = Faults(rate_429=0.3, rate_500=0.2, rate_slow=0.1, rate_malformed=0.1, seed=5)
    bodies = [json.dumps({"i": i}).encode() for i in range(2000)]
    draws = [faults.draw(b, 0) for b in bodies]
    assert draws == [faults.draw(b, 0) for b in bodies]  # reproducible
    share = {k: draws.count(k) / len(draws) for k in ("429", "500", "slow", "malformed", "ok")}
    for key, rate in [("429", 0.3), ("500", 0.2), ("slow", 0.1), ("malformed", 0.1), ("ok", 0.3)]:
        assert abs(share[key] - rate) < 0.04, share
    assert [faults.draw(bodies[0], n) for n in range(30)] != [draws[0]] * 30  # retries draw afresh
    with pytest.raises(ValueError):
        Faults(rate_429=0.7, rate_500=0.7)


def test_malformed_and_status_faults_on_the_wire(serve):
    server = serve(faults=Faults(rate_malformed=1.0))
    reply = httpx.post(server.base_url + "/chat/completions", json=BODY)
    assert reply.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(reply.text)
    server = serve(faults=Faults(rate_429=1.0))
    reply = httpx.post(server.base_url + "/chat/completions", json=BODY)
    assert reply.status_code == 429 and reply.headers["retry-after"] == "0"
    assert server.stats()["429"] == 1


def test_cli_serve_openai_scripted_in_a_subprocess(tmp_path):
    script = tmp_path / "replies.json"
    script.write_text(json.dumps({"bias": "[[D]]"}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "robalign.cli", "serve-openai", "--model", "scripted", "--script", str(script),
         "--port", "0", "--fault-500", "0.0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving scripted at http://127.0.0.1:"), line + proc.stderr.read()
        base_url = line.split(" at ")[1].split(" ")[0]
        from robalign.evaluation.backends import GenerationRequest, build_backend

        out = build_backend(f"openai:m@{base_url}", timeout=10).generate(
            [GenerationRequest([{"role": "user", "content": "a bias question"}]),
             GenerationRequest([{"role": "user", "content": "other"}])])
        assert [r.text for r in out] == ["[[D]]", "Scripted reply to: other"]
        assert httpx.get(base_url.replace("/v1", "/stats")).json()["chat"] == 2
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_cli_serve_rejects_bad_fault_rates(capsys):
    from robalign.cli import main

    assert main(["serve-openai", "--model", "scripted", "--port", "0", "--fault-429", "0.8", "--fault-500", "0.8"]) == 2
    assert "fault" in capsys.readouterr().err


def test_server_accepts_either_completion_length_field(serve):
    from robalign.evaluation.server import token_limit_field

    assert token_limit_field({"max_tokens": 8}) == "max_tokens"
    assert token_limit_field({"max_completion_tokens": 8, "max_tokens": None}) == "max_completion_tokens"
    assert token_limit_field({}) is None
    server = serve(responder=lambda messages, body: "ok")
    with httpx.Client(base_url=server.base_url) as client:
        for extra in ({"max_tokens": 4}, {"max_completion_tokens": 4}, {}):
            assert client.post("/chat/completions", json={**BODY, **extra}).status_code == 200
    assert server.token_limit_fields == {"max_tokens": 1, "max_completion_tokens": 1, "none": 1}


def test_cut_at_limit_answers_finish_reason_length_and_queries_are_ignored(serve, nano_llama):
    from robalign.evaluation.server import HFResponder

    server = serve(responder=lambda messages, body: "one two three four five", cut_at_limit=True)
    with httpx.Client() as client:
        def ask(**extra):
            reply = client.post(server.base_url + "/chat/completions?api-version=1&key=x", json={**BODY, **extra})
            choice = reply.json()["choices"][0]
            return choice["message"]["content"], choice["finish_reason"]

        assert ask(max_tokens=3) == ("one two three", "length")
        assert ask(max_completion_tokens=5) == ("one two three four five", "stop")
        assert ask() == ("one two three four five", "stop")  # no limit asked: nothing to cut
        missing = client.post(server.base_url + "/nowhere?key=secret-value", json=BODY)
        assert missing.status_code == 404 and "secret-value" not in missing.text
    model_server = serve(responder=HFResponder(str(nano_llama)))  # a model's own finish reason comes through
    reply = httpx.post(model_server.base_url + "/chat/completions", json={**BODY, "max_tokens": 2}).json()
    assert reply["choices"][0]["finish_reason"] == "length"  # 2 tokens of random weights: no EOS yet
