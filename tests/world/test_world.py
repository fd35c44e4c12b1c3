"""``robalign world build``: every world reply is read by the rule judge as its type, the
files load with robalign's own readers (bench prompts, pairs, harmful table), the corpus
follows the soft labels (hand-worked counts), the split is by prompt, a build is
deterministic, configs are checked, and a one-hot world's planted safety comes out of
``bench clear-bias`` exactly."""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest

import robalign.world
from robalign.bench.attacks import ATTACKS
from robalign.bench.prompts import CATEGORIES, load_prompt_set
from robalign.config import ConfigError
from robalign.errors import UserError
from robalign.evaluation.judges import JudgeItem, RuleJudge
from robalign.evaluation.rules import bias_rule_verdict, is_refusal
from robalign.world.build import build_world
from robalign.world.config import load_world_config
from robalign.world.prompts import bias_prompts, requests
from robalign.world.records import draw_types
from robalign.world.templates import BIAS_FORMS, BIAS_TYPES, REQUEST_FORMS, bias_reply, request_reply

DEFAULT_YAML = Path(__file__).resolve().parents[2] / "configs" / "world" / "default.yaml"
# default sizes, worked by hand: 10 categories x 2 tasks x 10 prompts; round(0.2 * 10) = 2 held out
# per (category, task); 6 attacks x 3 variants; 6 harm categories x 5 harmful and 5 harmless requests,
# round(0.2 * 5) = 1 of each held out per category
BASE, HELD, ATTACKS_PER_PROMPT, REQUESTS, HELD_REQUESTS = 200, 40, 18, 60, 12


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return build_world(load_world_config(DEFAULT_YAML), tmp_path_factory.mktemp("world") / "w").out


def test_the_package_table_names_every_module():
    import pkgutil

    names = [m.name for m in pkgutil.iter_modules(robalign.world.__path__)]
    missing = [n for n in names if not re.search(rf"\b{n}\b", robalign.world.__doc__)]
    assert not missing, f"add {missing} to the module table in robalign/world/__init__.py"


def test_the_rule_judge_reads_every_world_reply_as_its_type():
    """All 200 default prompts x 4 types x 6 forms, judged on the plain prompt and, as an
    attacked answer (Base64 decoding on), through RuleJudge; every request reply by keywords."""
    prompts = bias_prompts(10, 0.2, 0)
    items, wanted = [], []
    for p in prompts:
        attacked = ATTACKS["obfuscation"].apply(p.prompt, "v3")
        for kind in BIAS_TYPES:
            for form in range(BIAS_FORMS):
                reply = bias_reply(p, kind, form)
                label, why = bias_rule_verdict(p.prompt.prompt, reply, p.prompt.stereotype, p.prompt.counter_stereotype)
                assert label == kind, (p.prompt.id, kind, form, reply, why)
                items.append(JudgeItem(attacked, reply, p.prompt.stereotype, p.prompt.counter_stereotype,
                                       base_prompt=p.prompt.prompt))
                wanted.append(kind)
    assert len(items) == 200 * 4 * 6
    assert [v.label for v in RuleJudge().judge(items)] == wanted
    for q in requests(5, 0.2, 0):
        for kind in ("C", "R") if q.kind == "harmful" else ("H", "R"):
            for form in range(len(REQUEST_FORMS[kind])):
                assert (is_refusal(request_reply(q.request, kind, form)) is not None) == (kind == "R"), (q.id, kind)


def test_prompts_balance_the_stereotype_position_and_cover_every_trait():
    prompts = bias_prompts(10, 0.2, 0)
    for category in CATEGORIES:
        for task in ("CTO", "SC"):
            group = [p for p in prompts if p.prompt.category == category and p.prompt.task == task]
            assert Counter(p.stereotype_letter for p in group) == {"A": 5, "B": 5}
            traits = {t for f in robalign.world.vocabulary.FRAMES[category] for t in f.traits}
            assert {p.trait for p in group} == traits  # 6-8 traits, 10 prompts: round-robin covers all
            assert len({p.prompt.prompt for p in group}) == 10
            assert sum(p.heldout for p in group) == 2


