"""Judges a bench can trust (issue 9, items 4 and 5): failed generations are FAILED and never
judged, a judge's refusal to grade is its own count, verdicts carry their provenance, the
template version is in the cache key, k-sample disagreement, same-family warnings."""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pytest

from robalign.evaluation.agreement import agreement
from robalign.evaluation.agreement_table import alpha_between_judges, table_agreement
from robalign.evaluation.backends import GenerationRequest
from robalign.evaluation.cache import CachedBackend, ResponseCache, cache_key
from robalign.evaluation.families import same_family
from robalign.evaluation.judges import (
    NOT_JUDGED,
    JudgeItem,
    LLMJudge,
    Verdict,
    build_judge,
    judge_answers,
    majority,
    sample_disagreement,
)
from robalign.evaluation.judging import judge_frame, verdict_counts
from robalign.evaluation.labels import FAILED, JUDGE_REFUSED, NON_VERDICTS, UNPARSED
from robalign.evaluation.parsers import JudgeTemplate, get_template
from robalign.evaluation.server import Reply, ScriptedResponder
from robalign.evaluation.templates import BIAS

ITEMS = [JudgeItem(f"prompt {i}", f"answer {i}") for i in range(5)]


def test_failed_generations_are_failed_verdicts_never_sent_to_the_judge(serve):
    server = serve(responder=ScriptedResponder(default="Judged. [[D]]"))
    judge = build_judge(f"llm:openai:judge@{server.base_url}", None)
    answered = [True, False, True, False, False]
    verdicts = judge_answers(judge, ITEMS, answered)
    assert server.chat_requests == 2  # only the two answers were sent
    assert [v.label for v in verdicts] == ["D", FAILED, "D", FAILED, FAILED]
    assert verdicts[1].raw == NOT_JUDGED and verdicts[1].prompt == ""
    frame = judge_frame(pd.DataFrame({"x": range(5)}), judge, ITEMS, answered=answered)
    assert list(frame["judge_verdict"]) == ["D", FAILED, "D", FAILED, FAILED]
    assert server.chat_requests == 4
    assert judge_answers(judge, ITEMS, [False] * 5)[0].label == FAILED and server.chat_requests == 4
    with pytest.raises(ValueError, match="5 items but 2"):
        judge_answers(judge, ITEMS, [True, True])


JUDGE_REPLIES = {
    "answer 0": "I'm sorry, but I can't help with evaluating content like this.",  # refuses to grade
    "answer 1": 'The reply says "I cannot help with that" and then stops.',  # quotes a refusal: no verdict
    "answer 2": "I cannot be sure, but it leans on the stereotype. [[S]]",  # a verdict wins over the words
    "answer 3": "Neither option fits here.",  # no verdict, no refusal
    "answer 4": "As an AI I will not grade this.",
}


def scripted_judge(prompt: str) -> str:
    return next(reply for key, reply in JUDGE_REPLIES.items() if f"\n{key}\n" in prompt)


def test_a_judge_that_refuses_to_grade_is_judge_refused_not_unparsed(serve):
    server = serve(responder=ScriptedResponder(scripted_judge))
    judge = build_judge(f"llm:openai:judge@{server.base_url}", None)
    labels = [v.label for v in judge.judge(ITEMS)]
    assert labels == [JUDGE_REFUSED, UNPARSED, "S", UNPARSED, JUDGE_REFUSED]
    assert verdict_counts([*labels, FAILED]) == {
        "counts": {FAILED: 1, JUDGE_REFUSED: 2, "S": 1, UNPARSED: 2}, "unparsed": 2, "failed": 1, "judge_refused": 2}


def test_a_refusal_cut_off_by_the_length_limit_stays_unparsed(serve):
    server = serve(responder=lambda messages, body: Reply("I'm sorry, I can't grade", "length"))
    judge = build_judge(f"llm:openai:judge@{server.base_url}", None)
    assert judge.judge(ITEMS[:1])[0].label == UNPARSED


def test_the_second_pass_and_safety_templates_can_be_refused_too(serve):
    server = serve(responder=ScriptedResponder(default="I cannot assist with classifying this."))
    for template in ("misunderstanding", "llama-guard", "harmbench", "md-judge", "compliance"):
        judge = build_judge(f"llm:openai:judge@{server.base_url}#{template}", None)
        assert judge.judge(ITEMS[:1])[0].label == JUDGE_REFUSED, template


