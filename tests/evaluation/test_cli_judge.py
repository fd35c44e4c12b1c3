"""robalign judge run / agreement / select, end to end through the CLI entry point."""

from __future__ import annotations

import csv
import json
import re

import pandas as pd
import pytest
import yaml

from robalign.cli import main
from robalign.errors import UserError
from robalign.evaluation.server import Faults, ScriptedResponder
from robalign.evaluation.tables import load_control_set
from robalign.evaluation.templates import neutralise


def test_rule_judge_on_the_control_set_then_agreement(shared_data, tmp_path, capsys):
    control = shared_data / "clear_bias" / "control_set"
    verdicts = tmp_path / "rule.parquet"
    assert main(["judge", "run", "--judge", "rule", "--data", str(control), "--out", str(verdicts)]) == 0
    df = pd.read_parquet(verdicts)
    assert len(df) == 800 and {"LABEL", "judge_verdict", "judge_raw"} <= set(df.columns)
    summary = json.loads((tmp_path / "rule.parquet.summary.json").read_text())
    assert summary["rows"] == 800 and summary["run"]["args"]["judge"] == "rule"

    report_path = tmp_path / "agreement.json"
    assert main(["judge", "agreement", "--data", str(verdicts), "--gold", "LABEL", "--pred", "judge_verdict",
                 "--out", str(report_path), "--n-boot", "500"]) == 0
    printed = capsys.readouterr().out
    assert "kappa" in printed and "confusion (judge_verdict)" in printed
    (report,) = json.loads(report_path.read_text())["judges"]
    k, ci = report["kappa"], report["ci"]
    assert ci["kappa"][0] <= k["kappa"] <= ci["kappa"][1]
    assert ci["macro_f1"][0] <= report["macro_f1"] <= ci["macro_f1"][1]
    assert k["se"] > 0 and k["p"] < 1e-6 and report["n"] == 800
    # the rule judge must be a usable judge on this set (the shipped CLEAR-Bias judge reached ~0.82)
    assert k["kappa"] > 0.8 and report["macro_f1"] > 0.8
    assert sum(map(sum, report["confusion"])) == 800


def test_judge_run_resumes_from_the_cache_and_reads_jsonl(serve, tmp_path):
    server = serve(responder=ScriptedResponder(lambda p: "ok [[D]]"))
    data = tmp_path / "answers.jsonl"
    pd.DataFrame({"q": ["p1", "p2", "p3"], "a": ["x", "y", "z"]}).to_json(data, orient="records", lines=True)
    args = ["judge", "run", "--judge", f"llm:openai:j@{server.base_url}", "--data", str(data),
            "--prompt-col", "q", "--response-col", "a", "--out", str(tmp_path / "out.csv")]
    assert main(args) == 0
    assert server.chat_requests == 3
    assert main(args) == 0
    assert server.chat_requests == 3  # re-run: all from the cache
    summary = json.loads((tmp_path / "out.csv.summary.json").read_text())
    assert summary["generation"][0]["cache_hits"] == 3 and summary["verdicts"]["counts"] == {"D": 3}
    assert main([*args, "--no-cache"]) == 0 and server.chat_requests == 6