def test_the_clear_bias_export_loads_with_every_generated_attack(world):
    prompt_set = load_prompt_set(world / "clear_bias")
    ours = {p.prompt.id: p.prompt for p in bias_prompts(10, 0.2, 0)}
    assert {p.id: p for p in prompt_set.prompts} == ours  # same ids, text and stereotype fields
    assert Counter((p.category, p.task) for p in prompt_set.prompts) == {(c, t): 10 for c in CATEGORIES
                                                                          for t in ("CTO", "SC")}
    names = [n for n, a in ATTACKS.items() if not a.needs_translator]
    assert sorted(prompt_set.stored) == sorted((n, v) for n in names for v in ("v1", "v2", "v3"))
    for (attack, variant), rows in prompt_set.stored.items():
        assert len(rows) == BASE
        for pid, attacked in rows.items():
            assert attacked.prompt == ATTACKS[attack].apply(ours[pid], variant)
    info = json.loads((world / "world.json").read_text())
    assert "machine_translation" in info["attacks"]["left_out"] and len(info["attacks"]["included"]) == 18


def test_pairs_load_with_robalign_reader_and_prefer_safe_replies(world):
    from robalign.data.preference import load_pairs

    train, held = load_pairs(str(world / "pairs" / "train.jsonl")), load_pairs(str(world / "pairs" / "eval.jsonl"))
    # per prompt 2 pairs: (160 + 160 x 18) bias + 24 harmful + 24 harmless in train
    assert len(train) == 2 * ((BASE - HELD) * (1 + ATTACKS_PER_PROMPT) + (REQUESTS - HELD_REQUESTS))
    assert len(held) == 2 * (HELD * (1 + ATTACKS_PER_PROMPT) + HELD_REQUESTS)
    rows = _jsonl(world / "pairs" / "train.jsonl")
    assert [r["id"] for r in rows] == [p.id for p in train]
    by_id = load_prompt_set(world / "clear_bias").by_id()
    for r in rows:
        meta = r["meta"]
        if meta["kind"] == "bias":
            assert meta["chosen_type"] in ("D", "R") and meta["rejected_type"] in ("S", "CS")
            base = by_id[r["id"].split("|")[0].split("#")[0]]
            for side in ("chosen", "rejected"):
                label, _ = bias_rule_verdict(base.prompt, r[side], base.stereotype, base.counter_stereotype)
                assert label == meta[f"{side}_type"]
        else:
            want = ("R", "C") if meta["kind"] == "harmful" else ("H", "R")
            assert (meta["chosen_type"], meta["rejected_type"]) == want


def test_the_corpus_follows_the_soft_labels(world):
    """AGE base (.6, .1, .2, .1) x 20 draws: exactly 12 S, 2 CS, 4 D, 2 R on every plain AGE
    prompt (systematic draws). Attacked AGE (.7, .1, .15, .05) x 5 = (3.5, .5, .75, .25): each
    prompt's count is the floor or the ceiling, and over the 20 x 18 = 360 attacked AGE prompts
    the totals (1260, 180, 270, 90) are met to within 40 (each prompt is off by less than 1,
    independently, mean 0: the standard deviation of a total is below 10)."""
    rows = _jsonl(world / "corpus" / "train.jsonl") + _jsonl(world / "corpus" / "heldout.jsonl")
    assert len(rows) == BASE * (20 + ATTACKS_PER_PROMPT * 5) + REQUESTS * 20
    per_prompt: dict[str, Counter] = {}
    for r in rows:
        per_prompt.setdefault(r["prompt_id"], Counter())[r["type"]] += 1
        assert [m["role"] for m in r["messages"]] == ["user", "assistant"]
    age = {pid: c for pid, c in per_prompt.items() if pid.startswith("age/")}
    assert len(age) == 20 * 19
    for pid, counts in age.items():
        if "|" not in pid:
            assert counts == {"S": 12, "CS": 2, "D": 4, "R": 2}, pid
        else:
            for kind, expected in {"S": 3.5, "CS": 0.5, "D": 0.75, "R": 0.25}.items():
                assert int(expected) <= counts[kind] <= int(expected) + 1, (pid, counts)
    totals = sum((c for pid, c in age.items() if "|" in pid), Counter())
    for kind, expected in {"S": 1260, "CS": 180, "D": 270, "R": 90}.items():
        assert abs(totals[kind] - expected) <= 40, totals
    harmless = [r for r in rows if r["kind"] == "harmless"]
    assert {r["type"] for r in harmless} == {"H"} and len(harmless) == 30 * 20
    harmful = Counter(r["type"] for r in rows if r["kind"] == "harmful")
    assert harmful == {"R": 30 * 16, "C": 30 * 4}  # 20 x (.8, .2) per request
    info = json.loads((world / "world.json").read_text())
    assert info["counts"]["corpus_types"]["AGE"]["base"] == {"CS": 40, "D": 80, "R": 40, "S": 240}


