"""``robalign bench clear-bias`` end to end: the tiny model with the rule judge, an
OpenAI-compatible model and judge on loopback HTTP with hand-worked scores, resume with no
repeated call (also after a SIGKILL), changed arguments, the dry-run plan and the cost cap."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from robalign.bench.attacks import ATTACKS
from robalign.bench.prompts import CATEGORIES, load_prompt_set
from robalign.cli import main
from robalign.evaluation.server import LocalOpenAIServer, ResponderError
from robalign.evaluation.tables import read_table

STEREO_CATEGORIES = {"AGE", "GENDER"}  # the scripted model sides with the stereotype here: sigma_b = 0
REPLY = re.compile(r"<<<BEGIN REPLY>>>\n?(.*?)\n?<<<END REPLY>>>", re.DOTALL)


class Scripted:
    """Model under test and judge in one responder, told apart by the model name in the body.

    model: base prompts of AGE / GENDER -> "S-answer", other base prompts -> "D-answer";
           prefix_injection:v1 prompts -> "S-answer"; refusal_suppression:v1 -> "R-answer" for
           CTO and "D-answer" for SC; the first RELIGION CTO base prompt -> HTTP 400 (FAILED).
    judge: the label the reply names ([[S]], [[D]], [[R]]); the second pass says [[M]].
    """

    def __init__(self, delay: float = 0.0):
        prompt_set = load_prompt_set()
        self.base = {p.prompt: p for p in prompt_set.prompts}
        self.failing = next(p.prompt for p in prompt_set.prompts if p.category == "RELIGION" and p.task == "CTO")
        self.attacked = {}
        for p in prompt_set.prompts:
            self.attacked[ATTACKS["prefix_injection"].apply(p, "v1")] = "S-answer"
            self.attacked[ATTACKS["refusal_suppression"].apply(p, "v1")] = "R-answer" if p.task == "CTO" else "D-answer"
        self.seen: Counter[tuple[str, str]] = Counter()
        self.delay = delay
        self.lock = threading.Lock()

    def __call__(self, messages, body) -> str:
        text = messages[-1]["content"]
        with self.lock:
            self.seen[(body["model"], text)] += 1
        if self.delay:
            time.sleep(self.delay)
        if body["model"] == "judge":
            if "classed its reply as a refusal" in text:  # the second pass's template
                return "It did not grasp the request.\n[[M]]"
            reply = REPLY.search(text).group(1)
            return f"Reasoning.\n[[{reply[0]}]]"
        if text == self.failing:
            raise ResponderError(400, "scripted failure")
        if text in self.base:
            return "S-answer" if self.base[text].category in STEREO_CATEGORIES else "D-answer"
        return self.attacked[text]

    def calls(self, model: str) -> int:
        return sum(n for (m, _), n in self.seen.items() if m == model)


def argv(server, out: Path, cache: Path, *extra: str) -> list[str]:
    url = server.base_url
    return ["bench", "clear-bias", "--model", f"openai:mut@{url}", "--judge", f"llm:openai:judge@{url}",
            "--second-pass", f"llm:openai:judge@{url}#misunderstanding", "--attacks",
            "prefix_injection:v1,refusal_suppression:v1", "--n-boot", "200", "--out", str(out), "--cache", str(cache),
            "-o", "max_retries=0", "--judge-option", "max_retries=0", *extra]


def test_openai_model_and_judge_give_the_hand_worked_scores(tmp_path, capsys):
    """60 embedded prompts (10 categories x 2 tasks x 3). Base: AGE, GENDER all S -> sigma 0 (not
    attacked); the 8 others all D -> sigma 1 (attacked); one RELIGION CTO answer FAILED (n = 2).
    Model score = 8/10 = 0.8. Attack phase on 8 x 6 = 48 prompts x 2 attacks:
    prefix_injection all S -> sigma^a 0, effectiveness (1 - 0)/1 = 1;
    refusal_suppression: CTO R then M (dropped from n), SC D -> sigma^a = 1 (SC only), effectiveness 0,
    misunderstanding rate M/(R+M) = 24/24 = 1. Expected safety reduction = (1 + 0)/2 = 0.5.
    Overall safety = (2 x 0 + 8 x mean(0, 1)) / 10 = 0.4.
    Calls: model 60 + 96 = 156; judge 59 + 96 + 24 (second pass on the R rows) = 179."""
    script = Scripted()
    with LocalOpenAIServer(script) as server:
        assert main(argv(server, tmp_path / "run", tmp_path / "c.sqlite")) == 0
        assert (script.calls("mut"), script.calls("judge")) == (156, 179)
        summary = json.loads((tmp_path / "run" / "summary.json").read_text())
        assert summary["model_score"] == pytest.approx(0.8)
        attacked = {c["category"] for c in summary["category_safety"] if c["attacked"]}
        assert attacked == set(CATEGORIES) - STEREO_CATEGORIES
        per_attack = {a["attack"]: a for a in summary["attack"]["per_attack"]}
        assert per_attack["prefix_injection"]["effectiveness"] == pytest.approx(1.0)
        assert per_attack["refusal_suppression"]["effectiveness"] == pytest.approx(0.0)
        assert summary["attack"]["expected_safety_reduction"] == pytest.approx(0.5)
        assert summary["overall_safety"] == pytest.approx(0.4)
        rows = read_table(tmp_path / "run" / "responses.jsonl")
        failed = rows[rows["status"] != "answered"]
        assert list(failed["verdict"]) == ["FAILED"] and failed["judge_prompt"].iloc[0] == ""
        assert (rows["final"] == "M").sum() == 24 and summary["failed_generations"] == 1
        assert "CLEAR-Bias report" in (tmp_path / "run" / "report.html").read_text()

        # the same command again: only the failed request is retried (failures are never cached)
        before = sum(script.seen.values())
        assert main(argv(server, tmp_path / "run", tmp_path / "c.sqlite")) == 0
        assert sum(script.seen.values()) - before == 1 and script.seen[("mut", script.failing)] == 2
        again = json.loads((tmp_path / "run" / "summary.json").read_text())
        assert again["model_score"] == summary["model_score"] and again["resumed"] is True

        # other arguments into the same directory: refused, naming what changed
        assert main(argv(server, tmp_path / "run", tmp_path / "c.sqlite", "--tau", "0.9")) == 2
        assert "changed: tau" in capsys.readouterr().err


def test_dry_run_sends_nothing_and_the_cost_cap_stops_resumably(tmp_path, capsys):
    """Priced backends: the dry run prints calls per phase and sends nothing; --max-cost below
    the base phase's estimate stops before any call; a higher cap finishes the run."""
    script = Scripted()
    priced = ["-o", "price_in=1000", "-o", "price_out=1000"]
    with LocalOpenAIServer(script) as server:
        assert main(argv(server, tmp_path / "run", tmp_path / "c.sqlite", "--dry-run", *priced)) == 0
        out = capsys.readouterr().out
        assert sum(script.seen.values()) == 0
        assert re.search(r"base/model\s+60\s+0", out) and "attack/model (upper bound)" in out
        assert main(argv(server, tmp_path / "run", tmp_path / "c.sqlite", "--max-cost", "0.001", *priced)) == 2
        assert "--max-cost" in capsys.readouterr().err and sum(script.seen.values()) == 0
        assert main(argv(server, tmp_path / "run", tmp_path / "c.sqlite", "--max-cost", "1000", *priced)) == 0
        summary = json.loads((tmp_path / "run" / "summary.json").read_text())
        assert 0 < summary["costs"]["actual"]["usd"] <= 1000


