"""Wall time of the CLEAR-Bias protocol, and what concurrency buys an HTTP judge.

    python benchmarks/bench_clear_bias.py --json
    python benchmarks/bench_clear_bias.py --latency 0.1 --items 128 --rounds 5

1. protocol: ``robalign bench clear-bias`` on the embedded prompt set (60 base prompts) with a
   nano tiny Llama (built here, offline) and the rule judge, every attack that needs no
   translator, a fresh cache: seconds end to end and answers per second.
2. judge concurrency: the same ``--items`` bias-judge requests sent to the local
   OpenAI-compatible server (a fixed ``--latency`` per request, as a remote API has) with
   ``concurrency=1`` and with ``--concurrency``, no cache; ``concurrent_over_sequential`` is
   the sequential time over the concurrent one (goal >= 4), median of ``--rounds`` paired rounds.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def protocol_seconds(tmp: Path, max_new_tokens: int) -> dict:
    from robalign.bench.clearbias import ClearBiasConfig, run_clear_bias
    from robalign.evaluation.cache import ResponseCache
    from robalign.models.tiny import build_tiny_model

    model = build_tiny_model(tmp / "nano", "nano", "llama")
    attacks = ",".join(a for a in ("obfuscation", "prefix_injection", "prompt_injection", "refusal_suppression",
                                   "reward_incentive", "role_playing"))
    cfg = ClearBiasConfig(model=f"hf:{model}", judge="rule", attacks=attacks, max_new_tokens=max_new_tokens,
                          n_boot=1000)
    start = time.perf_counter()
    with ResponseCache(tmp / "cache.sqlite") as cache:
        summary = run_clear_bias(cfg, str(tmp / "run"), cache, log=lambda _: None)
    seconds = time.perf_counter() - start
    answers = summary["rows"]["base"] + summary["rows"]["attack"]
    return {"protocol_s": round(seconds, 2), "answers": answers, "answers_per_s": round(answers / seconds, 2),
            "attacked_categories": len(summary["attack"]["attacked_categories"]), "max_new_tokens": max_new_tokens}


def judge_seconds(base_url: str, items: list, concurrency: int) -> float:
    from robalign.evaluation.judges import build_judge

    judge = build_judge(f"llm:openai:judge@{base_url}", None, concurrency=concurrency, max_retries=0)
    start = time.perf_counter()
    verdicts = judge.judge(items)
    seconds = time.perf_counter() - start
    if sum(v.label == "D" for v in verdicts) != len(items):
        raise SystemExit(f"the scripted judge answered {sorted(set((v.label, v.raw[:80]) for v in verdicts))}")
    return seconds


def concurrency_ratio(n_items: int, latency: float, concurrency: int, rounds: int) -> dict:
    from robalign.bench.prompts import load_prompt_set
    from robalign.evaluation.judges import JudgeItem
    from robalign.evaluation.server import LocalOpenAIServer

    def reply(messages, body):
        time.sleep(latency)  # what a remote API's round trip costs, fixed
        return "Takes no side.\n[[D]]"

    prompts = load_prompt_set().prompts
    items = [JudgeItem(prompts[i % len(prompts)].prompt, f"answer {i}") for i in range(n_items)]
    sequential, concurrent = [], []
    with LocalOpenAIServer(reply) as server:
        for r in range(rounds):  # alternate the order so a slow spell hits both sides
            for c in ((1, concurrency) if r % 2 == 0 else (concurrency, 1)):
                (sequential if c == 1 else concurrent).append(judge_seconds(server.base_url, items, c))
    ratios = [s / c for s, c in zip(sequential, concurrent)]
    return {"judge_items": n_items, "latency_s": latency, "concurrency": concurrency,
            "sequential_s": round(statistics.median(sequential), 3), "concurrent_s": round(statistics.median(concurrent), 3),
            "concurrent_over_sequential": round(statistics.median(ratios), 2),
            "concurrent_over_sequential_spread": [round(min(ratios), 2), round(max(ratios), 2)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print only the JSON object")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--items", type=int, default=96, help="judge requests per timing")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds the server waits per request")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-protocol", action="store_true", help="only the judge concurrency timing")
    args = parser.parse_args()
    import torch

    torch.manual_seed(0)
    result = {"benchmark": "bench_clear_bias", "threads": torch.get_num_threads(),
              "load_average_1m": round(os.getloadavg()[0], 2)}
    if not args.no_protocol:
        with tempfile.TemporaryDirectory() as tmp:
            result |= protocol_seconds(Path(tmp), args.max_new_tokens)
    result |= concurrency_ratio(args.items, args.latency, args.concurrency, args.rounds)
    result |= {"goal_concurrent_over_sequential": 4.0,
               "goal_met": {"concurrent_over_sequential": result["concurrent_over_sequential"] >= 4.0}}
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    sys.exit(main())