def test_the_split_is_by_prompt_and_attacks_follow_their_base(world):
    info = json.loads((world / "world.json").read_text())
    held = set(info["heldout"]["bias"]) | set(info["heldout"]["requests"])
    assert len(info["heldout"]["bias"]) == HELD and len(info["heldout"]["requests"]) == HELD_REQUESTS
    for name, (train, evaluation) in {"corpus": ("train", "heldout"), "pairs": ("train", "eval"),
                                      "judge": ("train", "eval")}.items():
        for split, inside in ((train, False), (evaluation, True)):
            for r in _jsonl(world / name / f"{split}.jsonl"):
                key = r.get("prompt_id") or r["id"]
                assert (key.split("|")[0].split("#")[0] in held) == inside, (name, split, key)
    train_ids = {r["prompt_id"] for r in _jsonl(world / "corpus" / "train.jsonl")}
    assert len(train_ids) == (BASE - HELD) * 19 + REQUESTS - HELD_REQUESTS


def test_judge_examples_are_balanced_and_labelled_right(world, shared_data):
    train, held = _jsonl(world / "judge" / "train.jsonl"), _jsonl(world / "judge" / "eval.jsonl")
    # per plain prompt 2 per label, plus 1 attacked version with 1 per label
    assert Counter(r["label"] for r in train) == {k: (BASE - HELD) * 3 for k in BIAS_TYPES}
    assert Counter(r["label"] for r in held) == {k: HELD * 3 for k in BIAS_TYPES}
    attacked = [r for r in train + held if r["attack"]]
    assert len(attacked) == BASE * 4 and all(r["base_prompt"] and r["base_prompt"] != r["prompt"] for r in attacked)
    for r in train + held:
        label, _ = bias_rule_verdict(r["base_prompt"] or r["prompt"], r["response"], r["stereotype"],
                                     r["counter_stereotype"])
        assert label == r["label"], r
    assert {r["id"].rsplit("#", 1)[1] for r in train} == {f"{k}{f}" for k in BIAS_TYPES for f in range(BIAS_FORMS)}
    # nothing from the CLEAR-Bias control set or its prompts
    import pandas as pd

    control = pd.concat([pd.read_csv(p) for p in (shared_data / "clear_bias" / "control_set").glob("*.csv")])
    assert not set(control["PROMPT"]) & {r["prompt"] for r in train + held}
    # replies coincide only where a reply is the bare option ("ELDERLY", "(A): The gay man"): two
    # benchmarks that name the same groups answer that way alike
    options = {o for r in train + held for o in (r["stereotype"], r["counter_stereotype"])}
    shared = set(control["RESPONSE"]) & {r["response"] for r in train + held}
    assert all(re.sub(r"^\([AB]\): ", "", reply) in options for reply in shared), shared


def test_the_harmful_table_loads_for_bench_harmful(world):
    from robalign.bench.harmful_data import load_harmful_set

    data = load_harmful_set(str(world / "harmful" / "prompts.csv"))
    assert data.counts() == {"unsafe": 30, "safe": 30}
    assert {p.category for p in data.prompts} == {"theft", "fraud", "violence", "privacy", "hacking", "weapons"}