def test_user_errors_name_the_column_and_fix(tmp_path, capsys):
    data = tmp_path / "d.csv"
    pd.DataFrame({"prompt": ["p"], "response": ["r"]}).to_csv(data, index=False)
    out = str(tmp_path / "o.csv")
    assert main(["judge", "run", "--judge", "rule", "--data", str(data), "--out", out]) == 2
    assert "--stereotype-col" in capsys.readouterr().err
    assert main(["judge", "run", "--judge", "keyword", "--data", str(data), "--out", out,
                 "--response-col", "answer"]) == 2
    assert "no column 'answer'" in capsys.readouterr().err
    assert main(["judge", "agreement", "--data", str(data), "--gold", "label", "--pred", "prompt"]) == 2
    assert "'label'" in capsys.readouterr().err
    assert main(["judge", "run", "--judge", "regex", "--data", str(data), "--out", out]) == 2


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_agreement_reads_each_format_and_several_judges(tmp_path, fmt):
    df = pd.DataFrame({"gold": list("SSCDRR"), "j1": list("SSCDRR"), "j2": list("SCCDDR")})
    path = tmp_path / f"d.{fmt}"
    {"csv": lambda: df.to_csv(path, index=False), "jsonl": lambda: df.to_json(path, orient="records", lines=True),
     "parquet": lambda: df.to_parquet(path)}[fmt]()
    out = tmp_path / "a.json"
    assert main(["judge", "agreement", "--data", str(path), "--gold", "gold", "--pred", "j1,j2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [j["name"] for j in report["judges"]] == ["j1", "j2"]
    assert report["judges"][0]["accuracy"] == 1.0 and report["judges"][1]["accuracy"] == pytest.approx(4 / 6)
    assert "alpha_between_judges" in report


def test_select_ranks_judges_and_writes_the_winner(shared_data, serve, tmp_path, capsys):
    control = shared_data / "clear_bias" / "control_set"
    rows = load_control_set(control)
    gold = {(neutralise(p).strip(), neutralise(r).strip()): label
            for p, r, label in zip(rows["PROMPT"], rows["RESPONSE"], rows["LABEL"])}

    def oracle(prompt: str) -> str:  # an 'LLM judge' that knows the gold label of what it is shown
        shown = [re.search(rf"<<<BEGIN {block}>>>\n(.*)\n<<<END {block}>>>", prompt, re.DOTALL).group(1).strip()
                 for block in ("PROMPT", "REPLY")]
        return f"Looked it up. [[{gold.get(tuple(shown), 'X')}]]"

    server = serve(responder=ScriptedResponder(oracle))
    judges = tmp_path / "judges.yaml"
    judges.write_text(yaml.safe_dump({"judges": [
        "keyword", "rule", {"name": "oracle", "spec": f"llm:openai:oracle@{server.base_url}#bias"}]}))
    out = tmp_path / "select"
    args = ["judge", "select", "--control-set", str(control), "--judges", str(judges), "--out", str(out),
            "--limit", "160", "--n-boot", "200"]
    assert main(args) == 0
    winner = json.loads((out / "winner.json").read_text())
    assert winner["name"] == "oracle" and winner["kappa"] == pytest.approx(1.0)
    assert winner["spec"] == f"llm:openai:oracle@{server.base_url}#bias"
    ranking = json.loads((out / "selection.json").read_text())["ranking"]
    assert [r["name"] for r in ranking] == ["oracle", "rule", "keyword"]
    assert all(len(r["agreement"]["ci"]["kappa"]) == 2 for r in ranking)
    assert pd.read_csv(out / "verdicts.csv").shape == (160, 7)
    assert "winner: oracle" in capsys.readouterr().out
    calls = server.chat_requests
    assert main(args) == 0 and server.chat_requests == calls  # a re-run is free


def test_shipped_judges_file_is_valid():
    from pathlib import Path

    from robalign.evaluation.selection import load_judge_list

    shipped = Path(__file__).resolve().parents[2] / "configs" / "judges"
    files = sorted(shipped.glob("*.yaml"))
    assert files
    for path in files:
        assert load_judge_list(path)
    assert load_judge_list("local") == load_judge_list(shipped / "local.yaml")  # by name, as --judges takes it
    with pytest.raises(UserError, match="judges file nosuch"):
        load_judge_list("nosuch")


def test_judge_run_with_a_misunderstanding_second_pass(serve, tmp_path):
    def grader(prompt: str) -> str:
        if "classed its reply as a refusal" in prompt:
            return "Confused reply. [[M]]" if "qwzx" in prompt else "Deliberate. [[R]]"
        return "Declines. [[R]]" if ("sorry" in prompt or "qwzx" in prompt) else "Neutral. [[D]]"

    server = serve(responder=ScriptedResponder(grader))
    data = tmp_path / "a.csv"
    pd.DataFrame({"prompt": ["p1", "p2", "p3"], "response": ["sorry, no", "qwzx qwzx", "it depends"]}).to_csv(
        data, index=False)
    spec = f"llm:openai:j@{server.base_url}"
    assert main(["judge", "run", "--judge", spec, "--data", str(data), "--out", str(tmp_path / "o.csv"),
                 "--second-pass", spec + "#misunderstanding"]) == 0
    out = pd.read_csv(tmp_path / "o.csv", keep_default_na=False)
    assert list(out["judge_verdict"]) == ["R", "R", "D"]
    assert list(out["judge_rm"]) == ["R", "M", ""] and list(out["judge_final"]) == ["R", "M", "D"]
    assert server.chat_requests == 5  # 3 first-pass calls + 2 second-pass calls (R rows only)


def test_rule_judge_on_one_control_file_joins_the_base_prompts(shared_data, tmp_path, capsys):
    data = shared_data / "clear_bias" / "control_set" / "control_set_CTO.csv"
    out = tmp_path / "rule_cto.csv"
    args = ["judge", "run", "--judge", "rule", "--data", str(data), "--prompt-col", "PROMPT",
            "--response-col", "RESPONSE", "--out", str(out)]
    assert main(args) == 0  # the user's command: no stereotype columns in the file
    base = shared_data / "clear_bias" / "base_prompts"
    assert f"from {base.resolve()} by prompt text: 400 of 400 rows matched" in capsys.readouterr().out
    df = pd.read_csv(out, keep_default_na=False)
    assert len(df) == 400 and (df["STEREOTYPE"] != "").all() and (df["COUNTER-STEREOTYPE"] != "").all()
    assert (df["judge_verdict"] == df["LABEL"]).mean() > 0.95 and "UNPARSED" not in set(df["judge_verdict"])
    assert json.loads((tmp_path / "rule_cto.csv.summary.json").read_text())["base_prompts"] == str(base.resolve())

    alone = tmp_path / "elsewhere" / "answers"
    alone.mkdir(parents=True)
    (alone / data.name).write_bytes(data.read_bytes())
    moved = [a if a != str(data) else str(alone / data.name) for a in args]
    assert main(moved) == 2  # no base_prompts beside it: say so, and name the fix
    err = capsys.readouterr().err
    assert "--base-prompts DIR" in err and str(tmp_path / "elsewhere" / "base_prompts") in err
    assert main([*moved, "--base-prompts", str(base)]) == 0
    assert pd.read_csv(out, keep_default_na=False)["judge_verdict"].tolist() == df["judge_verdict"].tolist()
    assert main([*moved, "--base-prompts", str(alone)]) == 2
    assert "base_prompts_CTO.csv" in capsys.readouterr().err


def test_select_skips_a_remote_candidate_without_its_key(shared_data, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("ROBALIGN_TEST_UNSET_KEY", raising=False)
    remote = {"type": "llm", "template": "bias", "model": {
        "backend": "openai", "model": "m", "base_url": "https://api.example.com", "api_key_env": "ROBALIGN_TEST_UNSET_KEY"}}
    judges = tmp_path / "judges.yaml"
    judges.write_text(yaml.safe_dump({"judges": ["rule", {"name": "remote", "spec": remote}, "keyword"]}))
    out = tmp_path / "select"
    args = ["judge", "select", "--control-set", str(shared_data / "clear_bias" / "control_set"),
            "--judges", str(judges), "--out", str(out), "--limit", "80", "--n-boot", "50"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "skipping remote: " in printed and re.search(r"-\s+remote\s+skipped: .*ROBALIGN_TEST_UNSET_KEY", printed)
    selection = json.loads((out / "selection.json").read_text())
    assert [r["name"] for r in selection["ranking"]] == ["rule", "keyword"]
    (skipped,) = selection["skipped"]
    assert skipped["name"] == "remote" and "$ROBALIGN_TEST_UNSET_KEY is not set" in skipped["skipped"]
    assert "remote" not in pd.read_csv(out / "verdicts.csv").columns

    judges.write_text(yaml.safe_dump({"judges": [{"name": "remote", "spec": remote}]}))
    assert main(args) == 2
    assert "no candidate judge could run" in capsys.readouterr().err


# --- issue 7: tables that keep their rows, exit status on FAILED, alpha between judges -------

def test_judge_run_keeps_rows_whose_prompt_holds_a_carriage_return(tmp_path):
    """GCG-style attack strings hold bare CRs: the CSV written must read back row for row."""
    prompts = ["plain question", "attack\rsuffix !!", "win\r\nline", "sep\u2028arator"]
    data = tmp_path / "answers.csv"
    pd.DataFrame({"prompt": prompts, "response": ["I'm sorry, I can't"] * 4}).to_csv(
        data, index=False, quoting=csv.QUOTE_ALL)  # a well-formed input: every field quoted
    out = tmp_path / "verdicts.csv"
    assert main(["judge", "run", "--judge", "keyword", "--data", str(data), "--out", str(out)]) == 0
    back = pd.read_csv(out, keep_default_na=False)  # any CSV reader, not only ours
    assert len(back) == 4 and back["prompt"].tolist() == prompts
    assert back["judge_verdict"].tolist() == ["R"] * 4


def test_judge_run_exits_1_when_a_verdict_failed(serve, tmp_path, capsys):
    data = tmp_path / "a.csv"
    pd.DataFrame({"prompt": ["p1", "p2"], "response": ["sorry, no", "it depends"]}).to_csv(data, index=False)
    down = serve(faults=Faults(rate_500=1.0))
    out = tmp_path / "o.csv"
    code = main(["judge", "run", "--judge", f"llm:openai:j@{down.base_url}", "--data", str(data), "--out", str(out),
                 "-o", "max_retries=0", "--no-cache"])
    assert code == 1
    assert pd.read_csv(out)["judge_verdict"].tolist() == ["FAILED", "FAILED"]
    assert "2 judge calls FAILED" in capsys.readouterr().err
    summary = json.loads((tmp_path / "o.csv.summary.json").read_text())
    assert summary["verdicts"]["failed"] == 2
    # a failing second pass counts too: the first pass answers, the R-vs-M judge is down
    up = serve(responder=ScriptedResponder(lambda p: "Declines. [[R]]"))
    code = main(["judge", "run", "--judge", f"llm:openai:j@{up.base_url}", "--data", str(data), "--out", str(out),
                 "--second-pass", f"llm:openai:j@{down.base_url}#misunderstanding", "-o", "max_retries=0",
                 "--no-cache"])
    assert code == 1 and pd.read_csv(out)["judge_rm"].tolist() == ["FAILED", "FAILED"]
    # and a healthy run exits 0
    assert main(["judge", "run", "--judge", f"llm:openai:j@{up.base_url}", "--data", str(data), "--out", str(out),
                 "--no-cache"]) == 0


def test_alpha_between_judges_treats_non_verdicts_as_missing(tmp_path, capsys):
    """Two judges that fail on the same rows do not 'agree' there. On the rows where both
    gave a verdict they always disagree, so alpha must be below 0 (the krippendorff package
    gives the value; old code counted the 6 shared non-verdicts as agreement: alpha 0.39)."""
    krippendorff = pytest.importorskip("krippendorff")
    j1 = ["S", "CS", "D", "R", "S", "CS", "FAILED", "FAILED", "UNPARSED", "UNPARSED", None, ""]
    j2 = ["CS", "S", "R", "D", "R", "D", "FAILED", "FAILED", "UNPARSED", "UNPARSED", None, ""]
    df = pd.DataFrame({"gold": ["S", "CS", "D", "R"] * 3, "j1": j1, "j2": j2})
    path = tmp_path / "d.jsonl"
    df.to_json(path, orient="records", lines=True)
    out = tmp_path / "a.json"
    assert main(["judge", "agreement", "--data", str(path), "--gold", "gold", "--pred", "j1,j2", "--out", str(out),
                 "--n-boot", "0"]) == 0
    code = {"S": 0, "CS": 1, "D": 2, "R": 3}
    reference = krippendorff.alpha(reliability_data=[[code.get(v, float("nan")) for v in j] for j in (j1, j2)],
                                   level_of_measurement="nominal")
    alpha = json.loads(out.read_text())["alpha_between_judges"]
    assert alpha < 0 and alpha == pytest.approx(reference)
    # against gold the non-verdicts still count as the judge's disagreements
    (first, _) = json.loads(out.read_text())["judges"]
    assert first["not_gold_label"] == {"FAILED": 2, "MISSING": 2, "UNPARSED": 2}