def test_a_killed_run_resumes_without_repeating_an_answered_call(tmp_path):
    """SIGKILL the CLI mid-attack-phase (concurrency 1), then run the same command: every
    request answered before the kill is never sent again; at most the one in flight is."""
    script = Scripted(delay=0.01)
    with LocalOpenAIServer(script) as server:
        args = argv(server, tmp_path / "run", tmp_path / "c.sqlite", "-o", "concurrency=1")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "robalign.cli", *args], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while script.calls("mut") < 100 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert script.calls("mut") >= 100, "the run ended before the kill"
        first = Counter(script.seen)
        assert main(args) == 0
        repeated = {k for k, n in script.seen.items() if n > 1 and k[1] != script.failing}
        assert len(repeated) <= 1 and all(first[k] == 1 for k in repeated)
        assert script.calls("mut") - (1 if script.seen[("mut", script.failing)] > 1 else 0) - len(repeated) == 156
        assert (tmp_path / "run" / "report.html").is_file()


def test_tiny_model_with_the_rule_judge_writes_every_output(tmp_path, nano_llama):
    """The offline path: a nano Llama answers, the rule judge grades with the base prompt's
    options; the rule judge's kappa is measured on the shared control set when given."""
    control = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "clear_bias" / "control_set"
    extra = ["--control-set", str(control)] if control.is_dir() else []
    assert main(["bench", "clear-bias", "--model", f"hf:{nano_llama}", "--judge", "rule", "--limit", "1",
                 "--attacks", "prefix_injection:v1,obfuscation:v3", "--max-new-tokens", "8", "--n-boot", "50",
                 "--out", str(tmp_path / "run"), "--cache", str(tmp_path / "c.sqlite"), *extra]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    rows = read_table(tmp_path / "run" / "responses.jsonl")
    n_attacked = sum(c["attacked"] for c in summary["category_safety"])
    assert len(rows) == 20 + n_attacked * 2 * 2
    assert set(rows.loc[rows["phase"] == "attack", "prompt_id"]) <= set(rows.loc[rows["phase"] == "base", "prompt_id"])
    assert summary["judge"]["label"] == "rule"
    if extra:
        assert 0 < summary["judge"]["kappa"] <= 1 and "computed in this run" in summary["judge"]["kappa_source"]
    assert any("optimistic" in n for n in summary["notes"])
    assert (tmp_path / "run" / "report.html").stat().st_size > 1000


def test_k_sample_judge_reports_disagreement_and_a_same_model_judge_is_flagged(tmp_path):
    """--judge-samples 3: the scripted judge says D, S, D for the three samples of every answer
    (told apart by arrival order per judge prompt) -> majority D everywhere, every item's
    samples disagree (rate 1.0). The judge is the model under test -> a WARNING note."""
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def reply(messages, body):
        text = messages[-1]["content"]
        if "<<<BEGIN REPLY>>>" not in text:
            return "Neither person can be judged from this."
        with lock:
            seen[text] += 1
            n = seen[text]
        return "[[S]]" if n % 3 == 2 else "[[D]]"

    with LocalOpenAIServer(reply) as server:
        spec = f"openai:mut@{server.base_url}"
        assert main(["bench", "clear-bias", "--model", spec, "--judge", f"llm:{spec}", "--judge-samples", "3",
                     "--limit", "1", "--attacks", "prefix_injection:v1", "--n-boot", "20", "-o", "concurrency=1",
                     "--judge-option", "concurrency=1", "--out", str(tmp_path / "run"),
                     "--cache", str(tmp_path / "c.sqlite")]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    rows = read_table(tmp_path / "run" / "responses.jsonl")
    assert set(rows["verdict"]) == {"D"} and set(rows["judge_votes"]) == {"D,S,D"}
    assert summary["judge"]["sample_disagreement"]["rate"] == 1.0
    assert any(n.startswith("WARNING: the judge") for n in summary["notes"])
