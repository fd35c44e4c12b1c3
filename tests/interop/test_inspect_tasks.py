"""Inspect AI interop: ``inspect eval robalign/clear_bias`` against the local OpenAI-compatible
server (model and grader) gives the per-category scores of ``robalign bench clear-bias`` on the
same scripted answers; UNPARSED is unscored, never a class; the harmful task; the export of a
bench run as an Inspect log, read back with Inspect's own reader. Skipped without the
``robalign[inspect]`` extra (the core install does not need it)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

inspect_ai = pytest.importorskip("inspect_ai")

from inspect_ai.log import list_eval_logs, read_eval_log  # noqa: E402

from robalign.bench.attacks import ATTACKS  # noqa: E402
from robalign.bench.prompts import load_prompt_set  # noqa: E402
from robalign.cli import main  # noqa: E402
from robalign.evaluation.server import LocalOpenAIServer, ResponderError  # noqa: E402

STEREO = {"AGE", "GENDER"}  # the scripted model sides with the stereotype here: not attacked
REPLY = re.compile(r"<<<BEGIN REPLY>>>\n?(.*?)\n?<<<END REPLY>>>", re.DOTALL)
ATTACKS_ARG = "prefix_injection:v1,refusal_suppression:v1"


class Scripted:
    """Model under test ('mut') and judge ('judge') in one responder, told apart by the model name.

    mut: AGE / GENDER base prompts -> "S-answer", other base prompts -> "D-answer", the first
         RELIGION CTO base prompt -> HTTP 400 (a failed generation); prefix_injection -> "S-answer";
         refusal_suppression -> "R-answer" (CTO) or "D-answer" (SC); the first DISABILITY SC base
         prompt -> "X-answer", which the judge answers without a verdict (UNPARSED).
    judge: the label the reply names; the second pass says [[M]]."""

    def __init__(self):
        prompt_set = load_prompt_set()
        self.base = {p.prompt: p for p in prompt_set.prompts}
        self.failing = next(p.prompt for p in prompt_set.prompts if p.category == "RELIGION" and p.task == "CTO")
        self.unparsed = next(p.prompt for p in prompt_set.prompts if p.category == "DISABILITY" and p.task == "SC")
        self.attacked = {}
        for p in prompt_set.prompts:
            self.attacked[ATTACKS["prefix_injection"].apply(p, "v1")] = "S-answer"
            self.attacked[ATTACKS["refusal_suppression"].apply(p, "v1")] = "R-answer" if p.task == "CTO" else "D-answer"
        self.seen: Counter[str] = Counter()
        self.lock = threading.Lock()

    def __call__(self, messages, body) -> str:
        text = messages[-1]["content"]
        with self.lock:
            self.seen[body["model"]] += 1
        if body["model"] == "judge":
            if "classed its reply as a refusal" in text:  # the second pass's template
                return "It did not grasp the request.\n[[M]]"
            reply = REPLY.search(text).group(1)
            return "The reply is hard to read." if reply.startswith("X") else f"Reasoning.\n[[{reply[0]}]]"
        if text == self.failing:
            raise ResponderError(400, "scripted failure")
        if text == self.unparsed:
            return "X-answer"
        if text in self.base:
            return "S-answer" if self.base[text].category in STEREO else "D-answer"
        return self.attacked[text]


def inspect_env(server) -> dict[str, str]:
    return {**os.environ, "LOCAL_BASE_URL": server.base_url, "LOCAL_API_KEY": "test-key-not-secret",
            "INSPECT_LOG_LEVEL": "warning", "INSPECT_DISPLAY": "none", "HF_HUB_OFFLINE": "1"}


def run_inspect(server, log_dir: Path, *task_args: str, task: str = "robalign/clear_bias") -> object:
    inspect = Path(sys.executable).with_name("inspect")
    cmd = [str(inspect), "eval", task, "--model", "openai-api/local/mut", "--model-role",
           "grader=openai-api/local/judge", "--log-dir", str(log_dir), "--display", "none", "--no-fail-on-error",
           "--max-retries", "0", *[a for arg in task_args for a in ("-T", arg)]]
    done = subprocess.run(cmd, env=inspect_env(server), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    logs = list_eval_logs(str(log_dir))
    assert len(logs) == 1
    return read_eval_log(logs[0])


def unscored_value(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def metrics_of(log) -> dict[str, dict[str, float]]:
    """{scorer: {metric name: value}} of a log's results."""
    return {s.name: {name: m.value for name, m in s.metrics.items()} for s in log.results.scores}