def test_two_builds_are_byte_identical_and_the_seed_matters(world, tmp_path):
    again = build_world(load_world_config(DEFAULT_YAML), tmp_path / "again").out
    files = sorted(p.relative_to(world) for p in world.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        if rel.name != "world.json":
            assert (world / rel).read_bytes() == (again / rel).read_bytes(), rel
    first, second = (json.loads((d / "world.json").read_text()) for d in (world, again))
    assert first.pop("build_seconds") >= 0 and second.pop("build_seconds") >= 0
    assert first == second and first["checkpoints"] == []
    other = build_world(load_world_config(DEFAULT_YAML, ["seed=1"]), tmp_path / "other").out
    assert (other / "corpus" / "train.jsonl").read_bytes() != (world / "corpus" / "train.jsonl").read_bytes()
    assert json.loads((other / "world.json").read_text())["fingerprint"] != first["fingerprint"]


def test_draws_systematic_counts_are_floor_or_ceiling():
    dist = {"S": 0.6, "CS": 0.1, "D": 0.2, "R": 0.1}
    for seed in range(50):
        assert Counter(draw_types(dist, 20, random.Random(seed), "systematic")) == {"S": 12, "CS": 2, "D": 4, "R": 2}
        two = Counter(draw_types({"S": 0.5, "CS": 0.5, "D": 0.0, "R": 0.0}, 2, random.Random(seed), "systematic"))
        assert two == {"S": 1, "CS": 1}
    iid = Counter(draw_types(dist, 20, random.Random(0), "iid"))
    assert sum(iid.values()) == 20 and iid != {"S": 12, "CS": 2, "D": 4, "R": 2}  # seed 0 draws differ


def test_configs_merge_one_category_and_refuse_mistakes(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text("soft_labels:\n  AGE:\n    base: {S: 0.0, CS: 0.0, D: 1.0, R: 0.0}\n")
    from robalign.world.config import DEFAULT_SOFT_LABELS, resolved_soft_labels

    labels = resolved_soft_labels(load_world_config(path))
    assert labels["AGE"]["base"]["D"] == 1.0 and labels["AGE"]["attacked"] == DEFAULT_SOFT_LABELS["AGE"]["attacked"]
    assert labels["GENDER"] == DEFAULT_SOFT_LABELS["GENDER"]
    bad = [(["soft_labels.AGE.base={S: 0.5, CS: 0.1, D: 0.1, R: 0.1}"], r"soft_labels.AGE.base.*sum to 0.8"),
           (["soft_labels.AGES.base={S: 1, CS: 0, D: 0, R: 0}"], r"soft_labels.AGES: unknown category"),
           (["prompts.attacks=[machine_translation]"], r"prompts.attacks: machine_translation needs a translator"),
           (["prompts.attacks=[obfuscation:v9]"], r"prompts.attacks: obfuscation has no variant 'v9'"),
           (["corpus.sampling=stratified"], r"corpus.sampling"), (["corpus.draws_base=0"], r"corpus.draws_base"),
           (["requests.soft_label={R: 1.0}"], r"requests.soft_label: give exactly the keys R, C"),
           (["corpus.draw_base=3"], r"Did you mean 'draws_base'")]
    for overrides, message in bad:
        with pytest.raises(ConfigError, match=message):
            load_world_config(None, overrides)
    with pytest.raises(UserError, match="per_category=99.*only 63 distinct CTO prompts for AGE"):
        build_world(load_world_config(None, ["prompts.per_category=99"]), tmp_path / "big")


def _cli(argv: list[str]) -> int:
    from robalign.cli import world as cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(argv))


def test_cli_builds_prints_and_guards_an_existing_world(tmp_path, capsys):
    out = tmp_path / "w"
    small = ["prompts.per_category=2", "prompts.attacks=[prefix_injection:v1]", "requests.per_category=1"]
    assert _cli(["build", "--out", str(out), *small]) == 0
    printed = capsys.readouterr().out
    # 2 prompts per (category, task): round(0.2 x 2) = 0, raised to 1 held out -> 20 train, 20 held out, each
    # with 20 + 1 x 5 rows; 1 request per harm category and kind (12, none held out: one must stay) x 20 rows
    assert re.search(r"corpus/train.jsonl\s+740\b", printed) and re.search(r"corpus/heldout.jsonl\s+500\b", printed)
    assert re.search(r"clear_bias/jailbreak_prompts/ \(2 files\)\s+40\b", printed) and "built in" in printed
    with pytest.raises(UserError, match="already holds a world; pass --overwrite"):
        _cli(["build", "--out", str(out), *small])
    assert _cli(["build", "--out", str(out), "--overwrite", *small, "seed=3"]) == 0
    assert json.loads((out / "world.json").read_text())["seed"] == 3
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds no world"):
        _cli(["build", "--out", str(tmp_path / "other")])


def test_token_lengths_add_up_to_the_chat_rendering(world, tiny_tokenizer):
    from robalign.world.lengths import read_corpus, token_lengths

    rows = read_corpus(world)[:300]
    lengths = token_lengths(rows, tiny_tokenizer, context=512)
    for group, stats in lengths.items():
        group_rows = [r for r in rows if (r["kind"] if r["kind"] != "bias" else
                                          (f"{r['attack']}:{r['variant']}" if r["attack"] else "base")) == group]
        full = [len(tiny_tokenizer(tiny_tokenizer.apply_chat_template(r["messages"], tokenize=False),
                                   add_special_tokens=False, verbose=False)["input_ids"]) for r in group_rows]
        assert stats["rows"] == len(group_rows) and stats["total_max"] == max(full)
        assert stats["over_context"] == sum(n > 512 for n in full)


def test_a_one_hot_world_gives_its_planted_safety_through_bench(tmp_path):
    """Soft labels of one type each; a loopback model answers every prompt with its corpus
    reply. Base: AGE all S and GENDER all CS -> sigma 0 (not attacked); DISABILITY D, attacked S;
    ETHNICITY R, attacked R; the 6 others D, attacked D -> sigma 1. Model score 8/10 = 0.8.
    prefix_injection:v1 on the 8 attacked categories: DISABILITY sigma^a 0 (effectiveness 1),
    the 7 others 1 (0): attack effectiveness 1/8 = 0.125."""
    from robalign.cli import main
    from robalign.evaluation.server import LocalOpenAIServer

    one = {"S": "{S: 1, CS: 0, D: 0, R: 0}", "CS": "{S: 0, CS: 1, D: 0, R: 0}", "D": "{S: 0, CS: 0, D: 1, R: 0}",
           "R": "{S: 0, CS: 0, D: 0, R: 1}"}
    plan = {c: ("D", "D") for c in CATEGORIES} | {"AGE": ("S", "S"), "GENDER": ("CS", "CS"),
                                                   "DISABILITY": ("D", "S"), "ETHNICITY": ("R", "R")}
    overrides = ["prompts.per_category=2", "prompts.attacks=[prefix_injection:v1]", "corpus.draws_base=1",
                 "corpus.draws_attacked=1", "requests.per_category=1"]
    overrides += [f"soft_labels.{c}.{side}={one[kind]}" for c, kinds in plan.items()
                  for side, kind in zip(("base", "attacked"), kinds)]
    world = build_world(load_world_config(None, overrides), tmp_path / "w").out
    from robalign.world.lengths import read_corpus

    replies = {r["messages"][0]["content"]: r["messages"][1]["content"] for r in read_corpus(world)}
    with LocalOpenAIServer(lambda messages, body: replies[messages[-1]["content"]]) as server:
        assert main(["bench", "clear-bias", "--model", f"openai:mut@{server.base_url}", "--judge", "rule",
                     "--data", str(world / "clear_bias"), "--attacks", "prefix_injection:v1", "--n-boot", "20",
                     "--out", str(tmp_path / "run"), "--cache", str(tmp_path / "c.sqlite"),
                     "-o", "max_retries=0"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["model_score"] == pytest.approx(0.8)
    assert {c["category"] for c in summary["category_safety"] if c["attacked"]} == set(CATEGORIES) - {"AGE", "GENDER"}
    per_attack = {a["attack"]: a for a in summary["attack"]["per_attack"]}
    assert per_attack["prefix_injection"]["effectiveness"] == pytest.approx(0.125)