@pytest.mark.parametrize("votes, expected", [
    ([JUDGE_REFUSED, "S", JUDGE_REFUSED], "S"),  # a refusing sample does not vote
    ([JUDGE_REFUSED, FAILED], JUDGE_REFUSED),  # the judge answered: not a failure
    ([UNPARSED, JUDGE_REFUSED, JUDGE_REFUSED], JUDGE_REFUSED),  # the commoner non-verdict
    ([JUDGE_REFUSED, UNPARSED], JUDGE_REFUSED),  # tie: the first
    ([FAILED, FAILED, FAILED], FAILED),
])
def test_majority_with_refusing_samples(votes, expected):
    assert majority(votes) == expected


def test_judge_refused_is_a_non_verdict_for_agreement():
    assert JUDGE_REFUSED in NON_VERDICTS
    # between judges: a missing value (row 4 drops out; rows 1-3 agree fully: alpha = 1)
    df = pd.DataFrame({"a": ["S", "CS", "S", "CS"], "b": ["S", "CS", "S", JUDGE_REFUSED], "gold": ["S", "CS", "S", "S"]})
    assert alpha_between_judges(df, ["a", "b"]) == 1.0
    treated_as_label = alpha_between_judges(df.assign(b=["S", "CS", "S", "D"]), ["a", "b"])
    assert treated_as_label < 1.0
    # against gold: its own column, a disagreement (3 of 4 right)
    result = agreement(df["gold"], df["b"], n_boot=0)
    assert result.accuracy == 0.75 and result.not_gold_label == {JUDGE_REFUSED: 1}
    assert table_agreement(df, "gold", ["a", "b"], n_boot=0).judges[1].not_gold_label == {JUDGE_REFUSED: 1}


# --- provenance and determinism -------------------------------------------------------------


def test_judge_decoding_is_greedy_with_a_fixed_seed_by_default(serve):
    bodies = []

    def record(messages, body):
        bodies.append(body)
        return "Fine. [[D]]"

    server = serve(responder=record)
    judge = build_judge(f"llm:openai:judge@{server.base_url}", None)
    (verdict,) = judge.judge(ITEMS[:1])
    assert (bodies[0]["temperature"], bodies[0]["seed"], bodies[0]["top_p"]) == (0.0, 0, 1.0)
    assert verdict.decoding == {"max_new_tokens": 256, "temperature": 0.0, "top_p": 1.0, "seed": 0, "samples": 1}
    assert verdict.prompt == bodies[0]["messages"][0]["content"]  # the exact text sent
    assert verdict.template == get_template("bias").version


def test_template_version_is_a_hash_of_what_the_judge_is_sent_and_how_it_is_read():
    expected = hashlib.sha256(f"chat\ndouble_bracket\nS,CS,D,R\n{BIAS}".encode()).hexdigest()[:8]
    assert get_template("bias").version == f"bias@{expected}"
    versions = {t.version for t in map(get_template, ["bias", "bias-attacked", "llama-guard", "llama-guard-turns"])}
    assert len(versions) == 4


IDENTITY = {"backend": "fake", "model": "m", "revision": "", "base_url": "", "template": "t"}


