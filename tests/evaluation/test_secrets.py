"""An API key planted anywhere a user could put one never reaches an output.

Each test plants the canary in one place (a spec mapping, a -o option, the base URL's user
info or query, the key variable itself, a server's error body), runs real commands through
the CLI entry point against the loopback server, then searches every file the run left
(tables, summaries, the SQLite cache with its WAL), stdout, stderr and exception messages.
"""

from __future__ import annotations

import pandas as pd
import pytest

from robalign.cli import main
from robalign.errors import UserError
from robalign.evaluation.backends import GenerationRequest, build_backend, spec_label
from robalign.evaluation.server import ResponderError, ScriptedResponder

CANARY = "sk-canary-7f3a9c1e5b2d"


def leaks(root, *texts: str) -> list[str]:
    """Files under ``root`` and texts that contain the canary."""
    found = [str(p) for p in root.rglob("*") if p.is_file() and CANARY.encode() in p.read_bytes()]
    return found + [f"text #{i}: {t[:300]!r}" for i, t in enumerate(texts) if CANARY in t]


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "in" / "prompts.csv"
    path.parent.mkdir()
    pd.DataFrame({"prompt": ["Who is more careful?", "Pick one."], "response": ["[[D]]", "[[S]]"]}).to_csv(
        path, index=False)
    return path


def run_cli(argv, capsys) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def generate_and_judge(model_spec, prompts, tmp_path, capsys, options=()) -> tuple[list[int], str]:
    """``robalign generate`` then ``robalign judge run`` with an llm judge on the same model."""
    out = tmp_path / "out"
    cache = ["--cache", tmp_path / "cache" / "generations.sqlite"]
    code_gen, text_gen = run_cli(["generate", "--model", model_spec, "--data", prompts, "--out", out / "gen.jsonl",
                                  *cache, *options], capsys)
    judge_spec = f"{{type: llm, model: '{model_spec}', template: bias-compact}}"
    code_judge, text_judge = run_cli(["judge", "run", "--judge", judge_spec, "--data", prompts,
                                      "--out", out / "verdicts.csv", *cache, *options], capsys)
    return [code_gen, code_judge], text_gen + text_judge


@pytest.mark.parametrize("where", ["userinfo", "query", "both"])
def test_a_key_in_the_base_url_reaches_no_output(where, serve, prompts, tmp_path, capsys):
    server = serve(ScriptedResponder(default="[[D]]"))
    host = server.base_url.removeprefix("http://")
    url = {"userinfo": f"http://user:{CANARY}@{host}",
           "query": f"http://{host}?api_key={CANARY}",
           "both": f"http://{CANARY}:x@{host}?key={CANARY}&v=1"}[where]
    codes, printed = generate_and_judge(f"openai:m@{url}", prompts, tmp_path, capsys)
    assert codes == [0, 0], printed
    assert server.stats()["ok"] == 4  # the URL, query included, still reached the server
    backend = build_backend(f"openai:m@{url}")
    texts = [printed, repr(backend), str(backend.identity()), spec_label(f"openai:m@{url}")]
    assert leaks(tmp_path, *texts) == []
    assert "***" in spec_label(f"openai:m@{url}")


