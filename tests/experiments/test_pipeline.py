"""The sweep cell pipeline end to end on a tiny world: prepare (world build, pre-training at two
durations, idempotent), a `none` cell and a DPO cell (align -> clear-bias with the rule judge and
an LLM judge over real HTTP on loopback -> harmful), the metric names of the contract, samples
that carry labels, and a re-run that reuses every finished stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from robalign.errors import UserError
from robalign.evaluation.server import LocalOpenAIServer, ScriptedResponder
from robalign.evaluation.tables import read_table
from robalign.experiments import pipeline
from robalign.experiments.sweep import expand, load_sweep_config

# 2 base prompts per (category, task) = 40, two attacks the world writes and the bench runs
TINY_WORLD = ["prompts.per_category=2", "corpus.draws_base=4", "corpus.draws_attacked=1",
              "prompts.attacks=[prefix_injection:v1, refusal_suppression:v1]", "requests.per_category=2",
              "requests.draws=4", "pairs.per_prompt=1", "judge.per_label=1"]
STEPS, BATCH = 4, 4  # DPO steps and pairs per step: 16 distinct training pairs (< 1 epoch)


def tiny_sweep(tmp: Path, judges: list[str], **extra) -> dict:
    return {
        "name": "pipe", "lane": "world", "out": str(tmp / "out"),
        "world": {"overrides": TINY_WORLD},
        "pretrain": {"size": "nano", "cooldown": 5, "threads": 1},
        "train": {"config": "configs/train/dpo_world.yaml",
                  "overrides": [f"training.max_steps={STEPS}", f"training.per_device_batch_size={BATCH}",
                                "training.save_steps=2"]},
        "methods": {"dpo": {}},
        "grid": {"method": ["none", "dpo"], "pretrain.steps": [10, 20], "data.noise_rate": [0.0, 0.5]},
        "skip": ["method=none and data.noise_rate>0"],
        "bench": {"clear_bias": {"judges": judges, "max_new_tokens": 16},
                  "harmful": {"judge": "keyword", "max_new_tokens": 16}},
        **extra,
    }


def load(tmp: Path, config: dict, name: str = "sweep.yaml"):
    path = tmp / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return load_sweep_config(path)


@pytest.fixture(scope="module")
def judge_server():
    """An LLM judge that answers D to everything (over HTTP, through the openai backend)."""
    with LocalOpenAIServer(ScriptedResponder(default="The answer takes no side.\n[[D]]")) as server:
        yield server


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, judge_server):
    tmp = tmp_path_factory.mktemp("pipeline")
    sweep = load(tmp, tiny_sweep(tmp, ["rule", f"llm:openai:judge@{judge_server.base_url}"]))
    messages: list[str] = []
    pipeline.prepare(sweep, messages.append)
    return sweep, messages


def test_prepare_builds_the_world_and_a_checkpoint_at_each_duration_once(prepared):
    sweep, messages = prepared
    world = sweep.out_dir / "world"
    record = json.loads((world / "world.json").read_text())
    assert [c["steps"] for c in record["checkpoints"]] == [10, 20]  # one run, saved every gcd(10, 20)
    assert all(c["cooldown"] == 5 for c in record["checkpoints"])
    assert any(m.startswith("world ") for m in messages) and any(m.startswith("pretrain ") for m in messages)
    again: list[str] = []
    pipeline.prepare(sweep, again.append)
    assert again == [] and json.loads((world / "world.json").read_text()) == record


def test_a_grid_step_the_world_never_saved_is_refused(prepared, tmp_path):
    sweep, _ = prepared
    config = tiny_sweep(tmp_path, ["rule"], world={"dir": str(sweep.out_dir / "world"), "overrides": TINY_WORLD})
    config["grid"]["pretrain.steps"] = [15, 20]  # 15 < 20, the last checkpoint, and was not saved
    with pytest.raises(UserError, match=r"checkpoints at steps \[10, 20\].*\[15\]"):
        pipeline.prepare(load(tmp_path, config))
    other = tiny_sweep(tmp_path, ["rule"], world={"dir": str(sweep.out_dir / "world"),
                                                  "overrides": [*TINY_WORLD, "seed=1"]})
    with pytest.raises(UserError, match="another config"):  # the sweep asks for a world that is not there
        pipeline.prepare(load(tmp_path, other, "other.yaml"))


def cell(sweep, label: str):
    return next(c for c in expand(sweep) if c.label == label)


def test_none_and_dpo_cells_give_the_contract_metrics_and_labelled_samples(prepared):
    sweep, _ = prepared
    world = sweep.out_dir / "world"
    none = cell(sweep, "method=none steps=20 noise_rate=0.0 seed=0")
    base = pipeline.run_cell(sweep, none, sweep.out_dir / "cells" / none.id, lambda _: None)
    m = base.metrics
    assert not any(k.startswith("train/") for k in m)  # no alignment
    assert (m["pretrain/steps"], base.provenance["model"]) == (20, str(world / "models" / "step_20"))
    for name in ("clear_bias/safety", "clear_bias/base/safety", "clear_bias_llm/safety", "judges/kappa",
                 "harmful/compliance", "harmful/refusal", "clear_bias/category/AGE/safety"):
        assert set(m[name]) == {"value", "low", "high", "n"}, name
    assert m["clear_bias_llm/unparsed"] == 0  # the scripted judge always gives a verdict

    # samples: every answer under both judges, then every request
    rule = read_table(sweep.out_dir / "cells" / none.id / "clear_bias" / "responses.jsonl")
    llm = read_table(sweep.out_dir / "cells" / none.id / "clear_bias_llm" / "responses.jsonl")
    requests = read_table(world / "harmful" / "prompts.csv")
    assert m["clear_bias/unparsed"] == (rule["verdict"] == "UNPARSED").sum()
    by_bench = {b: [s for s in base.samples if s["benchmark"] == b] for b in ("clear_bias", "harmful")}
    assert len(by_bench["clear_bias"]) == len(rule) + len(llm) and len(by_bench["harmful"]) == len(requests)
    assert {s["label"] for s in by_bench["clear_bias"]} <= {"S", "CS", "D", "R", "UNPARSED"}
    assert {s["judge"] for s in by_bench["clear_bias"]} == {"rule", f"llm:openai:judge@{prepared_url(sweep)}#bias"}
    assert {s["attack"] for s in by_bench["clear_bias"]} <= {"", "prefix_injection:v1", "refusal_suppression:v1"}
    assert {s["label"] for s in by_bench["harmful"]} <= {"safe", "unsafe", "R", "NR"}

    # the LLM judge says D to everything: agreement = the rule judge's share of D on the same
    # answers (the LLM judge attacks every category, the rule judge only those its gate passes)
    shared = rule[rule["row_id"].isin(set(llm["row_id"]))]
    assert m["judges/agreement"]["value"] == pytest.approx((shared["verdict"] == "D").mean())
    assert m["judges/agreement"]["n"] == len(shared)
    kappa = m["judges/kappa"]["value"]  # a constant rater agrees no more than chance: 0, or NaN if both constant
    assert kappa is None or kappa == pytest.approx(0.0, abs=1e-12)

    dpo = cell(sweep, "method=dpo steps=20 noise_rate=0.5 seed=0")
    messages: list[str] = []
    result = pipeline.run_cell(sweep, dpo, sweep.out_dir / "cells" / dpo.id, messages.append)
    m = result.metrics
    for name in ("train/eval/rewards/accuracies", "train/noisy/rewards/accuracies"):
        assert set(m[name]) == {"value", "low", "high", "n"} and 0 <= m[name]["value"] <= 1
    assert m["train/noisy/pairs"] == STEPS * BATCH  # every pair the 4 steps drew, once
    assert m["train/eval/pairs"] == m["train/eval/rewards/accuracies"]["n"] == len(read_table(world / "pairs" / "eval.jsonl"))
    assert m["train/steps"] == STEPS and m["train/seconds"] > 0
    info = json.loads(Path(result.provenance["train_run"]).read_text())
    assert info["noise_rate"] == 0.5 and len(info["flipped_ids"]) == round(0.5 * info["train_pairs"])
    assert result.provenance["train_config"]["model"]["name_or_path"] == str(world / "models" / "step_20")
    # the noisy pairs' reference log-probs were all in the per-sequence cache after training
    assert result.provenance["noisy_eval"]["reference_sequences_computed"] == 0
    assert result.provenance["model"] == str(sweep.out_dir / "cells" / dpo.id / "train" / "model")

    # again: the finished training is read back, every answer comes from the cache
    again = pipeline.run_cell(sweep, dpo, sweep.out_dir / "cells" / dpo.id, messages.append)
    assert any(msg.startswith("align: reusing") for msg in messages)
    assert again.metrics == m
    summary = json.loads((sweep.out_dir / "cells" / dpo.id / "clear_bias" / "summary.json").read_text())
    assert summary["costs"]["actual"]["by_backend"]["model"]["cache_misses"] == 0


def test_clear_bias_metrics_by_hand():
    """Model-level robustness and fairness are averaged as the bench averages safety: over a
    category's tasks with answers, then over categories. AGE: CTO (ρ .5, φ 1), SC (ρ 1, φ .5);
    RELIGION: CTO (ρ 0, φ 0), SC without answers. ρ = mean(.75, 0) = .375, φ = mean(.75, 0) = .375."""
    def cell(category, task, rho, phi, n):
        return {"category": category, "task": task, "robustness": rho, "fairness": phi, "counts": {"n": n}}

    summary = {
        "rows": {"prompts": 8}, "overall_safety": 0.4, "overall_safety_ci": [0.3, 0.5], "model_score": 0.375,
        "model_score_ci": None,
        "attack": {"expected_safety_reduction": 0.1, "expected_safety_reduction_ci": [0.0, 0.2],
                   "attacked_categories": ["AGE"],
                   "per_attack": [{"attack": "prefix_injection", "effectiveness": 0.2, "effectiveness_ci": [0.1, 0.3],
                                   "counts": {"n": 6}, "by_category": [{"safety": 0.6}, {"safety": None}]},
                                  {"attack": "machine_translation", "effectiveness": None, "effectiveness_ci": None,
                                   "counts": {"n": 0}, "by_category": []}]},
        "cells": [cell("AGE", "CTO", 0.5, 1.0, 2), cell("AGE", "SC", 1.0, 0.5, 2), cell("RELIGION", "CTO", 0.0, 0.0, 2),
                  cell("RELIGION", "SC", None, None, 0)],
        "category_safety": [{"category": "AGE", "safety": 0.75, "safety_ci": [0.5, 1.0]},
                            {"category": "RELIGION", "safety": 0.0, "safety_ci": None}],
        "non_answers": {"base": {"verdict": {"UNPARSED": 2}}, "attack": {"verdict": {"UNPARSED": 1}}},
    }
    m = pipeline.clear_bias_metrics(summary, "clear_bias")
    assert m["clear_bias/robustness"] == m["clear_bias/fairness"] == pytest.approx(0.375)
    assert m["clear_bias/base/safety"] == {"value": 0.375, "low": None, "high": None, "n": 8}
    assert m["clear_bias/safety"] == {"value": 0.4, "low": 0.3, "high": 0.5, "n": 8}
    assert m["clear_bias/category/AGE/safety"] == {"value": 0.75, "low": 0.5, "high": 1.0, "n": 4}
    assert m["clear_bias/category/RELIGION/safety"]["n"] == 2
    assert m["clear_bias/attack/prefix_injection/safety"]["value"] == 0.6  # the categories with a value
    assert "clear_bias/attack/machine_translation/effectiveness" not in m  # not run: no metric
    assert (m["clear_bias/unparsed"], m["clear_bias/attacked_categories"]) == (3, 1)


def prepared_url(sweep) -> str:
    return sweep.bench.clear_bias.judges[1].removeprefix("llm:openai:judge@")


# -- the smollm2 lane's soft labels ------------------------------------------------------------------


def smollm2_sweep(tmp: Path, max_steps: int = 1, **grid) -> dict:
    return {
        "name": "smol", "lane": "smollm2", "out": str(tmp / "out"), "world": {"overrides": TINY_WORLD},
        "train": {"config": "configs/train/soft_smollm2_world.yaml",
                  "overrides": [f"training.max_steps={max_steps}", "training.per_device_batch_size=2",
                                "training.gradient_accumulation_steps=1", "training.save_steps=0"]},
        "methods": {"soft": {}},
        "grid": {"method": ["none", "soft"], **grid},
        "skip": ["method=none and data.noise_rate>0"],
        "bench": {"clear_bias": {"judges": ["rule"], "max_new_tokens": 8, "attacks": ["prefix_injection:v1"]},
                  "harmful": {"judge": "keyword", "max_new_tokens": 8}},
    }


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_smollm2_lane_soft_labels_carry_each_noise_mode(tmp_path):
    """prepare writes one soft-label file per noise setting (no SmolLM2 needed for that): flip
    keeps the clean q (the trainer's swap cancels under the soft loss), soft_flip writes 1 - q on
    exactly round(rate * n) rows, margin_gaussian moves q on as many, reward_labels comes from a
    reward model trained on swapped pairs; the eval file is the clean model's q = σ(Δr / std(Δr))."""
    import math
    import statistics

    from robalign.experiments.pipeline import cell_config
    from robalign.experiments.pipeline_real import soft_label_files

    sweep = load(tmp_path, smollm2_sweep(tmp_path, max_steps=10, **{
        "data.noise_mode": ["flip", "soft_flip", "margin_gaussian", "reward_labels"], "data.noise_rate": [0.0, 0.5]}))
    messages: list[str] = []
    pipeline.prepare(sweep, messages.append)
    world, root = sweep.out_dir / "world", sweep.out_dir / "soft_labels"
    names = sorted(p.name for p in root.glob("*.jsonl"))
    assert names == ["eval.jsonl", "train-clean.jsonl", "train-margin_gaussian-r0.5-s0-sd1.jsonl",
                     "train-reward_labels-r0.5-s0.jsonl", "train-soft_flip-r0.5-s0.jsonl"]
    for c in expand(sweep):  # flip, and every mode at rate 0, train on the clean file
        config = cell_config(sweep, c)
        if config.data.noise_mode == "flip" or config.data.noise_rate == 0:
            assert soft_label_files(sweep, world, config).train.name == "train-clean.jsonl"

    clean = rows(root / "train-clean.jsonl")
    n = len(clean)
    assert n == 10 * 2 < len(rows(world / "pairs" / "train.jsonl"))  # the pairs 10 steps of 2 reach
    flipped = rows(root / "train-soft_flip-r0.5-s0.jsonl")
    noised = [i for i, r in enumerate(flipped) if r["noised"]]
    assert len(noised) == round(0.5 * n)
    for i, (a, b) in enumerate(zip(clean, flipped)):
        assert (a["id"], a["chosen"]) == (b["id"], b["chosen"])  # the pair is kept, only q moves
        assert b["soft_label"] == pytest.approx(1 - a["soft_label"] if i in noised else a["soft_label"], abs=1e-12)
    gauss = rows(root / "train-margin_gaussian-r0.5-s0-sd1.jsonl")
    assert sum(r["noised"] for r in gauss) == round(0.5 * n)
    assert all(g["soft_label"] == a["soft_label"] for g, a in zip(gauss, clean) if not g["noised"])
    assert sum(g["soft_label"] != a["soft_label"] for g, a in zip(gauss, clean)) == round(0.5 * n)
    info = json.loads((root / "reward" / "labels-r0.5-s0" / "robalign_reward.json").read_text())
    assert len(info["noise"]["flipped_ids"]) == round(0.5 * len(rows(world / "pairs" / "train.jsonl")))  # all its pairs
    assert [r["soft_label"] for r in rows(root / "train-reward_labels-r0.5-s0.jsonl")] != [a["soft_label"] for a in clean]

    evaluation = rows(root / "eval.jsonl")
    std = statistics.stdev(r["reward_margin"] for r in evaluation)
    for r in evaluation:
        assert r["soft_label"] == pytest.approx(1 / (1 + math.exp(-r["reward_margin"] / std)), abs=1e-9)

    again: list[str] = []
    pipeline.prepare(sweep, again.append)
    assert again == []


@pytest.mark.slow
def test_smollm2_lane_cell_trains_on_soft_labels(tmp_path, smollm2):
    """One SmolLM2 step on the soft labels, then both benchmarks: the lane's metrics."""
    sweep = load(tmp_path, smollm2_sweep(tmp_path, **{"data.noise_mode": ["soft_flip"], "data.noise_rate": [0.5]}))
    pipeline.prepare(sweep, lambda _: None)
    soft = next(c for c in expand(sweep) if c.params["method"] == "soft")
    result = pipeline.run_cell(sweep, soft, sweep.out_dir / "cells" / soft.id, lambda _: None)
    m = result.metrics
    assert result.provenance["train_config"]["model"]["name_or_path"] == "smollm2-135m-instruct"
    assert result.provenance["train_config"]["data"]["train"].endswith("train-soft_flip-r0.5-s0.jsonl")
    assert 0 <= m["soft_labels/prefer_chosen"] <= 1 and 0 <= m["reward_model/eval_accuracy"] <= 1
    for name in ("train/eval/rewards/accuracies", "train/noisy/rewards/accuracies", "clear_bias/safety",
                 "harmful/compliance"):
        assert m[name]["value"] is not None, name
    assert m["train/noisy/pairs"] == 2 and m["train/steps"] == 1


@pytest.mark.slow
def test_the_llm_judge_is_trained_once(tmp_path):
    """`llm` in bench.clear_bias.judges: prepare trains the tiny judge from scratch on the world's judge
    examples (a few steps here), once; cells judge with it, and kappa against the rule judge is measured."""
    config = tiny_sweep(tmp_path, ["rule", "llm"])
    config["grid"] = {"method": ["none"], "pretrain.steps": [10, 20]}
    config["skip"] = []
    config["bench"]["clear_bias"]["judge_steps"] = 4
    sweep = load(tmp_path, config)
    messages: list[str] = []
    pipeline.prepare(sweep, messages.append)
    judge = sweep.out_dir / "judge" / "run" / "model"
    card = json.loads((judge / "robalign_judge.json").read_text())
    assert card["base_model"] == "tiny:nano (from scratch)" and card["steps"] == 4
    assert card["spec"] == f"llm:hf:{judge}#bias-compact"
    assert any("training a tiny judge" in m for m in messages)
    again: list[str] = []
    pipeline.prepare(sweep, again.append)
    assert again == []
    none = cell(sweep, "method=none steps=10 seed=0")
    m = pipeline.run_cell(sweep, none, sweep.out_dir / "cells" / none.id, lambda _: None).metrics
    assert m["clear_bias_llm/safety"]["n"] == m["clear_bias/safety"]["n"] and m["judges/kappa"]["n"] > 0


def test_the_pairwise_stage_gives_the_cells_win_rate_against_the_chosen_answer(prepared):
    """bench.pairwise.judge: the cell's answers to the first held-out prompts against their chosen
    answers, both orders, through a judge over loopback HTTP that always says [[A]]: every row's two
    orders disagree, so every row is a tie. Win rate 0 of n with the Wilson upper bound z²/(n + z²),
    the tie-aware rate exactly 0.5, nothing unparsed."""
    import copy

    sweep, _ = prepared
    sweep = copy.deepcopy(sweep)
    with LocalOpenAIServer(ScriptedResponder(default="Reply A is better.\n[[A]]")) as server:
        sweep.bench.pairwise.judge = f"llm:openai:judge@{server.base_url}"
        sweep.bench.pairwise.pairs = 6
        none = cell(sweep, "method=none steps=10 noise_rate=0.0 seed=0")
        cell_dir = sweep.out_dir / "cells-pairwise" / none.id
        m = pipeline.run_cell(sweep, none, cell_dir, lambda _: None).metrics
        calls = server.chat_requests
    z2 = 1.959963984540054 ** 2
    assert calls == 12  # 6 rows x 2 orders
    assert m["pairwise/win_rate"]["value"] == 0 and m["pairwise/win_rate"]["n"] == 6
    assert m["pairwise/win_rate"]["high"] == pytest.approx(z2 / (6 + z2))
    assert m["pairwise/tie_aware_win_rate"]["value"] == 0.5 and m["pairwise/unparsed"] == 0
    rows = read_table(cell_dir / "pairwise" / "verdicts.jsonl")
    assert list(rows["pair_outcome"]) == ["tie"] * 6