def test_inspect_eval_gives_the_bench_scores_on_the_same_answers(tmp_path):
    script = Scripted()
    with LocalOpenAIServer(script) as server:
        url = server.base_url
        assert main(["bench", "clear-bias", "--model", f"openai:mut@{url}", "--judge", f"llm:openai:judge@{url}",
                     "--second-pass", f"llm:openai:judge@{url}#misunderstanding", "--attacks", ATTACKS_ARG,
                     "--n-boot", "0", "--out", str(tmp_path / "bench"), "--cache", str(tmp_path / "c.sqlite"),
                     "-o", "max_retries=0", "--judge-option", "max_retries=0"]) == 0
        log = run_inspect(server, tmp_path / "logs", f"attacks={ATTACKS_ARG}", "second_pass=true")
    summary = json.loads((tmp_path / "bench" / "summary.json").read_text())

    # one log, two phases: 60 base samples, then the attacked prompts of the 8 gated categories
    phases = Counter(s.metadata["phase"] for s in log.samples)
    assert phases == {"base": 60, "attack": 8 * 6 * 2}
    attacked = {s.metadata["category"] for s in log.samples if s.metadata["phase"] == "attack"}
    assert attacked == set(summary["attack"]["attacked_categories"])
    for s in log.samples:
        assert {"phase", "category", "task", "attack", "variant"} <= set(s.metadata)

    # the failed generation is an Inspect error; the unparsed verdict is unscored with its reason
    errors = [s for s in log.samples if s.error]
    assert [s.metadata["category"] for s in errors] == ["RELIGION"]
    unscored = [s for s in log.samples if s.scores and unscored_value(s.scores["misunderstanding_judge"].value)]
    assert len(unscored) == 1 and unscored[0].scores["bias_judge"].metadata["label"] == "UNPARSED"
    assert unscored[0].scores["bias_judge"].explanation == "The reply is hard to read."
    finals = Counter(s.scores["misunderstanding_judge"].value for s in log.samples
                     if s.scores and not unscored_value(s.scores["misunderstanding_judge"].value))
    assert finals["M"] == 24 and set(finals) <= {"S", "CS", "D", "R", "M"}

    got = metrics_of(log)["misunderstanding_judge"]
    assert got["safety"] == pytest.approx(summary["overall_safety"])
    assert got["base_safety"] == pytest.approx(summary["model_score"])
    assert got["expected_safety_reduction"] == pytest.approx(summary["attack"]["expected_safety_reduction"])
    for c in summary["category_safety"]:
        assert got[f"{c['category']}/safety"] == pytest.approx(c["safety"]), c["category"]
    for cell in summary["cells"]:  # every category has one task per cell count: compare per category
        per = [x for x in summary["cells"] if x["category"] == cell["category"] and x["robustness"] is not None]
        assert got[f"{cell['category']}/robustness"] == pytest.approx(sum(x["robustness"] for x in per) / len(per))
    for a in summary["attack"]["per_attack"]:
        assert got[f"{a['attack']}/effectiveness"] == pytest.approx(a["effectiveness"])
    # hand-worked, as in tests/bench/test_clearbias.py (DISABILITY keeps safety 1 on its other answers)
    assert got["safety"] == pytest.approx(0.4) and got["AGE/safety"] == 0.0
    assert log.eval.model_roles["grader"].model == "openai-api/local/judge"


def test_the_rule_judge_task_runs_offline_and_a_missing_grader_is_named(tmp_path):
    script = Scripted()
    with LocalOpenAIServer(script) as server:
        log = run_inspect(server, tmp_path / "rule", "judge=rule", "attacks=prefix_injection:v1", "limit=1")
        assert script.seen["judge"] == 0
        assert log.status == "success" and Counter(s.metadata["phase"] for s in log.samples)["base"] == 20
        assert "safety" in metrics_of(log)["bias_judge"]

        inspect = Path(sys.executable).with_name("inspect")
        subprocess.run([str(inspect), "eval", "robalign/clear_bias", "--model", "openai-api/local/mut",
                               "--log-dir", str(tmp_path / "nograder"), "--display", "none", "-T", "limit=1"],
                              env=inspect_env(server), capture_output=True, text=True, timeout=300)
    log = read_eval_log(list_eval_logs(str(tmp_path / "nograder"))[0])
    assert log.status == "error" and "--model-role grader=" in log.error.message


def test_harmful_task_counts_refusals_as_the_bench_does(tmp_path, shared_data):
    replies = {"bomb": "I'm sorry, but I can't help with that.", "": "Sure, here is how."}
    with LocalOpenAIServer(lambda messages, body: next(v for k, v in replies.items()
                                                       if k in messages[-1]["content"].lower())) as server:
        url = server.base_url
        assert main(["bench", "harmful", "--dataset", "advbench", "--data-root", str(shared_data), "--limit", "30",
                     "--model", f"openai:mut@{url}", "--out", str(tmp_path / "bench"),
                     "--cache", str(tmp_path / "c.sqlite")]) in (0, 1)
        log = run_inspect(server, tmp_path / "logs", "dataset=advbench", f"data_root={shared_data}", "limit=30",
                          task="robalign/harmful")
    summary = json.loads((tmp_path / "bench" / "summary.json").read_text())
    got = metrics_of(log)["harmful_judge"]
    assert got["asr"] == pytest.approx(summary["harmful"]["asr"]["rate"])
    assert got["refusal_rate"] == pytest.approx(summary["harmful"]["refusal_rate"]["rate"])
    assert 0 < got["asr"] < 1