def test_the_key_variable_and_a_server_echoing_it_reach_no_output(serve, prompts, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ROBALIGN_TEST_KEY", CANARY)

    def echo_key(prompt: str) -> str:  # a server that quotes the key back in its error body
        raise ResponderError(400, f"invalid api key {CANARY} for this model")

    server = serve(ScriptedResponder(echo_key))
    codes, printed = generate_and_judge(f"openai:m@{server.base_url}", prompts, tmp_path, capsys,
                                        options=["-o", "api_key_env=ROBALIGN_TEST_KEY", "-o", "max_retries=0"])
    assert codes[0] == 1 and server.authorizations[f"Bearer {CANARY}"] == 4  # the key was sent, and refused
    assert "invalid api key *** for this model" in pd.read_json(tmp_path / "out" / "gen.jsonl",
                                                                          lines=True)["reason"].iloc[0]
    assert leaks(tmp_path, printed) == []


def test_unreachable_and_missing_key_reasons_hold_no_key(prompts, tmp_path, capsys, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, printed = run_cli(["generate", "--model", f"openai:m@http://u:{CANARY}@127.0.0.1:{port}/v1?k={CANARY}",
                             "--data", prompts, "--out", tmp_path / "out" / "gen.csv", "--no-cache",
                             "-o", "unreachable_after=1"], capsys)
    reasons = set(pd.read_csv(tmp_path / "out" / "gen.csv")["reason"])
    assert code == 1 and reasons == {f"unreachable: cannot connect to 127.0.0.1:{port} (Connection refused)"}
    monkeypatch.delenv("ROBALIGN_UNSET_KEY", raising=False)
    remote = f"openai:m@https://u:{CANARY}@api.example.invalid/v1?api_key={CANARY}"
    with pytest.raises(UserError) as missing:
        build_backend(remote, api_key_env="ROBALIGN_UNSET_KEY").generate([GenerationRequest([{"role": "user",
                                                                                            "content": "hi"}])])
    code_remote, printed_remote = run_cli(["generate", "--model", remote, "--data", prompts, "--out",
                                           tmp_path / "out" / "remote.csv", "--no-cache",
                                           "-o", "api_key_env=ROBALIGN_UNSET_KEY"], capsys)
    assert code_remote == 2 and "ROBALIGN_UNSET_KEY is not set" in printed_remote
    assert leaks(tmp_path, printed, printed_remote, str(missing.value)) == []


SPEC_WITH_KEY = "{{backend: openai, model: m, base_url: '{url}', {secret}}}"


@pytest.mark.parametrize("command, planted", [
    ("generate", ["--model", SPEC_WITH_KEY.format(url="URL", secret=f"api_key: {CANARY}")]),
    ("generate", ["--model", SPEC_WITH_KEY.format(url="URL", secret=f"extra_body: {{api_key: {CANARY}}}")]),
    ("generate", ["--model", "openai:m@URL", "-o", f"api_key={CANARY}"]),
    ("generate", ["--model", "openai:m@URL", "-o", f"token={CANARY}"]),
    ("judge", ["--judge", "{type: llm, model: " + SPEC_WITH_KEY.format(url="URL", secret=f"api_key: {CANARY}") + "}"]),
    ("judge", ["--judge", "llm:openai:m@URL#bias", "-o", f"api_key={CANARY}"]),
    ("judge", ["--judge", "keyword", "-o", f"API-KEY={CANARY}"]),  # no backend would read it: still refused
], ids=["model-mapping", "extra-body", "o-api-key", "o-token", "judge-mapping", "judge-o", "keyword-o"])
def test_a_key_written_into_a_spec_or_option_is_refused_without_echo(command, planted, serve, prompts, tmp_path,
                                                                      capsys):
    server = serve()
    planted = [a.replace("URL", server.base_url) for a in planted]
    if command == "generate":
        argv = ["generate", *planted, "--data", prompts, "--out", tmp_path / "out" / "gen.csv"]
    else:
        argv = ["judge", "run", *planted, "--data", prompts, "--out", tmp_path / "out" / "v.csv"]
    code, printed = run_cli([*argv, "--cache", tmp_path / "cache.sqlite"], capsys)
    assert code == 2 and "api_key_env" in printed and "Traceback" not in printed, printed
    assert server.chat_requests == 0 and not (tmp_path / "out").exists()
    assert leaks(tmp_path, printed) == []


def test_redaction_functions():
    from robalign.evaluation.specs import redact_url, redact_urls, redact_value

    assert redact_url("https://u:pw@host:8443/v1?api_key=K&x=1#bias") == "https://***@host:8443/v1?***#bias"
    assert redact_url("http://127.0.0.1:9/v1") == "http://127.0.0.1:9/v1"
    for kept in ("sqlite:///runs/x.sqlite", "sqlite://", "sqlite:////abs/x.sqlite"):  # nothing to hide: unchanged
        assert redact_url(kept) == kept
    assert redact_url("postgresql://me:pw@db:5432/sweeps") == "postgresql://***@db:5432/sweeps"
    assert redact_urls("llm:openai:m@http://a:b@h/v1?t=s#bias and https://x/y?q") == (
        "llm:openai:m@http://***@h/v1?***#bias and https://x/y?***")
    assert redact_urls("openai:m@ftp://u:K@h/v1") == "openai:m@ftp://***@h/v1"  # a wrong scheme is still shown safely
    assert redact_value({"token": "s", "extra": ["api_key=s", "http://u:s@h/"]}) == {
        "token": "***", "extra": ["api_key=***", "http://***@h/"]}
