"""robalign generate through the CLI entry point, hf and openai backends."""

from __future__ import annotations

import json

import pandas as pd

from robalign.cli import main
from robalign.evaluation.server import Faults


def prompts_file(tmp_path, n=4):
    path = tmp_path / "prompts.csv"
    pd.DataFrame({"id": range(n), "PROMPT": [f"Question {i}: who?" for i in range(n)]}).to_csv(path, index=False)
    return path


def test_generate_hf_then_cached_rerun(nano_llama, tmp_path, capsys):
    data = prompts_file(tmp_path)
    out = tmp_path / "gen.jsonl"
    args = ["generate", "--model", f"hf:{nano_llama}", "--data", str(data), "--out", str(out),
            "--max-new-tokens", "8", "-o", "batch_size=2"]
    assert main(args) == 0
    first = pd.read_json(out, lines=True)
    assert list(first["id"]) == [0, 1, 2, 3] and (first["status"] == "answered").all()
    assert "cache 0 hits / 4 misses" in capsys.readouterr().out
    assert main(args) == 0
    second = pd.read_json(out, lines=True)
    assert second["cached"].all() and list(second["response"]) == list(first["response"])
    assert "cache 4 hits / 0 misses" in capsys.readouterr().out
    summary = json.loads((tmp_path / "gen.jsonl.summary.json").read_text())["summary"]
    assert (summary["cache_hits"], summary["cache_misses"]) == (4, 0)


def test_generate_samples_over_http_with_faults(serve, tmp_path, capsys):
    server = serve(faults=Faults(rate_429=0.3, rate_500=0.2, seed=1))
    data = prompts_file(tmp_path, n=5)
    out = tmp_path / "gen.csv"
    args = ["generate", "--model", f"openai:m@{server.base_url}", "--data", str(data), "--out", str(out),
            "--samples", "3", "--temperature", "0.7", "-o", "backoff_base=0.001", "-o", "max_retries=10"]
    assert main(args) == 0
    df = pd.read_csv(out)
    assert len(df) == 15 and list(df["sample_index"][:3]) == [0, 1, 2]
    assert (df["status"] == "answered").all() and server.stats()["429"] > 0
    calls = server.chat_requests
    assert main(args) == 0 and server.chat_requests == calls


def test_generate_exit_status_is_1_when_requests_fail(serve, tmp_path):
    server = serve(faults=Faults(rate_500=1.0))
    out = tmp_path / "gen.csv"
    code = main(["generate", "--model", f"openai:m@{server.base_url}", "--data", str(prompts_file(tmp_path, 2)),
                 "--out", str(out), "-o", "max_retries=0"])
    df = pd.read_csv(out)
    assert code == 1 and list(df["status"]) == ["failed", "failed"] and list(df["reason"]) == ["http 500"] * 2


def test_samples_without_temperature_is_a_user_error(tmp_path, capsys):
    code = main(["generate", "--model", "openai:m@http://127.0.0.1:9/v1", "--data", str(prompts_file(tmp_path)),
                 "--out", str(tmp_path / "o.csv"), "--samples", "2"])
    assert code == 2 and "--temperature" in capsys.readouterr().err


def test_bad_option_value_is_a_user_error_that_does_not_echo_it(tmp_path, capsys):
    code = main(["generate", "--model", "openai:m@http://127.0.0.1:9/v1", "--data", str(prompts_file(tmp_path)),
                 "--out", str(tmp_path / "o.csv"), "-o", "extra_body=[sk-do-not-show"])
    err = capsys.readouterr().err
    assert code == 2 and "-o extra_body=" in err and "not valid YAML" in err and "sk-do-not-show" not in err


def test_summary_carries_the_one_run_record(serve, tmp_path):
    """generate and judge share robalign.provenance.run_record: git state, versions, arguments."""
    server = serve()
    out = tmp_path / "gen.csv"
    assert main(["generate", "--model", f"openai:m@{server.base_url}", "--data", str(prompts_file(tmp_path, 1)),
                 "--out", str(out), "--no-cache"]) == 0
    run = json.loads((tmp_path / "gen.csv.summary.json").read_text())["run"]
    assert {"created", "command", "git", "versions", "python", "args"} <= set(run)
    assert run["versions"]["robalign"] and run["args"]["model"] == f"openai:m@{server.base_url}"