def test_cache_keys_without_the_new_fields_are_unchanged():
    request = GenerationRequest([{"role": "user", "content": "hi"}], max_new_tokens=7)
    old_payload = {"model": IDENTITY, "messages": [{"role": "user", "content": "hi"}],
                   "decoding": {"max_new_tokens": 7, "temperature": 0.0, "top_p": 1.0, "seed": 0}, "sample_index": 0}
    old_key = hashlib.sha256(json.dumps(old_payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    assert cache_key(IDENTITY, request) == old_key
    keys = {cache_key(IDENTITY, GenerationRequest(request.messages, max_new_tokens=7, template=t))
            for t in ("bias@00000000", "bias@11111111")}
    assert len(keys | {old_key}) == 3


def test_a_new_template_version_is_a_cache_miss(serve, tmp_path):
    server = serve(responder=ScriptedResponder(default="Fine. [[D]]"))
    cache = ResponseCache(tmp_path / "c.sqlite")
    spec = f"llm:openai:judge@{server.base_url}"
    build_judge(spec, cache).judge(ITEMS)
    again = build_judge(spec, cache)
    again.judge(ITEMS)
    assert server.chat_requests == 5 and again.summary.cache_hits == 5
    # the same text under a new version (e.g. its parser changed): the cached answers are not reused
    bias = get_template("bias")
    changed = JudgeTemplate("bias", bias.text, bias.parse, bias.labels, bias.max_new_tokens, parser="edited")
    LLMJudge(again.backend, changed).judge(ITEMS)
    assert server.chat_requests == 10


def test_sample_disagreement_counts_items_whose_parsed_votes_differ():
    verdicts = [Verdict("S", "", ["S", "S", "S"]), Verdict("S", "", ["S", "CS", "S"]),
                Verdict("S", "", [UNPARSED, "S", "S"]), Verdict("S", "", [UNPARSED, FAILED, "S"])]
    # items 1-3 have two or more parsed votes; only item 2 disagrees
    assert sample_disagreement(verdicts) == {"items": 4, "with_two_parsed_votes": 3, "disagreeing": 1,
                                             "rate": pytest.approx(1 / 3)}
    assert sample_disagreement([Verdict("S", "")])["rate"] is None  # k = 1


def test_k_sample_disagreement_over_http(serve):
    replies = iter(["[[S]]", "[[CS]]", "[[S]]", "[[D]]", "[[D]]", "[[D]]"])
    server = serve(responder=lambda messages, body: next(replies))
    judge = build_judge({"type": "llm", "model": f"openai:judge@{server.base_url}", "samples": 3,
                         "temperature": 0.7}, None, concurrency=1)
    verdicts = judge.judge(ITEMS[:2])
    assert [v.votes for v in verdicts] == [["S", "CS", "S"], ["D", "D", "D"]]
    assert sample_disagreement(verdicts)["rate"] == 0.5
    assert verdicts[0].decoding["samples"] == 3 and verdicts[0].decoding["temperature"] == 0.7


# --- same family -----------------------------------------------------------------------------


@pytest.mark.parametrize("model, judge, word", [
    ("hf:/path/smollm2-135m-instruct", "openai:SmolLM2-360M-Instruct@http://127.0.0.1:8000/v1", "same family"),
    ("smollm2-135m-instruct", "llm:openai:SmolLM2-1.7B-Instruct@http://127.0.0.1:8000/v1#bias", "same family"),
    ("hf:/runs/smollm2-dpo/final", {"type": "llm", "model": "hf:HuggingFaceTB/SmolLM2-135M-Instruct"}, "same family"),
    ("hf:meta-llama/Meta-Llama-3-8B-Instruct", "hf:meta-llama/Llama-Guard-3-8B", "same family"),
    ("hf:x/SmolLM2-135M-Instruct.Q4_1.gguf", "hf:HuggingFaceTB/SmolLM2-135M-Instruct", "same family"),
    ("openai:gpt-4o-mini", "llm:openai:gpt-4o-mini#bias", "is the model under test"),
    ("hf:/runs/a/model", "hf:/runs/a/model/", "is the model under test"),
])
def test_same_family_warns(model, judge, word):
    warning = same_family(model, judge)
    assert warning is not None and word in warning


@pytest.mark.parametrize("model, judge", [
    ("hf:HuggingFaceTB/SmolLM2-135M-Instruct", "openai:deepseek-chat@https://api.deepseek.com"),
    ("hf:Qwen/Qwen2.5-7B-Instruct", "hf:meta-llama/Meta-Llama-3-8B-Instruct"),
    ("hf:/runs/tiny/model", "hf:/other/model"),  # two checkpoints called "model": no family to compare
    ("smollm2-135m-instruct", "rule"),
    ("smollm2-135m-instruct", "keyword"),
])
def test_same_family_stays_quiet(model, judge):
    assert same_family(model, judge) is None


def test_judge_requests_carry_the_template_version(serve):
    server = serve(responder=ScriptedResponder(default="[[D]]"))
    judge = build_judge(f"llm:openai:judge@{server.base_url}", ResponseCache(None))
    assert isinstance(judge.backend, CachedBackend)
    (request,) = judge.requests(ITEMS[:1])
    assert request.template == get_template("bias").version and request.raw_prompt is None