def test_a_bench_run_exported_reads_back_with_every_sample_and_the_bench_numbers(tmp_path, capsys):
    script = Scripted()
    with LocalOpenAIServer(script) as server:
        url = server.base_url
        assert main(["bench", "clear-bias", "--model", f"openai:mut@{url}", "--judge", f"llm:openai:judge@{url}",
                     "--attacks", "prefix_injection:v1", "--n-boot", "0", "--out", str(tmp_path / "bench"),
                     "--cache", str(tmp_path / "c.sqlite"), "-o", "max_retries=0",
                     "--judge-option", "max_retries=0"]) == 0
    assert main(["bench", "export-inspect", str(tmp_path / "bench"), "--out", str(tmp_path / "logs")]) == 0
    assert "inspect view --log-dir" in capsys.readouterr().out
    summary = json.loads((tmp_path / "bench" / "summary.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "bench" / "responses.jsonl").read_text().splitlines()]
    (path,) = list_eval_logs(str(tmp_path / "logs"))
    log = read_eval_log(path)
    assert log.eval.task == "robalign/clear_bias" and len(log.samples) == len(rows) == 60 + 8 * 6
    by_id = {s.id: s for s in log.samples}
    for row in rows:
        sample = by_id[row["row_id"]]
        assert sample.input == row["prompt"] and sample.metadata["phase"] == row["phase"]
        score = sample.scores["bias_judge"]
        if row["final"] in ("S", "CS", "D", "R", "M"):
            assert score.value == row["final"] and score.explanation == row["judge_raw"]
        else:  # FAILED (the failed generation, also the sample's error) and UNPARSED: unscored with the reason
            assert unscored_value(score.value) and score.metadata["final"] == row["final"]
    assert [s.metadata["category"] for s in log.samples if s.error] == ["RELIGION"]
    metrics = {name: m.value for name, m in log.results.scores[0].metrics.items()}
    assert metrics["safety"] == pytest.approx(summary["overall_safety"])
    for c in summary["category_safety"]:
        assert metrics[f"{c['category']}/safety"] == pytest.approx(c["safety"])
    assert log.results.scores[0].unscored_samples == 2

    assert main(["bench", "export-inspect", str(tmp_path / "nothing"), "--out", str(tmp_path / "logs")]) == 2
    assert "no run.json, responses.jsonl, summary.json" in capsys.readouterr().err


def test_inspect_sample_ids_are_the_bench_row_ids(tmp_path):
    from robalign.interop.inspect_tasks import samples_for

    prompts = load_prompt_set().prompts[:2]
    assert [s.id for s in samples_for(prompts, "base", 1)] == [p.id for p in prompts]
    assert [s.id for s in samples_for(prompts, "base", 2)] == [f"{p.id}#{k}" for p in prompts for k in (0, 1)]


def test_harmful_task_with_a_grader_safety_judge_matches_the_bench(tmp_path, shared_data):
    """The model complies with every second prompt; the grader (llama-guard template) says unsafe
    when the AGENT message complies, and gives no verdict for one answer (UNPARSED, unscored)."""
    def respond(messages, body):
        text = messages[-1]["content"]
        if body["model"] == "judge":
            agent = text.split("AGENT: ", 1)[1]
            if "Certainly" in agent:
                return "I would rather not say."
            return "unsafe\nU2" if agent.startswith("Sure") else "safe"
        if "bomb" in text.lower():
            return "Certainly, let me think."
        return "Sure, here is how." if len(text) % 2 else "I'm sorry, but I can't help with that."

    with LocalOpenAIServer(respond) as server:
        url = server.base_url
        assert main(["bench", "harmful", "--dataset", "advbench", "--data-root", str(shared_data), "--limit", "20",
                     "--model", f"openai:mut@{url}", "--judge", f"llm:openai:judge@{url}#llama-guard",
                     "--out", str(tmp_path / "bench"), "--cache", str(tmp_path / "c.sqlite")]) in (0, 1)
        log = run_inspect(server, tmp_path / "logs", "dataset=advbench", f"data_root={shared_data}", "limit=20",
                          "judge=llama-guard", task="robalign/harmful")
    summary = json.loads((tmp_path / "bench" / "summary.json").read_text())
    got = metrics_of(log)["harmful_judge"]
    assert got["asr"] == pytest.approx(summary["harmful"]["asr"]["rate"]) and 0 < got["asr"] < 1
    excluded = summary["harmful"]["excluded"]["safety"]["UNPARSED"]
    assert excluded >= 1 and log.results.scores[0].unscored_samples == excluded
